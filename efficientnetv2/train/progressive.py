"""Progressive learning with adaptive regularisation (EfficientNetV2 §4).

Training is split into `M` stages of (almost) equal length. Each stage has
its own image size and regularisation strengths: RandAugment magnitude,
mixup alpha, cutmix alpha and dropout rate. Two ways to interpolate them:

`mode="paper"` (Algorithm 1 of the paper, default):
    every quantity goes linearly from its minimum at stage 0 to its final
    value at stage `M - 1`: `x_i = x_min + (x_final - x_min) * i / (M - 1)`.
    Image sizes are rounded to the nearest multiple of `size_divisor`
    (default 1, i.e. the nearest integer; halves round up), except the last
    stage, which is exactly `final_image_size`. For V2-S the paper's
    128, 185.3, 242.7, 300 become 128, 185, 243, 300.

`mode="official"` (the released code, `main.py` / `main_tf2.py`):
    image size `int(min + (final - min) * (i + 1) / M)`, so the first stage
    is already above the minimum (V2-S: 171, 214, 257, 300); RandAugment,
    mixup and cutmix follow `linspace(min, final, M)` as in paper mode;
    dropout is NOT adapted and stays at `final_dropout` in every stage.
    `size_divisor` is ignored (the code truncates with `int()`).

With `num_stages` 0 or 1 there is a single stage using the final values
(`min_image_size` and the other minimums are then ignored).

The size the interpolation starts from, `min_image_size` (paper `S_0`,
official `data.ibase`), defaults to `default_min_image_size(final)`: 128 px,
the paper's and the official code's value, when the final size is above
128; half the final size when it is 128 or less (the official code's rule
for an unset `ibase`), so small images (CIFAR, digits, a folder of icons)
get a growing plan instead of an error. An explicit 0 also means half the
final size, as in the official code.

Stage boundaries: stage `i` covers steps `[floor(i * T / M),
floor((i + 1) * T / M))` of `T = total_steps`, the boundaries the TF1 code
uses (`max_steps = int(ratio * T)`). When `T` is not a multiple of `M` the
stage lengths differ by at most one step: each is `floor(T / M)` or one more,
the extra steps go where the floor boundaries put them, and the first stage
always has the shorter length (T=10, M=4 gives 2, 3, 2, 3). `T` may be
counted in epochs instead of steps; the fields then hold epochs.
"""

import dataclasses
import math
import numbers

from efficientnetv2 import config as config_lib
from efficientnetv2.config import PLAN_MODES  # One source: the config's choices.

# Paper S_0 and official `data.ibase`.
DEFAULT_MIN_IMAGE_SIZE = 128


def default_min_image_size(final_image_size):
    """The size progressive learning starts from when none is given.

    128 (paper Table 6, official `data.ibase`) when `final_image_size` is
    above 128, else half of it (the official rule for an unset `ibase`), so
    it is always below the final size: 300 -> 128, 192 -> 128, 128 -> 64,
    64 -> 32, 48 -> 24.
    """
    if final_image_size > DEFAULT_MIN_IMAGE_SIZE:
        return DEFAULT_MIN_IMAGE_SIZE
    return final_image_size / 2


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a progressive-learning plan.

    Attributes:
        index: Stage number, from 0.
        start_step: First step of the stage (inclusive).
        end_step: Step where the stage ends (exclusive).
        image_size: Training image size (pixels, square).
        ram: RandAugment magnitude (float, not rounded).
        mixup_alpha: Mixup Beta-distribution alpha; 0 disables mixup.
        cutmix_alpha: CutMix alpha; 0 disables cutmix.
        dropout_rate: Dropout rate before the classifier.
    """

    index: int
    start_step: int
    end_step: int
    image_size: int
    ram: float
    mixup_alpha: float
    cutmix_alpha: float
    dropout_rate: float

    @property
    def num_steps(self):
        """Number of steps in the stage."""
        return self.end_step - self.start_step

    def as_dict(self):
        """Returns the fields as a plain dict (for logging and summaries)."""
        return dataclasses.asdict(self)


class StagePlan:
    """An ordered, immutable sequence of `Stage`s covering `[0, total_steps)`.

    Behaves like a tuple of stages (`len`, indexing, iteration) and adds
    `stage_at_step` for resuming and `format_table` for logging.

    Args:
        stages: The stages, contiguous and in order, starting at step 0.
        mode: The interpolation mode that produced them (for display).
    """

    def __init__(self, stages, mode='paper'):
        stages = tuple(stages)
        if not stages:
            raise ValueError(
                'Argument `stages` must hold at least one Stage; received an empty sequence.'
            )
        expected_start = 0
        for stage in stages:
            if stage.start_step != expected_start:
                raise ValueError(
                    f'Argument `stages` must be contiguous from step 0; '
                    f'stage {stage.index} starts at {stage.start_step}, '
                    f'expected {expected_start}.'
                )
            expected_start = stage.end_step
        self._stages = stages
        self.mode = mode

    @property
    def stages(self):
        """The stages as a tuple."""
        return self._stages

    @property
    def total_steps(self):
        """End step of the last stage."""
        return self._stages[-1].end_step

    def __len__(self):
        return len(self._stages)

    def __iter__(self):
        return iter(self._stages)

    def __getitem__(self, index):
        return self._stages[index]

    def __repr__(self):
        return f'StagePlan(mode={self.mode!r}, stages={list(self._stages)!r})'

    def stage_at_step(self, step):
        """Returns the stage that trains step `step` (0-based).

        A step at or past `total_steps` (a finished run) maps to the last
        stage, so resuming a completed run is harmless.

        Args:
            step: Global step, an int >= 0.

        Returns:
            The `Stage` with `start_step <= step < end_step`.
        """
        step = int(step)
        if step < 0:
            raise ValueError(f'Argument `step` must be >= 0; received: step={step}.')
        for stage in self._stages:
            if step < stage.end_step:
                return stage
        return self._stages[-1]

    def format_table(self):
        """Renders the plan as a fixed-width text table for logging."""
        header = ('stage', 'steps', 'image', 'randaug', 'mixup', 'cutmix', 'dropout')
        rows = [header]
        for stage in self._stages:
            rows.append(
                (
                    str(stage.index),
                    f'{stage.start_step}-{stage.end_step}',
                    str(stage.image_size),
                    f'{stage.ram:.3f}',
                    f'{stage.mixup_alpha:.4f}',
                    f'{stage.cutmix_alpha:.4f}',
                    f'{stage.dropout_rate:.3f}',
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = [
            f'Progressive learning plan ({self.mode} mode, '
            f'{len(self)} stages, {self.total_steps} steps)'
        ]
        for position, row in enumerate(rows):
            lines.append('  '.join(cell.rjust(width) for cell, width in zip(row, widths)))
            if position == 0:
                lines.append('  '.join('-' * width for width in widths))
        return '\n'.join(lines)


def build_stage_plan(
    num_stages,
    total_steps,
    final_image_size,
    final_ram,
    final_mixup,
    final_cutmix,
    final_dropout,
    min_image_size=None,
    min_ram=5.0,
    min_mixup=0.0,
    min_cutmix=0.0,
    min_dropout=0.1,
    mode='paper',
    size_divisor=1,
):
    """Builds the stage plan of progressive learning (see module docstring).

    Args:
        num_stages: Number of stages `M`; 0 or 1 gives one stage at the final
            values (plain training).
        total_steps: Length of the run `T` (steps, or epochs).
        final_image_size: Image size of the last stage (the model's train
            size).
        final_ram: RandAugment magnitude of the last stage.
        final_mixup: Mixup alpha of the last stage.
        final_cutmix: CutMix alpha of the last stage.
        final_dropout: Dropout rate of the last stage (every stage in
            official mode).
        min_image_size: Image size the interpolation starts from (paper
            `S_0`, official `data.ibase`); may be fractional; must be <=
            `final_image_size` when there is more than one stage. `None`:
            `default_min_image_size(final_image_size)`; 0: half the final
            size (the official code's rule for `ibase=0`).
        min_ram: RandAugment magnitude at the start.
        min_mixup: Mixup alpha at the start.
        min_cutmix: CutMix alpha at the start.
        min_dropout: Dropout rate at the start (paper mode only).
        mode: One of `PLAN_MODES`.
        size_divisor: Paper mode rounds intermediate image sizes to the
            nearest multiple of this (>= 1).

    Returns:
        A `StagePlan`.

    Raises:
        ValueError: On a bad argument, naming it and the valid range.
    """
    if mode not in PLAN_MODES:
        raise ValueError(
            f'Argument `mode` must be one of {list(PLAN_MODES)}; received: mode={mode!r}.'
        )
    num_stages = _as_int('num_stages', num_stages, minimum=0)
    total_steps = _as_int('total_steps', total_steps, minimum=1)
    final_image_size = _as_int('final_image_size', final_image_size, minimum=1)
    if min_image_size is None:
        min_image_size = default_min_image_size(final_image_size)
    _check_non_negative('min_image_size', min_image_size)
    if not min_image_size:
        min_image_size = final_image_size / 2
    size_divisor = _as_int('size_divisor', size_divisor, minimum=1)
    if num_stages > 1 and min_image_size > final_image_size:
        raise ValueError(
            f'Argument `min_image_size` must be <= final_image_size='
            f'{final_image_size}; received: min_image_size={min_image_size!r}.'
        )
    for argument, value in (
        ('final_ram', final_ram),
        ('final_mixup', final_mixup),
        ('final_cutmix', final_cutmix),
        ('final_dropout', final_dropout),
        ('min_ram', min_ram),
        ('min_mixup', min_mixup),
        ('min_cutmix', min_cutmix),
        ('min_dropout', min_dropout),
    ):
        _check_non_negative(argument, value)
    for argument, value in (('final_dropout', final_dropout), ('min_dropout', min_dropout)):
        if value >= 1:
            raise ValueError(
                f'Argument `{argument}` must be in [0, 1); received: {argument}={value!r}.'
            )

    count = max(num_stages, 1)
    if total_steps < count:
        raise ValueError(
            f'Argument `total_steps` must be >= num_stages={count} so that '
            f'every stage has a step; received: total_steps={total_steps}.'
        )
    boundaries = [i * total_steps // count for i in range(count + 1)]

    stages = []
    for i in range(count):
        if count == 1:
            size, ram, mixup, cutmix, dropout = (
                final_image_size,
                final_ram,
                final_mixup,
                final_cutmix,
                final_dropout,
            )
        else:
            ratio = i / (count - 1)
            ram = _lerp(min_ram, final_ram, ratio)
            mixup = _lerp(min_mixup, final_mixup, ratio)
            cutmix = _lerp(min_cutmix, final_cutmix, ratio)
            if mode == 'paper':
                size = _paper_size(
                    min_image_size, final_image_size, ratio, size_divisor, last=i == count - 1
                )
                dropout = _lerp(min_dropout, final_dropout, ratio)
            else:
                size = int(min_image_size + (final_image_size - min_image_size) * (i + 1) / count)
                dropout = final_dropout
        stages.append(
            Stage(
                index=i,
                start_step=boundaries[i],
                end_step=boundaries[i + 1],
                image_size=int(size),
                ram=float(ram),
                mixup_alpha=float(mixup),
                cutmix_alpha=float(cutmix),
                dropout_rate=float(dropout),
            )
        )
    return StagePlan(stages, mode=mode)


def first_stage_base(config):
    """The size progressive learning starts from in a run config: `train.min_image_size`, or
    derived from the final train size when unset (see `default_min_image_size`)."""
    if config.train.min_image_size is None:
        return default_min_image_size(config_lib.train_image_size(config))
    return config.train.min_image_size


def augment_pixel_scale(stage_image_size, final_image_size):
    """How much a stage scales the augmentation's pixel sizes: `stage / final`.

    RandAugment's Translate and Cutout are absolute pixels (100 and 40 at magnitude 10, the
    released values, set for ImageNet's 128-380 px). On a stage at half the final size
    the same magnitude moves and cuts twice the share of the image; scaled by this ratio they
    take the share they take at the final size, and the magnitude ramp of Algorithm 1 stays a
    ramp (see `data.build_dataset(augment_pixel_scale=)`). 1 at the final size.
    """
    if not (stage_image_size > 0 and final_image_size > 0):
        raise ValueError(
            'Image sizes must be > 0; received: '
            f'stage_image_size={stage_image_size!r}, final_image_size={final_image_size!r}.'
        )
    return stage_image_size / final_image_size


def config_augment_pixel_scale(config, stage_image_size):
    """The augmentation pixel scale a run config gives a stage of `stage_image_size`.

    `train.resize_augment_pixels`: True scales (see `augment_pixel_scale`), False keeps the
    released constants (1), None scales in paper mode only. The official plan keeps them: its
    first size is higher (80 px of 128 against the paper plan's 64), so its translate share
    already grows from stage to stage, and on the photo benchmark scaling it cost its 10-epoch
    runs 5 points on the mean (docs/progressive.md).
    """
    setting = config.train.resize_augment_pixels
    if setting is None:
        setting = config.train.progressive == 'paper'
    if not setting:
        return 1.0
    return augment_pixel_scale(stage_image_size, config_lib.train_image_size(config))


def plan_for_config(config, total_steps):
    """The progressive-learning plan a run of `total_steps` steps follows (as the trainer
    builds it): `train.stages` stages in `train.progressive` mode from the `train.min_*` values
    to the final size, `data.ram`, `data.mixup_alpha`, `data.cutmix_alpha` and
    `model.dropout_rate`."""
    return build_stage_plan(
        num_stages=config.train.stages,
        total_steps=total_steps,
        final_image_size=config_lib.train_image_size(config),
        final_ram=config.data.ram,
        final_mixup=config.data.mixup_alpha,
        final_cutmix=config.data.cutmix_alpha,
        final_dropout=config.model.dropout_rate,
        min_image_size=config.train.min_image_size,
        min_ram=config.train.min_ram,
        min_mixup=config.train.min_mixup,
        min_cutmix=config.train.min_cutmix,
        min_dropout=config.train.min_dropout,
        mode=config.train.progressive,
    )


def _lerp(start, end, ratio):
    """Linear interpolation `start + (end - start) * ratio`."""
    return start + (end - start) * ratio


def _paper_size(min_size, final_size, ratio, divisor, last):
    """Paper-mode size: nearest multiple of `divisor`; last stage exact."""
    if last:
        return final_size
    exact = _lerp(min_size, final_size, ratio)
    rounded = int(math.floor(exact / divisor + 0.5)) * divisor
    return max(rounded, divisor)


def _as_int(argument, value, minimum):
    """Returns `value` as int, raising ValueError if not an int >= minimum."""
    try:
        is_integer = float(value).is_integer()
    except (TypeError, ValueError):
        is_integer = False
    if isinstance(value, (bool, str)) or not is_integer or int(value) < minimum:
        raise ValueError(
            f'Argument `{argument}` must be an integer >= {minimum}; '
            f'received: {argument}={value!r}.'
        )
    return int(value)


def _check_non_negative(argument, value):
    """Raises ValueError unless `value` is a number >= 0."""
    if isinstance(value, bool) or not (isinstance(value, numbers.Real) and value >= 0):
        raise ValueError(
            f'Argument `{argument}` must be a number >= 0; received: {argument}={value!r}.'
        )
