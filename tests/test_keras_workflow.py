"""fit_progressive: per-stage size, dropout and augmentation, resuming, callbacks, BN-aware EMA.

Tiny models (3 blocks, 12-24 px, 2 steps per epoch) on the digits set.
"""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import efficientnetv2
from efficientnetv2 import data
from efficientnetv2 import keras_workflow as kw
from efficientnetv2 import model as model_lib
from efficientnetv2.train import progressive

TINY_BLOCKS = ['r1_k3_s1_e1_i16_o8_c1', 'r1_k3_s2_e4_i8_o16_c1', 'r1_k3_s2_e4_i16_o24_se0.25']
STEPS = 2


def tiny_model(num_classes=10, dropout_rate=0.2):
    model = model_lib.EfficientNet(
        TINY_BLOCKS, feature_size=32, num_classes=num_classes, dropout_rate=dropout_rate
    )
    model.compile(
        keras.optimizers.Adam(1e-3), keras.losses.CategoricalCrossentropy(from_logits=True)
    )
    return model


def probe_train_step(model):
    """Adds the batch's image size and the in-graph dropout rate to the train logs."""
    original = model.train_step
    rate = model.get_layer('top_dropout')._rate_variable

    def train_step(batch):
        logs = dict(original(batch))
        logs['image_size'] = tf.cast(tf.shape(batch[0])[1], tf.float32)
        logs['dropout'] = tf.convert_to_tensor(rate)
        return logs

    model.train_step = train_step


def digits_fn(calls):
    def dataset_fn(stage):
        calls.append(stage)
        return data.build_dataset(
            'digits',
            'train',
            image_size=stage.image_size,
            batch_size=16,
            ram=stage.ram,
            mixup_alpha=stage.mixup_alpha,
            cutmix_alpha=stage.cutmix_alpha,
            augname='randaug',
            seed=1,
        )

    return dataset_fn


def test_stages_change_size_dropout_and_augmentation(monkeypatch):
    model = tiny_model()
    probe_train_step(model)
    plan = efficientnetv2.progressive_plan(
        epochs=3,
        image_size=24,
        num_stages=3,
        min_image_size=12,
        ram=(2, 10),
        mixup=(0, 0.4),
        cutmix=(0.1, 0.3),
        dropout=(0.1, 0.3),
    )
    built = []
    build = data.build_dataset

    def spy(*args, **kwargs):
        built.append(kwargs)
        return build(*args, **kwargs)

    monkeypatch.setattr(data, 'build_dataset', spy)
    calls = []
    result = efficientnetv2.fit_progressive(
        model, digits_fn(calls), plan, steps_per_epoch=STEPS, verbose=0
    )
    assert [s.index for s in calls] == [0, 1, 2]
    assert [c['image_size'] for c in built] == [12, 18, 24]
    np.testing.assert_allclose([c['ram'] for c in built], [2.0, 6.0, 10.0])
    np.testing.assert_allclose([c['mixup_alpha'] for c in built], [0.0, 0.2, 0.4])
    np.testing.assert_allclose([c['cutmix_alpha'] for c in built], [0.1, 0.2, 0.3])
    # Seen inside the traced step: the images' size and the dropout variable.
    assert result.history['image_size'] == [12.0, 18.0, 24.0]
    np.testing.assert_allclose(result.history['dropout'], [0.1, 0.2, 0.3], rtol=1e-6)
    assert result.epoch == [0, 1, 2]
    assert [len(h.epoch) for _, h in result.stages] == [1, 1, 1]
    # One compiled model, one optimizer: its step counter ran through all stages.
    assert int(model.optimizer.iterations) == 3 * STEPS
    assert model.dropout_rate == pytest.approx(0.3)


def test_keras_dropout_layers_of_any_model_follow_the_plan():
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, strides=2)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.5, name='drop')(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    model.compile('sgd', keras.losses.CategoricalCrossentropy(from_logits=True))
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append((self.model.get_layer('drop').rate, self.model.train_function))

    def dataset_fn(stage):
        images = np.random.RandomState(0).rand(8, stage.image_size, stage.image_size, 3)
        labels = np.eye(3)[np.arange(8) % 3]
        return tf.data.Dataset.from_tensor_slices(
            (images.astype('float32'), labels.astype('float32'))
        ).batch(4)

    plan = efficientnetv2.progressive_plan(
        epochs=2, image_size=16, num_stages=2, dropout=(0.1, 0.4)
    )
    result = efficientnetv2.fit_progressive(
        model, dataset_fn, plan, callbacks=[Record()], verbose=0
    )
    assert [rate for rate, _ in seen] == pytest.approx([0.1, 0.4])
    assert seen[0][1] is not seen[1][1]  # The baked-in rate needs a new train function.
    assert len(result.history['loss']) == 2


def test_fixed_size_model_is_refused():
    model = keras.Sequential(
        [keras.Input((16, 16, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)]
    )
    model.compile('sgd', 'mse')
    plan = efficientnetv2.progressive_plan(epochs=2, image_size=16, num_stages=2)
    with pytest.raises(ValueError, match='fixed size'):
        efficientnetv2.fit_progressive(model, lambda stage: None, plan, verbose=0)


def test_step_plan_is_scaled_to_epochs():
    plan = progressive.build_stage_plan(
        num_stages=4,
        total_steps=1000,
        final_image_size=64,
        final_ram=10,
        final_mixup=0,
        final_cutmix=0,
        final_dropout=0.2,
    )
    assert [(f, e) for _, f, e in kw.stage_epochs(plan, 10)] == [(0, 2), (2, 5), (5, 7), (7, 10)]
    with pytest.raises(ValueError, match='no epoch'):
        kw.stage_epochs(plan, 3)


def _fit(model, plan, calls, **kwargs):
    return efficientnetv2.fit_progressive(
        model, digits_fn(calls), plan, steps_per_epoch=STEPS, verbose=0, **kwargs
    )


def test_resume_from_keras_checkpoint_continues_in_the_right_stage(tmp_path):
    plan = efficientnetv2.progressive_plan(epochs=4, image_size=24, num_stages=2, min_image_size=12)
    pattern = str(tmp_path / 'ckpt-{epoch}.keras')
    calls = []
    first = _fit(tiny_model(), plan, calls, callbacks=[keras.callbacks.ModelCheckpoint(pattern)])
    assert [s.image_size for s in calls] == [12, 24]
    assert first.epoch == [0, 1, 2, 3]

    # Epoch 3 done (ckpt-3): the last epoch is in stage 1 (epochs 2-3); optimizer restored.
    model = tiny_model()
    calls = []
    resumed = _fit(model, plan, calls, initial_epoch=3, resume_from=str(tmp_path / 'ckpt-3.keras'))
    assert [s.index for s in calls] == [1]
    assert resumed.epoch == [3]
    assert int(model.optimizer.iterations) == 4 * STEPS
    assert model.dropout_rate == pytest.approx(plan[1].dropout_rate)

    # Epoch 1 done, weights only: the rest of stage 0, then stage 1; the step counter is set
    # from the epochs done (no optimizer state in the file).
    saved = keras.models.load_model(str(tmp_path / 'ckpt-1.keras'))
    saved.save_weights(str(tmp_path / 'one.weights.h5'))
    model = tiny_model()
    calls = []
    resumed = _fit(
        model, plan, calls, initial_epoch=1, resume_from=str(tmp_path / 'one.weights.h5')
    )
    assert [s.index for s in calls] == [0, 1]
    assert resumed.epoch == [1, 2, 3]
    assert int(model.optimizer.iterations) == 4 * STEPS


def test_early_stopping_patience_spans_stages():
    plan = efficientnetv2.progressive_plan(epochs=4, image_size=24, num_stages=2, min_image_size=12)
    # Never improves: stops once patience=2 epochs passed since the first, i.e. after epoch 2.
    # Were its state reset at the stage change (epoch 2), it would run to the end.
    stop = keras.callbacks.EarlyStopping(monitor='loss', patience=2, min_delta=1e9)
    calls = []
    result = _fit(tiny_model(), plan, calls, callbacks=[stop])
    assert result.epoch == [0, 1, 2]
    assert result.stopped_early
    assert [s.index for s in calls] == [0, 1]


def test_ema_callback_averages_batch_norm_statistics():
    # One BN layer, learning rate 0: only the moving statistics change, by hand-checkable steps.
    inputs = keras.Input((2,))
    norm = keras.layers.BatchNormalization(momentum=0.5, name='bn')
    model = keras.Model(inputs, keras.layers.Dense(1, name='out')(norm(inputs)))
    model.compile(keras.optimizers.SGD(0.0), 'mse')
    rng = np.random.RandomState(3)
    batches = [rng.randn(4, 2).astype('float32') * (i + 1) + i for i in range(3)]
    images = np.concatenate(batches)
    targets = np.zeros((12, 1), 'float32')

    def dataset_fn(stage):
        return tf.data.Dataset.from_tensor_slices((images, targets)).batch(4)

    decay = 0.5
    ema = efficientnetv2.ModelEMA(decay=decay, use_num_updates=False)
    plan = efficientnetv2.progressive_plan(epochs=1, image_size=8, num_stages=1)
    efficientnetv2.fit_progressive(
        model, dataset_fn, plan, ema=ema, verbose=0, validation_data=dataset_fn(None)
    )

    mean, var = np.zeros(2), np.ones(2)
    shadow_mean, shadow_var = mean.copy(), var.copy()
    for batch in batches:
        mean = 0.5 * mean + 0.5 * batch.mean(0)
        var = 0.5 * var + 0.5 * batch.var(0)
        shadow_mean = decay * shadow_mean + (1 - decay) * mean
        shadow_var = decay * shadow_var + (1 - decay) * var
    # Raw model (validation swapped the averages in and out again).
    np.testing.assert_allclose(norm.moving_mean.numpy(), mean, rtol=1e-5)
    np.testing.assert_allclose(norm.moving_variance.numpy(), var, rtol=1e-5)
    with ema.average_weights():
        averaged = norm.moving_mean.numpy(), norm.moving_variance.numpy()
    np.testing.assert_allclose(averaged[0], shadow_mean, rtol=1e-5)
    np.testing.assert_allclose(averaged[1], shadow_var, rtol=1e-5)
    assert np.abs(averaged[0] - mean).min() > 0.01  # The averages are not the raw values.
    assert np.abs(averaged[1] - var).min() > 0.01
    names = [v.path for v in ema.variables]
    assert 'bn/moving_mean' in names and 'bn/moving_variance' in names
    ema.copy_to_model()
    np.testing.assert_allclose(norm.moving_mean.numpy(), shadow_mean, rtol=1e-5)


def test_ema_file_is_saved_and_read_back_on_resume(tmp_path):
    plan = efficientnetv2.progressive_plan(epochs=2, image_size=16, num_stages=2, min_image_size=12)
    path = str(tmp_path / 'ema.weights.h5')
    model = tiny_model()
    ema = efficientnetv2.ModelEMA(decay=0.9, filepath=path)
    _fit(
        model,
        plan,
        [],
        ema=ema,
        callbacks=[keras.callbacks.ModelCheckpoint(str(tmp_path / 'last.keras'))],
    )
    with ema.average_weights():
        expected = [v.numpy() for v in ema.variables]
    fresh = tiny_model()
    ema2 = efficientnetv2.ModelEMA(decay=0.9, filepath=path).build(fresh)
    ema2.set_model(fresh)
    kw._restore(fresh, str(tmp_path / 'last.keras'))
    ema2.restore()
    with ema2.average_weights():
        for want, variable in zip(expected, ema2.variables):
            np.testing.assert_allclose(variable.numpy(), want, rtol=1e-6)
    bn_means = [v for v in ema2.variables if v.path.endswith('moving_mean')]
    assert bn_means


class _Kill(keras.callbacks.Callback):
    """Raises at the end of epoch `epoch` (0-based): after the EMA file, before the checkpoint.

    Put before the ModelCheckpoint: fit_progressive runs the EMA callback before the user's
    callbacks, so this is a kill between the two writes of that epoch.
    """

    def __init__(self, epoch, ema):
        super().__init__()
        self.epoch, self.ema, self.averages = epoch, ema, {}

    def on_epoch_end(self, epoch, logs=None):
        with self.ema.average_weights():
            self.averages[epoch + 1] = [v.numpy() for v in self.ema.variables]
        if epoch == self.epoch:
            raise KeyboardInterrupt('killed between the EMA write and the checkpoint write')


class _AtStart(keras.callbacks.Callback):
    """Records the state fit_progressive resumed with (optimizer step and slots, averages)."""

    def __init__(self, ema):
        super().__init__()
        self.ema, self.state = ema, None

    def on_train_begin(self, logs=None):
        optimizer = self.model.optimizer
        with self.ema.average_weights():
            averages = [v.numpy() for v in self.ema.variables]
        self.state = dict(
            step=int(optimizer.iterations),
            slots=[v.numpy() for v in optimizer.variables],
            averages=averages,
            weights=[v.numpy() for v in self.ema.variables],
        )


def _optimizer_state(path):
    optimizer = keras.models.load_model(path).optimizer
    return int(optimizer.iterations), [v.numpy() for v in optimizer.variables]


def test_resume_takes_the_optimizer_from_the_checkpoint_after_a_kill_between_the_writes(
    tmp_path,
):
    plan = efficientnetv2.progressive_plan(epochs=3, image_size=16, num_stages=1)
    path = str(tmp_path / 'ema.weights.h5')
    ema = efficientnetv2.ModelEMA(decay=0.9, filepath=path)
    kill = _Kill(1, ema)  # Epoch 2's EMA file is written, ckpt-2 is not.
    checkpoint = keras.callbacks.ModelCheckpoint(str(tmp_path / 'ckpt-{epoch}.keras'))
    with pytest.raises(KeyboardInterrupt):
        _fit(tiny_model(), plan, [], ema=ema, callbacks=[kill, checkpoint])
    assert (tmp_path / 'ckpt-1.keras').exists() and not (tmp_path / 'ckpt-2.keras').exists()

    # The user resumes from the newest checkpoint, ckpt-1.
    model = tiny_model()
    ema = efficientnetv2.ModelEMA(decay=0.9, filepath=path)
    start = _AtStart(ema)
    _fit(
        model,
        plan,
        [],
        ema=ema,
        initial_epoch=1,
        resume_from=str(tmp_path / 'ckpt-1.keras'),
        callbacks=[start],
    )
    step, slots = _optimizer_state(str(tmp_path / 'ckpt-1.keras'))
    assert step == STEPS
    # Step counter and moments from the checkpoint alone (the EMA file of epoch 2 is newer).
    assert start.state['step'] == step
    assert len(start.state['slots']) == len(slots) > 2
    for got, want in zip(start.state['slots'], slots):
        np.testing.assert_array_equal(got, want)
    # The averages of epoch 1 (the file the epoch-2 one replaced), not those of epoch 2.
    for got, want in zip(start.state['averages'], kill.averages[1]):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert int(model.optimizer.iterations) == 3 * STEPS


def test_resume_at_an_earlier_epoch_ignores_later_averages(tmp_path):
    # The run: finish 2 epochs, then rerun with --resume_epoch=1.
    plan = efficientnetv2.progressive_plan(epochs=3, image_size=16, num_stages=1)
    path = str(tmp_path / 'ema.weights.h5')
    checkpoint = keras.callbacks.ModelCheckpoint(str(tmp_path / 'ckpt-{epoch}.keras'))
    ema = efficientnetv2.ModelEMA(decay=0.9, filepath=path)
    _fit(tiny_model(), plan, [], ema=ema, callbacks=[checkpoint])  # EMA files: epochs 3 and 2.

    model = tiny_model()
    ema = efficientnetv2.ModelEMA(decay=0.9, filepath=path)
    start = _AtStart(ema)
    _fit(
        model,
        plan,
        [],
        ema=ema,
        initial_epoch=1,
        resume_from=str(tmp_path / 'ckpt-1.keras'),
        callbacks=[start],
    )
    assert start.state['step'] == STEPS
    # No averages of epoch 1 on disk: they restart from the checkpoint's weights.
    for got, want in zip(start.state['averages'], start.state['weights']):
        np.testing.assert_array_equal(got, want)
    assert int(model.optimizer.iterations) == 3 * STEPS


def _photo_folder(root, num_classes=2, per_class=6, size=20):
    rng = np.random.RandomState(0)
    for label in range(num_classes):
        for split, count in (('train', per_class), ('val', 3)):
            directory = root / split / f'c{label}'
            directory.mkdir(parents=True)
            for index in range(count):
                image = rng.randint(0, 256, (size, size, 3)).astype(np.uint8)
                (directory / f'{index}.png').write_bytes(tf.io.encode_png(image).numpy())
    return data.folder_dataset_info(str(root))


class _Hung(keras.callbacks.Callback):
    """Stands in for a watchdog: an epoch past 50 batches of a 12-image folder never ends."""

    def on_train_batch_end(self, batch, logs=None):
        if batch >= 50:
            raise RuntimeError('the first epoch does not end')


def test_folder_dataset_without_steps_per_epoch_fails_at_once_and_finite_ones_run(tmp_path):
    info = _photo_folder(tmp_path)
    plan = efficientnetv2.progressive_plan(epochs=1, image_size=16, num_stages=1)

    def dataset_fn(stage, **kwargs):
        return data.build_dataset(
            info, 'train', image_size=stage.image_size, batch_size=4, **kwargs
        )

    # The training pipeline repeats: its length is known to be infinite.
    with pytest.raises(ValueError, match='steps_per_epoch'):
        efficientnetv2.fit_progressive(
            tiny_model(2), dataset_fn, plan, callbacks=[_Hung()], verbose=0
        )
    # A finite folder pipeline has the length of its listing: no "ran out of data" warnings.
    validation = data.build_dataset(info, 'eval', image_size=16, batch_size=4)
    assert int(validation.cardinality()) == 2  # 6 images.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        result = efficientnetv2.fit_progressive(
            tiny_model(2),
            lambda stage: dataset_fn(stage, repeat=False),
            plan,
            validation_data=validation,
            verbose=0,
        )
    assert not [w for w in caught if 'ran out of data' in str(w.message)]
    assert len(result.history['val_loss']) == 1


def _bad_fn(kind):
    def dataset_fn(stage):
        size = stage.image_size
        images = np.zeros((4, size, size, 3), 'float32')
        labels = np.eye(10, dtype='float32')[np.arange(4)]
        if kind == 'none':
            return None
        if kind == 'fixed size':
            images = np.zeros((4, 24, 24, 3), 'float32')
        if kind == 'no labels':
            return tf.data.Dataset.from_tensor_slices(images).batch(4)
        if kind == 'one channel':
            images = images[..., :1]
        if kind == 'indices':
            labels = np.arange(4)
        if kind == 'label rank':
            labels = np.zeros((4, 1, 10), 'float32')
        if kind == '20 classes':
            labels = np.eye(20, dtype='float32')[np.arange(4)]
        if kind == 'list':  # (x, y) arrays are fit's own input; a list is not.
            return [images, labels]
        return tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)

    return dataset_fn


@pytest.mark.parametrize(
    'kind, message',
    [
        ('none', 'returned None'),
        ('fixed size', r'yields images of 24x24 px; this stage trains at 16x16'),
        ('no labels', 'images alone'),
        ('one channel', r'images of shape \(\w+, 16, 16, 1\); expected \[batch, 16, 16, 3\]'),
        ('indices', 'class indices .* CategoricalCrossentropy takes one-hot'),
        ('label rank', r'labels of shape \(\w+, 1, 10\)'),
        ('20 classes', 'labels for 20 classes .* head has 10 classes'),
        ('list', 'returned a list'),
    ],
)
def test_bad_dataset_fn_results_name_dataset_fn_and_the_stage(kind, message):
    plan = efficientnetv2.progressive_plan(epochs=2, image_size=24, num_stages=2, min_image_size=16)
    with pytest.raises(ValueError, match=message) as raised:
        efficientnetv2.fit_progressive(tiny_model(), _bad_fn(kind), plan, verbose=0)
    assert r'dataset_fn(stage) for stage 0 (image size 16)' in str(raised.value)


def test_dataset_fn_is_checked_at_every_stage():
    # Right at 16 px (stage 0), then the same 16 px again: stage 1 asked for 24.
    plan = efficientnetv2.progressive_plan(epochs=2, image_size=24, num_stages=2, min_image_size=16)

    def dataset_fn(stage):
        return data.build_dataset('digits', 'train', image_size=16, batch_size=16, seed=1)

    with pytest.raises(ValueError, match=r'stage 1 \(image size 24\) yields images of 16x16'):
        efficientnetv2.fit_progressive(
            tiny_model(), dataset_fn, plan, steps_per_epoch=STEPS, verbose=0
        )


def test_class_indices_are_checked_against_a_sparse_loss_and_the_head():
    model = tiny_model()
    model.compile('adam', keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    plan = efficientnetv2.progressive_plan(epochs=1, image_size=16, num_stages=1)

    def dataset_fn(labels):
        images = np.zeros((4, 16, 16, 3), 'float32')
        return lambda stage: tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)

    with pytest.raises(ValueError, match='class indices from 8 to 11; .* 10 classes'):
        efficientnetv2.fit_progressive(model, dataset_fn(np.arange(8, 12)), plan, verbose=0)
    one_hot = np.eye(10, dtype='float32')[np.arange(4)]
    with pytest.raises(ValueError, match='one-hot labels .* SparseCategoricalCrossentropy'):
        efficientnetv2.fit_progressive(model, dataset_fn(one_hot), plan, verbose=0)
