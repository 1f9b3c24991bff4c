r"""Train-step throughput on 1 vs 2 (or more) logical CPU devices, side by side.

Each device count runs in its own subprocess (logical devices must be configured before
TensorFlow starts): the real training loop (`Trainer`: `distribute_datasets_from_function`,
several steps per compiled call, EMA) trains a small model on the offline digits set under
`OneDeviceStrategy` (1 device) or `MirroredStrategy` (N logical CPUs) at the same global batch,
with synchronized batch norm for N > 1 unless --no_sync_bn. The first compiled call (tracing)
is not timed; the table shows the median images/s of the others.

On one CPU the logical devices share the same cores and thread pools, so this measures the
overhead of replication (splitting the batch, all-reduce, sync BN), not a speed-up; the same
loop on N GPUs or TPU cores runs the replicas in parallel.

    python benchmarks/scale.py --devices 1,2 --model_name efficientnetv2-b0 --image_size 64
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--devices', default='1,2', help='Comma-separated device counts.')
    parser.add_argument('--model_name', default='efficientnetv2-b0')
    parser.add_argument('--image_size', type=int, default=64)
    parser.add_argument('--batch_size', type=int, default=32, help='Global batch.')
    parser.add_argument('--steps_per_loop', type=int, default=5)
    parser.add_argument(
        '--loops', type=int, default=6, help='Compiled calls; the first is not timed.'
    )
    parser.add_argument(
        '--no_sync_bn', action='store_true', help='Per-replica batch norm for N > 1.'
    )
    parser.add_argument('--child', type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def measure(args):
    """Child process: trains on `args.child` logical CPUs; prints one JSON line."""
    import tensorflow as tf

    if args.child > 1:
        cpu = tf.config.list_physical_devices('CPU')[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.child
        )
        strategy = tf.distribute.MirroredStrategy(['/cpu:%d' % i for i in range(args.child)])
    else:
        strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
    import numpy as np

    from efficientnetv2 import config as config_lib
    from efficientnetv2.train import trainer as trainer_lib

    steps = args.steps_per_loop * args.loops
    config = config_lib.build_config(
        args.model_name,
        'digits',
        hparam_str=(
            'train.stages=0,train.epochs=0.01,train.min_steps=%d,train.steps_per_loop=%d,'
            'train.batch_size=%d,train.image_size=%d,eval.image_size=%d,train.ckpt_interval=%d,'
            'model.sync_bn=%s,train.seed=0'
            % (
                steps,
                args.steps_per_loop,
                args.batch_size,
                args.image_size,
                args.image_size,
                10 * steps,
                args.child > 1 and not args.no_sync_bn,
            )
        ),
    )
    with tempfile.TemporaryDirectory() as model_dir:
        trainer = trainer_lib.Trainer(config, model_dir, strategy)
        trainer.train()
    timed = [entry['images_per_sec'] for entry in trainer.history[1:]]
    print(
        json.dumps(
            dict(
                devices=args.child,
                replicas=strategy.num_replicas_in_sync,
                per_replica_batch=args.batch_size // strategy.num_replicas_in_sync,
                images_per_sec=float(np.median(timed)),
                spread=[float(min(timed)), float(max(timed))],
            )
        )
    )


def run_child(args, devices):
    command = [
        sys.executable,
        os.path.abspath(__file__),
        '--child',
        str(devices),
        '--model_name',
        args.model_name,
        '--image_size',
        str(args.image_size),
        '--batch_size',
        str(args.batch_size),
        '--steps_per_loop',
        str(args.steps_per_loop),
        '--loops',
        str(args.loops),
    ]
    if args.no_sync_bn:
        command.append('--no_sync_bn')
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL='3',
        PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])),
    )
    env.pop('TF_CONFIG', None)
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    lines = [line for line in done.stdout.splitlines() if line.startswith('{')]
    if done.returncode or not lines:
        raise RuntimeError('The %d-device run failed:\n%s' % (devices, done.stderr[-3000:]))
    return json.loads(lines[-1])


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return measure(args)
    results = [run_child(args, int(n)) for n in args.devices.split(',')]
    base = results[0]['images_per_sec']
    print(
        '%s at %d px, global batch %d, float32, CPU (%d cores); batch norm: %s'
        % (
            args.model_name,
            args.image_size,
            args.batch_size,
            os.cpu_count(),
            'per replica (fused kernel)'
            if args.no_sync_bn
            else 'fused kernel on 1 device, synchronized across replicas on N > 1',
        )
    )
    print(
        '%-8s %-9s %-18s %-12s %-16s %s'
        % ('devices', 'replicas', 'per-replica batch', 'images/s', 'min-max', 'vs first')
    )
    for r in results:
        print(
            '%-8d %-9d %-18d %-12.1f %-16s %.2fx'
            % (
                r['devices'],
                r['replicas'],
                r['per_replica_batch'],
                r['images_per_sec'],
                '{:.1f}-{:.1f}'.format(*tuple(r['spread'])),
                r['images_per_sec'] / base,
            )
        )
    return results


if __name__ == '__main__':
    main()
