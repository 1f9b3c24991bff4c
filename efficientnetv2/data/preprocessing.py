"""Image preprocessing for EfficientNet(V2): crops, resizing, normalisation.

Three transform families, as in the official code (google/automl
`efficientnetv2/preprocessing.py` and `preprocess_legacy.py`):

* ``'v2'`` (V2-S/M/L/XL, ImageNet-21k): train = decode the whole image,
  Inception crop (`area_range=(0.05, 1)`, aspect (0.75, 1.33), 100 attempts,
  whole image when nothing fits), bilinear resize, random flip, optional
  RandAugment/AutoAugment on uint8; eval = centre crop of side
  `int(size / (size + 32) * min(h, w))` for sizes below 320, no crop at 320 and
  above, bilinear resize. Pixels scaled as `(x - 128) / 128`.
* ``'legacy'`` (V1 models, V2-b0..b3; augnames `effnetv1_*`): train =
  crop window sampled on the JPEG header (`min_object_covered=0.1`, aspect
  (3/4, 4/3), area (0.08, 1), 10 attempts; centre crop when sampling fails),
  `decode_and_crop_jpeg`, TF1 bicubic resize, flip, optional policy; eval =
  centre crop with offsets `(h - c + 1) // 2`, TF1 bicubic. Pixels normalised
  with the ImageNet mean/std (times 255).
* ``'ft'`` (all `*Ft` fine-tune configs; augnames `ft`, `ft_*`, `*cutout*`):
  scale to [-1, 1], resize the whole image (no crop), in training flip,
  optional policy, and for `ft`/`*cutout*` a cutout of pad `size // 4`
  filled with uniform noise in [0, 1).

The work is split in two stages so that an input pipeline can skip images that
fail to decode without also hiding bugs in later ops:
`decode_and_crop` (decode + crop, uint8, variable size) and `finish` (resize,
flip, augment, normalise, fixed size float32). `preprocess_image` runs both.

All randomness is stateless and driven by a shape-[2] `seed`.
"""

import dataclasses
from typing import Optional, Sequence, Tuple

import tensorflow as tf

from efficientnetv2.data import augment

FAMILIES = ('v2', 'legacy', 'ft')

# ImageNet mean and standard deviation of RGB pixels in [0, 1].
MEAN_RGB = (0.485, 0.456, 0.406)
STDDEV_RGB = (0.229, 0.224, 0.225)

# Inception-crop area ranges per family.
V2_AREA_RANGE = (0.05, 1.0)
LEGACY_AREA_RANGE = (0.08, 1.0)
# Centre crops keep size / (size + CROP_PADDING) of the short side.
CROP_PADDING = 32
# The V2 eval transform stops cropping at this size.
V2_NO_CROP_SIZE = 320

_VALID_AUGNAMES = (
    "None, 'randaug', 'autoaug', 'ra_aa', 'effnetv1_randaug', "
    "'effnetv1_autoaug', 'ft', 'ft_randaug', 'ft_autoaug', or a name "
    "containing 'cutout'")


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
    """What an augmentation name asks for.

    Attributes:
        family: transform family the name implies ('legacy' for `effnetv1_*`,
            'ft' for `ft*` and `*cutout*`), or None when it implies none.
        policies: uint8 policies to apply in order ('autoaug', 'randaug',
            'ra_aa').
        noise_cutout: whether to apply the fine-tune noise cutout.
    """

    family: Optional[str] = None
    policies: Tuple[str, ...] = ()
    noise_cutout: bool = False


def parse_augname(augname: Optional[str]) -> AugmentSpec:
    """Splits an official `data.augname` into family, policies and cutout.

    Args:
        augname: None/'' (no augmentation) or one of the official names:
            'randaug', 'autoaug', 'ra_aa' (V2 family), 'effnetv1_randaug',
            'effnetv1_autoaug' (legacy family), 'ft', 'ft_randaug',
            'ft_autoaug' and names containing 'cutout' (fine-tune family).

    Returns:
        The parsed `AugmentSpec`.

    Raises:
        ValueError: for an unknown name.
    """
    if not augname or augname.lower() == 'none':
        return AugmentSpec()
    name = augname.lower()
    if name in augment.POLICIES:
        return AugmentSpec(None, (name,))
    if name.startswith('effnetv1_') and name[9:] in ('randaug', 'autoaug'):
        return AugmentSpec('legacy', (name[9:],))
    if name.startswith('ft') or 'cutout' in name:
        policies = tuple(p for p in ('autoaug', 'randaug') if p in name)
        cutout = name == 'ft' or 'cutout' in name
        if policies or cutout:
            return AugmentSpec('ft', policies, cutout)
    raise ValueError(
        f'Argument `augname` must be {_VALID_AUGNAMES}; received '
        f'augname={augname!r}.')


def resolve_family(preprocess: Optional[str], augname: Optional[str],
                   default: Optional[str] = None) -> str:
    """Chooses the transform family from explicit and implied choices.

    Order: the explicit `preprocess`, then the family the augname implies, then
    `default` (e.g. a dataset's hint), then 'v2'.

    Raises:
        ValueError: for an unknown family, or when `preprocess` contradicts
            the family that `augname` implies.
    """
    implied = parse_augname(augname).family
    if preprocess is not None:
        if preprocess not in FAMILIES:
            raise ValueError(
                f'Argument `preprocess` must be one of {FAMILIES} or None; '
                f'received preprocess={preprocess!r}.')
        if implied is not None and implied != preprocess:
            raise ValueError(
                f'Argument `preprocess` must agree with augname={augname!r}, '
                f'which implies the {implied!r} family; received '
                f'preprocess={preprocess!r}.')
        return preprocess
    family = implied or default or 'v2'
    if family not in FAMILIES:
        raise ValueError(
            f'Argument `default` must be one of {FAMILIES} or None; '
            f'received default={default!r}.')
    return family


# ----------------------------------------------------------------------------
# Normalisation and resizing.
# ----------------------------------------------------------------------------
def normalize(image: tf.Tensor, family: str) -> tf.Tensor:
    """Scales [0, 255] pixels as the family expects; returns float32.

    'v2': `(x - 128) / 128`; 'legacy': `(x - 255 * mean) / (255 * std)` with
    the ImageNet mean/std; 'ft': `(x / 255 - 0.5) / 0.5`.
    """
    image = tf.cast(image, tf.float32)
    if family == 'v2':
        return (image - 128.0) / 128.0
    if family == 'legacy':
        mean = tf.constant([m * 255.0 for m in MEAN_RGB], tf.float32)
        std = tf.constant([s * 255.0 for s in STDDEV_RGB], tf.float32)
        return (image - mean) / std
    if family == 'ft':
        return (image / 255.0 - 0.5) / 0.5
    raise ValueError(
        f'Argument `family` must be one of {FAMILIES}; received '
        f'family={family!r}.')


def denormalize(image: tf.Tensor, family: str) -> tf.Tensor:
    """Inverse of `normalize`: returns float32 pixels on the [0, 255] scale."""
    image = tf.cast(image, tf.float32)
    if family == 'v2':
        return image * 128.0 + 128.0
    if family == 'legacy':
        mean = tf.constant([m * 255.0 for m in MEAN_RGB], tf.float32)
        std = tf.constant([s * 255.0 for s in STDDEV_RGB], tf.float32)
        return image * std + mean
    if family == 'ft':
        return (image * 0.5 + 0.5) * 255.0
    raise ValueError(
        f'Argument `family` must be one of {FAMILIES}; received '
        f'family={family!r}.')


def resize_bicubic_legacy(image: tf.Tensor, size: int) -> tf.Tensor:
    """TF1 `resize_bicubic` (align_corners=False, half_pixel_centers=False).

    Cubic coefficient -0.75 and the asymmetric mapping `src = dst * in / out`;
    this differs from TF2 `tf.image.resize(method='bicubic')`. Output float32,
    possibly outside [0, 255].
    """
    return tf.raw_ops.ResizeBicubic(
        images=image[None], size=[size, size], align_corners=False,
        half_pixel_centers=False)[0]


def resize_bilinear(image: tf.Tensor, size: int) -> tf.Tensor:
    """TF2 bilinear resize (half-pixel centres, no antialias), float32."""
    return tf.image.resize(image, [size, size], method='bilinear')


# ----------------------------------------------------------------------------
# Stage 1: decode and crop (uint8, variable size).
# ----------------------------------------------------------------------------
def _is_encoded(payload: tf.Tensor) -> bool:
    return payload.dtype == tf.string


def decode(payload: tf.Tensor) -> tf.Tensor:
    """Decodes encoded bytes (JPEG/PNG/GIF/BMP) to uint8 `[h, w, 3]`.

    A uint8 image is returned as is (grayscale `[h, w, 1]` becomes RGB).
    """
    if _is_encoded(payload):
        return tf.io.decode_image(payload, channels=3, expand_animations=False)
    image = tf.convert_to_tensor(payload)
    if image.shape.rank == 3 and image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    return tf.cast(image, tf.uint8)


def _center_window(shape: tf.Tensor, image_size: int, legacy: bool
                   ) -> tf.Tensor:
    """Centre square window `[y, x, side, side]` for the eval crop."""
    height, width = shape[0], shape[1]
    ratio = image_size / (image_size + CROP_PADDING)
    side = tf.cast(ratio * tf.cast(tf.minimum(height, width), tf.float32),
                   tf.int32)
    rounding = 1 if legacy else 0
    return tf.stack([(height - side + rounding) // 2,
                     (width - side + rounding) // 2, side, side])


def _whole_window(shape: tf.Tensor) -> tf.Tensor:
    return tf.stack([0, 0, shape[0], shape[1]])


def _v2_random_window(shape, seed, area_range):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.concat([shape, [3]], 0), tf.zeros([0, 0, 4], tf.float32),
        seed=seed, min_object_covered=0.0, area_range=area_range,
        use_image_if_no_bounding_boxes=True)
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def _legacy_random_window(shape, seed, area_range, image_size):
    """Legacy Inception window; falls back to the centre crop on failure."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.concat([shape, [3]], 0),
        tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        seed=seed, min_object_covered=0.1,
        aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0), area_range=area_range,
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    # Sampling failed when the window is the whole image. (The official code
    # also compares the channel count, so it never falls back for
    # grayscale JPEGs; that quirk is not reproduced.)
    failed = tf.reduce_all(tf.equal(size[:2], shape))
    return tf.where(failed, _center_window(shape, image_size, True), window)


def _slice(image, window):
    return tf.slice(image, tf.stack([window[0], window[1], 0]),
                    tf.stack([window[2], window[3], -1]))


def _crop_with_window_fn(payload, window_fn, jpeg_window_decode):
    """Decodes `payload` and crops it to `window_fn(shape)`.

    With `jpeg_window_decode`, JPEG bytes are cropped while decoding
    (`decode_and_crop_jpeg` on the header shape), as the legacy code does.
    """
    if _is_encoded(payload) and jpeg_window_decode:
        def jpeg_branch():
            shape = tf.image.extract_jpeg_shape(payload)[:2]
            return tf.image.decode_and_crop_jpeg(
                payload, window_fn(shape), channels=3)

        def other_branch():
            image = decode(payload)
            return _slice(image, window_fn(tf.shape(image)[:2]))

        image = tf.cond(tf.io.is_jpeg(payload), jpeg_branch, other_branch)
    else:
        image = decode(payload)
        image = _slice(image, window_fn(tf.shape(image)[:2]))
    image.set_shape([None, None, 3])
    return image


def decode_and_crop(payload: tf.Tensor, family: str, is_training: bool,
                    image_size: int, seed: augment.SeedLike = None,
                    area_range: Optional[Sequence[float]] = None,
                    center_crop: bool = True) -> tf.Tensor:
    """Stage 1: decodes an image and applies the family's crop.

    Args:
        payload: encoded image bytes (scalar string) or a uint8 image.
        family: 'v2', 'legacy' or 'ft'.
        is_training: random Inception crop if True, else the eval crop.
        image_size: output size of the whole transform (sets the eval crop).
        seed: shape-[2] seed for the random crop, or None.
        area_range: overrides the family's Inception-crop area range.
        center_crop: if False, eval uses the whole image (for tiny images
            such as 8x8 digits, where a centre crop would cut the content).

    Returns:
        uint8 `[h, w, 3]` crop (the whole image for the 'ft' family).
    """
    if family == 'ft':
        return decode(payload)
    legacy = family == 'legacy'
    if family not in FAMILIES:
        raise ValueError(
            f'Argument `family` must be one of {FAMILIES}; received '
            f'family={family!r}.')
    if is_training:
        seed = augment.as_seed(seed)
        if legacy:
            area = tuple(area_range or LEGACY_AREA_RANGE)
            window_fn = lambda shape: _legacy_random_window(  # noqa: E731
                shape, seed, area, image_size)
        else:
            area = tuple(area_range or V2_AREA_RANGE)
            window_fn = lambda shape: _v2_random_window(  # noqa: E731
                shape, seed, area)
    elif not center_crop or (not legacy and image_size >= V2_NO_CROP_SIZE):
        window_fn = _whole_window
    else:
        window_fn = lambda shape: _center_window(  # noqa: E731
            shape, image_size, legacy)
    return _crop_with_window_fn(payload, window_fn, jpeg_window_decode=legacy)


# ----------------------------------------------------------------------------
# Stage 2: resize, flip, augment, normalise.
# ----------------------------------------------------------------------------
def _apply_policies(image_uint8, spec, ra_num_layers, ra_magnitude, seed,
                    solarize_wrap=True):
    seeds = augment.split_seed(seed, max(len(spec.policies), 1))
    for i, policy in enumerate(spec.policies):
        image_uint8 = augment.distort_image(
            image_uint8, policy, ra_num_layers, ra_magnitude, seeds[i],
            solarize_wrap=solarize_wrap)
    return image_uint8


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
    """Clips float pixels to [0, 255] and casts (truncation)."""
    return tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8)


def finish(image: tf.Tensor, family: str, is_training: bool, image_size: int,
           augname: Optional[str] = None, ra_num_layers: int = 2,
           ra_magnitude: float = 15.0, random_flip: bool = True,
           seed: augment.SeedLike = None, solarize_wrap: bool = True
           ) -> tf.Tensor:
    """Stage 2: resizes, flips, augments and normalises a uint8 crop.

    Args:
        image: uint8 `[h, w, 3]` from `decode_and_crop`.
        family: 'v2', 'legacy' or 'ft'.
        is_training: enables flip, policies and cutout.
        image_size: output side in pixels.
        augname: augmentation name (see `parse_augname`); its policies are
            used whatever family it names (the family is chosen by the caller).
        ra_num_layers: RandAugment N.
        ra_magnitude: RandAugment M (official scale).
        random_flip: horizontal flip with p = 1/2 in training.
        seed: shape-[2] seed, or None.
        solarize_wrap: Solarize's threshold wraps modulo 256 as in the
            released code (see `augment.solarize`); False clamps it.

    Returns:
        float32 `[image_size, image_size, 3]`, normalised for the family.
    """
    spec = parse_augname(augname) if is_training else AugmentSpec()
    seeds = augment.split_seed(seed, 3) if is_training else [None] * 3
    if family == 'ft':
        return _finish_ft(image, is_training, image_size, spec, ra_num_layers,
                          ra_magnitude, random_flip, seeds, solarize_wrap)
    if family == 'legacy':
        image = resize_bicubic_legacy(image, image_size)
    elif family == 'v2':
        image = resize_bilinear(image, image_size)
    else:
        raise ValueError(
            f'Argument `family` must be one of {FAMILIES}; received '
            f'family={family!r}.')
    if is_training and random_flip:
        image = tf.image.stateless_random_flip_left_right(image, seeds[0])
    if spec.policies:
        augmented = _apply_policies(_to_uint8(image), spec, ra_num_layers,
                                    ra_magnitude, seeds[1], solarize_wrap)
        image = tf.cast(augmented, tf.float32)
    image = normalize(image, family)
    image.set_shape([image_size, image_size, 3])
    return image


def _finish_ft(image, is_training, image_size, spec, ra_num_layers,
               ra_magnitude, random_flip, seeds, solarize_wrap=True):
    """Fine-tune family: normalise, resize whole image, flip, policy, cutout."""
    image = resize_bilinear(normalize(image, 'ft'), image_size)
    if is_training and random_flip:
        image = tf.image.stateless_random_flip_left_right(image, seeds[0])
    if spec.policies:
        augmented = _apply_policies(_to_uint8(denormalize(image, 'ft')), spec,
                                    ra_num_layers, ra_magnitude, seeds[1],
                                    solarize_wrap)
        image = normalize(augmented, 'ft')
    if spec.noise_cutout:
        cutout_seed, noise_seed = tf.unstack(augment.split_seed(seeds[2], 2))
        noise = tf.random.stateless_uniform(
            [image_size, image_size, 3], noise_seed, 0.0, 1.0, tf.float32)
        image = augment.cutout(image, image_size // 4, noise, cutout_seed)
    image.set_shape([image_size, image_size, 3])
    return image


def preprocess_image(image: tf.Tensor, image_size: int,
                     is_training: bool = False, family: str = 'v2',
                     augname: Optional[str] = None, ra_num_layers: int = 2,
                     ra_magnitude: float = 15.0,
                     image_dtype: tf.DType = tf.float32,
                     seed: augment.SeedLike = None,
                     area_range: Optional[Sequence[float]] = None,
                     center_crop: bool = True, random_flip: bool = True,
                     solarize_wrap: bool = True) -> tf.Tensor:
    """Full single-image transform (both stages), e.g. for inference.

    Args:
        image: encoded bytes (scalar string) or a uint8 `[h, w, 3]` image.
        image_size: output side in pixels.
        is_training: training (random) or eval transform.
        family: 'v2', 'legacy' or 'ft'.
        augname: augmentation name (training only).
        ra_num_layers: RandAugment N.
        ra_magnitude: RandAugment M.
        image_dtype: output dtype (float32, bfloat16 or float16).
        seed: shape-[2] seed for the random parts, or None.
        area_range: overrides the Inception-crop area range.
        center_crop: eval centre crop on (see `decode_and_crop`).
        random_flip: training flip on.
        solarize_wrap: Solarize's threshold wraps modulo 256 (see `finish`).

    Returns:
        `[image_size, image_size, 3]` normalised image of `image_dtype`.
    """
    crop_seed, finish_seed = (
        tf.unstack(augment.split_seed(seed, 2)) if is_training
        else (None, None))
    image = decode_and_crop(image, family, is_training, image_size, crop_seed,
                            area_range, center_crop)
    image = finish(image, family, is_training, image_size, augname,
                   ra_num_layers, ra_magnitude, random_flip, finish_seed,
                   solarize_wrap)
    return tf.cast(image, image_dtype)
