"""RandAugment / AutoAugment ops against independent expectations."""

import numpy as np
import pytest
import tensorflow as tf

from efficientnetv2.data import augment

GRAY = augment.FILL_VALUE


def _image(height, width, seed=0, low=0, high=256):
    rng = np.random.default_rng(seed)
    return rng.integers(low, high, (height, width, 3)).astype(np.uint8)


def _np(tensor):
    return np.asarray(tensor)


# ----------------------------------------------------------------------------
# Geometric ops.
# ----------------------------------------------------------------------------
@pytest.mark.parametrize('size', [5, 8])
def test_rotate_90_equals_rot90(size):
    image = _image(size, size)
    rotated = augment.rotate(image, 90.0)
    np.testing.assert_array_equal(_np(rotated), _np(tf.image.rot90(image)))
    back = augment.rotate(image, -90.0)
    np.testing.assert_array_equal(_np(back), _np(tf.image.rot90(image, k=3)))


def test_rotate_zero_is_identity_and_corners_are_filled():
    image = _image(9, 9, low=0, high=100)
    np.testing.assert_array_equal(_np(augment.rotate(image, 0.0)), image)
    rotated = _np(augment.rotate(image, 45.0))
    np.testing.assert_array_equal(rotated[0, 0], [GRAY] * 3)
    np.testing.assert_array_equal(rotated[4, 4], image[4, 4])  # Centre.


def test_translate_x_and_y_known_pixels():
    image = _image(4, 6, low=0, high=100)
    moved = _np(augment.translate_x(image, 2.0))
    np.testing.assert_array_equal(moved[:, :4], image[:, 2:])
    assert (moved[:, 4:] == GRAY).all()
    moved = _np(augment.translate_x(image, -1.0))
    np.testing.assert_array_equal(moved[:, 1:], image[:, :-1])
    assert (moved[:, 0] == GRAY).all()
    moved = _np(augment.translate_y(image, 3.0))
    np.testing.assert_array_equal(moved[:1], image[3:])
    assert (moved[1:] == GRAY).all()


def _shear_reference(image, level, axis):
    """Nearest-neighbour shear with gray fill, in NumPy."""
    height, width, _ = image.shape
    out = np.full_like(image, GRAY)
    for y in range(height):
        for x in range(width):
            src_x, src_y = (x + level * y, y) if axis == 'x' else (x, y + level * x)
            src_x, src_y = int(np.round(src_x)), int(np.round(src_y))
            if 0 <= src_x < width and 0 <= src_y < height:
                out[y, x] = image[src_y, src_x]
    return out


@pytest.mark.parametrize('level', [0.3, -0.3, 1.2])
def test_shear_matches_reference(level):
    # Levels and sizes avoid .5 ties in the rounding of source coordinates.
    image = _image(5, 5, low=0, high=100)
    np.testing.assert_array_equal(
        _np(augment.shear_x(image, level)), _shear_reference(image, level, 'x')
    )
    np.testing.assert_array_equal(
        _np(augment.shear_y(image, level)), _shear_reference(image, level, 'y')
    )


def test_fill_matches_official_wrap_unwrap():
    """Constant fill == official trick: ones channel, fill 0, then gray."""
    image = _image(11, 13)
    image[3:6, 3:6] = 0  # Black content must stay black.
    matrix = tf.constant([[0.9, -0.4, 3.0, 0.4, 0.9, -2.0, 0.0, 0.0]])
    wrapped = tf.concat([image, np.ones((11, 13, 1), np.uint8)], -1)[None]
    moved = tf.raw_ops.ImageProjectiveTransformV3(
        images=wrapped,
        transforms=matrix,
        output_shape=[11, 13],
        fill_value=0.0,
        interpolation='NEAREST',
        fill_mode='CONSTANT',
    )[0]
    moved = _np(moved)
    expected = np.where(moved[..., 3:] == 0, GRAY, moved[..., :3])
    np.testing.assert_array_equal(_np(augment.transform(image, matrix[0])), expected)


# ----------------------------------------------------------------------------
# Pixel ops.
# ----------------------------------------------------------------------------
def _pixels(values):
    return np.array(values, np.uint8).reshape(1, -1, 1).repeat(3, axis=2)


def test_posterize_known_pixels():
    image = _pixels([0, 15, 16, 200, 255])
    np.testing.assert_array_equal(_np(augment.posterize(image, 4))[0, :, 0], [0, 0, 16, 192, 240])
    np.testing.assert_array_equal(_np(augment.posterize(image, 8))[0, :, 0], [0, 15, 16, 200, 255])
    # 0 bits: TF clamps the uint8 shift of 8 to 7 (keeps the top bit).
    np.testing.assert_array_equal(_np(augment.posterize(image, 0))[0, :, 0], [0, 0, 0, 128, 128])


def test_solarize_and_solarize_add_known_pixels():
    image = _pixels([0, 100, 127, 128, 200, 255])
    np.testing.assert_array_equal(
        _np(augment.solarize(image, 128))[0, :, 0], [0, 100, 127, 127, 55, 0]
    )
    np.testing.assert_array_equal(
        _np(augment.solarize(image, 256, wrap=False))[0, :, 0], image[0, :, 0]
    )
    np.testing.assert_array_equal(
        _np(augment.solarize_add(image, 110))[0, :, 0], [110, 210, 237, 128, 200, 255]
    )
    np.testing.assert_array_equal(
        _np(augment.solarize_add(image, 200))[0, :, 0], [200, 255, 255, 128, 200, 255]
    )


def test_solarize_threshold_wraps_like_the_released_code():
    # The released code compares uint8 pixels with int(M / 10 * 256), which
    # TF converts to uint8 modulo 256.
    image = _pixels([0, 1, 41, 42, 100, 127, 128, 200, 255])
    values = image[0, :, 0].astype(np.int64)
    everything_inverted = 255 - values
    for magnitude in (10, 20):  # Thresholds 256 and 512 -> 0.
        threshold = augment.level_to_arg('Solarize', magnitude)
        np.testing.assert_array_equal(
            _np(augment.solarize(image, threshold))[0, :, 0], everything_inverted
        )
    # M=15: 384 -> 128.
    np.testing.assert_array_equal(
        _np(augment.solarize(image, augment.level_to_arg('Solarize', 15)))[0, :, 0],
        [0, 1, 41, 42, 100, 127, 127, 55, 0],
    )
    # 298 (M = 11.67) -> 42.
    np.testing.assert_array_equal(
        _np(augment.solarize(image, 298))[0, :, 0], [0, 1, 41, 213, 155, 128, 127, 55, 0]
    )
    # Thresholds below 256 are the same either way.
    for threshold in (0, 42, 128, 255):
        np.testing.assert_array_equal(
            _np(augment.solarize(image, threshold)),
            _np(augment.solarize(image, threshold, wrap=False)),
        )


def test_solarize_clamped_option_keeps_large_thresholds_a_no_op():
    image = _image(5, 7)
    for magnitude in (10, 15, 20):
        threshold = augment.level_to_arg('Solarize', magnitude)
        np.testing.assert_array_equal(_np(augment.solarize(image, threshold, wrap=False)), image)


def test_invert():
    image = _image(3, 4)
    np.testing.assert_array_equal(_np(augment.invert(image)), 255 - image)


def test_autocontrast_known_pixels():
    image = np.zeros((1, 3, 3), np.uint8)
    image[0, :, 0] = [50, 100, 150]
    image[0, :, 1] = [7, 7, 7]  # Constant channel: unchanged.
    image[0, :, 2] = [0, 128, 255]  # Already full range: unchanged.
    out = _np(augment.autocontrast(image))
    np.testing.assert_array_equal(out[0, :, 0], [0, 127, 255])
    np.testing.assert_array_equal(out[0, :, 1], [7, 7, 7])
    np.testing.assert_array_equal(out[0, :, 2], [0, 128, 255])


def _equalize_reference(channel):
    """PIL's ImageOps.equalize for one channel, written from its algorithm."""
    histogram = np.bincount(channel.ravel(), minlength=256)
    used = histogram[histogram > 0]
    step = (used.sum() - used[-1]) // 255
    if step == 0:
        return channel
    lut, total = [], step // 2
    for count in histogram:
        lut.append(min(total // step, 255))
        total += count
    return np.array(lut, np.uint8)[channel]


def test_equalize_matches_pil_algorithm():
    image = _image(17, 19, seed=3, low=40, high=120)
    image[..., 2] = 9  # Constant channel: step 0, unchanged.
    expected = np.stack([_equalize_reference(image[..., c]) for c in range(3)], -1)
    np.testing.assert_array_equal(_np(augment.equalize(image)), expected)


def test_blend_semantics():
    first = _pixels([10, 100, 200])
    second = _pixels([15, 200, 100])
    np.testing.assert_array_equal(_np(augment.blend(first, second, 0.0)), first)
    np.testing.assert_array_equal(_np(augment.blend(first, second, 1.0)), second)
    # Interpolation truncates: 12.5 -> 12, 150 -> 150, 150 -> 150.
    np.testing.assert_array_equal(_np(augment.blend(first, second, 0.5))[0, :, 0], [12, 150, 150])
    # Extrapolation clips: 10 + 2 * 5 = 20, 100 + 200 -> 255, 200 - 200 = 0.
    np.testing.assert_array_equal(_np(augment.blend(first, second, 2.0))[0, :, 0], [20, 255, 0])


def test_color_brightness_contrast_degenerate_images():
    image = _image(16, 16)
    gray = _np(tf.image.rgb_to_grayscale(image))
    np.testing.assert_array_equal(_np(augment.color(image, 0.0)), np.repeat(gray, 3, -1))
    np.testing.assert_array_equal(_np(augment.brightness(image, 0.0)), 0)
    np.testing.assert_array_equal(_np(augment.brightness(image, 0.5)), image // 2)
    # Official "mean" = num_pixels / 256: 1 for 16x16, clipped 255 for 256x256.
    np.testing.assert_array_equal(_np(augment.contrast(image, 0.0)), 1)
    big = np.full((256, 256, 3), 3, np.uint8)
    np.testing.assert_array_equal(_np(augment.contrast(big, 0.0)), 255)


def test_sharpness_zero_is_smoothed_interior_with_original_border():
    image = _image(6, 7).astype(np.float64)
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13.0
    expected = image.copy()
    for y in range(1, 5):
        for x in range(1, 6):
            window = image[y - 1 : y + 2, x - 1 : x + 2]
            expected[y, x] = np.einsum('ijc,ij->c', window, kernel)
    out = _np(augment.sharpness(image.astype(np.uint8), 0.0))
    # Float32 convolution may land on the other side of an integer.
    np.testing.assert_allclose(out, np.floor(expected), atol=1)
    np.testing.assert_array_equal(out[0], image[0])
    np.testing.assert_array_equal(out[:, -1], image[:, -1])


def test_cutout_fills_one_clipped_square():
    image = _image(10, 12, low=0, high=100)
    out = _np(augment.cutout(image, 2, seed=[1, 2]))
    filled = (out != image).any(-1)
    rows, cols = np.nonzero(filled)
    assert filled.sum() > 0
    assert rows.max() - rows.min() < 4 and cols.max() - cols.min() < 4
    assert filled.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)  # Rectangle.
    assert (out[filled] == GRAY).all()


# ----------------------------------------------------------------------------
# Level mappings and policies.
# ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    'name,expected',
    [
        ('Rotate', [15, 30, 45, 60]),
        ('Posterize', [2, 4, 6, 8]),
        ('Solarize', [128, 256, 384, 512]),
        ('Color', [1.0, 1.9, 2.8, 3.7]),
        ('ShearX', [0.15, 0.3, 0.45, 0.6]),
        ('TranslateY', [50, 100, 150, 200]),
        ('Cutout', [20, 40, 60, 80]),
        ('SolarizeAdd', [55, 110, 165, 220]),
    ],
)
def test_level_to_arg_official_scale(name, expected):
    got = [augment.level_to_arg(name, m) for m in (5, 10, 15, 20)]
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    assert augment.level_to_arg('Color', 5) == 1.0  # Exact identity factor.


def test_level_to_arg_rejects_unknown_op():
    with pytest.raises(ValueError, match='Rotate'):
        augment.level_to_arg('Spin', 5)


@pytest.mark.parametrize(
    'name,magnitude',
    [
        ('Rotate', 0),
        ('ShearX', 0),
        ('ShearY', 0),
        ('TranslateX', 0),
        ('TranslateY', 0),
        ('Cutout', 0),
        ('SolarizeAdd', 0),
        ('Posterize', 20),
        ('Color', 5),
        ('Contrast', 5),
        ('Brightness', 5),
        ('Sharpness', 5),
    ],
)
def test_identity_magnitudes_through_apply_op(name, magnitude):
    image = _image(9, 9)
    arg = augment.level_to_arg(name, magnitude)
    out = augment.apply_op(image, augment.op_index(name), arg, seed=[3, 4])
    np.testing.assert_array_equal(_np(out), image)


@pytest.mark.parametrize('magnitude', [10, 15, 20])
def test_solarize_through_apply_op_and_randaugment(magnitude):
    image = _image(9, 9)
    index = augment.op_index('Solarize')
    arg = augment.level_to_arg('Solarize', magnitude)
    wrapped = augment.solarize(image, arg % 256, wrap=False)
    np.testing.assert_array_equal(_np(augment.apply_op(image, index, arg, seed=[3, 4])), wrapped)
    np.testing.assert_array_equal(
        _np(augment.apply_op(image, index, arg, seed=[3, 4], solarize_wrap=False)), image
    )
    # RandAugment: find seeds whose one layer picks Solarize.
    picks_solarize = []
    for s in range(64):
        clamped = _np(augment.randaugment(image, 1, magnitude, seed=[s, 0], solarize_wrap=False))
        default = _np(augment.randaugment(image, 1, magnitude, seed=[s, 0]))
        if not np.array_equal(clamped, default):
            picks_solarize.append(s)
            np.testing.assert_array_equal(clamped, image)
            np.testing.assert_array_equal(default, wrapped)
    assert 0 < len(picks_solarize) < 16  # About 64 / 16 = 4 expected.


def test_apply_op_identity_index_and_random_sign():
    image = _image(6, 6, low=0, high=100)
    out = augment.apply_op(image, augment.IDENTITY, 0.0, seed=[0, 0])
    np.testing.assert_array_equal(_np(out), image)
    index = augment.op_index('TranslateX')
    shifted = {_np(augment.apply_op(image, index, 2.0, seed=[s, 1])).tobytes() for s in range(16)}
    expected = {_np(augment.translate_x(image, p)).tobytes() for p in (2.0, -2.0)}
    assert shifted == expected  # Both signs occur and nothing else.


def test_randaugment_is_seeded_and_changes_images():
    image = _image(32, 32)
    first = _np(augment.randaugment(image, 2, 15.0, seed=[5, 6]))
    again = _np(augment.randaugment(image, 2, 15.0, seed=[5, 6]))
    np.testing.assert_array_equal(first, again)
    assert first.dtype == np.uint8 and first.shape == image.shape
    outputs = {_np(augment.randaugment(image, 2, 15.0, seed=[s, 0])).tobytes() for s in range(12)}
    assert len(outputs) > 6
    np.testing.assert_array_equal(_np(augment.randaugment(image, 0, 15.0, seed=[1, 1])), image)


def test_autoaugment_probabilities():
    image = _image(8, 8)
    always = ((('Invert', 1.0, 0), ('Invert', 0.0, 0)),)
    np.testing.assert_array_equal(
        _np(augment.autoaugment(image, [1, 2], policy=always)), 255 - image
    )
    twice = ((('Invert', 1.0, 0), ('Invert', 1.0, 0)),)
    np.testing.assert_array_equal(_np(augment.autoaugment(image, [1, 2], policy=twice)), image)
    half = ((('Invert', 0.5, 0), ('Invert', 0.0, 0)),)
    inverted = sum(
        int((_np(augment.autoaugment(image, [s, 9], policy=half)) != image).any())
        for s in range(200)
    )
    assert 70 < inverted < 130


def test_autoaugment_v0_solarize_level_10_is_a_random_invert():
    # Sub-policy 23 of v0: Posterize(0.8, 2) then Solarize(0.6, 10).
    sub_policy = augment.POLICY_V0[22]
    assert sub_policy[1] == ('Solarize', 0.6, 10)
    image = _image(8, 8)
    posterized = _np(augment.posterize(image, 0))
    outcomes = {'plain': 0, 'inverted': 0}
    for s in range(100):
        out = _np(augment.autoaugment(image, [s, 3], policy=(sub_policy,)))
        if any(np.array_equal(out, x) for x in (image, posterized)):
            outcomes['plain'] += 1
        else:
            assert any(np.array_equal(out, 255 - x) for x in (image, posterized))
            outcomes['inverted'] += 1
        clamped = _np(augment.autoaugment(image, [s, 3], policy=(sub_policy,), solarize_wrap=False))
        assert any(np.array_equal(clamped, x) for x in (image, posterized))
    assert 45 < outcomes['inverted'] < 75  # p = 0.6.


def test_policy_v0_and_ra_aa_run_deterministically():
    assert len(augment.POLICY_V0) == 25
    image = _image(24, 24)
    for policy in augment.POLICIES:
        first = _np(augment.distort_image(image, policy, 2, 10.0, [7, 8]))
        second = _np(augment.distort_image(image, policy, 2, 10.0, [7, 8]))
        np.testing.assert_array_equal(first, second)
        clamped = augment.distort_image(image, policy, 2, 10.0, [7, 8], solarize_wrap=False)
        assert _np(clamped).shape == image.shape
    with pytest.raises(ValueError, match='randaug'):
        augment.distort_image(image, 'mixaug')


def test_pixel_scale_shrinks_translate_and_cutout_only():
    # A progressive stage at half the final size (train.resize_augment_pixels): the same
    # magnitude translates and cuts out half as many pixels; the other ops are unchanged.
    assert augment.scale_pixel_constants(augment.RANDAUGMENT_CONSTANTS, 0.5) == {
        'translate_const': 50.0,
        'cutout_const': 20.0,
    }
    assert augment.level_to_arg('TranslateX', 10.0, 50.0, 20.0) == 50.0
    assert augment.level_to_arg('Cutout', 5.0, 50.0, 20.0) == 10
    with pytest.raises(ValueError, match='pixel_scale'):
        augment.scale_pixel_constants(augment.RANDAUGMENT_CONSTANTS, 0)


def test_randaugment_pixel_scale_equals_smaller_constants(monkeypatch):
    image = tf.constant(np.random.RandomState(0).randint(0, 256, (32, 32, 3)), tf.uint8)
    seeds = [[7, i] for i in range(24)]
    scaled = [augment.randaugment(image, 2, 10.0, seed=s, pixel_scale=0.25) for s in seeds]
    released = [augment.randaugment(image, 2, 10.0, seed=s) for s in seeds]
    # The same draws with the constants themselves quartered (25 px translate, 10 px cutout).
    monkeypatch.setattr(
        augment, 'RANDAUGMENT_CONSTANTS', {'translate_const': 25.0, 'cutout_const': 10.0}
    )
    for a, s in zip(scaled, seeds):
        np.testing.assert_array_equal(a, augment.randaugment(image, 2, 10.0, seed=s))
    # Some of those draws translate or cut out, so the scale changed them.
    assert any(not np.array_equal(a, b) for a, b in zip(scaled, released))
