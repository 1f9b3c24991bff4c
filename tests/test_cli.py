"""The installed commands: their entry points as pip installs them, flags, help, flag isolation.

The commands themselves run end to end in .ci/old_tf_smoke.sh, from a wheel in a fresh venv.
"""

import functools
import importlib
import importlib.metadata
import os
import pathlib
import subprocess
import sys
import tempfile

import pytest
from script_runner import run_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = {
    'efficientnetv2-train',
    'efficientnetv2-export',
    'efficientnetv2-nas',
    'efficientnetv2-summary',
    'efficientnetv2-scale',
}


@functools.lru_cache(maxsize=1)
def _entry_points():
    """The console scripts as pip installs them: setuptools' entry_points.txt of this checkout.

    `setup.py egg_info` writes the metadata pip reads when it installs the package (the same
    file an install puts in site-packages), and importlib.metadata reads it back, so a wrong
    target or a typo in setup.py shows here as it would after `pip install`.
    """
    try:
        import setuptools  # noqa: F401 (setup.py imports it; a venv may lack it)
    except ImportError:  # The installed package's metadata (a fresh install is current).
        points = importlib.metadata.distribution('efficientnetv2').entry_points
        return {point.name: point for point in points if point.group == 'console_scripts'}
    out = tempfile.mkdtemp(prefix='egg_info_')
    subprocess.run(
        [sys.executable, 'setup.py', '-q', 'egg_info', '--egg-base', out],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (egg_info,) = pathlib.Path(out).glob('*.egg-info')
    points = importlib.metadata.PathDistribution(egg_info).entry_points
    return {point.name: point for point in points if point.group == 'console_scripts'}


def _console_scripts():
    """{name: 'module:attr'} of the console scripts an install of this checkout gets."""
    return {name: point.value for name, point in _entry_points().items()}


def _python(*args, cwd=ROOT, timeout=300):
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL='3',
        PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]),
    )
    return subprocess.run(
        [sys.executable] + list(args),
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


def _command(name, *args, cwd=ROOT):
    """Runs the installed command `name` as its console script does (its entry point)."""
    module_name, _, attr = _console_scripts()[name].partition(':')
    argv = [name] + list(args)
    # What pip's generated wrapper does: sys.exit(<entry point>()).
    script = f'import sys; sys.argv = {argv!r}; import {module_name} as m; sys.exit(m.{attr}())'
    return _python('-c', script, cwd=cwd)


def test_console_scripts_resolve_to_callables():
    scripts = _console_scripts()
    assert set(scripts) == COMMANDS
    for name, target in scripts.items():
        module_name, _, attr = target.partition(':')
        function = getattr(importlib.import_module(module_name), attr)
        assert callable(function), (name, target)
    assert scripts['efficientnetv2-train'] == 'efficientnetv2.cli:run'


def test_module_helpshort_lists_the_flags(tmp_path):
    # From an empty directory: nothing of the checkout is read but the package.
    done = _python('-m', 'efficientnetv2.cli', '--helpshort', cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]  # Help asked for is a success.
    assert 'Traceback' not in done.stderr
    for flag in (
        '--mode',
        '--model_name',
        '--dataset_cfg',
        '--model_dir',
        '--hparam_str',
        '--export_formats',
        '--images',
    ):
        assert f'\n  {flag}:' in done.stdout, flag
    assert "default: 'traineval'" in done.stdout
    assert 'Exit codes: 0 done' in done.stdout  # The command's documentation, too.
    assert not os.listdir(tmp_path)


def test_export_command_defaults_to_export_mode(tmp_path):
    # As the efficientnetv2-export script calls it: a run directory without config.yaml is a
    # usage error that names --mode=export.
    script = (
        "import sys; sys.argv = ['efficientnetv2-export', '--model_dir=%s']; "
        'from efficientnetv2 import cli; cli.run_export()' % (tmp_path / 'none')
    )
    done = _python('-c', script)
    assert done.returncode == 2, done.stderr[-3000:]
    assert 'No run config %s' % (tmp_path / 'none' / 'config.yaml') in done.stderr
    assert '--mode=export reads the configuration of a trained run' in done.stderr
    assert not (tmp_path / 'none').exists()


def test_nas_command_helpshort_lists_its_flags():
    script = (
        "import sys; sys.argv = ['efficientnetv2-nas', '--helpshort']; "
        'from efficientnetv2.nas.__main__ import console_main; console_main()'
    )
    done = _python('-c', script)
    assert done.returncode == 0, done.stderr[-3000:]
    for flag in ('--output_dir', '--trials', '--backbone', '--dataset_cfg'):
        assert f'\n  {flag}:' in done.stdout, flag
    assert '--mode' not in done.stdout  # The training command's flags are not defined.


def test_importing_the_package_defines_no_command_flags():
    result = run_script("""
import json
from absl import flags
import efficientnetv2
import efficientnetv2.console
ours = ('mode', 'model_name', 'dataset_cfg', 'data_dir', 'model_dir', 'hparam_str', 'trials',
        'output_dir')
after_package = [name for name in ours if name in flags.FLAGS]
import efficientnetv2.cli
import efficientnetv2.nas.__main__  # The NAS command line too: shared flags do not clash.
argv = flags.FLAGS(['prog', '--mode=train', '--dataset_cfg=cifar10', '--trials=3'])
print('RESULT' + json.dumps(dict(after_package=after_package, mode=flags.FLAGS.mode,
                                 dataset_cfg=flags.FLAGS.dataset_cfg, trials=flags.FLAGS.trials)))
""")
    assert result == dict(after_package=[], mode='train', dataset_cfg='cifar10', trials=3)


def _foreign_run(tmp_path):
    run = tmp_path / 'b0run'
    run.mkdir()
    (run / 'config.yaml').write_text('model:\n  model_name: efficientnetv2-b0\n')
    return run


USAGE_ERRORS = [
    # (command, arguments, text of the message)
    ('efficientnetv2-train', ['--mode=tarin'], 'flag --mode=tarin: value should be one of'),
    ('efficientnetv2-train', ['--strategy=gpu'], 'flag --strategy=gpu: value should be one of'),
    ('efficientnetv2-train', ['--model_name=efficientnetv2-q'], "Unknown model name 'efficie"),
    ('efficientnetv2-train', ['--batch_size=8'], "Unknown command line flag 'batch_size'"),
    ('efficientnetv2-train', ['--mode=train', 'digits'], 'Unexpected arguments: digits'),
    ('efficientnetv2-train', ['--hparam_str=train.batch_size=abc'], 'train.batch_size must be'),
    ('efficientnetv2-export', ['--model_dir={tmp}/none'], 'No run config {tmp}/none/config.yaml'),
    ('efficientnetv2-export', ['--model_dir={foreign}', '--model_name=efficientnet-b0'], 'but'),
    ('efficientnetv2-export', ['--export_formats=tflite,tfilte'], 'Received: tfilte'),
    ('efficientnetv2-nas', ['--trials=0', '--output_dir={tmp}/nas'], 'trials must be >= 1'),
    ('efficientnetv2-nas', ['--workers=0', '--output_dir={tmp}/nas'], 'flag --workers=0'),
    ('efficientnetv2-nas', ['--workers=-1', '--output_dir={tmp}/nas'], 'flag --workers=-1'),
]


@pytest.mark.parametrize(
    'name, args, message', USAGE_ERRORS, ids=[' '.join([n] + a) for n, a, _ in USAGE_ERRORS]
)
def test_usage_errors_exit_2_with_the_message_and_no_help(name, args, message, tmp_path):
    fill = dict(tmp=tmp_path, foreign=_foreign_run(tmp_path))
    done = _command(name, *[a.format(**fill) for a in args], cwd=str(tmp_path))
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.rstrip().splitlines()
    # The message, then one line pointing at the help: no help dump, no traceback.
    assert lines[-2].startswith('Usage error: '), done.stderr[-3000:]
    assert message.format(**fill) in lines[-2]
    assert lines[-1] == 'Pass --helpshort to list the flags.'
    assert 'flags:' not in done.stderr and 'Traceback' not in done.stderr
    assert done.stdout == ''
    assert sorted(os.listdir(tmp_path)) == ['b0run']  # Nothing written.


# Each documented command (docs/training.md), and a flag only its help lists.
HELP_FLAGS = {
    'efficientnetv2-train': '--model_dir:',
    'efficientnetv2-export': '--export_formats:',
    'efficientnetv2-nas': '--output_dir:',
    'efficientnetv2-summary': '--image_size',
    'efficientnetv2-scale': '--flops',
}


@pytest.mark.parametrize('name', sorted(HELP_FLAGS))
def test_help_exits_0(name, tmp_path):
    assert set(HELP_FLAGS) == COMMANDS
    done = _command(name, '--help', cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert HELP_FLAGS[name] in done.stdout, done.stdout[-3000:]
    assert 'Traceback' not in done.stderr
    assert not os.listdir(tmp_path)


def test_summary_usage_names_the_installed_command(tmp_path):
    done = _command('efficientnetv2-summary', '--image_size=big', cwd=str(tmp_path))
    assert done.returncode == 2, done.stderr[-3000:]
    assert '\nusage: efficientnetv2-summary [-h]' in done.stderr, done.stderr[-3000:]
    assert 'python -m' not in done.stderr
    assert "argument --image_size: invalid int value: 'big'" in done.stderr


def test_known_third_party_warnings_are_filtered_by_the_pytest_config(tmp_path):
    # Keras' convert_to_numpy of a variable (get_weights of a model, ...) raises numpy 2's
    # __array__ copy deprecation: the suite's pytest configuration (pyproject.toml) filters it.
    (tmp_path / 'test_probe.py').write_text(
        'import keras\n\n\n'
        'def test_probe():\n'
        '    value = keras.ops.convert_to_numpy(keras.Variable([1.0, 2.0]))\n'
        '    assert value.tolist() == [1.0, 2.0]\n'
    )
    done = _python(
        '-m',
        'pytest',
        '-q',
        '-p',
        'no:cacheprovider',
        '-c',
        os.path.join(ROOT, 'pyproject.toml'),
        '--rootdir',
        str(tmp_path),
        str(tmp_path / 'test_probe.py'),
        cwd=str(tmp_path),
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert done.stdout.rstrip().splitlines()[-1].startswith('1 passed in '), done.stdout[-3000:]
