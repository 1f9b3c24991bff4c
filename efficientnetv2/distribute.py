"""Distribution strategies, mixed precision and worker roles for training and evaluation.

`get_strategy('auto')` picks the best available: a TPU when `--tpu` names one, a
MultiWorkerMirroredStrategy when `TF_CONFIG` describes a cluster, the GPUs of this host
(MirroredStrategy) when there are several, one GPU or the CPU otherwise.

    name          strategy                        devices
    tpu           TPUStrategy                     a Cloud TPU VM (--tpu=local) or a named TPU
    gpus          MirroredStrategy                every GPU of this host
    multi_worker  MultiWorkerMirroredStrategy     the cluster in TF_CONFIG (one process a host)
    cpu           OneDeviceStrategy               the CPU (even when GPUs are present)

Connecting to a TPU does not hang: the resolver's look-up and the TPU system initialisation
run under a deadline (`timeout_s`), and a remote TPU's workers are probed (a gRPC handshake)
before connecting, so an unreachable TPU is a `TPUConnectionError` naming what was tried.

Precision: `mixed_bfloat16` on TPU, `mixed_float16` when the strategy's devices are GPUs, float32
otherwise. With float16 wrap the optimizer with `loss_scale_optimizer`: unlike the stock Keras 3
`LossScaleOptimizer` it agrees across replicas on whether a step's gradients are finite.
"""

import dataclasses
import json
import os
import socket
import threading

from absl import logging
import keras
import tensorflow as tf

STRATEGIES = ('auto', 'cpu', 'gpus', 'multi_worker', 'tpu')
PRECISIONS = ('float32', 'mixed_float16', 'mixed_bfloat16')
DEFAULT_TPU_TIMEOUT_S = 300.0  # Resolver look-up and TPU initialisation, each.
_PROBE_TIMEOUT_S = 10.0  # Probe of each remote TPU worker's gRPC port.


class TPUConnectionError(RuntimeError):
    """No TPU could be reached (bad name, no TPU on this host, network, timeout)."""


# -- strategy selection -----------------------------------------------------------------------


def get_strategy(
    name='auto', tpu=None, tpu_zone=None, gcp_project=None, timeout_s=DEFAULT_TPU_TIMEOUT_S
):
    """Returns a `tf.distribute.Strategy` for `name` (see the module table).

    Args:
        name: one of STRATEGIES.
        tpu: TPU name, 'local' (a Cloud TPU VM) or 'grpc://host:port'; for 'tpu' (default
            'local') and 'auto' (a TPU is used when given).
        tpu_zone: GCE zone of a named TPU, when not discoverable from the metadata server.
        gcp_project: GCP project of a named TPU, likewise.
        timeout_s: deadline in seconds for each TPU step (resolving, initialising).

    Returns:
        The strategy; its kind and replica count are logged.

    Raises:
        ValueError: unknown name, or a strategy this host cannot provide (no GPU for 'gpus',
            no TF_CONFIG for 'multi_worker').
        TPUConnectionError: 'tpu' and no TPU reachable within `timeout_s`.
    """
    if name not in STRATEGIES:
        raise ValueError(f'strategy must be one of {list(STRATEGIES)}. Received: {name!r}')
    # Physical devices: listing logical ones would initialise the runtime, after which a
    # MultiWorkerMirroredStrategy can no longer be created.
    gpus = tf.config.list_physical_devices('GPU')
    if name == 'auto':
        if tpu:
            name = 'tpu'
        elif os.environ.get('TF_CONFIG'):
            name = 'multi_worker'
        else:
            name = 'gpus' if len(gpus) > 1 else ('one_gpu' if gpus else 'cpu')
    if name == 'tpu':
        strategy = _connect_tpu(tpu or 'local', tpu_zone, gcp_project, timeout_s)
    elif name == 'multi_worker':
        if not os.environ.get('TF_CONFIG'):
            raise ValueError(
                'strategy=multi_worker needs the TF_CONFIG environment variable '
                '(the cluster and the task of this process). Received: TF_CONFIG '
                'unset; set it, or choose auto, cpu or gpus.'
            )
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif name == 'gpus':
        if not gpus:
            raise ValueError(
                'strategy=gpus needs a GPU, but TensorFlow sees none on this host. '
                "Choose 'cpu' or 'auto'."
            )
        strategy = tf.distribute.MirroredStrategy()
    elif name == 'one_gpu':
        strategy = tf.distribute.OneDeviceStrategy('/gpu:0')
    else:
        strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
    where = ''
    if name == 'multi_worker':
        task_type, task_index = task_info()
        where = f' over the TF_CONFIG cluster; this process is {task_type} {task_index}'
    logging.info(
        'Distribution: strategy=%s (%s) with %d replica(s) in sync%s.',
        name,
        type(strategy).__name__,
        strategy.num_replicas_in_sync,
        where,
    )
    return strategy


def _run_with_deadline(fn, timeout_s, what):
    """Runs `fn()` in a daemon thread; raises TPUConnectionError if it outlasts `timeout_s`.

    A call that hangs (a metadata server or TPU worker that never answers) is abandoned: the
    thread is a daemon, so it does not keep the process alive.
    """
    outcome = {}

    def target():
        try:
            outcome['value'] = fn()
        except BaseException as e:  # Re-raised in the caller's thread.
            outcome['error'] = e

    thread = threading.Thread(target=target, name='tpu-connect', daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TPUConnectionError(f'{what} did not finish within {timeout_s:.0f} s.')
    if 'error' in outcome:
        raise outcome['error']
    return outcome.get('value')


# An HTTP/2 client preface and an empty SETTINGS frame: a gRPC server answers with SETTINGS.
_HTTP2_PREFACE = b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n' + b'\x00\x00\x00\x04\x00\x00\x00\x00\x00'
_HTTP2_SETTINGS = 0x4


def _probe_grpc(address, timeout_s):
    """Raises TPUConnectionError unless a gRPC (HTTP/2) server answers at host:port."""
    host, _, port = str(address).replace('grpc://', '').rpartition(':')
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as connection:
            connection.settimeout(timeout_s)
            connection.sendall(_HTTP2_PREFACE)
            header = connection.recv(9)
    except (OSError, ValueError) as e:
        raise TPUConnectionError(f'TPU worker {address} is not reachable: {e}') from e
    if len(header) < 4 or header[3] != _HTTP2_SETTINGS:
        raise TPUConnectionError(f'TPU worker {address} did not answer as a gRPC server.')


def _probe_endpoints(resolver, timeout_s):
    """Probes each worker of the resolver's cluster (a remote TPU's hosts)."""
    for address in resolver.cluster_spec().as_dict().get('worker', []):
        _probe_grpc(address, timeout_s)


def _connect_tpu(tpu, tpu_zone, gcp_project, timeout_s):
    """Resolves, connects to and initialises the TPU system; returns a TPUStrategy."""

    def resolve():
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=tpu, zone=tpu_zone, project=gcp_project
        )
        resolver.cluster_spec()  # Named TPUs: asks the Cloud TPU API for the workers.
        return resolver

    try:
        resolver = _run_with_deadline(resolve, timeout_s, f'Resolving TPU {tpu!r}')
        if resolver.master():  # A remote TPU (a name or grpc://); empty for 'local'.
            # Connecting blocks while holding the GIL if a worker does not answer, so no
            # deadline thread can cut it short: the workers are probed first.
            _probe_endpoints(resolver, min(_PROBE_TIMEOUT_S, timeout_s))
            tf.config.experimental_connect_to_cluster(resolver)
        topology = _run_with_deadline(
            lambda: tf.tpu.experimental.initialize_tpu_system(resolver),
            timeout_s,
            f'Initialising TPU {tpu!r}',
        )
    except Exception as e:  # Any failure here means: no usable TPU.
        raise TPUConnectionError(
            'Could not reach a TPU (tpu={!r}, zone={!r}, project={!r}): {}: {}. On a Cloud TPU VM '
            'pass --tpu=local; for a pod slice or a remote TPU give its name (and '
            '--tpu_zone/--gcp_project when not running on GCE); otherwise choose '
            '--strategy=gpus, multi_worker or cpu.'.format(
                tpu, tpu_zone, gcp_project, type(e).__name__, str(e).rstrip('.')
            )
        ) from e
    logging.info(
        'TPU %r initialised: %d task(s), %d core(s).',
        tpu,
        topology.num_tasks,
        topology.num_tasks * topology.num_tpus_per_task,
    )
    return tf.distribute.TPUStrategy(resolver)


def is_tpu_strategy(strategy):
    """True for TPUStrategy (and its experimental alias)."""
    return (
        isinstance(strategy, tf.distribute.TPUStrategy) or 'TPUStrategy' in type(strategy).__name__
    )


def uses_gpu(strategy):
    """True when the strategy's local replicas run on GPUs."""
    try:
        devices = strategy.extended.worker_devices
    except (RuntimeError, AttributeError, NotImplementedError):  # The default strategy.
        return bool(tf.config.list_logical_devices('GPU'))
    return any('GPU' in device.upper() for device in devices)


def batch_plan(strategy, global_batch_size, lr_base=None, lr_batch_unit=256):
    """Logs and returns the global and per-replica batch and the scaled learning rate.

    Args:
        strategy: the training strategy.
        global_batch_size: images per step over all replicas.
        lr_base: learning rate per `lr_batch_unit` images (None: not logged).
        lr_batch_unit: the batch size `lr_base` refers to (256 in the recipes).

    Returns:
        A dict: replicas, global_batch, per_replica_batch, lr (or None).

    Raises:
        ValueError: the global batch is not divisible by the number of replicas.
    """
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise ValueError(
            f'train.batch_size must be divisible by the number of replicas ({replicas}). '
            f'Received: {int(global_batch_size)}'
        )
    plan = dict(
        replicas=replicas,
        global_batch=int(global_batch_size),
        per_replica_batch=int(global_batch_size) // replicas,
        lr=None if lr_base is None else lr_base * global_batch_size / lr_batch_unit,
    )
    logging.info(
        'Batch: %d images per step = %d replica(s) x %d%s.',
        plan['global_batch'],
        replicas,
        plan['per_replica_batch'],
        ''
        if lr_base is None
        else f'; peak learning rate {plan["lr"]:.6g} = {lr_base:.6g} x '
        f'{int(global_batch_size)} / {int(lr_batch_unit)}',
    )
    return plan


# -- precision --------------------------------------------------------------------------------


def default_precision(strategy):
    """bfloat16 on TPU, float16 on GPUs, float32 on CPU (where mixed precision is slower)."""
    if is_tpu_strategy(strategy):
        return 'mixed_bfloat16'
    if uses_gpu(strategy):
        return 'mixed_float16'
    return 'float32'


def set_precision(policy):
    """Sets the global Keras dtype policy and returns its name.

    Raises:
        ValueError: `policy` is not one of PRECISIONS.
    """
    if policy not in PRECISIONS:
        raise ValueError(f'precision must be one of {list(PRECISIONS)}. Received: {policy!r}')
    keras.mixed_precision.set_global_policy(policy)
    logging.info('Precision policy: %s.', policy)
    return policy


@keras.saving.register_keras_serializable(package='efficientnetv2')
class SyncedLossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """Dynamic loss scaling whose skip-or-apply decision is the same on every replica.

    Keras 3's `LossScaleOptimizer` decides from the gradients it is given, which in a custom
    `tf.distribute` loop are a replica's own, not yet all-reduced. Under MirroredStrategy it
    looks at the first replica only, so an overflow on another replica is summed into every
    weight (they all become inf/NaN) and the scale is not lowered; where the strategy needs no
    merge call (MultiWorkerMirroredStrategy) replicas can take different branches. Here the
    finiteness flag is all-reduced first, so all replicas skip the step, or none does.
    """

    def check_finite(self, grads):
        finite = super().check_finite(grads)
        context = tf.distribute.get_replica_context()
        if context is None or tf.distribute.get_strategy().num_replicas_in_sync == 1:
            return finite
        non_finite = context.all_reduce(
            tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(finite), tf.float32)
        )
        return tf.equal(non_finite, 0.0)


def loss_scale_optimizer(optimizer, **kwargs):
    """Wraps `optimizer` for `mixed_float16` training under any strategy (see the class)."""
    return SyncedLossScaleOptimizer(optimizer, **kwargs)


# -- the runtime of a run, resolved once ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Where and how a run executes: what the trainer asks of this module, decided once.

    Attributes:
        strategy: the `tf.distribute.Strategy`.
        is_chief: whether this process writes checkpoints and summaries (`is_chief`).
        precision: the Keras dtype policy set for the run (one of PRECISIONS).
        is_tpu: the strategy is a TPUStrategy (sync batch norm, static shapes).
        uses_gpu: the strategy's local replicas run on GPUs.
        jit_compile: compile the train step with XLA.
    """

    strategy: object
    is_chief: bool
    precision: str
    is_tpu: bool
    uses_gpu: bool
    jit_compile: bool

    def wrap_optimizer(self, optimizer):
        """The optimizer to train with: loss-scaled (`loss_scale_optimizer`) under
        mixed_float16, else `optimizer` itself."""
        if self.precision == 'mixed_float16':
            return loss_scale_optimizer(optimizer)
        return optimizer


def resolve_runtime(runtime, strategy=None, seed=None):
    """Sets up the process for a run and returns its `Runtime`.

    In this order: the strategy (`strategy`, else `get_strategy(runtime.strategy)`), the
    chief role, the random seeds (`seed`, the run's `train.seed`: Python, NumPy, TensorFlow and
    Keras), deterministic ops (`runtime.deterministic`), the global dtype policy
    (`runtime.mixed_precision`, None: `default_precision`), and XLA (`runtime.jit_compile`,
    None: on for TPUs and GPUs, off on CPU).

    Args:
        runtime: the `runtime` section of a run config.
        strategy: a strategy to use instead of the configured one.
        seed: an int to seed every random generator with, or None.
    """
    strategy = strategy or get_strategy(runtime.strategy)
    chief = is_chief()
    if seed is not None:
        keras.utils.set_random_seed(seed)
    if runtime.deterministic:
        tf.config.experimental.enable_op_determinism()
    tpu = is_tpu_strategy(strategy)
    gpu = uses_gpu(strategy)
    precision = set_precision(runtime.mixed_precision or default_precision(strategy))
    jit_compile = runtime.get('jit_compile', None)
    if jit_compile is None:
        jit_compile = tpu or gpu
    return Runtime(
        strategy=strategy,
        is_chief=chief,
        precision=precision,
        is_tpu=tpu,
        uses_gpu=gpu,
        jit_compile=bool(jit_compile),
    )


# -- worker roles -----------------------------------------------------------------------------


def task_info():
    """(task type, index) of this process from TF_CONFIG; ('worker', 0) without one."""
    config = json.loads(os.environ.get('TF_CONFIG', '{}') or '{}')
    task = config.get('task', {})
    return task.get('type', 'worker'), int(task.get('index', 0))


def any_worker(strategy, flag):
    """True if `flag` is true in any worker of a multi-worker strategy (else `flag` itself).

    Every worker must call it at the same point: it is an all-reduce. Use it so that a stop
    request (SIGTERM) that reaches one worker stops all of them at the same step; a worker that
    stops alone leaves the others waiting in the next collective.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return bool(flag)
    value = tf.constant(1.0 if flag else 0.0)
    values = strategy.experimental_distribute_values_from_function(lambda _: value)
    return bool(strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None).numpy() > 0)


def is_chief():
    """True for the process that writes checkpoints and summaries (the only one, usually).

    With TF_CONFIG that is the 'chief' task, or worker 0 when the cluster has no chief.
    """
    config = json.loads(os.environ.get('TF_CONFIG', '{}') or '{}')
    task = config.get('task', {})
    task_type = task.get('type')
    if task_type in (None, 'chief'):
        return True
    return (
        task_type == 'worker'
        and int(task.get('index', 0)) == 0
        and 'chief' not in config.get('cluster', {})
    )
