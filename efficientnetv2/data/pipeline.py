"""The `tf.data` input pipeline: `build_dataset` and the plan it follows.

`build_dataset` resolves and checks its arguments once into a `Plan` made of
three small keyword-only parts (`ImageTransform`: what happens to each image;
`Batching`: batches, mixing and dtype; `Order`: which examples this input
pipeline reads, in what order, how often), then chains the stages:

    source -> cache -> shuffle -> decode + crop (skipping corrupt images)
    -> resize/flip/augment/normalise + one-hot labels -> batch -> mix -> cast
    -> skip/take batches (a resumed or bounded training stage) -> prefetch

Every pipeline yields `(images, labels)`: images `[batch, size, size, 3]` of
`image_dtype`, labels `[batch, num_classes]` float32 (one-hot, multi-hot or
mixed by mixup/CutMix).

Corrupt images: images are decoded in a stage wrapped by
`tf.data.Dataset.ignore_errors`, so an undecodable image is dropped and
logged by TF; the pipeline counts the gaps it leaves and adds them to a
process-wide counter (`sources.skipped_images()`), logging the running count
with absl. A pass over the data in which nothing decodes raises an error
instead of spinning forever. Labels are checked after that stage
(`ignore_errors` would swallow any error raised upstream of it), so a label
outside `[0, num_classes)` always raises `tf.errors.InvalidArgumentError`.
"""

import dataclasses
import functools
import random

from absl import logging
import numpy as np
import tensorflow as tf

from efficientnetv2.data import augment
from efficientnetv2.data import mixing
from efficientnetv2.data import preprocessing
from efficientnetv2.data import registry
from efficientnetv2.data import sources

# Training caches encoded examples in memory when the split is at most this
# big (cache=None); the official code always caches, which needs ~140 GB for
# ImageNet on one host.
AUTO_CACHE_MAX_IMAGES = 100_000
# Default shuffle buffer (the official TFRecord pipeline uses 131,072).
DEFAULT_SHUFFLE_BUFFER = 16_384
_IMAGE_DTYPES = (tf.float32, tf.bfloat16, tf.float16)
_plain = sources.no_autograph


# ----------------------------------------------------------------------------
# Argument checks.
# ----------------------------------------------------------------------------
def _check_positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (value < minimum):
        raise ValueError(
            f'Argument `{name}` must be an integer >= {minimum}; received {name}={value!r}.'
        )


def _check_non_negative(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or value < 0:
        raise ValueError(f'Argument `{name}` must be a number >= 0; received {name}={value!r}.')


def _resolve_dtype(image_dtype) -> tf.DType:
    try:
        dtype = tf.as_dtype(image_dtype)
    except TypeError:
        dtype = None
    if dtype not in _IMAGE_DTYPES:
        raise ValueError(
            f'Argument `image_dtype` must be one of '
            f'{[d.name for d in _IMAGE_DTYPES]}; received '
            f'image_dtype={image_dtype!r}.'
        )
    return dtype


def _derive_seeds(seed: int | None, pipeline_id: int) -> tuple[int, int, int]:
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    state = np.random.SeedSequence([int(seed), pipeline_id]).generate_state(3)
    return tuple(int(s) % (2**31 - 1) for s in state)


# ----------------------------------------------------------------------------
# The plan: resolved, validated choices for one pipeline build.
# ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageTransform:
    """What happens to each image (see `preprocessing.finish`)."""

    is_training: bool
    family: str  # 'v2', 'legacy' or 'ft'.
    image_size: int
    augname: str | None
    ram: float
    ra_num_layers: int
    solarize_wrap: bool
    augment_pixel_scale: float = 1.0

    @classmethod
    def resolve(
        cls,
        info: registry.DatasetInfo,
        *,
        is_training: bool,
        image_size,
        preprocess,
        augname,
        ram,
        ra_num_layers,
        solarize_wrap,
        augment_pixel_scale=1.0,
    ) -> 'ImageTransform':
        """Checks the arguments and picks the family; ValueError if bad."""
        _check_positive_int('image_size', image_size)
        _check_positive_int('ra_num_layers', ra_num_layers, minimum=0)
        _check_non_negative('ram', ram)
        augment.check_pixel_scale(augment_pixel_scale, 'augment_pixel_scale')
        family = preprocessing.resolve_family(preprocess, augname, info.preprocess)
        return cls(
            is_training=is_training,
            family=family,
            image_size=int(image_size),
            augname=augname,
            ram=float(ram),
            ra_num_layers=int(ra_num_layers),
            solarize_wrap=bool(solarize_wrap),
            augment_pixel_scale=float(augment_pixel_scale),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Batching:
    """Batch size, mixup/CutMix (training only) and the output dtype."""

    batch_size: int
    drop_remainder: bool
    mixup_alpha: float
    cutmix_alpha: float
    image_dtype: tf.DType

    @classmethod
    def resolve(
        cls,
        *,
        is_training: bool,
        batch_size,
        drop_remainder,
        mixup_alpha,
        cutmix_alpha,
        image_dtype,
    ) -> 'Batching':
        """Checks the arguments; `drop_remainder=None` follows training."""
        _check_positive_int('batch_size', batch_size)
        _check_non_negative('mixup_alpha', mixup_alpha)
        _check_non_negative('cutmix_alpha', cutmix_alpha)
        return cls(
            batch_size=int(batch_size),
            drop_remainder=bool(is_training if drop_remainder is None else drop_remainder),
            mixup_alpha=float(mixup_alpha),
            cutmix_alpha=float(cutmix_alpha),
            image_dtype=_resolve_dtype(image_dtype),
        )

    def mixes(self, is_training: bool) -> bool:
        return is_training and bool(self.mixup_alpha or self.cutmix_alpha)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Order:
    """Which examples this input pipeline reads, in what order, how often."""

    pipeline: tuple[int, int]  # (input pipeline id, number of pipelines).
    seeds: tuple[int, int, int]  # Shuffle, per-image, per-batch.
    deterministic: bool  # Keep element order (seeded or eval pipelines).
    repeat: bool
    shuffle_buffer: int | None  # None: no shuffling.
    skip_batches: int  # Batches passed over at the start (a resumed stage).
    num_batches: int | None  # Batches yielded after those; None: all.

    @classmethod
    def resolve(
        cls,
        *,
        is_training: bool,
        num_images: int,
        input_context,
        seed,
        repeat,
        shuffle_buffer,
        skip_batches=0,
        num_batches=None,
    ) -> 'Order':
        """Checks the arguments and derives this pipeline's seeds."""
        _check_positive_int('skip_batches', skip_batches, minimum=0)
        if num_batches is not None:
            _check_positive_int('num_batches', num_batches, minimum=0)
        if input_context is not None:
            pipeline = (input_context.input_pipeline_id, input_context.num_input_pipelines)
        else:
            pipeline = (0, 1)
        buffer = None
        if is_training:
            if shuffle_buffer is not None:
                _check_positive_int('shuffle_buffer', shuffle_buffer)
            buffer = int(shuffle_buffer or min(DEFAULT_SHUFFLE_BUFFER, max(num_images, 1)))
        return cls(
            pipeline=pipeline,
            seeds=_derive_seeds(seed, pipeline[0]),
            deterministic=seed is not None or not is_training,
            repeat=bool(is_training if repeat is None else repeat),
            shuffle_buffer=buffer,
            skip_batches=int(skip_batches),
            num_batches=None if num_batches is None else int(num_batches),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Plan:
    """Everything one `build_dataset` call decided."""

    info: registry.DatasetInfo
    split: str
    transform: ImageTransform
    batching: Batching
    order: Order

    @property
    def is_training(self) -> bool:
        return self.transform.is_training

    @property
    def source_name(self) -> str:
        return f'{self.info.name}/{self.split}'


# ----------------------------------------------------------------------------
# Stages.
# ----------------------------------------------------------------------------
def _element_seed(plan: Plan, index: tf.Tensor) -> tf.Tensor:
    """Seeds `[2, 2]` (crop, finish) for the element at `index`."""
    seed = tf.stack([tf.constant(plan.order.seeds[1], tf.int64), index])
    return augment.split_seed(seed, 2)


def _crop_element(plan: Plan, index, payload, kind):
    if kind == 'path':
        payload = tf.io.read_file(payload)
    transform = plan.transform
    return preprocessing.decode_and_crop(
        payload,
        transform.family,
        transform.is_training,
        transform.image_size,
        seed=_element_seed(plan, index)[0],
        area_range=plan.info.train_area_range,
        center_crop=plan.info.eval_center_crop,
    )


def _decode_stage(dataset: tf.data.Dataset, kind: str, plan: Plan, num_images=None):
    """Maps (payload, label) to (index, uint8 crop, label), skipping failures.

    Encoded images are decoded inside `ignore_errors`. A sentinel ends every
    pass over the data; a scan over the surviving (ordered) indices counts
    the gaps left by dropped images, and raises if a whole pass yields none,
    or, when a finite pipeline declares the length its `num_images` listed
    images make (`_declare_length`), if the dropped ones shorten it.
    In-memory pixels cannot fail: `plan.order.skip_batches` batches are
    passed over here, before any crop, and the indices (hence the per-image
    seeds) continue where the skipped ones stop.
    """
    repeat = plan.order.repeat
    if kind == 'pixels':
        if repeat:
            dataset = dataset.repeat()
        start = _element_skip(plan, kind)
        if start:
            dataset = dataset.skip(start)
        return dataset.enumerate(start=start).map(
            _plain(lambda i, e: (i, _crop_element(plan, i, e[0], kind), e[1])),
            num_parallel_calls=tf.data.AUTOTUNE,
        )

    label_spec = dataset.element_spec[1]
    empty_label = (
        tf.constant(-1, label_spec.dtype)
        if label_spec.shape.rank == 0
        else tf.zeros([0], label_spec.dtype)
    )
    sentinel = tf.data.Dataset.from_tensors((tf.constant(''), empty_label, tf.constant(True)))
    dataset = dataset.map(_plain(lambda p, y: (p, y, tf.constant(False))))
    dataset = dataset.concatenate(sentinel)
    if repeat:
        dataset = dataset.repeat()

    def decode(index, element):
        payload, label, is_sentinel = element
        image = tf.cond(
            is_sentinel,
            lambda: tf.zeros([1, 1, 3], tf.uint8),
            lambda: _crop_element(plan, index, payload, kind),
        )
        return index, image, label, is_sentinel

    dataset = dataset.enumerate().map(
        _plain(decode), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    dataset = dataset.ignore_errors(log_warning=True)
    dataset = dataset.scan(
        (tf.constant(-1, tf.int64), tf.constant(0, tf.int64), tf.constant(0, tf.int64)),
        _plain(functools.partial(_count_skips, plan, num_images)),
    )
    dataset = dataset.filter(
        _plain(lambda i, image, label, is_sentinel: tf.logical_not(is_sentinel))
    )
    return dataset.map(_plain(lambda i, image, label, is_sentinel: (i, image, label)))


def _element_skip(plan: Plan, kind: str) -> int:
    """Elements to pass over before decoding: whole batches of pixels only.

    A batch holds `batch_size` consecutive elements, so skipping `n` batches
    of in-memory pixels is skipping `n * batch_size` elements, which costs no
    crop or augmentation. Encoded images may fail to decode and leave gaps,
    so their batches are skipped after batching (`build_dataset`).
    """
    if kind != 'pixels':
        return 0
    return plan.order.skip_batches * plan.batching.batch_size


def _num_batches(plan: Plan, num_images):
    """Batches that `num_images` images make in one pass (int or int64 tensor)."""
    batch_size = plan.batching.batch_size
    if plan.batching.drop_remainder:
        return num_images // batch_size
    return (num_images + batch_size - 1) // batch_size


def _count_skips(plan: Plan, num_images, state, element):
    """Scan step: counts dropped images between consecutive indices.

    `num_images`: the images listed for one pass of a finite pipeline that
    declares their number of batches as its length; None: no length declared.
    """
    last_index, decoded, skipped_in_pass = state
    index, _, _, is_sentinel = element
    skipped = index - last_index - 1
    recorded = tf.cond(
        skipped > 0,
        lambda: sources.record_skips(skipped, plan.source_name),
        lambda: tf.constant(0, tf.int64),
    )
    skipped_in_pass += skipped
    empty_pass = is_sentinel & tf.equal(decoded, 0)
    # A finite empty shard is fine; an all-corrupt one is not.
    if not plan.order.repeat:
        empty_pass &= skipped_in_pass > 0
    pipeline_id, num_pipelines = plan.order.pipeline
    check = tf.debugging.Assert(
        tf.logical_not(empty_pass),
        [
            f'Dataset {plan.source_name!r} (input pipeline {pipeline_id} of '
            f'{num_pipelines}): a whole pass over the data gave no decodable '
            f'image; images skipped in that pass:',
            skipped_in_pass,
        ],
    )
    checks = [recorded, check]
    if num_images is not None and not plan.order.repeat:
        # The declared length (`_declare_length`) must hold: say why it does not.
        promised = _num_batches(plan, num_images)
        short = is_sentinel & (_num_batches(plan, decoded) < promised)
        checks.append(
            tf.debugging.Assert(
                tf.logical_not(short),
                [
                    f'Dataset {plan.source_name!r} (input pipeline {pipeline_id} of '
                    f'{num_pipelines}): images that could not be decoded (logged above) '
                    f'leave fewer than the {promised} batches its {num_images} listed images '
                    'make, the length this finite pipeline declares. Remove or repair those '
                    'files. Images skipped:',
                    skipped_in_pass,
                ],
            )
        )
    with tf.control_dependencies(checks):
        new_state = (
            index,
            tf.where(is_sentinel, tf.constant(0, tf.int64), decoded + 1),
            tf.where(is_sentinel, tf.constant(0, tf.int64), skipped_in_pass),
        )
    return new_state, element


def _check_labels(labels: tf.Tensor, info: registry.DatasetInfo) -> tf.Tensor:
    """Asserts every label is in [0, num_classes); returns them unchanged.

    Runs after the decode stage: `ignore_errors` would swallow an assertion
    raised anywhere upstream of it.
    """
    valid = tf.reduce_all((labels >= 0) & (labels < info.num_classes))
    check = tf.debugging.Assert(
        valid,
        [
            f'Label outside [0, {info.num_classes}) in dataset {info.name!r} '
            f'(stored label minus offset {info.label_offset}):',
            labels,
        ],
    )
    with tf.control_dependencies([check]):
        return tf.identity(labels)


def _finish_element(plan: Plan, index, image, label):
    transform = plan.transform
    image = preprocessing.finish(
        image,
        transform.family,
        transform.is_training,
        transform.image_size,
        transform.augname,
        transform.ra_num_layers,
        transform.ram,
        plan.info.random_flip,
        seed=_element_seed(plan, index)[1],
        solarize_wrap=transform.solarize_wrap,
        augment_pixel_scale=transform.augment_pixel_scale,
    )
    num_classes = plan.info.num_classes
    label = _check_labels(label, plan.info)
    if plan.info.multi_label:
        label = tf.minimum(tf.reduce_sum(tf.one_hot(label, num_classes), axis=0), 1.0)
    else:
        label = tf.one_hot(label, num_classes)
    return image, label


def _batch_stage(dataset, plan: Plan, first_batch: int = 0):
    """Batches, mixes (batch `b` seeded by its index `first_batch + b`), casts."""
    batching = plan.batching
    dataset = dataset.batch(
        batching.batch_size,
        drop_remainder=batching.drop_remainder,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=plan.order.deterministic,
    )
    if batching.mixes(plan.is_training):
        mix_seed = tf.constant(plan.order.seeds[2], tf.int64)
        dataset = dataset.enumerate(start=first_batch).map(
            _plain(
                lambda b, batch: mixing.mix_batch(
                    batch[0],
                    batch[1],
                    batching.mixup_alpha,
                    batching.cutmix_alpha,
                    seed=tf.stack([mix_seed, b]),
                )
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    static_batch = batching.batch_size if batching.drop_remainder else None
    size = plan.transform.image_size
    image_shape = [static_batch, size, size, 3]
    label_shape = [static_batch, plan.info.num_classes]

    def finalize(images, labels):
        images = tf.cast(images, batching.image_dtype)
        images.set_shape(image_shape)
        labels.set_shape(label_shape)
        return images, labels

    return dataset.map(_plain(finalize), num_parallel_calls=tf.data.AUTOTUNE)


def _static_cardinality(dataset):
    """`dataset.cardinality()` as an int, or None when it is not a constant (graph mode)."""
    value = tf.get_static_value(dataset.cardinality())
    return None if value is None else int(value)


def _declare_length(dataset, plan: Plan, num_images):
    """Gives tf.data the batched pipeline's length where its filters hide it.

    Dropping undecodable images (a filter) makes tf.data's cardinality
    unknown, and so `model.fit` without `steps_per_epoch` would wait forever
    for the end of a repeated pipeline, or warn that a finite one "ran out of
    data" after each pass. A repeated pipeline is infinite (a pass with no
    decodable image raises). A finite one makes the batches of the images
    listed in its source (`num_images`; None: not known, left unknown); the
    decode stage raises a clear error if undecodable images shorten it.
    """
    if _static_cardinality(dataset) != tf.data.UNKNOWN_CARDINALITY:
        return dataset  # Known, or not knowable here (graph mode).
    if plan.order.repeat:
        length = tf.data.INFINITE_CARDINALITY
    elif num_images is not None:
        length = _num_batches(plan, num_images)
    else:
        return dataset
    return dataset.apply(tf.data.experimental.assert_cardinality(length))


def _should_cache(cache, kind, num_images):
    if cache is None:
        return kind == 'bytes' and num_images <= AUTO_CACHE_MAX_IMAGES
    return bool(cache) and kind != 'pixels'


# ----------------------------------------------------------------------------
# Entry point.
# ----------------------------------------------------------------------------
def build_dataset(
    dataset: str | registry.DatasetInfo,
    split: str = 'train',
    data_dir: str | None = None,
    image_size: int = 224,
    batch_size: int = 64,
    is_training: bool | None = None,
    preprocess: str | None = None,
    augname: str | None = None,
    ram: float = 15.0,
    ra_num_layers: int = 2,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    image_dtype=tf.float32,
    input_context: tf.distribute.InputContext | None = None,
    seed: int | None = None,
    drop_remainder: bool | None = None,
    cache: None | bool | str = None,
    shuffle_buffer: int | None = None,
    repeat: bool | None = None,
    solarize_wrap: bool = True,
    skip_batches: int = 0,
    num_batches: int | None = None,
    augment_pixel_scale: float = 1.0,
) -> tf.data.Dataset:
    """Builds a batched input pipeline for a named dataset.

    Call it again with new `image_size`, `ram`, `mixup_alpha` and
    `cutmix_alpha` for each progressive-learning stage; rebuilding is cheap
    (digits arrays and folder listings are cached in memory).

    Args:
        dataset: registry name (case-insensitive, see `dataset_names()`),
            'folder', or a `DatasetInfo`.
        split: a split the dataset defines ('train', 'eval', 'minival',
            'trainval').
        data_dir: TFRecord directory, TFDS data dir (None: TFDS default) or
            image-folder root; ignored by digits.
        image_size: output side in pixels.
        batch_size: batch size of this pipeline. With `input_context` it is
            the per-replica batch (compute it with
            `input_context.get_per_replica_batch_size(global_batch)`);
            mixup/CutMix pair images within it.
        is_training: random crop/flip/augment/mixing, shuffling and repeat;
            None means True for 'train' and 'trainval', else False.
        preprocess: transform family 'v2', 'legacy' or 'ft'; None picks the
            family implied by `augname`, else the dataset's hint, else 'v2'.
        augname: None, 'randaug', 'autoaug', 'ra_aa', 'effnetv1_randaug',
            'effnetv1_autoaug', 'ft', 'ft_randaug', 'ft_autoaug' or a name
            containing 'cutout' (training only).
        ram: RandAugment magnitude (official scale, e.g. 5-20).
        ra_num_layers: RandAugment number of ops per image.
        mixup_alpha: mixup Beta parameter, 0 disables (training only).
        cutmix_alpha: CutMix Beta parameter, 0 disables (training only).
        image_dtype: tf.float32, tf.bfloat16 or tf.float16.
        input_context: `tf.distribute.InputContext`; data are split between
            input pipelines (by file when there are enough files, else by
            example) without overlap.
        seed: makes the pipeline deterministic (order, crops, augmentation,
            mixing); None draws a random seed.
        drop_remainder: drop the last partial batch; None means True in
            training, False otherwise.
        cache: True caches the encoded examples in memory, a string caches
            to that file, False never; None caches training and eval data of
            at most 100,000 images (TFRecord and TFDS sources).
        shuffle_buffer: training shuffle buffer; None means
            min(16,384, split size).
        repeat: repeat forever; None means True in training.
        solarize_wrap: Solarize's threshold wraps modulo 256 as in the
            released code (RandAugment M=10 and 20 invert the whole image);
            False clamps it (no-op at 256 and above). See `augment.solarize`.
        skip_batches: pass over this many batches first; the batches that
            follow are exactly those of the unskipped pipeline (a seeded
            stage resumed mid-way). In-memory sources (digits) skip before
            cropping, at almost no cost; encoded images are decoded and
            dropped, since a corrupt image changes how many make a batch.
        num_batches: yield at most this many batches (after `skip_batches`),
            e.g. the steps left in a training stage; None: no limit. The
            pipeline then stops decoding at its last needed batch.
        augment_pixel_scale: multiplies the pixel sizes in RandAugment's and AutoAugment's
            Translate and Cutout (100 and 40 px at magnitude 10, the released values, set
            for ImageNet sizes). A progressive stage smaller than the final size can pass
            `stage size / final size`, so those ops take the same share of its images as at
            the final size (see `efficientnetv2.train.progressive.augment_pixel_scale`).
            1 (default) is the released behaviour.

    Returns:
        A `tf.data.Dataset` of `(images, labels)`: images
        `[batch, image_size, image_size, 3]` of `image_dtype`, labels
        `[batch, num_classes]` float32. Its `cardinality()` is infinite
        when it repeats, else the number of batches its images make (unknown
        only for TFRecord files, whose number of records is not listed).

    Raises:
        ValueError: for an unknown dataset, split or augname, invalid
            arguments, a missing `data_dir`, or a file pattern matching
            nothing.
    """
    info = (
        dataset
        if isinstance(dataset, registry.DatasetInfo)
        else (registry.get_dataset_info(dataset, data_dir=data_dir))
    )
    num_images = info.get_split(split).num_images
    training = bool(split in ('train', 'trainval') if is_training is None else is_training)
    plan = Plan(
        info=info,
        split=split,
        transform=ImageTransform.resolve(
            info,
            is_training=training,
            image_size=image_size,
            preprocess=preprocess,
            augname=augname,
            ram=ram,
            ra_num_layers=ra_num_layers,
            solarize_wrap=solarize_wrap,
            augment_pixel_scale=augment_pixel_scale,
        ),
        batching=Batching.resolve(
            is_training=training,
            batch_size=batch_size,
            drop_remainder=drop_remainder,
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            image_dtype=image_dtype,
        ),
        order=Order.resolve(
            is_training=training,
            num_images=num_images,
            input_context=input_context,
            seed=seed,
            repeat=repeat,
            shuffle_buffer=shuffle_buffer,
            skip_batches=skip_batches,
            num_batches=num_batches,
        ),
    )
    source = sources.make_source(
        info,
        split,
        data_dir,
        is_training=training,
        pipeline=plan.order.pipeline,
        seed=plan.order.seeds[0],
    )
    data = source.dataset
    if _should_cache(cache, source.kind, num_images):
        data = data.cache(cache if isinstance(cache, str) else '')
    if plan.order.shuffle_buffer:
        data = data.shuffle(
            plan.order.shuffle_buffer, seed=plan.order.seeds[0], reshuffle_each_iteration=True
        )
    listed = _static_cardinality(data)
    listed = listed if listed is not None and listed >= 0 else None
    data = _decode_stage(data, source.kind, plan, num_images=listed)
    data = data.map(
        _plain(functools.partial(_finish_element, plan)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=plan.order.deterministic,
    )
    skipped = plan.order.skip_batches if _element_skip(plan, source.kind) else 0
    data = _batch_stage(data, plan, first_batch=skipped)
    data = _declare_length(data, plan, listed)
    if plan.order.skip_batches > skipped:
        data = data.skip(plan.order.skip_batches - skipped)
    if plan.order.num_batches is not None:
        # Ends the pipeline at its last needed batch: the final prefetch then
        # winds the upstream stages down in its own thread as soon as that
        # batch is made, instead of decoding ahead until the iterator is
        # deleted (which waits for work in flight).
        data = data.take(plan.order.num_batches)
    options = tf.data.Options()
    options.threading.max_intra_op_parallelism = 1
    data = data.with_options(options).prefetch(tf.data.AUTOTUNE)
    transform, batching = plan.transform, plan.batching
    logging.info(
        'Input pipeline %s: %s source, %s transform, size %d, batch %d, '
        'training=%s, augname=%s, ram=%.3g, augment pixel scale %.3g, solarize_wrap=%s, '
        'mixup=%.3g, cutmix=%.3g, pipeline %d of %d.',
        plan.source_name,
        info.source,
        transform.family,
        transform.image_size,
        batching.batch_size,
        training,
        transform.augname,
        transform.ram,
        transform.augment_pixel_scale,
        transform.solarize_wrap,
        batching.mixup_alpha,
        batching.cutmix_alpha,
        *plan.order.pipeline,
    )
    return data
