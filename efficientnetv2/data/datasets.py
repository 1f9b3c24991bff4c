"""Dataset registry and the `tf.data` input pipeline builder.

Sources:

* ``tfrecord``: ImageNet-format TFRecord shards (`image/encoded` JPEG bytes,
  `image/class/label` stored 1..1000) and the ImageNet-21k variant (`image`
  bytes, `labels` int64 list, 0-based, multi-hot), selected by file pattern
  and a slice of the sorted file list, as in the official configs.
* ``tfds``: TFDS datasets (`imagenet2012`, `cifar10`, `cifar100`,
  `oxford_flowers102`, `cars196`, `tf_flowers`) read from `data_dir` (nothing
  is downloaded). Images are read still encoded and decoded here, so corrupt
  images are handled the same way as for TFRecords.
* ``folder``: one sub-folder per class (JPEG/PNG/BMP/GIF). Either
  `data_dir/train/<class>` plus `data_dir/{val,validation,eval,test}/<class>`,
  or a single `data_dir/<class>` tree split deterministically per class (20 %
  eval; files ordered by a CRC32 of their relative path, so the split does not
  depend on listing order).
* ``digits``: scikit-learn's bundled `load_digits()` (1,797 real 8x8
  handwritten digits, values 0..16, 10 classes), scaled to uint8 0..255 and
  repeated to RGB. Fixed split from a seeded permutation (seed 0): 1,437
  train and 360 eval images; `trainval` has all 1,797. Works offline. Its
  `DatasetInfo` turns off the training flip (a mirrored digit is another
  symbol or none) and the eval centre crop (an 8x8 image has no margin), and
  narrows the Inception crop to area (0.8, 1): at most one row or column is
  cut, which in short runs trains better than wider crops.

Every pipeline yields `(images, labels)`: images `[batch, size, size, 3]` of
`image_dtype`, labels `[batch, num_classes]` float32 (one-hot, multi-hot or
mixed by mixup/CutMix).

Corrupt images: images are decoded in a stage wrapped by
`tf.data.Dataset.ignore_errors`, so an undecodable image is dropped and
logged by TF; the pipeline counts the gaps it leaves and adds them to a
process-wide counter (`skipped_images()`), logging the running count with
absl. A pass over the data in which nothing decodes raises an error instead
of spinning forever. Labels are checked after that stage (`ignore_errors`
would swallow any error raised upstream of it), so a label outside
`[0, num_classes)` always raises `tf.errors.InvalidArgumentError`.
"""

import collections
import dataclasses
import functools
import os
import random
import threading
import zlib
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from absl import logging
import numpy as np
import tensorflow as tf

from efficientnetv2.data import augment
from efficientnetv2.data import mixing
from efficientnetv2.data import preprocessing

SOURCES = ('tfds', 'tfrecord', 'folder', 'digits')
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
FOLDER_EVAL_FRACTION = 0.2
FOLDER_EVAL_DIRS = ('val', 'validation', 'eval', 'test')
DIGITS_SPLIT_SEED = 0
DIGITS_NUM_TRAIN = 1437
# Training caches encoded examples in memory when the split is at most this
# big (cache=None); the official code always caches, which needs ~140 GB for
# ImageNet on one host.
AUTO_CACHE_MAX_IMAGES = 100_000
# Default shuffle buffer (the official TFRecord pipeline uses 131,072).
DEFAULT_SHUFFLE_BUFFER = 16_384
_TFRECORD_READ_BUFFER = 8 * 1024 * 1024
_IMAGE_DTYPES = (tf.float32, tf.bfloat16, tf.float16)
# Functions handed to tf.data use explicit tf.cond/switch_case only; skipping
# AutoGraph conversion makes a build ~4x faster (tracing RandAugment's
# branches through AutoGraph takes seconds).
_plain = tf.autograph.experimental.do_not_convert


@dataclasses.dataclass(frozen=True)
class SplitInfo:
    """One split of a dataset.

    Attributes:
        num_images: number of images (the official count where one exists).
        tfds_split: TFDS split selector, e.g. 'train[:70%]' (tfds source).
        file_pattern: glob relative to `data_dir` (tfrecord source).
        file_slice: `(start, stop)` slice of the sorted matching files.
    """

    num_images: int
    tfds_split: Optional[str] = None
    file_pattern: Optional[str] = None
    file_slice: Tuple[Optional[int], Optional[int]] = (None, None)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Data facts about a named dataset (no training-recipe numbers).

    Attributes:
        name: registry name, e.g. 'imagenet' or 'cifar10Ft'.
        num_classes: number of classes (label vector length).
        splits: split name -> `SplitInfo`.
        source: one of `SOURCES`.
        class_names: class names in label order, or None if not known
            without reading the data.
        multi_label: labels are multi-hot (ImageNet-21k).
        tfds_name: TFDS builder name (tfds source).
        record_format: 'imagenet' or 'imagenet21k' (tfrecord source).
        label_offset: subtracted from stored labels (1 for ImageNet
            TFRecords, whose labels are 1..1000).
        preprocess: transform-family hint ('ft' for the `*Ft` configs).
        augname: augmentation hint ('ft' for the `*Ft` configs).
        base_name: dataset whose data a `*Ft` config uses.
        random_flip: horizontal flips in training (off for digits, where a
            flip changes the meaning).
        train_area_range: Inception-crop area range overriding the family's
            default (digits: (0.8, 1.0): at most one row or column of the
            8x8 image is cut, a mild jitter).
        eval_center_crop: eval centre crop (off for digits, whose 8x8 image
            has no margin to spare).
        data_dir: data directory baked in (folder datasets).
    """

    name: str
    num_classes: int
    splits: Mapping[str, SplitInfo]
    source: str
    class_names: Optional[List[str]] = None
    multi_label: bool = False
    tfds_name: Optional[str] = None
    record_format: Optional[str] = None
    label_offset: int = 0
    preprocess: Optional[str] = None
    augname: Optional[str] = None
    base_name: Optional[str] = None
    random_flip: bool = True
    train_area_range: Optional[Tuple[float, float]] = None
    eval_center_crop: bool = True
    data_dir: Optional[str] = None

    def get_split(self, split: str) -> SplitInfo:
        """Returns the named split's info; ValueError names the valid ones."""
        if split not in self.splits:
            raise ValueError(
                f'Argument `split` must be one of {sorted(self.splits)} for '
                f'dataset {self.name!r}; received split={split!r}.')
        return self.splits[split]


# ----------------------------------------------------------------------------
# Registry.
# ----------------------------------------------------------------------------
def _tfds_splits(train, eval_split, eval_images, train_images, minival=None,
                 minival_images=None, trainval=None, trainval_images=None):
    splits = {
        'train': SplitInfo(train_images, tfds_split=train),
        'eval': SplitInfo(eval_images, tfds_split=eval_split),
        'minival': SplitInfo(minival_images or eval_images,
                             tfds_split=minival or eval_split),
    }
    if trainval:
        splits['trainval'] = SplitInfo(trainval_images, tfds_split=trainval)
    return splits


def _records(pattern, start, stop, num_images):
    return SplitInfo(num_images, file_pattern=pattern,
                     file_slice=(start, stop))


def _base_datasets() -> Dict[str, DatasetInfo]:
    imagenet = DatasetInfo(
        name='imagenet', num_classes=1000, source='tfrecord',
        record_format='imagenet', label_offset=1,
        splits={
            'train': _records('train*', 20, None, 1_256_144),
            'minival': _records('train*', 0, 20, 25_021),
            'eval': _records('val*', None, None, 50_000),
            'trainval': _records('train*', None, None, 1_281_167),
        })
    imagenet21k = DatasetInfo(
        name='imagenet21k', num_classes=21_843, source='tfrecord',
        record_format='imagenet21k', multi_label=True,
        splits={
            'train': _records('imagenet21k*', 20, None, 12_720_275),
            'minival': _records('imagenet21k*', 16, 20, 25_089),
            'eval': _records('imagenet21k*', 0, 16, 100_357),
        })
    # The official minival selector 'train[2%:]' overlaps train; the
    # held-out 'train[98%:]' is used instead.
    imagenettfds = DatasetInfo(
        name='imagenettfds', num_classes=1000, source='tfds',
        tfds_name='imagenet2012',
        splits=_tfds_splits('train[:98%]', 'validation', 50_000, 1_256_144,
                            'train[98%:]', 25_021, 'train', 1_281_167))
    cifar10 = DatasetInfo(
        name='cifar10', num_classes=10, source='tfds', tfds_name='cifar10',
        class_names=['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog',
                     'frog', 'horse', 'ship', 'truck'],
        splits=_tfds_splits('train', 'test', 10_000, 50_000))
    cifar100 = DatasetInfo(
        name='cifar100', num_classes=100, source='tfds', tfds_name='cifar100',
        splits=_tfds_splits('train', 'test', 10_000, 50_000))
    # The official config writes 1,020 train images; 'train+validation' has
    # 2,040.
    flowers = DatasetInfo(
        name='flowers', num_classes=102, source='tfds',
        tfds_name='oxford_flowers102',
        splits=_tfds_splits('train+validation', 'test', 6_149, 2_040,
                            'validation', 1_020))
    # The official eval selector 'train[30%:]' overlaps train; its count
    # (1,101) is that of the held-out 'train[70%:]', used here.
    tfflowers = DatasetInfo(
        name='tfflowers', num_classes=5, source='tfds', tfds_name='tf_flowers',
        class_names=['dandelion', 'daisy', 'tulips', 'sunflowers', 'roses'],
        splits=_tfds_splits('train[:70%]', 'train[70%:]', 1_101, 2_569))
    cars = DatasetInfo(
        name='cars', num_classes=196, source='tfds', tfds_name='cars196',
        splits=_tfds_splits('train', 'test', 8_041, 8_144))
    digits = DatasetInfo(
        name='digits', num_classes=10, source='digits',
        class_names=[str(d) for d in range(10)],
        random_flip=False, train_area_range=(0.8, 1.0),
        eval_center_crop=False,
        splits={
            'train': SplitInfo(DIGITS_NUM_TRAIN),
            'eval': SplitInfo(1797 - DIGITS_NUM_TRAIN),
            'trainval': SplitInfo(1797),
        })
    return {info.name: info for info in (
        imagenet, imagenet21k, imagenettfds, cifar10, cifar100, flowers,
        tfflowers, cars, digits)}


# Fine-tune configs: the official `*Ft` dataset configs use these datasets
# with the fine-tune transform ('ft': resize, flip, noise cutout).
_FINETUNE_BASES = {
    'imagenetFt': 'imagenettfds', 'cifar10Ft': 'cifar10',
    'cifar100Ft': 'cifar100', 'flowersFt': 'flowers', 'carsFt': 'cars',
    'tfflowersFt': 'tfflowers',
}


def _build_registry() -> Dict[str, DatasetInfo]:
    bases = _base_datasets()
    registry = dict(bases)
    for name, base in _FINETUNE_BASES.items():
        registry[name] = dataclasses.replace(
            bases[base], name=name, base_name=base, preprocess='ft',
            augname='ft')
    return {name.lower(): info for name, info in registry.items()}


_REGISTRY = _build_registry()
FOLDER = 'folder'


def dataset_names() -> List[str]:
    """Registered dataset names (plus 'folder'), in their canonical case."""
    return sorted([info.name for info in _REGISTRY.values()] + [FOLDER],
                  key=str.lower)


def get_dataset_info(name: str, data_dir: Optional[str] = None
                     ) -> DatasetInfo:
    """Looks up a dataset by name (case-insensitive).

    Args:
        name: a registered name (see `dataset_names()`) or 'folder'.
        data_dir: image-folder root; required for 'folder' (whose classes
            and split sizes are read from disk), ignored otherwise.

    Returns:
        The dataset's `DatasetInfo`.

    Raises:
        ValueError: for an unknown name, or 'folder' without a usable
            `data_dir`.
    """
    if not isinstance(name, str):
        raise ValueError(
            f'Argument `name` must be a dataset name string; received '
            f'name={name!r}.')
    key = name.lower()
    if key == FOLDER:
        return folder_dataset_info(data_dir)
    if key not in _REGISTRY:
        raise ValueError(
            f'Argument `name` must be one of {dataset_names()} '
            f'(case-insensitive); received name={name!r}.')
    return _REGISTRY[key]


# ----------------------------------------------------------------------------
# Digits.
# ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _digits_arrays() -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
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
class _FolderListing:
    class_names: Tuple[str, ...]
    files: Mapping[str, Tuple[Tuple[str, ...], Tuple[int, ...]]]


def _is_image(filename: str) -> bool:
    return filename.lower().endswith(IMAGE_EXTENSIONS)


def _class_files(class_dir: str) -> List[str]:
    found = []
    for root, _, names in tf.io.gfile.walk(class_dir):
        found.extend(os.path.join(root, n) for n in names if _is_image(n))
    return sorted(found)


def _subdirs(directory: str) -> List[str]:
    return sorted(n.rstrip('/') for n in tf.io.gfile.listdir(directory)
                  if tf.io.gfile.isdir(os.path.join(directory, n)))


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
        files.sort(key=lambda p: (zlib.crc32(
            os.path.relpath(p, root).encode('utf-8')), p))
        num_eval = int(round(len(files) * eval_fraction))
        for split, part in (('eval', files[:num_eval]),
                            ('train', files[num_eval:])):
            splits[split][0].extend(sorted(part))
            splits[split][1].extend([label] * len(part))
    return {k: (tuple(p), tuple(l)) for k, (p, l) in splits.items()}


@functools.lru_cache(maxsize=16)
def _list_folder(data_dir: str) -> _FolderListing:
    """Lists an image folder once per process (rebuilds are cheap)."""
    if not tf.io.gfile.isdir(data_dir):
        raise ValueError(
            f'Argument `data_dir` must be an existing directory of class '
            f'sub-folders for the folder dataset; received '
            f'data_dir={data_dir!r}.')
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
                f'{eval_dir!r} have no counterpart in \'train\'.')
        files = {'train': _collect(train_root, class_names),
                 'eval': _collect(eval_root, class_names)}
    else:
        class_names = tuple(top)
        files = _split_by_hash(data_dir, class_names, FOLDER_EVAL_FRACTION)
    files['trainval'] = tuple(
        a + b for a, b in zip(files['train'], files['eval']))
    if not files['trainval'][0]:
        raise ValueError(
            f'Folder dataset: no images with extensions {IMAGE_EXTENSIONS} '
            f'found in class sub-folders of data_dir={data_dir!r} (looked '
            f'for <data_dir>/<class>/... and <data_dir>/train/<class>/...).')
    return _FolderListing(class_names, files)


def folder_dataset_info(data_dir: Optional[str]) -> DatasetInfo:
    """Builds the `DatasetInfo` of an image folder (lists it once, cached).

    Without an explicit eval folder, `FOLDER_EVAL_FRACTION` (20 %) of each
    class is held out for 'eval'.

    Args:
        data_dir: root with one sub-folder per class, or with `train/` and
            `val/` (or `validation/`, `eval/`, `test/`) holding those.

    Returns:
        `DatasetInfo` with class names (sorted folder names) and split sizes.

    Raises:
        ValueError: if `data_dir` is missing, not a directory, or holds no
            images.
    """
    if not data_dir:
        raise ValueError(
            'Argument `data_dir` must name the image-folder root for the '
            f'folder dataset; received data_dir={data_dir!r}.')
    listing = _list_folder(str(data_dir))
    return DatasetInfo(
        name=FOLDER, num_classes=len(listing.class_names), source='folder',
        class_names=list(listing.class_names), data_dir=str(data_dir),
        splits={split: SplitInfo(len(paths))
                for split, (paths, _) in listing.files.items()})


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
            'Skipped %d corrupt or undecodable image(s) in %s (%d in this '
            'process so far).', count, source, total)
        return total

    def total(self, source: Optional[str] = None) -> int:
        with self._lock:
            if source is None:
                return sum(self._counts.values())
            return self._counts[source]

    def by_source(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset(self):
        with self._lock:
            self._counts.clear()


_SKIPPED = _SkipCounter()


def skipped_images(source: Optional[str] = None) -> int:
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


def skipped_images_by_source() -> Dict[str, int]:
    """Skipped-image counts keyed by '<dataset>/<split>'."""
    return _SKIPPED.by_source()


def reset_skipped_images():
    """Sets all skipped-image counts back to zero."""
    _SKIPPED.reset()


def _record_skips(count: tf.Tensor, source: str) -> tf.Tensor:
    def record(value):
        return np.int64(_SKIPPED.add(source, int(value)))
    return tf.py_function(record, [count], tf.int64)


# ----------------------------------------------------------------------------
# Sources: datasets of (payload, label) plus the payload kind.
# ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Source:
    dataset: tf.data.Dataset
    kind: str  # 'bytes' (encoded image), 'path' (image file) or 'pixels'.


def _check_labels(labels: tf.Tensor, info: DatasetInfo) -> tf.Tensor:
    """Asserts every label is in [0, num_classes); returns them unchanged.

    Runs after the decode stage: `ignore_errors` would swallow an assertion
    raised anywhere upstream of it.
    """
    valid = tf.reduce_all((labels >= 0) & (labels < info.num_classes))
    check = tf.debugging.Assert(valid, [
        f'Label outside [0, {info.num_classes}) in dataset {info.name!r} '
        f'(stored label minus offset {info.label_offset}):', labels])
    with tf.control_dependencies([check]):
        return tf.identity(labels)


def _parse_imagenet(record, info):
    features = tf.io.parse_single_example(record, {
        'image/encoded': tf.io.FixedLenFeature([], tf.string),
        'image/class/label': tf.io.FixedLenFeature([], tf.int64),
    })
    label = tf.cast(features['image/class/label'] - info.label_offset,
                    tf.int32)
    return features['image/encoded'], label


def _parse_imagenet21k(record, info):
    features = tf.io.parse_single_example(record, {
        'image': tf.io.FixedLenFeature([], tf.string),
        'labels': tf.io.FixedLenSequenceFeature(
            [], tf.int64, allow_missing=True),
    })
    return features['image'], features['labels'] - info.label_offset


def _tfrecord_source(info, split_info, data_dir, is_training, pipeline,
                     seed) -> _Source:
    pipeline_id, num_pipelines = pipeline
    start, stop = split_info.file_slice
    if not data_dir:
        raise ValueError(
            f'Argument `data_dir` must be the directory of the '
            f'{info.name!r} TFRecord files (pattern '
            f'{split_info.file_pattern!r}); received data_dir={data_dir!r}.')
    pattern = os.path.join(data_dir, split_info.file_pattern)
    files = sorted(tf.io.gfile.glob(pattern))[start:stop]
    if not files:
        raise ValueError(
            f'No TFRecord files for dataset {info.name!r}: looked for '
            f'{pattern!r} (sorted matches [{start}:{stop}]) and found none.')
    by_example = num_pipelines > len(files)
    if num_pipelines > 1 and not by_example:
        files = files[pipeline_id::num_pipelines]
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if is_training:
        dataset = dataset.shuffle(len(files), seed=seed)
    dataset = dataset.interleave(
        _plain(lambda f: tf.data.TFRecordDataset(
            f, buffer_size=_TFRECORD_READ_BUFFER)),
        cycle_length=min(len(files), 16), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True)
    if num_pipelines > 1 and by_example:
        dataset = dataset.shard(num_pipelines, pipeline_id)
    parse = (_parse_imagenet21k if info.record_format == 'imagenet21k'
             else _parse_imagenet)
    dataset = dataset.map(_plain(lambda r: parse(r, info)),
                          num_parallel_calls=tf.data.AUTOTUNE)
    return _Source(dataset, 'bytes')


def _tfds_source(info, split_info, data_dir, is_training, pipeline,
                 seed) -> _Source:
    import tensorflow_datasets as tfds  # Slow import; only when used.

    pipeline_id, num_pipelines = pipeline
    split = split_info.tfds_split
    if num_pipelines > 1:
        split = tfds.even_splits(split, n=num_pipelines)[pipeline_id]
    try:
        builder = tfds.builder(info.tfds_name, data_dir=data_dir)
        dataset = builder.as_dataset(
            split=split, shuffle_files=is_training,
            decoders={'image': tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(shuffle_seed=seed,
                                        try_autocache=False))
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

    return _Source(
        dataset.map(_plain(to_pair), num_parallel_calls=tf.data.AUTOTUNE),
        'bytes')


def _folder_source(info, split, data_dir, pipeline) -> _Source:
    listing = _list_folder(str(data_dir or info.data_dir))
    paths, labels = listing.files[split]
    if not paths:
        raise ValueError(
            f'Folder dataset {data_dir!r} has no images in split {split!r}.')
    dataset = tf.data.Dataset.from_tensor_slices(
        (list(paths), np.asarray(labels, np.int32)))
    return _Source(_shard(dataset, pipeline), 'path')


def _digits_source(split, pipeline) -> _Source:
    images, labels = _digits_arrays()[split]
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    return _Source(_shard(dataset, pipeline), 'pixels')


def _shard(dataset, pipeline):
    pipeline_id, num_pipelines = pipeline
    if num_pipelines > 1:
        dataset = dataset.shard(num_pipelines, pipeline_id)
    return dataset


def _make_source(info, split, data_dir, is_training, pipeline, seed):
    split_info = info.get_split(split)
    if info.source == 'tfrecord':
        return _tfrecord_source(info, split_info, data_dir, is_training,
                                pipeline, seed)
    if info.source == 'tfds':
        return _tfds_source(info, split_info, data_dir, is_training, pipeline,
                            seed)
    if info.source == 'folder':
        return _folder_source(info, split, data_dir, pipeline)
    if info.source == 'digits':
        return _digits_source(split, pipeline)
    raise ValueError(
        f'DatasetInfo.source must be one of {SOURCES}; received '
        f'source={info.source!r}.')


# ----------------------------------------------------------------------------
# Pipeline.
# ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Plan:
    """Resolved, validated choices for one pipeline build."""

    info: DatasetInfo
    split: str
    is_training: bool
    family: str
    augname: Optional[str]
    image_size: int
    batch_size: int
    ram: float
    ra_num_layers: int
    mixup_alpha: float
    cutmix_alpha: float
    image_dtype: tf.DType
    repeat: bool
    drop_remainder: bool
    pipeline: Tuple[int, int]
    seeds: Tuple[int, int, int]  # shuffle, per-image, per-batch.
    deterministic: bool  # Keep element order (seeded or eval pipelines).

    @property
    def source_name(self) -> str:
        return f'{self.info.name}/{self.split}'


def _element_seed(plan: _Plan, index: tf.Tensor) -> tf.Tensor:
    """Seeds `[2, 2]` (crop, finish) for the element at `index`."""
    seed = tf.stack([tf.constant(plan.seeds[1], tf.int64), index])
    return augment.split_seed(seed, 2)


def _crop_element(plan: _Plan, index, payload, kind):
    if kind == 'path':
        payload = tf.io.read_file(payload)
    return preprocessing.decode_and_crop(
        payload, plan.family, plan.is_training, plan.image_size,
        seed=_element_seed(plan, index)[0],
        area_range=plan.info.train_area_range,
        center_crop=plan.info.eval_center_crop)


def _decode_stage(dataset: tf.data.Dataset, kind: str, plan: _Plan):
    """Maps (payload, label) to (index, uint8 crop, label), skipping failures.

    Encoded images are decoded inside `ignore_errors`. A sentinel ends every
    pass over the data; a scan over the surviving (ordered) indices counts
    the gaps left by dropped images, and raises if a whole pass yields none.
    """
    if kind == 'pixels':
        if plan.repeat:
            dataset = dataset.repeat()
        return dataset.enumerate().map(
            _plain(lambda i, e: (i, _crop_element(plan, i, e[0], kind), e[1])),
            num_parallel_calls=tf.data.AUTOTUNE)

    label_spec = dataset.element_spec[1]
    empty_label = (tf.constant(-1, label_spec.dtype) if label_spec.shape.rank
                   == 0 else tf.zeros([0], label_spec.dtype))
    sentinel = tf.data.Dataset.from_tensors(
        (tf.constant(''), empty_label, tf.constant(True)))
    dataset = dataset.map(_plain(lambda p, l: (p, l, tf.constant(False))))
    dataset = dataset.concatenate(sentinel)
    if plan.repeat:
        dataset = dataset.repeat()

    def decode(index, element):
        payload, label, is_sentinel = element
        image = tf.cond(
            is_sentinel, lambda: tf.zeros([1, 1, 3], tf.uint8),
            lambda: _crop_element(plan, index, payload, kind))
        return index, image, label, is_sentinel

    dataset = dataset.enumerate().map(
        _plain(decode), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True)
    dataset = dataset.ignore_errors(log_warning=True)
    dataset = dataset.scan(
        (tf.constant(-1, tf.int64), tf.constant(0, tf.int64),
         tf.constant(0, tf.int64)),
        _plain(functools.partial(_count_skips, plan)))
    dataset = dataset.filter(_plain(lambda i, image, label, is_sentinel:
                                    tf.logical_not(is_sentinel)))
    return dataset.map(
        _plain(lambda i, image, label, is_sentinel: (i, image, label)))


def _count_skips(plan: _Plan, state, element):
    """Scan step: counts dropped images between consecutive indices."""
    last_index, decoded, skipped_in_pass = state
    index, _, _, is_sentinel = element
    skipped = index - last_index - 1
    recorded = tf.cond(skipped > 0,
                       lambda: _record_skips(skipped, plan.source_name),
                       lambda: tf.constant(0, tf.int64))
    skipped_in_pass += skipped
    empty_pass = is_sentinel & tf.equal(decoded, 0)
    if not plan.repeat:  # A finite empty shard is fine; all-corrupt is not.
        empty_pass &= skipped_in_pass > 0
    check = tf.debugging.Assert(tf.logical_not(empty_pass), [
        f'Dataset {plan.source_name!r} (input pipeline {plan.pipeline[0]} of '
        f'{plan.pipeline[1]}): a whole pass over the data gave no decodable '
        f'image; images skipped in that pass:', skipped_in_pass])
    with tf.control_dependencies([recorded, check]):
        new_state = (index,
                     tf.where(is_sentinel, tf.constant(0, tf.int64),
                              decoded + 1),
                     tf.where(is_sentinel, tf.constant(0, tf.int64),
                              skipped_in_pass))
    return new_state, element


def _finish_element(plan: _Plan, index, image, label):
    image = preprocessing.finish(
        image, plan.family, plan.is_training, plan.image_size, plan.augname,
        plan.ra_num_layers, plan.ram, plan.info.random_flip,
        seed=_element_seed(plan, index)[1])
    num_classes = plan.info.num_classes
    label = _check_labels(label, plan.info)
    if plan.info.multi_label:
        label = tf.minimum(
            tf.reduce_sum(tf.one_hot(label, num_classes), axis=0), 1.0)
    else:
        label = tf.one_hot(label, num_classes)
    return image, label


def _batch_stage(dataset, plan: _Plan):
    dataset = dataset.batch(plan.batch_size, drop_remainder=plan.drop_remainder,
                            num_parallel_calls=tf.data.AUTOTUNE,
                            deterministic=plan.deterministic)
    if plan.is_training and (plan.mixup_alpha or plan.cutmix_alpha):
        mix_seed = tf.constant(plan.seeds[2], tf.int64)
        dataset = dataset.enumerate().map(
            _plain(lambda b, batch: mixing.mix_batch(
                batch[0], batch[1], plan.mixup_alpha, plan.cutmix_alpha,
                seed=tf.stack([mix_seed, b]))),
            num_parallel_calls=tf.data.AUTOTUNE)
    static_batch = plan.batch_size if plan.drop_remainder else None
    image_shape = [static_batch, plan.image_size, plan.image_size, 3]
    label_shape = [static_batch, plan.info.num_classes]

    def finalize(images, labels):
        images = tf.cast(images, plan.image_dtype)
        images.set_shape(image_shape)
        labels.set_shape(label_shape)
        return images, labels

    return dataset.map(_plain(finalize), num_parallel_calls=tf.data.AUTOTUNE)


def _should_cache(cache, kind, num_images):
    if cache is None:
        return kind == 'bytes' and num_images <= AUTO_CACHE_MAX_IMAGES
    return bool(cache) and kind != 'pixels'


def _derive_seeds(seed: Optional[int], pipeline_id: int
                  ) -> Tuple[int, int, int]:
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    state = np.random.SeedSequence([int(seed), pipeline_id]).generate_state(3)
    return tuple(int(s) % (2**31 - 1) for s in state)


def _check_positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
            value < minimum):
        raise ValueError(
            f'Argument `{name}` must be an integer >= {minimum}; received '
            f'{name}={value!r}.')


def _check_non_negative(name, value):
    if isinstance(value, bool) or not isinstance(
            value, (int, float, np.number)) or value < 0:
        raise ValueError(
            f'Argument `{name}` must be a number >= 0; received '
            f'{name}={value!r}.')


def _resolve_dtype(image_dtype) -> tf.DType:
    try:
        dtype = tf.as_dtype(image_dtype)
    except TypeError:
        dtype = None
    if dtype not in _IMAGE_DTYPES:
        raise ValueError(
            f'Argument `image_dtype` must be one of '
            f'{[d.name for d in _IMAGE_DTYPES]}; received '
            f'image_dtype={image_dtype!r}.')
    return dtype


def _make_plan(info, split, image_size, batch_size, is_training, preprocess,
               augname, ram, ra_num_layers, mixup_alpha, cutmix_alpha,
               image_dtype, input_context, seed, drop_remainder, repeat
               ) -> _Plan:
    info.get_split(split)
    _check_positive_int('image_size', image_size)
    _check_positive_int('batch_size', batch_size)
    _check_positive_int('ra_num_layers', ra_num_layers, minimum=0)
    for name, value in (('ram', ram), ('mixup_alpha', mixup_alpha),
                        ('cutmix_alpha', cutmix_alpha)):
        _check_non_negative(name, value)
    if is_training is None:
        is_training = split in ('train', 'trainval')
    family = preprocessing.resolve_family(preprocess, augname, info.preprocess)
    if input_context is not None:
        pipeline = (input_context.input_pipeline_id,
                    input_context.num_input_pipelines)
    else:
        pipeline = (0, 1)
    return _Plan(
        info=info, split=split, is_training=bool(is_training), family=family,
        augname=augname, image_size=int(image_size),
        batch_size=int(batch_size), ram=float(ram),
        ra_num_layers=int(ra_num_layers), mixup_alpha=float(mixup_alpha),
        cutmix_alpha=float(cutmix_alpha),
        image_dtype=_resolve_dtype(image_dtype),
        repeat=bool(is_training if repeat is None else repeat),
        drop_remainder=bool(
            is_training if drop_remainder is None else drop_remainder),
        pipeline=pipeline, seeds=_derive_seeds(seed, pipeline[0]),
        deterministic=seed is not None or not is_training)


def build_dataset(
        dataset: Union[str, DatasetInfo],
        split: str = 'train',
        data_dir: Optional[str] = None,
        image_size: int = 224,
        batch_size: int = 64,
        is_training: Optional[bool] = None,
        preprocess: Optional[str] = None,
        augname: Optional[str] = None,
        ram: float = 15.0,
        ra_num_layers: int = 2,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        image_dtype=tf.float32,
        input_context: Optional[tf.distribute.InputContext] = None,
        seed: Optional[int] = None,
        drop_remainder: Optional[bool] = None,
        cache: Union[None, bool, str] = None,
        shuffle_buffer: Optional[int] = None,
        repeat: Optional[bool] = None) -> tf.data.Dataset:
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

    Returns:
        A `tf.data.Dataset` of `(images, labels)`: images
        `[batch, image_size, image_size, 3]` of `image_dtype`, labels
        `[batch, num_classes]` float32.

    Raises:
        ValueError: for an unknown dataset, split or augname, invalid
            arguments, a missing `data_dir`, or a file pattern matching
            nothing.
    """
    info = dataset if isinstance(dataset, DatasetInfo) else (
        get_dataset_info(dataset, data_dir=data_dir))
    plan = _make_plan(info, split, image_size, batch_size, is_training,
                      preprocess, augname, ram, ra_num_layers, mixup_alpha,
                      cutmix_alpha, image_dtype, input_context, seed,
                      drop_remainder, repeat)
    num_images = info.get_split(split).num_images
    source = _make_source(info, split, data_dir, plan.is_training,
                          plan.pipeline, plan.seeds[0])
    data = source.dataset
    if _should_cache(cache, source.kind, num_images):
        data = data.cache(cache if isinstance(cache, str) else '')
    if plan.is_training:
        if shuffle_buffer is not None:
            _check_positive_int('shuffle_buffer', shuffle_buffer)
        buffer = shuffle_buffer or min(DEFAULT_SHUFFLE_BUFFER,
                                       max(num_images, 1))
        data = data.shuffle(buffer, seed=plan.seeds[0],
                            reshuffle_each_iteration=True)
    data = _decode_stage(data, source.kind, plan)
    data = data.map(_plain(functools.partial(_finish_element, plan)),
                    num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=plan.deterministic)
    data = _batch_stage(data, plan)
    options = tf.data.Options()
    options.threading.max_intra_op_parallelism = 1
    data = data.with_options(options).prefetch(tf.data.AUTOTUNE)
    logging.info(
        'Input pipeline %s: %s source, %s transform, size %d, batch %d, '
        'training=%s, augname=%s, ram=%.3g, mixup=%.3g, cutmix=%.3g, '
        'pipeline %d of %d.', plan.source_name, info.source, plan.family,
        plan.image_size, plan.batch_size, plan.is_training, plan.augname,
        plan.ram, plan.mixup_alpha, plan.cutmix_alpha, *plan.pipeline)
    return data
