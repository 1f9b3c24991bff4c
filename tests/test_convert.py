"""Tests for efficientnetv2.convert: keras.applications -> this package, logits parity.

Every source model is randomly initialised (nothing is downloaded) and its batch-norm gammas,
betas and moving statistics are randomised so that no normalisation is an identity. The
ranges keep activations of order one: with keras' default initialisation a deep random
EfficientNet's activations grow by orders of magnitude per stage, and float32 round-off then
amplifies chaotically, which would test conditioning rather than the conversion.
"""

import warnings

import h5py
import keras
import numpy as np
import pytest

from efficientnetv2 import architectures
from efficientnetv2 import convert

SIZES = (64, 96)  # Even sizes: keras V1's explicit padding equals 'same' there.
TOLERANCE = 1e-4
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def _randomise_batch_norm(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.0, channels))
            layer.beta.assign(rng.normal(0.0, 0.1, channels))
            layer.moving_mean.assign(rng.normal(0.0, 0.1, channels))
            layer.moving_variance.assign(rng.uniform(1.0, 2.0, channels))


def _keras_model(constructor, **kwargs):
    """A keras.applications model with free input size (via `input_tensor`), logits out."""
    kwargs.setdefault('weights', None)
    if kwargs.get('include_top', True):
        kwargs.setdefault('classifier_activation', None)
    model = constructor(input_tensor=keras.Input((None, None, 3)), **kwargs)
    _randomise_batch_norm(model)
    return model


def _images(size, batch=2, seed=1):
    """Raw RGB pixels in [0, 255], what keras.applications models take."""
    return np.random.default_rng(seed).uniform(0, 255, (batch, size, size, 3)).astype('float32')


def _run(model, images):
    with warnings.catch_warnings():  # keras warns that a list input got a bare tensor.
        warnings.simplefilter('ignore', UserWarning)
        return keras.ops.convert_to_numpy(model(images, training=False))


def _assert_parity(source, converted, size):
    images = _images(size)
    expected = _run(source, images)
    actual = _run(converted, convert.keras_preprocessing(source)(images))
    assert actual.shape == expected.shape
    assert np.std(expected) > 1e-3  # Not a degenerate constant output.
    np.testing.assert_allclose(actual, expected, rtol=0, atol=TOLERANCE)


V2_B0 = ('EfficientNetV2B0', 'efficientnetv2-b0')
VARIANTS = [
    V2_B0,
    ('EfficientNetV2S', 'efficientnetv2-s'),
    ('EfficientNetB0', 'efficientnet-b0'),
    ('EfficientNetB3', 'efficientnet-b3'),  # V1's 10% filter-rounding rule changes B3.
]


@pytest.fixture(scope='module', params=VARIANTS, ids=lambda p: p[1])
def converted_pair(request):
    keras_name, name = request.param
    source = _keras_model(getattr(keras.applications, keras_name))
    return name, source, convert.from_keras_applications(source)


@pytest.mark.parametrize('size', SIZES)
def test_logits_match_keras(converted_pair, size):
    _, source, converted = converted_pair
    _assert_parity(source, converted, size)


def test_variant_and_counts(converted_pair):
    name, source, converted = converted_pair
    assert convert.identify_variant(source) == name
    assert converted.model_name == name
    assert converted.count_params() == source.count_params() - _preprocessing_params(source)
    assert converted.get_layer('predictions').get_config()['activation'] == 'linear'


def _preprocessing_params(model):
    return sum(
        layer.count_params()
        for layer in model.layers
        if isinstance(layer, keras.layers.Normalization)
    )


def test_fingerprints_tell_every_keras_variant_apart():
    fingerprints = {
        variant.name: convert.variant_fingerprint(variant)
        for variant in architectures.VARIANTS.values()
        if variant.keras_name
    }
    assert len(fingerprints) == 15  # V1 B0-B7 and V2 B0-B3, S, M, L.
    assert len(set(fingerprints.values())) == len(fingerprints)
    # V1-B3 with the 10% rule: stem 40, head 1536, last stage 384 channels.
    b3 = fingerprints['efficientnet-b3']
    assert (b3.stem_filters, b3.head_filters, b3.stages[-1]) == (40, 1536, (2, 384))


def test_preprocessing_descriptions():
    v2s = convert.keras_preprocessing(
        keras.applications.EfficientNetV2S(weights=None, include_top=False)
    )
    np.testing.assert_allclose(v2s.scale, [1 / 128] * 3)
    np.testing.assert_allclose(v2s.offset, [-1.0] * 3)
    v2b0 = convert.keras_preprocessing(
        keras.applications.EfficientNetV2B0(weights=None, include_top=False)
    )
    np.testing.assert_allclose(v2b0.scale, 1 / (255 * IMAGENET_STD), rtol=1e-6)
    np.testing.assert_allclose(v2b0.offset, -IMAGENET_MEAN / IMAGENET_STD, rtol=1e-6)
    assert 'Normalization' in v2b0.describe()
    bare = convert.keras_preprocessing(
        keras.applications.EfficientNetV2B0(
            weights=None, include_top=False, include_preprocessing=False
        )
    )
    assert bare.is_identity and 'identity' in bare.describe()
    images = _images(8)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(bare(images)), images)


@pytest.mark.filterwarnings('ignore::DeprecationWarning')  # Inside keras' legacy h5 writer.
def test_v1_imagenet_rescaling_quirk(tmp_path, monkeypatch):
    """keras V1 with weights='imagenet': Normalization(variance=std) + Rescaling(1/sqrt(std)).

    Simulated offline: a legacy .h5 file whose Normalization state holds the std as keras'
    published file does, served to keras' weight download by a patched `get_file`.
    """
    from keras.src.legacy.saving import legacy_h5_format
    from keras.src.utils import file_utils

    donor = _keras_model(keras.applications.EfficientNetB0)
    normalization = [
        layer for layer in donor.layers if isinstance(layer, keras.layers.Normalization)
    ][0]
    normalization.adapt_mean.assign(IMAGENET_MEAN)
    normalization.adapt_variance.assign(IMAGENET_STD)  # keras' file stores std here.
    path = str(tmp_path / 'efficientnetb0.h5')
    with h5py.File(path, 'w') as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, donor)
    monkeypatch.setattr(file_utils, 'get_file', lambda *args, **kwargs: path)

    source = _keras_model(keras.applications.EfficientNetB0, weights='imagenet')
    rescalings = [layer for layer in source.layers if isinstance(layer, keras.layers.Rescaling)]
    assert len(rescalings) == 2  # 1/255 and the 1/sqrt(std) correction.
    scaling = convert.keras_preprocessing(source)
    np.testing.assert_allclose(scaling.scale, 1 / (255 * IMAGENET_STD), rtol=1e-6)
    np.testing.assert_allclose(scaling.offset, -IMAGENET_MEAN / IMAGENET_STD, rtol=1e-6)
    _randomise_batch_norm(source, seed=3)
    converted = convert.from_keras_applications(source)
    _assert_parity(source, converted, 64)


@pytest.fixture(scope='module')
def headless_source():
    # Renamed: identification must come from the structure, not keras' model name.
    source = _keras_model(
        keras.applications.EfficientNetV2B0, include_top=False, include_preprocessing=False
    )
    return keras.Model(source.input, source.output, name='my_backbone')


def test_include_top_false(headless_source):
    assert convert.identify_variant(headless_source) == 'efficientnetv2-b0'
    assert convert.keras_preprocessing(headless_source).is_identity
    converted = convert.from_keras_applications(headless_source)
    assert not converted.include_top
    for size in SIZES:
        _assert_parity(headless_source, converted, size)
    pooled = convert.from_keras_applications(headless_source, pooling='avg')
    assert pooled.output.shape == (None, 1280)


@pytest.mark.parametrize('converted_pair', [V2_B0], indirect=True, ids=[V2_B0[1]])
def test_other_num_classes_keeps_body(converted_pair):
    _, source, _ = converted_pair
    converted = convert.from_keras_applications(source, num_classes=10)
    assert converted.get_layer('predictions').kernel.shape == (1280, 10)
    np.testing.assert_array_equal(
        converted.get_layer('top').bn.moving_variance.numpy(),
        source.get_layer('top_bn').moving_variance.numpy(),
    )
    headless = convert.from_keras_applications(source, include_top=False, pooling='avg')
    assert headless.output.shape == (None, 1280)


def test_not_an_efficientnet():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, name='dense')])
    with pytest.raises(ValueError, match='keras.applications EfficientNet'):
        convert.from_keras_applications(model)
    with pytest.raises(ValueError, match='source_model must be a keras.Model'):
        convert.from_keras_applications('efficientnetv2-s')


def test_unmatched_weights_are_named(headless_source):
    features = keras.layers.GlobalAveragePooling2D()(headless_source.output)
    extended = keras.Model(
        headless_source.input, keras.layers.Dense(3, name='extra_head')(features)
    )
    with pytest.raises(ValueError, match='extra_head'):
        convert.from_keras_applications(extended, include_top=False)


def test_include_top_needs_a_classifier(headless_source):
    with pytest.raises(ValueError, match='include_top=True'):
        convert.from_keras_applications(headless_source, include_top=True)


def test_conversion_is_all_or_nothing(headless_source):
    """Every shape is checked before any weight is assigned: a late mismatch leaves the model as
    it was (a layer-by-layer copy would have filled the stem and early blocks already)."""
    from efficientnetv2 import _copier
    from efficientnetv2 import model as model_lib

    target = model_lib.build_model('efficientnetv2-b0', include_top=False)
    before = [v.numpy() for v in target.weights]
    entries, problems = convert.weight_map(headless_source, target, copy_classifier=False)
    assert problems == [] and len(entries) == len(target.weights)
    last = entries[-1]  # top_bn: the last layer in the source's order.
    assert last.name.startswith('top_bn/')
    entries[-1] = last._replace(shape=(7,), value=np.zeros(7, np.float32))
    with pytest.raises(ValueError, match='top_bn/.*has shape \\[7\\]'):
        _copier.copy_entries(entries, target, 'keras.applications model')
    for variable, value in zip(target.weights, before):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)
