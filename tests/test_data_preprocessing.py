"""Crops, resizing, normalisation and augname handling."""

import numpy as np
import pytest
import tensorflow as tf

from efficientnetv2.data import preprocessing


def _coordinate_image(height, width):
    """Pixel (y, x) holds (y, x, 7): crops reveal their offsets."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing='ij')
    return np.stack([rows, cols, np.full_like(rows, 7)], -1).astype(np.uint8)


def test_normalize_per_family():
    pixels = tf.constant([[[0.0, 128.0, 255.0]]])
    np.testing.assert_allclose(
        preprocessing.normalize(pixels, 'v2'), [[[-1.0, 0.0, 127.0 / 128.0]]]
    )
    np.testing.assert_allclose(
        preprocessing.normalize(pixels, 'ft'), [[[-1.0, 0.0039216, 1.0]]], atol=1e-6
    )
    mean = tf.constant([[[0.485 * 255, 0.456 * 255, 0.406 * 255]]])
    np.testing.assert_allclose(preprocessing.normalize(mean, 'legacy'), 0.0, atol=1e-5)
    one_std_up = mean + tf.constant([[[0.229 * 255, 0.224 * 255, 0.225 * 255]]])
    np.testing.assert_allclose(preprocessing.normalize(one_std_up, 'legacy'), 1.0, atol=1e-5)
    for family in preprocessing.FAMILIES:
        np.testing.assert_allclose(
            preprocessing.denormalize(preprocessing.normalize(pixels, family), family),
            pixels,
            atol=1e-4,
        )
    with pytest.raises(ValueError, match='family'):
        preprocessing.normalize(pixels, 'caffe')


def _cubic_weights(t, a=-0.75):
    def kernel(x):
        x = abs(x)
        if x <= 1:
            return ((a + 2) * x - (a + 3)) * x * x + 1
        if x < 2:
            return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
        return 0.0

    return [kernel(t + 1), kernel(t), kernel(1 - t), kernel(2 - t)]


def _legacy_bicubic_reference(image, size):
    """TF1 resize_bicubic: a=-0.75, src = dst * in / out, clamped taps.

    TF looks the weights up in a 1024-entry table, so the fractional offset
    is rounded to a multiple of 1/1024.
    """
    height, width, _ = image.shape

    def matrix(in_size):
        out = np.zeros((size, in_size))
        for dst in range(size):
            src = dst * in_size / size
            base = int(np.floor(src))
            t = np.round((src - base) * 1024) / 1024
            for k, w in zip(range(-1, 3), _cubic_weights(t)):
                out[dst, min(max(base + k, 0), in_size - 1)] += w
        return out

    rows, cols = matrix(height), matrix(width)
    return np.einsum('ay,yxc,bx->abc', rows, image.astype(np.float64), cols)


def test_legacy_bicubic_matches_tf1_reference_and_differs_from_tf2():
    image = np.random.default_rng(1).integers(0, 256, (13, 17, 3)).astype(np.uint8)
    legacy = preprocessing.resize_bicubic_legacy(image, 7).numpy()
    np.testing.assert_allclose(legacy, _legacy_bicubic_reference(image, 7), atol=1e-3)
    tf2 = tf.image.resize(image, [7, 7], method='bicubic').numpy()
    assert np.abs(tf2 - legacy).max() > 1.0


def test_v2_and_legacy_eval_center_crops():
    image = _coordinate_image(101, 61)
    # Side int(32 / 64 * 61) = 30; V2 offsets (h - c) // 2, legacy + 1.
    v2 = preprocessing.decode_and_crop(image, 'v2', False, 32).numpy()
    np.testing.assert_array_equal(v2, image[35:65, 15:45])
    legacy = preprocessing.decode_and_crop(image, 'legacy', False, 32).numpy()
    np.testing.assert_array_equal(legacy, image[36:66, 16:46])
    # From 320 px the V2 eval transform does not crop; digits opt out too.
    whole = preprocessing.decode_and_crop(image, 'v2', False, 320).numpy()
    np.testing.assert_array_equal(whole, image)
    whole = preprocessing.decode_and_crop(image, 'v2', False, 32, center_crop=False).numpy()
    np.testing.assert_array_equal(whole, image)


def test_v2_train_crop_is_an_inception_window():
    image = _coordinate_image(120, 160)
    areas = []
    for seed in range(20):
        crop = preprocessing.decode_and_crop(image, 'v2', True, 64, seed=[seed, 3]).numpy()
        y, x = int(crop[0, 0, 0]), int(crop[0, 0, 1])
        h, w = crop.shape[:2]
        np.testing.assert_array_equal(crop, image[y : y + h, x : x + w])
        areas.append(h * w / (120 * 160))
        assert 0.75 - 0.02 <= w / h <= 1.33 + 0.02 or (h, w) == (120, 160)
    assert min(areas) >= 0.05 - 1e-3 and len(set(areas)) > 10


def test_legacy_train_crop_falls_back_to_center_crop():
    image = _coordinate_image(90, 70)
    # Area range (1, 1) only admits the whole image, which counts as failure.
    crop = preprocessing.decode_and_crop(
        image, 'legacy', True, 32, seed=[1, 1], area_range=(1.0, 1.0)
    )
    expected = preprocessing.decode_and_crop(image, 'legacy', False, 32)
    np.testing.assert_array_equal(crop.numpy(), expected.numpy())


def test_legacy_crop_decodes_jpeg_window():
    image = tf.cast(
        tf.image.resize(
            np.random.default_rng(2).integers(0, 255, (6, 8, 3)).astype(np.float32), [48, 64]
        ),
        tf.uint8,
    )
    jpeg = tf.io.encode_jpeg(image, quality=95, chroma_downsampling=False)
    full = tf.io.decode_jpeg(jpeg).numpy()
    crop = preprocessing.decode_and_crop(jpeg, 'legacy', False, 32).numpy()
    side = int(32 / 64 * 48)
    y, x = (48 - side + 1) // 2, (64 - side + 1) // 2
    np.testing.assert_array_equal(crop, full[y : y + side, x : x + side])


def test_finish_shapes_flip_and_ft_cutout():
    image = _coordinate_image(20, 20)
    plain = preprocessing.finish(image, 'v2', False, 12)
    assert plain.shape == (12, 12, 3) and plain.dtype == tf.float32
    no_flip = preprocessing.finish(image, 'v2', True, 12, random_flip=False, seed=[1, 2])
    np.testing.assert_array_equal(no_flip.numpy(), plain.numpy())
    flipped = {
        preprocessing.finish(image, 'v2', True, 12, seed=[s, 2]).numpy().tobytes() for s in range(8)
    }
    assert flipped == {plain.numpy().tobytes(), plain.numpy()[:, ::-1].tobytes()}
    ft_eval = preprocessing.finish(image, 'ft', False, 12).numpy()
    expected = preprocessing.normalize(tf.image.resize(image, [12, 12]), 'ft')
    np.testing.assert_allclose(ft_eval, expected.numpy(), atol=1e-6)
    ft_train = preprocessing.finish(
        image, 'ft', True, 12, augname='ft', random_flip=False, seed=[4, 4]
    ).numpy()
    changed = (ft_train != ft_eval).any(-1)
    assert 0 < changed.sum() <= 36  # Cutout pad 12 // 4 = 3: side <= 6.
    assert ((ft_train[changed] >= 0) & (ft_train[changed] < 1)).all()


def test_preprocess_image_from_bytes_and_dtype():
    image = _coordinate_image(30, 40)
    png = tf.io.encode_png(image)
    out = preprocessing.preprocess_image(
        png, 16, is_training=True, augname='randaug', seed=[1, 2], image_dtype=tf.bfloat16
    )
    assert out.shape == (16, 16, 3) and out.dtype == tf.bfloat16
    again = preprocessing.preprocess_image(
        png, 16, is_training=True, augname='randaug', seed=[1, 2], image_dtype=tf.bfloat16
    )
    np.testing.assert_array_equal(out.numpy(), again.numpy())


@pytest.mark.parametrize(
    'augname,family,policies,cutout',
    [
        (None, None, (), False),
        ('randaug', None, ('randaug',), False),
        ('ra_aa', None, ('ra_aa',), False),
        ('effnetv1_autoaug', 'legacy', ('autoaug',), False),
        ('ft', 'ft', (), True),
        ('ft_randaug', 'ft', ('randaug',), False),
        ('cutout', 'ft', (), True),
    ],
)
def test_parse_augname(augname, family, policies, cutout):
    spec = preprocessing.parse_augname(augname)
    assert (spec.family, spec.policies, spec.noise_cutout) == (family, policies, cutout)


def test_resolve_family_and_errors():
    assert preprocessing.resolve_family(None, None) == 'v2'
    assert preprocessing.resolve_family(None, None, 'ft') == 'ft'
    assert preprocessing.resolve_family(None, 'effnetv1_randaug') == 'legacy'
    assert preprocessing.resolve_family('legacy', 'autoaug') == 'legacy'
    assert preprocessing.resolve_family('legacy', None) == 'legacy'  # Explicit wins.
    with pytest.raises(ValueError, match='implies'):
        preprocessing.resolve_family('v2', 'effnetv1_autoaug')
    with pytest.raises(ValueError, match='randaug'):
        preprocessing.parse_augname('mixaug')
    with pytest.raises(ValueError, match="'v2'"):
        preprocessing.resolve_family('caffe', None)


@pytest.mark.parametrize(
    'model_name,dataset,family',
    [
        ('efficientnetv2-b0', 'imagenet', 'legacy'),
        ('efficientnetv2-b3', 'imagenet21k', 'v2'),
        ('efficientnet-b0', 'imagenet21k', 'v2'),
        ('efficientnetv2-s', 'imagenet21k', 'v2'),
        ('efficientnetv2-b0', 'cifar10Ft', 'ft'),
    ],
)
def test_family_of_recipes_follows_the_released_code(model_name, dataset, family):
    # The released code picks the transform from augname alone: ImageNet-21k sets
    # augname=None, so V1 and V2-B0..B3 take the V2 path there ((x-128)/128, bilinear).
    from efficientnetv2 import data
    from efficientnetv2 import experiment

    config = experiment.build_config(model_name, dataset)
    info = data.get_dataset_info(dataset)
    assert (
        preprocessing.resolve_family(config.data.preprocess, config.data.augname, info.preprocess)
        == family
    )


def test_preprocess_for_eval_geometry_and_inputs():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (50, 70, 3)).astype(np.uint8)
    # V2 below 320: centre crop side int(24 / 56 * 50) = 21 at ((50-21)//2, (70-21)//2).
    ours = preprocessing.preprocess_for_eval(image, 24, 'v2').numpy()
    crop = image[14:35, 24:45].astype(np.float32)
    expected = (tf.image.resize(crop, [24, 24]).numpy() - 128) / 128
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    # From 320 px, and with center_crop=False, the whole image is resized.
    whole = preprocessing.preprocess_for_eval(image, 320, 'v2').numpy()
    np.testing.assert_allclose(
        whole, (tf.image.resize(image, [320, 320]).numpy() - 128) / 128, atol=1e-5
    )
    no_crop = preprocessing.preprocess_for_eval(image, 24, 'v2', center_crop=False)
    np.testing.assert_allclose(
        no_crop.numpy(), (tf.image.resize(image, [24, 24]).numpy() - 128) / 128, atol=1e-5
    )
    # Legacy: offsets ((50-21+1)//2, (70-21+1)//2) = (15, 25), TF1 bicubic, mean/std.
    legacy = preprocessing.preprocess_for_eval(image, 24, 'legacy').numpy()
    bicubic = tf.compat.v1.image.resize_bicubic(
        image[None, 15:36, 25:46], [24, 24], align_corners=False, half_pixel_centers=False
    )[0]
    np.testing.assert_allclose(
        legacy, preprocessing.normalize(bicubic, 'legacy').numpy(), atol=1e-5
    )
    # A float batch, encoded bytes (one and a batch) and grayscale give the same values.
    batch = preprocessing.preprocess_for_eval(
        np.stack([image, image[::-1]]).astype(np.float32), 24, 'legacy'
    ).numpy()
    np.testing.assert_allclose(batch[0], legacy, atol=1e-5)
    png = tf.io.encode_png(image)
    np.testing.assert_allclose(
        preprocessing.preprocess_for_eval(png, 24, 'legacy').numpy(), legacy, atol=1e-5
    )
    both = preprocessing.preprocess_for_eval(tf.stack([png, png]), 24, 'ft')
    assert both.shape == (2, 24, 24, 3)
    gray = preprocessing.preprocess_for_eval(image[..., :1], 24, 'v2').numpy()
    np.testing.assert_allclose(
        gray, preprocessing.preprocess_for_eval(np.repeat(image[..., :1], 3, -1), 24, 'v2').numpy()
    )
    with pytest.raises(ValueError, match="'legacy'"):
        preprocessing.preprocess_for_eval(image, 24, 'caffe')


def test_builtin_ops_bicubic_equals_the_tf1_kernel():
    image = np.random.default_rng(4).integers(0, 256, (2, 37, 23, 3)).astype(np.float32)
    for size in (7, 16, 50):
        kernel = preprocessing.resize_bicubic_legacy(image, size).numpy()
        matmul = preprocessing.resize_bicubic_legacy(image, size, builtin_ops_only=True).numpy()
        np.testing.assert_allclose(matmul, kernel, rtol=0, atol=1e-3)
