"""Tests for efficientnetv2.train.schedules."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from efficientnetv2.train.schedules import WarmupDecaySchedule

IMAGENET_IMAGES = 1_256_144
IMAGENET_BATCH = 4096
IMAGENET_SPE = IMAGENET_IMAGES / IMAGENET_BATCH  # 306.676 (TF1 script)
IMAGENET_STEPS = 350 * IMAGENET_IMAGES // IMAGENET_BATCH  # 107,336


def _imagenet(decay_type='exponential', **kwargs):
    return WarmupDecaySchedule(
        lr_base=0.016,
        global_batch_size=IMAGENET_BATCH,
        steps_per_epoch=IMAGENET_SPE,
        total_steps=IMAGENET_STEPS,
        decay_type=decay_type,
        **kwargs,
    )


def _lr(schedule, step):
    return float(schedule(step))


def test_imagenet_derived_numbers():
    schedule = _imagenet()
    assert schedule.initial_lr == pytest.approx(0.256)
    assert schedule.warmup_steps == 1533
    assert schedule.decay_steps == pytest.approx(736.02, abs=0.01)
    assert IMAGENET_STEPS == 107_336


def test_imagenet_exponential_values():
    schedule = _imagenet()
    assert _lr(schedule, 0) == 0.0
    # Warmup midpoint and the last warmup step.
    assert _lr(schedule, 766) == pytest.approx(0.256 * 766 / 1533, rel=1e-6)
    assert _lr(schedule, 1532) == pytest.approx(0.256 * 1532 / 1533, rel=1e-6)
    # Decay is not shifted by warmup: two steps (1533 / 736.02 = 2.08)
    # already happened when warmup ends.
    assert _lr(schedule, 1533) == pytest.approx(0.256 * 0.97**2, rel=1e-6)
    assert _lr(schedule, 1533) == pytest.approx(0.2409, abs=1e-4)
    # Staircase: constant inside a period, steps at its boundary.
    assert _lr(schedule, 2200) == _lr(schedule, 2208)
    assert _lr(schedule, 2209) == pytest.approx(0.256 * 0.97**3, rel=1e-6)
    final = _lr(schedule, IMAGENET_STEPS)
    assert final == pytest.approx(0.256 * 0.97**145, rel=1e-5)
    assert final == pytest.approx(0.00309, abs=1e-5)


def test_integer_steps_per_epoch_tf2_numbers():
    schedule = WarmupDecaySchedule(
        0.016, IMAGENET_BATCH, IMAGENET_IMAGES // IMAGENET_BATCH, total_steps=107_100
    )
    assert schedule.warmup_steps == 1530
    assert schedule.decay_steps == pytest.approx(734.4)
    assert _lr(schedule, 1530) == pytest.approx(0.256 * 0.97**2, rel=1e-6)


def test_cosine_endpoints():
    schedule = _imagenet('cosine')
    assert _lr(schedule, 1533) == pytest.approx(
        0.128 * (1 + math.cos(math.pi * 1533 / IMAGENET_STEPS)), rel=1e-6
    )
    assert _lr(schedule, IMAGENET_STEPS // 2) == pytest.approx(0.128, rel=1e-4)
    assert _lr(schedule, IMAGENET_STEPS) == pytest.approx(0.0, abs=1e-7)


def test_linear_endpoints():
    schedule = _imagenet('linear')
    assert _lr(schedule, 1533) == pytest.approx(0.256 * (1 - 1533 / IMAGENET_STEPS), rel=1e-6)
    assert _lr(schedule, IMAGENET_STEPS // 2) == pytest.approx(0.128, rel=1e-4)
    assert _lr(schedule, IMAGENET_STEPS) == pytest.approx(0.0, abs=1e-7)
    assert _lr(schedule, IMAGENET_STEPS + 100) == 0.0


def test_constant_after_warmup():
    schedule = _imagenet('constant')
    assert _lr(schedule, 1000) == pytest.approx(0.256 * 1000 / 1533, rel=1e-6)
    assert _lr(schedule, 1533) == pytest.approx(0.256)
    assert _lr(schedule, IMAGENET_STEPS) == pytest.approx(0.256)


def test_min_lr_floor_is_batch_scaled_and_overridden_by_warmup():
    schedule = _imagenet('linear', lr_min=0.001)  # floor 0.016
    assert schedule.min_lr == pytest.approx(0.016)
    assert _lr(schedule, IMAGENET_STEPS) == pytest.approx(0.016)
    assert _lr(schedule, 50_000) == pytest.approx(0.256 * (1 - 50_000 / IMAGENET_STEPS), rel=1e-6)
    # Warmup wins over the floor.
    assert _lr(schedule, 10) == pytest.approx(0.256 * 10 / 1533, rel=1e-6)


def test_no_warmup():
    schedule = WarmupDecaySchedule(0.1, 256, 10, warmup_epochs=0)
    assert schedule.warmup_steps == 0
    assert _lr(schedule, 0) == pytest.approx(0.1)
    assert _lr(schedule, 24) == pytest.approx(0.1 * 0.97)


def test_tensor_steps_and_tf_function():
    schedule = _imagenet()
    steps = tf.constant([0, 766, 1533, IMAGENET_STEPS], tf.int64)
    values = tf.function(schedule)(steps).numpy()
    expected = [0.0, 0.256 * 766 / 1533, 0.256 * 0.97**2, 0.256 * 0.97**145]
    np.testing.assert_allclose(values, expected, rtol=1e-5)


def test_drives_a_keras_optimizer():
    schedule = WarmupDecaySchedule(0.1, 512, 10, warmup_epochs=1)
    optimizer = keras.optimizers.SGD(learning_rate=schedule)
    variable = keras.Variable(1.0)
    for _ in range(5):
        optimizer.apply([tf.constant(1.0)], [variable])
    # Steps 0..4 use 0.2 * t / 10.
    assert float(variable.numpy()) == pytest.approx(1.0 - 0.02 * (0 + 1 + 2 + 3 + 4), rel=1e-6)


def test_config_round_trip():
    schedule = WarmupDecaySchedule(
        0.02,
        1024,
        12.5,
        total_steps=900,
        decay_type='cosine',
        warmup_epochs=2.0,
        lr_min=1e-4,
        decay_rate=0.9,
        decay_epochs=3.0,
        reference_batch_size=128,
    )
    config = schedule.get_config()
    restored = WarmupDecaySchedule.from_config(config)
    assert restored.get_config() == config
    serialized = keras.optimizers.schedules.serialize(schedule)
    clone = keras.optimizers.schedules.deserialize(serialized)
    assert isinstance(clone, WarmupDecaySchedule)
    for step in (0, 10, 24, 25, 400, 900):
        assert _lr(clone, step) == _lr(schedule, step)


@pytest.mark.parametrize(
    'kwargs, argument',
    [
        ({'decay_type': 'step'}, 'decay_type'),
        ({'decay_type': 'cosine', 'total_steps': None}, 'total_steps'),
        ({'steps_per_epoch': 0}, 'steps_per_epoch'),
        ({'global_batch_size': -1}, 'global_batch_size'),
        ({'warmup_epochs': -1}, 'warmup_epochs'),
        ({'lr_min': 'x'}, 'lr_min'),
    ],
)
def test_bad_arguments(kwargs, argument):
    settings = {'lr_base': 0.016, 'global_batch_size': 256, 'steps_per_epoch': 10.0}
    settings.update(kwargs)
    with pytest.raises(ValueError, match=f'`{argument}`'):
        WarmupDecaySchedule(**settings)


def test_bad_decay_type_lists_choices():
    with pytest.raises(ValueError, match='exponential.*cosine.*linear'):
        WarmupDecaySchedule(0.1, 256, 10, decay_type='poly')
