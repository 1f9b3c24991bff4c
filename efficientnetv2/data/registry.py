"""Named datasets: their splits, sizes, classes and source (no recipe numbers).

`get_dataset_info(name)` looks a dataset up (case-insensitive); 'folder' reads
an image folder's classes and split sizes from disk (`folder_dataset_info`).
The fine-tune configs (`*Ft`) are the same data read with the fine-tune
transform; `FINETUNE_BASES` says which dataset each one reads. It is written
once, in config.py beside the fine-tune recipe, and imported here.

The digits `DatasetInfo` turns off the training flip (a mirrored digit is
another symbol or none) and the eval centre crop (an 8x8 image has no margin),
and narrows the Inception crop to area (0.8, 1): at most one row or column is
cut, which in short runs trains better than wider crops.
"""

from collections.abc import Mapping
import dataclasses

# Fine-tune configs (the official `*Ft` dataset configs): which dataset each reads, with the
# fine-tune transform family and augmentation. Defined with the recipes in config.py, their
# one source.
from efficientnetv2.config import FINETUNE_AUGNAME
from efficientnetv2.config import FINETUNE_BASES
from efficientnetv2.config import FINETUNE_PREPROCESS
from efficientnetv2.data import sources
from efficientnetv2.data.sources import DIGITS_NUM_IMAGES
from efficientnetv2.data.sources import DIGITS_NUM_TRAIN


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
    tfds_split: str | None = None
    file_pattern: str | None = None
    file_slice: tuple[int | None, int | None] = (None, None)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Data facts about a named dataset (no training-recipe numbers).

    Attributes:
        name: registry name, e.g. 'imagenet' or 'cifar10Ft'.
        num_classes: number of classes (label vector length).
        splits: split name -> `SplitInfo`.
        source: one of `sources.SOURCES`.
        class_names: class names in label order, or None if not known
            without reading the data.
        multi_label: labels are multi-hot (ImageNet-21k).
        tfds_name: TFDS builder name (tfds source).
        record_format: 'imagenet' or 'imagenet21k' (tfrecord source).
        label_offset: subtracted from stored labels (1 for ImageNet
            TFRecords, whose labels are 1..1000).
        preprocess: transform-family hint (`FINETUNE_PREPROCESS` for the
            `*Ft` configs).
        augname: augmentation hint (`FINETUNE_AUGNAME` for the `*Ft`
            configs).
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
    class_names: list[str] | None = None
    multi_label: bool = False
    tfds_name: str | None = None
    record_format: str | None = None
    label_offset: int = 0
    preprocess: str | None = None
    augname: str | None = None
    base_name: str | None = None
    random_flip: bool = True
    train_area_range: tuple[float, float] | None = None
    eval_center_crop: bool = True
    data_dir: str | None = None

    def get_split(self, split: str) -> SplitInfo:
        """Returns the named split's info; ValueError names the valid ones."""
        if split not in self.splits:
            raise ValueError(
                f'Argument `split` must be one of {sorted(self.splits)} for '
                f'dataset {self.name!r}; received split={split!r}.'
            )
        return self.splits[split]


# ----------------------------------------------------------------------------
# Registry.
# ----------------------------------------------------------------------------
def _tfds_splits(
    train,
    eval_split,
    eval_images,
    train_images,
    minival=None,
    minival_images=None,
    trainval=None,
    trainval_images=None,
):
    splits = {
        'train': SplitInfo(train_images, tfds_split=train),
        'eval': SplitInfo(eval_images, tfds_split=eval_split),
        'minival': SplitInfo(minival_images or eval_images, tfds_split=minival or eval_split),
    }
    if trainval:
        splits['trainval'] = SplitInfo(trainval_images, tfds_split=trainval)
    return splits


def _records(pattern, start, stop, num_images):
    return SplitInfo(num_images, file_pattern=pattern, file_slice=(start, stop))


def _base_datasets() -> dict[str, DatasetInfo]:
    imagenet = DatasetInfo(
        name='imagenet',
        num_classes=1000,
        source='tfrecord',
        record_format='imagenet',
        label_offset=1,
        splits={
            'train': _records('train*', 20, None, 1_256_144),
            'minival': _records('train*', 0, 20, 25_021),
            'eval': _records('val*', None, None, 50_000),
            'trainval': _records('train*', None, None, 1_281_167),
        },
    )
    imagenet21k = DatasetInfo(
        name='imagenet21k',
        num_classes=21_843,
        source='tfrecord',
        record_format='imagenet21k',
        multi_label=True,
        splits={
            'train': _records('imagenet21k*', 20, None, 12_720_275),
            'minival': _records('imagenet21k*', 16, 20, 25_089),
            'eval': _records('imagenet21k*', 0, 16, 100_357),
        },
    )
    # The official minival selector 'train[2%:]' overlaps train; the
    # held-out 'train[98%:]' is used instead.
    imagenettfds = DatasetInfo(
        name='imagenettfds',
        num_classes=1000,
        source='tfds',
        tfds_name='imagenet2012',
        splits=_tfds_splits(
            'train[:98%]',
            'validation',
            50_000,
            1_256_144,
            'train[98%:]',
            25_021,
            'train',
            1_281_167,
        ),
    )
    cifar10 = DatasetInfo(
        name='cifar10',
        num_classes=10,
        source='tfds',
        tfds_name='cifar10',
        class_names=[
            'airplane',
            'automobile',
            'bird',
            'cat',
            'deer',
            'dog',
            'frog',
            'horse',
            'ship',
            'truck',
        ],
        splits=_tfds_splits('train', 'test', 10_000, 50_000),
    )
    cifar100 = DatasetInfo(
        name='cifar100',
        num_classes=100,
        source='tfds',
        tfds_name='cifar100',
        splits=_tfds_splits('train', 'test', 10_000, 50_000),
    )
    # The official config writes 1,020 train images; 'train+validation' has
    # 2,040.
    flowers = DatasetInfo(
        name='flowers',
        num_classes=102,
        source='tfds',
        tfds_name='oxford_flowers102',
        splits=_tfds_splits('train+validation', 'test', 6_149, 2_040, 'validation', 1_020),
    )
    # The official eval selector 'train[30%:]' overlaps train; its count
    # (1,101) is that of the held-out 'train[70%:]', used here.
    tfflowers = DatasetInfo(
        name='tfflowers',
        num_classes=5,
        source='tfds',
        tfds_name='tf_flowers',
        class_names=['dandelion', 'daisy', 'tulips', 'sunflowers', 'roses'],
        splits=_tfds_splits('train[:70%]', 'train[70%:]', 1_101, 2_569),
    )
    cars = DatasetInfo(
        name='cars',
        num_classes=196,
        source='tfds',
        tfds_name='cars196',
        splits=_tfds_splits('train', 'test', 8_041, 8_144),
    )
    digits = DatasetInfo(
        name='digits',
        num_classes=10,
        source='digits',
        class_names=[str(d) for d in range(10)],
        random_flip=False,
        train_area_range=(0.8, 1.0),
        eval_center_crop=False,
        splits={
            'train': SplitInfo(DIGITS_NUM_TRAIN),
            'eval': SplitInfo(DIGITS_NUM_IMAGES - DIGITS_NUM_TRAIN),
            'trainval': SplitInfo(DIGITS_NUM_IMAGES),
        },
    )
    return {
        info.name: info
        for info in (
            imagenet,
            imagenet21k,
            imagenettfds,
            cifar10,
            cifar100,
            flowers,
            tfflowers,
            cars,
            digits,
        )
    }


def _build_registry() -> dict[str, DatasetInfo]:
    bases = _base_datasets()
    registry = dict(bases)
    for name, base in FINETUNE_BASES.items():
        registry[name] = dataclasses.replace(
            bases[base],
            name=name,
            base_name=base,
            preprocess=FINETUNE_PREPROCESS,
            augname=FINETUNE_AUGNAME,
        )
    return {name.lower(): info for name, info in registry.items()}


_REGISTRY = _build_registry()
FOLDER = 'folder'


def dataset_names() -> list[str]:
    """Registered dataset names (plus 'folder'), in their canonical case."""
    return sorted([info.name for info in _REGISTRY.values()] + [FOLDER], key=str.lower)


def get_dataset_info(name: str, data_dir: str | None = None) -> DatasetInfo:
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
        raise ValueError(f'Argument `name` must be a dataset name string; received name={name!r}.')
    key = name.lower()
    if key == FOLDER:
        return folder_dataset_info(data_dir)
    if key not in _REGISTRY:
        raise ValueError(
            f'Argument `name` must be one of {dataset_names()} '
            f'(case-insensitive); received name={name!r}.'
        )
    return _REGISTRY[key]


def folder_dataset_info(data_dir: str | None) -> DatasetInfo:
    """Builds the `DatasetInfo` of an image folder (lists it once, cached).

    Without an explicit eval folder, `sources.FOLDER_EVAL_FRACTION` (20 %) of
    each class is held out for 'eval'.

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
            f'folder dataset; received data_dir={data_dir!r}.'
        )
    listing = sources.list_folder(str(data_dir))
    return DatasetInfo(
        name=FOLDER,
        num_classes=len(listing.class_names),
        source='folder',
        class_names=list(listing.class_names),
        data_dir=str(data_dir),
        splits={split: SplitInfo(len(paths)) for split, (paths, _) in listing.files.items()},
    )
