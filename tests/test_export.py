"""Export: serving SavedModel (fresh process, TF1 loader), feature vector, TFLite, .keras."""

import os
import pathlib
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf

import efficientnetv2
from efficientnetv2 import export
from efficientnetv2.data import preprocessing

SIZE = 64  # Evaluation size of the exported classifier (< 320: centre crop).
TINY = [
    'r1_k3_s1_e1_i16_o8_c1',
    'r1_k3_s2_e4_i8_o16_c1',
    'r2_k3_s2_e4_i16_o24_se0.25',
    'r1_k3_s2_e6_i24_o32_se0.25',
]
CLASSES = ['cat', 'dog', 'fox', 'owl', 'eel', 'ant']


def tiny_model(**kwargs):
    keras.utils.set_random_seed(0)
    model = efficientnetv2.EfficientNet(
        blocks=TINY, feature_size=48, num_classes=len(CLASSES), model_name='tiny', **kwargs
    )
    rng = np.random.RandomState(0)
    # Non-trivial batch-norm statistics and a spread of logits, with outputs that depend on the
    # input (moving means of the order of the activations' spread, not above it: a network whose
    # every batch norm shifts by +1 outputs nearly the same logits for any image).
    for v in model.weights:
        if 'moving_mean' in v.path:
            v.assign(rng.normal(0, 0.2, v.shape))
        elif 'moving_variance' in v.path or 'gamma' in v.path:
            v.assign(rng.uniform(0.5, 1.5, v.shape))
        elif 'predictions/kernel' in v.path:
            v.assign(rng.normal(0, 1.0, v.shape))
    return model


def pixels(shape, seed):
    return np.random.RandomState(seed).randint(0, 256, shape).astype(np.float32)


def reference_v2(image, size=SIZE):
    """SPEC §5.3 by hand: centre crop int(S/(S+32)*min(h,w)), bilinear resize, (x-128)/128."""
    h, w = image.shape[:2]
    side = int(size / (size + 32) * min(h, w))
    top, left = (h - side) // 2, (w - side) // 2
    crop = image[top : top + side, left : left + side]
    return (tf.image.resize(crop[None], [size, size]).numpy()[0] - 128.0) / 128.0


@pytest.fixture(scope='module')
def model():
    return tiny_model()


@pytest.fixture(scope='module')
def saved_model(model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp('export') / 'classifier')
    export.export_saved_model(model, path, SIZE, 'v2', class_names=CLASSES)
    return path


@pytest.fixture(scope='module')
def encoded():
    """Two PNGs and one JPEG of different sizes, with their decoded pixels."""
    files, decoded = [], []
    for seed, (h, w), fmt in [(1, (80, 100), 'png'), (2, (120, 90), 'png'), (3, (70, 70), 'jpeg')]:
        image = tf.constant(pixels((h, w, 3), seed), tf.uint8)
        data = (tf.io.encode_png(image) if fmt == 'png' else tf.io.encode_jpeg(image)).numpy()
        files.append(data)
        decoded.append(tf.io.decode_image(data, channels=3).numpy().astype(np.float32))
    return files, decoded


FRESH_PROCESS = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf

    path, data_path, out_path = sys.argv[1:4]
    data = np.load(data_path, allow_pickle=False)
    loaded = tf.saved_model.load(path)
    images = loaded.signatures['serving_default'](images=tf.constant(data['images']))
    files = loaded.signatures['serving_bytes'](image_bytes=tf.constant(list(data['files'])))
    # The TF1 / C++ style loader (as TF Serving) must find every variable too.
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        graph_def = tf.compat.v1.saved_model.loader.load(sess, ['serve'], path)
        sig = graph_def.signature_def['serving_default']
        session_logits = sess.run(sig.outputs['logits'].name,
                                  {sig.inputs['images'].name: data['images']})
    assert 'efficientnetv2' not in sys.modules
    np.savez(out_path, logits=images['logits'].numpy(),
             probabilities=images['probabilities'].numpy(),
             top_k_indices=images['top_k_indices'].numpy(),
             top_k_names=images['top_k_names'].numpy().astype(str),
             bytes_logits=files['logits'].numpy(), session_logits=session_logits)
""")


def test_serving_default_names_the_expected_shape(saved_model):
    serve = tf.saved_model.load(saved_model).signatures['serving_default']
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r'serving_default takes float images \[N, H, W, 3\].*\[1 40 40 1\]',
    ):
        serve(images=tf.zeros([1, 40, 40, 1]))


def test_saved_model_reproduces_keras_in_a_fresh_process(model, saved_model, encoded, tmp_path):
    images = pixels((3, 80, 100, 3), seed=0)
    data_path, out_path = str(tmp_path / 'in.npz'), str(tmp_path / 'out.npz')
    np.savez(data_path, images=images, files=np.array(encoded[0], dtype=object).astype(bytes))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH='')
    result = subprocess.run(
        [sys.executable, '-c', FRESH_PROCESS, saved_model, data_path, out_path],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = np.load(out_path)

    expected = model(np.stack([reference_v2(i) for i in images])).numpy()
    np.testing.assert_allclose(out['logits'], expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out['session_logits'], expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out['probabilities'], tf.nn.softmax(expected).numpy(), atol=1e-6)
    top = np.argsort(-expected, axis=-1)[:, :5]
    np.testing.assert_array_equal(out['top_k_indices'], top)
    np.testing.assert_array_equal(out['top_k_names'], np.array(CLASSES)[top])
    bytes_expected = model(np.stack([reference_v2(i) for i in encoded[1]])).numpy()
    np.testing.assert_allclose(out['bytes_logits'], bytes_expected, rtol=0, atol=1e-5)


def test_bytes_signature_equals_feeding_the_decoded_images(saved_model, encoded):
    loaded = tf.saved_model.load(saved_model)
    from_files = loaded.signatures['serving_bytes'](image_bytes=tf.constant(encoded[0]))
    for i, image in enumerate(encoded[1]):
        from_pixels = loaded.signatures['serving_default'](images=tf.constant(image[None]))
        for key in ('logits', 'probabilities', 'top_k_indices'):
            np.testing.assert_array_equal(from_files[key][i].numpy(), from_pixels[key][0].numpy())
    assert int(loaded.image_size.numpy()) == SIZE
    assert loaded.preprocess.numpy() == b'v2'


# Four paths, one transform: the eval input pipeline (data.build_dataset), --mode=infer
# (predict.load_images), the SavedModel signatures and TFLite, on non-square images that need a
# resize. 'digits' is the no-crop case (as the digits dataset evaluates).
PARITY_SIZE = 24
PARITY_SHAPE = (45, 61)  # Non-square, larger than the eval size: crop (or not) and resize.
PARITY_CASES = {
    'v2': ('v2', None, True),
    'legacy': ('legacy', 'effnetv1_autoaug', True),
    'ft': ('ft', 'ft', True),
    'digits': ('v2', None, False),
}


@pytest.fixture(scope='module')
def parity_folder(tmp_path_factory):
    """An image folder with train/ and val/, one PNG per class in val (label = image index)."""
    root = tmp_path_factory.mktemp('parity')
    images = []
    for index in range(3):
        image = pixels(PARITY_SHAPE + (3,), seed=20 + index).astype(np.uint8)
        for split in ('train', 'val'):
            directory = root / split / f'c{index}'
            directory.mkdir(parents=True)
            (directory / 'a.png').write_bytes(tf.io.encode_png(image).numpy())
        images.append(image)
    return root, np.stack(images).astype(np.float32)


@pytest.mark.parametrize('case', sorted(PARITY_CASES))
def test_eval_pipeline_infer_saved_model_and_tflite_agree(case, model, parity_folder, tmp_path):
    import dataclasses

    from efficientnetv2 import data
    from efficientnetv2 import predict

    family, augname, center_crop = PARITY_CASES[case]
    root, images = parity_folder
    info = dataclasses.replace(data.folder_dataset_info(str(root)), eval_center_crop=center_crop)
    # 1. The eval input pipeline, as the trainer builds it (the family resolved from the config).
    batch, labels = next(
        iter(
            data.build_dataset(
                info,
                split='eval',
                image_size=PARITY_SIZE,
                batch_size=3,
                is_training=False,
                preprocess=family,
                augname=augname,
            )
        )
    )
    pipeline = batch.numpy()[np.argsort(np.argmax(labels.numpy(), -1))]
    # The transform by hand: the crop rule of the family, then resize and scaling.
    if center_crop and family != 'ft':
        side = int(PARITY_SIZE / (PARITY_SIZE + 32) * min(PARITY_SHAPE))  # 18
        extra = 1 if family == 'legacy' else 0
        top, left = (45 - side + extra) // 2, (61 - side + extra) // 2
        crops = images[:, top : top + side, left : left + side]
    else:
        crops = images
    if family == 'legacy':
        resized = tf.compat.v1.image.resize_bicubic(
            crops, [PARITY_SIZE] * 2, align_corners=False, half_pixel_centers=False
        )
    else:
        resized = tf.image.resize(crops, [PARITY_SIZE] * 2)
    expected = preprocessing.normalize(resized, family).numpy()
    np.testing.assert_allclose(pipeline, expected, rtol=0, atol=1e-4)
    # 2. --mode=infer's preprocessing of the same files.
    files = [str(root / 'val' / f'c{i}' / 'a.png') for i in range(3)]
    transform = predict.eval_transform(SimpleConfig(PARITY_SIZE, family, augname), info)
    assert transform == dict(image_size=PARITY_SIZE, family=family, center_crop=center_crop)
    inferred = np.stack([t.numpy() for t in predict.load_images(files, transform)])
    np.testing.assert_allclose(inferred, pipeline, rtol=0, atol=1e-5)
    logits = model(pipeline).numpy()
    # 3. The SavedModel, both signatures.
    path = str(tmp_path / 'saved_model')
    export.export_saved_model(model, path, PARITY_SIZE, family, center_crop=center_crop)
    loaded = tf.saved_model.load(path)
    served = loaded.signatures['serving_default'](images=tf.constant(images))['logits']
    np.testing.assert_allclose(served.numpy(), logits, rtol=0, atol=1e-4)
    encoded = [pathlib.Path(f).read_bytes() for f in files]
    served = loaded.signatures['serving_bytes'](image_bytes=tf.constant(encoded))['logits']
    np.testing.assert_allclose(served.numpy(), logits, rtol=0, atol=1e-4)
    assert bool(loaded.center_crop.numpy()) == center_crop
    # 4. TFLite (builtin ops only: the legacy bicubic as matrix products).
    tflite = str(tmp_path / 'model.tflite')
    export.export_tflite(
        model,
        tflite,
        PARITY_SIZE,
        preprocess=family,
        center_crop=center_crop,
        input_size=PARITY_SHAPE,
    )
    np.testing.assert_allclose(export.tflite_predict(tflite, images), logits, rtol=0, atol=1e-3)


class SimpleConfig:
    """The few config keys `predict.eval_transform` reads."""

    def __init__(self, size, preprocess, augname):
        self.eval = SimpleNamespace(image_size=size)
        self.data = SimpleNamespace(preprocess=preprocess, augname=augname)


def test_feature_vector_loads_as_tfsm_layer_and_fine_tunes(model, tmp_path):
    path = str(tmp_path / 'feature_vector')
    export.export_feature_vector(model, path)
    layer = keras.layers.TFSMLayer(
        path, call_endpoint='serve', call_training_endpoint='serve_training'
    )
    x = np.random.RandomState(5).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
    pooled = keras.Model(model.input, model.get_layer('avg_pool').output)
    np.testing.assert_allclose(layer(x).numpy(), pooled(x).numpy(), rtol=0, atol=1e-5)
    backbone = len(model.trainable_weights) - 2  # All but the classifier kernel and bias.
    assert len(layer.trainable_weights) == backbone

    loaded = tf.saved_model.load(path)
    signature = loaded.signatures['serving_default'](images=tf.constant(x))
    np.testing.assert_allclose(signature['feature_vector'].numpy(), pooled(x).numpy(), atol=1e-5)
    assert len(loaded.trainable_variables) == backbone
    assert list(loaded.regularization_losses) == []

    classifier = keras.Sequential([keras.Input((32, 32, 3)), layer, keras.layers.Dense(3)])
    classifier.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = [w.numpy() for w in layer.trainable_weights]
    classifier.fit(x, np.arange(8) % 3, batch_size=4, epochs=1, verbose=0)
    changed = sum(not np.array_equal(b, w.numpy()) for b, w in zip(before, layer.trainable_weights))
    assert changed > len(before) // 2  # The backbone itself was fine-tuned.


def test_feature_vector_pools_a_headless_model():
    model = efficientnetv2.EfficientNet(blocks=TINY, feature_size=48, include_top=False)
    x = np.random.RandomState(9).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    pooled = export._pooled_features_model(model)(x).numpy()
    np.testing.assert_allclose(pooled, model(x).numpy().mean(axis=(1, 2)), atol=1e-6)


def test_tflite_float_and_dynamic_range(model, tmp_path):
    x = pixels((16, 32, 32, 3), seed=6)
    scaled = preprocessing.preprocess_for_eval(x, 32, 'legacy').numpy()
    expected = model(scaled).numpy()
    # Float32, with the eval transform inside the graph and a static batch of 16.
    float_path, dynamic_path = str(tmp_path / 'float.tflite'), str(tmp_path / 'dynamic.tflite')
    float_size = export.export_tflite(model, float_path, 32, preprocess='legacy', batch_size=16)
    np.testing.assert_allclose(export.tflite_predict(float_path, x), expected, rtol=0, atol=1e-4)
    # Dynamic-range quantised, on already preprocessed input (batch 1, run in chunks).
    dynamic_size = export.export_tflite(model, dynamic_path, 32, quantize='dynamic')
    assert dynamic_size < 0.6 * float_size
    quantized = export.tflite_predict(dynamic_path, scaled)
    agreement = np.mean(quantized.argmax(-1) == expected.argmax(-1))
    assert agreement >= 0.75, agreement
    assert np.abs(quantized - expected).max() < 0.1 * np.abs(expected).max()


def test_keras_file_round_trip(model, tmp_path):
    path = export.export_keras(model, tmp_path / 'model.keras')
    restored = keras.saving.load_model(path)
    x = np.random.RandomState(8).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(restored(x).numpy(), model(x).numpy(), rtol=0, atol=1e-6)
    assert isinstance(restored, efficientnetv2.EfficientNet)
    with pytest.raises(ValueError, match=r"path must end in '\.keras'"):
        export.export_keras(model, tmp_path / 'model.h5')


def test_bad_arguments_are_explained(model, tmp_path):
    with pytest.raises(ValueError, match=r"preprocess must be one of .*'v2'.*Received.*'v3'"):
        export.export_saved_model(model, str(tmp_path / 'a'), SIZE, 'v3')
    with pytest.raises(ValueError, match='class_names must have one name per class'):
        export.export_saved_model(model, str(tmp_path / 'b'), SIZE, class_names=['a'])
    with pytest.raises(ValueError, match='image_size must be a positive integer'):
        export.export_saved_model(model, str(tmp_path / 'c'), 0)
    with pytest.raises(ValueError, match='input_size needs preprocess'):
        export.export_tflite(model, str(tmp_path / 'g.tflite'), 32, input_size=(40, 50))
    with pytest.raises(ValueError, match="quantize must be one of .*'int8'"):
        export.export_tflite(model, str(tmp_path / 'd.tflite'), 32, quantize='int8')
    features = efficientnetv2.EfficientNet(
        blocks=TINY, feature_size=48, include_top=False, pooling='avg'
    )
    with pytest.raises(ValueError, match='needs a classifier'):
        export.export_saved_model(features, str(tmp_path / 'e'), SIZE)
    softmax = tiny_model(classifier_activation='softmax')
    with pytest.raises(ValueError, match='classifier_activation=None'):
        export.export_saved_model(softmax, str(tmp_path / 'f'), SIZE)


# ------------------------------------------------------------------------------------------------
# export_all: every written artifact checked against the Keras model.

DEFAULT_ROWS = [
    'saved_model:serving_default',
    'saved_model:serving_bytes',
    'feature_vector',
    'tflite',
    'tflite_dynamic',
    'keras',
]


@pytest.fixture(scope='module')
def exported(model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp('export_all'))
    paths = export.export_all(model, path, SIZE, 'legacy', CLASSES, verify=False)
    return paths


@pytest.mark.filterwarnings('ignore:.*tf.lite.Interpreter is deprecated')
def test_every_default_artifact_reproduces_the_keras_model(model, exported):
    assert sorted(exported) == sorted(export.DEFAULT_FORMATS)
    rows = export.verify_exports(model, exported, SIZE, 'legacy')
    by_name = {row['artifact']: row for row in rows}
    assert list(by_name) == DEFAULT_ROWS
    assert all(row['ok'] and not row['training_ops'] for row in rows)
    for name in DEFAULT_ROWS:
        if name != 'tflite_dynamic':  # Float32: the same network up to float rounding.
            assert by_name[name]['max_rel'] < 1e-5, (name, by_name[name])
    assert by_name['keras']['max_abs'] == 0.0
    # Quantised: off by more than float rounding, well within its tolerance.
    assert 1e-4 < by_name['tflite_dynamic']['max_rel'] < 0.2 * export.TOLERANCES['tflite_dynamic']
    assert by_name['tflite_dynamic']['top1'] == 1.0
    # The non-square 260x300 and 300x200 images (resized inside) are part of the check.
    assert '2x260x300 px' in by_name['saved_model:serving_default']['inputs']
    assert '1x300x200 PNG' in by_name['saved_model:serving_bytes']['inputs']
    table = export.format_table(rows)
    assert len(table.splitlines()) == 1 + len(DEFAULT_ROWS) and 'FAIL' not in table


def test_check_images_are_non_square_and_varied():
    images = export.check_images(SIZE)
    assert {k: v.shape for k, v in images.items()} == {
        '260x300': (2, 260, 300, 3),
        '64x64': (2, 64, 64, 3),
        '300x200': (1, 300, 200, 3),
    }
    for batch in images.values():
        assert batch.dtype == np.uint8 and batch.std() > 30
    assert not np.array_equal(*images['64x64'])


def _perturbed(model):
    """A copy of the model with one batch-norm scale negated (a wrong artifact's weights)."""
    copy = tiny_model()
    copy.set_weights(model.get_weights())
    variable = next(v for v in copy.weights if v.path == 'block3b/bn/gamma')
    variable.assign(-variable)
    return copy


def _verification_error(model, paths, preprocess='legacy', **kwargs):
    with pytest.raises(export.ExportVerificationError) as error:
        export.verify_exports(model, paths, SIZE, preprocess, **kwargs)
    return error.value


@pytest.mark.filterwarnings('ignore:.*tf.lite.Interpreter is deprecated')
def test_a_broken_artifact_fails_verification_and_is_named(model, exported, tmp_path):
    # SavedModel written with the wrong preprocessing family: both signatures fail.
    wrong = str(tmp_path / 'saved_model')
    export.export_saved_model(model, wrong, SIZE, 'v2', CLASSES)
    error = _verification_error(model, dict(exported, saved_model=wrong))
    assert 'saved_model:serving_default, saved_model:serving_bytes do not' in str(error)
    failed = [row['artifact'] for row in error.rows if not row['ok']]
    assert failed == ['saved_model:serving_default', 'saved_model:serving_bytes']
    assert 'FAIL' in str(error) and 'feature_vector' in str(error)  # The table is in the message.
    # Float TFLite with other weights.
    tflite = str(tmp_path / 'model.tflite')
    export.export_tflite(_perturbed(model), tflite, SIZE, preprocess='legacy')
    error = _verification_error(model, dict(exported, tflite=tflite))
    assert [row['artifact'] for row in error.rows if not row['ok']] == ['tflite']
    # The feature vector of other weights.
    features = str(tmp_path / 'feature_vector')
    export.export_feature_vector(_perturbed(model), features)
    error = _verification_error(model, dict(exported, feature_vector=features))
    assert [row['artifact'] for row in error.rows if not row['ok']] == ['feature_vector']
    # Dynamic-range TFLite of other weights, without its float twin to vouch for the conversion.
    dynamic = str(tmp_path / 'model_dynamic.tflite')
    export.export_tflite(_perturbed(model), dynamic, SIZE, quantize='dynamic', preprocess='legacy')
    alone = {k: v for k, v in exported.items() if k != 'tflite'}
    error = _verification_error(model, dict(alone, tflite_dynamic=dynamic))
    assert [row['artifact'] for row in error.rows if not row['ok']] == ['tflite_dynamic']
    assert 'passed: saved_model:serving_default, saved_model:serving_bytes, ' in str(error)
    # Verified for a no-crop eval, the float centre-cropping artifacts all fail (the .keras and
    # the feature vector take preprocessed input: they stay correct).
    error = _verification_error(model, exported, center_crop=False)
    failed = [row['artifact'] for row in error.rows if not row['ok']]
    assert failed[:3] == ['saved_model:serving_default', 'saved_model:serving_bytes', 'tflite']
    assert 'keras' not in failed and 'feature_vector' not in failed


@pytest.mark.filterwarnings('ignore:.*tf.lite.Interpreter is deprecated')
def test_a_quantized_copy_noisier_than_its_bound_is_a_warning(model, exported, tmp_path, caplog):
    # Int8 noise on a model with small logits: above the bound, while the float TFLite (the same
    # graph and preprocessing) passed. A batch-norm scale x1.5 stands in for that noise.
    copy = tiny_model()
    copy.set_weights(model.get_weights())
    gamma = next(v for v in copy.weights if v.path == 'block3b/bn/gamma')
    gamma.assign(gamma * 1.5)
    dynamic = str(tmp_path / 'model_dynamic.tflite')
    export.export_tflite(copy, dynamic, SIZE, quantize='dynamic', preprocess='legacy')
    with caplog.at_level('WARNING'):
        rows = export.verify_exports(model, dict(exported, tflite_dynamic=dynamic), SIZE, 'legacy')
    by_name = {row['artifact']: row for row in rows}
    noisy = by_name['tflite_dynamic']
    assert noisy['max_rel'] > export.TOLERANCES['tflite_dynamic']
    assert noisy['ok'] and noisy['noisy'] and not by_name['tflite']['noisy']
    assert 'tflite_dynamic is noisier than its bound' in caplog.text
    assert 'NOISY (warning)' in export.format_table(rows)
    # A wrong float artifact still fails, naming it and what passed (the noisy copy too).
    tflite = str(tmp_path / 'model.tflite')
    export.export_tflite(_perturbed(model), tflite, SIZE, preprocess='legacy')
    error = _verification_error(model, dict(exported, tflite=tflite))
    assert [row['artifact'] for row in error.rows if not row['ok']] == ['tflite']
    assert str(error).startswith('Exported artifact(s) tflite do not reproduce the Keras model')
    assert 'tflite_dynamic, keras.' in str(error)


def test_export_all_verifies_by_default(model, tmp_path, monkeypatch):
    original = export.export_keras
    monkeypatch.setattr(export, 'export_keras', lambda m, path: original(_perturbed(m), path))
    with pytest.raises(export.ExportVerificationError, match=r'artifact\(s\) keras do not'):
        export.export_all(model, str(tmp_path / 'out'), SIZE, formats=['keras'])
    monkeypatch.setattr(export, 'export_keras', original)
    paths = export.export_all(model, str(tmp_path / 'ok'), SIZE, formats=['keras'])
    assert paths == {'keras': str(tmp_path / 'ok' / 'model.keras')}


def test_export_formats_are_checked(model, tmp_path, monkeypatch):
    assert export.check_formats(None) == export.DEFAULT_FORMATS
    assert 'onnx' in export.FORMATS and 'onnx' not in export.DEFAULT_FORMATS
    with pytest.raises(ValueError, match=r'must be among saved_model, .*onnx. Received: onnyx'):
        export.export_all(model, str(tmp_path / 'a'), SIZE, formats=['keras', 'onnyx'])
    # Without the [onnx] extra: a clear error naming it, before anything is written.
    monkeypatch.setitem(sys.modules, 'tf2onnx', None)
    with pytest.raises(
        ImportError, match=r"tf2onnx is missing.*pip install 'efficientnetv2\[onnx\]'"
    ):
        export.export_all(model, str(tmp_path / 'b'), SIZE, formats=['keras', 'onnx'])
    assert not os.path.exists(tmp_path / 'b')


# ------------------------------------------------------------------------------------------------
# Exported graphs are inference-only.


def test_exported_graphs_hold_no_training_ops(model, exported):
    loaded = tf.saved_model.load(exported['saved_model'])
    assert export.signature_training_ops(loaded) == {'serving_default': [], 'serving_bytes': []}
    features = tf.saved_model.load(exported['feature_vector'])
    assert export.signature_training_ops(features) == {'serving_default': []}
    spec = tf.TensorSpec([None, None, None, 3], tf.float32)
    serve = features.serve.get_concrete_function(spec).graph.as_graph_def()
    assert export.training_ops(serve) == []
    # The check finds them where they are: the fine-tuning endpoint runs batch norm in training
    # mode (moving-average updates) and stochastic depth (random numbers).
    training = features.serve_training.get_concrete_function(spec).graph.as_graph_def()
    found = export.training_ops(training)
    assert 'AssignVariableOp' in found and 'FusedBatchNormV3(is_training)' in found
    assert any(op.startswith('StatelessRandom') for op in found), found


# ------------------------------------------------------------------------------------------------
# ONNX (needs the [onnx] extra: pip install 'efficientnetv2[onnx]').


@pytest.mark.filterwarnings('ignore::DeprecationWarning')
def test_onnx_network_reproduces_the_keras_model(model, exported, tmp_path):
    pytest.importorskip('tf2onnx')
    onnx = pytest.importorskip('onnx')
    pytest.importorskip('onnxruntime')
    paths = export.export_all(model, str(tmp_path), SIZE, 'legacy', CLASSES, formats=['onnx'])
    (row,) = export.verify_exports(model, paths, SIZE, 'legacy')
    assert row['artifact'] == 'onnx' and row['ok'] and row['training_ops'] == []
    assert row['max_rel'] < 1e-5 and row['top1'] == 1.0
    # The input contract: the eval transform applied by the user, here to a 260x300 image.
    image = export.check_images(SIZE)['260x300']
    prepped = preprocessing.preprocess_for_eval(image, SIZE, 'legacy').numpy()
    np.testing.assert_allclose(
        export.onnx_predict(paths['onnx'], prepped), model(prepped).numpy(), rtol=0, atol=1e-5
    )
    proto = onnx.load(paths['onnx'])
    assert [i.name for i in proto.graph.input] == ['images']
    assert [o.name for o in proto.graph.output] == ['logits']
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert metadata['preprocess'] == 'legacy' and metadata['image_size'] == str(SIZE)
    assert metadata['center_crop'] == 'True'
    # A broken ONNX file (one weight tensor changed) fails and is named.
    weights = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    values = onnx.numpy_helper.to_array(weights) * 1.5
    weights.CopyFrom(onnx.numpy_helper.from_array(values, weights.name))
    onnx.save(proto, paths['onnx'])
    error = _verification_error(model, paths)
    assert [r['artifact'] for r in error.rows if not r['ok']] == ['onnx']
