"""Smoke test: every model builds, a tiny digits run trains, resumes and exports.

Part of the normal suite, and the whole check of `.ci/old_tf_smoke.sh`, which runs it on the
oldest TensorFlow that setup.py admits (with the Keras and TFDS versions tpu/setup.sh pins), as
installed on a Cloud TPU VM image. It must stay fast: no forward pass of a full-size model.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_model import PARAMS  # The published parameter counts of all 18 variants.

import efficientnetv2
from efficientnetv2 import architectures
from efficientnetv2 import experiment
from efficientnetv2 import export
from efficientnetv2 import summary
from efficientnetv2.train import trainer as trainer_lib

TINY = (
    "model.blocks=['r1_k3_s1_e1_i16_o8_c1','r1_k3_s2_e4_i8_o16_c1',"
    "'r1_k3_s2_e4_i16_o24_se0.25'],model.feature_size=32"
)


def test_versions_are_in_the_supported_range():
    major, minor = (int(part) for part in tf.__version__.split('.')[:2])
    assert (2, 16) <= (major, minor) < (2, 22), tf.__version__
    assert int(keras.__version__.split('.')[0]) == 3, keras.__version__


@pytest.mark.skipif(
    not os.environ.get('EFFICIENTNETV2_SMOKE_ALL_MODELS'),
    reason='tests/test_model.py checks all 18 counts in the normal suite; .ci/old_tf_smoke.sh '
    'sets EFFICIENTNETV2_SMOKE_ALL_MODELS=1 to build them on the oldest TensorFlow.',
)
def test_every_variant_builds_with_its_published_parameter_count():
    names = architectures.list_models()
    assert len(names) == 18 and sorted(names) == sorted(PARAMS)
    for name in names:
        model = efficientnetv2.get_model(name)
        trainable, non_trainable = summary.count_params(model)
        assert (trainable, trainable + non_trainable) == PARAMS[name], name
        assert model.output_shape == (None, 1000), name
        del model
        keras.backend.clear_session()


def _tiny_config(overrides):
    config = experiment.build_config('efficientnetv2-b0', 'digits', hparam_str=TINY)
    config.override(
        'train.batch_size=32,train.steps_per_loop=4,train.ckpt_interval=1000,'
        'train.seed=1,eval.batch_size=90,train.image_size=24,'
        'train.min_image_size=12,train.lr_warmup_epochs=0.2,train.lr_base=0.2,'
        'eval.image_size=24'
    )
    return config.override(overrides)


def test_digits_run_trains_resumes_and_exports(tmp_path):
    overrides = 'train.epochs=2,train.stages=2'
    model_dir = str(tmp_path / 'run')
    first = trainer_lib.Trainer(_tiny_config(overrides), model_dir)
    original = first._make_train_loop

    def stop_in_the_second_stage():
        loop = original()

        def wrapped(iterator, num_steps):
            loop(iterator, num_steps)
            if int(first.global_step.numpy()) >= 60:
                first._request_stop(15, None)  # As SIGTERM does.

        return wrapped

    first._make_train_loop = stop_in_the_second_stage
    first.train()
    stopped_at = int(first.global_step.numpy())
    total = first.total_steps
    assert total == 2 * 1437 // 32 and 60 <= stopped_at < total
    assert tf.train.latest_checkpoint(model_dir).endswith(f'ckpt-{stopped_at}')

    resumed = trainer_lib.Trainer(_tiny_config(overrides), model_dir)
    resumed.train()
    assert int(resumed.global_step.numpy()) == total
    steps = [entry['step'] for entry in resumed.history]
    assert steps and min(steps) > stopped_at  # It went on from the checkpoint, not from 0.
    losses = [entry['loss'] for entry in first.history + resumed.history]
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])  # Measured: 2.2 -> 1.1.
    # A smoke check, not an accuracy check: 89 steps give 20-30% (chance: 10%).
    result = resumed.evaluate(use_ema=False)
    assert result['num_images'] == 360 and result['top_1'] > 0.15

    paths = export.export_all(
        resumed.model,
        str(tmp_path / 'export'),
        24,
        preprocess='v2',
        class_names=[str(d) for d in range(10)],
    )
    assert all(os.path.exists(path) for path in paths.values())
    loaded = tf.saved_model.load(paths['saved_model'])
    images = np.random.RandomState(0).randint(0, 256, (2, 40, 30, 3)).astype(np.float32)
    out = loaded.signatures['serving_default'](images=tf.constant(images))
    assert out['probabilities'].shape == (2, 10)
    np.testing.assert_allclose(np.sum(out['probabilities'].numpy(), axis=-1), 1.0, atol=1e-5)
    # TFLite takes [1, 24, 24, 3] pixels and runs the same eval transform inside.
    pixels = np.random.RandomState(2).randint(0, 256, (2, 24, 24, 3)).astype(np.float32)
    served = loaded.signatures['serving_default'](images=tf.constant(pixels))['logits']
    np.testing.assert_allclose(
        export.tflite_predict(paths['tflite'], pixels), served.numpy(), atol=1e-4
    )
    reloaded = keras.models.load_model(paths['keras'])
    batch = np.random.RandomState(1).normal(size=(2, 24, 24, 3)).astype(np.float32)
    np.testing.assert_allclose(
        reloaded(batch, training=False).numpy(),
        resumed.model(batch, training=False).numpy(),
        atol=1e-5,
    )
