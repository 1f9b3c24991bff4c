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

The evaluation transform has one implementation, used by the eval input
pipeline, `--mode=infer`, the exported SavedModel signatures and TFLite:
`eval_window` (the crop rule: centre crop or not, the V2 no-crop size, the
legacy rounding) and `eval_resize_and_normalize` (resize and pixel scaling).
`decode_and_crop`/`finish` call them when `is_training` is False, and
`preprocess_for_eval` applies them to one image or a batch (encoded bytes, or
uint8/float pixels of any size) in eager code or inside a graph.

All randomness is stateless and driven by a shape-[2] `seed`.
"""

from collections.abc import Sequence
import dataclasses

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
    "containing 'cutout'"
)


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

    family: str | None = None
    policies: tuple[str, ...] = ()
    noise_cutout: bool = False


def parse_augname(augname: str | None) -> AugmentSpec:
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
    raise ValueError(f'Argument `augname` must be {_VALID_AUGNAMES}; received augname={augname!r}.')


def resolve_family(preprocess: str | None, augname: str | None, default: str | None = None) -> str:
    """Chooses the transform family from explicit and implied choices.

    Order: the explicit `preprocess`, then the family the augname implies,
    then `default` (e.g. a dataset's hint), then 'v2'.

    An explicit `preprocess` always wins. The released code picks the family
    from `augname` alone (legacy only for the `effnetv1_*` names, V2 for None
    and the V2 policies); the recipes that differ from a model's own family
    say so themselves (the ImageNet-21k recipe sets `preprocess='v2'` for
    every model, as the released code trains V1 and V2-B0..B3 there).

    Raises:
        ValueError: for an unknown family, or when `preprocess` contradicts
            the family that `augname` implies.
    """
    implied = parse_augname(augname).family
    if preprocess is not None:
        if preprocess not in FAMILIES:
            raise ValueError(
                f'Argument `preprocess` must be one of {FAMILIES} or None; '
                f'received preprocess={preprocess!r}.'
            )
        if implied is not None and implied != preprocess:
            raise ValueError(
                f'Argument `preprocess` must agree with augname={augname!r}, '
                f'which implies the {implied!r} family; received '
                f'preprocess={preprocess!r}.'
            )
        return preprocess
    family = implied or default or 'v2'
    if family not in FAMILIES:
        raise ValueError(
            f'Argument `default` must be one of {FAMILIES} or None; received default={default!r}.'
        )
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
    raise ValueError(f'Argument `family` must be one of {FAMILIES}; received family={family!r}.')


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
    raise ValueError(f'Argument `family` must be one of {FAMILIES}; received family={family!r}.')


def resize_bicubic_legacy(image: tf.Tensor, size: int, builtin_ops_only: bool = False) -> tf.Tensor:
    """TF1 `resize_bicubic` (align_corners=False, half_pixel_centers=False).

    Cubic coefficient -0.75 and the asymmetric mapping `src = dst * in / out`;
    this differs from TF2 `tf.image.resize(method='bicubic')`. Output float32,
    possibly outside [0, 255].

    Args:
        image: `[h, w, c]` or `[n, h, w, c]`, any real dtype.
        size: output side.
        builtin_ops_only: compute it as two matrix products instead of the
            `ResizeBicubic` kernel (which TFLite has only as a Select TF op);
            equal to the kernel up to float rounding.
    """
    image = tf.convert_to_tensor(image)
    batched = image.shape.rank == 4
    images = image if batched else image[None]
    if builtin_ops_only:
        images = tf.cast(images, tf.float32)
        shape = tf.shape(images)
        rows = _legacy_bicubic_matrix(shape[1], size)
        cols = _legacy_bicubic_matrix(shape[2], size)
        out = tf.einsum('ay,nyxc,bx->nabc', rows, images, cols)
    else:
        out = tf.raw_ops.ResizeBicubic(
            images=images, size=[size, size], align_corners=False, half_pixel_centers=False
        )
    return out if batched else out[0]


def _legacy_bicubic_matrix(in_size: tf.Tensor, out_size: int) -> tf.Tensor:
    """`[out_size, in_size]` interpolation weights of the TF1 bicubic kernel.

    As the kernel: `src = dst * (in / out)` in float32, the fractional part
    rounded to a 1/1024 step (its weight table), coefficient -0.75, taps
    clamped at the border.
    """
    scale = tf.cast(in_size, tf.float32) / float(out_size)
    src = tf.range(out_size, dtype=tf.float32) * scale
    base = tf.floor(src)
    t = tf.round((src - base) * 1024.0) / 1024.0
    a = -0.75

    def near(x):  # |x| <= 1
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a

    weights = tf.stack([far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)], axis=1)
    taps = tf.cast(base, tf.int32)[:, None] + tf.range(-1, 3)[None, :]
    taps = tf.clip_by_value(taps, 0, in_size - 1)
    return tf.reduce_sum(tf.one_hot(taps, in_size, dtype=tf.float32) * weights[..., None], axis=1)


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


def _center_window(shape: tf.Tensor, image_size: int, legacy: bool) -> tf.Tensor:
    """Centre square window `[y, x, side, side]` for the eval crop."""
    height, width = shape[0], shape[1]
    ratio = image_size / (image_size + CROP_PADDING)
    side = tf.cast(ratio * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
    rounding = 1 if legacy else 0
    return tf.stack([(height - side + rounding) // 2, (width - side + rounding) // 2, side, side])


def _whole_window(shape: tf.Tensor) -> tf.Tensor:
    return tf.stack([0, 0, shape[0], shape[1]])


def _check_family(family):
    if family not in FAMILIES:
        raise ValueError(
            f'Argument `family` must be one of {FAMILIES}; received family={family!r}.'
        )


def eval_window(
    shape: tf.Tensor, image_size: int, family: str, center_crop: bool = True
) -> tf.Tensor:
    """The evaluation crop `[top, left, height, width]` of an image.

    'v2': centre square of side `int(S / (S + 32) * min(h, w))` at
    `((h - c) // 2, (w - c) // 2)` for S below 320, the whole image from 320
    on; 'legacy': the same square at `((h - c + 1) // 2, ...)` at any size;
    'ft', and any family with `center_crop=False`: the whole image.

    Args:
        shape: `[height, width]` int32 tensor.
        image_size: output side S of the transform.
        family: 'v2', 'legacy' or 'ft'.
        center_crop: False keeps the whole image (digits).
    """
    _check_family(family)
    if family == 'ft' or not center_crop or (family == 'v2' and image_size >= V2_NO_CROP_SIZE):
        return _whole_window(shape)
    return _center_window(shape, image_size, family == 'legacy')


def eval_resize_and_normalize(
    image: tf.Tensor, image_size: int, family: str, builtin_ops_only: bool = False
) -> tf.Tensor:
    """Second half of the evaluation transform: resize a crop and scale it.

    'v2' and 'ft': bilinear (for 'ft' after the scaling, as the fine-tune
    code does); 'legacy': TF1 bicubic. Works on `[h, w, 3]` and
    `[n, h, w, 3]` pixels (uint8 or float, 0..255).

    Args:
        builtin_ops_only: see `resize_bicubic_legacy` (for TFLite).

    Returns:
        float32 `[..., image_size, image_size, 3]`.
    """
    _check_family(family)
    if family == 'ft':
        return resize_bilinear(normalize(image, 'ft'), image_size)
    if family == 'legacy':
        image = resize_bicubic_legacy(image, image_size, builtin_ops_only)
    else:
        image = resize_bilinear(image, image_size)
    return normalize(image, family)


def _v2_random_window(shape, seed, area_range):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.concat([shape, [3]], 0),
        tf.zeros([0, 0, 4], tf.float32),
        seed=seed,
        min_object_covered=0.0,
        area_range=area_range,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def _legacy_random_window(shape, seed, area_range, image_size):
    """Legacy Inception window; falls back to the centre crop on failure."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.concat([shape, [3]], 0),
        tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        seed=seed,
        min_object_covered=0.1,
        aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0),
        area_range=area_range,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    # Sampling failed when the window is the whole image. (The official code
    # also compares the channel count, so it never falls back for
    # grayscale JPEGs; that quirk is not reproduced.)
    failed = tf.reduce_all(tf.equal(size[:2], shape))
    return tf.where(failed, _center_window(shape, image_size, True), window)


def _slice(image, window):
    return tf.slice(
        image, tf.stack([window[0], window[1], 0]), tf.stack([window[2], window[3], -1])
    )


def _crop_with_window_fn(payload, window_fn, jpeg_window_decode):
    """Decodes `payload` and crops it to `window_fn(shape)`.

    With `jpeg_window_decode`, JPEG bytes are cropped while decoding
    (`decode_and_crop_jpeg` on the header shape), as the legacy code does.
    """
    if _is_encoded(payload) and jpeg_window_decode:

        def jpeg_branch():
            shape = tf.image.extract_jpeg_shape(payload)[:2]
            return tf.image.decode_and_crop_jpeg(payload, window_fn(shape), channels=3)

        def other_branch():
            image = decode(payload)
            return _slice(image, window_fn(tf.shape(image)[:2]))

        image = tf.cond(tf.io.is_jpeg(payload), jpeg_branch, other_branch)
    else:
        image = decode(payload)
        image = _slice(image, window_fn(tf.shape(image)[:2]))
    image.set_shape([None, None, 3])
    return image


def decode_and_crop(
    payload: tf.Tensor,
    family: str,
    is_training: bool,
    image_size: int,
    seed: augment.SeedLike = None,
    area_range: Sequence[float] | None = None,
    center_crop: bool = True,
) -> tf.Tensor:
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
            f'Argument `family` must be one of {FAMILIES}; received family={family!r}.'
        )
    if is_training:
        seed = augment.as_seed(seed)
        if legacy:
            area = tuple(area_range or LEGACY_AREA_RANGE)
            window_fn = lambda shape: _legacy_random_window(  # noqa: E731
                shape, seed, area, image_size
            )
        else:
            area = tuple(area_range or V2_AREA_RANGE)
            window_fn = lambda shape: _v2_random_window(  # noqa: E731
                shape, seed, area
            )
    else:
        window_fn = lambda shape: eval_window(  # noqa: E731
            shape, image_size, family, center_crop
        )
    return _crop_with_window_fn(payload, window_fn, jpeg_window_decode=legacy)


# ----------------------------------------------------------------------------
# Stage 2: resize, flip, augment, normalise.
# ----------------------------------------------------------------------------
def _apply_policies(
    image_uint8, spec, ra_num_layers, ra_magnitude, seed, solarize_wrap=True, pixel_scale=1.0
):
    seeds = augment.split_seed(seed, max(len(spec.policies), 1))
    for i, policy in enumerate(spec.policies):
        image_uint8 = augment.distort_image(
            image_uint8,
            policy,
            ra_num_layers,
            ra_magnitude,
            seeds[i],
            solarize_wrap=solarize_wrap,
            pixel_scale=pixel_scale,
        )
    return image_uint8


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
    """Clips float pixels to [0, 255] and casts (truncation)."""
    return tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8)


def finish(
    image: tf.Tensor,
    family: str,
    is_training: bool,
    image_size: int,
    augname: str | None = None,
    ra_num_layers: int = 2,
    ra_magnitude: float = 15.0,
    random_flip: bool = True,
    seed: augment.SeedLike = None,
    solarize_wrap: bool = True,
    augment_pixel_scale: float = 1.0,
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
        augment_pixel_scale: multiplies the policies' pixel constants (translate and
            cutout; see `augment.scale_pixel_constants`); 1 is the released behaviour.

    Returns:
        float32 `[image_size, image_size, 3]`, normalised for the family.
    """
    if not is_training:
        image = eval_resize_and_normalize(image, image_size, family)
        image.set_shape([image_size, image_size, 3])
        return image
    spec = parse_augname(augname)
    seeds = augment.split_seed(seed, 3)
    if family == 'ft':
        return _finish_ft(
            image,
            is_training,
            image_size,
            spec,
            ra_num_layers,
            ra_magnitude,
            random_flip,
            seeds,
            solarize_wrap,
            augment_pixel_scale,
        )
    if family == 'legacy':
        image = resize_bicubic_legacy(image, image_size)
    elif family == 'v2':
        image = resize_bilinear(image, image_size)
    else:
        raise ValueError(
            f'Argument `family` must be one of {FAMILIES}; received family={family!r}.'
        )
    if is_training and random_flip:
        image = tf.image.stateless_random_flip_left_right(image, seeds[0])
    if spec.policies:
        augmented = _apply_policies(
            _to_uint8(image),
            spec,
            ra_num_layers,
            ra_magnitude,
            seeds[1],
            solarize_wrap,
            augment_pixel_scale,
        )
        image = tf.cast(augmented, tf.float32)
    image = normalize(image, family)
    image.set_shape([image_size, image_size, 3])
    return image


def _finish_ft(
    image,
    is_training,
    image_size,
    spec,
    ra_num_layers,
    ra_magnitude,
    random_flip,
    seeds,
    solarize_wrap=True,
    pixel_scale=1.0,
):
    """Fine-tune family: normalise, resize whole image, flip, policy, cutout."""
    image = resize_bilinear(normalize(image, 'ft'), image_size)
    if is_training and random_flip:
        image = tf.image.stateless_random_flip_left_right(image, seeds[0])
    if spec.policies:
        augmented = _apply_policies(
            _to_uint8(denormalize(image, 'ft')),
            spec,
            ra_num_layers,
            ra_magnitude,
            seeds[1],
            solarize_wrap,
            pixel_scale,
        )
        image = normalize(augmented, 'ft')
    if spec.noise_cutout:
        cutout_seed, noise_seed = tf.unstack(augment.split_seed(seeds[2], 2))
        noise = tf.random.stateless_uniform(
            [image_size, image_size, 3], noise_seed, 0.0, 1.0, tf.float32
        )
        image = augment.cutout(image, image_size // 4, noise, cutout_seed)
    image.set_shape([image_size, image_size, 3])
    return image


def preprocess_image(
    image: tf.Tensor,
    image_size: int,
    is_training: bool = False,
    family: str = 'v2',
    augname: str | None = None,
    ra_num_layers: int = 2,
    ra_magnitude: float = 15.0,
    image_dtype: tf.DType = tf.float32,
    seed: augment.SeedLike = None,
    area_range: Sequence[float] | None = None,
    center_crop: bool = True,
    random_flip: bool = True,
    solarize_wrap: bool = True,
) -> tf.Tensor:
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
        tf.unstack(augment.split_seed(seed, 2)) if is_training else (None, None)
    )
    image = decode_and_crop(
        image, family, is_training, image_size, crop_seed, area_range, center_crop
    )
    image = finish(
        image,
        family,
        is_training,
        image_size,
        augname,
        ra_num_layers,
        ra_magnitude,
        random_flip,
        finish_seed,
        solarize_wrap,
    )
    return tf.cast(image, image_dtype)


def preprocess_for_eval(
    images: tf.Tensor,
    image_size: int,
    family: str = 'v2',
    center_crop: bool = True,
    image_dtype: tf.DType = tf.float32,
    builtin_ops_only: bool = False,
) -> tf.Tensor:
    """The evaluation transform of one image or a batch, eager or in a graph.

    The same computation as the eval input pipeline (`decode_and_crop` then
    `finish` with `is_training=False`): crop by `eval_window`, then
    `eval_resize_and_normalize`. `--mode=infer`, the SavedModel signatures
    and TFLite export call this.

    Args:
        images: one of
            - a scalar string (an encoded JPEG/PNG/GIF/BMP): legacy JPEGs are
              cropped while decoding, as in the eval pipeline;
            - a `[n]` string batch of encoded images of any sizes;
            - pixels in 0..255, uint8 or float, `[h, w, c]` or `[n, h, w, c]`
              (one size per batch; c is 3, or 1 for grayscale).
        image_size: output side S.
        family: 'v2', 'legacy' or 'ft' (see `resolve_family`).
        center_crop: False: no crop for any family (digits).
        image_dtype: output dtype.
        builtin_ops_only: legacy bicubic without the `ResizeBicubic` kernel
            (for TFLite; see `resize_bicubic_legacy`).

    Returns:
        `[S, S, 3]` or `[n, S, S, 3]` of `image_dtype`, normalised for the
        family.
    """
    _check_family(family)
    images = tf.convert_to_tensor(images)
    if _is_encoded(images):

        def one(payload):
            crop = decode_and_crop(payload, family, False, image_size, center_crop=center_crop)
            image = eval_resize_and_normalize(crop, image_size, family, builtin_ops_only)
            image.set_shape([image_size, image_size, 3])
            return tf.cast(image, image_dtype)

        if images.shape.rank == 0:
            return one(images)
        return tf.map_fn(
            one, images, fn_output_signature=tf.TensorSpec([image_size, image_size, 3], image_dtype)
        )
    if images.shape.rank not in (3, 4):
        raise ValueError(
            'Argument `images` must be encoded bytes or pixels [h, w, c] / '
            f'[n, h, w, c]; received shape {images.shape}.'
        )
    batched = images.shape.rank == 4
    if not batched:
        images = images[None]
    if images.shape[-1] == 1:
        images = tf.image.grayscale_to_rgb(images)
    window = eval_window(tf.shape(images)[1:3], image_size, family, center_crop)
    images = tf.slice(
        images, tf.stack([0, window[0], window[1], 0]), tf.stack([-1, window[2], window[3], -1])
    )
    images = eval_resize_and_normalize(images, image_size, family, builtin_ops_only)
    images = tf.cast(images, image_dtype)
    return images if batched else images[0]
