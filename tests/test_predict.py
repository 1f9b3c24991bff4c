"""main.py --mode=export / infer / eval on a trained run: the run's own config, class names."""

import os
import pathlib
import re

import numpy as np
import pytest
import script_runner
import tensorflow as tf

TINY = (
    "model.blocks=['r1_k3_s1_e1_i16_o8_c1','r1_k3_s2_e4_i8_o16_c1',"
    "'r1_k3_s2_e4_i16_o24_se0.25'],model.feature_size=32"
)
# Non-default sizes (the digits recipe evaluates at 32 px), one short epoch.
RUN = (
    TINY + ',train.epochs=1,train.stages=0,train.image_size=24,train.min_image_size=24,'
    'eval.image_size=40,train.batch_size=128,train.steps_per_loop=4'
)


def _printed(stdout, prefix):
    """{path: [(name, probability), ...]} from infer's output lines."""
    rows = {}
    for line in stdout.splitlines():
        if line.startswith(prefix):
            path, rest = line.split(': ', 1)
            rows[path] = [(name, float(p)) for name, p in re.findall(r'(\S+) \(([\d.]+)\)', rest)]
    return rows


@pytest.fixture(scope='module')
def digits_run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp('digits') / 'run'
    done = script_runner.run_main('--mode=train', f'--model_dir={model_dir}', f'--hparam_str={RUN}')
    assert done.returncode == 0, done.stderr[-3000:]
    return model_dir


@pytest.fixture(scope='module')
def digit_files(tmp_path_factory):
    from sklearn import datasets as sk_datasets

    digits = sk_datasets.load_digits()
    directory = tmp_path_factory.mktemp('digit_images')
    paths = []
    for index in (0, 1, 2):
        pixels = np.round(digits.images[index] * 255 / 16).astype(np.uint8)
        path = directory / f'digit{digits.target[index]}.png'
        path.write_bytes(tf.io.encode_png(np.repeat(pixels[..., None], 3, -1)).numpy())
        paths.append(str(path))
    return paths


@pytest.mark.filterwarnings('ignore:.*tf.lite.Interpreter is deprecated')
def test_export_and_infer_take_the_run_config(digits_run, digit_files, tmp_path):
    # Only --model_dir: the run's 40 px, v2 scaling and no crop (digits), not the flag defaults.
    export_dir = tmp_path / 'export'
    done = script_runner.run_main(
        '--mode=export', f'--model_dir={digits_run}', f'--export_dir={export_dir}'
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'config.yaml' in done.stderr and 'overridden on the command line: none' in done.stderr
    loaded = tf.saved_model.load(str(export_dir / 'saved_model'))
    assert int(loaded.image_size.numpy()) == 40
    assert loaded.preprocess.numpy() == b'v2'
    assert not bool(loaded.center_crop.numpy())
    interpreter = tf.lite.Interpreter(model_path=str(export_dir / 'model.tflite'))
    assert list(interpreter.get_input_details()[0]['shape']) == [1, 40, 40, 3]
    # Every artifact was run against the Keras model: the parity table, one 'ok' row each.
    table = _table(done.stdout)
    assert sorted(table) == [
        'feature_vector',
        'keras',
        'saved_model:serving_bytes',
        'saved_model:serving_default',
        'tflite',
        'tflite_dynamic',
    ]
    assert all(row[-1] == 'ok' for row in table.values()), done.stdout
    assert float(table['tflite'][4]) <= 1e-3 and float(table['keras'][3]) == 0.0
    assert 'Export parity against the Keras model' in done.stderr
    assert (done.stdout + done.stderr).count('max abs diff') == 1  # The table, once.
    assert not os.path.exists(export_dir / 'model.onnx')  # ONNX only when asked for.

    done = script_runner.run_main(
        '--mode=infer', f'--model_dir={digits_run}', '--images={}'.format(','.join(digit_files))
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = _printed(done.stdout, os.path.dirname(digit_files[0]))
    assert sorted(printed) == sorted(digit_files)
    # The digits' class names, and the same top-5 as the exported SavedModel.
    files = [pathlib.Path(p).read_bytes() for p in digit_files]
    served = loaded.signatures['serving_bytes'](image_bytes=tf.constant(files))
    for i, path in enumerate(digit_files):
        names = [name for name, _ in printed[path]]
        assert len(names) == 5 and len(set(names)) == 5
        assert set(names) <= {str(d) for d in range(10)}
        assert names == [n.decode() for n in served['top_k_names'][i].numpy()]
        np.testing.assert_allclose(
            [p for _, p in printed[path]], served['top_k_probabilities'][i].numpy(), atol=2e-3
        )
        assert 0.3 < sum(p for _, p in printed[path]) <= 1.0 + 5e-3
        np.testing.assert_allclose(served['probabilities'][i].numpy().sum(), 1.0, atol=1e-5)


def _table(stdout):
    """{artifact: row cells} of the parity table printed by --mode=export."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('artifact '))
    rows = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        cells = re.split(r'\s{2,}', line.strip())
        rows[cells[0]] = cells
    return rows


def test_export_formats_flag(digits_run, tmp_path):
    done = script_runner.run_main(
        '--mode=export',
        f'--model_dir={digits_run}',
        '--export_formats=keras,onnyx',
        '--export_dir=%s' % (tmp_path / 'bad'),
    )
    assert done.returncode != 0 and 'Traceback' not in done.stderr
    assert 'must be among saved_model, feature_vector, tflite' in done.stderr
    assert 'Received: onnyx' in done.stderr
    done = script_runner.run_main(
        '--mode=export',
        f'--model_dir={digits_run}',
        '--export_formats=keras,onnx',
        '--export_dir=%s' % (tmp_path / 'onnx'),
    )
    try:
        import tf2onnx  # noqa: F401  (the [onnx] extra)
    except ImportError:
        assert done.returncode != 0 and 'Traceback' not in done.stderr
        assert "pip install 'efficientnetv2[onnx]'" in done.stderr
        return
    assert done.returncode == 0, done.stderr[-3000:]
    table = _table(done.stdout)
    assert sorted(table) == ['keras', 'onnx'] and table['onnx'][-1] == 'ok'
    assert sorted(os.listdir(tmp_path / 'onnx')) == ['model.keras', 'model.onnx']


def test_explicit_overrides_are_applied_and_logged(digits_run, digit_files):
    done = script_runner.run_main(
        '--mode=infer',
        f'--model_dir={digits_run}',
        '--hparam_str=eval.image_size=36',
        f'--images={digit_files[0]}',
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'overridden on the command line: eval.image_size=36' in done.stderr
    # A flag that contradicts the run is refused, naming the run's value.
    done = script_runner.run_main(
        '--mode=infer',
        f'--model_dir={digits_run}',
        '--model_name=efficientnetv2-s',
        f'--images={digit_files[0]}',
    )
    assert done.returncode != 0
    assert 'efficientnetv2-b0' in done.stderr and 'Traceback' not in done.stderr


def test_eval_mode_builds_the_trainer_from_the_run_config(digits_run):
    # The flag defaults (default blocks) would be refused by the model directory check.
    done = script_runner.run_main(
        '--mode=eval', f'--model_dir={digits_run}', '--hparam_str=eval.timeout=5'
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'Eval at step' in done.stderr


@pytest.mark.parametrize('mode', ['export', 'infer', 'eval'])
def test_missing_run_config_is_a_clear_error(mode, tmp_path):
    # --mode=eval first waits eval.timeout seconds for a trainer to write the config.
    done = script_runner.run_main(
        f'--mode={mode}', f'--model_dir={tmp_path}', '--images=x.png', '--hparam_str=eval.timeout=2'
    )
    assert done.returncode != 0
    assert 'config.yaml' in done.stderr and 'Traceback' not in done.stderr


def test_infer_prints_the_folder_class_names(tmp_path):
    root = tmp_path / 'pets'
    rng = np.random.RandomState(0)
    for label, name in enumerate(('cat', 'dog')):
        (root / name).mkdir(parents=True)
        for index in range(6):
            image = rng.randint(0, 100, (20, 28, 3)) + 120 * label
            (root / name / f'{index}.png').write_bytes(
                tf.io.encode_png(image.astype(np.uint8)).numpy()
            )
    model_dir = tmp_path / 'run'
    done = script_runner.run_main(
        '--mode=train',
        '--dataset_cfg=folder',
        f'--data_dir={root}',
        f'--model_dir={model_dir}',
        f'--hparam_str={TINY},train.epochs=1,train.stages=0,train.image_size=16,'
        'eval.image_size=16,train.batch_size=4,train.steps_per_loop=2',
    )
    assert done.returncode == 0, done.stderr[-3000:]
    image = str(root / 'dog' / '0.png')
    done = script_runner.run_main('--mode=infer', f'--model_dir={model_dir}', f'--images={image}')
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = _printed(done.stdout, image).values()
    assert sorted(name for name, _ in row) == ['cat', 'dog']  # Two classes: top-2.
    np.testing.assert_allclose(sum(p for _, p in row), 1.0, atol=2e-3)
