r"""Make a model for a budget by compound scaling (V1) or the EfficientNetV2 rule.

    python -m efficientnetv2.scaling --base=efficientnet-b0 --flops=1.8B
    python -m efficientnetv2.scaling --base=efficientnetv2-s --rule=v2 --flops=25B --params=60M
    python -m efficientnetv2.scaling --base=efficientnet-b0 --phi=2 --write_config=b0x4.yaml \
        --name=my-b0x4        # then: efficientnetv2-train --model_name=my-b0x4 \
                              #       --config_file=b0x4.yaml
    python -m efficientnetv2.scaling --family                # phi = 1..7 beside B1-B7, V2-M/L
    python -m efficientnetv2.scaling --grid --image_size=24 --epochs=10 \
        --hparam_str="model.width_coefficient=0.25,train.batch_size=32,train.lr_base=0.032" \
        --alphas=1.2,1.4 --betas=1.0,1.1 --gammas=1.1,1.15,1.2 --output_dir=runs/grid

Budgets take plain numbers or K/M/B suffixes (FLOPs are multiply-adds at the eval size,
params trainable with 1000 classes, --step_time seconds per train step measured here).
Installed as `efficientnetv2-scale`. Exit codes: 0 done, 1 a grid worker process failed,
2 bad input (one line on stderr), 143 the grid stopped by SIGTERM (rerun to resume).
"""

import argparse
import os
import sys

from efficientnetv2 import scaling
from efficientnetv2.scaling import grid as grid_lib

PROG = 'efficientnetv2-scale'


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # One line, no usage dump.
        raise UsageError(message)


def _count(text):
    try:
        return scaling.parse_count(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _floats(text):
    try:
        return [float(v) for v in text.split(',') if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'expected comma-separated numbers, got {text!r}'
        ) from None


def build_parser():
    p = _Parser(prog=PROG, description=__doc__.split('\n\n')[0])
    p.add_argument(
        '--base',
        default=None,
        help='model to scale (default: efficientnet-b0 '
        'for --rule=v1, efficientnetv2-s for v2); any get_model name',
    )
    p.add_argument(
        '--blocks',
        default=None,
        help="replace the base's block strings (space- or comma-separated, e.g. a NAS result)",
    )
    p.add_argument('--rule', choices=scaling.RULES, default='v1')
    p.add_argument('--phi', type=float, default=None, help='scale by this phi (no search)')
    p.add_argument('--flops', type=_count, help='most multiply-adds at the eval size')
    p.add_argument('--params', type=_count, help='most trainable parameters')
    p.add_argument('--step_time', type=float, help='most seconds per train step (measured)')
    p.add_argument('--step_time_batch', type=int, default=8)
    p.add_argument('--max_image_size', type=int, help='cap on the eval size (v2 rule: 480)')
    p.add_argument('--alpha', type=float, default=scaling.V1_COEFFICIENTS[0])
    p.add_argument('--beta', type=float, default=scaling.V1_COEFFICIENTS[1])
    p.add_argument('--gamma', type=float, default=scaling.V1_COEFFICIENTS[2])
    p.add_argument('--name', default=None, help='model name (configs, --model_name)')
    p.add_argument('--write_config', default=None, help="write the model's YAML config here")
    p.add_argument('--family', action='store_true', help='ladder phi=1..7 and published fits')
    grid = p.add_argument_group('grid search (--grid)')
    grid.add_argument('--grid', action='store_true', help='rank (alpha, beta, gamma) by training')
    grid.add_argument('--output_dir', default='runs/scaling-grid')
    grid.add_argument('--dataset_cfg', default='digits')
    grid.add_argument('--data_dir', default=None)
    grid.add_argument('--epochs', type=float, default=10.0)
    grid.add_argument('--image_size', type=int, default=24, help='reduced base image size')
    grid.add_argument('--hparam_str', default='', help='config overrides for every trial')
    grid.add_argument('--alphas', type=_floats, default=list(grid_lib.DEFAULT_ALPHAS))
    grid.add_argument('--betas', type=_floats, default=list(grid_lib.DEFAULT_BETAS))
    grid.add_argument('--gammas', type=_floats, default=list(grid_lib.DEFAULT_GAMMAS))
    grid.add_argument('--tolerance', type=float, default=scaling.CONSTRAINT_TOLERANCE)
    grid.add_argument('--seed', type=int, default=0)
    grid.add_argument('--workers', type=int, default=1)
    grid.add_argument(
        '--max_trials', type=int, default=None, help='stop this process after this many trials'
    )
    grid.add_argument('--timing_steps', type=int, default=10)
    grid.add_argument('--timing_warmup', type=int, default=2)
    grid.add_argument('--timing_batch', type=int, default=0)
    grid.add_argument('--reward_w', type=float, default=0.0)
    grid.add_argument('--reward_v', type=float, default=0.0)
    grid.add_argument('--claim_timeout', type=float, default=3600.0)
    grid.add_argument('--settle_s', type=float, default=2.0)
    grid.add_argument('--keep_checkpoints', action='store_true')
    grid.add_argument('--trial_fn', default=None, help=argparse.SUPPRESS)
    return p


def _fmt(n, unit):
    return f'{n / unit:.3f}'


def describe(v):
    lines = [
        f'{v.name}: {v.base.name} scaled by the {v.rule.upper()} rule, phi={v.phi:g} '
        f'(alpha={v.alpha:g}, beta={v.beta:g}, gamma={v.gamma:g})',
        f'  width {v.width_coefficient:g}, depth {v.depth_multiplier:g}, eval {v.eval_size} px, '
        f'train {v.train_size} px, dropout {v.dropout_rate:g}',
        f'  {v.params / 1e6:.3f}M trainable params ({v.total_params / 1e6:.3f}M total), '
        f'{v.flops / 1e9:.3f}B multiply-adds at {v.eval_size} px',
    ]
    if v.step_time is not None:
        lines.append(
            f'  {v.step_time * 1000:.1f} ms per train step (batch {v.step_time_batch}, '
            f'{v.train_size} px, this machine)'
        )
    stages = ', '.join(f'{i}->{o} x{r}' for i, o, r in v.scaled_stages())
    lines.append(f'  stages (in->out x repeats): {stages}')
    lines.append('  blocks: ' + ' '.join(v.blocks))
    return '\n'.join(lines)


def ladder_text(base, rule, alpha, beta, gamma, max_image_size=None, blocks=None):
    rows = scaling.family(
        base,
        range(0, 8),
        rule,
        alpha=alpha,
        beta=beta,
        gamma=gamma,
        max_image_size=max_image_size,
        blocks=blocks,
    )
    out = [
        f'Ladder: {rows[0].base.name}, {rule.upper()} rule, alpha={alpha:g} beta={beta:g} '
        f'gamma={gamma:g}',
        f'{"phi":>4} {"width":>7} {"depth":>7} {"eval":>5} {"train":>5} {"params":>9} '
        f'{"MACs":>9}  repeats',
    ]
    for v in rows:
        repeats = '-'.join(str(r) for _, _, r in v.scaled_stages())
        out.append(
            f'{v.phi:>4g} {v.width_coefficient:>7.4g} {v.depth_multiplier:>7.4g} '
            f'{v.eval_size:>5} {v.train_size:>5} {_fmt(v.params, 1e6):>8}M '
            f'{_fmt(v.flops, 1e9):>8}B  {repeats}'
        )
    return '\n'.join(out)


def published_text():
    out = [
        "Published models beside fit_budget(base, flops=<theirs>, rule): the rule's model",
        f'{"model":<17} {"rule":<4} {"phi":>5} {"params":>9} {"ours":>9} {"diff":>7} '
        f'{"MACs":>8} {"ours":>8} {"diff":>7} {"size":>5} {"ours":>5}',
    ]
    for rule in scaling.RULES:
        for r in scaling.compare_published(rule):
            v = r['variant']
            out.append(
                f'{r["name"]:<17} {rule:<4} {v.phi:>5.2f} '
                f'{_fmt(r["published_params"], 1e6):>8}M {_fmt(v.params, 1e6):>8}M '
                f'{r["params_diff"]:>+7.1%} {_fmt(r["published_flops"], 1e9):>7}B '
                f'{_fmt(v.flops, 1e9):>7}B {r["flops_diff"]:>+7.1%} {r["published_size"]:>5} '
                f'{v.eval_size:>5}'
            )
    return '\n'.join(out)


def _blocks(text):
    if text is None:
        return None
    return [b for b in text.replace(',', ' ').split() if b]


def run_grid(args, argv):
    from efficientnetv2 import hparams
    from efficientnetv2.nas import search

    base = args.base or 'efficientnet-b0'
    model = hparams.Config().override(args.hparam_str, allow_new=True).get('model') or {}
    space = grid_lib.CoefficientGrid(
        scaling.resolve_base(base, _blocks(args.blocks)),
        grid_lib.grid_points(args.alphas, args.betas, args.gammas, args.tolerance),
        args.image_size,
        base_width=model.get('width_coefficient'),
        base_depth=model.get('depth_coefficient'),
        tolerance=args.tolerance,
    )
    settings = search.Settings(
        output_dir=args.output_dir,
        backbone=base,
        dataset_cfg=args.dataset_cfg,
        data_dir=args.data_dir,
        trials=len(space.points),
        search='random',
        epochs=args.epochs,
        image_size=args.image_size,
        hparam_str=args.hparam_str,
        reward_w=args.reward_w,
        reward_v=args.reward_v,
        seed=args.seed,
        timing_steps=args.timing_steps,
        timing_warmup=args.timing_warmup,
        timing_batch=args.timing_batch,
        claim_timeout=args.claim_timeout,
        settle_s=args.settle_s,
        keep_checkpoints=args.keep_checkpoints,
        space=space.describe(),
    ).validate()
    if args.workers < 1:
        raise ValueError(f'--workers must be >= 1; received {args.workers}.')
    print(
        f'{len(space.points)} grid points: ' + ' '.join(grid_lib.point_key(p) for p in space.points)
    )
    code = 0
    if args.workers > 1:
        rest = [a for a in argv if not a.startswith('--workers')]
        codes = search.launch_workers(
            'efficientnetv2.scaling', rest + ['--workers=1'], args.workers
        )
        code = 1 if any(codes) else 0
    else:
        trial_fn = None
        if args.trial_fn:
            import importlib

            module, _, attr = args.trial_fn.partition(':')
            trial_fn = getattr(importlib.import_module(module), attr)
        try:
            search.run(settings, trial_fn, args.max_trials, space=space)
        except InterruptedError:  # SIGTERM: the trainer saved a checkpoint.
            print(f'{PROG}: stopped; rerun the same command to resume.', file=sys.stderr)
            return 143
    store = search.TrialStore(settings.output_dir, settings)
    records = store.write_tables(settings.top_k)
    print(grid_lib.format_table(records, space), flush=True)
    return code


def run(args, argv):
    if args.grid:
        return run_grid(args, argv)
    base = args.base or ('efficientnetv2-s' if args.rule == 'v2' else 'efficientnet-b0')
    blocks = _blocks(args.blocks)
    coefficients = dict(alpha=args.alpha, beta=args.beta, gamma=args.gamma)
    if args.family:
        print(
            ladder_text(
                base, args.rule, **coefficients, max_image_size=args.max_image_size, blocks=blocks
            )
        )
        print()
        print(published_text())
        return 0
    budgets = (args.flops, args.params, args.step_time)
    if args.phi is not None:
        if any(b is not None for b in budgets):
            raise ValueError('Give --phi or budgets (--flops, --params, --step_time), not both.')
        variant = scaling.compound(
            base,
            args.phi,
            rule=args.rule,
            max_image_size=args.max_image_size,
            blocks=blocks,
            name=args.name,
            **coefficients,
        )
    else:
        variant = scaling.fit_budget(
            base,
            flops=args.flops,
            params=args.params,
            step_time=args.step_time,
            max_image_size=args.max_image_size,
            rule=args.rule,
            blocks=blocks,
            name=args.name,
            step_time_batch=args.step_time_batch,
            **coefficients,
        )
    print(describe(variant))
    if args.write_config:
        path = variant.write_config(args.write_config, args.name)
        name = variant.to_variant(args.name).name
        print(
            f'Wrote {path}: efficientnetv2-train --model_name={name} '
            f'--config_file={path} --dataset_cfg=...'
        )
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    try:
        args = build_parser().parse_args(argv)
        return run(args, argv)
    except (UsageError, ValueError, FileNotFoundError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f'{PROG}: error: {message}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
