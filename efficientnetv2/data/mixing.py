"""Mixup and CutMix on a batch, as the official EfficientNetV2 code does them.

* Mixup (Zhang et al. 2018, arXiv 1710.09412): per example
  `lam ~ Beta(alpha, alpha)`, `lam = max(lam, 1 - lam)`; the partner is the
  same batch reversed; images and labels are mixed with `lam`.
* CutMix (Yun et al. 2019, arXiv 1905.04899): per example a box with centre
  uniform over the image and side `int(sqrt(1 - a) * size)`,
  `a ~ Beta(alpha, alpha)`, is pasted from the reversed batch. The label
  weight is the mean of all the masks of the (half-)batch: one scalar shared
  by its examples, not a per-example area.
* Both alphas > 0: the first `B // 2` examples get mixup and the rest CutMix,
  each half reversed within itself.

Labels must be float (one-hot or multi-hot); mixed one-hot labels still sum to
1, so label smoothing can be applied afterwards in the loss.
"""

import tensorflow as tf

from efficientnetv2.data import augment


def sample_beta(shape, alpha: float, seed) -> tf.Tensor:
    """Samples Beta(alpha, alpha) statelessly, float32.

    Uses two float64 gamma draws, so small alphas rarely underflow; if both
    draws underflow to 0 the sample is 0.
    """
    gamma_seeds = augment.split_seed(seed, 2)
    alpha = tf.constant(alpha, tf.float64)
    first = tf.random.stateless_gamma(shape, gamma_seeds[0], alpha, dtype=tf.float64)
    second = tf.random.stateless_gamma(shape, gamma_seeds[1], alpha, dtype=tf.float64)
    return tf.cast(tf.math.divide_no_nan(first, first + second), tf.float32)


def mixup(
    images: tf.Tensor, labels: tf.Tensor, alpha: float, seed: augment.SeedLike = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """Mixes each example with the reversed batch, weight `max(lam, 1 - lam)`.

    Args:
        images: float `[batch, height, width, channels]`.
        labels: float `[batch, num_classes]`.
        alpha: Beta distribution parameter (> 0).
        seed: shape-[2] seed, or None.

    Returns:
        Mixed `(images, labels)`.
    """
    batch = tf.shape(images)[0]
    weight = sample_beta([batch], alpha, augment.as_seed(seed))
    weight = tf.maximum(weight, 1.0 - weight)
    image_weight = tf.cast(tf.reshape(weight, [-1, 1, 1, 1]), images.dtype)
    images = images * image_weight + images[::-1] * (1.0 - image_weight)
    label_weight = tf.cast(weight[:, None], labels.dtype)
    labels = labels * label_weight + labels[::-1] * (1.0 - label_weight)
    return images, labels


def cutmix_masks(batch, height, width, alpha: float, seed: augment.SeedLike = None) -> tf.Tensor:
    """Per-example CutMix masks, float32 `[batch, height, width, 1]`.

    For each example: centre `(r_x, r_y)` uniform integers in
    `[0, width) x [0, height)`, `a ~ Beta(alpha, alpha)`,
    `r_w = int(sqrt(1 - a) * width)`, `r_h = int(sqrt(1 - a) * height)`; the
    mask is 1 on columns `[r_x - r_w // 2, r_x + r_w // 2)` and rows
    `[r_y - r_h // 2, r_y + r_h // 2)`, clipped to the image.
    """
    seeds = augment.split_seed(seed, 3)
    center_x = tf.random.stateless_uniform([batch], seeds[0], 0, width, tf.int32)
    center_y = tf.random.stateless_uniform([batch], seeds[1], 0, height, tf.int32)
    ratio = tf.sqrt(1.0 - sample_beta([batch], alpha, seeds[2]))
    half_w = tf.cast(ratio * tf.cast(width, tf.float32), tf.int32) // 2
    half_h = tf.cast(ratio * tf.cast(height, tf.float32), tf.int32) // 2
    cols = tf.range(width)[None, None, :]
    rows = tf.range(height)[None, :, None]
    inside = (
        (cols >= (center_x - half_w)[:, None, None])
        & (cols < (center_x + half_w)[:, None, None])
        & (rows >= (center_y - half_h)[:, None, None])
        & (rows < (center_y + half_h)[:, None, None])
    )
    return tf.cast(inside, tf.float32)[..., None]


def cutmix(
    images: tf.Tensor, labels: tf.Tensor, alpha: float, seed: augment.SeedLike = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """Pastes boxes from the reversed batch; labels mixed by the mean box area.

    Args:
        images: float `[batch, height, width, channels]`.
        labels: float `[batch, num_classes]`.
        alpha: Beta distribution parameter (> 0).
        seed: shape-[2] seed, or None.

    Returns:
        Mixed `(images, labels)`.
    """
    shape = tf.shape(images)
    masks = cutmix_masks(shape[0], shape[1], shape[2], alpha, seed)
    area = tf.reduce_mean(masks)
    masks = tf.cast(masks, images.dtype)
    images = (1.0 - masks) * images + masks * images[::-1]
    area = tf.cast(area, labels.dtype)
    labels = (1.0 - area) * labels + area * labels[::-1]
    return images, labels


def mix_batch(
    images: tf.Tensor,
    labels: tf.Tensor,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    seed: augment.SeedLike = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Applies mixup and/or CutMix to a batch as the official pipeline does.

    Args:
        images: float `[batch, height, width, channels]` (static batch size
            needed when both alphas are positive).
        labels: float `[batch, num_classes]`.
        mixup_alpha: mixup Beta parameter; 0 disables.
        cutmix_alpha: CutMix Beta parameter; 0 disables.
        seed: shape-[2] seed, or None.

    Returns:
        `(images, labels)`, unchanged when both alphas are 0.

    Raises:
        ValueError: for a negative alpha.
    """
    for name, value in (('mixup_alpha', mixup_alpha), ('cutmix_alpha', cutmix_alpha)):
        if value is None or value < 0:
            raise ValueError(f'Argument `{name}` must be >= 0; received {name}={value!r}.')
    if not mixup_alpha and not cutmix_alpha:
        return images, labels
    mixup_seed, cutmix_seed = tf.unstack(augment.split_seed(seed, 2))
    if mixup_alpha and cutmix_alpha:
        half = tf.shape(images)[0] // 2
        first = mixup(images[:half], labels[:half], mixup_alpha, mixup_seed)
        second = cutmix(images[half:], labels[half:], cutmix_alpha, cutmix_seed)
        return (tf.concat([first[0], second[0]], 0), tf.concat([first[1], second[1]], 0))
    if mixup_alpha:
        return mixup(images, labels, mixup_alpha, mixup_seed)
    return cutmix(images, labels, cutmix_alpha, cutmix_seed)
