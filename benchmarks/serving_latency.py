r"""Serving latency of the exported SavedModel next to keras.applications' same model.

Three SavedModels are written and reloaded with `tf.saved_model.load`, then their
`serving_default` signature is timed on a float32 batch of random 0..255 pixels at the
evaluation size:

- `ours-serving`: `efficientnetv2.export.export_saved_model` (centre crop + resize + pixel
  scaling in the graph, then the model; outputs logits, probabilities and top-5);
- `ours-model`: this package's model alone, `tf.saved_model.save` with a float signature on
  already scaled images (outputs logits);
- `keras`: keras.applications' same variant (`weights=None`, logits, its own in-model input
  scaling), `tf.saved_model.save` with the same kind of float signature.

Rounds alternate between the three so that drifting machine load hits all alike; the median
and the fastest round are reported per batch size.

    pip install -e .   # or: export PYTHONPATH=.
    python benchmarks/serving_latency.py --model efficientnetv2-b0 --batches 1,32
"""

import argparse
import os
import statistics
import tempfile
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from efficientnetv2 import architectures
from efficientnetv2 import export
from efficientnetv2 import model as model_lib


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--model', default='efficientnetv2-b0', help='a variant with a keras.applications twin'
    )
    parser.add_argument(
        '--image_size', type=int, default=None, help="input side; default: the variant's eval size"
    )
    parser.add_argument('--batches', default='1,32', help='comma-separated batch sizes')
    parser.add_argument(
        '--calls',
        default='20,3',
        help='timed calls per round for each batch size (comma-separated)',
    )
    parser.add_argument('--rounds', type=int, default=3, help='alternating rounds per model')
    parser.add_argument('--warmup', type=int, default=2, help='untimed calls per model')
    parser.add_argument('--export_dir', default=None, help='default: a temporary directory')
    return parser.parse_args(argv)


def save_float_signature(keras_model, path, image_size):
    """`tf.saved_model.save` of a model with one float32 [N, S, S, 3] signature -> logits."""
    spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name='images')
    serve = tf.function(
        lambda images: {'logits': keras_model(images, training=False)}, input_signature=[spec]
    )
    root = tf.__internal__.tracking.AutoTrackable()
    root.variables = [v.value for v in keras_model.variables]  # As export._export_root.
    root.serve = serve
    tf.saved_model.save(root, path, signatures={'serving_default': serve.get_concrete_function()})


def build_exports(args, image_size, export_dir):
    variant = architectures.get_variant(args.model)
    if not variant.keras_name:
        raise ValueError(f'--model must have a keras.applications twin. Received: {args.model!r}')
    ours = model_lib.build_model(args.model)
    paths = {
        name: os.path.join(export_dir, name) for name in ('ours-serving', 'ours-model', 'keras')
    }
    export.export_saved_model(ours, paths['ours-serving'], image_size, variant.preprocess)
    save_float_signature(ours, paths['ours-model'], image_size)
    theirs = getattr(keras.applications, variant.keras_name)(
        weights=None, input_shape=(image_size, image_size, 3), classifier_activation=None
    )
    save_float_signature(theirs, paths['keras'], image_size)
    return {
        name: tf.saved_model.load(path).signatures['serving_default']
        for name, path in paths.items()
    }


def time_calls(signature, images, calls):
    start = time.perf_counter()
    for _ in range(calls):
        outputs = signature(images=images)
    outputs['logits'].numpy()  # Results are ready when the last call returned.
    return (time.perf_counter() - start) / calls


def measure(signatures, batch, calls, rounds, warmup, image_size):
    images = tf.constant(
        np.random.RandomState(batch)
        .uniform(0, 255, (batch, image_size, image_size, 3))
        .astype(np.float32)
    )
    for signature in signatures.values():
        time_calls(signature, images, warmup)
    seconds = {name: [] for name in signatures}
    for _ in range(rounds):
        for name, signature in signatures.items():
            seconds[name].append(time_calls(signature, images, calls))
    return seconds


def main(argv=None):
    args = parse_args(argv)
    image_size = args.image_size or architectures.get_variant(args.model).eval_size
    batches = [int(b) for b in args.batches.split(',')]
    calls = [int(c) for c in args.calls.split(',')]
    calls += [calls[-1]] * (len(batches) - len(calls))
    with tempfile.TemporaryDirectory() as tmp:
        signatures = build_exports(args, image_size, args.export_dir or tmp)
        rows = []
        for batch, n_calls in zip(batches, calls):
            seconds = measure(signatures, batch, n_calls, args.rounds, args.warmup, image_size)
            keras_median = statistics.median(seconds['keras'])
            for name, values in seconds.items():
                median = statistics.median(values)
                rows.append(
                    (
                        name,
                        batch,
                        median * 1e3,
                        min(values) * 1e3,
                        batch / median,
                        median / keras_median,
                    )
                )
    print(
        f'{args.model}, {image_size} px, TF {tf.__version__}, {os.cpu_count()} CPU cores visible; '
        'latency per call of serving_default'
    )
    print(
        f'{"model":<13} {"batch":>5} {"median ms":>12} {"best ms":>12} {"images/s":>10} '
        f'{"vs keras":>10}'
    )
    for name, batch, median, best, throughput, ratio in rows:
        print(f'{name:<13} {batch:5d} {median:12.1f} {best:12.1f} {throughput:10.1f} {ratio:9.2f}x')


if __name__ == '__main__':
    logging.set_verbosity(logging.WARNING)
    main()
