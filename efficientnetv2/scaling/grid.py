"""The V1 paper's step 1: a small grid over (alpha, beta, gamma) at phi = 1, trained briefly.

Every (alpha, beta, gamma) of the grid with alpha * beta**2 * gamma**2 within the tolerance of 2
is one trial: the base scaled by `scaling.compound(base, phi=1, alpha, beta, gamma)` (width and
depth coefficients times the base's, image size = the reduced `--image_size` x gamma, rounded
to the pixel), trained with this project's trainer and ranked by top-1.

The trials run on the architecture search's machinery (`efficientnetv2.nas.search.run`) with
`CoefficientGrid` as its space, so they get the same output directory layout, resume (rerun the
same command), failure records, claim-file work queue (`--workers`, several machines on one
shared output directory), result tables and TensorBoard summaries. The reward is the NAS's
`A * S**w * P**v` with w = v = 0 by default: top-1 alone, as the paper ranks the grid; each
record also has the train-step time against the base's (timed in the same rounds) and params.
"""

import dataclasses
import itertools
import math

from efficientnetv2.scaling import CONSTRAINT_TOLERANCE
from efficientnetv2.scaling import FLOPS_GROWTH
from efficientnetv2.scaling import check_coefficients
from efficientnetv2.scaling import compound
from efficientnetv2.scaling import resolve_base

DEFAULT_ALPHAS = (1.1, 1.2, 1.3, 1.4)
DEFAULT_BETAS = (1.0, 1.05, 1.1, 1.15, 1.2)
DEFAULT_GAMMAS = (1.0, 1.05, 1.1, 1.15, 1.2, 1.25)


def grid_points(
    alphas=DEFAULT_ALPHAS,
    betas=DEFAULT_BETAS,
    gammas=DEFAULT_GAMMAS,
    tolerance=CONSTRAINT_TOLERANCE,
):
    """The (alpha, beta, gamma) of the grid that meet the constraint, sorted.

    Raises:
        ValueError: a value below 1, or no point meeting the constraint.
    """
    points = []
    for alpha, beta, gamma in itertools.product(sorted(alphas), sorted(betas), sorted(gammas)):
        for name, value in (('alpha', alpha), ('beta', beta), ('gamma', gamma)):
            if not (math.isfinite(value) and value >= 1.0):
                raise ValueError(f'Grid values must be >= 1; received {name}={value!r}.')
        if abs(alpha * beta**2 * gamma**2 - FLOPS_GROWTH) <= tolerance * FLOPS_GROWTH:
            points.append((float(alpha), float(beta), float(gamma)))
    if not points:
        raise ValueError(
            f'No grid point has alpha * beta^2 * gamma^2 within {tolerance:.0%} of '
            f'{FLOPS_GROWTH:g}; widen the grid or the tolerance.'
        )
    return points


def point_key(point):
    return 'a{:g}-b{:g}-g{:g}'.format(*point)


class CoefficientGrid:
    """A `nas.search.run` space whose architectures are (alpha, beta, gamma) points.

    Args:
        base: the model scaled (name or `architectures.Variant`).
        points: the grid (`grid_points`).
        image_size: the reduced base image size the trials scale by gamma.
        phi: the compound coefficient of every trial (the paper: 1).
        base_width, base_depth: the base's width and depth coefficients (default the base
            model's; the grid command takes them from `model.*` of --hparam_str).
        tolerance: the constraint's relative tolerance (checked per point).
    """

    def __init__(
        self,
        base,
        points,
        image_size,
        phi=1.0,
        base_width=None,
        base_depth=None,
        tolerance=CONSTRAINT_TOLERANCE,
    ):
        base = resolve_base(base)
        self.base = dataclasses.replace(
            base,
            width_coefficient=base.width_coefficient if base_width is None else base_width,
            depth_coefficient=base.depth_coefficient if base_depth is None else base_depth,
            eval_size=int(image_size),
            train_size=int(image_size),
        )
        self.points = [tuple(float(v) for v in p) for p in points]
        for point in self.points:
            check_coefficients(*point, tolerance=tolerance)
        self.image_size = int(image_size)
        self.phi = float(phi)
        self.tolerance = tolerance

    def describe(self):
        """The grid in words: what a resumed search must match (`Settings.space`)."""
        return 'coefficient grid phi={:g} base={} w={:g} d={:g}: {}'.format(
            self.phi,
            self.base.name,
            self.base.width_coefficient,
            self.base.depth_coefficient,
            ' '.join(point_key(p) for p in self.points),
        )

    def scaled(self, point):
        """The `ScaledVariant` of one point at the reduced size."""
        return compound(self.base, self.phi, *point, tolerance=self.tolerance)

    def trial_size(self, point):
        return max(17, int(round(self.image_size * point[2] ** self.phi)))

    # The space protocol of `nas.search.run`.

    def random_archs(self, count, seed):
        del seed  # A grid: every point once, in order.
        if count > len(self.points):
            raise ValueError(f'The grid has {len(self.points)} points; asked for {count} trials.')
        return self.points[:count]

    def arch_key(self, point):
        return point_key(point)

    def arch_to_json(self, point):
        return dict(zip(('alpha', 'beta', 'gamma'), point))

    def arch_from_json(self, items):
        return (float(items['alpha']), float(items['beta']), float(items['gamma']))

    def trial_overrides(self, point):
        variant = self.scaled(point)
        size = self.trial_size(point)
        return dict(
            model=dict(
                blocks=list(variant.blocks),
                width_coefficient=variant.width_coefficient,
                depth_coefficient=variant.depth_coefficient,
            ),
            train=dict(image_size=size),
            eval=dict(image_size=size),
        )

    def backbone_model(self):
        """The base's model hyper-parameters: the step every trial is timed against."""
        return dict(
            blocks=list(self.base.blocks),
            width_coefficient=self.base.width_coefficient,
            depth_coefficient=self.base.depth_coefficient,
        )


def format_table(records, grid=None):
    """The finished trials ranked by reward (top-1 by default), as a text table."""
    ok = sorted(
        (r for r in records if r.get('status') == 'ok'), key=lambda r: (-r['reward'], r['trial'])
    )
    lines = [
        f'{"rank":>4} {"alpha":>6} {"beta":>6} {"gamma":>6} {"a*b^2*g^2":>9} {"width":>7} '
        f'{"depth":>7} {"size":>5} {"params":>9} {"top-1":>7} {"step x":>7} {"reward":>7}'
    ]
    for rank, r in enumerate(ok, 1):
        c = r['arch_choices']
        a, b, g = c['alpha'], c['beta'], c['gamma']
        width = depth = size = float('nan')
        if grid is not None:
            v = grid.scaled((a, b, g))
            width, depth, size = (
                v.width_coefficient,
                v.depth_coefficient,
                grid.trial_size((a, b, g)),
            )
        lines.append(
            f'{rank:>4} {a:>6g} {b:>6g} {g:>6g} {a * b * b * g * g:>9.3f} {width:>7.4g} '
            f'{depth:>7.4g} {size:>5g} {r["params"] / 1e6:>8.3f}M {r["accuracy"]:>7.2%} '
            f'{r["step_time_ratio"]:>7.3f} {r["reward"]:>7.4f}'
        )
    failed = [r for r in records if r.get('status') != 'ok']
    lines.append(f'{len(records)} trials finished, {len(failed)} failed.')
    for r in failed:
        lines.append(f'  failed: {r["arch"]}: {r.get("error", "")[:200]}')
    return '\n'.join(lines)
