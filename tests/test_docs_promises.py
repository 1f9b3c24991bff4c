"""Promises of the docs that their code blocks cannot show offline, tested through the user's path.

- `get_model(..., weights='imagenet')` (docs/api.md, README): keras.applications' weights,
  converted. Offline: keras' download is served a weights file of a randomly initialised
  keras.applications model, and the converted model must give that model's logits.
- `--mode=eval` on a directory that has no run (docs/training.md): waits `eval.timeout`
  seconds for config.yaml, then ends with the usage error.
- Exit status 1 on a run error (README, docs/training.md): a non-finite loss (the last good
  checkpoint kept) and an image file that is not there, through main.py.
- `infer` uses the EMA weights and prints the dataset's class names (docs/export.md): digits
  0-9 and CIFAR-10's names, through main.py. (`export` writing the EMA weights is asserted
  by docs/export.md's own block.)
- `python -m efficientnetv2.summary --all` (the module's docstring) prints a row per listed
  model.
- examples/progressive_folder.py (docs/training.md): checkpoints, TensorBoard logs, the EMA
  file and final.keras holding the averaged weights.
- `summary.count_flops` counts keras.applications' models too (docs/api.md).
- A `.keras` file needs `import efficientnetv2` before `keras.models.load_model` (README,
  docs/api.md, docs/export.md): without it, loading fails naming the class.

The list of promises and the test of each: docs/development.md, "Docs promises and their tests".
"""

import os
import re
import shutil
import subprocess
import sys
import time

import h5py
import keras
import numpy as np
import pytest
import script_runner
from test_convert import _randomise_batch_norm

import efficientnetv2
from efficientnetv2 import architectures
from efficientnetv2 import config as config_lib
from efficientnetv2 import convert
from efficientnetv2 import data
from efficientnetv2 import hparams
from efficientnetv2 import predict
from efficientnetv2 import summary

TINY_BLOCKS = ['r1_k3_s1_e1_i16_o8_c1', 'r1_k3_s2_e4_i8_o16_c1', 'r1_k3_s2_e4_i16_o24_se0.25']
TINY = f'model.blocks={TINY_BLOCKS!r},model.feature_size=32'.replace(' ', '')
# One epoch of the 1,437 digits at batch 64: 22 steps, so the EMA (warm-up decay
# min(0.999, (1 + t) / (10 + t)), 0.72 at the end) is far from the raw weights.
RUN_HPARAMS = (
    f'--hparam_str={TINY},train.epochs=1,train.stages=0,train.image_size=16,'
    'eval.image_size=16,train.lr_base=0.05'
)


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


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory):
    """A finished tiny digits run, trained by main.py (checkpoint at step 22, EMA on)."""
    model_dir = tmp_path_factory.mktemp('promises') / 'run'
    done = script_runner.run_main('--mode=train', f'--model_dir={model_dir}', RUN_HPARAMS)
    assert done.returncode == 0, done.stderr[-3000:]
    return model_dir


def _latest_checkpoint(model_dir):
    with open(model_dir / 'checkpoint') as f:
        return re.search(r'model_checkpoint_path: "([^"]+)"', f.read()).group(1)


def test_a_run_error_exits_1_and_keeps_the_last_good_checkpoint(trained_run, tmp_path):
    model_dir = tmp_path / 'run'
    shutil.copytree(trained_run, model_dir)
    good = _latest_checkpoint(model_dir)
    done = script_runner.run_main(
        '--mode=train',
        f'--model_dir={model_dir}',
        RUN_HPARAMS + ',train.epochs=3,train.lr_base=1e30,train.optimizer=sgd',
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert re.search(r'Non-finite loss at step \d+', done.stderr), done.stderr[-3000:]
    assert 'Traceback' not in done.stderr
    assert _latest_checkpoint(model_dir) == good

    missing = tmp_path / 'nope.png'
    done = script_runner.run_main(
        '--mode=infer', f'--model_dir={trained_run}', f'--images={missing}'
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert f'Image file(s) not found: {missing}' in done.stderr
    assert 'Traceback' not in done.stderr


def _infer(model_dir, image):
    """main.py --mode=infer on one image: its printed [(name, probability)], top first."""
    done = script_runner.run_main('--mode=infer', f'--model_dir={model_dir}', f'--images={image}')
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith(f'{image}: ')]
    return [
        (name.strip(), float(p))
        for name, p in re.findall(r'([^,]+?) \(([\d.]+)\)', line[len(f'{image}: ') :])
    ]


def _probabilities(model_dir, image, prefer_ema):
    """Softmax of the run's network on `image`, with its EMA or raw weights."""
    config = config_lib.default_config().override(hparams.load_yaml(str(model_dir / 'config.yaml')))
    model = efficientnetv2.get_model(
        'efficientnetv2-b0', num_classes=10, blocks=list(config.model.blocks), feature_size=32
    )
    efficientnetv2.load_weights(model, str(model_dir), prefer_ema=prefer_ema)
    info = data.get_dataset_info(config.data.dataset)
    pixels = data.preprocessing.preprocess_for_eval(
        image.read_bytes(), **predict.eval_transform(config, info)
    )
    logits = model(keras.ops.expand_dims(pixels, 0), training=False)
    return keras.ops.convert_to_numpy(keras.ops.softmax(logits))[0]


def test_infer_prints_class_names_and_uses_the_ema_weights(trained_run, tmp_path):
    from sklearn import datasets as sk_datasets

    digits = sk_datasets.load_digits()
    image = tmp_path / 'digit.png'
    pixels = (digits.images[0] * 255 / 16).astype(np.uint8)
    keras.utils.save_img(str(image), np.repeat(pixels[..., None], 3, axis=-1), scale=False)

    printed = _infer(trained_run, image)
    assert len(printed) == 5 and {name for name, _ in printed} <= {str(d) for d in range(10)}
    ema = _probabilities(trained_run, image, prefer_ema=True)
    raw = _probabilities(trained_run, image, prefer_ema=False)
    shown = np.array([p for _, p in printed])
    classes = [int(name) for name, _ in printed]
    np.testing.assert_allclose(shown, ema[classes], atol=6e-4)  # Printed with 3 decimals.
    # The raw weights would print other values: further off than the 3-decimal rounding.
    assert np.max(np.abs(raw[classes] - shown)) > 2e-3

    # A CIFAR-10 run prints CIFAR's names: the same 10-class checkpoint, its config naming
    # cifar10 (what a cifar10 run writes; the data itself is not read by infer).
    cifar_run = tmp_path / 'cifar10-run'
    shutil.copytree(trained_run, cifar_run)
    config = (cifar_run / 'config.yaml').read_text()
    (cifar_run / 'config.yaml').write_text(config.replace('dataset: digits', 'dataset: cifar10'))
    printed = _infer(cifar_run, image)
    cifar = predict.class_names(data.get_dataset_info('cifar10'))
    assert cifar[:3] == ['airplane', 'automobile', 'bird'] and len(cifar) == 10
    assert len(printed) == 5 and {name for name, _ in printed} <= set(cifar)


def test_imagenet_names_are_the_wordnet_ids_tfds_ships():
    names = predict.class_names(data.get_dataset_info('imagenet'))
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[0] == 'n01440764' and names[-1] == 'n15075141'
    assert all(re.fullmatch(r'n\d{8}', name) for name in names)


def test_summary_all_prints_a_row_per_listed_model(monkeypatch, capsys):
    # --all walks architectures.list_models(); two small ones stand in for the 18 (building
    # all of them, L2's 480M parameters included, takes minutes).
    monkeypatch.setattr(
        architectures, 'list_models', lambda: ['efficientnetv2-b0', 'efficientnet-b0']
    )
    summary.main(['--all', '--image_size=224'])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert rows == [
        ['efficientnetv2-b0', '224', '7,139,704', '7,200,312', '718,086,176'],
        ['efficientnet-b0', '224', '5,288,548', '5,330,564', '385,814,752'],
    ]


def _example(*args, cwd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    script = os.path.join(script_runner.REPO_ROOT, 'examples', 'progressive_folder.py')
    return subprocess.run(
        [sys.executable, script, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def test_progressive_folder_example_writes_checkpoints_logs_ema_and_final_model(tmp_path):
    rng = np.random.default_rng(0)
    for label, color in (('red', (200, 30, 30)), ('blue', (30, 30, 200))):
        os.makedirs(tmp_path / 'images' / label)
        for i in range(10):
            pixels = np.clip(rng.normal(color, 40, (32, 32, 3)), 0, 255).astype('uint8')
            keras.utils.save_img(str(tmp_path / 'images' / label / f'{i}.png'), pixels, scale=False)
    model_dir = tmp_path / 'run'
    flags = [
        '--data_dir=images',
        f'--model_dir={model_dir}',
        '--image_size=24',
        '--epochs=2',
        '--stages=2',
        '--batch_size=4',
        '--seed=0',
    ]
    done = _example(*flags, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    written = set(os.listdir(model_dir))
    assert {'ckpt-1.keras', 'ckpt-2.keras', 'ema.weights.h5', 'final.keras', 'logs'} <= written
    events = [name for _, _, names in os.walk(model_dir / 'logs') for name in names]
    assert any(name.startswith('events.out.tfevents') for name in events), events
    final = keras.models.load_model(model_dir / 'final.keras')
    assert type(final).__name__ == 'EfficientNet' and final.output_shape == (None, 2)
    # final.keras holds the EMA averages, not the last raw weights (ckpt-2).
    last = keras.models.load_model(model_dir / 'ckpt-2.keras')
    assert any(
        not np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
        for a, b in zip(final.weights, last.weights)
    )
    # With --seed a run replays: weights, data order and augmentation are all seeded.
    again = _example(*flags[:1], f'--model_dir={tmp_path / "again"}', *flags[2:], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    replay = keras.models.load_model(tmp_path / 'again' / 'final.keras')
    for a, b in zip(final.weights, replay.weights):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), err_msg=a.path
        )


def test_count_flops_counts_a_keras_applications_model():
    # The same network as efficientnetv2-b0 (its Rescaling/Normalization layers add no MACs).
    model = keras.applications.EfficientNetV2B0(weights=None)
    assert summary.count_flops(model, 224) == 718_086_176


def test_keras_file_loads_only_after_importing_the_package(tmp_path):
    path = tmp_path / 'm.keras'
    efficientnetv2.get_model('efficientnetv2-b0', num_classes=3, blocks=TINY_BLOCKS).save(path)
    load = f'import keras; keras.models.load_model({str(path)!r})'
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    without = subprocess.run(
        [sys.executable, '-c', load], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert without.returncode != 0 and 'EfficientNet' in without.stderr, without.stderr[-3000:]
    script = f'import efficientnetv2; {load}.summary()'
    done = subprocess.run(
        [sys.executable, '-c', script], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
