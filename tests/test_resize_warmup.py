"""The learning-rate ramp after each image-size increase (train.resize_warmup, fit_progressive).

At a new image size the early layers' gradients are many times those at the size just
trained, and a step at the full rate there made progressive runs collapse (README, progressive
learning). These tests pin the ramp: where it starts, how long it is, what rate each step gets,
in the schedule, in the CLI trainer and in fit_progressive, and that it is off where the plan
does not grow (fixed size, released ImageNet recipe).
"""

import keras
import numpy as np
import pytest
from test_keras_workflow import STEPS
from test_keras_workflow import digits_fn
from test_keras_workflow import tiny_model
from test_train import tiny_config

import efficientnetv2
from efficientnetv2 import experiment
from efficientnetv2.train import progressive
from efficientnetv2.train import schedules
from efficientnetv2.train import trainer as trainer_lib


def _plan(sizes, total=400):
    stages = len(sizes)
    return progressive.StagePlan(
        [
            progressive.Stage(i, i * total // stages, (i + 1) * total // stages, size, 5, 0, 0, 0.1)
            for i, size in enumerate(sizes)
        ]
    )


def test_ramps_start_where_the_size_grows_and_last_a_share_of_the_stage():
    assert schedules.ramps_for_plan(_plan([64, 85, 107, 128]), 0.2) == [
        (100, 20),
        (200, 20),
        (300, 20),
    ]
    # No ramp where the size stays (stage switches alone) and none with fraction 0.
    assert schedules.ramps_for_plan(_plan([128, 128, 128]), 0.2) == []
    assert schedules.ramps_for_plan(_plan([64, 64, 128]), 0.5) == [(266, 67)]
    assert schedules.ramps_for_plan(_plan([64, 128]), 0.0) == []
    # A plan counted in epochs, with the steps per epoch.
    assert schedules.ramps_for_plan(_plan([32, 48], total=10), 0.2, steps_per_unit=50) == [
        (250, 50)
    ]
    for bad in (-0.1, 1.5, 'x', True):
        with pytest.raises(ValueError, match='fraction'):
            schedules.ramps_for_plan(_plan([64, 128]), bad)


def test_stage_rates_follow_the_image_size():
    assert schedules.scales_for_plan(_plan([64, 85, 107, 128]), 1.0) == [
        (0, 0.5),
        (100, 85 / 128),
        (200, 107 / 128),
        (300, 1.0),
    ]
    assert schedules.scales_for_plan(_plan([64, 128]), 0.0) == []
    assert schedules.scales_for_plan(_plan([128, 128]), 1.0) == []
    assert schedules.scales_for_plan(_plan([32, 64], total=4), 2.0, steps_per_unit=10) == [
        (0, 0.25),
        (20, 1.0),
    ]
    with pytest.raises(ValueError, match='power'):
        schedules.scales_for_plan(_plan([64, 128]), -1)
    rate = schedules.ResizeWarmup(0.1, ramps=[(100, 10)], scales=[(0, 0.5), (100, 1.0)])
    np.testing.assert_allclose(
        [float(rate(t)) for t in (0, 99, 100, 104, 110)], [0.05, 0.05, 0.01, 0.05, 0.1], rtol=1e-6
    )
    with pytest.raises(ValueError, match='scales'):
        schedules.ResizeWarmup(0.1, scales=[(0, 0.0)])


def test_schedule_scales_the_base_rate_inside_each_ramp_only():
    base = schedules.WarmupDecaySchedule(0.016, 32, 50, 500, 'cosine', warmup_epochs=1.0)
    ramped = schedules.ResizeWarmup(base, [(125, 25), (250, 25)])
    for step, factor in ((49, 1.0), (124, 1.0), (125, 1 / 25), (126, 2 / 25), (149, 1.0)):
        np.testing.assert_allclose(float(ramped(step)), float(base(step)) * factor, rtol=1e-6)
    np.testing.assert_allclose(float(ramped(250)), float(base(250)) / 25, rtol=1e-6)
    np.testing.assert_allclose(float(ramped(275)), float(base(275)), rtol=1e-6)
    # A constant base rate, and a round trip through the Keras serialization.
    np.testing.assert_allclose(float(schedules.ResizeWarmup(0.5, [(10, 4)])(11)), 0.25)
    copy = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(ramped))
    assert copy.ramps == ((125, 25), (250, 25))
    np.testing.assert_allclose(float(copy(126)), float(ramped(126)), rtol=1e-6)
    with pytest.raises(ValueError, match='base'):
        schedules.ResizeWarmup('fast', [])
    with pytest.raises(ValueError, match='ramps'):
        schedules.ResizeWarmup(0.1, [(10,)])


def test_trainer_ramps_after_the_size_change(tmp_path):
    config = tiny_config('train.epochs=1,train.stages=2,train.resize_warmup=0.5')
    trainer = trainer_lib.Trainer(config, str(tmp_path))
    first, second = trainer.plan
    assert (first.image_size, second.image_size) == (12, 24)
    length = round(0.5 * second.num_steps)
    assert trainer.schedule.ramps == ((second.start_step, length),)
    # Stage 1 at 12 px trains at half the rate of the final 24 px (resize_lr_power 1).
    assert trainer.schedule.scales == ((0, 0.5), (second.start_step, 1.0))
    base = trainer.schedule.base
    np.testing.assert_allclose(float(trainer.schedule(3)), float(base(3)) * 0.5, rtol=1e-6)
    np.testing.assert_allclose(
        float(trainer.schedule(second.start_step)),
        float(base(second.start_step)) / length,
        rtol=1e-6,
    )
    # The optimizer steps with the ramped rate.
    assert trainer.optimizer._learning_rate is trainer.schedule


def test_ramp_is_off_for_fixed_size_and_the_released_imagenet_recipe(tmp_path):
    fixed = trainer_lib.Trainer(
        tiny_config('train.epochs=1,train.stages=0,train.resize_warmup=0.5'), str(tmp_path / 'a')
    )
    assert isinstance(fixed.schedule, schedules.WarmupDecaySchedule)
    imagenet = experiment.build_config('efficientnetv2-s', 'imagenet').train
    assert (imagenet.resize_warmup, imagenet.resize_lr_power) == (0.0, 0.0)
    assert imagenet.resize_augment_pixels is False
    digits = experiment.build_config('efficientnetv2-b0', 'digits').train
    assert (digits.resize_warmup, digits.resize_lr_power) == (0.2, 1.0)
    assert digits.resize_augment_pixels is None  # On in paper mode only.


class _Rates(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rates = []

    def on_train_batch_begin(self, batch, logs=None):
        optimizer = self.model.optimizer
        self.rates.append(
            (
                int(optimizer.iterations),
                float(keras.ops.convert_to_numpy(optimizer.learning_rate)),
            )
        )


@pytest.mark.parametrize('kind', ['schedule', 'constant'])
def test_fit_progressive_ramps_the_optimizers_own_rate(kind):
    model = tiny_model()
    rate = keras.optimizers.schedules.CosineDecay(1e-3, 40) if kind == 'schedule' else 1e-3
    model.compile(
        keras.optimizers.Adam(rate), keras.losses.CategoricalCrossentropy(from_logits=True)
    )
    original = model.optimizer._learning_rate
    plan = efficientnetv2.progressive_plan(epochs=4, image_size=24, num_stages=2)
    rates = _Rates()
    calls = []
    efficientnetv2.fit_progressive(
        model,
        digits_fn(calls),
        plan,
        steps_per_epoch=STEPS,
        callbacks=[rates],
        resize_warmup=0.5,
        resize_lr_power=1.0,  # Adam's own default is 0 (resize_lr_power_for).
        verbose=0,
    )
    # Stage 2 (24 px) starts at step 4 and ramps over half its 4 steps: 1/2, then full.
    by_step = dict(rates.rates)
    expected = (lambda t: float(original(t))) if kind == 'schedule' else (lambda t: 1e-3)
    # Stage 1 (12 px) at half the rate of the final 24 px.
    np.testing.assert_allclose(by_step[3], expected(3) * 0.5, rtol=1e-5)
    np.testing.assert_allclose(by_step[4], expected(4) * 0.5, rtol=1e-5)
    np.testing.assert_allclose(by_step[5], expected(5), rtol=1e-5)
    # The optimizer gets its own rate back.
    if kind == 'schedule':
        assert model.optimizer._learning_rate is original
    else:
        np.testing.assert_allclose(float(model.optimizer.learning_rate), 1e-3, rtol=1e-6)


def test_fit_progressive_rejects_a_bad_fraction():
    model = tiny_model()
    plan = efficientnetv2.progressive_plan(epochs=2, image_size=24, num_stages=2)
    with pytest.raises(ValueError, match='resize_warmup'):
        efficientnetv2.fit_progressive(model, digits_fn([]), plan, resize_warmup=2.0)


def test_stage_ends_show_raw_and_ema_top1_with_gradient_and_update_norms(tmp_path):
    from test_trainer_stages import _scalars

    config = tiny_config('train.epochs=1,train.stages=2,train.ema_decay=0.9')
    trainer = trainer_lib.Trainer(config, str(tmp_path))
    trainer.train(evaluate_each_stage=True)
    assert [r['stage'] for r in trainer.stage_results] == [0, 1]
    first, last = trainer.stage_results
    # Stage 1 ends at its own size (12 px) and the final size (32 px), with both weights.
    assert first['ema'] and not first['raw']['ema']
    assert first['image_size'] == first['raw']['image_size'] == 32
    assert first['at_train_size']['image_size'] == first['raw']['at_train_size']['image_size']
    assert first['at_train_size']['image_size'] == trainer.plan[0].image_size
    stats = first['stage_stats']
    assert stats['grad_norm'] > 0 and stats['grad_norm_max'] >= stats['grad_norm']
    assert 0 < stats['update_norm'] < 1  # RMSPropTF1: read from its momentum slots.
    assert np.isfinite(stats['loss'])
    # The reported result (eval_results.json) is the EMA one at the final size.
    import json

    with open(tmp_path / 'eval_results.json') as f:
        assert json.load(f)['ema'] is True
    assert last['top_1'] == trainer.stage_results[-1]['top_1']
    scalars = _scalars(str(tmp_path / 'stage_end'))
    for tag in (
        'top_1_ema_final_size',
        'top_1_raw_final_size',
        'top_1_ema_stage_size',
        'top_1_raw_stage_size',
        'grad_norm',
        'grad_norm_max',
        'update_norm',
        'loss',
    ):
        assert len(scalars[tag]) == 2, tag  # Train sizes 12 and 24 px, eval 32 px.
    train = _scalars(str(tmp_path / 'train'))
    assert train['grad_norm'] and train['update_norm']


def test_stage_rate_power_follows_the_optimizer():
    from efficientnetv2 import keras_workflow
    from efficientnetv2.train import optimizers

    power = keras_workflow.resize_lr_power_for
    assert power(keras.optimizers.SGD(0.1, momentum=0.9)) == 1.0
    assert power(optimizers.build_optimizer('rmsprop', 0.1)) == 1.0  # The recipe's TF1 RMSProp.
    assert power(keras.optimizers.Adam(1e-3)) == 0.0
    assert power(keras.optimizers.AdamW(1e-3)) == 0.0
    assert power(keras.optimizers.RMSprop(1e-3)) == 0.0
    assert power(keras.mixed_precision.LossScaleOptimizer(keras.optimizers.SGD(0.1))) == 1.0


def test_fit_progressive_keeps_adams_rate_on_small_stages():
    model = tiny_model()
    model.compile(
        keras.optimizers.Adam(1e-3), keras.losses.CategoricalCrossentropy(from_logits=True)
    )
    plan = efficientnetv2.progressive_plan(epochs=4, image_size=24, num_stages=2)
    rates = _Rates()
    efficientnetv2.fit_progressive(
        model,
        digits_fn([]),
        plan,
        steps_per_epoch=STEPS,
        callbacks=[rates],
        resize_warmup=0.5,
        verbose=0,
    )
    by_step = dict(rates.rates)
    np.testing.assert_allclose(by_step[3], 1e-3, rtol=1e-5)  # Stage 1 (12 px): full rate.
    np.testing.assert_allclose(by_step[4], 0.5e-3, rtol=1e-5)  # Stage 2 ramps up again.
    np.testing.assert_allclose(by_step[STEPS * 4 - 1], 1e-3, rtol=1e-5)


def test_second_moment_steps_by_optimizer():
    from efficientnetv2 import keras_workflow

    steps = keras_workflow.second_moment_steps
    np.testing.assert_allclose(steps(keras.optimizers.Adam(1e-3)), 1000.0)
    np.testing.assert_allclose(steps(keras.optimizers.AdamW(1e-3, beta_2=0.99)), 100.0)
    np.testing.assert_allclose(steps(keras.optimizers.RMSprop(1e-3)), 10.0)
    assert steps(keras.optimizers.SGD(0.1, momentum=0.9)) is None
    assert steps(keras.optimizers.Lion(1e-4)) is None
    wrapped = keras.mixed_precision.LossScaleOptimizer(keras.optimizers.Adam(1e-3, beta_2=0.98))
    np.testing.assert_allclose(steps(wrapped), 50.0)


@pytest.mark.parametrize('beta_2, warns', [(0.999, True), (0.5, False)])
def test_fit_progressive_warns_when_adams_average_outlasts_a_stage(beta_2, warns, caplog):
    # Stages of 2 epochs x STEPS steps: Adam's 1,000-step average spans many of them, and
    # carries the smaller images' gradient scale into the later stages (docs/progressive.md).
    model = tiny_model()
    model.compile(
        keras.optimizers.Adam(1e-3, beta_2=beta_2),
        keras.losses.CategoricalCrossentropy(from_logits=True),
    )
    plan = efficientnetv2.progressive_plan(epochs=4, image_size=24, num_stages=2)
    with caplog.at_level('WARNING'):
        efficientnetv2.fit_progressive(model, digits_fn([]), plan, steps_per_epoch=STEPS, verbose=0)
    found = [
        r.getMessage() for r in caplog.records if 'averages squared gradients' in r.getMessage()
    ]
    assert bool(found) == warns
    if warns:
        shortest = 2 * STEPS
        assert (
            f'about 1000 steps (beta_2=0.999), more than the shortest stage ({shortest} steps)'
            in found[0]
        )
        assert f'beta_2 <= {1 - 1 / shortest:.3g}' in found[0]
