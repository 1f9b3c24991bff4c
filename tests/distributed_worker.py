"""Subprocess side of the distribution tests: each job needs a fresh TensorFlow runtime.

Logical CPU devices can only be configured before TensorFlow initialises, so the tests run
these jobs with `python tests/distributed_worker.py JOB ...` and read what they write:

    train       trains the tiny digits config under one strategy, saves the weights (.npz)
    loss_scale  one loss-scaled step where a single replica overflows (stock vs synced), then
                a few mixed_float16 training steps on two replicas with the synced optimizer
    any_worker  multi-worker agreement on a stop request (needs TF_CONFIG)
    bn_groups   one synchronized batch-norm step on 4 replicas with batch-norm groups of 2 / all
    tpu         `get_strategy('tpu')` against unreachable or non-TPU endpoints (JSON lines)
"""

import argparse
import json
import os
import socket
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# The tiny 3-block model of tests/test_train.py on the offline digits set.
TINY = (
    "model.blocks=['r1_k3_s1_e1_i16_o8_c1','r1_k3_s2_e4_i8_o16_c1',"
    "'r1_k3_s2_e4_i16_o24_se0.25'],model.feature_size=32"
)
TINY_TRAIN = (
    'train.batch_size=32,train.steps_per_loop=4,train.ckpt_interval=1000,'
    'train.seed=1,eval.batch_size=90,train.image_size=24,train.min_image_size=12,'
    'train.lr_warmup_epochs=0.2'
)


def _configure_cpus(num_devices):
    import tensorflow as tf

    if num_devices > 1:
        cpu = tf.config.list_physical_devices('CPU')[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices
        )
    return tf


def _make_strategy(tf, name, num_devices):
    if name == 'mirrored':
        return tf.distribute.MirroredStrategy([f'/cpu:{i}' for i in range(num_devices)])
    if name == 'one':
        return tf.distribute.OneDeviceStrategy('/cpu:0')
    from efficientnetv2 import distribute

    return distribute.get_strategy(name)


def train(args):
    """Trains the tiny config; writes weights, EMA shadows and the step to args.out."""
    tf = _configure_cpus(args.devices)
    strategy = _make_strategy(tf, args.strategy, args.devices)
    import numpy as np

    from efficientnetv2 import experiment
    from efficientnetv2.train import trainer as trainer_lib

    config = experiment.build_config('efficientnetv2-b0', 'digits', hparam_str=TINY)
    config.override(TINY_TRAIN)
    if args.overrides:
        config.override(args.overrides)
    trainer = trainer_lib.Trainer(config, args.model_dir, strategy)
    start = time.time()
    trainer.train()
    arrays = {'weight/' + w.path: w.numpy() for w in trainer.model.weights}
    if trainer.ema is not None:
        for i, shadow in enumerate(trainer.ema.shadow_variables):
            arrays[f'ema/{i:03d}'] = shadow.numpy()
    arrays['step'] = np.array(int(trainer.global_step.numpy()))
    arrays['losses'] = np.array([entry['loss'] for entry in trainer.history])
    arrays['images_per_sec'] = np.array([e['images_per_sec'] for e in trainer.history])
    arrays['replicas'] = np.array(strategy.num_replicas_in_sync)
    arrays['seconds'] = np.array(time.time() - start)
    np.savez(args.out, **arrays)


def loss_scale(args):
    """Prints, per optimizer class, weights and scale after a step where replica 1 overflows."""
    tf = _configure_cpus(2)
    import keras

    from efficientnetv2 import distribute

    strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
    results = {}
    for name, wrap in (
        ('stock', keras.optimizers.LossScaleOptimizer),
        ('synced', distribute.loss_scale_optimizer),
    ):
        for bad_replica in (1, -1):
            with strategy.scope():
                weights = keras.Variable([1.0, 2.0], name='w')
                optimizer = wrap(keras.optimizers.SGD(1.0), initial_scale=4.0)
                optimizer.build([weights])

            _overflow_step(tf, strategy, optimizer, weights, bad_replica)
            copies = strategy.experimental_local_results(weights.value)
            results['{}/{}'.format(name, 'overflow' if bad_replica >= 0 else 'finite')] = dict(
                weights=[copy.numpy().tolist() for copy in copies],
                scale=float(optimizer.dynamic_scale.numpy()),
            )
    results['trainer'] = _train_float16(strategy, args.model_dir)
    print(json.dumps(results))


def _overflow_step(tf, strategy, optimizer, weights, bad_replica):
    """One optimizer step on every replica; replica `bad_replica` has an infinite gradient."""

    @tf.function
    def step():
        def replica_fn():
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            # Already scaled gradients, as tape.gradient(scale_loss(loss)) gives.
            grad = tf.where(
                tf.equal(replica, bad_replica),
                tf.constant([float('inf'), 4.0]),
                tf.constant([4.0, 4.0]),
            )
            optimizer.apply([grad], [weights])

        strategy.run(replica_fn)

    step()


def _train_float16(strategy, model_dir):
    """Four mixed_float16 steps of the tiny config with synced loss scaling, two replicas."""
    import keras

    from efficientnetv2 import distribute
    from efficientnetv2 import experiment
    from efficientnetv2.train import trainer as trainer_lib

    # What Trainer builds for mixed_float16, until it calls distribute.loss_scale_optimizer.
    keras.optimizers.LossScaleOptimizer = distribute.SyncedLossScaleOptimizer
    config = experiment.build_config('efficientnetv2-b0', 'digits', hparam_str=TINY)
    config.override(TINY_TRAIN)
    config.override(
        'train.stages=0,train.epochs=0.1,train.min_steps=4,model.sync_bn=True,'
        'runtime.mixed_precision=mixed_float16'
    )
    trainer = trainer_lib.Trainer(config, model_dir, strategy)
    trainer.train()
    return dict(
        optimizer=type(trainer.optimizer).__name__,
        precision=trainer.precision,
        step=int(trainer.global_step.numpy()),
        losses=[entry['loss'] for entry in trainer.history],
    )


def any_worker(args):
    """Multi-worker: prints which of 4 rounds stop when only worker 0 asks to, at round 2."""
    import tensorflow as tf

    from efficientnetv2 import distribute

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    _, index = distribute.task_info()
    rounds = [distribute.any_worker(strategy, index == 0 and i == 2) for i in range(4)]
    print(json.dumps(dict(index=index, rounds=rounds)))


def bn_groups(args):
    """Saves inputs, outputs, input gradients and moving statistics of one synchronized
    BatchNorm training step on 4 logical CPUs, per group size (and the error for 3)."""
    tf = _configure_cpus(4)
    import numpy as np

    from efficientnetv2 import layers

    strategy = tf.distribute.MirroredStrategy([f'/cpu:{i}' for i in range(4)])
    rng = np.random.RandomState(0)
    # Replica r: 3 images of 2x2x5 with their own offset and spread, so groups differ.
    x = np.stack([rng.normal(2.0 * r - 3.0, 1.0 + r, (3, 2, 2, 5)) for r in range(4)])
    c = rng.normal(0.0, 1.0, x.shape)
    gamma, beta = rng.uniform(0.5, 1.5, 5), rng.normal(0.0, 1.0, 5)
    arrays = dict(x=x, c=c, gamma=gamma, beta=beta)
    inputs = strategy.experimental_distribute_values_from_function(
        lambda ctx: (
            tf.constant(x[ctx.replica_id_in_sync_group], tf.float32),
            tf.constant(c[ctx.replica_id_in_sync_group], tf.float32),
        )
    )
    for group_size in (2, 0, 3):
        with strategy.scope():
            bn = layers.BatchNorm(
                synchronized=True,
                group_size=group_size,
                momentum=0.75,
                epsilon=1e-3,
                name=f'bn{group_size}',
            )
            bn.build((None, 2, 2, 5))
            bn.gamma.assign(gamma)
            bn.beta.assign(beta)

        def replica_fn(images, weights, bn=bn):  # This iteration's layer, bound explicitly.
            with tf.GradientTape() as tape:
                tape.watch(images)
                outputs = bn(images, training=True)
                loss = tf.reduce_sum(outputs * weights)
            return outputs, tape.gradient(loss, images)

        try:
            outputs, grads = tf.function(lambda: strategy.run(replica_fn, args=inputs))()
        except ValueError as e:
            arrays[f'error{group_size}'] = np.array(str(e))
            continue
        arrays[f'y{group_size}'] = np.stack(
            [t.numpy() for t in strategy.experimental_local_results(outputs)]
        )
        arrays[f'dx{group_size}'] = np.stack(
            [t.numpy() for t in strategy.experimental_local_results(grads)]
        )
        for name in ('moving_mean', 'moving_variance'):
            copies = strategy.experimental_local_results(getattr(bn, name).value)
            arrays[f'{name}{group_size}'] = np.stack([t.numpy() for t in copies])
    np.savez(args.out, **arrays)


def _free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def tpu(args):
    """Prints one JSON line per case: the error type, message head and seconds taken."""
    silent = socket.socket()  # Accepts connections, never answers.
    silent.bind(('127.0.0.1', 0))
    silent.listen(8)
    silent_address = f'127.0.0.1:{silent.getsockname()[1]}'
    closed_address = f'127.0.0.1:{_free_port()}'
    import tensorflow as tf

    from efficientnetv2 import distribute

    server = tf.distribute.Server.create_local_server()  # A gRPC worker without TPUs.
    cases = [  # The connecting case last: it changes this process's runtime.
        ('local', 'local', None),
        ('named_no_metadata', 'no-such-tpu', closed_address),
        ('named_metadata_hangs', 'no-such-tpu', silent_address),
        ('grpc_closed', 'grpc://' + closed_address, None),
        ('grpc_silent', 'grpc://' + silent_address, None),
        ('grpc_worker_without_tpu', server.target, None),
    ]
    for case, name, metadata_host in cases:
        if metadata_host:
            os.environ['GCE_METADATA_HOST'] = metadata_host
        else:
            os.environ.pop('GCE_METADATA_HOST', None)
        start = time.time()
        try:
            distribute.get_strategy('tpu', tpu=name, timeout_s=args.timeout)
            outcome = dict(error=None, message='')
        except Exception as e:  # Reported, judged by the test.
            outcome = dict(error=type(e).__name__, message=str(e))
        outcome.update(case=case, seconds=time.time() - start)
        print(json.dumps(outcome), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    jobs = parser.add_subparsers(dest='job', required=True)
    job = jobs.add_parser('train')
    job.add_argument('--devices', type=int, default=1)
    job.add_argument(
        '--strategy', default='one', help='one, mirrored, or a distribute.get_strategy name'
    )
    job.add_argument('--model_dir', required=True)
    job.add_argument('--overrides', default='')
    job.add_argument('--out', required=True)
    job = jobs.add_parser('loss_scale')
    job.add_argument('--model_dir', required=True)
    jobs.add_parser('any_worker')
    job = jobs.add_parser('bn_groups')
    job.add_argument('--out', required=True)
    job = jobs.add_parser('tpu')
    job.add_argument('--timeout', type=float, default=3.0)
    args = parser.parse_args()
    dict(train=train, loss_scale=loss_scale, any_worker=any_worker, bn_groups=bn_groups, tpu=tpu)[
        args.job
    ](args)


if __name__ == '__main__':
    main()
