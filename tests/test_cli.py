"""The installed commands: setup.py's console scripts, their flags and help, flag isolation.

The commands themselves run end to end in .ci/old_tf_smoke.sh, from a wheel in a fresh venv.
"""

import ast
import importlib
import os
import subprocess
import sys

from script_runner import run_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = {
    'efficientnetv2-train',
    'efficientnetv2-export',
    'efficientnetv2-nas',
    'efficientnetv2-summary',
    'efficientnetv2-scale',
}


def _console_scripts():
    """{name: 'module:attr'} of setup.py's console_scripts, read without running setup.py."""
    with open(os.path.join(ROOT, 'setup.py')) as f:
        tree = ast.parse(f.read())
    call = next(
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, 'id', None) == 'setup'
    )
    entry_points = ast.literal_eval(next(k.value for k in call.keywords if k.arg == 'entry_points'))
    scripts = {}
    for line in entry_points['console_scripts']:
        name, target = (part.strip() for part in line.split('='))
        scripts[name] = target
    return scripts


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
    # absl exits 1 after printing help (its convention for --help, --helpshort and --helpfull).
    assert done.returncode == 1, done.stderr[-3000:]
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
    assert done.returncode == 1, done.stderr[-3000:]
    assert 'No run config %s' % (tmp_path / 'none' / 'config.yaml') in done.stderr
    assert '--mode=export reads the configuration of a trained run' in done.stderr
    assert not (tmp_path / 'none').exists()


def test_nas_command_helpshort_lists_its_flags():
    script = (
        "import sys; sys.argv = ['efficientnetv2-nas', '--helpshort']; "
        'from efficientnetv2 import console; console.nas()'
    )
    done = _python('-c', script)
    assert done.returncode == 1, done.stderr[-3000:]
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
