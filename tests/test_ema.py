"""Tests for efficientnetv2.train.ema."""

import textwrap

import keras
import numpy as np
import pytest
import script_runner
import tensorflow as tf

from efficientnetv2.train.ema import ExponentialMovingAverage
from efficientnetv2.train.ema import effective_decay
from efficientnetv2.train.ema import ema_variables


@pytest.fixture(scope='module')
def bn_model():
    """A tiny conv + BN + dense model, built and with non-trivial BN stats."""
    model = keras.Sequential(
        name='tiny',
        layers=[
            keras.Input((4, 4, 2)),
            keras.layers.Conv2D(3, 3, name='conv'),
            keras.layers.BatchNormalization(name='bn'),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2, name='dense'),
        ],
    )
    model(tf.ones((2, 4, 4, 2)), training=True)
    return model


@pytest.mark.parametrize(
    'step, expected',
    [(0, 0.1), (100, 101 / 110), (1000, 1001 / 1010), (10_000, 10001 / 10010), (1_000_000, 0.9999)],
)
def test_effective_decay_warm_up(step, expected):
    assert float(effective_decay(0.9999, step)) == pytest.approx(expected, rel=1e-6)


def test_effective_decay_without_num_updates():
    assert float(effective_decay(0.99)) == pytest.approx(0.99)


def test_arithmetic_by_hand_fixed_decay():
    variable = keras.Variable([1.0, -2.0])
    ema = ExponentialMovingAverage([variable], decay=0.5, use_num_updates=False)
    shadow = ema.shadow_variables[0]
    np.testing.assert_array_equal(shadow.numpy(), [1.0, -2.0])
    expected = np.array([1.0, -2.0])
    for new_value in ([3.0, 0.0], [5.0, 4.0], [-1.0, 4.0]):
        variable.assign(new_value)
        decay = float(ema.apply(step=123))  # step ignored
        assert decay == 0.5
        expected = 0.5 * expected + 0.5 * np.array(new_value)
        np.testing.assert_allclose(shadow.numpy(), expected, rtol=1e-6)
    # Hand values: [2, -1] -> [3.5, 1.5] -> [1.25, 2.75].
    np.testing.assert_allclose(shadow.numpy(), [1.25, 2.75], rtol=1e-6)


def test_arithmetic_with_num_updates():
    variable = keras.Variable(0.0)
    ema = ExponentialMovingAverage([variable], decay=0.9999)
    shadow = ema.shadow_variables[0]
    expected = 0.0
    for step, value in enumerate([10.0, 20.0, 30.0]):
        variable.assign(value)
        ema.apply(step)
        decay = min(0.9999, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * value
        assert float(shadow.numpy()) == pytest.approx(expected, rel=1e-6)
    # 0.9*10 = 9; 9*2/11 + 20*9/11 = 18; 18*0.25 + 30*0.75 = 27.
    assert float(shadow.numpy()) == pytest.approx(27.0, rel=1e-6)


def test_matches_tf_train_exponential_moving_average():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(6, 3)).astype(np.float32)
    ours_variable = keras.Variable(values[0])
    ref_variable = tf.Variable(values[0])
    step = tf.Variable(0, dtype=tf.int64)
    ours = ExponentialMovingAverage([ours_variable], decay=0.99)
    reference = tf.train.ExponentialMovingAverage(0.99, num_updates=step)
    reference.apply([ref_variable])

    @tf.function
    def ours_step(value):
        ours_variable.assign(value)
        ours.apply(step)

    for value in values[1:]:
        ours_step(value)
        ref_variable.assign(value)
        reference.apply([ref_variable])
        step.assign_add(1)
    np.testing.assert_allclose(
        ours.shadow_variables[0].numpy(),
        reference.average(ref_variable).numpy(),
        rtol=1e-6,
        atol=1e-7,
    )


def test_ema_variables_include_bn_statistics(bn_model):
    names = [v.path for v in ema_variables(bn_model)]
    assert names == [
        'tiny/conv/kernel',
        'tiny/conv/bias',
        'tiny/bn/gamma',
        'tiny/bn/beta',
        'tiny/dense/kernel',
        'tiny/dense/bias',
        'tiny/bn/moving_mean',
        'tiny/bn/moving_variance',
    ]


def test_shadow_names_and_lookup(bn_model):
    variables = ema_variables(bn_model)
    ema = ExponentialMovingAverage(variables)
    assert ema.shadow_variables[0].name.startswith('tiny/conv/kernel/ExponentialMovingAverage')
    moving_mean = bn_model.get_layer('bn').moving_mean
    assert ema.shadow_for(moving_mean) is ema.shadow_variables[6]
    with pytest.raises(ValueError, match='`variable`'):
        ema.shadow_for(keras.Variable(1.0))


def test_swap_and_average_weights_restore_originals(bn_model):
    variables = ema_variables(bn_model)
    originals = [v.numpy().copy() for v in variables]
    ema = ExponentialMovingAverage(variables)
    for shadow in ema.shadow_variables:
        shadow.assign(shadow + 1.0)
    with ema.average_weights():
        for variable, original in zip(variables, originals):
            np.testing.assert_allclose(variable.numpy(), original + 1.0)
    for variable, original in zip(variables, originals):
        np.testing.assert_array_equal(variable.numpy(), original)

    with pytest.raises(RuntimeError), ema.average_weights():
        raise RuntimeError('evaluation failed')
    for variable, original in zip(variables, originals):
        np.testing.assert_array_equal(variable.numpy(), original)

    ema.swap()
    np.testing.assert_allclose(variables[0].numpy(), originals[0] + 1.0)
    np.testing.assert_array_equal(ema.shadow_variables[0].numpy(), originals[0])
    ema.swap()
    np.testing.assert_array_equal(variables[0].numpy(), originals[0])


def test_copy_to_model_and_reset_from_model():
    variable = keras.Variable([1.0, 2.0])
    ema = ExponentialMovingAverage([variable], decay=0.9)
    ema.shadow_variables[0].assign([5.0, 6.0])
    ema.copy_to_model()
    np.testing.assert_array_equal(variable.numpy(), [5.0, 6.0])
    variable.assign([7.0, 8.0])
    ema.reset_from_model()
    np.testing.assert_array_equal(ema.shadow_variables[0].numpy(), [7.0, 8.0])


def test_checkpoint_round_trip(tmp_path):
    variable = keras.Variable([1.0, 2.0])
    ema = ExponentialMovingAverage([variable], decay=0.5, use_num_updates=False)
    variable.assign([3.0, 4.0])
    ema.apply()
    checkpoint = tf.train.Checkpoint(weights=[variable], ema=ema)
    path = checkpoint.save(str(tmp_path / 'ckpt'))
    keys = [name for name, _ in tf.train.list_variables(path)]
    assert 'ema/shadow_variables/0/.ATTRIBUTES/VARIABLE_VALUE' in keys
    # The model variable is saved once, not again under `ema`.
    assert sorted(name for name in keys if name.endswith('VALUE')) == [
        'ema/shadow_variables/0/.ATTRIBUTES/VARIABLE_VALUE',
        'save_counter/.ATTRIBUTES/VARIABLE_VALUE',
        'weights/0/.ATTRIBUTES/VARIABLE_VALUE',
    ]

    ema.shadow_variables[0].assign([0.0, 0.0])
    checkpoint.restore(path).assert_consumed()
    np.testing.assert_allclose(ema.shadow_variables[0].numpy(), [2.0, 3.0])


def test_bad_arguments():
    with pytest.raises(ValueError, match='`decay`'):
        ExponentialMovingAverage([keras.Variable(1.0)], decay=1.0)
    with pytest.raises(ValueError, match='`variables`'):
        ExponentialMovingAverage([])


_MIRRORED_SCRIPT = textwrap.dedent("""
    import json
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from efficientnetv2.train.ema import ExponentialMovingAverage

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        weight = keras.Variable([1.0, 2.0])
        step = keras.Variable(0, dtype="int64")
        ema = ExponentialMovingAverage([weight], decay=0.9999)

    @tf.function
    def train_step():
        def replica_fn():
            ctx = tf.distribute.get_replica_context()
            # Same update on every replica, as after an all-reduced step.
            delta = ctx.all_reduce("sum", tf.constant([1.0, -1.0]))
            weight.assign_add(delta)
            ema.apply(step)
        strategy.run(replica_fn)
        step.assign_add(1)

    expected_shadow = np.array([1.0, 2.0])
    value = np.array([1.0, 2.0])
    for t in range(4):
        train_step()
        value = value + [2.0, -2.0]
        decay = min(0.9999, (1 + t) / (10 + t))
        expected_shadow = decay * expected_shadow + (1 - decay) * value

    shadow = ema.shadow_variables[0]
    copies = [np.asarray(c) for c in
              strategy.experimental_local_results(shadow)]
    with ema.average_weights():
        averaged = np.asarray(weight.numpy())
    print("RESULT" + json.dumps({
        "num_copies": len(copies),
        "shadow_diff": max(float(np.max(np.abs(c - expected_shadow)))
                           for c in copies),
        "averaged_diff": float(np.max(np.abs(averaged - expected_shadow))),
        "restored_diff": float(np.max(np.abs(weight.numpy() - value))),
    }))
""")


def test_mirrored_strategy_apply_in_replica_context():
    result = script_runner.run_script(_MIRRORED_SCRIPT)
    assert result['num_copies'] == 2
    assert result['shadow_diff'] <= 1e-6
    assert result['averaged_diff'] <= 1e-6
    assert result['restored_diff'] == 0.0
