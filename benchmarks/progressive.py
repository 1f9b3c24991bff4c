"""Progressive learning vs fixed-size training: wall time, where it goes, and top-1.

For each seed the same model is trained with the progressive plan (`--stages` stages from
`--min_image_size` to `--image_size`: image size, RandAugment magnitude and dropout grow
together), in one or both plan modes (`--mode=paper,official`), and once at the final size
throughout (`train.stages=0`, one fixed twin serving both modes), for the same number of
epochs, with the same final regularization and the folder recipe's own learning rate
(`train.lr_base` 0.016; its `train.resize_warmup` ramp after each size increase, see
docs/progressive.md). Every stage end is evaluated as `--mode=traineval` does (EMA and raw
weights, at the final size and at the stage's size); the reported top-1 is the EMA's at the
final size after the last stage. Printed per run and as a seed mean:

* the wall time of `Trainer.train()` (stage-end evaluations included) split into tracing
  (`trainer.stage_timings`), compilation / warm-up (what each stage's first compiled call
  took beyond its steady per-step time),
  train steps (`trainer.history`, first-call excess removed), evaluation (every stage end),
  and other (pipeline rebuilds, checkpoints, summaries: the rest of the wall time);
* the input pipeline alone: each stage's pipeline timed without training (it overlaps the
  steps through prefetching, so it is an estimate of its CPU cost, not an extra term);
* the compute-only ceiling of the speed-up: fixed-run steps / final-size throughput divided
  by the sum over stages of stage steps / stage throughput (steady-state images/s of each
  run), next to the actual wall-time speed-up (train wall times) and their ratio.

Datasets (`--dataset`):

* `photos` (default): 10 classes, one per photograph, from two packages that ship the photos
  offline: scikit-image's `skimage.data` (astronaut.png, chelsea.png, coffee.png, rocket.jpg,
  motorcycle_left.png, hubble_deep_field.jpg, retina.jpg, ihc.png) and scikit-learn's
  `load_sample_images()` (china.jpg, flower.jpg). Needs `pip install scikit-image`.
* `sklearn-photos`: scikit-learn only: china.jpg and flower.jpg (427x640) cut into a 2x3 grid
  of regions, 12 classes (one per region).
* `digits`: scikit-learn's 8x8 digits (upscaled), the `python main.py` demo set.

For the photo sets, each image is a random square crop (side 35-60% of the class's shorter
side) of its photograph or region, resized to `--crop_size` px and written as JPEG to an image
folder (`<data_dir>/train/<class>`, `<data_dir>/eval/<class>`; built once, deterministically,
and reused). The crop origins are drawn inside an 8x8 grid of origin cells; a fixed fifth of
the cells hold only eval crops and the rest only train crops, so no eval crop is at a train
position (their pixels may overlap neighbouring train crops).

    python benchmarks/progressive.py --dataset=photos --seeds=0,1,2   # Algorithm 1: 64 -> 128 px
    python benchmarks/progressive.py --dataset=photos --mode=official # B0's code: 80 -> 128
    python benchmarks/progressive.py --dataset=photos --mode=paper,official --json out.json
    python benchmarks/progressive.py --dataset=photos --epochs=2 --image_size=64 \\
        --min_image_size=32 --stages=2 --per_class=40 --seeds=0          # a quick check
    python benchmarks/progressive.py --dataset=digits --epochs=30         # the demo's plan
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import logging  # noqa: E402
import numpy as np  # noqa: E402

from efficientnetv2 import experiment  # noqa: E402
from efficientnetv2.train import trainer as trainer_lib  # noqa: E402

DATASETS = ('photos', 'sklearn-photos', 'digits')
SKIMAGE_PHOTOS = (
    'astronaut.png',
    'chelsea.png',
    'coffee.png',
    'rocket.jpg',
    'motorcycle_left.png',
    'hubble_deep_field.jpg',
    'retina.jpg',
    'ihc.png',
)
ORIGIN_GRID = 8  # Crop origins fall in an ORIGIN_GRID x ORIGIN_GRID grid of cells.
CROP_FRACTION = (0.35, 0.6)


# -- the photo datasets ---------------------------------------------------------------------


def _sklearn_photos():
    from sklearn import datasets

    photos = datasets.load_sample_images()
    return [
        (os.path.splitext(os.path.basename(name))[0], image)
        for name, image in zip(photos.filenames, photos.images)
    ]


def _skimage_photos():
    try:
        import skimage.data
    except ImportError as e:
        raise SystemExit(
            '--dataset=photos needs scikit-image (pip install scikit-image), or '
            'use --dataset=sklearn-photos (scikit-learn only).'
        ) from e
    from PIL import Image

    folder = os.path.dirname(skimage.data.__file__)
    photos = []
    for name in SKIMAGE_PHOTOS:
        with Image.open(os.path.join(folder, name)) as image:
            photos.append((os.path.splitext(name)[0], np.asarray(image.convert('RGB'))))
    return photos


def class_regions(dataset):
    """(class name, HxWx3 uint8 array) for every class of a photo dataset."""
    if dataset == 'photos':
        return _skimage_photos() + _sklearn_photos()
    regions = []
    for name, image in _sklearn_photos():
        height, width = image.shape[:2]
        for row in range(2):
            for col in range(3):
                regions.append(
                    (
                        f'{name}_r{row}c{col}',
                        image[
                            row * height // 2 : (row + 1) * height // 2,
                            col * width // 3 : (col + 1) * width // 3,
                        ],
                    )
                )
    return regions


def _is_eval_cell(row, col):
    return (row + 2 * col) % 5 == 0  # A fifth of the cells, spread over the grid.


def _crops(image, count, is_eval, crop_size, rng):
    from PIL import Image

    height, width = image.shape[:2]
    cells = [
        (r, c)
        for r in range(ORIGIN_GRID)
        for c in range(ORIGIN_GRID)
        if _is_eval_cell(r, c) == is_eval
    ]
    for _ in range(count):
        side = int(min(height, width) * rng.uniform(*CROP_FRACTION))
        row, col = cells[rng.integers(len(cells))]
        top = int((row + rng.uniform()) / ORIGIN_GRID * (height - side))
        left = int((col + rng.uniform()) / ORIGIN_GRID * (width - side))
        crop = Image.fromarray(image[top : top + side, left : left + side])
        yield crop.resize((crop_size, crop_size), Image.BICUBIC)


def build_photo_folder(dataset, data_dir, per_class, crop_size):
    """Writes the crops (once) and returns `data_dir`; 80% train, 20% eval per class."""
    marker = os.path.join(data_dir, 'DONE')
    if os.path.exists(marker):
        return data_dir
    rng = np.random.default_rng(1234)
    num_eval = max(1, per_class // 5)
    for name, image in class_regions(dataset):
        for split, count in (('train', per_class - num_eval), ('eval', num_eval)):
            folder = os.path.join(data_dir, split, name)
            os.makedirs(folder, exist_ok=True)
            for i, crop in enumerate(_crops(image, count, split == 'eval', crop_size, rng)):
                crop.save(os.path.join(folder, f'{i:04d}.jpg'), quality=90)
    with open(marker, 'w') as f:
        f.write(f'{dataset} per_class={per_class} crop_size={crop_size}\n')
    return data_dir


def photo_overrides(size, min_image_size):
    """The photo sets' hparam overrides (the folder recipe's rate and stage-rate settings).

    The same final regularisation for the progressive and the fixed runs; the plan starts from
    the min_* values.
    """
    return [
        f'train.image_size={size}',
        f'eval.image_size={size}',
        f'train.min_image_size={min_image_size}',
        'train.batch_size=32',
        'eval.batch_size=64',
        'train.lr_sched=cosine',
        'train.lr_warmup_epochs=1',
        'train.ema_decay=0.999',
        'train.steps_per_loop=10',
        'data.augname=randaug',
        'data.ram=9',
        'train.min_ram=5',
        'data.mixup_alpha=0',
        'data.cutmix_alpha=0',
        'model.dropout_rate=0.2',
        'train.min_dropout=0.1',
    ]


# -- timing ---------------------------------------------------------------------------------


def pipeline_images_per_second(trainer, stage, batches):
    """The stage's train pipeline alone: images/s over `batches` batches after a warm-up."""
    dataset = trainer.task.build_train_dataset(stage)
    iterator = iter(dataset)
    next(iterator)
    start = time.time()
    for _ in range(batches):
        next(iterator)
    return batches * trainer.global_batch / (time.time() - start)


def split_times(trainer, train_seconds):
    """Tracing, compilation / warm-up, steps and other seconds of a finished `train()`."""
    trace = sum(t['trace_seconds'] for t in trainer.stage_timings)
    calls = sum(h['seconds'] for h in trainer.history)
    compile_excess = 0.0
    throughput = {}
    unsteady = []
    for timing in trainer.stage_timings:
        entries = [h for h in trainer.history if h['stage'] == timing['stage']]
        first, rest = entries[0], entries[1:]
        first_steps = first['step'] - timing['step']
        if rest:
            steps = rest[-1]['step'] - first['step']
            per_step = sum(h['seconds'] for h in rest) / steps
            compile_excess += max(0.0, first['seconds'] - first_steps * per_step)
        else:  # One call only: no steady state to compare with (the rate includes warm-up).
            per_step = first['seconds'] / first_steps
            unsteady.append(timing['image_size'])
        throughput[timing['stage']] = trainer.global_batch / per_step
    # Parts of `other` that the trainer times: each stage's pipeline start, its stage-end
    # checkpoint and the pipeline's end.
    parts = {
        part: sum(t.get(f'{part}_seconds', 0.0) for t in trainer.stage_timings)
        for part in ('setup', 'save', 'close')
    }
    # Pipelines close in the background; train() waits for the last one at its end.
    parts['close'] += getattr(trainer, 'close_wait_seconds', 0.0)
    return dict(
        trace=trace,
        compile=compile_excess,
        steps=calls - compile_excess,
        other=train_seconds - trace - calls,
        other_parts=parts,
        throughput=throughput,
        unsteady=unsteady,
    )


def run(args, seed, hparams, model_dir, dataset, data_dir):
    config = experiment.build_config(
        args.model_name, dataset, data_dir=data_dir, hparam_str=hparams + f',train.seed={seed}'
    )
    trainer = trainer_lib.Trainer(config, model_dir)
    input_rates = {
        stage.index: pipeline_images_per_second(trainer, stage, args.input_batches)
        for stage in trainer.plan
    }
    start = time.time()
    result = trainer.train(evaluate_each_stage=True)  # As traineval: every stage end evaluated.
    train_seconds = time.time() - start
    eval_seconds = sum(r['eval_seconds'] for r in trainer.stage_results)
    times = split_times(trainer, train_seconds - eval_seconds)
    input_seconds = sum(
        stage.num_steps * trainer.global_batch / input_rates[stage.index] for stage in trainer.plan
    )
    return dict(
        train_seconds=train_seconds,  # The whole train(), stage-end evaluations included.
        eval_seconds=eval_seconds,
        stage_results=trainer.stage_results,
        top_1=result['top_1'],
        top_5=result['top_5'],
        batch=trainer.global_batch,
        plan=trainer.plan,
        input_seconds=input_seconds,
        input_rates=input_rates,
        **times,
    )


def ceiling(progressive, fixed):
    """Compute-only speed-up: fixed steps at the final-size rate over the stage sum."""
    final_rate = fixed['throughput'][0]
    fixed_compute = fixed['plan'].total_steps * fixed['batch'] / final_rate
    stage_compute = sum(
        stage.num_steps * progressive['batch'] / progressive['throughput'][i]
        for i, stage in enumerate(progressive['plan'])
    )
    return fixed_compute / stage_compute


def print_report(args, dataset, runs):
    first = runs[0]
    plan, seeds = first['progressive']['plan'], ','.join(str(r['seed']) for r in runs)
    print(
        f'\n{args.model_name} on {dataset}, {args.epochs} epochs ({plan.total_steps} steps of '
        f'{first["progressive"]["batch"]} images), seeds {seeds}; eval at '
        f'{first["eval_size"]} px (EMA).'
    )
    print(first['progressive']['plan'].format_table())
    print(
        '\nPer-stage steady throughput (train steps, img/s) and the input pipeline alone (img/s):'
    )
    for r in runs:
        p = r['progressive']
        stages = ', '.join(f'{s.image_size} px {p["throughput"][s.index]:.1f}' for s in p['plan'])
        inputs = ', '.join(f'{p["input_rates"][s.index]:.0f}' for s in p['plan'])
        print(
            f'  seed {r["seed"]}: progressive {stages} | fixed '
            f'{r["fixed"]["throughput"][0]:.1f} | input {inputs}'
        )
    header = (
        'run',
        'seed',
        'trace',
        'compile',
        'steps',
        'other',
        'train',
        'eval',
        'input*',
        'top-1',
        'top-5',
    )
    print(
        '\nSeconds (train = trace + compile + steps + other + eval, the whole train() with its '
        'stage-end evaluations; input* = the pipeline alone, overlapping the steps):'
    )
    print('%-12s %4s %7s %7s %8s %7s %8s %6s %7s %7s %7s' % header)  # noqa: UP031 (a table)
    for r in runs:
        for name in ('progressive', 'fixed'):
            x = r[name]
            print(
                '%-12s %4d %7.1f %7.1f %8.1f %7.1f %8.1f %6.1f %7.1f %7.4f %7.4f'  # noqa: UP031
                % (
                    name,
                    r['seed'],
                    x['trace'],
                    x['compile'],
                    x['steps'],
                    x['other'],
                    x['train_seconds'],
                    x['eval_seconds'],
                    x['input_seconds'],
                    x['top_1'],
                    x['top_5'],
                )
            )
    print('Of other: pipeline starts / stage-end checkpoints / pipeline ends / the rest:')
    for r in runs:
        for name in ('progressive', 'fixed'):
            x = r[name]
            parts = x['other_parts']
            print(
                '  {} seed {}: {:.1f} / {:.1f} / {:.1f} / {:.1f} s'.format(
                    name,
                    r['seed'],
                    parts['setup'],
                    parts['save'],
                    parts['close'],
                    x['other'] - sum(parts.values()),
                )
            )
    unsteady = sorted(
        {size for r in runs for name in ('progressive', 'fixed') for size in r[name]['unsteady']}
    )
    if unsteady:
        print(
            'NOTE: stages at {} px ran one compiled call only: their rate includes the '
            'first-call warm-up, so the ceiling below is not meaningful (more epochs or a '
            'smaller train.steps_per_loop give a steady state).'.format(
                ', '.join(str(size) for size in unsteady)
            )
        )
    # Whole train() wall times, stage-end evaluations included.
    speedups = np.array(
        [r['fixed']['train_seconds'] / r['progressive']['train_seconds'] for r in runs]
    )
    ceilings = np.array([ceiling(r['progressive'], r['fixed']) for r in runs])
    deltas = np.array([100 * (r['progressive']['top_1'] - r['fixed']['top_1']) for r in runs])
    tops = {name: np.array([r[name]['top_1'] for r in runs]) for name in ('progressive', 'fixed')}
    print(
        '\nSpeed-up of progressive over fixed (train wall time): actual {:.2f}x ({}), '
        'compute-only ceiling {:.2f}x ({}): {:.0f}% of the ceiling.'.format(
            speedups.mean(),
            ', '.join(f'{s:.2f}' for s in speedups),
            ceilings.mean(),
            ', '.join(f'{c:.2f}' for c in ceilings),
            100 * speedups.mean() / ceilings.mean(),
        )
    )
    print(
        'Top-1: progressive {:.2f}% ({:.2f}-{:.2f}), fixed {:.2f}% ({:.2f}-{:.2f}), '
        'difference {:+.2f} points (per seed {}).'.format(
            100 * tops['progressive'].mean(),
            100 * tops['progressive'].min(),
            100 * tops['progressive'].max(),
            100 * tops['fixed'].mean(),
            100 * tops['fixed'].min(),
            100 * tops['fixed'].max(),
            deltas.mean(),
            ', '.join(f'{d:+.2f}' for d in deltas),
        )
    )
    return dict(
        seeds=[r['seed'] for r in runs],
        top_1=dict(progressive=tops['progressive'].tolist(), fixed=tops['fixed'].tolist()),
        train_seconds=dict(
            progressive=[r['progressive']['train_seconds'] for r in runs],
            fixed=[r['fixed']['train_seconds'] for r in runs],
        ),
        speedups=speedups.tolist(),
        ceilings=ceilings.tolist(),
        stage_ends=[
            [
                dict(stage=e['stage'], ema=e['top_1'], raw=e.get('raw', {}).get('top_1'))
                for e in r['progressive']['stage_results']
            ]
            for r in runs
        ],
        runs=[
            dict(
                seed=r['seed'],
                progressive=run_record(r['progressive']),
                fixed=run_record(r['fixed']),
            )
            for r in runs
        ],
    )


def run_record(x):
    """One run's figures for the JSON file (and `plot_progressive.py`): its times, each
    stage's steady rate, and every stage end (top-1 and the seconds since train() started)."""
    return dict(
        top_1=x['top_1'],
        train_seconds=x['train_seconds'],
        eval_seconds=x['eval_seconds'],
        **{key: x[key] for key in ('trace', 'compile', 'steps', 'other', 'other_parts')},
        stages=[
            dict(
                stage=s.index,
                image_size=s.image_size,
                steps=s.num_steps,
                images_per_sec=x['throughput'][s.index],
                input_images_per_sec=x['input_rates'][s.index],
            )
            for s in x['plan']
        ],
        stage_ends=[
            dict(
                stage=e['stage'],
                step=e['step'],
                seconds=e.get('elapsed_seconds'),
                ema=e['top_1'],
                raw=e.get('raw', {}).get('top_1'),
                ema_stage_size=e.get('at_train_size', {}).get('top_1'),
            )
            for e in x['stage_results']
        ],
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dataset', default='photos', choices=DATASETS)
    parser.add_argument(
        '--data_dir',
        default=None,
        help='photo sets: where the crops go (default: a folder in the temp '
        'directory, built once and reused)',
    )
    parser.add_argument('--model_name', default='efficientnetv2-b0')
    parser.add_argument(
        '--epochs', type=int, default=None, help='default: 10 for the photo sets, 30 for digits'
    )
    parser.add_argument(
        '--stages',
        type=int,
        default=None,
        help='default: 4 for the photo sets, train.stages of the digits recipe (2)',
    )
    parser.add_argument(
        '--mode',
        default=None,
        help='plan mode, paper or official, or both (paper,official: one fixed twin per seed '
        "serves both); default: paper for the photo sets (Algorithm 1), the model's own for "
        'digits',
    )
    parser.add_argument('--seeds', default='0,1,2', help='comma-separated train seeds')
    parser.add_argument(
        '--image_size',
        type=int,
        default=None,
        help='final train and eval size (default: 128 photos, 32 digits)',
    )
    parser.add_argument(
        '--min_image_size',
        type=int,
        default=None,
        help="first-stage size (default: 64 photos, the recipe's 24 digits)",
    )
    parser.add_argument(
        '--per_class', type=int, default=200, help='photo sets: crops per class (a fifth for eval)'
    )
    parser.add_argument(
        '--crop_size', type=int, default=160, help='photo sets: side of the stored crops'
    )
    parser.add_argument(
        '--input_batches',
        type=int,
        default=10,
        help='batches timed per stage for the pipeline-alone rate',
    )
    parser.add_argument('--extra', default='', help='more hparam overrides for both runs')
    parser.add_argument('--json', default=None, help='also write the figures to this JSON file')
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)
    photos = args.dataset != 'digits'
    args.epochs = args.epochs or (10 if photos else 30)
    common = [f'train.epochs={args.epochs}']
    data_dir = None
    with tempfile.TemporaryDirectory() as tmp:
        if photos:
            data_dir = args.data_dir or os.path.join(
                tempfile.gettempdir(),
                f'efficientnetv2-{args.dataset}-{args.per_class}-{args.crop_size}',
            )
            build_photo_folder(args.dataset, data_dir, args.per_class, args.crop_size)
            size = args.image_size or 128
            common += photo_overrides(size, args.min_image_size or size // 2)
            stages = args.stages or 4
            args.mode = args.mode or 'paper'
            dataset = 'folder'
        else:
            if args.image_size:
                common += [
                    f'train.image_size={args.image_size}',
                    f'eval.image_size={args.image_size}',
                ]
            if args.min_image_size:
                common.append(f'train.min_image_size={args.min_image_size}')
            stages = args.stages or experiment.build_config(args.model_name, 'digits').train.stages
            dataset = 'digits'
        modes = args.mode.split(',') if args.mode else [None]
        for mode in modes:
            if mode not in (None, 'paper', 'official'):
                parser.error(f'--mode takes paper, official or both; received {args.mode!r}.')
        if args.extra:
            common.append(args.extra)
        hparams = ','.join(common)
        fixed, progressive = {}, {mode: {} for mode in modes}
        for seed in [int(s) for s in args.seeds.split(',')]:
            fixed[seed] = run(
                args,
                seed,
                hparams + ',train.stages=0',
                os.path.join(tmp, f'fixed-{seed}'),
                dataset,
                data_dir,
            )
            for mode in modes:
                plan = f'train.stages={stages}' + (f',train.progressive={mode}' if mode else '')
                progressive[mode][seed] = run(
                    args,
                    seed,
                    hparams + ',' + plan,
                    os.path.join(tmp, f'progressive-{mode}-{seed}'),
                    dataset,
                    data_dir,
                )
                print_stage_ends(seed, mode, progressive[mode][seed], fixed[seed])
        eval_size = experiment.build_config(
            args.model_name, dataset, data_dir=data_dir, hparam_str=hparams
        ).eval.image_size
    label = args.dataset + (f' ({data_dir})' if data_dir else '')
    summary = {}
    for mode in modes:
        runs = [
            dict(seed=seed, progressive=progressive[mode][seed], fixed=fixed[seed])
            for seed in fixed
        ]
        runs[0]['eval_size'] = eval_size
        summary[mode or 'default'] = print_report(args, label, runs)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(command=' '.join(sys.argv), hparams=hparams, modes=summary), f, indent=1)


def print_stage_ends(seed, mode, progressive, fixed):
    """One line per stage end of a progressive run: top-1 of the EMA and raw weights."""
    print(
        f'\nseed {seed}, {mode or "default"} plan: stage ends (top-1 at the final size, EMA / raw)'
    )
    for r in progressive['stage_results']:
        stats = r['stage_stats']
        print(
            '  stage {} ({} px): {:.4f} / {:.4f}; loss {:.3f}, grad norm {:.3g} '
            '(max {:.3g})'.format(
                r['stage'] + 1,
                progressive['plan'][r['stage']].image_size,
                r['top_1'],
                r['raw']['top_1'] if 'raw' in r else float('nan'),
                stats['loss'],
                stats['grad_norm'],
                stats['grad_norm_max'],
            )
        )
    print(f'  fixed twin: {fixed["top_1"]:.4f}', flush=True)


if __name__ == '__main__':
    main()
