"""A training stage's pipeline: exactly the batches the stage needs, from where it resumes.

`build_dataset(skip_batches=n, num_batches=m)` must yield batches n..n+m-1 of the unskipped
pipeline, bit for bit (per-image crops and augmentation, mixup/CutMix pairs), and then end, so
nothing is decoded past the stage's last step. In-memory digits skip before cropping; encoded
images (a folder here, with a corrupt file) skip whole batches after batching.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from efficientnetv2 import data

# Every source of per-image and per-batch randomness of the train pipeline.
RANDOM = dict(augname='randaug', ram=10, mixup_alpha=0.4, cutmix_alpha=0.4, seed=5)


def _batches(dataset):
    return [(images.numpy(), labels.numpy()) for images, labels in dataset]


def _assert_same(got, expected):
    assert len(got) == len(expected)
    for (images, labels), (images_ref, labels_ref) in zip(got, expected):
        np.testing.assert_array_equal(images, images_ref)
        np.testing.assert_array_equal(labels, labels_ref)


@pytest.fixture(scope='module')
def small_folder(tmp_path_factory):
    """Two classes of 7 small PNGs each, one of them corrupt."""
    root = tmp_path_factory.mktemp('stage_folder')
    rng = np.random.RandomState(0)
    for name in ('ant', 'bee'):
        os.makedirs(root / 'train' / name)
        os.makedirs(root / 'val' / name)
        for i in range(7):
            image = rng.randint(0, 256, (20, 20, 3)).astype(np.uint8)
            payload = tf.io.encode_png(image).numpy()
            if name == 'bee' and i == 3:
                payload = b'not an image'
            (root / 'train' / name / f'{i}.png').write_bytes(payload)
        (root / 'val' / name / '0.png').write_bytes(tf.io.encode_png(image).numpy())
    return str(root)


def test_digits_skip_before_cropping_gives_the_same_batches():
    # 1,437 digits at batch 8: skipping 190 batches crosses into the second (reshuffled) epoch.
    args = dict(image_size=16, batch_size=8, **RANDOM)
    reference = _batches(data.build_dataset('digits', **args).skip(190).take(5))
    resumed = data.build_dataset('digits', skip_batches=190, num_batches=5, **args)
    _assert_same(_batches(resumed), reference)
    # Mixing really happened (soft labels), so the batch indices of the mix seeds match too.
    assert any(np.any((labels > 0) & (labels < 1)) for _, labels in reference)


def test_folder_skip_after_batching_gives_the_same_batches(small_folder):
    args = dict(image_size=16, batch_size=3, **RANDOM)
    reference = _batches(
        data.build_dataset('folder', data_dir=small_folder, **args).skip(6).take(4)
    )
    resumed = data.build_dataset(
        'folder', data_dir=small_folder, skip_batches=6, num_batches=4, **args
    )
    _assert_same(_batches(resumed), reference)


@pytest.mark.parametrize('dataset', ['digits', 'folder'])
def test_num_batches_ends_the_pipeline(dataset, small_folder):
    bounded = data.build_dataset(
        dataset, data_dir=small_folder, image_size=16, batch_size=4, seed=1, num_batches=7
    )
    assert int(bounded.cardinality()) == 7  # A folder's too, though corrupt files are dropped.
    iterator = iter(bounded)
    for _ in range(7):
        images, labels = next(iterator)
        assert images.shape == (4, 16, 16, 3)
    with pytest.raises(StopIteration):
        next(iterator)
    # Without a bound a training pipeline repeats: 12 batches of 4 from 13 decodable images.
    endless = data.build_dataset(dataset, data_dir=small_folder, image_size=16, batch_size=4)
    assert endless.cardinality() == tf.data.INFINITE_CARDINALITY
    assert len(_batches(endless.take(12))) == 12


def test_finite_folder_pipeline_has_the_length_of_its_listing(small_folder):
    # 14 listed train images, one corrupt: 3 full batches of 4 either way, as declared.
    args = dict(data_dir=small_folder, image_size=16, seed=1, repeat=False)
    finite = data.build_dataset('folder', batch_size=4, **args)
    assert int(finite.cardinality()) == 3
    assert len(_batches(finite)) == 3
    # At batch 7 the corrupt file costs a batch (13 // 7 of the 14 // 7 declared): a clear
    # error instead of a length that does not hold.
    short = data.build_dataset('folder', batch_size=7, **args)
    assert int(short.cardinality()) == 2
    with pytest.raises(tf.errors.InvalidArgumentError, match='Remove or repair those files'):
        _batches(short)


def test_eval_pipeline_skip_and_bound_keep_the_partial_batch():
    # 360 eval digits at batch 50: 7 full batches and a partial one of 10.
    full = _batches(data.build_dataset('digits', split='eval', image_size=8, batch_size=50))
    tail = _batches(
        data.build_dataset(
            'digits', split='eval', image_size=8, batch_size=50, skip_batches=6, num_batches=5
        )
    )
    _assert_same(tail, full[6:])
    assert [len(labels) for _, labels in tail] == [50, 10]


def test_bad_skip_or_bound_names_the_argument():
    with pytest.raises(ValueError, match='skip_batches'):
        data.build_dataset('digits', skip_batches=-1)
    with pytest.raises(ValueError, match='num_batches'):
        data.build_dataset('digits', num_batches=2.5)
