"""Progressive learning vs fixed-size training on the digits set, side by side in one run.

Both runs train the same model for the same number of epochs with the same recipe; the
progressive run grows the image size (and dropout) over `--stages` stages up to the final size,
the fixed run trains at the final size throughout. Printed: wall time (training only and with
evaluation) and final top-1 / top-5 with the EMA weights.

    python benchmarks/progressive.py                      # efficientnetv2-b0, 30 epochs
    python benchmarks/progressive.py --epochs=10 --model_name=efficientnetv2-b0
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import logging  # noqa: E402

from efficientnetv2 import config as config_lib  # noqa: E402
from efficientnetv2.train import trainer as trainer_lib  # noqa: E402


def run(model_name, hparams, model_dir):
    config = config_lib.build_config(model_name, 'digits', hparam_str=hparams)
    trainer = trainer_lib.Trainer(config, model_dir)
    start = time.time()
    trainer.train()
    train_seconds = time.time() - start
    result = trainer.evaluate()
    return dict(
        train_seconds=train_seconds,
        total_seconds=time.time() - start,
        top_1=result['top_1'],
        top_5=result['top_5'],
        steps=trainer.total_steps,
        plan=trainer.plan.format_table(),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model_name', default='efficientnetv2-b0')
    parser.add_argument('--epochs', type=int, default=30)
    parser.add_argument('--stages', type=int, default=4)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--image_size',
        type=int,
        default=None,
        help='final train and eval size (default: the digits recipe, 32)',
    )
    parser.add_argument(
        '--min_image_size',
        type=int,
        default=None,
        help='first-stage size (default: the digits recipe, 16)',
    )
    parser.add_argument('--extra', default='', help='more hparam overrides for both runs')
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)
    common = 'train.epochs=%d,train.seed=%d' % (args.epochs, args.seed)
    if args.image_size:
        common += ',train.image_size=%d,eval.image_size=%d' % (args.image_size, args.image_size)
    if args.min_image_size:
        common += ',train.min_image_size=%d' % args.min_image_size
    if args.extra:
        common += ',' + args.extra
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs['progressive'] = run(
            args.model_name,
            common + ',train.stages=%d' % args.stages,
            os.path.join(tmp, 'progressive'),
        )
        runs['fixed size'] = run(
            args.model_name, common + ',train.stages=0', os.path.join(tmp, 'fixed')
        )
    print(
        '\n%s on digits, %d epochs (%d steps), 2 runs in one process:'
        % (args.model_name, args.epochs, runs['fixed size']['steps'])
    )
    print(runs['progressive']['plan'])
    print('%-12s %10s %10s %8s %8s' % ('run', 'train s', 'total s', 'top-1', 'top-5'))
    for name, r in runs.items():
        print(
            '%-12s %10.1f %10.1f %8.4f %8.4f'
            % (name, r['train_seconds'], r['total_seconds'], r['top_1'], r['top_5'])
        )
    speedup = runs['fixed size']['train_seconds'] / runs['progressive']['train_seconds']
    delta = 100 * (runs['progressive']['top_1'] - runs['fixed size']['top_1'])
    print(f'progressive: {speedup:.2f}x faster training, top-1 {delta:+.2f} points')


if __name__ == '__main__':
    main()
