"""Tests for efficientnetv2.train.optimizers."""

import textwrap

import keras
import numpy as np
import pytest
import script_runner
import tensorflow as tf

from efficientnetv2.train import optimizers
from efficientnetv2.train.optimizers import RMSPropTF1
from efficientnetv2.train.optimizers import build_optimizer

NUM_STEPS = 25


def _problem():
    """A small regression problem: tanh(x w + b) ~ y, two variables."""
    rng = np.random.default_rng(0)
    init = [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)]
    x = tf.constant(rng.normal(size=(8, 3)).astype(np.float32))
    y = tf.constant(rng.normal(size=(8, 4)).astype(np.float32))

    def loss_fn(w, b):
        return tf.reduce_mean(tf.square(tf.tanh(tf.matmul(x, w) + b) - y))

    return init, loss_fn


def _tf1_trajectory(learning_rates):
    """Parameter trajectory of tf.compat.v1.train.RMSPropOptimizer."""
    init, loss_fn = _problem()
    variables = [tf.Variable(value) for value in init]
    lr = tf.Variable(0.0)
    optimizer = tf.compat.v1.train.RMSPropOptimizer(
        lambda: lr, decay=0.9, momentum=0.9, epsilon=1e-3
    )
    trajectory = []
    for value in learning_rates:
        lr.assign(value)
        with tf.GradientTape() as tape:
            loss = loss_fn(*variables)
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))
        trajectory.append([v.numpy().copy() for v in variables])
    return trajectory


def _keras_trajectory(optimizer, use_tf_function=False):
    init, loss_fn = _problem()
    variables = [keras.Variable(value) for value in init]

    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(*variables)
        optimizer.apply(tape.gradient(loss, variables), variables)

    if use_tf_function:
        step = tf.function(step)
    trajectory = []
    for _ in range(NUM_STEPS):
        step()
        trajectory.append([np.asarray(v.numpy()).copy() for v in variables])
    return trajectory


def _max_difference(first, second):
    return max(
        float(np.max(np.abs(a - b)))
        for step_a, step_b in zip(first, second)
        for a, b in zip(step_a, step_b)
    )


def test_constant_lr_matches_tf1_rmsprop():
    reference = _tf1_trajectory([0.05] * NUM_STEPS)
    ours = _keras_trajectory(RMSPropTF1(learning_rate=0.05))
    assert _max_difference(reference, ours) <= 1e-6
    # The trajectory moves far more than the tolerance.
    assert _max_difference(reference[:1], reference[-1:]) > 1e-2


def test_changing_lr_in_tf_function_matches_tf1_rmsprop():
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        boundaries=[5, 12, 18], values=[0.01, 0.1, 0.03, 0.005]
    )
    learning_rates = [float(schedule(step)) for step in range(NUM_STEPS)]
    assert len(set(learning_rates)) == 4
    reference = _tf1_trajectory(learning_rates)
    ours = _keras_trajectory(RMSPropTF1(learning_rate=schedule), use_tf_function=True)
    assert _max_difference(reference, ours) <= 1e-6


def test_first_step_by_hand():
    variable = keras.Variable([1.0, -2.0])
    optimizer = RMSPropTF1(learning_rate=0.1)
    optimizer.apply([tf.constant([0.5, 0.0])], [variable])
    ms = 1.0 + (0.25 - 1.0) * 0.1  # accumulator starts at 1.0
    expected_step = 0.1 * 0.5 / np.sqrt(ms + 1e-3)
    np.testing.assert_allclose(variable.numpy(), [1.0 - expected_step, -2.0], rtol=1e-6)
    (ms_slot,) = [v for v in optimizer.variables if v.path.endswith('_ms')]
    (mom_slot,) = [v for v in optimizer.variables if v.path.endswith('_mom')]
    np.testing.assert_allclose(ms_slot.numpy(), [ms, 0.9], rtol=1e-6)
    np.testing.assert_allclose(mom_slot.numpy(), [expected_step, 0.0], rtol=1e-6)


def test_differs_from_zero_initialised_keras_rmsprop():
    ours = _keras_trajectory(RMSPropTF1(learning_rate=0.05))
    keras_native = _keras_trajectory(build_optimizer('rmsprop_keras', 0.05))
    assert _max_difference(ours[:1], keras_native[:1]) > 1e-2


def test_config_round_trip():
    optimizer = RMSPropTF1(learning_rate=0.2, rho=0.8, momentum=0.5, epsilon=1e-4)
    config = optimizer.get_config()
    assert (config['rho'], config['momentum'], config['epsilon']) == (0.8, 0.5, 1e-4)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, RMSPropTF1)
    assert restored.get_config() == config


def test_checkpoint_restores_slots(tmp_path):
    variable = keras.Variable([1.0, 2.0, 3.0])
    optimizer = RMSPropTF1(learning_rate=0.1)
    for _ in range(3):
        optimizer.apply([tf.constant([0.3, -0.2, 0.1])], [variable])
    path = tf.train.Checkpoint(optimizer=optimizer, w=variable).save(str(tmp_path / 'ckpt'))
    names = sorted(v.path for v in optimizer.variables)
    assert any(name.endswith('_ms') for name in names)
    assert any(name.endswith('_mom') for name in names)

    fresh_variable = keras.Variable([0.0, 0.0, 0.0])
    fresh = RMSPropTF1(learning_rate=0.1)
    fresh.build([fresh_variable])
    tf.train.Checkpoint(optimizer=fresh, w=fresh_variable).restore(path).assert_consumed()
    for saved, loaded in zip(optimizer.variables, fresh.variables):
        np.testing.assert_array_equal(saved.numpy(), loaded.numpy())
    # One more identical step on both keeps them identical.
    optimizer.apply([tf.constant([0.1, 0.1, 0.1])], [variable])
    fresh.apply([tf.constant([0.1, 0.1, 0.1])], [fresh_variable])
    np.testing.assert_array_equal(variable.numpy(), fresh_variable.numpy())


def test_loss_scale_optimizer_wrapping_matches_unwrapped():
    plain = _keras_trajectory(RMSPropTF1(learning_rate=0.05))

    init, loss_fn = _problem()
    variables = [keras.Variable(value) for value in init]
    wrapped = keras.optimizers.LossScaleOptimizer(RMSPropTF1(learning_rate=0.05))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            scaled = wrapped.scale_loss(loss_fn(*variables))
        wrapped.apply(tape.gradient(scaled, variables), variables)

    trajectory = []
    for _ in range(NUM_STEPS):
        step()
        trajectory.append([v.numpy().copy() for v in variables])
    assert float(wrapped.dynamic_scale) > 1.0
    assert _max_difference(plain, trajectory) <= 1e-6


def test_mixed_float16_layer_trains():
    layer = keras.layers.Dense(3, dtype='mixed_float16')
    x = tf.random.stateless_normal((16, 5), seed=(1, 2))
    y = tf.random.stateless_normal((16, 3), seed=(3, 4))
    layer.build((None, 5))
    optimizer = keras.optimizers.LossScaleOptimizer(RMSPropTF1(learning_rate=0.01))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            outputs = layer(x)
            loss = tf.reduce_mean(tf.square(tf.cast(outputs, tf.float32) - y))
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, layer.trainable_variables)
        optimizer.apply(grads, layer.trainable_variables)
        return loss

    losses = [float(step()) for _ in range(30)]
    assert layer.kernel.dtype == 'float32'
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    'name, expected_type',
    [
        ('rmsprop', RMSPropTF1),
        ('RMSProp', RMSPropTF1),
        ('rmsprop_keras', keras.optimizers.RMSprop),
        ('sgd', keras.optimizers.SGD),
        ('adam', keras.optimizers.Adam),
        ('adamw', keras.optimizers.AdamW),
    ],
)
def test_build_optimizer_types(name, expected_type):
    optimizer = build_optimizer(name, 0.01)
    assert type(optimizer) is expected_type


def test_build_optimizer_defaults_and_overrides():
    rmsprop = build_optimizer('rmsprop', 0.01)
    assert (rmsprop.rho, rmsprop.momentum, rmsprop.epsilon) == (0.9, 0.9, 1e-3)
    keras_rmsprop = build_optimizer('rmsprop_keras', 0.01)
    assert (keras_rmsprop.momentum, keras_rmsprop.epsilon) == (0.9, 1e-3)
    sgd = build_optimizer('sgd', 0.01, nesterov=True)
    assert sgd.momentum == 0.9 and sgd.nesterov
    adamw = build_optimizer('adamw', 0.01, weight_decay=0.05)
    assert adamw.weight_decay == 0.05


def test_build_optimizer_unknown_name_lists_choices():
    with pytest.raises(ValueError, match='rmsprop_keras.*adamw.*lamb'):
        build_optimizer('lamb', 0.1)
    assert set(optimizers.OPTIMIZER_NAMES) == {'rmsprop', 'rmsprop_keras', 'sgd', 'adam', 'adamw'}


@pytest.mark.parametrize(
    'kwargs, argument',
    [({'rho': 1.0}, 'rho'), ({'momentum': -0.1}, 'momentum'), ({'epsilon': 0.0}, 'epsilon')],
)
def test_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=f'`{argument}`'):
        RMSPropTF1(**kwargs)


_MIRRORED_SCRIPT = textwrap.dedent("""
    import json
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from efficientnetv2.train.optimizers import RMSPropTF1

    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(3, 2)).astype(np.float32)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    y = rng.normal(size=(8, 2)).astype(np.float32)
    steps, global_batch = 20, 8

    def per_example(w, xs, ys):
        return tf.reduce_sum(tf.square(tf.tanh(tf.matmul(xs, w)) - ys), -1)

    # Reference: TF1 optimizer, one device, mean over the global batch.
    ref = tf.Variable(w0)
    tf1 = tf.compat.v1.train.RMSPropOptimizer(0.05, 0.9, 0.9, 1e-3)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(per_example(ref, x, y))
        tf1.apply_gradients([(tape.gradient(loss, ref), ref)])

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        w = keras.Variable(w0)
        opt = RMSPropTF1(learning_rate=0.05)
        # Keras 3 cannot create optimizer variables inside strategy.run.
        opt.build([w])
    shards = strategy.experimental_distribute_values_from_function(
        lambda ctx: (x[4 * ctx.replica_id_in_sync_group:][:4],
                     y[4 * ctx.replica_id_in_sync_group:][:4]))

    @tf.function
    def train_step(batch):
        def replica_fn(xs, ys):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(per_example(w, xs, ys)) / global_batch
            opt.apply([tape.gradient(loss, w)], [w])
        strategy.run(replica_fn, args=batch)

    for _ in range(steps):
        train_step(shards)
    copies = [np.asarray(c) for c in strategy.experimental_local_results(
        w.value)]
    print("RESULT" + json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "iterations": int(opt.iterations.numpy()),
        "max_diff": float(np.max(np.abs(copies[0] - ref.numpy()))),
        "copy_diff": float(np.max(np.abs(copies[0] - copies[1]))),
        "moved": float(np.max(np.abs(copies[0] - w0))),
    }))
""")


def test_mirrored_strategy_two_cpus_matches_tf1():
    result = script_runner.run_script(_MIRRORED_SCRIPT)
    assert result['replicas'] == 2
    assert result['iterations'] == 20
    assert result['moved'] > 1e-2
    assert result['copy_diff'] == 0.0
    assert result['max_diff'] <= 1e-6
