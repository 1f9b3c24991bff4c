"""Tests for efficientnetv2.train.losses, with hand-computed numbers."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from efficientnetv2.train import losses


def _log_softmax(row):
    row = np.asarray(row, np.float64)
    return row - np.log(np.sum(np.exp(row)))


def _softplus(x):
    return math.log1p(math.exp(x))


LOGITS = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]], np.float32)


def test_softmax_one_hot_no_smoothing():
    labels = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    expected = -(_log_softmax(LOGITS[0])[0] + _log_softmax(LOGITS[1])[2]) / 2
    value = losses.softmax_cross_entropy(labels, LOGITS)
    assert float(value) == pytest.approx(expected, rel=1e-6)
    # Integer labels give the same value.
    sparse = losses.softmax_cross_entropy(np.array([0, 2]), LOGITS)
    assert float(sparse) == pytest.approx(expected, rel=1e-6)


def test_softmax_label_smoothing_on_mixed_labels():
    # A mixup-style label 0.7 / 0.3, smoothing 0.1 over K=3:
    # 0.7*0.9 + 0.1/3 = 0.66333, 0.3*0.9 + 0.1/3 = 0.30333, 0.03333.
    labels = np.array([[0.7, 0.3, 0.0]], np.float32)
    smoothed = np.array([0.7 * 0.9 + 0.1 / 3, 0.3 * 0.9 + 0.1 / 3, 0.1 / 3])
    expected = -np.sum(smoothed * _log_softmax(LOGITS[0]))
    value = losses.softmax_cross_entropy(labels, LOGITS[:1], label_smoothing=0.1)
    assert float(value) == pytest.approx(expected, rel=1e-6)


def test_softmax_multi_label_normalisation():
    labels = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    # Row 0 becomes [0.5, 0.5, 0]; the all-zero row stays zero (loss 0).
    expected = -(0.5 * _log_softmax(LOGITS[0])[0] + 0.5 * _log_softmax(LOGITS[0])[1]) / 2
    value = losses.softmax_cross_entropy(labels, LOGITS, normalize_labels=True)
    assert float(value) == pytest.approx(expected, rel=1e-6)


def test_global_batch_size_gives_replica_share():
    labels = np.array([0, 2])
    mean = float(losses.softmax_cross_entropy(labels, LOGITS))
    share = float(losses.softmax_cross_entropy(labels, LOGITS, global_batch_size=8))
    # Two of eight examples: sum / 8 = mean * 2 / 8.
    assert share == pytest.approx(mean * 2 / 8, rel=1e-6)


def test_sigmoid_with_smoothing_by_hand():
    logits = np.array([[1.0, -2.0]], np.float32)
    labels = np.array([[1.0, 0.0]], np.float32)
    # Smoothing 0.2: targets 1*0.8 + 0.1 = 0.9 and 0.1.
    # CE(z, y) = softplus(z) - y*z; mean over the 2 classes.
    terms = [_softplus(1.0) - 0.9 * 1.0, _softplus(-2.0) - 0.1 * -2.0]
    value = losses.sigmoid_cross_entropy(labels, logits, label_smoothing=0.2)
    assert float(value) == pytest.approx(sum(terms) / 2, rel=1e-6)
    summed = losses.classification_loss(labels, logits, loss_type='custom')
    plain_terms = [_softplus(1.0) - 1.0, _softplus(-2.0)]
    assert float(summed) == pytest.approx(sum(plain_terms), rel=1e-6)


def test_classification_loss_dispatch():
    labels = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], np.float32)
    softmax = losses.classification_loss(labels, LOGITS)  # ls 0.1 default
    direct = losses.softmax_cross_entropy(labels, LOGITS, label_smoothing=0.1)
    assert float(softmax) == float(direct)
    sigmoid = losses.classification_loss(labels, LOGITS, loss_type='sigmoid', label_smoothing=0.1)
    assert float(sigmoid) == float(
        losses.sigmoid_cross_entropy(labels, LOGITS, label_smoothing=0.1)
    )
    with pytest.raises(ValueError, match='softmax.*sigmoid.*custom'):
        losses.classification_loss(labels, LOGITS, loss_type='focal')


def test_float16_logits_are_cast():
    value = losses.softmax_cross_entropy(np.array([0, 2]), tf.constant(LOGITS, tf.float16))
    assert value.dtype == tf.float32


@pytest.fixture(scope='module')
def small_model():
    model = keras.Sequential(
        name='net',
        layers=[
            keras.Input((5, 5, 2)),
            keras.layers.Conv2D(2, 3, name='conv'),
            keras.layers.DepthwiseConv2D(3, name='dw'),
            keras.layers.BatchNormalization(name='bn'),
            keras.layers.Flatten(),
            keras.layers.Dense(3, name='head'),
        ],
    )
    for variable in model.trainable_variables:
        variable.assign(tf.fill(variable.shape, 0.5))
    return model


def test_decayed_variables_are_kernels_only(small_model):
    selected = [v.path for v in small_model.variables if losses.is_decayed_variable(v)]
    # Keras 3 names the depthwise weight `kernel` too.
    assert selected == ['net/conv/kernel', 'net/dw/kernel', 'net/head/kernel']
    tf_variable = tf.Variable(1.0, name='block/bias')
    assert not losses.is_decayed_variable(tf_variable)
    assert losses.is_decayed_variable(tf.Variable(1.0, name='dense/kernel'))
    assert losses.is_decayed_variable(tf.Variable(1.0, name='conv2d/depthwise_kernel'))
    assert not losses.is_decayed_variable(tf.Variable(1.0, name='bn/moving_mean'))


def test_l2_loss_by_hand(small_model):
    # Kernels: conv 3*3*2*2 = 36, depthwise 3*3*2*1 = 18, dense 2*3 = 6
    # elements, all 0.5: sum(0.5 * v^2) = 0.5 * 60 * 0.25 = 7.5.
    value = losses.l2_loss(small_model.trainable_variables, 1e-5)
    assert float(value) == pytest.approx(1e-5 * 7.5, rel=1e-6)
    assert float(losses.l2_loss(small_model.trainable_variables, 0.0)) == 0.0
    with pytest.raises(ValueError, match='`weight_decay`'):
        losses.l2_loss(small_model.trainable_variables, -1.0)


def test_clip_gradients_per_tensor_then_global():
    grads = [tf.constant([3.0, 4.0]), None, tf.constant([0.6, 0.8])]
    clipped = losses.clip_gradients(grads, 1.0)
    # Step 1: [3, 4] -> [0.6, 0.8]; [0.6, 0.8] unchanged (norm 1).
    # Step 2: global norm sqrt(2) -> both scaled by 1/sqrt(2).
    scale = 1.0 / math.sqrt(2.0)
    np.testing.assert_allclose(clipped[0].numpy(), [0.6 * scale, 0.8 * scale], rtol=1e-6)
    assert clipped[1] is None
    np.testing.assert_allclose(clipped[2].numpy(), [0.6 * scale, 0.8 * scale], rtol=1e-6)
    untouched = losses.clip_gradients(grads, 0)
    assert untouched[0] is grads[0]


@pytest.mark.parametrize(
    'call, argument',
    [
        (
            lambda: losses.softmax_cross_entropy([0], LOGITS[:1], label_smoothing=1.5),
            'label_smoothing',
        ),
        (
            lambda: losses.softmax_cross_entropy([0], LOGITS[:1], global_batch_size=0),
            'global_batch_size',
        ),
        (lambda: losses.clip_gradients([tf.constant(1.0)], -1.0), 'clip_norm'),
    ],
)
def test_bad_arguments(call, argument):
    with pytest.raises(ValueError, match=f'`{argument}`'):
        call()
