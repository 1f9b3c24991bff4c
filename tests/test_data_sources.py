"""Input pipelines on small data written by the tests themselves.

Images in the TFRecord and folder fixtures are flat colours that encode
their identity: red = 20 * label + 10, green = 5 * index. After the eval
transform the mean colour gives back (label, index), which checks label
pairing, sharding and skipping independently of the pipeline's own labels.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from efficientnetv2 import config as config_lib
from efficientnetv2 import data
from efficientnetv2.data import sources

SIZE = 16


def _colour_image(label, index, height=20, width=24):
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = 20 * label + 10
    image[..., 1] = 5 * index
    image[..., 2] = 60
    return image


def _jpeg(label, index, **kwargs):
    return tf.io.encode_jpeg(_colour_image(label, index, **kwargs), quality=95).numpy()


def _bytes_feature(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int_feature(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _imagenet_record(encoded, stored_label):
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                'image/encoded': _bytes_feature(encoded),
                'image/class/label': _int_feature([stored_label]),
            }
        )
    ).SerializeToString()


def _write(path, records):
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)


def _identify(images, family='v2'):
    """(label, index) pairs recovered from flat-colour images."""
    pixels = data.preprocessing.denormalize(images, family).numpy()
    means = pixels.mean(axis=(1, 2))
    return [(int(round((r - 10) / 20)), int(round(g / 5))) for r, g, _ in means]


def _collect(dataset):
    images, labels = [], []
    for batch_images, batch_labels in dataset:
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(images), np.concatenate(labels)


@pytest.fixture(scope='module')
def imagenet_dir(tmp_path_factory):
    """22 train shards x 2 images and 2 validation shards x 3 images."""
    root = tmp_path_factory.mktemp('imagenet')
    index = 0
    for shard in range(22):
        records = []
        for _ in range(2):
            records.append(_imagenet_record(_jpeg(index % 7, index), index % 7 + 1))
            index += 1
        _write(str(root / f'train-{shard:05d}-of-00022'), records)
    for shard in range(2):
        records = []
        for _ in range(3):
            records.append(_imagenet_record(_jpeg(index % 7, index), index % 7 + 1))
            index += 1
        _write(str(root / f'validation-{shard:05d}-of-00002'), records)
    return str(root)


@pytest.fixture(scope='module')
def folder_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('folder')
    index = 0
    for label, name in enumerate(['cat', 'dog', 'emu']):
        os.makedirs(root / name / 'sub')
        for i in range(5):
            image = _colour_image(label, index)
            if i % 2:
                encoded = tf.io.encode_png(image).numpy()
                path = root / name / f'{index}.PNG'
            else:
                encoded = tf.io.encode_jpeg(image, quality=95).numpy()
                path = root / name / 'sub' / f'{index}.jpg'
            path.write_bytes(encoded)
            index += 1
    (root / 'cat' / 'notes.txt').write_text('not an image')
    return str(root)


# ----------------------------------------------------------------------------
# Registry.
# ----------------------------------------------------------------------------
def test_registry_lookup_and_facts():
    info = data.get_dataset_info('ImageNet')
    assert info.num_classes == 1000 and info.label_offset == 1
    assert info.splits['train'].num_images == 1_256_144
    assert info.splits['minival'].file_slice == (0, 20)
    assert data.get_dataset_info('imagenet21k').multi_label
    finetune = data.get_dataset_info('CIFAR10FT')
    assert (finetune.name, finetune.base_name, finetune.preprocess) == (
        'cifar10Ft',
        'cifar10',
        'ft',
    )
    assert finetune.splits == data.get_dataset_info('cifar10').splits
    assert data.get_dataset_info('imagenetFt').tfds_name == 'imagenet2012'
    # The fine-tune facts live in config.py beside the recipe; the registry
    # builds its *Ft entries from them.
    for name, base in data.registry.FINETUNE_BASES.items():
        info = data.get_dataset_info(name)
        assert (info.base_name, info.augname) == (base, 'ft')
        recipe = config_lib.DATASET_RECIPES[name.lower()]
        assert (recipe['data']['augname'], recipe['data']['preprocess']) == (
            info.augname,
            info.preprocess,
        )
    for name in (
        'carsFt',
        'flowersFt',
        'tfflowersFt',
        'cifar100Ft',
        'imagenettfds',
        'flowers',
        'cars',
        'tfflowers',
    ):
        assert data.get_dataset_info(name).source == 'tfds'
    digits = data.get_dataset_info('digits')
    assert digits.class_names == [str(d) for d in range(10)]
    assert (digits.splits['train'].num_images, digits.splits['eval'].num_images) == (1437, 360)
    with pytest.raises(ValueError, match='cifar100Ft'):
        data.get_dataset_info('mnist')
    with pytest.raises(ValueError, match='data_dir'):
        data.get_dataset_info('folder')
    with pytest.raises(ValueError, match="'eval', 'train', 'trainval'"):
        digits.get_split('validation')


# ----------------------------------------------------------------------------
# Digits.
# ----------------------------------------------------------------------------
def test_digits_eval_pixels_and_labels_are_exact():
    from sklearn import datasets as sk_datasets

    digits = sk_datasets.load_digits()
    order = np.random.RandomState(0).permutation(1797)[1437:]
    dataset = data.build_dataset('digits', split='eval', image_size=8, batch_size=100)
    images, labels = _collect(dataset)
    assert images.shape == (360, 8, 8, 3) and labels.shape == (360, 10)
    np.testing.assert_array_equal(labels.argmax(1), digits.target[order])
    pixels = data.preprocessing.denormalize(images, 'v2').numpy()
    np.testing.assert_allclose(pixels[..., 1], np.round(digits.images[order] * 255 / 16), atol=1e-3)


def test_digits_training_stage_arguments():
    small = data.build_dataset('digits', image_size=16, batch_size=8, seed=1)
    images, labels = next(iter(small))
    assert images.shape == (8, 16, 16, 3) and images.dtype == tf.float32
    np.testing.assert_array_equal(labels.numpy().max(1), 1.0)
    outputs = {}
    for ram in (5.0, 15.0):
        big = data.build_dataset(
            'digits',
            image_size=24,
            batch_size=8,
            seed=1,
            augname='randaug',
            ram=ram,
            mixup_alpha=0.5,
            image_dtype=tf.bfloat16,
        )
        images, labels = next(iter(big))
        assert images.shape == (8, 24, 24, 3) and images.dtype == tf.bfloat16
        # Mixed: some soft label (a pair of equal labels may still sum to exactly 1).
        assert np.any((labels.numpy() > 0) & (labels.numpy() < 1))
        np.testing.assert_allclose(labels.numpy().sum(1), 1.0, rtol=1e-5)
        outputs[ram] = images.numpy().astype(np.float32)
    assert np.abs(outputs[5.0] - outputs[15.0]).max() > 0.1


def _one_op_randaug_batch(image_size, **kwargs):
    """The first 64 digits of a seeded pipeline with one RandAugment op at M=10 per image."""
    dataset = data.build_dataset(
        'digits',
        image_size=image_size,
        batch_size=64,
        seed=3,
        augname='randaug',
        ra_num_layers=1,
        ram=10.0,
        **kwargs,
    )
    images, _ = next(iter(dataset))
    return images


def test_solarize_wrap_reaches_randaugment():
    # One RandAugment op at M=10: the images whose op is Solarize are
    # inverted by default (threshold 256 wraps to 0) and left as they are
    # when clamped; every other image is the same in both pipelines.
    pixels = {}
    for wrap in (True, False):
        images = _one_op_randaug_batch(8, solarize_wrap=wrap)
        pixels[wrap] = data.preprocessing.denormalize(images, 'v2').numpy()
    differs = np.abs(pixels[True] - pixels[False]).max(axis=(1, 2, 3)) > 0.5
    assert 0 < differs.sum() < 16  # About 64 / 16 = 4 pick Solarize.
    np.testing.assert_allclose(pixels[True][differs], 255.0 - pixels[False][differs], atol=1e-3)


def test_augment_pixel_scale_reaches_translate_and_cutout_only():
    # One RandAugment op at M=10 per image: halving the pixel constants (translate 100 -> 50
    # px, cutout pad 40 -> 20 px, both inside a 96 px image) changes the images whose op is
    # TranslateX, TranslateY or Cutout (3 of the ops) and no other.
    pixels = {
        scale: _one_op_randaug_batch(96, augment_pixel_scale=scale).numpy() for scale in (1.0, 0.5)
    }
    differs = np.abs(pixels[1.0] - pixels[0.5]).max(axis=(1, 2, 3)) > 1e-3
    assert 0 < differs.sum() < 32  # About 64 * 3 / 16 = 12.
    with pytest.raises(ValueError, match='augment_pixel_scale'):
        data.build_dataset('digits', image_size=16, augment_pixel_scale=0)


# ----------------------------------------------------------------------------
# ImageNet TFRecords.
# ----------------------------------------------------------------------------
def test_imagenet_eval_labels_and_one_pass(imagenet_dir):
    dataset = data.build_dataset(
        'imagenet', split='eval', data_dir=imagenet_dir, image_size=SIZE, batch_size=4
    )
    images, labels = _collect(dataset)
    assert images.shape == (6, SIZE, SIZE, 3) and labels.shape == (6, 1000)
    ids = _identify(images)
    assert sorted(index for _, index in ids) == list(range(44, 50))
    assert [label for label, _ in ids] == list(labels.argmax(1))
    assert [label for label, index in ids] == [i % 7 for _, i in ids]


def test_imagenet_train_split_and_determinism(imagenet_dir):
    def first_batches(seed):
        dataset = data.build_dataset(
            'imagenet',
            split='train',
            data_dir=imagenet_dir,
            image_size=SIZE,
            batch_size=4,
            augname='randaug',
            ram=10,
            mixup_alpha=0.2,
            cutmix_alpha=0.2,
            seed=seed,
        )
        return [b[0].numpy() for b in dataset.take(3)]

    first, again, other = first_batches(7), first_batches(7), first_batches(8)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert any(np.abs(a - b).max() > 0 for a, b in zip(first, other))
    # The train split is files [20:] of the sorted train-* list.
    plain = data.build_dataset(
        'imagenet',
        split='train',
        data_dir=imagenet_dir,
        image_size=SIZE,
        batch_size=4,
        is_training=False,
    )
    images, _ = _collect(plain)
    assert sorted(i for _, i in _identify(images)) == [40, 41, 42, 43]


@pytest.mark.parametrize(
    'split,expected',
    [
        ('eval', list(range(44, 50))),  # 2 files: split by file.
        ('train', list(range(40, 44))),  # 2 files: split by file.
        ('minival', list(range(40))),  # 20 files, 2 pipelines.
    ],
)
def test_imagenet_sharding_has_no_overlap(imagenet_dir, split, expected):
    seen = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline)
        dataset = data.build_dataset(
            'imagenet',
            split=split,
            data_dir=imagenet_dir,
            image_size=SIZE,
            batch_size=64,
            is_training=False,
            input_context=context,
        )
        seen.append({i for _, i in _identify(_collect(dataset)[0])})
    assert not seen[0] & seen[1]
    assert sorted(seen[0] | seen[1]) == expected


def test_sharding_by_example_when_files_are_few(tmp_path):
    _write(
        str(tmp_path / 'validation-00000-of-00001'),
        [_imagenet_record(_jpeg(1, i), 2) for i in range(5)],
    )
    seen = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(2, pipeline, 1)
        dataset = data.build_dataset(
            'imagenet',
            split='eval',
            data_dir=str(tmp_path),
            image_size=SIZE,
            batch_size=8,
            input_context=context,
        )
        seen.append([i for _, i in _identify(_collect(dataset)[0])])
    assert sorted(seen[0] + seen[1]) == list(range(5))
    assert not set(seen[0]) & set(seen[1])


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    good = [_imagenet_record(_jpeg(2, i), 3) for i in range(4)]
    truncated = _jpeg(2, 9)[:60]
    records = [
        good[0],
        _imagenet_record(b'not an image at all', 1),
        good[1],
        good[2],
        _imagenet_record(truncated, 1),
        good[3],
        _imagenet_record(b'\xff\xd8\xff garbage', 1),
    ]
    _write(str(tmp_path / 'validation-00000-of-00001'), records)
    data.reset_skipped_images()
    dataset = data.build_dataset(
        'imagenet', split='eval', data_dir=str(tmp_path), image_size=SIZE, batch_size=3
    )
    images, labels = _collect(dataset)
    assert [i for _, i in _identify(images)] == [0, 1, 2, 3]
    np.testing.assert_array_equal(labels.argmax(1), [2, 2, 2, 2])
    assert data.skipped_images() == 3  # Including the trailing one.
    assert data.skipped_images_by_source() == {'imagenet/eval': 3}
    # Training repeats and keeps counting, one pass at a time.
    training = data.build_dataset(
        'imagenet',
        split='eval',
        is_training=True,
        data_dir=str(tmp_path),
        image_size=SIZE,
        batch_size=4,
        seed=0,
    )
    list(training.take(3))  # Three passes of four good images.
    assert data.skipped_images() >= 3 + 6


def test_all_corrupt_training_data_raises_instead_of_hanging(tmp_path):
    _write(
        str(tmp_path / 'validation-00000-of-00001'),
        [_imagenet_record(b'junk', 1), _imagenet_record(b'more junk', 1)],
    )
    dataset = data.build_dataset(
        'imagenet',
        split='eval',
        is_training=True,
        data_dir=str(tmp_path),
        image_size=SIZE,
        batch_size=2,
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match='no decodable image'):
        next(iter(dataset))


def test_label_out_of_range_is_an_error(tmp_path):
    _write(
        str(tmp_path / 'validation-00000-of-00001'),
        [_imagenet_record(_jpeg(0, 0), 1), _imagenet_record(_jpeg(0, 1), 0)],
    )  # Stored 0 -> -1.
    dataset = data.build_dataset(
        'imagenet', split='eval', data_dir=str(tmp_path), image_size=SIZE, batch_size=2
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match=r'Label outside \[0, 1000\)'):
        _collect(dataset)


def test_missing_data_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r'val\*'):
        data.build_dataset('imagenet', split='eval', data_dir=str(tmp_path))
    with pytest.raises(ValueError, match='data_dir'):
        data.build_dataset('imagenet', split='eval', data_dir=None)
    with pytest.raises(ValueError, match='no images'):
        data.build_dataset('folder', data_dir=str(tmp_path))
    with pytest.raises(ValueError, match='existing directory'):
        data.build_dataset('folder', data_dir=str(tmp_path / 'nope'))


def test_invalid_arguments_name_valid_values():
    with pytest.raises(ValueError, match='batch_size'):
        data.build_dataset('digits', batch_size=0)
    with pytest.raises(ValueError, match='bfloat16'):
        data.build_dataset('digits', image_dtype=tf.int32)
    with pytest.raises(ValueError, match='augname'):
        data.build_dataset('digits', augname='mixaug')
    with pytest.raises(ValueError, match='split'):
        data.build_dataset('digits', split='minival')


# ----------------------------------------------------------------------------
# ImageNet-21k TFRecords.
# ----------------------------------------------------------------------------
def test_imagenet21k_multi_hot_labels(tmp_path):
    for shard in range(17):
        labels = [shard, 21_842] if shard % 2 else [shard]
        record = tf.train.Example(
            features=tf.train.Features(
                feature={
                    'id': _bytes_feature(b'n%05d' % shard),
                    'image': _bytes_feature(_jpeg(1, shard)),
                    'labels': _int_feature(labels),
                }
            )
        ).SerializeToString()
        _write(str(tmp_path / f'imagenet21k-{shard:05d}'), [record])
    dataset = data.build_dataset(
        'imagenet21k', split='eval', data_dir=str(tmp_path), image_size=SIZE, batch_size=16
    )
    images, labels = _collect(dataset)
    assert labels.shape == (16, 21_843)
    for (_, index), row in zip(_identify(images), labels):
        expected = [index, 21_842] if index % 2 else [index]
        assert sorted(np.nonzero(row)[0].tolist()) == expected
    with pytest.raises(ValueError, match=r'\[20:None\]'):
        data.build_dataset('imagenet21k', split='train', data_dir=str(tmp_path))


# ----------------------------------------------------------------------------
# Image folders.
# ----------------------------------------------------------------------------
def test_folder_split_labels_and_class_names(folder_dir):
    info = data.get_dataset_info('folder', data_dir=folder_dir)
    assert info.class_names == ['cat', 'dog', 'emu']
    assert info.splits['trainval'].num_images == 15
    assert info.splits['eval'].num_images == 3  # round(5 * 0.2) per class.
    found = {}
    for split in ('train', 'eval'):
        dataset = data.build_dataset(
            'folder',
            split=split,
            data_dir=folder_dir,
            image_size=SIZE,
            batch_size=5,
            is_training=False,
        )
        images, labels = _collect(dataset)
        ids = _identify(images)
        assert [label for label, _ in ids] == list(labels.argmax(1))
        assert all(index // 5 == label for label, index in ids)
        found[split] = {index for _, index in ids}
    assert not found['train'] & found['eval']
    assert found['train'] | found['eval'] == set(range(15))
    # The split does not move between listings.
    again = sources._split_by_hash(folder_dir, info.class_names, 0.2)
    assert len(again['eval'][0]) == 3
    # Legacy transform on mixed PNG/JPEG files (JPEG-window decode or not).
    legacy = data.build_dataset(
        'folder',
        data_dir=folder_dir,
        image_size=SIZE,
        batch_size=6,
        seed=0,
        augname='effnetv1_autoaug',
    )
    images, labels = next(iter(legacy))
    assert images.shape == (6, SIZE, SIZE, 3) and labels.shape == (6, 3)


def test_folder_train_eval_layout_and_corrupt_file(tmp_path):
    for split, indices in (('train', range(4)), ('val', range(4, 6))):
        for index in indices:
            label = index % 2
            directory = tmp_path / split / f'c{label}'
            directory.mkdir(parents=True, exist_ok=True)
            (directory / f'{index}.jpg').write_bytes(_jpeg(label, index))
    (tmp_path / 'train' / 'c0' / 'broken.jpg').write_bytes(b'\x00' * 50)
    info = data.folder_dataset_info(str(tmp_path))
    assert info.splits['train'].num_images == 5
    assert info.splits['eval'].num_images == 2
    data.reset_skipped_images()
    dataset = data.build_dataset(
        'folder',
        split='train',
        data_dir=str(tmp_path),
        image_size=SIZE,
        batch_size=8,
        is_training=False,
    )
    images, labels = _collect(dataset)
    assert sorted(i for _, i in _identify(images)) == [0, 1, 2, 3]
    assert data.skipped_images('folder/train') == 1


# ----------------------------------------------------------------------------
# TFDS (mocked, offline).
# ----------------------------------------------------------------------------
def test_tfds_cifar10_with_mock_data():
    with tfds.testing.mock_data(num_examples=10):
        train = data.build_dataset(
            'cifar10', image_size=SIZE, batch_size=4, augname='autoaug', seed=3
        )
        images, labels = next(iter(train))
        assert images.shape == (4, SIZE, SIZE, 3)
        assert labels.shape == (4, 10)
        np.testing.assert_array_equal(labels.numpy().sum(1), 1.0)
        evaluation = data.build_dataset('cifar10Ft', split='eval', image_size=SIZE, batch_size=4)
        images, labels = _collect(evaluation)
        assert images.shape == (10, SIZE, SIZE, 3)
        assert images.min() >= -1.0 and images.max() <= 1.0
        reference = tfds.load('cifar10', split='test')
        expected = [int(example['label']) for example in reference]
        assert list(labels.argmax(1)) == expected


def test_tfds_missing_dataset_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="'cifar10'.*not found"):
        data.build_dataset('cifar10', data_dir=str(tmp_path))
