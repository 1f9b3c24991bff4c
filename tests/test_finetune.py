"""Fine-tuning helpers: stage names, freezing exactly the named stages, BN mode, new head."""

import keras
import numpy as np
import pytest

from efficientnetv2 import finetune
from efficientnetv2 import model as model_lib

TINY_BLOCKS = ['r1_k3_s1_e1_i16_o8_c1', 'r2_k3_s2_e4_i8_o16_c1', 'r1_k3_s2_e4_i16_o24_se0.25']


def tiny_model(num_classes=10):
    return model_lib.EfficientNet(TINY_BLOCKS, feature_size=32, num_classes=num_classes)


def _bn_count(layers):
    return sum(
        1
        for layer in layers
        for sub in layer._flatten_layers()
        if isinstance(sub, keras.layers.BatchNormalization)
    )


def test_stage_names_follow_the_blocks():
    model = tiny_model()
    assert finetune.stage_names(model) == ['stem', 'stage1', 'stage2', 'stage3', 'top', 'head']
    groups = finetune.stage_layers(model)
    assert [layer.name for layer in groups['stage2']] == ['block2a', 'block2b']
    assert [layer.name for layer in groups['head']] == ['avg_pool', 'top_dropout', 'predictions']


def test_keras_applications_model_has_the_same_stage_names():
    model = keras.applications.EfficientNetV2B0(weights=None, classes=7)
    names = finetune.stage_names(model)
    assert names == ['stem'] + [f'stage{k}' for k in range(1, 7)] + ['top', 'head']
    finetune.freeze(model, num_stages=3)
    counts = finetune.trainable_counts(model)
    assert counts['stem'] == counts['stage1'] == counts['stage3'] == 0
    assert counts['stage4'] > 0 and counts['head'] == 2
    new = finetune.replace_head(model, 4)
    assert new.output.shape[-1] == 4 and new.layers[-1].name == 'predictions'
    assert new.layers[-1].activation is model.layers[-1].activation  # softmax kept.


@pytest.mark.parametrize('freeze_bn', [True, False])
def test_freeze_counts_trainable_variables_per_stage(freeze_bn):
    model = tiny_model()
    full = finetune.trainable_counts(model)
    groups = finetune.stage_layers(model)
    assert all(full[name] > 0 for name in full if name != 'head') and full['head'] == 2

    frozen = finetune.freeze(model, num_stages=2, freeze_bn=freeze_bn)
    assert frozen == ['stem', 'stage1', 'stage2']
    counts = finetune.trainable_counts(model)
    for name in frozen:
        assert counts[name] == 0, name
    for name in ('stage3', 'top'):
        # Unfrozen stages lose only their BN gamma/beta, and only with freeze_bn.
        expected = full[name] - (2 * _bn_count(groups[name]) if freeze_bn else 0)
        assert counts[name] == expected, name
    assert counts['head'] == 2
    assert len(model.trainable_variables) == sum(counts.values())
    norms = [
        sub
        for layer in groups['stage1']
        for sub in layer._flatten_layers()
        if isinstance(sub, keras.layers.BatchNormalization)
    ]
    # Inference mode (untrainable layer) with freeze_bn; else training mode, gamma/beta fixed.
    assert all(norm.trainable is (not freeze_bn) for norm in norms)
    assert not any(norm.gamma.trainable for norm in norms)

    # Calls do not accumulate; 'all' leaves the head only; unfreeze restores everything.
    finetune.freeze(model, num_stages='all', freeze_bn=False)
    assert [n for n, c in finetune.trainable_counts(model).items() if c] == ['head']
    finetune.unfreeze(model)
    assert finetune.trainable_counts(model) == full


def test_frozen_stages_do_not_move_in_training():
    model = tiny_model(num_classes=3)
    finetune.freeze(model, num_stages=1, freeze_bn=True)
    model.compile(keras.optimizers.SGD(0.5), keras.losses.CategoricalCrossentropy(True))
    stem = model.get_layer('stem')
    before = {v.path: v.numpy() for v in model.weights}
    images = np.random.RandomState(0).rand(8, 16, 16, 3).astype('float32')
    labels = np.eye(3)[np.arange(8) % 3].astype('float32')
    model.fit(images, labels, epochs=1, batch_size=8, verbose=0)
    after = {v.path: v.numpy() for v in model.weights}
    changed = {path for path in before if not np.array_equal(before[path], after[path])}
    assert not any(path.startswith(('stem/', 'block1a/')) for path in changed)
    assert not any('moving_' in path for path in changed)  # BN in inference mode everywhere.
    assert any(path.startswith('block2a/') for path in changed)
    assert 'predictions/kernel' in changed
    assert stem.trainable is False


def test_bad_stage_names_are_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match='Valid names'):
        finetune.freeze(model, stages=['stage9'])
    with pytest.raises(ValueError, match=r'\[0, 3\]'):
        finetune.freeze(model, num_stages=4)
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match='block1a'):
        finetune.stage_names(plain)


def test_replace_head_keeps_features_and_flags():
    model = tiny_model(num_classes=10)
    finetune.freeze(model, num_stages=2)
    new = finetune.replace_head(model, 5, dropout_rate=0.4)
    assert isinstance(new, model_lib.EfficientNet)
    assert new.num_classes == 5 and new.dropout_rate == pytest.approx(0.4)
    head = new.get_layer('predictions')
    assert head.kernel.shape == (32, 5)
    images = np.random.RandomState(1).rand(2, 24, 24, 3).astype('float32')
    assert new(images).shape == (2, 5)
    for name in ('stem', 'block2b', 'top'):
        for a, b in zip(model.get_layer(name).weights, new.get_layer(name).weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert finetune.trainable_counts(new) == finetune.trainable_counts(model)
    # Pooled features are the same in both models.
    a = keras.Model(model.inputs, model.get_layer('avg_pool').output)(images)
    b = keras.Model(new.inputs, new.get_layer('avg_pool').output)(images)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    prepared = finetune.prepare(model, 3, num_stages=1)
    assert prepared.num_classes == 3
    assert finetune.trainable_counts(prepared)['stage2'] > 0
