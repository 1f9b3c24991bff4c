"""Mixup and CutMix: label sums, weights, masks, batch split."""

import numpy as np
import pytest
import tensorflow as tf

from efficientnetv2.data import mixing

BATCH, SIZE, CLASSES = 8, 12, 5


def _batch():
    """Image b is constant b (so each pixel's source is known); one-hot."""
    images = np.broadcast_to(
        np.arange(BATCH, dtype=np.float32)[:, None, None, None], (BATCH, SIZE, SIZE, 3)
    ).copy()
    labels = tf.one_hot(np.arange(BATCH) % CLASSES, CLASSES).numpy()
    return images, labels


def test_mixup_weights_and_label_sums():
    images, labels = _batch()
    mixed_images, mixed_labels = mixing.mixup(images, labels, 0.4, [1, 2])
    mixed_images, mixed_labels = np.asarray(mixed_images), np.asarray(mixed_labels)
    np.testing.assert_allclose(mixed_labels.sum(1), 1.0, rtol=1e-6)
    # Image b = lam * b + (1 - lam) * (B - 1 - b): recover lam per example.
    partner = np.arange(BATCH)[::-1].astype(np.float32)
    own = np.arange(BATCH, dtype=np.float32)
    for b in range(BATCH):
        if own[b] == partner[b]:
            continue
        lam = (mixed_images[b, 0, 0, 0] - partner[b]) / (own[b] - partner[b])
        assert 0.5 <= lam <= 1.0 + 1e-6
        expected = lam * labels[b] + (1 - lam) * labels[BATCH - 1 - b]
        np.testing.assert_allclose(mixed_labels[b], expected, atol=1e-5)


def test_cutmix_label_weight_is_mean_mask_area():
    images, labels = _batch()
    mixed_images, mixed_labels = mixing.cutmix(images, labels, 1.0, [3, 4])
    mixed_images = np.asarray(mixed_images)
    from_partner = (mixed_images[..., 0] == np.arange(BATCH)[::-1, None, None]) & (
        mixed_images[..., 0] != np.arange(BATCH)[:, None, None]
    )
    # Pixels come from the example itself or its reversed partner only.
    from_self = mixed_images[..., 0] == np.arange(BATCH)[:, None, None]
    assert (from_partner | from_self).all()
    # Middle pair (b, B-1-b) never coincide for even B, so the mask is exact.
    area = from_partner.mean()
    expected = (1 - area) * labels + area * labels[::-1]
    np.testing.assert_allclose(np.asarray(mixed_labels), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(mixed_labels).sum(1), 1.0, 1e-6)


def test_cutmix_masks_are_clipped_boxes():
    masks = np.asarray(mixing.cutmix_masks(64, 10, 14, 0.5, [5, 6]))[..., 0]
    assert masks.shape == (64, 10, 14)
    for mask in masks:
        rows, cols = np.nonzero(mask)
        if rows.size:
            assert mask.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
            assert np.ptp(rows) < 10 and np.ptp(cols) < 14
    assert 0.0 < masks.mean() < 1.0


def test_both_alphas_split_the_batch_in_halves():
    images, labels = _batch()
    mixed_images, mixed_labels = mixing.mix_batch(images, labels, 0.5, 0.5, seed=[7, 8])
    mixed_images = np.asarray(mixed_images)
    half = BATCH // 2
    # First half mixes within itself (partner of b is half-1-b)...
    first = mixed_images[:half, 0, 0, 0]
    assert ((first >= 0) & (first <= half - 1)).all()
    # ...the second half pastes pixels from its own reversed half only.
    second = mixed_images[half:, ..., 0]
    assert set(np.unique(second)) <= set(range(half, BATCH))
    np.testing.assert_allclose(np.asarray(mixed_labels).sum(1), 1.0, 1e-6)


def test_zero_alphas_are_identity_and_seed_is_deterministic():
    images, labels = _batch()
    out_images, out_labels = mixing.mix_batch(images, labels, 0.0, 0.0)
    np.testing.assert_array_equal(out_images, images)
    np.testing.assert_array_equal(out_labels, labels)
    first = mixing.mix_batch(images, labels, 0.2, 0.0, seed=[1, 1])
    second = mixing.mix_batch(images, labels, 0.2, 0.0, seed=[1, 1])
    np.testing.assert_array_equal(first[0], second[0])
    with pytest.raises(ValueError, match='mixup_alpha'):
        mixing.mix_batch(images, labels, -1.0, 0.0)


def test_larger_alpha_mixes_more():
    weights = {}
    for alpha in (0.1, 2.0):
        lam = np.asarray(mixing.sample_beta([4000], alpha, [9, 9]))
        weights[alpha] = np.maximum(lam, 1 - lam).mean()
    # E[max(lam, 1-lam)] is near 1 for small alpha, near 0.67 at alpha 2.
    assert weights[0.1] > 0.9 > 0.75 > weights[2.0]
