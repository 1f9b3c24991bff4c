"""Distribution: strategy choice, MirroredStrategy == one device, multi-worker, loss scaling, TPU.

Runs that need their own TensorFlow runtime (logical CPU devices, a TF_CONFIG cluster, a TPU
connection attempt) are subprocesses of `tests/distributed_worker.py` or `main.py`.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from efficientnetv2 import distribute

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, 'tests', 'distributed_worker.py')
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=ROOT)
ENV.pop('TF_CONFIG', None)
# Deterministic training: differences between strategies are only float summation order.
EXACT = (
    'train.stages=0,train.epochs=0.1,train.min_steps=8,runtime.deterministic=True,'
    'model.survival_prob=None,model.dropout_rate=0.0,train.min_dropout=0.0'
)
# Two replicas of 16 images against one device of 32: weights agree to this after 8 steps
# (measured: 7e-7); without synchronized batch norm they differ by far more.
WEIGHT_ATOL = 1e-5


def _start(args, env=None, **kwargs):
    return subprocess.Popen(
        [sys.executable] + args,
        env=env or ENV,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def _finish(processes, timeout):
    """Waits for all processes; kills every one of them on timeout or failure."""
    outputs = []
    try:
        deadline = time.time() + timeout
        for process in processes:
            out, _ = process.communicate(timeout=max(1.0, deadline - time.time()))
            outputs.append(out)
            assert process.returncode == 0, out[-3000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return outputs


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(('127.0.0.1', 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


# -- in-process: selection, roles, precision ----------------------------------------------


def test_unknown_or_unavailable_strategies_are_refused(monkeypatch):
    monkeypatch.delenv('TF_CONFIG', raising=False)
    with pytest.raises(
        ValueError,
        match=r"one of \['auto', 'cpu', 'gpus', 'multi_worker', "
        r"'tpu'\]. Received: 'tpus'",
    ):
        distribute.get_strategy('tpus')
    with pytest.raises(ValueError, match='TF_CONFIG'):
        distribute.get_strategy('multi_worker')
    if not tf.config.list_physical_devices('GPU'):
        with pytest.raises(ValueError, match='sees none'):
            distribute.get_strategy('gpus')


def test_cpu_and_auto_give_one_device_in_float32(monkeypatch):
    monkeypatch.delenv('TF_CONFIG', raising=False)
    strategy = distribute.get_strategy('cpu')
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert strategy.extended.worker_devices[0].endswith('CPU:0')
    assert distribute.default_precision(strategy) == 'float32'
    assert not distribute.uses_gpu(strategy)
    if not tf.config.list_physical_devices('GPU'):
        assert distribute.get_strategy('auto').num_replicas_in_sync == 1
    with pytest.raises(ValueError, match="'mixed_bfloat16'"):
        distribute.set_precision('bfloat16')


def test_resolve_runtime_decides_precision_xla_and_loss_scaling_once(monkeypatch):
    import keras

    from efficientnetv2 import hparams

    monkeypatch.delenv('TF_CONFIG', raising=False)
    strategy = distribute.get_strategy('cpu')
    runtime = hparams.Config(
        dict(strategy='cpu', mixed_precision=None, deterministic=False, jit_compile=None)
    )
    resolved = distribute.resolve_runtime(runtime, strategy=strategy)
    assert resolved.strategy is strategy and resolved.is_chief
    assert resolved.precision == 'float32' and not resolved.jit_compile  # CPU defaults.
    assert not resolved.is_tpu and not resolved.uses_gpu
    optimizer = keras.optimizers.SGD(0.1)
    assert resolved.wrap_optimizer(optimizer) is optimizer
    try:
        runtime.override(dict(mixed_precision='mixed_float16', jit_compile=True))
        resolved = distribute.resolve_runtime(runtime, strategy=strategy)
        assert resolved.precision == 'mixed_float16' and resolved.jit_compile
        assert keras.mixed_precision.global_policy().name == 'mixed_float16'
        wrapped = resolved.wrap_optimizer(optimizer)
        assert isinstance(wrapped, distribute.SyncedLossScaleOptimizer)
    finally:
        distribute.set_precision('float32')


def test_batch_plan_scales_the_learning_rate():
    strategy = distribute.get_strategy('cpu')
    plan = distribute.batch_plan(strategy, 4096, lr_base=0.016)
    assert plan == dict(
        replicas=1, global_batch=4096, per_replica_batch=4096, lr=pytest.approx(0.256)
    )


@pytest.mark.parametrize(
    'tf_config,chief,task',
    [
        (None, True, ('worker', 0)),
        (
            {'cluster': {'worker': ['a:1', 'b:1']}, 'task': {'type': 'worker', 'index': 0}},
            True,
            ('worker', 0),
        ),
        (
            {'cluster': {'worker': ['a:1', 'b:1']}, 'task': {'type': 'worker', 'index': 1}},
            False,
            ('worker', 1),
        ),
        (
            {
                'cluster': {'chief': ['c:1'], 'worker': ['a:1']},
                'task': {'type': 'worker', 'index': 0},
            },
            False,
            ('worker', 0),
        ),
        (
            {
                'cluster': {'chief': ['c:1'], 'worker': ['a:1']},
                'task': {'type': 'chief', 'index': 0},
            },
            True,
            ('chief', 0),
        ),
    ],
)
def test_chief_is_the_chief_task_or_worker_zero(monkeypatch, tf_config, chief, task):
    if tf_config is None:
        monkeypatch.delenv('TF_CONFIG', raising=False)
    else:
        monkeypatch.setenv('TF_CONFIG', json.dumps(tf_config))
    assert distribute.is_chief() is chief
    assert distribute.task_info() == task


# -- subprocesses ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def mirrored_runs(tmp_path_factory):
    """One device, two mirrored replicas (sync BN), two replicas (plain BN); in parallel."""
    root = tmp_path_factory.mktemp('mirrored')
    runs = dict(
        one=('one', 1, 'model.sync_bn=True'),
        mirrored=('mirrored', 2, 'model.sync_bn=True'),
        mirrored_plain_bn=('mirrored', 2, 'model.sync_bn=False'),
    )
    processes = [
        _start(
            [
                WORKER,
                'train',
                '--strategy',
                strategy,
                '--devices',
                str(devices),
                '--model_dir',
                str(root / name),
                '--out',
                str(root / (name + '.npz')),
                '--overrides',
                EXACT + ',' + overrides,
            ]
        )
        for name, (strategy, devices, overrides) in runs.items()
    ]
    _finish(processes, timeout=300)
    return {name: dict(np.load(root / (name + '.npz'))) for name in runs}


def _max_weight_difference(a, b):
    keys = [k for k in a if k.startswith(('weight/', 'ema/'))]
    assert keys and sorted(keys) == sorted(k for k in b if k.startswith(('weight/', 'ema/')))
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in keys)


def test_mirrored_two_devices_match_one_device_with_sync_bn(mirrored_runs):
    one, two = mirrored_runs['one'], mirrored_runs['mirrored']
    assert int(one['replicas']) == 1 and int(two['replicas']) == 2
    assert int(one['step']) == int(two['step']) == 8
    np.testing.assert_allclose(two['losses'], one['losses'], rtol=1e-5)
    assert _max_weight_difference(one, two) < WEIGHT_ATOL
    # The comparison can fail: per-replica batch norm (16 images) trains another model.
    assert _max_weight_difference(one, mirrored_runs['mirrored_plain_bn']) > 100 * WEIGHT_ATOL


def test_synced_loss_scaling_skips_a_step_when_any_replica_overflows(tmp_path):
    out = _finish([_start([WORKER, 'loss_scale', '--model_dir', str(tmp_path)])], timeout=180)[0]
    results = json.loads([line for line in out.splitlines() if line.startswith('{')][-1])
    # Stock Keras 3 looks at replica 0 only: replica 1's inf reaches every copy of the weights.
    assert np.isinf(results['stock/overflow']['weights'][0][0])
    assert results['stock/overflow']['scale'] == 4.0
    # Synced: the step is skipped on both replicas and the scale halves.
    assert results['synced/overflow']['weights'] == [[1.0, 2.0], [1.0, 2.0]]
    assert results['synced/overflow']['scale'] == 2.0
    # A finite step: (4 + 4) / scale 4 = 2 per weight, learning rate 1.
    assert (
        results['synced/finite']
        == results['stock/finite']
        == dict(weights=[[-1.0, 0.0], [-1.0, 0.0]], scale=4.0)
    )
    # The trainer runs with it: mixed_float16 on two replicas, the loss near ln(10) at start.
    trained = results['trainer']
    assert trained['optimizer'] == 'SyncedLossScaleOptimizer'
    assert trained['precision'] == 'mixed_float16' and trained['step'] == 4
    assert np.allclose(trained['losses'], np.log(10.0), atol=0.15), trained


def _worker_env(cluster, index):
    return dict(
        ENV,
        TF_CONFIG=json.dumps(
            {'cluster': {'worker': cluster}, 'task': {'type': 'worker', 'index': index}}
        ),
    )


def test_multi_worker_cli_run_agrees_on_the_final_weights(tmp_path):
    # Meanwhile a second cluster checks that a stop request of one worker stops both.
    stop_cluster = [f'127.0.0.1:{port}' for port in _free_ports(2)]
    stop_check = [
        _start([WORKER, 'any_worker'], env=_worker_env(stop_cluster, index)) for index in range(2)
    ]
    model_dir = tmp_path / 'run'
    hparams = (
        "model.blocks=['r1_k3_s1_e1_i16_o8_c1','r1_k3_s2_e4_i8_o16_c1',"
        "'r1_k3_s2_e4_i16_o24_se0.25'],model.feature_size=32,model.sync_bn=True,"
        'train.batch_size=32,train.steps_per_loop=4,train.seed=1,train.image_size=24,'
        'train.stages=0,train.epochs=0.1,train.min_steps=8'
    )
    cluster = [f'127.0.0.1:{port}' for port in _free_ports(2)]
    processes = [
        _start(
            [
                os.path.join(ROOT, 'main.py'),
                '--mode=train',
                '--strategy=multi_worker',
                f'--model_dir={model_dir}',
                f'--hparam_str={hparams}',
            ],
            env=_worker_env(cluster, index),
        )
        for index in range(2)
    ]
    outputs = _finish(processes + stop_check, timeout=240)
    for out in outputs[2:]:
        agreed = json.loads([line for line in out.splitlines() if line.startswith('{')][-1])
        assert agreed['rounds'] == [False, False, True, False], agreed
    assert all(
        'strategy=multi_worker (CollectiveAllReduceStrategy) with 2 replica(s)' in out
        for out in outputs[:2]
    )

    chief = tf.train.load_checkpoint(str(model_dir / 'ckpt-8'))
    other = tf.train.load_checkpoint(str(model_dir / '.worker_tmp' / 'worker_1' / 'ckpt-8'))
    names = [n for n in chief.get_variable_to_shape_map() if not n.startswith('_CHECKPOINT')]
    assert {name.split('/')[0] for name in names} >= {'model', 'optimizer', 'ema', 'step'}
    for name in names:
        np.testing.assert_array_equal(chief.get_tensor(name), other.get_tensor(name), err_msg=name)
    assert int(chief.get_tensor('step/.ATTRIBUTES/VARIABLE_VALUE')) == 8
    # Only the chief wrote the run's own files.
    assert (model_dir / 'config.yaml').exists()
    assert not (model_dir / '.worker_tmp' / 'worker_1' / 'config.yaml').exists()


def test_tpu_strategy_fails_fast_and_clearly_without_a_tpu():
    out = _finish([_start([WORKER, 'tpu', '--timeout', '2'])], timeout=120)[0]
    results = {
        r['case']: r
        for r in map(json.loads, (line for line in out.splitlines() if line.startswith('{')))
    }
    assert len(results) == 6, out[-3000:]
    for case, result in results.items():
        assert result['error'] == 'TPUConnectionError', (case, result)
        assert 'Could not reach a TPU' in result['message'] and '--tpu=local' in result['message']
        assert result['seconds'] < 10, (case, result)
    assert 'TPUs not found' in results['local']['message']
    assert 'URLError' in results['named_no_metadata']['message']
    assert 'did not finish within 2 s' in results['named_metadata_hangs']['message']
    assert 'Connection refused' in results['grpc_closed']['message']
    assert 'not reachable: timed out' in results['grpc_silent']['message']
    # A real gRPC worker is connected to; only the TPU system is missing there.
    assert 'TPU_SYSTEM' in results['grpc_worker_without_tpu']['message']


def _batch_norm_reference(x, c, gamma, beta, epsilon):
    """Training-mode batch norm of one batch [N, H, W, C] by hand: outputs, biased mean and
    variance, and the gradient of sum(c * outputs) with respect to x."""
    axes = (0, 1, 2)
    mean, variance = x.mean(axis=axes), x.var(axis=axes)
    scale = np.sqrt(variance + epsilon)
    normalized = (x - mean) / scale
    upstream = c * gamma
    grad = (
        upstream - upstream.mean(axis=axes) - normalized * (upstream * normalized).mean(axis=axes)
    ) / scale
    return normalized * gamma + beta, mean, variance, grad


def test_batch_norm_groups_share_statistics_within_each_group_only(tmp_path):
    out = tmp_path / 'bn.npz'
    _finish([_start([WORKER, 'bn_groups', '--out', str(out)])], timeout=180)
    d = dict(np.load(out))
    x, c, momentum = d['x'], d['c'], 0.75
    for group_size, groups in ((2, [[0, 1], [2, 3]]), (0, [[0, 1, 2, 3]])):
        means, variances = [], []
        for group in groups:
            # The group's replicas normalise their images as one batch of 3 * len(group).
            y, mean, variance, grad = _batch_norm_reference(
                np.concatenate(x[group]), np.concatenate(c[group]), d['gamma'], d['beta'], 1e-3
            )
            means.append(mean)
            variances.append(variance)
            np.testing.assert_allclose(
                np.concatenate(d[f'y{group_size}'][group]), y, rtol=1e-4, atol=1e-4
            )
            np.testing.assert_allclose(
                np.concatenate(d[f'dx{group_size}'][group]), grad, rtol=1e-4, atol=1e-4
            )
        # Moving statistics: the mean over replicas of their group's update; equal everywhere.
        for name, batch, initial in (
            ('moving_mean', means, 0.0),
            ('moving_variance', variances, 1.0),
        ):
            expected = momentum * initial + (1 - momentum) * np.mean(batch, axis=0)
            for copy in d[f'{name}{group_size}']:
                np.testing.assert_allclose(copy, expected, rtol=1e-4, atol=1e-5)
    # Pairs differ from all four replicas (the replicas' data differ in offset and spread).
    assert np.max(np.abs(d['y2'] - d['y0'])) > 0.1
    assert 'group_size (3) must divide the number of replicas (4)' in str(d['error3'])


def test_model_passes_bn_group_size_to_every_batch_norm():
    from efficientnetv2 import layers
    from efficientnetv2 import model as model_lib

    assert model_lib.DEFAULT_MODEL_HPARAMS['bn_group_size'] == 8  # As the released TPU code.
    blocks = ['r1_k3_s1_e1_i16_o8_c1', 'r1_k3_s2_e4_i8_o16_se0.25']
    model = model_lib.EfficientNet(
        blocks=blocks, feature_size=32, num_classes=3, sync_bn=True, bn_group_size=2
    )
    norms = [layer for layer in model._flatten_layers() if isinstance(layer, layers.BatchNorm)]
    assert len(norms) == 6 and all(n.group_size == 2 and n.synchronized for n in norms)
    clone = model_lib.EfficientNet.from_config(model.get_config())
    assert all(
        n.group_size == 2 for n in clone._flatten_layers() if isinstance(n, layers.BatchNorm)
    )
    with pytest.raises(ValueError, match='bn_group_size must be an integer >= 0'):
        model_lib.EfficientNet(blocks=blocks, feature_size=32, bn_group_size=-1)


class _Extended:
    def __init__(self, devices):
        self.worker_devices = devices


class _FakeStrategy:
    def __init__(self, devices):
        self.extended = _Extended(devices)


class TPUStrategy(_FakeStrategy):
    """Named as TensorFlow's: distribute recognises a TPU strategy by its class name."""


class _DefaultStrategy:
    @property
    def extended(self):
        raise RuntimeError('The default strategy has no worker devices.')


@pytest.mark.parametrize(
    'strategy,logical_gpus,precision',
    [
        (
            TPUStrategy([f'/job:worker/replica:0/task:0/device:TPU:{i}' for i in range(8)]),
            [],
            'mixed_bfloat16',
        ),
        (
            _FakeStrategy(
                [
                    '/job:localhost/replica:0/task:0/device:GPU:0',
                    '/job:localhost/replica:0/task:0/device:GPU:1',
                ]
            ),
            [],
            'mixed_float16',
        ),
        (_FakeStrategy(['/job:localhost/replica:0/task:0/device:CPU:0']), ['GPU:0'], 'float32'),
        (_DefaultStrategy(), ['/device:GPU:0'], 'mixed_float16'),
        (_DefaultStrategy(), [], 'float32'),
    ],
)
def test_default_precision_follows_the_device_kind(monkeypatch, strategy, logical_gpus, precision):
    # The strategy's own devices decide; a GPU elsewhere on the host does not (third case).
    monkeypatch.setattr(
        distribute.tf.config,
        'list_logical_devices',
        lambda kind=None: list(logical_gpus) if kind == 'GPU' else [],
    )
    assert distribute.default_precision(strategy) == precision
