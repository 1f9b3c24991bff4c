"""Input pipelines and augmentation for EfficientNet(V2) training.

Typical use::

    from efficientnetv2 import data
    info = data.get_dataset_info('digits')
    ds = data.build_dataset('digits', split='train', image_size=32,
                            batch_size=64)
    for images, labels in ds.take(1):
        ...
    data.skipped_images()  # corrupt images dropped so far (also logged)

Modules: `registry` (named datasets, `DatasetInfo`), `sources` (TFRecord,
TFDS, image folders, digits; skipped-image counts), `pipeline`
(`build_dataset`), `preprocessing` (crops, resizing, normalisation), `augment`
(RandAugment, AutoAugment, cutout), `mixing` (mixup, CutMix).
"""

from efficientnetv2._tf import tf  # noqa: F401  (without TensorFlow: an error naming it)
from efficientnetv2.data import augment
from efficientnetv2.data import mixing
from efficientnetv2.data import pipeline
from efficientnetv2.data import preprocessing
from efficientnetv2.data import registry
from efficientnetv2.data import sources
from efficientnetv2.data.augment import autoaugment
from efficientnetv2.data.augment import distort_image
from efficientnetv2.data.augment import randaugment
from efficientnetv2.data.mixing import mix_batch
from efficientnetv2.data.pipeline import build_dataset
from efficientnetv2.data.preprocessing import normalize
from efficientnetv2.data.preprocessing import parse_augname
from efficientnetv2.data.preprocessing import preprocess_image
from efficientnetv2.data.preprocessing import resolve_family
from efficientnetv2.data.registry import DatasetInfo
from efficientnetv2.data.registry import SplitInfo
from efficientnetv2.data.registry import dataset_names
from efficientnetv2.data.registry import folder_dataset_info
from efficientnetv2.data.registry import get_dataset_info
from efficientnetv2.data.sources import reset_skipped_images
from efficientnetv2.data.sources import skipped_images
from efficientnetv2.data.sources import skipped_images_by_source

__all__ = [
    'augment',
    'mixing',
    'pipeline',
    'preprocessing',
    'registry',
    'sources',
    'autoaugment',
    'distort_image',
    'randaugment',
    'mix_batch',
    'build_dataset',
    'normalize',
    'parse_augname',
    'preprocess_image',
    'resolve_family',
    'dataset_names',
    'DatasetInfo',
    'folder_dataset_info',
    'get_dataset_info',
    'SplitInfo',
    'reset_skipped_images',
    'skipped_images',
    'skipped_images_by_source',
]
