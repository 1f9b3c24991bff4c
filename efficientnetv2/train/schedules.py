"""Learning-rate schedule of the EfficientNet(V2) recipe: warmup, then decay.

Facts (official code, `WarmupLearningRateSchedule`):
  * the peak learning rate scales linearly with the global batch:
    `lr0 = lr_base * global_batch_size / 256`;
  * exponential decay is staircase, `lr0 * 0.97 ** floor(t / (2.4 * spe))`,
    counted from step 0: warmup does not shift it, so at the end of warmup
    the LR drops from about `lr0` to the decayed value (ImageNet, batch 4096:
    0.256 -> 0.2409 at step 1533);
  * cosine `0.5 * lr0 * (1 + cos(pi * t / T))` and linear `(1 - t / T) * lr0`
    run over the whole run of `T` steps (warmup included);
  * a floor `min_lr` is applied next, then the linear warmup
    `lr0 * t / W` with `W = int(warmup_epochs * spe)` overrides the value
    for `t < W`.
"""

import math

import keras
from keras import ops

from efficientnetv2.config import DECAY_TYPES  # One source: the config's choices.

_PACKAGE = 'efficientnetv2'


@keras.saving.register_keras_serializable(package=_PACKAGE)
class WarmupDecaySchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup followed by exponential, cosine, linear or constant decay.

    Both `lr_base` and `lr_min` are given per `reference_batch_size` images
    and scaled by `global_batch_size / reference_batch_size`, as the
    official configs (`train.lr_base`, `train.lr_min`) are.

    Args:
        lr_base: Learning rate per `reference_batch_size` images (0.016 for
            the ImageNet recipe).
        global_batch_size: Images per optimizer step over all replicas.
        steps_per_epoch: Optimizer steps per epoch; may be a float (the TF1
            script uses `num_images / batch`, e.g. 306.676).
        total_steps: Steps of the whole run, `T`; required by `cosine` and
            `linear`, optional otherwise.
        decay_type: One of `DECAY_TYPES`.
        warmup_epochs: Length of the linear warmup in epochs; 0 disables it.
        lr_min: Floor per `reference_batch_size` images; 0 disables it.
        decay_rate: Factor of each exponential step (0.97).
        decay_epochs: Epochs between exponential steps (2.4).
        reference_batch_size: Batch size `lr_base` refers to (256).
    """

    def __init__(
        self,
        lr_base,
        global_batch_size,
        steps_per_epoch,
        total_steps=None,
        decay_type='exponential',
        warmup_epochs=5.0,
        lr_min=0.0,
        decay_rate=0.97,
        decay_epochs=2.4,
        reference_batch_size=256,
    ):
        super().__init__()
        _check_positive('lr_base', lr_base, allow_zero=True)
        _check_positive('global_batch_size', global_batch_size)
        _check_positive('steps_per_epoch', steps_per_epoch)
        _check_positive('warmup_epochs', warmup_epochs, allow_zero=True)
        _check_positive('lr_min', lr_min, allow_zero=True)
        _check_positive('decay_rate', decay_rate)
        _check_positive('decay_epochs', decay_epochs)
        _check_positive('reference_batch_size', reference_batch_size)
        if decay_type not in DECAY_TYPES:
            raise ValueError(
                f'Argument `decay_type` must be one of {list(DECAY_TYPES)}; '
                f'received: decay_type={decay_type!r}.'
            )
        if decay_type in ('cosine', 'linear') and not (total_steps is not None and total_steps > 0):
            raise ValueError(
                f'Argument `total_steps` must be a positive number when '
                f'decay_type={decay_type!r}; received: '
                f'total_steps={total_steps!r}.'
            )
        self.lr_base = float(lr_base)
        self.global_batch_size = int(global_batch_size)
        self.steps_per_epoch = float(steps_per_epoch)
        self.total_steps = None if total_steps is None else int(total_steps)
        self.decay_type = decay_type
        self.warmup_epochs = float(warmup_epochs)
        self.lr_min = float(lr_min)
        self.decay_rate = float(decay_rate)
        self.decay_epochs = float(decay_epochs)
        self.reference_batch_size = int(reference_batch_size)

    @property
    def batch_scale(self):
        """`global_batch_size / reference_batch_size`."""
        return self.global_batch_size / self.reference_batch_size

    @property
    def initial_lr(self):
        """Peak learning rate `lr0` after batch scaling."""
        return self.lr_base * self.batch_scale

    @property
    def min_lr(self):
        """Learning-rate floor after batch scaling."""
        return self.lr_min * self.batch_scale

    @property
    def warmup_steps(self):
        """`W = int(warmup_epochs * steps_per_epoch)`."""
        return int(self.warmup_epochs * self.steps_per_epoch)

    @property
    def decay_steps(self):
        """Steps between two exponential decay steps (float)."""
        return self.decay_epochs * self.steps_per_epoch

    def __call__(self, step):
        """Returns the learning rate (float32 scalar tensor) at `step`."""
        t = ops.cast(ops.convert_to_tensor(step), 'float32')
        lr0 = ops.convert_to_tensor(self.initial_lr, 'float32')
        lr = self._decayed(t, lr0)
        if self.min_lr > 0:
            lr = ops.maximum(lr, ops.convert_to_tensor(self.min_lr, 'float32'))
        warmup_steps = self.warmup_steps
        if warmup_steps > 0:
            warmup_lr = lr0 * t / float(warmup_steps)
            lr = ops.where(t < float(warmup_steps), warmup_lr, lr)
        return lr

    def _decayed(self, t, lr0):
        """Decay value at float step `t`, before floor and warmup."""
        if self.decay_type == 'exponential':
            exponent = ops.floor(t / ops.convert_to_tensor(self.decay_steps, 'float32'))
            rate = ops.convert_to_tensor(self.decay_rate, 'float32')
            return lr0 * ops.power(rate, exponent)
        if self.decay_type == 'cosine':
            progress = t / float(self.total_steps)
            return 0.5 * lr0 * (1.0 + ops.cos(math.pi * progress))
        if self.decay_type == 'linear':
            # Clamped at 0 past `total_steps` (the official code would go
            # negative there); identical on [0, total_steps].
            return ops.maximum(1.0 - t / float(self.total_steps), 0.0) * lr0
        return lr0 * ops.ones_like(t)

    def get_config(self):
        return {
            'lr_base': self.lr_base,
            'global_batch_size': self.global_batch_size,
            'steps_per_epoch': self.steps_per_epoch,
            'total_steps': self.total_steps,
            'decay_type': self.decay_type,
            'warmup_epochs': self.warmup_epochs,
            'lr_min': self.lr_min,
            'decay_rate': self.decay_rate,
            'decay_epochs': self.decay_epochs,
            'reference_batch_size': self.reference_batch_size,
        }


def _check_positive(argument, value, allow_zero=False):
    """Raises ValueError unless `value` is a number > 0 (or >= 0)."""
    try:
        ok = value >= 0 if allow_zero else value > 0
    except TypeError:
        ok = False
    if not ok:
        bound = '>= 0' if allow_zero else '> 0'
        raise ValueError(
            f'Argument `{argument}` must be a number {bound}; received: {argument}={value!r}.'
        )


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ResizeWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate of a progressive plan, made to fit each stage's image size.

    Two measured effects (photo benchmark: V2-B0, batch 32, `lr_base` 0.016; see
    docs/progressive.md), both passed straight through by the recipe's RMSProp, whose mean
    square (about 6e-5) sits under its epsilon (1e-3), so that a step follows the gradient:

    * smaller images give larger gradients: 1.9x the gradient norm at 64 px as at 128 px in the
      first 125 steps (mean 90 against 48), the same ratio as at initialisation. At 64 px the
      run collapsed in its first stage (EMA top-1 6.8%) where 128 px did not (41%), and at half
      the rate 64 px did not either (45.5%). `scales` multiply each stage's rate by
      `(size / final size) ** power` (`scales_for_plan`);
    * a network trained at one size has much larger gradients at the next one: 15-36x for the
      stem and stages 1-4, with the same weights and images, and about 10x larger updates of
      stages 1-3 after the first change. `ramps` raise the rate linearly again over the first
      steps of every stage that starts at a larger size (`ramps_for_plan`).

    The rate at step `t` is `base(t) * scale(t) * ramp(t)`: `scale` is the factor of the last
    `scales` entry that starts at or before `t` (1 before the first), `ramp` is
    `(t - s + 1) / L` inside a ramp `[s, s + L)` and 1 elsewhere.

    Args:
        base: the schedule to scale (a `LearningRateSchedule`) or a constant rate (float).
        ramps: `(start_step, length)` pairs; ramps of length 0 are dropped.
        scales: `(start_step, factor)` pairs, factors > 0.
    """

    def __init__(self, base, ramps=(), scales=()):
        super().__init__()
        if isinstance(base, dict):  # From get_config().
            base = keras.optimizers.schedules.deserialize(base)
        if not (
            isinstance(base, keras.optimizers.schedules.LearningRateSchedule) or _is_real(base)
        ):
            raise ValueError(
                'Argument `base` must be a LearningRateSchedule or a number; '
                f'received: base={base!r}.'
            )
        self.base = base
        self.ramps = tuple(
            sorted(
                (start, length)
                for start, length in _pairs('ramps', ramps, int, '(start_step, length)')
                if length
            )
        )
        self.scales = tuple(sorted(_pairs('scales', scales, float, '(start_step, factor)')))
        for start, factor in self.scales:
            if not factor > 0:
                raise ValueError(
                    f'Argument `scales` must hold factors > 0; received {(start, factor)!r}.'
                )

    def factor(self, step):
        """The multiplier `scale(step) * ramp(step)` (float32 scalar tensor)."""
        t = keras.ops.cast(step, 'float32')
        factor = keras.ops.ones_like(t)
        for start, scale in self.scales:
            factor = keras.ops.where(t >= start, scale * keras.ops.ones_like(t), factor)
        for start, length in self.ramps:
            inside = keras.ops.logical_and(t >= start, t < start + length)
            factor = keras.ops.where(inside, factor * (t - start + 1.0) / float(length), factor)
        return factor

    def __call__(self, step):
        base = self.base(step) if callable(self.base) else float(self.base)
        return keras.ops.cast(base, 'float32') * self.factor(step)

    def get_config(self):
        base = self.base
        if isinstance(base, keras.optimizers.schedules.LearningRateSchedule):
            base = keras.optimizers.schedules.serialize(base)
        return {
            'base': base,
            'ramps': [list(ramp) for ramp in self.ramps],
            'scales': [list(scale) for scale in self.scales],
        }


def _pairs(argument, pairs, kind, shape):
    cleaned = []
    for pair in pairs:
        try:
            start, value = pair
            start, value = int(start), kind(value)
        except (TypeError, ValueError):
            raise ValueError(
                f'Argument `{argument}` must hold {shape} pairs; received {pair!r}.'
            ) from None
        if start < 0 or value < 0:
            raise ValueError(
                f'Argument `{argument}` must hold non-negative values; received {pair!r}.'
            )
        cleaned.append((start, value))
    return cleaned


def scales_for_plan(plan, power, steps_per_unit=1):
    """`(start_step, factor)` scales for `ResizeWarmup`: `(size / final size) ** power`.

    Args:
        plan: a `progressive.StagePlan`.
        power: 0 (no scaling) or more; 1 makes the rate proportional to the image size.
        steps_per_unit: steps per unit of the plan (1 for a plan counted in steps; the steps
            per epoch for one counted in epochs).
    """
    if not (_is_real(power) and power >= 0):
        raise ValueError(f'Argument `power` must be a number >= 0; received: power={power!r}.')
    final = plan.stages[-1].image_size
    scales = []
    for stage in plan.stages:
        factor = (stage.image_size / final) ** power
        if factor != 1 or scales:
            scales.append((int(round(stage.start_step * steps_per_unit)), factor))
    return scales


def ramps_for_plan(plan, fraction, steps_per_unit=1):
    """`(start_step, length)` ramps for `ResizeWarmup`: one per stage whose image size grows.

    Args:
        plan: a `progressive.StagePlan`.
        fraction: the share of such a stage's steps the ramp takes, in [0, 1]; 0: none.
        steps_per_unit: steps per unit of the plan (1 for a plan counted in steps; the steps
            per epoch for one counted in epochs).
    """
    if not (_is_real(fraction) and 0 <= fraction <= 1):
        raise ValueError(
            f'Argument `fraction` must be a number in [0, 1]; received: fraction={fraction!r}.'
        )
    ramps = []
    for previous, stage in zip(plan.stages, plan.stages[1:]):
        if stage.image_size <= previous.image_size:
            continue
        start = int(round(stage.start_step * steps_per_unit))
        end = int(round(stage.end_step * steps_per_unit))
        length = int(round(fraction * (end - start)))
        if length:
            ramps.append((start, length))
    return ramps


def _is_real(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
