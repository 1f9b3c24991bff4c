"""Backend-neutral tests: the Keras surface on whichever backend `KERAS_BACKEND` selects.

The main suite runs them on TensorFlow; `.ci/run` runs this file again on JAX and on PyTorch in
environments without TensorFlow. Tiny models (32 px), a few steps, no data files, offline.

Cross-backend checks: when `EFFNETV2_XBACKEND_DIR` names a folder, each backend writes there a
`.keras` file, a `.weights.h5` file and its logits on a fixed input, and checks the files that
the other backends wrote before it (in .ci/run: TensorFlow, then JAX, then PyTorch).
"""

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import efficientnetv2
from efficientnetv2 import finetune
from efficientnetv2 import keras_workflow
from efficientnetv2 import layers

BACKEND = keras.backend.backend()
TINY_BLOCKS = ['r1_k3_s1_e1_i16_o8_c1', 'r1_k3_s2_e4_i8_o16_c1', 'r1_k3_s2_e4_i16_o24_se0.25']
SIZE = 32
CLASSES = 5
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Imports efficientnetv2 with TensorFlow blocked, as where it is not installed: a None entry in
# sys.modules makes `import tensorflow` raise ImportError and importlib.util.find_spec return
# None (what PyTorch's dynamo probes with).
BLOCK_TF = """
import sys
sys.modules['tensorflow'] = None
"""


def tiny_model(**kwargs):
    args = dict(blocks=TINY_BLOCKS, feature_size=32, num_classes=CLASSES, model_name='tiny')
    args.update(kwargs)
    return efficientnetv2.EfficientNet(**args)


def images(n=2, size=SIZE, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype('float32')


def labels(n, seed=0):
    return keras.utils.to_categorical(np.random.default_rng(seed).integers(0, CLASSES, n), CLASSES)


def compiled(model):
    model.compile(
        keras.optimizers.Adam(1e-3), keras.losses.CategoricalCrossentropy(from_logits=True)
    )
    return model


def _tf_free_backend():
    if BACKEND != 'tensorflow':
        return BACKEND
    # Keras' numpy backend imports JAX, so a TF-only environment has no backend to try.
    return next((b for b in ('jax', 'torch') if importlib.util.find_spec(b)), None)


def test_import_with_tensorflow_blocked(tmp_path):
    backend = _tf_free_backend()
    if backend is None:
        pytest.skip('Neither JAX nor PyTorch is installed (CI runs this in their environments).')
    script = BLOCK_TF + (
        'import numpy as np\n'
        'import efficientnetv2\n'
        'from efficientnetv2 import summary\n'
        f'm = efficientnetv2.EfficientNet({TINY_BLOCKS!r}, feature_size=32, num_classes=3)\n'
        "out = m(np.zeros((1, 32, 32, 3), 'float32'))\n"
        'assert tuple(out.shape) == (1, 3), out.shape\n'
        "assert sys.modules['tensorflow'] is None\n"
        'errors = []\n'
        'for name, call in [\n'
        "    ('flops', lambda: summary.count_flops(m, 32)),\n"
        f"    ('checkpoint', lambda: efficientnetv2.load_weights(m, {str(tmp_path)!r})),\n"
        "    ('data', lambda: __import__('efficientnetv2.data')),\n"
        "    ('export', lambda: __import__('efficientnetv2.export')),\n"
        ']:\n'
        '    try:\n'
        '        call()\n'
        '    except ImportError as error:\n'
        '        errors.append((name, str(error)))\n'
        "print('ERRORS', errors)\n"
        "assert [n for n, _ in errors] == ['flops', 'checkpoint', 'data', 'export'], errors\n"
        "assert all('needs TensorFlow' in e and 'pip install' in e for _, e in errors), errors\n"
    )
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


def test_constructors_feature_extractor_and_parameter_counts():
    model = efficientnetv2.EfficientNetV2B0(input_shape=(SIZE, SIZE, 3))
    assert model.count_params() == 7_200_312  # keras.applications' V2-B0: 7,200,312.
    features = efficientnetv2.get_feature_extractor('efficientnetv2-b0', input_shape=(64, 64, 3))
    assert sorted(features.output) == [f'reduction_{i}' for i in range(1, 6)]
    assert tuple(features.output['reduction_5'].shape) == (None, 2, 2, 192)
    pooled = tiny_model(include_top=False, pooling='avg')
    assert tuple(pooled(images(1)).shape) == (1, 32)


def test_keras_and_weights_files_round_trip(tmp_path):
    keras.utils.set_random_seed(1)
    model = tiny_model()
    x = images()
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    model.save(tmp_path / 'm.keras')
    model.save_weights(tmp_path / 'm.weights.h5')
    loaded = keras.saving.load_model(tmp_path / 'm.keras')
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), expected, atol=1e-6)
    for path in ('m.keras', 'm.weights.h5'):
        fresh = efficientnetv2.load_weights(tiny_model(), str(tmp_path / path))
        np.testing.assert_allclose(keras.ops.convert_to_numpy(fresh(x)), expected, atol=1e-6)


def test_batch_norm_moving_variance_is_bessel_corrected():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (4, 3, 3, 2)).astype('float32')
    norm = layers.BatchNorm(momentum=0.5, epsilon=1e-3)
    out = keras.ops.convert_to_numpy(norm(x, training=True))
    n = 4 * 3 * 3
    mean, biased = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(norm.moving_mean), 0.5 * mean, rtol=1e-5)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(norm.moving_variance),
        0.5 + 0.5 * biased * n / (n - 1),
        rtol=1e-5,
    )
    # Normalised with the biased variance, as the fused kernel.
    np.testing.assert_allclose(out, (x - mean) / np.sqrt(biased + 1e-3), atol=1e-4)


def test_dropout_rate_changes_after_construction():
    dropout = layers.AdaptiveDropout(0.0, seed=1)
    x = np.ones((64, 64), 'float32')
    assert (keras.ops.convert_to_numpy(dropout(x, training=True)) == 0).mean() == 0
    dropout.rate = 0.5
    zeros = (keras.ops.convert_to_numpy(dropout(x, training=True)) == 0).mean()
    assert 0.4 < zeros < 0.6


class _Batches(keras.utils.PyDataset):
    """A PyDataset of random images at one size."""

    def __init__(self, size, batches=2, batch_size=4):
        super().__init__()
        self.size, self.batches, self.batch_size = size, batches, batch_size

    def __len__(self):
        return self.batches

    def __getitem__(self, index):
        n = self.batch_size
        return images(n, self.size, seed=index), labels(n, seed=index)


@pytest.mark.parametrize('source', ['arrays', 'pydataset'])
def test_fit_progressive_with_ema_and_stage_dropout(source):
    keras.utils.set_random_seed(0)
    model = compiled(tiny_model(dropout_rate=0.1))
    plan = efficientnetv2.progressive_plan(
        epochs=2, image_size=SIZE, num_stages=2, min_image_size=16, dropout=(0.1, 0.3)
    )
    sizes, rates = [], []

    def dataset_fn(stage):
        sizes.append(stage.image_size)
        rates.append(model.dropout_rate)
        if source == 'arrays':
            return images(8, stage.image_size), labels(8)
        return _Batches(stage.image_size)

    extra = dict(batch_size=4) if source == 'arrays' else {}
    ema = keras_workflow.ModelEMA(decay=0.5, use_num_updates=False)
    result = efficientnetv2.fit_progressive(model, dataset_fn, plan, ema=ema, verbose=0, **extra)
    assert sizes == [16, 32]
    np.testing.assert_allclose(rates, [0.1, 0.3], rtol=1e-6)
    assert len(result.stages) == 2
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 4
    raw = [keras.ops.convert_to_numpy(v) for v in ema.variables]
    shadows = [keras.ops.convert_to_numpy(s) for s in ema.ema.shadow_variables]
    assert any(not np.allclose(a, b) for a, b in zip(raw, shadows))
    x = images()
    with ema.average_weights():
        averaged = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_array_equal(  # Swapped back exactly.
        [keras.ops.convert_to_numpy(v) for v in ema.variables][0], raw[0]
    )
    ema.copy_to_model()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), averaged, atol=1e-6)


def test_ema_update_is_the_official_formula():
    from efficientnetv2.train import portable_ema

    if BACKEND == 'tensorflow':
        pytest.skip('TensorFlow uses train.ema (tests/test_ema.py).')
    variable = keras.Variable(np.full((3,), 2.0, 'float32'))
    ema = portable_ema.PortableEMA([variable], decay=0.9)
    variable.assign(np.full((3,), 4.0, 'float32'))
    ema.apply(
        step=keras.Variable(0, dtype='int64', trainable=False)
    )  # Warm-up: decay min(0.9, 1 / 10) = 0.1.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ema.shadow_variables[0]), 3.8)
    ema.apply(step=10**6)  # decay 0.9
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ema.shadow_variables[0]), 0.9 * 3.8 + 0.4, rtol=1e-6
    )


def test_finetune_prepare_and_fit_two_phase():
    keras.utils.set_random_seed(0)
    base = tiny_model(num_classes=7)
    model = finetune.prepare(base, num_classes=CLASSES, num_stages=1)
    x, y = images(8), labels(8)
    history = finetune.fit_two_phase(
        model,
        x,
        y=y,
        epochs=2,
        head_epochs=1,
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        learning_rate=1e-3,
        head_learning_rate=1e-2,
        batch_size=4,
        verbose=0,
    )
    assert history is not None
    assert tuple(model(x).shape) == (8, CLASSES)


XBACKEND_DIR = os.environ.get('EFFNETV2_XBACKEND_DIR')


@pytest.mark.skipif(not XBACKEND_DIR, reason='EFFNETV2_XBACKEND_DIR is not set (see .ci/run).')
def test_files_and_logits_agree_across_backends():
    """Same weights -> logits within 1e-5 relative; .keras / .weights.h5 load across backends."""
    os.makedirs(XBACKEND_DIR, exist_ok=True)
    x = images(2, SIZE, seed=7)
    others = sorted(
        f[: -len('.logits.json')]
        for f in os.listdir(XBACKEND_DIR)
        if f.endswith('.logits.json') and not f.startswith(BACKEND + '.')
    )
    for other in others:
        with open(os.path.join(XBACKEND_DIR, other + '.logits.json')) as f:
            reference = np.array(json.load(f))
        scale = np.abs(reference).max()
        for suffix in ('.keras', '.weights.h5'):
            path = os.path.join(XBACKEND_DIR, other + suffix)
            if suffix == '.keras':
                model = keras.saving.load_model(path)
            else:
                model = efficientnetv2.load_weights(tiny_model(), path)
            logits = keras.ops.convert_to_numpy(model(x, training=False))
            np.testing.assert_allclose(
                logits, reference, rtol=0, atol=1e-5 * scale, err_msg=f'{other}{suffix}'
            )
    keras.utils.set_random_seed(3)
    model = tiny_model()
    # A trained-looking state: non-trivial batch-norm statistics.
    model(images(8, SIZE, seed=8), training=True)
    model.save(os.path.join(XBACKEND_DIR, BACKEND + '.keras'))
    model.save_weights(os.path.join(XBACKEND_DIR, BACKEND + '.weights.h5'))
    with open(os.path.join(XBACKEND_DIR, BACKEND + '.logits.json'), 'w') as f:
        json.dump(keras.ops.convert_to_numpy(model(x, training=False)).tolist(), f)


DATA_PARALLEL = """
import numpy as np
import jax
import keras
import efficientnetv2
from efficientnetv2 import layers

devices = jax.devices()
assert len(devices) == 4, devices
keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))

# Batch-norm statistics: each device's quarter of the global batch has another mean.
inputs = keras.Input((2, 2, 3))
norm = layers.BatchNorm(momentum=0.0)
probe = keras.Model(inputs, norm(inputs))
probe.compile(keras.optimizers.SGD(0.0), 'mse')
x = np.repeat(np.arange(8, dtype='float32'), 12).reshape(8, 2, 2, 3)
probe.fit(x, np.zeros_like(x), batch_size=8, epochs=1, verbose=0, shuffle=False)
mean = keras.ops.convert_to_numpy(norm.moving_mean)
variance = keras.ops.convert_to_numpy(norm.moving_variance)
np.testing.assert_allclose(mean, x.mean(), rtol=1e-6)  # Global, not one device's.
np.testing.assert_allclose(variance, x.var() * 32 / 31, rtol=1e-5)  # Bessel over 8 * 2 * 2.

model = efficientnetv2.EfficientNet(%r, feature_size=32, num_classes=5, dropout_rate=0.1)
model.compile(keras.optimizers.Adam(1e-3), keras.losses.CategoricalCrossentropy(from_logits=True))
plan = efficientnetv2.progressive_plan(epochs=2, image_size=32, num_stages=2, min_image_size=16)
rng = np.random.default_rng(0)


def dataset_fn(stage):
    images = rng.uniform(-1, 1, (16, stage.image_size, stage.image_size, 3)).astype('float32')
    return images, keras.utils.to_categorical(rng.integers(0, 5, 16), 5)


result = efficientnetv2.fit_progressive(
    model, dataset_fn, plan, ema=0.9, batch_size=8, verbose=0
)
assert len(result.stages) == 2
shadow = result.ema.ema.shadow_variables[0].value
assert len(shadow.sharding.device_set) == 4, shadow.sharding  # Replicated like the weights.
print('DATA_PARALLEL_OK')
"""


@pytest.mark.skipif(BACKEND != 'jax', reason='keras.distribution.DataParallel: the JAX backend.')
def test_jax_data_parallel_fit_progressive_and_global_batch_norm():
    env = dict(
        os.environ,
        KERAS_BACKEND='jax',
        PYTHONPATH=ROOT,
        XLA_FLAGS='--xla_force_host_platform_device_count=4',
    )
    result = subprocess.run(
        [sys.executable, '-c', DATA_PARALLEL % (TINY_BLOCKS,)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert 'DATA_PARALLEL_OK' in result.stdout, result.stdout[-2000:] + result.stderr[-4000:]
