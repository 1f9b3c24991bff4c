"""Where examples come from: TFRecords, TFDS, image folders, the digits arrays.

Every source yields `(payload, label)` pairs plus the payload kind ('bytes',
'path' or 'pixels'); `pipeline.py` decodes, crops and batches them.

* ``tfrecord``: ImageNet-format TFRecord shards (`image/encoded` JPEG bytes,
  `image/class/label` stored 1..1000) and the ImageNet-21k variant (`image`
  bytes, `labels` int64 list, 0-based, multi-hot), selected by file pattern
  and a slice of the sorted file list, as in the official configs.
* ``tfds``: TFDS datasets (`imagenet2012`, `cifar10`, `cifar100`,
  `oxford_flowers102`, `cars196`, `tf_flowers`) read from `data_dir` (nothing
  is downloaded). Images are read still encoded and decoded by the pipeline,
  so corrupt images are handled the same way as for TFRecords.
* ``folder``: one sub-folder per class (JPEG/PNG/BMP/GIF). Either
  `data_dir/train/<class>` plus `data_dir/{val,validation,eval,test}/<class>`,
  or a single `data_dir/<class>` tree split deterministically per class (20 %
  eval; files ordered by a CRC32 of their relative path, so the split does not
  depend on listing order). Listings are cached per process.
* ``digits``: scikit-learn's bundled `load_digits()` (1,797 real 8x8
  handwritten digits, values 0..16, 10 classes), scaled to uint8 0..255 and
  repeated to RGB. Fixed split from a seeded permutation (seed 0): 1,437
  train and 360 eval images; `trainval` has all 1,797. Works offline.

Also here: the process-wide count of images skipped because they could not be
decoded (`skipped_images()`), which the pipeline's decode stage feeds.
"""

import collections
from collections.abc import Mapping
from collections.abc import Sequence
import dataclasses
import functools
import os
import threading
import zlib

from absl import logging
import numpy as np
import tensorflow as tf

SOURCES = ('tfds', 'tfrecord', 'folder', 'digits')
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
FOLDER_EVAL_FRACTION = 0.2
FOLDER_EVAL_DIRS = ('val', 'validation', 'eval', 'test')
DIGITS_SPLIT_SEED = 0
DIGITS_NUM_TRAIN = 1437
DIGITS_NUM_IMAGES = 1797
_TFRECORD_READ_BUFFER = 8 * 1024 * 1024
# Functions handed to tf.data use explicit tf.cond/switch_case only; skipping
# AutoGraph conversion makes a build ~4x faster (tracing RandAugment's
# branches through AutoGraph takes seconds).
no_autograph = tf.autograph.experimental.do_not_convert


# ----------------------------------------------------------------------------
# Digits.
# ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _digits_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Loads scikit-learn digits once: split -> (uint8 [n, 8, 8, 3], labels)."""
    from sklearn import datasets as sk_datasets  # Imported only when used.

    digits = sk_datasets.load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.repeat(pixels[..., None], 3, axis=-1)
    labels = digits.target.astype(np.int32)
    order = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(len(labels))
    train, held_out = order[:DIGITS_NUM_TRAIN], order[DIGITS_NUM_TRAIN:]
    return {
        'train': (images[train], labels[train]),
        'eval': (images[held_out], labels[held_out]),
        'trainval': (images, labels),
    }


# ----------------------------------------------------------------------------
# Image folders.
# ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FolderListing:
    """Class names (label order) and split -> (file paths, labels)."""

    class_names: tuple[str, ...]
    files: Mapping[str, tuple[tuple[str, ...], tuple[int, ...]]]


def _is_image(filename: str) -> bool:
    return filename.lower().endswith(IMAGE_EXTENSIONS)


def _class_files(class_dir: str) -> list[str]:
    found = []
    for root, _, names in tf.io.gfile.walk(class_dir):
        found.extend(os.path.join(root, n) for n in names if _is_image(n))
    return sorted(found)


def _subdirs(directory: str) -> list[str]:
    return sorted(
        n.rstrip('/')
        for n in tf.io.gfile.listdir(directory)
        if tf.io.gfile.isdir(os.path.join(directory, n))
    )


def _collect(root: str, class_names: Sequence[str]):
    """Files under `root/<class>` for each class, as (paths, labels)."""
    paths, labels = [], []
    for label, class_name in enumerate(class_names):
        class_dir = os.path.join(root, class_name)
        if tf.io.gfile.isdir(class_dir):
            files = _class_files(class_dir)
            paths.extend(files)
            labels.extend([label] * len(files))
    return tuple(paths), tuple(labels)


def _split_by_hash(root, class_names, eval_fraction):
    """Per-class deterministic split by CRC32 of the relative path."""
    splits = {'train': ([], []), 'eval': ([], [])}
    for label, class_name in enumerate(class_names):
        files = _class_files(os.path.join(root, class_name))
        files.sort(key=lambda p: (zlib.crc32(os.path.relpath(p, root).encode('utf-8')), p))
        num_eval = int(round(len(files) * eval_fraction))
        for split, part in (('eval', files[:num_eval]), ('train', files[num_eval:])):
            splits[split][0].extend(sorted(part))
            splits[split][1].extend([label] * len(part))
    return {k: (tuple(p), tuple(y)) for k, (p, y) in splits.items()}


@functools.lru_cache(maxsize=16)
def list_folder(data_dir: str) -> FolderListing:
    """Lists an image folder once per process (rebuilds are cheap)."""
    if not tf.io.gfile.isdir(data_dir):
        raise ValueError(
            f'Argument `data_dir` must be an existing directory of class '
            f'sub-folders for the folder dataset; received '
            f'data_dir={data_dir!r}.'
        )
    top = _subdirs(data_dir)
    eval_dir = next((d for d in FOLDER_EVAL_DIRS if d in top), None)
    if 'train' in top and eval_dir:
        train_root = os.path.join(data_dir, 'train')
        eval_root = os.path.join(data_dir, eval_dir)
        class_names = tuple(_subdirs(train_root))
        unknown = sorted(set(_subdirs(eval_root)) - set(class_names))
        if unknown:
            raise ValueError(
                f'Folder dataset {data_dir!r}: class folders {unknown} in '
                f"{eval_dir!r} have no counterpart in 'train'."
            )
        files = {
            'train': _collect(train_root, class_names),
            'eval': _collect(eval_root, class_names),
        }
    else:
        class_names = tuple(top)
        files = _split_by_hash(data_dir, class_names, FOLDER_EVAL_FRACTION)
    files['trainval'] = tuple(a + b for a, b in zip(files['train'], files['eval']))
    if not files['trainval'][0]:
        raise ValueError(
            f'Folder dataset: no images with extensions {IMAGE_EXTENSIONS} '
            f'found in class sub-folders of data_dir={data_dir!r} (looked '
            f'for <data_dir>/<class>/... and <data_dir>/train/<class>/...).'
        )
    return FolderListing(class_names, files)


# ----------------------------------------------------------------------------
# Skipped-image accounting.
# ----------------------------------------------------------------------------
class _SkipCounter:
    """Thread-safe per-source counts of images dropped for failing to decode."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts = collections.Counter()

    def add(self, source: str, count: int) -> int:
        with self._lock:
            self._counts[source] += count
            total = sum(self._counts.values())
        logging.warning(
            'Skipped %d corrupt or undecodable image(s) in %s (%d in this process so far).',
            count,
            source,
            total,
        )
        return total

    def total(self, source: str | None = None) -> int:
        with self._lock:
            if source is None:
                return sum(self._counts.values())
            return self._counts[source]

    def by_source(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset(self):
        with self._lock:
            self._counts.clear()


_SKIPPED = _SkipCounter()


def skipped_images(source: str | None = None) -> int:
    """Number of images dropped so far because they could not be decoded.

    Counts are process-wide and grow as pipelines are iterated (a skip is
    counted when the pipeline reaches the next good image or the end of a
    pass over the data). Each skip is also logged.

    Args:
        source: restrict to one pipeline, named '<dataset>/<split>'
            (see `skipped_images_by_source()`); None for the total.

    Returns:
        The count.
    """
    return _SKIPPED.total(source)


def skipped_images_by_source() -> dict[str, int]:
    """Skipped-image counts keyed by '<dataset>/<split>'."""
    return _SKIPPED.by_source()


def reset_skipped_images():
    """Sets all skipped-image counts back to zero."""
    _SKIPPED.reset()


def record_skips(count: tf.Tensor, source: str) -> tf.Tensor:
    """Adds `count` skips of `source` to the counter from inside a graph."""

    def record(value):
        return np.int64(_SKIPPED.add(source, int(value)))

    return tf.py_function(record, [count], tf.int64)


# ----------------------------------------------------------------------------
# Sources: datasets of (payload, label) plus the payload kind.
# ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Source:
    """A dataset of `(payload, label)` and the kind of its payloads."""

    dataset: tf.data.Dataset
    kind: str  # 'bytes' (encoded image), 'path' (image file) or 'pixels'.


def _parse_imagenet(record, info):
    features = tf.io.parse_single_example(
        record,
        {
            'image/encoded': tf.io.FixedLenFeature([], tf.string),
            'image/class/label': tf.io.FixedLenFeature([], tf.int64),
        },
    )
    label = tf.cast(features['image/class/label'] - info.label_offset, tf.int32)
    return features['image/encoded'], label


def _parse_imagenet21k(record, info):
    features = tf.io.parse_single_example(
        record,
        {
            'image': tf.io.FixedLenFeature([], tf.string),
            'labels': tf.io.FixedLenSequenceFeature([], tf.int64, allow_missing=True),
        },
    )
    return features['image'], features['labels'] - info.label_offset


def _tfrecord_source(info, split_info, data_dir, is_training, pipeline, seed) -> Source:
    pipeline_id, num_pipelines = pipeline
    start, stop = split_info.file_slice
    if not data_dir:
        raise ValueError(
            f'Argument `data_dir` must be the directory of the '
            f'{info.name!r} TFRecord files (pattern '
            f'{split_info.file_pattern!r}); received data_dir={data_dir!r}.'
        )
    pattern = os.path.join(data_dir, split_info.file_pattern)
    files = sorted(tf.io.gfile.glob(pattern))[start:stop]
    if not files:
        raise ValueError(
            f'No TFRecord files for dataset {info.name!r}: looked for '
            f'{pattern!r} (sorted matches [{start}:{stop}]) and found none.'
        )
    by_example = num_pipelines > len(files)
    if num_pipelines > 1 and not by_example:
        files = files[pipeline_id::num_pipelines]
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if is_training:
        dataset = dataset.shuffle(len(files), seed=seed)
    dataset = dataset.interleave(
        no_autograph(lambda f: tf.data.TFRecordDataset(f, buffer_size=_TFRECORD_READ_BUFFER)),
        cycle_length=min(len(files), 16),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if num_pipelines > 1 and by_example:
        dataset = dataset.shard(num_pipelines, pipeline_id)
    parse = _parse_imagenet21k if info.record_format == 'imagenet21k' else _parse_imagenet
    dataset = dataset.map(
        no_autograph(lambda r: parse(r, info)), num_parallel_calls=tf.data.AUTOTUNE
    )
    return Source(dataset, 'bytes')


def _tfds_source(info, split_info, data_dir, is_training, pipeline, seed) -> Source:
    import tensorflow_datasets as tfds  # Slow import; only when used.

    pipeline_id, num_pipelines = pipeline
    split = split_info.tfds_split
    if num_pipelines > 1:
        split = tfds.even_splits(split, n=num_pipelines)[pipeline_id]
    try:
        builder = tfds.builder(info.tfds_name, data_dir=data_dir)
        dataset = builder.as_dataset(
            split=split,
            shuffle_files=is_training,
            decoders={'image': tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(shuffle_seed=seed, try_autocache=False),
        )
    except (AssertionError, FileNotFoundError) as error:
        raise ValueError(
            f'TFDS dataset {info.tfds_name!r} (split '
            f'{split_info.tfds_split!r}) was not found under '
            f'data_dir={data_dir!r} (None means the TFDS default '
            f'~/tensorflow_datasets). Prepare it first with '
            f'tfds.builder({info.tfds_name!r}, data_dir=...)'
            f'.download_and_prepare(); nothing is downloaded here.'
        ) from error

    def to_pair(example):
        label = tf.cast(example['label'], tf.int32) - info.label_offset
        return example['image'], label

    return Source(dataset.map(no_autograph(to_pair), num_parallel_calls=tf.data.AUTOTUNE), 'bytes')


def _folder_source(info, split, data_dir, pipeline) -> Source:
    listing = list_folder(str(data_dir or info.data_dir))
    paths, labels = listing.files[split]
    if not paths:
        raise ValueError(f'Folder dataset {data_dir!r} has no images in split {split!r}.')
    dataset = tf.data.Dataset.from_tensor_slices((list(paths), np.asarray(labels, np.int32)))
    return Source(_shard(dataset, pipeline), 'path')


def _digits_source(split, pipeline) -> Source:
    images, labels = _digits_arrays()[split]
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    return Source(_shard(dataset, pipeline), 'pixels')


def _shard(dataset, pipeline):
    pipeline_id, num_pipelines = pipeline
    if num_pipelines > 1:
        dataset = dataset.shard(num_pipelines, pipeline_id)
    return dataset


def make_source(
    info,
    split: str,
    data_dir: str | None,
    *,
    is_training: bool,
    pipeline: tuple[int, int],
    seed: int,
) -> Source:
    """The `(payload, label)` dataset of one split of a dataset.

    Args:
        info: the dataset's `registry.DatasetInfo`.
        split: a split it defines.
        data_dir: TFRecord directory, TFDS data dir or image-folder root.
        is_training: shuffle the files (TFRecord and TFDS sources).
        pipeline: `(input pipeline id, number of input pipelines)`; each
            pipeline reads a disjoint part.
        seed: file-shuffling seed.

    Returns:
        A `Source`.

    Raises:
        ValueError: missing data, or an unknown `info.source`.
    """
    split_info = info.get_split(split)
    if info.source == 'tfrecord':
        return _tfrecord_source(info, split_info, data_dir, is_training, pipeline, seed)
    if info.source == 'tfds':
        return _tfds_source(info, split_info, data_dir, is_training, pipeline, seed)
    if info.source == 'folder':
        return _folder_source(info, split, data_dir, pipeline)
    if info.source == 'digits':
        return _digits_source(split, pipeline)
    raise ValueError(
        f'DatasetInfo.source must be one of {SOURCES}; received source={info.source!r}.'
    )
