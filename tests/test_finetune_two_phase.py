"""finetune.fit_two_phase: phase 1 trains the head only, phase 2 the network, each its own LR."""

import keras
import numpy as np
import pytest

from efficientnetv2 import finetune
from efficientnetv2 import model as model_lib

TINY_BLOCKS = ['r1_k3_s1_e1_i16_o8_c1', 'r1_k3_s2_e4_i8_o16_c1']


def tiny_model(num_classes=3):
    return model_lib.EfficientNet(TINY_BLOCKS, feature_size=16, num_classes=num_classes)


def data(n=8, size=16, num_classes=3, seed=0):
    rng = np.random.RandomState(seed)
    images = rng.rand(n, size, size, 3).astype('float32')
    labels = np.eye(num_classes)[np.arange(n) % num_classes].astype('float32')
    return images, labels


def snapshot(model):
    return {v.path: v.numpy().copy() for v in model.weights}


def changed(before, after):
    return {path for path in before if not np.array_equal(before[path], after[path])}


LOSS = keras.losses.CategoricalCrossentropy(from_logits=True)


def test_head_phase_moves_only_the_classifier():
    model = finetune.replace_head(tiny_model(5), 3)
    images, labels = data()
    before = snapshot(model)
    history = finetune.fit_two_phase(
        model,
        images,
        y=labels,
        batch_size=4,
        epochs=2,
        head_epochs=2,
        loss=LOSS,
        learning_rate=1e-3,
        head_learning_rate=0.1,
        verbose=0,
    )
    moved = changed(before, snapshot(model))
    # Only the new classifier moved: no backbone weight, no batch-norm moving statistic.
    assert moved == {'predictions/kernel', 'predictions/bias'}
    assert history.epoch == [0, 1] and len(history.history['loss']) == 2
    assert history.phases == [(0, 2, 0.1, 2)]
    # The phase-1 optimizer: Adam, cosine from head_learning_rate over 2 epochs x 2 steps.
    schedule = model.optimizer._learning_rate
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
    assert schedule.initial_learning_rate == pytest.approx(0.1) and schedule.decay_steps == 4


def test_network_phase_trains_everything_at_its_own_rate():
    model = finetune.replace_head(tiny_model(5), 3)
    images, labels = data()
    seen = {}

    class AtPhaseTwo(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                seen['weights'] = snapshot(self.model)
                seen['trainable'] = len(self.model.trainable_variables)

    history = finetune.fit_two_phase(
        model,
        images,
        y=labels,
        batch_size=4,
        epochs=3,
        head_epochs=1,
        loss=LOSS,
        learning_rate=1e-2,
        head_learning_rate=0.1,
        optimizer=keras.optimizers.SGD,
        schedule='constant',
        callbacks=[AtPhaseTwo()],
        verbose=0,
    )
    moved = changed(seen['weights'], snapshot(model))
    for prefix in ('stem/', 'block1a/', 'block2a/', 'top/', 'predictions/'):
        assert any(path.startswith(prefix) for path in moved), prefix
    assert any('moving_mean' in path for path in moved)  # BN in training mode.
    every = [v for v in model.weights if 'moving_' not in v.path]
    assert seen['trainable'] == len(model.trainable_variables) == len(every)
    assert history.epoch == [0, 1, 2]
    assert [p[:3] for p in history.phases] == [(0, 1, 0.1), (1, 3, 1e-2)]
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-2)


def test_network_phase_can_keep_stages_and_batch_norm_frozen():
    model = finetune.replace_head(tiny_model(5), 3)
    images, labels = data()
    before = snapshot(model)
    history = finetune.fit_two_phase(
        model,
        images,
        y=labels,
        batch_size=4,
        epochs=2,
        head_epochs=0,
        loss=LOSS,
        learning_rate=1e-2,
        head_learning_rate=0.1,
        num_stages=1,
        freeze_bn=True,
        verbose=0,
    )
    moved = changed(before, snapshot(model))
    assert not any(path.startswith(('stem/', 'block1a/')) for path in moved)
    assert not any('moving_' in path for path in moved)
    assert any(path.startswith('block2a/') for path in moved)
    assert len(history.phases) == 1 and history.phases[0][:3] == (0, 2, 1e-2)


def test_keras_applications_model():
    base = keras.applications.EfficientNetV2B0(
        weights=None, input_shape=(32, 32, 3), classes=4, include_preprocessing=False
    )
    model = finetune.replace_head(base, 3)
    images, labels = data(n=4, size=32)
    before = snapshot(model)
    finetune.fit_two_phase(
        model,
        images,
        y=labels,
        batch_size=4,
        epochs=1,
        head_epochs=1,
        loss=keras.losses.CategoricalCrossentropy(),  # Softmax head.
        learning_rate=1e-3,
        head_learning_rate=0.1,
        verbose=0,
    )
    moved = changed(before, snapshot(model))
    assert moved and all(path.startswith('predictions/') for path in moved)


def test_bad_arguments_are_refused():
    model = finetune.replace_head(tiny_model(5), 3)
    images, labels = data()
    common = dict(y=labels, loss=LOSS, learning_rate=1e-3, head_learning_rate=0.1, verbose=0)
    with pytest.raises(ValueError, match='must not exceed'):
        finetune.fit_two_phase(model, images, epochs=1, head_epochs=2, **common)
    with pytest.raises(ValueError, match='fresh optimizer'):
        finetune.fit_two_phase(
            model, images, epochs=1, head_epochs=1, optimizer=keras.optimizers.Adam(), **common
        )
    with pytest.raises(ValueError, match='head_learning_rate'):
        finetune.fit_two_phase(
            model, images, epochs=2, head_epochs=1, **dict(common, head_learning_rate=None)
        )
    with pytest.raises(ValueError, match="'cosine' or 'constant'"):
        finetune.fit_two_phase(model, images, epochs=1, head_epochs=1, schedule='step', **common)

    def batches():
        while True:
            yield images[:4], labels[:4]

    unknown = dict(common, y=None)
    with pytest.raises(ValueError, match='steps_per_epoch'):
        finetune.fit_two_phase(model, batches(), epochs=1, head_epochs=1, **unknown)
    headless = model_lib.EfficientNet(TINY_BLOCKS, feature_size=16, include_top=False)
    with pytest.raises(ValueError, match='replace_head'):
        finetune.fit_two_phase(
            headless, images, epochs=1, head_epochs=1, steps_per_epoch=1, **common
        )


def test_prepare_defaults_to_the_measured_recipe():
    model = finetune.prepare(tiny_model(5), 3)
    counts = finetune.trainable_counts(model)
    assert counts['stem'] == 0 and all(counts[name] > 0 for name in counts if name != 'stem')
    norms = [
        sub for sub in model._flatten_layers() if isinstance(sub, keras.layers.BatchNormalization)
    ]
    assert all(norm.trainable for norm in norms)  # Training mode everywhere.


def test_head_phase_reads_head_x():
    images, labels = data()
    head_images, head_labels = data(n=12, seed=1)

    def head_after(**kwargs):
        keras.utils.set_random_seed(0)
        model = finetune.replace_head(tiny_model(5), 3)
        finetune.fit_two_phase(
            model,
            images,
            y=labels,
            batch_size=4,
            epochs=3,
            head_epochs=2,
            loss=LOSS,
            learning_rate=0.0,  # Phase 2 moves nothing: the head is phase 1's.
            head_learning_rate=0.1,
            schedule='constant',
            verbose=0,
            **kwargs,
        )
        return model.get_layer('predictions').kernel.numpy()

    plain = head_after()
    assert np.array_equal(plain, head_after())  # Deterministic: differences come from head_x.
    assert np.array_equal(plain, head_after(head_x=(images, labels)))
    assert not np.allclose(plain, head_after(head_x=(images, labels[:, ::-1])))

    # Phase 1 runs one pass over head_x per epoch (12 images / 4 = 3 steps), phase 2 over x.
    model = finetune.replace_head(tiny_model(5), 3)
    history = finetune.fit_two_phase(
        model,
        images,
        y=labels,
        batch_size=4,
        epochs=3,
        head_epochs=2,
        loss=LOSS,
        learning_rate=1e-3,
        head_learning_rate=0.1,
        head_x=(head_images, head_labels),
        verbose=0,
    )
    assert history.epoch == [0, 1, 2]
    assert model.optimizer._learning_rate.decay_steps == 2  # Phase 2: 1 epoch x 2 steps.
    steps = []

    class CountSteps(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            steps.append(batch)

    model = finetune.replace_head(tiny_model(5), 3)
    finetune.fit_two_phase(
        model,
        images,
        y=labels,
        batch_size=4,
        epochs=2,
        head_epochs=2,
        loss=LOSS,
        learning_rate=1e-3,
        head_learning_rate=0.1,
        head_x=(head_images, head_labels),
        callbacks=[CountSteps()],
        verbose=0,
    )
    assert steps == [0, 1, 2, 0, 1, 2]
    assert model.optimizer._learning_rate.decay_steps == 6  # Cosine over 2 epochs x 3 steps.
    with pytest.raises(ValueError, match='tuple'):
        finetune.fit_two_phase(
            model,
            images,
            y=labels,
            epochs=1,
            head_epochs=1,
            loss=LOSS,
            learning_rate=1e-3,
            head_learning_rate=0.1,
            head_x=head_images,
        )


def test_head_x_from_a_finite_image_folder(tmp_path):
    import tensorflow as tf

    from efficientnetv2 import data as data_lib

    rng = np.random.RandomState(0)
    for label in range(3):
        directory = tmp_path / f'c{label}'
        directory.mkdir()
        for index in range(4):
            image = rng.randint(0, 256, (20, 20, 3)).astype(np.uint8)
            (directory / f'{index}.png').write_bytes(tf.io.encode_png(image).numpy())
    info = data_lib.folder_dataset_info(str(tmp_path))  # 12 images: 9 train, 3 eval.
    train = data_lib.build_dataset(info, 'train', image_size=16, batch_size=4, seed=0)
    plain = data_lib.build_dataset(info, 'train', image_size=16, batch_size=4, is_training=False)
    common = dict(
        epochs=2,
        head_epochs=1,
        loss=LOSS,
        learning_rate=1e-3,
        head_learning_rate=0.1,
        steps_per_epoch=2,
        verbose=0,
    )
    seen = {}

    class AtPhaseTwo(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen[epoch] = self.model.optimizer._learning_rate.decay_steps

    # The un-augmented folder pipeline has the length of its listing (3 batches of 9 images).
    model = finetune.replace_head(tiny_model(5), 3)
    finetune.fit_two_phase(model, train, head_x=plain, callbacks=[AtPhaseTwo()], **common)
    assert seen == {0: 3, 1: 2}
    # Lengths tf.data cannot count, or endless data, get advice that fits them.
    hidden = plain.filter(lambda images, labels: True)
    with pytest.raises(ValueError, match='assert_cardinality'):
        finetune.fit_two_phase(model, train, head_x=hidden, **common)
    with pytest.raises(ValueError, match='repeats forever'):
        finetune.fit_two_phase(model, train, head_x=plain.repeat(), **common)
