"""Pictures of `progressive.py --json` results: top-1 against wall time, and train rates.

    python benchmarks/plot_progressive.py results.json [more.json ...] --out=benchmarks/progressive

writes `<out>_top1.png` (EMA top-1 at the final size against the seconds since `train()`
started, one line per run and seed, a marker with the image size at every stage end; a fixed
run is one point) and `<out>_rates.png` (steady train images per second of each stage, mean
over seeds, beside the fixed run's). Several JSON files (one per seed, say) are merged. Needs
matplotlib (`pip install matplotlib`), which nothing else in the project uses.
"""

import argparse
import json


def load_runs(paths):
    """`{mode: [run, ...]}` from `progressive.py --json` files, each run a dict with `seed`,
    `progressive` and `fixed` (see `progressive.run_record`)."""
    runs = {}
    for path in paths:
        with open(path) as f:
            summary = json.load(f)
        for mode, figures in summary['modes'].items():
            if 'runs' not in figures:
                raise ValueError(
                    f'{path}: no per-run figures (mode {mode!r}); rerun progressive.py with '
                    'this version to get them.'
                )
            runs.setdefault(mode, []).extend(figures['runs'])
    return runs


def plot(runs, out):
    """Writes `<out>_top1.png` and `<out>_rates.png`; returns their paths."""
    import matplotlib

    matplotlib.use('Agg')
    from matplotlib import pyplot as plt

    colours = plt.rcParams['axes.prop_cycle'].by_key()['color']
    seeds = sorted({r['seed'] for mode_runs in runs.values() for r in mode_runs})
    colour = {seed: colours[i % len(colours)] for i, seed in enumerate(seeds)}
    styles = ['-', '--', '-.', ':']

    fig, ax = plt.subplots(figsize=(8, 5))
    fixed_done = set()
    for m, (mode, mode_runs) in enumerate(sorted(runs.items())):
        for r in mode_runs:
            ends = r['progressive']['stage_ends']
            sizes = {s['stage']: s['image_size'] for s in r['progressive']['stages']}
            ax.plot(
                [e['seconds'] for e in ends],
                [100 * e['ema'] for e in ends],
                styles[m % len(styles)],
                marker='o',
                color=colour[r['seed']],
                label=f'{mode}, seed {r["seed"]}',
            )
            for e in ends:
                ax.annotate(
                    f'{sizes[e["stage"]]}',
                    (e['seconds'], 100 * e['ema']),
                    textcoords='offset points',
                    xytext=(0, 6),
                    ha='center',
                    fontsize=7,
                    color=colour[r['seed']],
                )
            if r['seed'] not in fixed_done:
                fixed_done.add(r['seed'])
                end = r['fixed']['stage_ends'][-1]
                ax.plot(
                    [end['seconds']],
                    [100 * end['ema']],
                    marker='*',
                    markersize=13,
                    linestyle='none',
                    color=colour[r['seed']],
                    label=f'fixed, seed {r["seed"]}',
                )
    ax.set_xlim(left=0)
    ax.set_xlabel('seconds since train() started (stage-end evaluations included)')
    ax.set_ylabel('EMA top-1 at the final size (%)')
    ax.set_title('Progressive (stage ends, image size in px) and fixed-size runs')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    top1_path = f'{out}_top1.png'
    fig.savefig(top1_path, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    bars = []
    for mode, mode_runs in sorted(runs.items()):
        stages = mode_runs[0]['progressive']['stages']
        for s in stages:
            rates = [r['progressive']['stages'][s['stage']]['images_per_sec'] for r in mode_runs]
            bars.append((f'{mode}\n{s["image_size"]} px', sum(rates) / len(rates)))
    first = next(iter(runs.values()))
    fixed_rates = [r['fixed']['stages'][0]['images_per_sec'] for r in first]
    fixed_size = first[0]['fixed']['stages'][0]['image_size']
    bars.append((f'fixed\n{fixed_size} px', sum(fixed_rates) / len(fixed_rates)))
    ax.bar(range(len(bars)), [b[1] for b in bars], color=colours[0])
    ax.bar([len(bars) - 1], [bars[-1][1]], color=colours[1])
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=7)
    ax.set_ylabel('train images / s (steady state)')
    ax.set_title(f'Train rate per stage, mean over seeds {", ".join(map(str, seeds))}')
    ax.grid(axis='y', alpha=0.3)
    fig.tight_layout()
    rates_path = f'{out}_rates.png'
    fig.savefig(rates_path, dpi=120)
    plt.close(fig)
    return top1_path, rates_path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('json', nargs='+', help='files written by progressive.py --json')
    parser.add_argument('--out', required=True, help='path prefix of the two PNG files')
    args = parser.parse_args()
    try:
        runs = load_runs(args.json)
    except (OSError, ValueError, KeyError) as e:
        parser.error(str(e))
    for path in plot(runs, args.out):
        print(path)


if __name__ == '__main__':
    main()
