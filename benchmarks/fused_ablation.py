r"""Train-step throughput of the Fused-MBConv ablation (EfficientNetV2 paper, Table 3).

Measures images per second of one training step (forward in training mode, cross-entropy,
gradients, SGD update; a plain `tf.function` on a fixed random batch, warm-up excluded; the
median of `--steps` steps) of EfficientNet-B4 and its fused1-3/1-5/1-7 variants on this
machine's default device (the GPU when TensorFlow sees one), and prints them beside the paper's
TPUv3 (imgs/s/core) and V100 (imgs/s) columns, with parameters and FLOPs (ours and the paper's).
Only the ordering across variants is comparable between machines.

By default all variants are built first and timed in alternating rounds (one step of each per
round, `--steps` rounds, medians), so a machine load that changes during the run hits every
variant alike; `--sequential` times one model after the other instead (one model in memory at
a time: a peak of 3.2 GB of memory at 380 px and batch 2 on a CPU, against 4.1 GB with all
four built).

    python benchmarks/fused_ablation.py                      # 380 px, batch 32: slow on CPU
    python benchmarks/fused_ablation.py --image_size=64 --batch=4 --steps=2 --no_flops
    python benchmarks/fused_ablation.py --batch=2 --steps=5 --warmup=1   # 380 px on a CPU
"""

import argparse
import gc
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import logging  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='benchmarks/fused_ablation.py',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('--image_size', type=int, default=380)
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--steps', type=int, default=10, help='timed steps (median)')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument(
        '--policy',
        default=None,
        help='Keras dtype policy, e.g. mixed_float16 (GPU), mixed_bfloat16',
    )
    parser.add_argument('--no_flops', action='store_true', help='skip FLOP counting')
    parser.add_argument(
        '--sequential',
        action='store_true',
        help='time the models one after the other (less memory) instead of in alternating rounds',
    )
    parser.add_argument(
        '--variants', default=None, help='comma-separated subset of the four names (default: all)'
    )
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.WARNING)

    import keras
    import tensorflow as tf

    import efficientnetv2
    from efficientnetv2 import fused_ablation
    from efficientnetv2 import summary
    from efficientnetv2.nas import search

    names = fused_ablation.list_variants()
    if args.variants:
        wanted = [n.strip() for n in args.variants.split(',') if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            parser.error('unknown variant(s) {}; valid: {}'.format(unknown, ', '.join(names)))
        names = wanted
    if args.policy:
        keras.config.set_dtype_policy(args.policy)
    device = 'GPU' if tf.config.list_physical_devices('GPU') else 'CPU'
    print(
        f'device: {device}, image size {args.image_size}, batch {args.batch}, '
        f'{args.steps} timed steps, policy {keras.config.dtype_policy().name}',
        flush=True,
    )
    header = (
        f'{"model":<26} {"params":>9} {"paper":>9} {"GFLOPs":>9} {"paper":>9} {"imgs/s":>10} '
        f'{"TPUv3":>8} {"V100":>8}'
    )
    print(header)

    def row(name, trainable, flops, seconds):
        paper = fused_ablation.PAPER_TABLE3[name]
        print(
            f'{name:<26} {trainable / 1e6:8.2f}M {paper["params"] / 1e6:8.1f}M '
            f'{flops / 1e9:9.2f} {paper["flops"] / 1e9:9.1f} {args.batch / seconds:10.2f} '
            f'{paper["tpu"]:8d} {paper["v100"]:8d}',
            flush=True,
        )

    built = []
    for name in names:
        if args.sequential:
            keras.backend.clear_session()
        if args.policy:
            keras.config.set_dtype_policy(args.policy)
        model = efficientnetv2.get_model(name)
        trainable, _ = summary.count_params(model)
        flops = float('nan') if args.no_flops else summary.count_flops(model, args.image_size)
        step = search.make_train_step(model, args.image_size, args.batch)
        if args.sequential:
            (seconds,) = search.interleaved_step_times([step], args.steps, args.warmup)
            row(name, trainable, flops, seconds)
            del model, step
        else:
            built.append((name, trainable, flops, model, step))
    if built:
        times = search.interleaved_step_times([b[4] for b in built], args.steps, args.warmup)
        for (name, trainable, flops, _, _), seconds in zip(built, times):
            row(name, trainable, flops, seconds)
    # Free the models and their input iterators before the interpreter exits: left to the
    # exit, the teardown of several live iterators stalled for minutes.
    del built
    gc.collect()


if __name__ == '__main__':
    main()
