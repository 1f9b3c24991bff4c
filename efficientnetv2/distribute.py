"""Distribution strategies and mixed precision for training and evaluation.

`get_strategy('auto')` picks the best available: a TPU when `--tpu` names one, the GPUs of this
host (MirroredStrategy) when there are several, one GPU or the CPU otherwise. 'multi_worker'
reads the cluster from the `TF_CONFIG` environment variable.
"""

import json
import os

from absl import logging
import keras
import tensorflow as tf

STRATEGIES = ('auto', 'cpu', 'gpus', 'multi_worker', 'tpu')


def _connect_tpu(tpu, tpu_zone=None, gcp_project=None):
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=tpu, zone=tpu_zone, project=gcp_project)
        if tpu not in (None, '', 'local'):
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise RuntimeError(
            'Could not reach a TPU (tpu=%r, zone=%r, project=%r): %s. On a Cloud TPU VM pass '
            '--tpu=local; elsewhere name the TPU node and its zone/project, or choose '
            '--strategy=gpus/cpu.' % (tpu, tpu_zone, gcp_project, e)) from e
    return tf.distribute.TPUStrategy(resolver)


def get_strategy(name='auto', tpu=None, tpu_zone=None, gcp_project=None):
    """Returns a `tf.distribute.Strategy`.

    Args:
        name: one of STRATEGIES.
        tpu: TPU name or 'local' (a TPU VM), for 'tpu' (and 'auto' when given).
        tpu_zone, gcp_project: where the TPU is, when not discoverable.

    Raises:
        ValueError: unknown name, or a strategy this host cannot provide (no GPUs for 'gpus',
            no TF_CONFIG for 'multi_worker').
        RuntimeError: 'tpu' and no TPU reachable.
    """
    if name not in STRATEGIES:
        raise ValueError('strategy must be one of %s. Received: %r' % (list(STRATEGIES), name))
    gpus = tf.config.list_logical_devices('GPU')
    if name == 'auto':
        if tpu:
            name = 'tpu'
        elif os.environ.get('TF_CONFIG'):
            name = 'multi_worker'
        else:
            name = 'gpus' if len(gpus) > 1 else 'cpu'
    if name == 'tpu':
        strategy = _connect_tpu(tpu or 'local', tpu_zone, gcp_project)
    elif name == 'multi_worker':
        if not os.environ.get('TF_CONFIG'):
            raise ValueError('strategy=multi_worker needs the TF_CONFIG environment variable '
                             '(cluster and task of this worker).')
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif name == 'gpus':
        if not gpus:
            raise ValueError('strategy=gpus but TensorFlow sees no GPU on this host.')
        strategy = tf.distribute.MirroredStrategy()
    else:
        device = gpus[0].name if gpus else tf.config.list_logical_devices('CPU')[0].name
        strategy = tf.distribute.OneDeviceStrategy(device)
    logging.info('Distribution: %s with %d replica(s) in sync.', type(strategy).__name__,
                 strategy.num_replicas_in_sync)
    return strategy


def is_tpu_strategy(strategy):
    return isinstance(strategy, (tf.distribute.TPUStrategy,))


def default_precision(strategy):
    """bfloat16 on TPU, float16 on GPU, float32 on CPU (where mixed precision is slower)."""
    if is_tpu_strategy(strategy):
        return 'mixed_bfloat16'
    if tf.config.list_logical_devices('GPU'):
        return 'mixed_float16'
    return 'float32'


def set_precision(policy):
    """Sets the global Keras dtype policy and returns its name."""
    keras.mixed_precision.set_global_policy(policy)
    logging.info('Precision policy: %s.', policy)
    return policy


def is_chief():
    """True for the worker that writes checkpoints and summaries (the only one, usually)."""
    config = json.loads(os.environ.get('TF_CONFIG', '{}') or '{}')
    task = config.get('task', {})
    return task.get('type') in (None, 'chief') or (
        task.get('type') == 'worker' and task.get('index', 0) == 0
        and 'chief' not in config.get('cluster', {}))
