"""RandAugment, AutoAugment (policy v0) and cutout on uint8 images, in core TF.

Reproduces the augmentation of the official EfficientNetV2 code (google/automl
`efficientnetv2/autoaugment.py`) without tensorflow-addons:

* RandAugment (Cubuk et al. 2019, arXiv 1909.13719): `num_layers` ops, each
  picked uniformly from 16 and applied unconditionally, with a shared
  magnitude on the official 0-10(+) scale (`_MAX_LEVEL = 10`, no clamp, so
  magnitudes such as 15 or 20 extrapolate).
* AutoAugment policy v0 (Cubuk et al. 2018, arXiv 1805.09501): one of 25
  sub-policies per image, each op applied with its own probability.
* Cutout (DeVries & Taylor 2017): a square of side up to `2 * pad_size`.

Solarize's threshold wraps modulo 256 by default, as in the released code
(which compares uint8 pixels with a Python int that TF converts to uint8): so
RandAugment M=10 and M=20 invert the whole image, M=15 solarizes at 128, and
AutoAugment v0's `Solarize(0.6, 10)` is an Invert with probability 0.6. The
published models were trained with that; `solarize_wrap=False` (config key
`data.solarize_wrap`) clamps instead, so thresholds of 256 and up do nothing.

All ops take and return a uint8 `[height, width, 3]` tensor. Geometric ops use
`tf.raw_ops.ImageProjectiveTransformV3` with nearest-neighbour sampling; pixels
that map outside the input are set to the fill value (gray 128), which is what
the official "wrap with a ones channel, transform, unwrap" trick produces.

Randomness is stateless: every random function takes `seed`, a shape-[2]
integer tensor, so results are reproducible inside parallel `tf.data` maps.
With `seed=None` a seed is drawn from TF's global generator.
"""

from collections.abc import Sequence
import functools
import math
import numbers

import tensorflow as tf

# Level scale of the official code: an op's argument is `level / _MAX_LEVEL`
# times its range. Magnitudes above 10 extrapolate (no clamp).
_MAX_LEVEL = 10.0
# Gray fill for geometric ops and RandAugment/AutoAugment cutout.
FILL_VALUE = 128

# RandAugment op list, in the official order (the index is what is sampled).
RANDAUGMENT_OPS = (
    'AutoContrast',
    'Equalize',
    'Invert',
    'Rotate',
    'Posterize',
    'Solarize',
    'Color',
    'Contrast',
    'Brightness',
    'Sharpness',
    'ShearX',
    'ShearY',
    'TranslateX',
    'TranslateY',
    'Cutout',
    'SolarizeAdd',
)

# Constants (translate pixels per 10 levels, cutout pad per 10 levels).
RANDAUGMENT_CONSTANTS = {'translate_const': 100.0, 'cutout_const': 40.0}
AUTOAUGMENT_CONSTANTS = {'translate_const': 250.0, 'cutout_const': 100.0}

# AutoAugment policy v0: 25 sub-policies of two (op, probability, level).
POLICY_V0 = (
    (('Equalize', 0.8, 1), ('ShearY', 0.8, 4)),
    (('Color', 0.4, 9), ('Equalize', 0.6, 3)),
    (('Color', 0.4, 1), ('Rotate', 0.6, 8)),
    (('Solarize', 0.8, 3), ('Equalize', 0.4, 7)),
    (('Solarize', 0.4, 2), ('Solarize', 0.6, 2)),
    (('Color', 0.2, 0), ('Equalize', 0.8, 8)),
    (('Equalize', 0.4, 8), ('SolarizeAdd', 0.8, 3)),
    (('ShearX', 0.2, 9), ('Rotate', 0.6, 8)),
    (('Color', 0.6, 1), ('Equalize', 1.0, 2)),
    (('Invert', 0.4, 9), ('Rotate', 0.6, 0)),
    (('Equalize', 1.0, 9), ('ShearY', 0.6, 3)),
    (('Color', 0.4, 7), ('Equalize', 0.6, 0)),
    (('Posterize', 0.4, 6), ('AutoContrast', 0.4, 7)),
    (('Solarize', 0.6, 8), ('Color', 0.6, 9)),
    (('Solarize', 0.2, 4), ('Rotate', 0.8, 9)),
    (('Rotate', 1.0, 7), ('TranslateY', 0.8, 9)),
    (('ShearX', 0.0, 0), ('Solarize', 0.8, 4)),
    (('ShearY', 0.8, 0), ('Color', 0.6, 4)),
    (('Color', 1.0, 0), ('Rotate', 0.6, 2)),
    (('Equalize', 0.8, 4), ('Equalize', 0.0, 8)),
    (('Equalize', 1.0, 4), ('AutoContrast', 0.6, 2)),
    (('ShearY', 0.4, 7), ('SolarizeAdd', 0.6, 7)),
    (('Posterize', 0.8, 2), ('Solarize', 0.6, 10)),
    (('Solarize', 0.6, 8), ('Equalize', 0.6, 1)),
    (('Color', 0.8, 6), ('Rotate', 0.4, 5)),
)

POLICIES = ('randaug', 'autoaug', 'ra_aa')

SeedLike = tf.Tensor | Sequence[int] | None


# ----------------------------------------------------------------------------
# Seeds.
# ----------------------------------------------------------------------------
def as_seed(seed: SeedLike) -> tf.Tensor:
    """Returns a shape-[2] int64 seed tensor; draws one when `seed` is None."""
    if seed is None:
        return tf.random.uniform([2], 0, 2**31 - 1, dtype=tf.int64)
    return tf.cast(tf.convert_to_tensor(seed), tf.int64)


def split_seed(seed: SeedLike, num: int) -> tf.Tensor:
    """Derives `num` independent seeds, shape `[num, 2]`, from one seed."""
    return tf.random.experimental.stateless_split(as_seed(seed), num=num)


def _uniform(seed, minval=0.0, maxval=1.0, dtype=tf.float32):
    return tf.random.stateless_uniform([], seed=seed, minval=minval, maxval=maxval, dtype=dtype)


def _randomly_negate(value, seed):
    """Returns `value` or `-value` with probability 1/2 each."""
    keep = tf.floor(_uniform(seed) + 0.5) > 0
    value = tf.convert_to_tensor(value, tf.float32)
    return tf.where(keep, value, -value)


# ----------------------------------------------------------------------------
# Pixel ops. Arguments may be Python numbers or scalar tensors.
# ----------------------------------------------------------------------------
def blend(image1: tf.Tensor, image2: tf.Tensor, factor) -> tf.Tensor:
    """Blends two uint8 images as `image1 + factor * (image2 - image1)`.

    Official semantics: factor 0 gives `image1`, 1 gives `image2`; between 0
    and 1 the float result is truncated to uint8; outside (extrapolation) it
    is clipped to [0, 255] first. One expression covers all cases exactly:
    with integer pixels `a + 0 * (b - a) == a` and `a + (b - a) == b` in
    float32, and interpolated values never leave [0, 255].

    Args:
        image1: uint8 image.
        image2: uint8 image of the same shape.
        factor: blend factor (float or scalar tensor).

    Returns:
        The blended uint8 image.
    """
    start = tf.cast(image1, tf.float32)
    factor = tf.cast(factor, tf.float32)
    mixed = start + factor * (tf.cast(image2, tf.float32) - start)
    return tf.cast(tf.clip_by_value(mixed, 0.0, 255.0), tf.uint8)


def invert(image: tf.Tensor) -> tf.Tensor:
    """Returns `255 - image`."""
    return 255 - tf.convert_to_tensor(image)


def solarize(image: tf.Tensor, threshold=128, wrap: bool = True) -> tf.Tensor:
    """Inverts the pixels whose value is at least `threshold`.

    Args:
        image: uint8 image.
        threshold: int or scalar tensor, e.g. `int(M / 10 * 256)`.
        wrap: take the threshold modulo 256, as the released code does by
            comparing uint8 pixels with a Python int (256 and 512 invert
            every pixel, 384 thresholds at 128). False compares in int32, so
            a threshold of 256 or more leaves the image unchanged.

    Returns:
        The solarized uint8 image.
    """
    wide = tf.cast(image, tf.int32)
    threshold = tf.cast(threshold, tf.int32)
    if wrap:
        threshold = tf.math.floormod(threshold, 256)
    return tf.cast(tf.where(wide < threshold, wide, 255 - wide), tf.uint8)


def solarize_add(image: tf.Tensor, addition=0, threshold=128) -> tf.Tensor:
    """Adds `addition` to pixels below `threshold`, clipping at [0, 255]."""
    wide = tf.cast(image, tf.int32)
    added = tf.clip_by_value(wide + tf.cast(addition, tf.int32), 0, 255)
    return tf.cast(tf.where(wide < tf.cast(threshold, tf.int32), added, wide), tf.uint8)


def posterize(image: tf.Tensor, bits) -> tf.Tensor:
    """Keeps the top `bits` bits of every pixel: `(x >> s) << s`, s = 8 - bits.

    The shift is clipped to [0, 8]. TF clamps a uint8 shift of 8 to 7, so
    `bits = 0` keeps the top bit (values >= 128 become 128, others 0), which is
    what the official code computes for AutoAugment's `Posterize` level 2.
    """
    shift = tf.cast(tf.clip_by_value(8 - tf.cast(bits, tf.int32), 0, 8), tf.uint8)
    return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def color(image: tf.Tensor, factor: float) -> tf.Tensor:
    """PIL `Color`: blends the grayscale version towards the image."""
    gray = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))
    return blend(gray, image, factor)


def contrast(image: tf.Tensor, factor: float) -> tf.Tensor:
    """PIL-like `Contrast`, reproducing the official degenerate image.

    The official code sums the 256-bin grayscale histogram instead of weighting
    it by intensity, so its "mean" is `num_pixels / 256` (clipped to 255); for
    images of 65,280 pixels or more the degenerate image is white. Kept as is
    for fidelity.
    """
    shape = tf.shape(image)
    num_pixels = tf.cast(shape[0] * shape[1], tf.float32)
    mean = tf.clip_by_value(num_pixels / 256.0, 0.0, 255.0)
    degenerate = tf.fill(shape, tf.cast(mean, tf.uint8))
    return blend(degenerate, image, factor)


def brightness(image: tf.Tensor, factor: float) -> tf.Tensor:
    """PIL `Brightness`: blends black towards the image."""
    return blend(tf.zeros_like(image), image, factor)


def sharpness(image: tf.Tensor, factor: float) -> tf.Tensor:
    """PIL `Sharpness`: blends a 3x3-smoothed image towards the image.

    The smoothing kernel is [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 applied
    with VALID padding; the one-pixel border keeps the original pixels.
    """
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(
        tf.cast(image, tf.float32)[None], kernel, [1, 1, 1, 1], 'VALID'
    )[0]
    smooth = tf.cast(tf.clip_by_value(smooth, 0.0, 255.0), tf.uint8)
    inner = tf.pad(tf.ones_like(smooth, tf.bool), [[1, 1], [1, 1], [0, 0]])
    smooth = tf.where(inner, tf.pad(smooth, [[1, 1], [1, 1], [0, 0]]), image)
    return blend(smooth, image, factor)


def autocontrast(image: tf.Tensor) -> tf.Tensor:
    """Per channel, maps the darkest value to 0 and the brightest to 255.

    Channels with a single value are left unchanged.
    """
    pixels = tf.cast(image, tf.float32)
    low = tf.reduce_min(pixels, axis=[0, 1])
    high = tf.reduce_max(pixels, axis=[0, 1])
    spread = high > low
    scale = tf.where(spread, 255.0 / tf.where(spread, high - low, 1.0), 1.0)
    offset = -low * scale
    scaled = tf.cast(tf.clip_by_value(pixels * scale + offset, 0.0, 255.0), tf.uint8)
    return tf.where(spread, scaled, image)


def _equalize_channel(channel: tf.Tensor) -> tf.Tensor:
    """PIL's equalize on one uint8 channel, `[height, width]`."""
    values = tf.cast(channel, tf.int32)
    histogram = tf.math.bincount(values, minlength=256, maxlength=256)
    # Pixels not in the top (last non-empty) bin, spread over 255 steps.
    top_count = tf.gather(histogram, tf.reduce_max(values))
    step = (tf.reduce_sum(histogram) - top_count) // 255
    safe_step = tf.maximum(step, 1)
    lut = (tf.cumsum(histogram) + safe_step // 2) // safe_step
    lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
    equalized = tf.gather(lut, values)
    return tf.cast(tf.where(step > 0, equalized, values), tf.uint8)


def equalize(image: tf.Tensor) -> tf.Tensor:
    """PIL `Equalize`, per channel (histogram equalisation with a LUT)."""
    return tf.stack([_equalize_channel(image[:, :, c]) for c in range(3)], 2)


# ----------------------------------------------------------------------------
# Geometric ops.
# ----------------------------------------------------------------------------
def transform(image: tf.Tensor, matrix, fill_value: int = FILL_VALUE) -> tf.Tensor:
    """Applies a projective transform with nearest sampling and a constant fill.

    `matrix` is the usual 8-vector `[a0, a1, a2, b0, b1, b2, c0, c1]` mapping an
    output pixel (x, y) to the input point
    `((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k)`, k = c0 x + c1 y + 1.
    Output pixels that map outside the input get `fill_value` in every channel.

    Args:
        image: uint8 `[height, width, channels]` image.
        matrix: 8 floats (list or tensor).
        fill_value: value of the pixels that come from outside the image.

    Returns:
        The transformed image, same shape and dtype.
    """
    matrix = tf.reshape(tf.cast(matrix, tf.float32), [1, 8])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=matrix,
        output_shape=tf.shape(image)[:2],
        fill_value=tf.constant(fill_value, tf.float32),
        interpolation='NEAREST',
        fill_mode='CONSTANT',
    )
    return out[0]


def rotate(image: tf.Tensor, degrees, fill_value: int = FILL_VALUE) -> tf.Tensor:
    """Rotates counter-clockwise by `degrees` about the image centre.

    90 degrees on a square image equals `tf.image.rot90(image)`.
    """
    radians = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    shape = tf.shape(image)
    height = tf.cast(shape[0], tf.float32) - 1.0
    width = tf.cast(shape[1], tf.float32) - 1.0
    cos, sin = tf.cos(radians), tf.sin(radians)
    # Rotation about ((width - 1) / 2, (height - 1) / 2), output -> input.
    x_offset = (width - (cos * width - sin * height)) / 2.0
    y_offset = (height - (sin * width + cos * height)) / 2.0
    matrix = tf.stack([cos, -sin, x_offset, sin, cos, y_offset, 0.0, 0.0])
    return transform(image, matrix, fill_value)


def translate_x(image: tf.Tensor, pixels, fill_value: int = FILL_VALUE) -> tf.Tensor:
    """PIL `Translate` in x: `out(x, y) = in(x + pixels, y)` (absolute px)."""
    pixels = tf.cast(pixels, tf.float32)
    return transform(image, tf.stack([1.0, 0.0, pixels, 0.0, 1.0, 0.0, 0.0, 0.0]), fill_value)


def translate_y(image: tf.Tensor, pixels, fill_value: int = FILL_VALUE) -> tf.Tensor:
    """PIL `Translate` in y: `out(x, y) = in(x, y + pixels)` (absolute px)."""
    pixels = tf.cast(pixels, tf.float32)
    return transform(image, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, pixels, 0.0, 0.0]), fill_value)


def shear_x(image: tf.Tensor, level, fill_value: int = FILL_VALUE) -> tf.Tensor:
    """PIL shear along x: `out(x, y) = in(x + level * y, y)`."""
    level = tf.cast(level, tf.float32)
    return transform(image, tf.stack([1.0, level, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]), fill_value)


def shear_y(image: tf.Tensor, level, fill_value: int = FILL_VALUE) -> tf.Tensor:
    """PIL shear along y: `out(x, y) = in(x, level * x + y)`."""
    level = tf.cast(level, tf.float32)
    return transform(image, tf.stack([1.0, 0.0, 0.0, level, 1.0, 0.0, 0.0, 0.0]), fill_value)


def cutout(image: tf.Tensor, pad_size, replace=FILL_VALUE, seed: SeedLike = None) -> tf.Tensor:
    """Fills a square of side up to `2 * pad_size` with `replace`.

    The centre (cy, cx) is uniform over the image; the square covers rows
    `[cy - pad_size, cy + pad_size)` and the same for columns, clipped at the
    borders.

    Args:
        image: `[height, width, channels]` image of any dtype.
        pad_size: half side of the square (int or scalar tensor).
        replace: fill value, a scalar or a tensor broadcastable to `image`
            (the fine-tune path passes per-pixel noise).
        seed: shape-[2] seed, or None.

    Returns:
        The image with the square filled.
    """
    seeds = split_seed(seed, 2)
    shape = tf.shape(image)
    center_y = _uniform(seeds[0], 0, shape[0], tf.int32)
    center_x = _uniform(seeds[1], 0, shape[1], tf.int32)
    rows = tf.range(shape[0])[:, None, None]
    cols = tf.range(shape[1])[None, :, None]
    inside = (
        (rows >= center_y - pad_size)
        & (rows < center_y + pad_size)
        & (cols >= center_x - pad_size)
        & (cols < center_x + pad_size)
    )
    fill = tf.cast(replace, image.dtype) * tf.ones_like(image)
    return tf.where(inside, fill, image)


# ----------------------------------------------------------------------------
# Level -> argument mappings and the op table.
# ----------------------------------------------------------------------------
def _enhance_factor(level: float) -> float:
    return level / _MAX_LEVEL * 1.8 + 0.1


def level_to_arg(
    name: str, level: float, translate_const: float = 100.0, cutout_const: float = 40.0
):
    """Returns an op's (unsigned) argument for a level on the 0-10 scale.

    Follows the official mappings: Rotate `level/10*30` degrees; Posterize
    `int(level/10*4)` bits; Solarize threshold `int(level/10*256)` (which
    `solarize` wraps modulo 256 by default); SolarizeAdd
    `int(level/10*110)`; Color/Contrast/Brightness/Sharpness factor
    `level/10*1.8 + 0.1`; Shear `level/10*0.3`; Translate
    `level/10*translate_const` pixels; Cutout pad `int(level/10*cutout_const)`.
    Ops without an argument return None. Signed ops (Rotate, Shear*,
    Translate*) are negated with probability 1/2 when applied.

    Args:
        name: op name, one of `RANDAUGMENT_OPS`.
        level: magnitude (float; values above 10 extrapolate).
        translate_const: pixels of translation at level 10.
        cutout_const: cutout pad size at level 10.

    Returns:
        A Python number, or None for AutoContrast, Equalize and Invert.

    Raises:
        ValueError: for an unknown op name.
    """
    fraction = level / _MAX_LEVEL
    mapping = {
        'AutoContrast': lambda: None,
        'Equalize': lambda: None,
        'Invert': lambda: None,
        'Rotate': lambda: fraction * 30.0,
        'Posterize': lambda: int(fraction * 4),
        'Solarize': lambda: int(fraction * 256),
        'SolarizeAdd': lambda: int(fraction * 110),
        'Color': lambda: _enhance_factor(level),
        'Contrast': lambda: _enhance_factor(level),
        'Brightness': lambda: _enhance_factor(level),
        'Sharpness': lambda: _enhance_factor(level),
        'ShearX': lambda: fraction * 0.3,
        'ShearY': lambda: fraction * 0.3,
        'TranslateX': lambda: fraction * float(translate_const),
        'TranslateY': lambda: fraction * float(translate_const),
        'Cutout': lambda: int(fraction * cutout_const),
    }
    if name not in mapping:
        raise ValueError(
            f'Argument `name` must be one of {sorted(mapping)}; received name={name!r}.'
        )
    return mapping[name]()


def _branch_table(fill_value: int, solarize_wrap: bool):
    """name -> fn(image, arg, seed) for the 16 ops (arg already signed)."""
    return {
        'AutoContrast': lambda image, arg, seed: autocontrast(image),
        'Equalize': lambda image, arg, seed: equalize(image),
        'Invert': lambda image, arg, seed: invert(image),
        'Rotate': lambda image, arg, seed: rotate(image, arg, fill_value),
        'Posterize': lambda image, arg, seed: posterize(image, arg),
        'Solarize': lambda image, arg, seed: solarize(image, arg, solarize_wrap),
        'Color': lambda image, arg, seed: color(image, arg),
        'Contrast': lambda image, arg, seed: contrast(image, arg),
        'Brightness': lambda image, arg, seed: brightness(image, arg),
        'Sharpness': lambda image, arg, seed: sharpness(image, arg),
        'ShearX': lambda image, arg, seed: shear_x(image, arg, fill_value),
        'ShearY': lambda image, arg, seed: shear_y(image, arg, fill_value),
        'TranslateX': lambda image, arg, seed: translate_x(image, arg, fill_value),
        'TranslateY': lambda image, arg, seed: translate_y(image, arg, fill_value),
        'Cutout': lambda image, arg, seed: cutout(image, tf.cast(arg, tf.int32), fill_value, seed),
        'SolarizeAdd': lambda image, arg, seed: solarize_add(image, arg),
    }


_SIGNED_OPS = ('Rotate', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY')
# Index of the "do nothing" branch appended after the 16 ops.
IDENTITY = len(RANDAUGMENT_OPS)


def op_index(name: str) -> int:
    """Index of an op in `RANDAUGMENT_OPS`; ValueError names the valid ops."""
    if name not in RANDAUGMENT_OPS:
        raise ValueError(
            f'Argument `name` must be one of {RANDAUGMENT_OPS}; received name={name!r}.'
        )
    return RANDAUGMENT_OPS.index(name)


def apply_op(
    image: tf.Tensor,
    index,
    arg,
    seed: SeedLike = None,
    fill_value: int = FILL_VALUE,
    solarize_wrap: bool = True,
) -> tf.Tensor:
    """Applies op number `index` (or nothing when `index == IDENTITY`).

    One `tf.switch_case` over the 16 ops serves RandAugment and AutoAugment,
    so only the selected op runs and the graph stays small.

    Args:
        image: uint8 `[height, width, 3]` image.
        index: int32 scalar, position in `RANDAUGMENT_OPS` or `IDENTITY`.
        arg: float scalar from `level_to_arg` (0 for ops without one);
            negated with probability 1/2 for Rotate, Shear* and Translate*.
        seed: shape-[2] seed (sign and cutout position), or None.
        fill_value: gray value for geometric ops and cutout.
        solarize_wrap: Solarize's threshold wraps modulo 256 (see
            `solarize`).

    Returns:
        The augmented uint8 image.
    """
    index = tf.convert_to_tensor(index, tf.int32)
    sign_seed, op_seed = tf.unstack(split_seed(seed, 2))
    signed = tf.gather(tf.constant([n in _SIGNED_OPS for n in RANDAUGMENT_OPS] + [False]), index)
    arg = tf.cast(arg, tf.float32)
    arg = tf.where(signed, _randomly_negate(arg, sign_seed), arg)
    table = _branch_table(fill_value, solarize_wrap)
    branches = [functools.partial(table[name], image, arg, op_seed) for name in RANDAUGMENT_OPS]
    branches.append(lambda: tf.identity(image))
    return tf.switch_case(index, branches)


def _arg_or_zero(name, level, constants):
    arg = level_to_arg(name, level, **constants)
    return 0.0 if arg is None else float(arg)


def check_pixel_scale(pixel_scale, name='pixel_scale'):
    """Raises ValueError unless `pixel_scale` is a number > 0 (`name` says which argument)."""
    if isinstance(pixel_scale, bool) or not (
        isinstance(pixel_scale, numbers.Real) and pixel_scale > 0
    ):
        raise ValueError(
            f'Argument `{name}` must be a number > 0; received: {name}={pixel_scale!r}.'
        )


def scale_pixel_constants(constants, pixel_scale):
    """`constants` (translate and cutout, in pixels) times `pixel_scale`.

    The released constants are absolute pixels, set for ImageNet sizes; a progressive stage
    smaller than the final size can scale them by `stage size / final size`, so that
    Translate and Cutout take the same share of its image as at the final size.
    """
    check_pixel_scale(pixel_scale)
    return {key: value * pixel_scale for key, value in constants.items()}


# ----------------------------------------------------------------------------
# Policies.
# ----------------------------------------------------------------------------
def randaugment(
    image: tf.Tensor,
    num_layers: int = 2,
    magnitude: float = 10.0,
    seed: SeedLike = None,
    solarize_wrap: bool = True,
    pixel_scale: float = 1.0,
) -> tf.Tensor:
    """Applies RandAugment: `num_layers` uniformly chosen ops, each always.

    Args:
        image: uint8 `[height, width, 3]` image.
        num_layers: number of ops applied in sequence (N).
        magnitude: shared magnitude (M), float, official scale (5-20 typical).
        seed: shape-[2] seed, or None.
        solarize_wrap: Solarize's threshold wraps modulo 256 (see
            `solarize`).
        pixel_scale: multiplies the pixel constants, translate 100 and cutout 40 at
            magnitude 10 (see `scale_pixel_constants`); 1 is the released behaviour.

    Returns:
        The augmented uint8 image.
    """
    constants = scale_pixel_constants(RANDAUGMENT_CONSTANTS, pixel_scale)
    args = tf.constant(
        [_arg_or_zero(name, float(magnitude), constants) for name in RANDAUGMENT_OPS],
        tf.float32,
    )
    layer_seeds = split_seed(seed, max(int(num_layers), 1))
    for layer in range(int(num_layers)):
        pick_seed, op_seed = tf.unstack(split_seed(layer_seeds[layer], 2))
        index = _uniform(pick_seed, 0, len(RANDAUGMENT_OPS), tf.int32)
        image = apply_op(image, index, tf.gather(args, index), op_seed, solarize_wrap=solarize_wrap)
    return image


def autoaugment(
    image: tf.Tensor,
    seed: SeedLike = None,
    policy=POLICY_V0,
    solarize_wrap: bool = True,
    pixel_scale: float = 1.0,
) -> tf.Tensor:
    """Applies an AutoAugment policy (default v0) to one image.

    One sub-policy is chosen uniformly; each of its ops is applied with its
    probability (`floor(U + p)`). Uses translate 250 px and cutout 100 px per
    10 levels.

    Args:
        image: uint8 `[height, width, 3]` image.
        seed: shape-[2] seed, or None.
        policy: sequence of sub-policies, each a sequence of
            `(op_name, probability, level)` of the same length.
        solarize_wrap: Solarize's threshold wraps modulo 256 (see
            `solarize`), which makes v0's `Solarize(0.6, 10)` an Invert.
        pixel_scale: multiplies the pixel constants (translate 250, cutout 100); see
            `scale_pixel_constants`.

    Returns:
        The augmented uint8 image.
    """
    constants = scale_pixel_constants(AUTOAUGMENT_CONSTANTS, pixel_scale)
    ops = tf.constant([[op_index(n) for n, _, _ in sub] for sub in policy], tf.int32)
    probs = tf.constant([[p for _, p, _ in sub] for sub in policy], tf.float32)
    args = tf.constant(
        [[_arg_or_zero(n, float(lvl), constants) for n, _, lvl in sub] for sub in policy],
        tf.float32,
    )
    pick_seed, steps_seed = tf.unstack(split_seed(seed, 2))
    chosen = _uniform(pick_seed, 0, len(policy), tf.int32)
    step_seeds = split_seed(steps_seed, len(policy[0]))
    for step in range(len(policy[0])):
        apply_seed, op_seed = tf.unstack(split_seed(step_seeds[step], 2))
        apply = tf.floor(_uniform(apply_seed) + probs[chosen, step]) > 0
        index = tf.where(apply, ops[chosen, step], IDENTITY)
        image = apply_op(image, index, args[chosen, step], op_seed, solarize_wrap=solarize_wrap)
    return image


def distort_image(
    image: tf.Tensor,
    policy: str,
    ra_num_layers: int = 2,
    ra_magnitude: float = 10.0,
    seed: SeedLike = None,
    solarize_wrap: bool = True,
    pixel_scale: float = 1.0,
) -> tf.Tensor:
    """Applies 'randaug', 'autoaug' (v0) or 'ra_aa' (either, p = 1/2 each).

    Args:
        image: uint8 `[height, width, 3]` image.
        policy: one of `POLICIES`.
        ra_num_layers: RandAugment N.
        ra_magnitude: RandAugment M.
        seed: shape-[2] seed, or None.
        solarize_wrap: Solarize's threshold wraps modulo 256 (see
            `solarize`).
        pixel_scale: multiplies the policies' pixel constants (translate, cutout); see
            `scale_pixel_constants`.

    Returns:
        The augmented uint8 image.

    Raises:
        ValueError: for an unknown policy.
    """
    run_randaug = functools.partial(
        randaugment,
        num_layers=ra_num_layers,
        magnitude=ra_magnitude,
        solarize_wrap=solarize_wrap,
        pixel_scale=pixel_scale,
    )
    run_autoaug = functools.partial(
        autoaugment, solarize_wrap=solarize_wrap, pixel_scale=pixel_scale
    )
    if policy == 'randaug':
        return run_randaug(image, seed=seed)
    if policy == 'autoaug':
        return run_autoaug(image, seed=seed)
    if policy == 'ra_aa':
        pick_seed, aug_seed = tf.unstack(split_seed(seed, 2))
        use_autoaug = _uniform(pick_seed, 0, 2, tf.int32) == 0
        return tf.cond(
            use_autoaug,
            lambda: run_autoaug(image, seed=aug_seed),
            lambda: run_randaug(image, seed=aug_seed),
        )
    raise ValueError(f'Argument `policy` must be one of {POLICIES}; received policy={policy!r}.')
