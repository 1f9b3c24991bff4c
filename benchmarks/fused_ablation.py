r"""Train-step throughput of the Fused-MBConv ablation (EfficientNetV2 paper, Table 3).

Measures images per second of one training step (forward in training mode, cross-entropy,
gradients, SGD update; a plain `tf.function` on a fixed random batch, warm-up excluded; the
median of `--steps` steps) of EfficientNet-B4 and its fused1-3/1-5/1-7 variants on this
machine's default device (the GPU when TensorFlow sees one), and prints them beside the paper's
TPUv3 (imgs/s/core) and V100 (imgs/s) columns, with parameters and FLOPs (ours and the paper's).
Only the ordering across variants is comparable between machines.

    python benchmarks/fused_ablation.py                      # 380 px, batch 32: slow on CPU
    python benchmarks/fused_ablation.py --image_size=64 --batch=4 --steps=2 --no_flops
"""

import argparse
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
    for name in names:
        keras.backend.clear_session()
        if args.policy:
            keras.config.set_dtype_policy(args.policy)
        model = efficientnetv2.get_model(name)
        trainable, _ = summary.count_params(model)
        flops = float('nan') if args.no_flops else summary.count_flops(model, args.image_size)
        seconds = search.measure_step_time(
            model, args.image_size, args.batch, args.steps, args.warmup
        )
        paper = fused_ablation.PAPER_TABLE3[name]
        print(
            f'{name:<26} {trainable / 1e6:8.2f}M {paper["params"] / 1e6:8.1f}M '
            f'{flops / 1e9:9.2f} {paper["flops"] / 1e9:9.1f} {args.batch / seconds:10.1f} '
            f'{paper["tpu"]:8d} {paper["v100"]:8d}',
            flush=True,
        )


if __name__ == '__main__':
    main()
