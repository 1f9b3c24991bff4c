"""The measurements that separate a collapsing progressive run from a healthy one.

Two subcommands on the photo set of `benchmarks/progressive.py` (same recipe and overrides):

* `first-stage`: trains only the first stage of the plan (or, with `--size` equal to the final
  size, the same steps at the final size), then evaluates the EMA and raw weights at the final
  size and prints the gradient norm (mean and max) of those steps. At the folder recipe's rate
  without the stage-rate settings (`--released`), 64 px collapsed where 128 px did not.
* `gradients`: the same weights and the same images at several sizes, in training mode:
  the gradient norm of each group of layers (stem, blocks 1-6, top, head). A network trained
  at one size has far larger early-layer gradients at the next size.

    python benchmarks/progressive_diagnose.py first-stage --size=64 --seed=0 --released
    python benchmarks/progressive_diagnose.py first-stage --size=128 --seed=0 --released
    python benchmarks/progressive_diagnose.py gradients --checkpoint=/tmp/run/ckpt-125
    python benchmarks/progressive_diagnose.py first-stage --size=32 --image_size=64 \\
        --per_class=40 --steps=4 --seed=0                                     # a quick check

See docs/progressive.md for what they showed.
"""

import argparse
import dataclasses
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import logging  # noqa: E402
import numpy as np  # noqa: E402
import progressive as bench  # noqa: E402
import tensorflow as tf  # noqa: E402

from efficientnetv2 import experiment  # noqa: E402
from efficientnetv2.train import losses  # noqa: E402
from efficientnetv2.train import trainer as trainer_lib  # noqa: E402

RELEASED = 'train.resize_lr_power=0,train.resize_warmup=0'


def build_trainer(args, stages, model_dir):
    data_dir = args.data_dir or os.path.join(
        tempfile.gettempdir(), f'efficientnetv2-photos-{args.per_class}-{args.crop_size}'
    )
    bench.build_photo_folder('photos', data_dir, args.per_class, args.crop_size)
    overrides = bench.photo_overrides(args.image_size, args.min_image_size or args.image_size // 2)
    overrides += [f'train.epochs={args.epochs}', f'train.stages={stages}', 'train.steps_per_loop=5']
    overrides += ['train.progressive=paper', f'train.seed={args.seed}']
    if args.released:
        overrides.append(RELEASED)
    if args.extra:
        overrides.append(args.extra)
    config = experiment.build_config(
        args.model_name, 'folder', data_dir=data_dir, hparam_str=','.join(overrides)
    )
    return trainer_lib.Trainer(config, model_dir)


def first_stage(args):
    with tempfile.TemporaryDirectory() as model_dir:
        fixed = args.size == args.image_size
        trainer = build_trainer(args, 0 if fixed else args.stages, model_dir)
        stage = trainer.plan[0]
        if not fixed and stage.image_size != args.size:
            raise SystemExit(
                f"--size={args.size}: the plan's first stage is {stage.image_size} px "
                '(set --min_image_size, or --size to the final size).'
            )
        steps = args.steps or trainer.plan.total_steps // args.stages
        stage = dataclasses.replace(stage, end_step=steps)
        trainer._run_stage(stage, 0)
        result = trainer._evaluate_stage_end(stage)
    norms = [h['grad_norm'] for h in trainer.history]
    print(
        f'first {steps} steps at {args.size} px, seed {args.seed}'
        f'{" (released stage rate)" if args.released else ""}: top-1 at '
        f'{result["image_size"]} px EMA {result["top_1"]:.4f}, raw '
        f'{result.get("raw", result)["top_1"]:.4f}; gradient norm mean {np.mean(norms):.3g}, '
        f'max {max(h["grad_norm_max"] for h in trainer.history):.3g}'
    )


def _group(path):
    top = path.split('/')[0]
    for prefix in ('stem', 'top', 'predictions', 'head'):
        if top.startswith(prefix):
            return prefix
    return top[:6] if top.startswith('block') else top


def gradients(args):
    with tempfile.TemporaryDirectory() as model_dir:
        trainer = build_trainer(args, args.stages, model_dir)
        if args.checkpoint:
            trainer.checkpoint.restore(args.checkpoint).expect_partial()
        model = trainer.model
        variables = model.trainable_variables
        images, labels = next(iter(trainer.task.build_eval_dataset(image_size=args.crop_size)))
        sizes = [int(s) for s in args.sizes.split(',')]
        table = {}
        for size in sizes:
            batch = tf.image.resize(images, (size, size), method='bilinear', antialias=True)
            with tf.GradientTape() as tape:
                logits = model(batch, training=True)
                loss = losses.classification_loss(
                    labels,
                    tf.cast(logits, tf.float32),
                    loss_type='softmax',
                    label_smoothing=0.1,
                    global_batch_size=int(labels.shape[0]),
                )
            for variable, grad in zip(variables, tape.gradient(loss, variables)):
                if grad is None or len(variable.shape) < 2:  # Kernels only.
                    continue
                squares = table.setdefault(_group(variable.path), {})
                squares[size] = squares.get(size, 0.0) + float(tf.reduce_sum(tf.square(grad)))
    weights = args.checkpoint or 'initial weights'
    print(f'gradient norm of each layer group, same images ({weights}):')
    print('%-12s' % 'group' + ''.join('%10d px' % s for s in sizes))  # noqa: UP031 (a table)
    for group, squares in table.items():
        print('%-12s' % group + ''.join('%13.3g' % np.sqrt(squares[s]) for s in sizes))  # noqa: UP031


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('command', choices=('first-stage', 'gradients'))
    parser.add_argument('--model_name', default='efficientnetv2-b0')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--image_size', type=int, default=128, help='final train/eval size')
    parser.add_argument('--min_image_size', type=int, default=None, help='default: half')
    parser.add_argument('--stages', type=int, default=4)
    parser.add_argument('--epochs', type=int, default=10)
    parser.add_argument('--size', type=int, default=64, help='first-stage: the size to train')
    parser.add_argument('--steps', type=int, default=None, help='first-stage: default a stage')
    parser.add_argument('--sizes', default='64,85,107,128', help='gradients: sizes to compare')
    parser.add_argument('--checkpoint', default=None, help='gradients: weights to load')
    parser.add_argument('--released', action='store_true', help=f'set {RELEASED}')
    parser.add_argument('--extra', default='', help='more hparam overrides')
    parser.add_argument('--data_dir', default=None)
    parser.add_argument('--per_class', type=int, default=200)
    parser.add_argument('--crop_size', type=int, default=160)
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)
    first_stage(args) if args.command == 'first-stage' else gradients(args)


if __name__ == '__main__':
    main()
