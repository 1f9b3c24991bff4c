"""The config is data at the bottom of the package: keys, types, defaults and recipes.

`efficientnetv2/config.py` may import, of the project, only the pure tables `hparams` and
`architectures`, and nothing of Keras, TensorFlow or the model, data and training code, not even
inside a function: the modules that implement a choice import its list from the config, not the
other way round. The choice lists the config declares and the registries of the modules that
implement them must agree.
"""

import ast
import inspect
import os
import subprocess
import sys

import pytest

from efficientnetv2 import architectures
from efficientnetv2 import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_DIR = os.path.join(ROOT, 'efficientnetv2')
CONFIG_SOURCE = os.path.join(PACKAGE_DIR, 'config.py')

# What config.py may import: the standard library, and of the project these two tables.
ALLOWED_PROJECT_IMPORTS = {'efficientnetv2.hparams', 'efficientnetv2.architectures'}
HEAVY = ('tensorflow', 'keras', 'jax', 'torch', 'tf_keras', 'numpy')


def _imports(path):
    """Every module an `import` or `from ... import` anywhere in the file names (functions and
    methods included); `from package import name` gives `package.name`."""
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read(), filename=path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f'relative import in {path}: use absolute imports'
            names.update(f'{node.module}.{alias.name}' for alias in node.names)
    return names


def test_config_imports_only_hparams_and_architectures_of_the_project():
    imports = _imports(CONFIG_SOURCE)
    project = {name for name in imports if name.split('.')[0] == 'efficientnetv2'}
    assert project <= ALLOWED_PROJECT_IMPORTS, (
        f'config.py imports {sorted(project - ALLOWED_PROJECT_IMPORTS)}: the config is the '
        'bottom layer; move the value it needs down into config.py (or architectures.py) and '
        'import it from there in the implementing module.'
    )
    for name in imports:
        top = name.split('.')[0]
        assert top not in HEAVY, f'config.py imports {name}'
        for layer in ('model', 'data', 'train', 'experiment', 'distribute'):
            assert not name.startswith(f'efficientnetv2.{layer}'), f'config.py imports {name}'


def test_the_layering_check_sees_imports_inside_functions(tmp_path):
    path = tmp_path / 'mod.py'
    path.write_text(
        'from efficientnetv2 import hparams\n'
        'def f():\n'
        '    from efficientnetv2.data import registry\n'
        '    import keras\n'
    )
    assert _imports(str(path)) == {
        'efficientnetv2.hparams',
        'efficientnetv2.data.registry',
        'keras',
    }


def test_config_and_what_it_imports_load_without_tensorflow_or_keras():
    # `import efficientnetv2.config` runs the package's __init__ first, which builds the public
    # model API (Keras); the config's own import closure is loaded here under a bare package.
    script = (
        'import sys, types\n'
        "package = types.ModuleType('efficientnetv2')\n"
        f'package.__path__ = [{PACKAGE_DIR!r}]\n'
        "sys.modules['efficientnetv2'] = package\n"
        'import efficientnetv2.config as c\n'
        'c.default_config()\n'
        "c.compose('efficientnetv2-b0', 'digits', 10)\n"
        f'heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})\n'
        "ours = sorted(m for m in sys.modules if m.startswith('efficientnetv2.'))\n"
        "print('heavy', heavy)\n"
        "print('ours', ours)\n"
    )
    result = subprocess.run(
        [sys.executable, '-c', script], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(' ', 1) for line in result.stdout.splitlines())
    assert lines['heavy'] == '[]', lines['heavy']
    loaded = set(ast.literal_eval(lines['ours']))
    # architectures registers Table 3's fused variants (fused_ablation, blocks: pure Python).
    assert loaded <= {
        'efficientnetv2.config',
        'efficientnetv2.hparams',
        'efficientnetv2.architectures',
        'efficientnetv2.fused_ablation',
        'efficientnetv2.blocks',
    }, loaded


# -- one source for every choice list, and the implementations agree ---------------------------


def test_optimizer_names_are_the_optimizer_registry():
    from efficientnetv2.train import optimizers

    assert optimizers.OPTIMIZER_NAMES is config_lib.OPTIMIZER_NAMES
    assert set(config_lib.OPTIMIZER_NAMES) == set(optimizers._BUILDERS)
    assert config_lib.KEY_SPECS['train.optimizer'].choices == config_lib.OPTIMIZER_NAMES


@pytest.mark.parametrize('decay_type', config_lib.DECAY_TYPES)
def test_every_decay_type_builds_a_schedule(decay_type):
    from efficientnetv2.train import schedules

    assert schedules.DECAY_TYPES is config_lib.DECAY_TYPES
    assert config_lib.KEY_SPECS['train.lr_sched'].choices == config_lib.DECAY_TYPES
    schedule = schedules.WarmupDecaySchedule(
        lr_base=0.016,
        global_batch_size=256,
        steps_per_epoch=10,
        total_steps=100,
        decay_type=decay_type,
        warmup_epochs=1,
    )
    assert float(schedule(50)) > 0


@pytest.mark.parametrize('mode', config_lib.PLAN_MODES)
def test_every_plan_mode_builds_a_plan(mode):
    from efficientnetv2 import experiment
    from efficientnetv2.train import progressive

    assert progressive.PLAN_MODES is config_lib.PLAN_MODES
    assert config_lib.KEY_SPECS['train.progressive'].choices == config_lib.PLAN_MODES
    config = experiment.build_config(
        'efficientnetv2-s', 'imagenet', hparam_str=f'train.progressive={mode}'
    )
    plan = progressive.plan_for_config(config, 1000)
    assert plan.mode == mode and len(plan) == 4
    assert plan[-1].image_size == config_lib.train_image_size(config)
    assert progressive.first_stage_base(config) == 128


def test_finetune_datasets_come_from_the_config():
    from efficientnetv2 import data

    assert data.registry.FINETUNE_BASES is config_lib.FINETUNE_BASES
    for name, base in config_lib.FINETUNE_BASES.items():
        info = data.get_dataset_info(name)
        assert info.base_name == base
        assert info.preprocess == config_lib.FINETUNE_PREPROCESS
        assert info.augname == config_lib.FINETUNE_AUGNAME
        assert config_lib.DATASET_RECIPES[name.lower()]['data']['augname'] == 'ft'


def test_other_choice_lists_match_their_implementations():
    from efficientnetv2 import distribute
    from efficientnetv2.data import preprocessing

    specs = config_lib.KEY_SPECS
    assert set(specs['data.preprocess'].choices) == set(preprocessing.FAMILIES)
    assert set(specs['runtime.strategy'].choices) == set(distribute.STRATEGIES)
    assert set(specs['runtime.mixed_precision'].choices) == set(distribute.PRECISIONS)


def test_model_defaults_have_one_source():
    from efficientnetv2 import model as model_lib

    defaults = architectures.DEFAULT_MODEL_HPARAMS
    assert model_lib.DEFAULT_MODEL_HPARAMS is defaults
    assert config_lib.default_config().model.as_dict() == defaults
    signature = inspect.signature(model_lib.EfficientNet.__init__).parameters
    hyper = [k for k in model_lib._CONFIG_KEYS if k not in model_lib.BUILD_OPTIONS]
    assert hyper == list(defaults)  # Every constructor hyper-parameter, in signature order.
    for key in hyper:
        if key != 'blocks':
            assert signature[key].default == defaults[key], key
