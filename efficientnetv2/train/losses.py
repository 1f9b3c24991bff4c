"""Classification losses, L2 weight decay and gradient clipping of the recipe.

Facts (official code):
  * softmax cross-entropy with label smoothing `y' = y * (1 - ls) + ls / K`
    applied to the labels as they arrive, one-hot or already mixed by
    mixup / cutmix; mean over the batch;
  * multi-label data (ImageNet-21k): labels divided by their row sum first;
  * `sigmoid`: sigmoid cross-entropy with `y' = y * (1 - ls) + 0.5 * ls`,
    mean over batch and classes; `custom`: sigmoid cross-entropy summed over
    classes, mean over the batch, no smoothing;
  * L2 weight decay `wd * sum(0.5 * ||v||^2)` over conv, depthwise and dense
    kernels only (no biases, BN gamma/beta), added to the loss;
  * optional gradient clipping: each gradient to norm `c`, then the list to
    global norm `c`.

Distributed training: Keras 3 optimizers SUM gradients across replicas, so
each replica's loss must be its share of the global mean. Pass
`global_batch_size` to the cross-entropy functions (per-replica loss =
per-replica sum / global batch) and divide `l2_loss` by the number of
replicas (`tf.nn.scale_regularization_loss` does that in replica context).
"""

import tensorflow as tf

LOSS_TYPES = ('softmax', 'sigmoid', 'custom')

_DECAYED_SUFFIXES = ('kernel', 'depthwise_kernel', 'pointwise_kernel')


def softmax_cross_entropy(
    labels,
    logits,
    label_smoothing=0.0,
    normalize_labels=False,
    global_batch_size=None,
):
    """Softmax cross-entropy on soft labels with label smoothing.

    Args:
        labels: `[batch, K]` float labels (one-hot or mixed), or `[batch]`
            integer class ids (converted to one-hot).
        logits: `[batch, K]` logits (cast to float32).
        label_smoothing: `ls` in [0, 1]; labels become
            `y * (1 - ls) + ls / K`.
        normalize_labels: Divide each label row by its sum before smoothing
            (multi-label data; all-zero rows stay zero).
        global_batch_size: If given, return `sum / global_batch_size` (the
            per-replica share under `tf.distribute`); otherwise the mean over
            this batch.

    Returns:
        A float32 scalar.
    """
    logits, labels = _prepare(labels, logits)
    _check_smoothing(label_smoothing)
    if normalize_labels:
        row_sum = tf.reduce_sum(labels, axis=-1, keepdims=True)
        labels = tf.math.divide_no_nan(labels, row_sum)
    if label_smoothing:
        num_classes = tf.cast(tf.shape(logits)[-1], tf.float32)
        labels = labels * (1.0 - label_smoothing) + label_smoothing / num_classes
    per_example = tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return _reduce(per_example, global_batch_size)


def sigmoid_cross_entropy(
    labels,
    logits,
    label_smoothing=0.0,
    sum_over_classes=False,
    global_batch_size=None,
):
    """Sigmoid cross-entropy with label smoothing towards 0.5.

    Args:
        labels: `[batch, K]` float labels in [0, 1], or `[batch]` integer ids.
        logits: `[batch, K]` logits (cast to float32).
        label_smoothing: `ls`; labels become `y * (1 - ls) + 0.5 * ls`.
        sum_over_classes: If False (the `sigmoid` loss type) the result is
            the mean over batch and classes; if True (the `custom` type) the
            per-example losses are summed over classes and averaged over the
            batch.
        global_batch_size: If given, divide by it instead of this batch's
            size (the class count still divides when `sum_over_classes` is
            False).

    Returns:
        A float32 scalar.
    """
    logits, labels = _prepare(labels, logits)
    _check_smoothing(label_smoothing)
    if label_smoothing:
        labels = labels * (1.0 - label_smoothing) + 0.5 * label_smoothing
    elementwise = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    per_example = tf.reduce_sum(elementwise, axis=-1)
    if not sum_over_classes:
        per_example = per_example / tf.cast(tf.shape(logits)[-1], tf.float32)
    return _reduce(per_example, global_batch_size)


def classification_loss(
    labels,
    logits,
    loss_type='softmax',
    label_smoothing=0.1,
    normalize_labels=False,
    global_batch_size=None,
):
    """Dispatches to the loss named by `loss_type` (see `LOSS_TYPES`).

    `softmax`: `softmax_cross_entropy`; `sigmoid`: `sigmoid_cross_entropy`
    (mean over classes); `custom`: sigmoid cross-entropy summed over classes,
    without smoothing. `normalize_labels` applies to `softmax` only.

    Returns:
        A float32 scalar.
    """
    if loss_type == 'softmax':
        return softmax_cross_entropy(
            labels,
            logits,
            label_smoothing=label_smoothing,
            normalize_labels=normalize_labels,
            global_batch_size=global_batch_size,
        )
    if loss_type == 'sigmoid':
        return sigmoid_cross_entropy(
            labels, logits, label_smoothing=label_smoothing, global_batch_size=global_batch_size
        )
    if loss_type == 'custom':
        return sigmoid_cross_entropy(
            labels,
            logits,
            label_smoothing=0.0,
            sum_over_classes=True,
            global_batch_size=global_batch_size,
        )
    raise ValueError(
        f'Argument `loss_type` must be one of {list(LOSS_TYPES)}; received: '
        f'loss_type={loss_type!r}.'
    )


def is_decayed_variable(variable):
    """Whether L2 decay applies: conv, depthwise or dense kernels only.

    Selects names whose last component is `kernel` or ends in `_kernel`:
    Keras 3 paths (`stem_conv/kernel`; Keras 3 calls depthwise weights
    `kernel` too) and TF names (`conv2d/depthwise_kernel:0`). Biases, BN
    gamma/beta and moving statistics never match.
    """
    name = getattr(variable, 'path', None) or variable.name
    if name.endswith(':0'):
        name = name[:-2]
    last = name.rsplit('/', 1)[-1]
    return last in _DECAYED_SUFFIXES or last.endswith('_kernel')


def l2_loss(variables, weight_decay):
    """`weight_decay * sum(0.5 * ||v||^2)` over the decayed variables.

    Args:
        variables: Candidate variables (e.g. `model.trainable_variables`);
            only those selected by `is_decayed_variable` count.
        weight_decay: Coefficient (1e-5 in the recipe); 0 returns 0.

    Returns:
        A float32 scalar. Under `tf.distribute` with summed gradients divide
        it by the number of replicas.
    """
    if weight_decay < 0:
        raise ValueError(
            f'Argument `weight_decay` must be >= 0; received: weight_decay={weight_decay!r}.'
        )
    selected = [v for v in variables if is_decayed_variable(v)]
    if not weight_decay or not selected:
        return tf.constant(0.0, tf.float32)
    total = tf.add_n(
        [tf.nn.l2_loss(tf.cast(tf.convert_to_tensor(v), tf.float32)) for v in selected]
    )
    return tf.constant(weight_decay, tf.float32) * total


def clip_gradients(gradients, clip_norm):
    """Clips each gradient to norm `clip_norm`, then all to global norm.

    Args:
        gradients: List of gradient tensors (`None` entries are kept).
        clip_norm: Threshold; `0` or `None` returns the list unchanged.

    Returns:
        The list of (clipped) gradients.
    """
    gradients = list(gradients)
    if not clip_norm:
        return gradients
    if clip_norm < 0:
        raise ValueError(f'Argument `clip_norm` must be >= 0; received: clip_norm={clip_norm!r}.')
    clipped = [None if g is None else tf.clip_by_norm(g, clip_norm) for g in gradients]
    clipped, _ = tf.clip_by_global_norm(clipped, clip_norm)
    return list(clipped)


def _prepare(labels, logits):
    """Casts logits to float32; one-hot encodes integer labels."""
    logits = tf.cast(logits, tf.float32)
    labels = tf.convert_to_tensor(labels)
    if labels.dtype.is_integer:
        labels = tf.one_hot(labels, depth=tf.shape(logits)[-1], dtype=tf.float32)
    else:
        labels = tf.cast(labels, tf.float32)
    return logits, labels


def _check_smoothing(label_smoothing):
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(
            f'Argument `label_smoothing` must be in [0, 1]; received: '
            f'label_smoothing={label_smoothing!r}.'
        )


def _reduce(per_example, global_batch_size):
    """Mean over the batch, or sum / global_batch_size."""
    if global_batch_size is None:
        return tf.reduce_mean(per_example)
    if global_batch_size <= 0:
        raise ValueError(
            f'Argument `global_batch_size` must be a positive integer; '
            f'received: global_batch_size={global_batch_size!r}.'
        )
    return tf.reduce_sum(per_example) / tf.cast(global_batch_size, tf.float32)
