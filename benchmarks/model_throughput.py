r"""Throughput of this package's models against keras.applications, same variant and input.

Measures, for each model name, images per second of
- forward: `model(images, training=False)` inside a `tf.function`;
- train: one full training step inside a plain `tf.function` loop (forward in training mode,
  softmax cross-entropy on logits, `tf.GradientTape` gradients, RMSprop update), not
  `model.fit`, so Keras' fit machinery does not hide the model's cost.

Both implementations get the same random images (already scaled), labels, batch, image size and
optimizer. Fairness: keras.applications V2 models are built with `include_preprocessing=False`
(ours take scaled images); keras' V1 models always contain Rescaling + Normalization (two
elementwise ops, negligible next to the network). Both output logits (no softmax). Timed
rounds alternate between the implementations, so drifting machine load hits all alike; the
fastest and the median round are reported, and images per CPU-second of this process. Warm-up
steps (tracing included) are not timed.

    python benchmarks/model_throughput.py --models efficientnetv2-b0,efficientnetv2-s \
        --image_size 128 --batch 32 --steps 5 --rounds 5

Ablations: `--ours_overrides` takes model hparams for this package's model; several
configurations separated by ';' are all measured in the same alternating rounds, e.g.
`--ours_overrides ";fused_bn=False;act_fn=relu"` (the empty first entry is the default model).
`--impls ours` skips keras; `--policy mixed_bfloat16` sets the Keras dtype policy for all.
`--op_profile N` also traces a few steps of every contender with the TensorFlow profiler and
prints the N most expensive op types (op time per step, summed over threads), which shows where
the time goes (e.g. keras' unfused batch norm as Mul/Mean/Sum/Tile/SquaredDifference ops).
Results go to stdout as a table, each row with its ratio to keras.
"""

import argparse
import collections
import glob
import os
import statistics
import sys
import tempfile
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from efficientnetv2 import architectures  # pylint: disable=g-import-not-at-top
from efficientnetv2 import model as model_lib  # pylint: disable=g-import-not-at-top

IMPLS = ('ours', 'keras')
MODES = ('forward', 'train')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--models',
        default='efficientnetv2-b0,efficientnetv2-s',
        help='comma-separated model names with a keras.applications twin',
    )
    parser.add_argument('--image_size', type=int, default=128)
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--steps', type=int, default=5, help='timed steps per round')
    parser.add_argument('--warmup', type=int, default=3, help='untimed steps (tracing incl.)')
    parser.add_argument(
        '--rounds',
        type=int,
        default=5,
        help='timed rounds per contender, alternating between contenders',
    )
    parser.add_argument('--modes', default=','.join(MODES), help='forward,train')
    parser.add_argument('--impls', default=','.join(IMPLS), help='ours,keras')
    parser.add_argument(
        '--ours_overrides',
        default='',
        help='model hparams for ours, e.g. "fused_bn=False,survival_prob=None"; '
        "';' separates several configurations to compare",
    )
    parser.add_argument(
        '--policy', default='float32', help='Keras dtype policy, e.g. float32 or mixed_bfloat16'
    )
    parser.add_argument('--jit_compile', action='store_true', help='XLA-compile both steps')
    parser.add_argument(
        '--op_profile',
        type=int,
        default=0,
        help='if > 0, print this many top op types per contender and mode',
    )
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    args.models = _choices(args.models, None, '--models')
    args.modes = _choices(args.modes, MODES, '--modes')
    args.impls = _choices(args.impls, IMPLS, '--impls')
    for name in args.models:
        if not architectures.get_variant(name).keras_name:
            raise ValueError(
                '--models: {!r} has no keras.applications twin. Valid: {}.'.format(
                    name, ', '.join(v.name for v in architectures.VARIANTS.values() if v.keras_name)
                )
            )
    args.ours_overrides = [item.strip() for item in args.ours_overrides.split(';')]
    for flag in ('image_size', 'batch', 'steps', 'rounds'):
        if getattr(args, flag) < 1:
            raise ValueError(f'--{flag} must be >= 1. Received: {getattr(args, flag)!r}')
    return args


def _choices(text, valid, flag):
    items = [item.strip() for item in text.split(',') if item.strip()]
    bad = [item for item in items if valid is not None and item not in valid]
    if not items or bad:
        raise ValueError(
            '{} must be a comma-separated list of {}. Received: {!r}'.format(
                flag, ', '.join(valid or ('model names',)), text
            )
        )
    return items


def build_model(impl, name, image_size, ours_overrides=''):
    """A 1000-class model returning logits, built for `image_size` square RGB inputs."""
    input_shape = (image_size, image_size, 3)
    if impl == 'keras':
        constructor = getattr(keras.applications, architectures.get_variant(name).keras_name)
        kwargs = dict(weights=None, input_shape=input_shape, classifier_activation=None)
        if not architectures.get_variant(name).is_v1:
            kwargs['include_preprocessing'] = False
        return constructor(**kwargs)
    config = model_lib.model_hparams(name).override(ours_overrides)
    return model_lib.EfficientNet(input_shape=input_shape, **config.as_dict())


def make_steps(model, jit_compile=False):
    """{'forward': fn, 'train': fn}: tf.functions of (images, labels) for `model`."""
    optimizer = keras.optimizers.RMSprop(learning_rate=1e-3, rho=0.9, momentum=0.9, epsilon=1e-3)
    optimizer.build(model.trainable_variables)

    @tf.function(jit_compile=jit_compile)
    def forward(images, labels):
        del labels
        return tf.reduce_sum(model(images, training=False))

    @tf.function(jit_compile=jit_compile)
    def train(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels=labels, logits=tf.cast(logits, tf.float32)
                )
            )
        variables = model.trainable_variables
        gradients = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(gradients, variables))
        return loss

    return {'forward': forward, 'train': train}


def _time_steps(step, images, labels, steps):
    """(wall seconds, process CPU seconds) of `steps` calls."""
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    result = None
    for _ in range(steps):
        result = step(images, labels)
    result.numpy()  # Waits for the last step.
    return time.perf_counter() - start_wall, time.process_time() - start_cpu


def op_breakdown(step, images, labels, steps):
    """{op type: (seconds per step, ops per step)} from a TensorFlow profiler trace.

    Sums the durations of executed TF ops over all inter-op threads, so the total can exceed
    wall time when ops run concurrently.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # Ships with TensorFlow.

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            _time_steps(step, images, labels, steps)
        finally:
            tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        for path in glob.glob(os.path.join(logdir, '**', '*.xplane.pb'), recursive=True):
            with open(path, 'rb') as handle:
                space.MergeFromString(handle.read())
    seconds, counts = collections.Counter(), collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith('tf_Compute'):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name  # 'op_name:OpType'
                if ':' not in name or '::' in name:
                    continue  # Executor bookkeeping, not an op.
                op_type = name.rsplit(':', 1)[1]
                seconds[op_type] += event.duration_ps * 1e-12 / steps
                counts[op_type] += 1.0 / steps
    return {op_type: (seconds[op_type], counts[op_type]) for op_type in seconds}


def format_breakdown(name, label, mode, breakdown, top):
    """The `top` op types of an `op_breakdown` as text."""
    total = sum(value[0] for value in breakdown.values())
    ops = round(sum(v[1] for v in breakdown.values()))
    lines = [
        f'{name} {label} {mode}: op time {total:.3f} s/step in {int(ops)} ops/step; top op types:'
    ]
    ranked = sorted(breakdown.items(), key=lambda item: -item[1][0])[:top]
    for op_type, (seconds, count) in ranked:
        per_step = 1000 * seconds
        lines.append(f'  {op_type!s:<46} {per_step:8.1f} ms/step {int(round(count)):6d} ops/step')
    return '\n'.join(lines)


def _contenders(args):
    """(label, impl, overrides) for every model to measure."""
    contenders = []
    if 'ours' in args.impls:
        for overrides in args.ours_overrides:
            label = f'ours[{overrides}]' if overrides else 'ours'
            contenders.append((label, 'ours', overrides))
    if 'keras' in args.impls:
        contenders.append(('keras', 'keras', ''))
    return contenders


def benchmark_model(name, args):
    """{label: {mode: {'best', 'median', 'cpu'}: images per second}} for one model name."""
    rng = np.random.default_rng(args.seed)
    images = tf.constant(
        rng.normal(size=(args.batch, args.image_size, args.image_size, 3)), tf.float32
    )
    labels = tf.constant(rng.integers(0, 1000, size=(args.batch,)), tf.int32)
    steps = {}
    for label, impl, overrides in _contenders(args):
        model = build_model(impl, name, args.image_size, overrides)
        logging.info('%s %s: %d parameters.', label, name, model.count_params())
        steps[label] = make_steps(model, args.jit_compile)
    results = {label: {} for label in steps}
    for mode in args.modes:
        for label in steps:
            _time_steps(steps[label][mode], images, labels, args.warmup)
        timings = {label: [] for label in steps}
        for round_index in range(args.rounds):
            for label in steps:
                timings[label].append(_time_steps(steps[label][mode], images, labels, args.steps))
                logging.info(
                    '%s %s %s round %d: %.2f s wall, %.2f s CPU',
                    name,
                    label,
                    mode,
                    round_index,
                    *timings[label][-1],
                )
        images_done = args.batch * args.steps
        for label, rounds in timings.items():
            walls = [wall for wall, _ in rounds]
            results[label][mode] = dict(
                best=images_done / min(walls),
                median=images_done / statistics.median(walls),
                cpu=images_done / statistics.median([cpu for _, cpu in rounds]),
            )
        if args.op_profile > 0:
            for label in steps:
                breakdown = op_breakdown(steps[label][mode], images, labels, min(args.steps, 3))
                print(format_breakdown(name, label, mode, breakdown, args.op_profile))
    return results


def format_table(all_results, args):
    """The results as text: one line per model, contender and mode, with ratios to keras.

    Columns: images/s from the fastest round (`best`, the least disturbed by other processes),
    from the median round, and per CPU-second of this process (`img/cpu-s`, insensitive to
    time stolen by other processes); each with its ratio to keras.
    """
    columns = ('best', 'median', 'cpu')
    lines = [
        f'image_size={args.image_size} batch={args.batch} steps={args.steps} '
        f'rounds={args.rounds} jit={args.jit_compile} policy={args.policy}',
        f'{"model":<18} {"contender":<30} {"mode":<8}'
        + ''.join(f'{title:>18}' for title in ('best img/s', 'median img/s', 'img/cpu-s')),
    ]
    for name, results in all_results.items():
        for mode in args.modes:
            reference = results.get('keras', {}).get(mode)
            for label, by_mode in results.items():
                cells = []
                for column in columns:
                    value = by_mode[mode][column]
                    ratio = f' ({value / reference[column]:.2f}x)' if reference else ''
                    cells.append(f'{value:.1f}{ratio}'.rjust(18))
                lines.append(f'{name!s:<18} {label!s:<30} {mode!s:<8}' + ''.join(cells))
    return '\n'.join(lines)


def main(argv=None):
    logging.set_verbosity(logging.INFO)
    args = parse_args(argv)
    keras.config.set_dtype_policy(args.policy)
    tf.get_logger().setLevel('ERROR')  # Each contender traces its own steps: no retrace alarm.
    logging.info(
        'TensorFlow %s, Keras %s, devices %s',
        tf.__version__,
        keras.__version__,
        [d.name for d in tf.config.list_logical_devices()],
    )
    all_results = {}
    for name in args.models:
        all_results[name] = benchmark_model(name, args)
        keras.backend.clear_session()
    # The table is this script's output, not a log message.
    print(format_table(all_results, args))
    return all_results


if __name__ == '__main__':
    main()
