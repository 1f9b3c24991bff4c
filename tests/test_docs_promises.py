"""Promises of the docs that their code blocks cannot show offline, tested through the user's path.

- `get_model(..., weights='imagenet')` (docs/api.md, README): keras.applications' weights,
  converted. Offline: keras' download is served a weights file of a randomly initialised
  keras.applications model, and the converted model must give that model's logits.
- `--mode=eval` on a directory that has no run (docs/training.md): waits `eval.timeout`
  seconds for config.yaml, then ends with the usage error.
"""

import time

import h5py
import keras
import numpy as np
import pytest
import script_runner
from test_convert import _randomise_batch_norm

import efficientnetv2
from efficientnetv2 import convert


@pytest.mark.filterwarnings('ignore::DeprecationWarning')  # Inside keras' legacy h5 writer.
def test_get_model_imagenet_weights(tmp_path, monkeypatch):
    from keras.src.legacy.saving import legacy_h5_format
    from keras.src.utils import file_utils

    donor = keras.applications.EfficientNetV2B0(weights=None, classifier_activation=None)
    _randomise_batch_norm(donor, seed=4)
    path = str(tmp_path / 'efficientnetv2-b0.h5')
    with h5py.File(path, 'w') as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, donor)
    requested = []

    def get_file(*args, **kwargs):
        requested.append(args or kwargs)
        return path

    monkeypatch.setattr(file_utils, 'get_file', get_file)

    model = efficientnetv2.get_model('efficientnetv2-b0', weights='imagenet')
    assert requested  # Through keras' download, as a user's first call.
    images = np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype('float32')
    expected = keras.ops.convert_to_numpy(donor(images, training=False))
    actual = keras.ops.convert_to_numpy(
        model(convert.keras_preprocessing(donor)(images), training=False)
    )
    assert np.std(expected) > 1e-3
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4)


def test_eval_waits_for_a_run_then_is_a_usage_error(tmp_path):
    model_dir = tmp_path / 'no-run'
    start = time.monotonic()
    done = script_runner.run_main(
        '--mode=eval', f'--model_dir={model_dir}', '--hparam_str=eval.timeout=3', cwd=tmp_path
    )
    assert time.monotonic() - start >= 3
    assert done.returncode != 0
    assert 'No run config' in done.stderr and 'Traceback' not in done.stderr
    assert not model_dir.exists()
