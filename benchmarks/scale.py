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
        strategy = tf.distribute.MirroredStrategy([f'/cpu:{i}' for i in range(args.child)])
    else:
        strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
    import numpy as np

    from efficientnetv2 import experiment
    from efficientnetv2.train import trainer as trainer_lib

    steps = args.steps_per_loop * args.loops
    config = experiment.build_config(
        args.model_name,
        'digits',
        hparam_str=(
            f'train.stages=0,train.epochs=0.01,train.min_steps={steps},'
            f'train.steps_per_loop={args.steps_per_loop},train.batch_size={args.batch_size},'
            f'train.image_size={args.image_size},eval.image_size={args.image_size},'
            f'train.ckpt_interval={10 * steps},'
            f'model.sync_bn={args.child > 1 and not args.no_sync_bn},train.seed=0'
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
        raise RuntimeError(f'The {devices}-device run failed:\n{done.stderr[-3000:]}')
    return json.loads(lines[-1])


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return measure(args)
    results = [run_child(args, int(n)) for n in args.devices.split(',')]
    base = results[0]['images_per_sec']
    if args.no_sync_bn:
        batch_norm = 'per replica (fused kernel)'
    else:
        batch_norm = 'fused kernel on 1 device, synchronized across replicas on N > 1'
    print(
        f'{args.model_name} at {args.image_size} px, global batch {args.batch_size}, float32, '
        f'CPU ({os.cpu_count()} cores); batch norm: {batch_norm}'
    )
    print(
        f'{"devices":<8} {"replicas":<9} {"per-replica batch":<18} {"images/s":<12} '
        f'{"min-max":<16} vs first'
    )
    for r in results:
        low, high = r['spread']
        spread = f'{low:.1f}-{high:.1f}'
        print(
            f'{r["devices"]:<8d} {r["replicas"]:<9d} {r["per_replica_batch"]:<18d} '
            f'{r["images_per_sec"]:<12.1f} {spread:<16} '
            f'{r["images_per_sec"] / base:.2f}x'
        )
    return results


if __name__ == '__main__':
    main()
