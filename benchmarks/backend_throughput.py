"""Train-step throughput of this package's EfficientNetV2 beside keras.applications', any backend.

One process, no TensorFlow needed (JAX or PyTorch): for each model and image size it compiles
a train step (bf16 mixed precision by default, XLA on JAX), times the first step at that size
(compile included) and then `--steps` steady steps; then a short progressive run (the V2-S
plan's sizes, equal steps per stage) against the same number of steps at the final size.

    KERAS_BACKEND=jax python benchmarks/backend_throughput.py                 # H200: 128/300 px
    KERAS_BACKEND=jax python benchmarks/backend_throughput.py --sizes=32,48 --batch=2 \\
        --steps=2 --progressive_steps=2 --stages=2 --model=efficientnetv2-b0  # CPU smoke test

Both models are built with any input size: ours as `get_model(name)`; keras.applications'
as its `include_top=False, pooling='avg'` backbone (its own preprocessing layers included)
with a 1000-way logits Dense on top, so one model serves every size for both. Same optimizer
(SGD with momentum), loss and random data for both. Steps are timed with `train_on_batch`
(one small host read of the loss per step). Prints a Markdown table and writes `--out` JSON.
"""

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault('KERAS_BACKEND', 'jax')

import keras  # noqa: E402
import numpy as np  # noqa: E402

KERAS_APPLICATIONS = {
    'efficientnetv2-s': 'EfficientNetV2S',
    'efficientnetv2-m': 'EfficientNetV2M',
    'efficientnetv2-l': 'EfficientNetV2L',
    'efficientnetv2-b0': 'EfficientNetV2B0',
    'efficientnetv2-b1': 'EfficientNetV2B1',
    'efficientnetv2-b2': 'EfficientNetV2B2',
    'efficientnetv2-b3': 'EfficientNetV2B3',
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='efficientnetv2-s', choices=sorted(KERAS_APPLICATIONS))
    parser.add_argument('--sizes', default='128,300', help='image sizes of the step table')
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--steps', type=int, default=20, help='timed steps per size')
    parser.add_argument('--dtype', default='mixed_bfloat16', help="Keras policy ('float32')")
    parser.add_argument('--which', default='ours,keras', help='ours, keras or both')
    parser.add_argument(
        '--progressive_steps', type=int, default=20, help='steps per stage (0: skip)'
    )
    parser.add_argument('--stages', type=int, default=4, help='progressive stages')
    parser.add_argument('--out', default=None, help='JSON file for the results')
    return parser.parse_args(argv)


def device_name():
    backend = keras.backend.backend()
    if backend == 'jax':
        import jax

        device = jax.devices()[0]
        return f'jax {jax.__version__} {device.platform}: {device.device_kind}'
    if backend == 'torch':
        import torch

        if torch.cuda.is_available():
            return f'torch {torch.__version__} cuda: {torch.cuda.get_device_name()}'
        return f'torch {torch.__version__} cpu'
    return backend


def build(which, model_name):
    keras.utils.set_random_seed(0)
    if which == 'ours':
        import efficientnetv2

        return efficientnetv2.get_model(model_name, num_classes=1000)
    constructor = getattr(keras.applications, KERAS_APPLICATIONS[model_name])
    base = constructor(include_top=False, weights=None, input_shape=(None, None, 3), pooling='avg')
    logits = keras.layers.Dense(1000, dtype='float32', name='predictions')(base.output)
    return keras.Model(base.input, logits, name=base.name)


def compile_model(model):
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True if keras.backend.backend() == 'jax' else 'auto',
    )
    return model


def batch(size, n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (n, size, size, 3)).astype('float32')
    y = rng.integers(0, 1000, (n,)).astype('int32')
    return keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)


def first_and_steady(model, size, n, steps):
    """(seconds of the first step at this size (compile included), steady seconds per step)."""
    x, y = batch(size, n)
    start = time.perf_counter()
    model.train_on_batch(x, y)
    first = time.perf_counter() - start
    model.train_on_batch(x, y)  # A second warm step (allocator, autotuning).
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return first, (time.perf_counter() - start) / max(steps, 1)


def progressive_sizes(final_size, stages):
    from efficientnetv2.keras_workflow import progressive_plan

    plan = progressive_plan(epochs=stages, image_size=final_size, num_stages=stages)
    return [stage.image_size for stage in plan]


def run_steps(model, size, n, steps):
    x, y = batch(size, n)
    for _ in range(steps):
        model.train_on_batch(x, y)


def progressive_vs_fixed(model, sizes, n, steps):
    """Wall seconds of `steps` per size in order vs `steps * len(sizes)` at the last size.

    Each is timed twice: the first pass includes compiling, the second is steady state
    (every size already compiled).
    """
    result = {}
    for label, plan in (('progressive', sizes), ('fixed', [sizes[-1]] * len(sizes))):
        for phase in ('with_compile', 'steady'):
            start = time.perf_counter()
            for size in plan:
                run_steps(model, size, n, steps)
            result[f'{label}_{phase}_s'] = time.perf_counter() - start
    result['speedup_steady'] = result['fixed_steady_s'] / result['progressive_steady_s']
    result['speedup_with_compile'] = (
        result['fixed_with_compile_s'] / result['progressive_with_compile_s']
    )
    return result


def main(argv=None):
    args = parse_args(argv)
    keras.mixed_precision.set_global_policy(args.dtype)
    sizes = [int(s) for s in args.sizes.split(',') if s]
    kinds = [k.strip() for k in args.which.split(',') if k.strip()]
    results = dict(
        backend=keras.backend.backend(),
        device=device_name(),
        host=f'{platform.node()} {platform.machine()} {os.cpu_count()} CPUs',
        keras=keras.__version__,
        model=args.model,
        batch=args.batch,
        dtype=args.dtype,
        steps=args.steps,
        rows=[],
        progressive={},
    )
    print(f'# {results["device"]}; {args.model}, batch {args.batch}, {args.dtype}')
    print('| model | size | img/s | first step s (compile incl.) |')
    print('| --- | --- | --- | --- |')
    for kind in kinds:
        model = compile_model(build(kind, args.model))
        for size in sizes:
            first, step = first_and_steady(model, size, args.batch, args.steps)
            row = dict(
                model=kind,
                size=size,
                img_per_s=args.batch / step,
                step_s=step,
                first_step_s=first,
                compile_s=max(first - step, 0.0),
            )
            results['rows'].append(row)
            print(f'| {kind} | {size} | {row["img_per_s"]:,.1f} | {first:.1f} |', flush=True)
        if args.progressive_steps:
            plan_sizes = progressive_sizes(max(sizes), args.stages)
            progress = progressive_vs_fixed(model, plan_sizes, args.batch, args.progressive_steps)
            progress['sizes'] = plan_sizes
            results['progressive'][kind] = progress
            print(
                f'# {kind}: progressive {plan_sizes} vs fixed {plan_sizes[-1]}, '
                f'{args.progressive_steps} steps per stage: steady speed-up '
                f'{progress["speedup_steady"]:.2f}x, with compile '
                f'{progress["speedup_with_compile"]:.2f}x',
                flush=True,
            )
        del model
    results['tensorflow_loaded'] = sys.modules.get('tensorflow') is not None
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == '__main__':
    main()
