"""Compound scaling (EfficientNet V1, section 3.3) and the EfficientNetV2 scaling rule.

    from efficientnetv2 import scaling
    v = scaling.compound('efficientnet-b0', phi=1)            # B0 scaled by 2**1 FLOPs
    v = scaling.fit_budget('efficientnet-b0', flops=1.8e9)   # the largest phi under 1.8B MACs
    v = scaling.fit_budget('efficientnetv2-s', flops=25e9, rule='v2')
    v.params, v.flops, v.eval_size, v.blocks
    v.register('my-net')          # get_model('my-net'), --model_name=my-net, export
    v.write_config('my-net.yaml') # a config the trainer takes, in this or any later process

**V1 rule.** depth d = alpha**phi, width w = beta**phi, resolution r = gamma**phi with
alpha * beta**2 * gamma**2 ~ 2 (FLOPs grow about 2**phi); alpha, beta, gamma = 1.2, 1.1, 1.15
(the paper's grid search on B0 at phi = 1). Widths are rounded to multiples of 8 and repeats
rounded up (as the published models: `blocks.round_filters` / `round_repeats`; V1 bases keep
the V1 code's 10% rule); the eval image size is rounded to a multiple of `IMAGE_DIVISOR` (4).

**V2 rule** (EfficientNetV2, section 4 / 5): the same width and resolution rule, with (1) the
eval image size capped at 480 and (2) extra layers added to the later stages: stages before
stage 5 grow with d**0.5 instead of d, and stages 5 and 6 receive the layers this saves,
in proportion to their repeats, so the total number of layers is that of uniform scaling
(`ceil(sum(r) * d)`). The per-stage repeats are written into the block strings
(depth_coefficient 1.0). The published V2-M/L were designed by hand beyond this rule (a 7th
stage, non-uniform widths); `compare_published` says by how much the rule misses them.

Image sizes: eval = round(base eval x r / 4) x 4 (capped); train = the base family's rule
(V1: int(0.8 x eval) // 16 x 16, as the V2 code trains V1 models; V2: the base's train/eval
ratio, rounded to 4). Dropout grows by 0.05 per unit of phi up to 0.5 (B0 0.2 ... B7 0.5).
Everything else of the recipe (augmentation, schedule) is the base model's.

Parameters and FLOPs (multiply-adds at the eval size, as `efficientnetv2.summary`) are counted
analytically (`counting`), so searches over phi need no TensorFlow; only the optional measured
train-step time builds models. This module imports no TensorFlow at the top level.
"""

import dataclasses
import math
import re

from efficientnetv2 import architectures
from efficientnetv2 import blocks as blocks_lib
from efficientnetv2.scaling import counting

RULES = ('v1', 'v2')
V1_COEFFICIENTS = (1.2, 1.1, 1.15)  # alpha (depth), beta (width), gamma (resolution).
FLOPS_GROWTH = 2.0  # alpha * beta**2 * gamma**2 for one unit of phi.
CONSTRAINT_TOLERANCE = 0.05  # |alpha * beta**2 * gamma**2 - 2| / 2 allowed (the paper's: 4%).
V2_MAX_IMAGE_SIZE = 480
V2_EARLY_DEPTH_EXPONENT = 0.5  # Stages before the later ones grow with d**0.5.
V2_LATE_STAGES = (5, 6)  # 1-based; the last two stages when a base has fewer.
IMAGE_DIVISOR = 4  # The published sizes' own granularity (240, 260, 300, 380, 456, ...).
PHI_STEP = 0.01  # fit_budget's resolution in phi.
MAX_PHI = 12.0
DROPOUT_PER_PHI = 0.05
MAX_DROPOUT = 0.5

# The published models the ladder is compared with: trainable params and multiply-adds at the
# eval size (1000 classes; the zoo reproduces them exactly, tests/test_scaling.py checks).
PUBLISHED = {
    'efficientnet-b0': (5288548, 385814752, 224),
    'efficientnet-b1': (7794184, 686802832, 240),
    'efficientnet-b2': (9109994, 993561872, 260),
    'efficientnet-b3': (12233232, 1827141392, 300),
    'efficientnet-b4': (19341616, 4393771024, 380),
    'efficientnet-b5': (30389784, 10266384752, 456),
    'efficientnet-b6': (43040704, 19067593536, 528),
    'efficientnet-b7': (66347960, 37745884192, 600),
    'efficientnetv2-s': (21458488, 8365617152, 384),
    'efficientnetv2-m': (54139356, 24582460384, 480),
    'efficientnetv2-l': (118515272, 56079699008, 480),
}
# Which base each published family is scaled from, and with which rule.
PUBLISHED_BASES = {
    'v1': ('efficientnet-b0', [f'efficientnet-b{i}' for i in range(1, 8)]),
    'v2': ('efficientnetv2-s', ['efficientnetv2-m', 'efficientnetv2-l']),
}


def _check(condition, message):
    if not condition:
        raise ValueError(message)


def check_coefficients(alpha, beta, gamma, tolerance=CONSTRAINT_TOLERANCE):
    """Raises ValueError unless alpha, beta, gamma >= 1 and alpha * beta**2 * gamma**2 ~ 2."""
    for name, value in (('alpha', alpha), ('beta', beta), ('gamma', gamma)):
        _check(
            isinstance(value, (int, float)) and math.isfinite(value) and value >= 1.0,
            f'{name} must be a number >= 1; received {value!r}.',
        )
    product = alpha * beta**2 * gamma**2
    _check(
        abs(product - FLOPS_GROWTH) <= tolerance * FLOPS_GROWTH,
        f'alpha * beta^2 * gamma^2 must be about {FLOPS_GROWTH:g} (within '
        f'{tolerance:.0%}); alpha={alpha:g}, beta={beta:g}, gamma={gamma:g} give {product:.3f}.',
    )


def resolve_base(base, blocks=None):
    """The `architectures.Variant` to scale: a model name (published or registered), a Variant
    or a `ScaledVariant`; `blocks` replaces its block strings (e.g. a NAS result)."""
    if isinstance(base, ScaledVariant):
        base = base.to_variant()
    elif not isinstance(base, architectures.Variant):
        _check(isinstance(base, str) and base.strip(), f'Unknown base model {base!r}.')
        base = architectures.get_variant(base)  # ValueError listing the names.
    if blocks is not None:
        blocks = [blocks] if isinstance(blocks, str) else list(blocks)
        blocks_lib.decode_list(blocks)  # ValueError quoting a bad string.
        # The name stays the registry's: the recipe comes from it (written configs name it).
        base = dataclasses.replace(base, blocks=tuple(blocks), keras_name=None)
    return base


def _round_size(size, divisor=IMAGE_DIVISOR):
    return max(divisor, int(math.floor(size / divisor + 0.5)) * divisor)


def _train_size(base, eval_size):
    if base.is_v1:
        return int(eval_size * 0.8) // 16 * 16  # As architectures._v1 (the V2 code's rule).
    return _round_size(eval_size * base.train_size / base.eval_size)


def _late_stage_indices(num_stages):
    late = [s - 1 for s in V2_LATE_STAGES if s <= num_stages]
    if len(late) < len(V2_LATE_STAGES):
        late = list(range(max(0, num_stages - len(V2_LATE_STAGES)), num_stages))
    return late


def v2_repeats(base_repeats, depth):
    """Per-stage repeats of the V2 rule for the uniform depth multiplier `depth`.

    Stages other than the later ones (5 and 6) get ceil(r * depth**0.5); the later stages
    share the rest of uniform scaling's total, ceil(sum(r) * depth), in proportion to their
    repeats (largest remainders get the odd layers), so the total is exactly uniform
    scaling's. Stages after them (a 7th) scale like the early ones.
    """
    late = _late_stage_indices(len(base_repeats))
    early = math.pow(depth, V2_EARLY_DEPTH_EXPONENT)
    out = [math.ceil(r * early - 1e-9) for r in base_repeats]
    late_base = sum(base_repeats[i] for i in late)
    others = sum(out[i] for i in range(len(out)) if i not in late)
    extra = max(0, math.ceil(sum(base_repeats) * depth - 1e-9) - others - late_base)
    shares = {i: extra * base_repeats[i] / late_base for i in late}
    for i in late:
        out[i] = base_repeats[i] + int(shares[i])
    left = extra - sum(int(v) for v in shares.values())
    for i in sorted(late, key=lambda i: (-(shares[i] - int(shares[i])), -i))[:left]:
        out[i] += 1
    return out


@dataclasses.dataclass(frozen=True)
class ScaledVariant:
    """A model made by scaling a base: its blocks, sizes, counts and recipe.

    Attributes:
        name: the name it registers under by default.
        base: the base `architectures.Variant`.
        rule: 'v1' or 'v2'. phi, alpha, beta, gamma: the scaling.
        blocks: block strings the model is built from (V2 rule: per-stage repeats written in).
        width_coefficient, depth_coefficient: the model's multipliers (V2 rule: depth 1.0).
        eval_size, train_size: image sizes; dropout_rate: classifier dropout.
        params, total_params: trainable and all parameters (1000 classes).
        flops: multiply-adds of one image at eval_size.
        step_time: measured seconds of one train step (batch `step_time_batch` at train_size),
            or None when not measured.
    """

    name: str
    base: architectures.Variant
    rule: str
    phi: float
    alpha: float
    beta: float
    gamma: float
    blocks: tuple
    width_coefficient: float
    depth_coefficient: float
    eval_size: int
    train_size: int
    dropout_rate: float
    params: int
    total_params: int
    flops: int
    step_time: float = None
    step_time_batch: int = None

    @property
    def depth_multiplier(self):
        """The uniform depth multiplier d of the rule (the V2 rule writes its per-stage
        repeats into the blocks, so its `depth_coefficient` is 1.0)."""
        return round(self.base.depth_coefficient * self.alpha**self.phi, 4)

    def model_hparams(self):
        """The `model` config section (as `architectures.Variant.model_hparams`)."""
        return self.to_variant().model_hparams()

    def scaled_stages(self):
        """(input, output, repeats) of every stage after rounding."""
        stages = blocks_lib.scale_stages(
            blocks_lib.decode_list(list(self.blocks)),
            self.width_coefficient,
            self.depth_coefficient,
            ten_percent_rule=self.base.is_v1,
        )
        return [(s.input_filters, s.output_filters, s.num_repeat) for s in stages]

    def to_variant(self, name=None):
        """An `architectures.Variant` with the base's recipe and this scaling."""
        return dataclasses.replace(
            self.base,
            name=(name or self.name).strip().lower(),
            blocks=tuple(self.blocks),
            width_coefficient=self.width_coefficient,
            depth_coefficient=self.depth_coefficient,
            eval_size=self.eval_size,
            train_size=self.train_size,
            dropout_rate=self.dropout_rate,
            paper_final=None,
            keras_name=None,
        )

    def register(self, name=None, replace=False):
        """Registers this model under `name` (default `self.name`): `get_model(name)`,
        `--model_name=name`, configs and export then take it like a published model.
        Returns the name. A published name, or a registered one with other numbers unless
        `replace`, is a ValueError."""
        variant = self.to_variant(name)
        architectures.register(variant, replace=replace)
        return variant.name

    def config_values(self, name=None):
        """What `write_config` writes: a `scaling` section (the base whose recipe the model
        keeps, the rule, its numbers and sizes) and the `model` section (name, blocks,
        coefficients, dropout). Given as --config_file, a fresh process registers the model
        from it, and the run's config is then built as for a published model: defaults, this
        model's recipe (the base's, with the scaled sizes), the dataset's recipe, the file.
        """
        variant = self.to_variant(name)
        return dict(
            scaling=dict(
                base=self.base.name,
                rule=self.rule,
                phi=self.phi,
                alpha=self.alpha,
                beta=self.beta,
                gamma=self.gamma,
                eval_size=self.eval_size,
                train_size=self.train_size,
                params=self.params,
                flops=self.flops,
            ),
            model=dict(
                model_name=variant.name,
                blocks=list(variant.blocks),
                width_coefficient=variant.width_coefficient,
                depth_coefficient=variant.depth_coefficient,
                dropout_rate=variant.dropout_rate,
            ),
        )

    def to_yaml(self, name=None):
        import yaml

        name = self.to_variant(name).name
        header = [
            f'# {name}: {self.base.name} scaled by the {self.rule.upper()} rule, phi={self.phi:g} '
            f'(alpha={self.alpha:g}, beta={self.beta:g}, gamma={self.gamma:g}).',
            f'# {self.params / 1e6:.2f}M trainable params (1000 classes), '
            f'{self.flops / 1e9:.3f}B multiply-adds at {self.eval_size} px.',
            '# Written by python -m efficientnetv2.scaling; train it with',
            f'#   efficientnetv2-train --model_name={name} --config_file=THIS_FILE '
            '--dataset_cfg=...',
            '# The scaling section registers the model in that process (the recipe of its base',
            '# with the sizes below); the model section is applied like any config file.',
        ]
        body = yaml.safe_dump(self.config_values(name), default_flow_style=False, sort_keys=False)
        return '\n'.join(header) + '\n' + body

    def write_config(self, path, name=None):
        """Writes `to_yaml(name)` to `path` (local path); returns the path."""
        with open(path, 'w') as f:
            f.write(self.to_yaml(name))
        return path

    def build(self, **kwargs):
        """A freshly initialised Keras model (needs TensorFlow): EfficientNet(**model_hparams)."""
        from efficientnetv2 import model as model_lib

        args = dict(self.model_hparams())
        args.update(kwargs)
        return model_lib.EfficientNet(**args)

    def summary_row(self):
        return dict(
            name=self.name,
            phi=self.phi,
            width=self.width_coefficient,
            depth=self.depth_coefficient,
            repeats=[r for _, _, r in self.scaled_stages()],
            eval_size=self.eval_size,
            train_size=self.train_size,
            params=self.params,
            flops=self.flops,
            step_time=self.step_time,
        )


def _default_name(base, rule, phi, custom=False):
    suffix = f'phi{phi:.2f}'.rstrip('0').rstrip('.')
    stem = f'{base.name}-custom' if custom else base.name
    return f'{stem}-{rule}{suffix}' if rule == 'v2' else f'{stem}-{suffix}'


def compound(
    base,
    phi,
    alpha=V1_COEFFICIENTS[0],
    beta=V1_COEFFICIENTS[1],
    gamma=V1_COEFFICIENTS[2],
    rule='v1',
    max_image_size=None,
    blocks=None,
    name=None,
    tolerance=CONSTRAINT_TOLERANCE,
):
    """Scales `base` by `phi` with the V1 or V2 rule; returns a `ScaledVariant`.

    Width coefficient = base width x beta**phi, depth = base depth x alpha**phi, eval size =
    base eval size x gamma**phi rounded to 4 (and capped at `max_image_size`; the V2 rule
    caps at 480 unless told otherwise). phi may be fractional.

    Raises:
        ValueError: unknown base, phi < 0, coefficients outside the constraint, unknown rule.
    """
    _check(rule in RULES, f'rule must be one of {RULES}; received {rule!r}.')
    _check(
        isinstance(phi, (int, float)) and math.isfinite(phi) and 0 <= phi <= MAX_PHI,
        f'phi must be a number in [0, {MAX_PHI:g}]; received {phi!r}.',
    )
    check_coefficients(alpha, beta, gamma, tolerance)
    base = resolve_base(base, blocks)
    phi = round(float(phi), 6)
    if max_image_size is None and rule == 'v2':
        max_image_size = V2_MAX_IMAGE_SIZE
    if max_image_size is not None:
        _check(
            max_image_size >= 32,
            f'max_image_size must be >= 32; received {max_image_size!r}.',
        )
    width = round(base.width_coefficient * beta**phi, 4)
    depth = round(base.depth_coefficient * alpha**phi, 4)
    eval_size = _round_size(base.eval_size * gamma**phi)
    if max_image_size is not None:
        eval_size = min(eval_size, int(max_image_size) // IMAGE_DIVISOR * IMAGE_DIVISOR)
    eval_size = max(eval_size, IMAGE_DIVISOR)
    model_blocks = tuple(base.blocks)
    depth_coefficient = depth
    if rule == 'v2':
        stages = blocks_lib.decode_list(list(base.blocks))
        repeats = v2_repeats([s.num_repeat for s in stages], depth)
        model_blocks = tuple(
            blocks_lib.encode(s.replace(num_repeat=r)) for s, r in zip(stages, repeats)
        )
        depth_coefficient = 1.0
    hparams = dict(
        base.model_hparams(),
        blocks=model_blocks,
        width_coefficient=width,
        depth_coefficient=depth_coefficient,
    )
    trainable, frozen, macs = counting.count(image_size=eval_size, **hparams)
    dropout = min(MAX_DROPOUT, max(base.dropout_rate, base.dropout_rate + DROPOUT_PER_PHI * phi))
    return ScaledVariant(
        name=name or _default_name(base, rule, phi, custom=blocks is not None),
        base=base,
        rule=rule,
        phi=phi,
        alpha=alpha,
        beta=beta,
        gamma=gamma,
        blocks=model_blocks,
        width_coefficient=width,
        depth_coefficient=depth_coefficient,
        eval_size=eval_size,
        train_size=_train_size(base, eval_size),
        dropout_rate=round(dropout, 4),
        params=trainable,
        total_params=trainable + frozen,
        flops=macs,
    )


def measure_step_time(variant, batch_size=8, steps=5, warmup=2):
    """Median seconds of one train step of `variant` at its train size (builds the model;
    needs TensorFlow). The step is the NAS's (`nas.search.make_train_step`)."""
    from efficientnetv2.nas import search

    model = variant.build()
    return search.measure_step_time(model, variant.train_size, batch_size, steps, warmup)


def fit_budget(
    base,
    flops=None,
    params=None,
    step_time=None,
    max_image_size=None,
    rule='v1',
    alpha=V1_COEFFICIENTS[0],
    beta=V1_COEFFICIENTS[1],
    gamma=V1_COEFFICIENTS[2],
    blocks=None,
    name=None,
    step_time_batch=8,
    step_time_fn=None,
    phi_step=PHI_STEP,
    tolerance=CONSTRAINT_TOLERANCE,
):
    """The largest phi (in steps of `phi_step`) whose model meets every given budget.

    Args:
        base: model name, `architectures.Variant` or `ScaledVariant` to scale.
        flops: most multiply-adds per image at the eval size.
        params: most trainable parameters (1000 classes).
        step_time: most seconds per train step (batch `step_time_batch` at the train size),
            measured on this machine (`step_time_fn(variant)` replaces the measurement).
        max_image_size: cap on the eval size (the V2 rule's default is 480); with only this
            budget, the largest model whose uncapped size fits.
        rule, alpha, beta, gamma, blocks, name: as `compound`.

    Counts grow with phi (every rounding is monotone), so phi is found by bisection; the
    measured step time is assumed to grow too, and is measured from phi = 0 upwards in unit
    steps, then bisected (about phi + 7 models built).

    Returns:
        A `ScaledVariant` (with `step_time` when a step-time budget was given).

    Raises:
        ValueError: no budget, a budget the base (phi = 0) already exceeds, bad coefficients,
            an unknown base or rule.
    """
    budgets = dict(flops=flops, params=params, step_time=step_time)
    given = {k: v for k, v in budgets.items() if v is not None}
    _check(
        given or max_image_size is not None,
        'Give at least one budget: flops, params, step_time or max_image_size.',
    )
    for key, value in given.items():
        _check(
            isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
            f'The {key} budget must be a number > 0; received {value!r}.',
        )
    _check(phi_step > 0, f'phi_step must be > 0; received {phi_step!r}.')
    cap = max_image_size
    if max_image_size is not None and not given:
        cap = None  # Only a size budget: the largest model whose natural size fits.
    measure = step_time_fn or (lambda v: measure_step_time(v, step_time_batch))
    measured = {}

    def make(phi):
        return compound(base, phi, alpha, beta, gamma, rule, cap, blocks, name, tolerance)

    def fits(variant, with_time=True):
        if flops is not None and variant.flops > flops:
            return False
        if params is not None and variant.params > params:
            return False
        if max_image_size is not None and not given:
            natural = _round_size(variant.base.eval_size * gamma**variant.phi)
            if natural > max_image_size:
                return False
        if with_time and step_time is not None:
            if variant.phi not in measured:
                measured[variant.phi] = float(measure(variant))
            if measured[variant.phi] > step_time:
                return False
        return True

    start = make(0)
    if not fits(start):
        have = dict(flops=start.flops, params=start.params, step_time=measured.get(start.phi))
        parts = [
            f'{key} {_fmt(have[key])} > {_fmt(limit)}'
            for key, limit in given.items()
            if have[key] is not None and have[key] > limit
        ]
        if not given:
            parts.append(f'eval size {start.eval_size} px > {max_image_size} px')
        raise ValueError(
            f'The budget is below the base model: {start.base.name} (phi=0) has '
            + '; '.join(parts)
            + '.'
        )
    steps = int(MAX_PHI / phi_step)
    # Counts first (cheap), then the measured time inside the range they allow.
    low, high = 0, steps
    if fits(make(high * phi_step), with_time=False):
        low = high
    while high - low > 1:
        mid = (low + high) // 2
        if fits(make(mid * phi_step), with_time=False):
            low = mid
        else:
            high = mid
    if step_time is not None:
        # Measuring builds the model: walk up one unit of phi (about 2x the FLOPs) at a time
        # from the base, so no model much larger than the answer is ever built, then bisect.
        top, low, high = low, 0, None
        unit = max(1, int(round(1.0 / phi_step)))
        while high is None and low < top:
            probe = min(top, low + unit)
            if fits(make(probe * phi_step)):
                low = probe
            else:
                high = probe
        while high is not None and high - low > 1:
            mid = (low + high) // 2
            if fits(make(mid * phi_step)):
                low = mid
            else:
                high = mid
    best = make(round(low * phi_step, 6))
    if step_time is not None:
        best = dataclasses.replace(
            best, step_time=measured[best.phi], step_time_batch=step_time_batch
        )
    return best


def family(base, phis=range(1, 8), rule='v1', **kwargs):
    """`compound(base, phi, ...)` for every phi: a ladder such as B1..B7."""
    return [compound(base, phi, rule=rule, **kwargs) for phi in phis]


def compare_published(rule):
    """For each published model of the family (V1: B1-B7 from B0; V2: M, L from S), the model
    `fit_budget` makes at its FLOPs, and the differences: a list of dicts."""
    base, names = PUBLISHED_BASES[rule]
    rows = []
    for name in names:
        params, macs, size = PUBLISHED[name]
        fit = fit_budget(base, flops=macs, rule=rule)
        rows.append(
            dict(
                name=name,
                published_params=params,
                published_flops=macs,
                published_size=size,
                variant=fit,
                params_diff=fit.params / params - 1,
                flops_diff=fit.flops / macs - 1,
                size_diff=fit.eval_size - size,
            )
        )
    return rows


_SUFFIXES = {'k': 1e3, 'm': 1e6, 'b': 1e9, 'g': 1e9, 't': 1e12}


def parse_count(text):
    """'1.8e9', '1.8B', '12M', '500k' -> float. ValueError for anything else."""
    match = re.fullmatch(r'\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmbgt]?)\s*', str(text), re.I)
    _check(match, f'Not a number: {text!r} (examples: 1.8e9, 1.8B, 12M).')
    return float(match.group(1)) * _SUFFIXES.get(match.group(2).lower(), 1.0)


def _fmt(value):
    if value is None:
        return '-'
    if isinstance(value, float) and value < 1000:
        return f'{value:.4g}'
    for unit, scale in (('B', 1e9), ('M', 1e6), ('K', 1e3)):
        if value >= scale:
            return f'{value / scale:.3f}{unit}'
    return str(value)
