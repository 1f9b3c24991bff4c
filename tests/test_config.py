"""Run configs: recipes, override order, the shipped YAML files and validation."""

import glob
import os

import numpy as np
import pytest
import script_runner
import yaml

from efficientnetv2 import config as config_lib
from efficientnetv2 import experiment
from efficientnetv2 import hparams
from efficientnetv2.train import progressive

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, 'configs')
TINY = (
    "model.blocks=['r1_k3_s1_e1_i16_o8_c1','r1_k3_s2_e4_i8_o16_c1'],model.feature_size=32,"
    'train.batch_size=8,train.steps_per_loop=1,eval.batch_size=4'
)


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(CONFIG_DIR, '*.yaml'))))
def test_shipped_configs_load(path):
    with open(path) as f:
        values = yaml.safe_load(f)
    model_name = values['model']['model_name']
    dataset = 'cifar10Ft' if 'finetune' in path else ('digits' if 'digits' in path else 'imagenet')
    config = experiment.build_config(model_name, dataset, config_file=path)
    for section, entries in values.items():
        for key, value in entries.items():
            assert config[section][key] == value, (section, key)


def test_digits_yaml_equals_the_built_in_demo():
    built_in = experiment.build_config('efficientnetv2-b0', 'digits')
    from_file = experiment.build_config(
        'efficientnetv2-b0', 'digits', config_file=os.path.join(CONFIG_DIR, 'digits.yaml')
    )
    assert built_in == from_file


def test_paper_recipe_targets_table_6():
    config = experiment.build_config('efficientnetv2-s', 'imagenet')
    assert (
        config.train.image_size,
        config.data.ram,
        config.data.mixup_alpha,
        config.model.dropout_rate,
    ) == (300, 15.0, 0.0, 0.3)
    assert config.eval.image_size == 384 and config.train.stages == 4
    v1 = experiment.build_config('efficientnet-b0', 'imagenet')
    assert v1.train.stages == 0 and v1.model.bn_momentum == 0.99
    assert config_lib.train_image_size(v1) == 176


def test_override_order_and_finetune_recipe():
    config = experiment.build_config(
        'efficientnetv2-b0', 'cifar10Ft', hparam_str='train.lr_base=0.001'
    )
    assert config.model.num_classes == 10
    assert config.train.lr_base == 0.001  # hparam_str beats the dataset recipe.
    assert config.train.lr_sched == 'constant'  # dataset recipe beats the defaults.
    assert config_lib.train_image_size(config) == 224


def test_config_for_another_model_is_refused():
    with pytest.raises(ValueError, match='--model_name=efficientnetv2-s'):
        experiment.build_config(
            'efficientnetv2-m',
            'imagenet',
            config_file=os.path.join(CONFIG_DIR, 'imagenet-efficientnetv2-s.yaml'),
        )


@pytest.mark.parametrize(
    'override,message',
    [
        ('train.lr_sched=step', 'train.lr_sched must be one of'),
        ('train.batch_size=0', 'train.batch_size must be an integer > 0; received 0'),
        ('runtime.strategy=tpus', 'runtime.strategy must be one of'),
    ],
)
def test_bad_values_are_named(override, message):
    with pytest.raises(ValueError, match=message):
        experiment.build_config('efficientnetv2-b0', 'digits', hparam_str=override)


# -- typed values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    'override,message',
    [
        ('train.batch_size=abc', "train.batch_size must be an integer > 0; received 'abc' (str)"),
        (
            "train.epochs=__import__('os').system('x')",
            "train.epochs must be a number > 0; received \"__import__('os').system('x')\" (str)",
        ),
        ('train.epochs=-1', 'train.epochs must be a number > 0; received -1 (int)'),
        (
            'train.label_smoothing=1.5',
            'train.label_smoothing must be a number in [0.0, 1.0); received 1.5',
        ),
        ('data.mixup_alpha=-0.2', 'data.mixup_alpha must be a number >= 0.0; received -0.2'),
        ('model.dropout_rate=1', 'model.dropout_rate must be a number in [0.0, 1.0); received 1'),
        (
            'model.survival_prob=0',
            'model.survival_prob must be a number in (0.0, 1.0] or None; received 0',
        ),
        ('train.seed=1.5', 'train.seed must be an integer >= 0 or None; received 1.5 (float)'),
        ('eval.image_size=True', 'eval.image_size must be an integer > 0; received True (bool)'),
        ('train.stages=two', "train.stages must be an integer >= 0; received 'two'"),
        (
            'runtime.deterministic=1',
            'runtime.deterministic must be a boolean (true/false); received 1 (int)',
        ),
        (
            'data.preprocess=v3',
            "data.preprocess must be one of ['v2', 'legacy', 'ft'] or None; received 'v3'",
        ),
        ('train.progressive=fast', "train.progressive must be one of ['paper', 'official']"),
        ('data.augname=randaugment', "augname` must be None, 'randaug'"),
    ],
)
def test_typed_values_from_the_hparam_string(override, message):
    with pytest.raises(hparams.ConfigValueError) as raised:
        experiment.build_config('efficientnetv2-b0', 'digits', hparam_str=override)
    assert message in str(raised.value)


def test_typed_values_from_yaml_and_python(tmp_path):
    path = tmp_path / 'bad.yaml'
    path.write_text('train:\n  batch_size: 12.5\n')
    with pytest.raises(hparams.ConfigValueError, match=r'train.batch_size .* received 12.5'):
        experiment.build_config('efficientnetv2-b0', 'digits', config_file=str(path))
    path.write_text('train:\n  weight_decay: 1e-5\n  seed: 7\n')  # YAML 1.1 reads 1e-5 as text.
    config = experiment.build_config('efficientnetv2-b0', 'digits', config_file=str(path))
    assert config.train.weight_decay == 1e-5 and config.train.seed == 7
    with pytest.raises(hparams.ConfigValueError, match='train.ema_decay'):
        config.override({'train': {'ema_decay': True}})
    with pytest.raises(hparams.ConfigValueError, match='train.epochs'):
        config.override({'train.epochs': '10 epochs'})
    config.override({'train': {'epochs': 0.25, 'lr_base': 1}})
    assert config.train.epochs == 0.25 and config.train.lr_base == 1.0


def test_every_key_is_typed_and_none_defaults_are_declared():
    config = config_lib.default_config()
    schema = config.schema
    for key in config.flat_keys():
        assert key in schema, key
    defaults = hparams.Config(config_lib._default_values())
    for key in defaults.flat_keys():
        section, name = key.split('.')
        if defaults[section][name] is None:
            assert key in config_lib.KEY_SPECS, f'give {key} (default None) a Spec'
    # The keys other helpers add are declared, whether or not they exist yet.
    assert config_lib.KEY_SPECS['runtime.jit_compile'].nullable
    assert config_lib.KEY_SPECS['model.bn_group_size'].low == 0
    assert config_lib.KEY_SPECS['data.solarize_wrap'].kind == 'bool'


def test_validate_types_an_untyped_config():
    built = experiment.build_config('efficientnetv2-b0', 'digits')
    plain = hparams.Config(built.as_dict())
    plain.train.batch_size = 'big'
    with pytest.raises(hparams.ConfigValueError, match='train.batch_size'):
        config_lib.validate(plain)


# -- sizes ----------------------------------------------------------------------------------


def _sizes(config, steps=400):
    return [stage.image_size for stage in progressive.plan_for_config(config, steps)]


def test_min_image_size_only_matters_with_stages_and_is_derived_when_unset():
    config = experiment.build_config(
        'efficientnetv2-b0',
        'digits',
        hparam_str=(
            'train.stages=0,train.image_size=48,eval.image_size=64,train.min_image_size=none'
        ),
    )
    assert _sizes(config) == [48]
    config.override('train.min_image_size=128')  # Ignored: one stage.
    config_lib.validate(config)
    assert _sizes(config) == [48]
    # Unset: half of a final size <= 128 (official mode for B0: int(32 + 32 (i + 1) / 3)).
    config = experiment.build_config(
        'efficientnetv2-b0',
        'digits',
        hparam_str=(
            'train.stages=3,train.image_size=64,train.min_image_size=none,'
            'train.progressive=official'
        ),
    )
    assert _sizes(config) == [42, 53, 64]
    config.override('train.progressive=paper')
    assert _sizes(config) == [32, 48, 64]
    # Above 128 the start is the paper's / official 128.
    config.override('train.image_size=160')
    assert _sizes(config) == [128, 144, 160]


def test_min_image_size_above_the_final_size_is_a_usage_error():
    with pytest.raises(
        hparams.ConfigValueError,
        match=r'train.min_image_size must be <= the final train size 48 px.*'
        r'received 64',
    ):
        experiment.build_config(
            'efficientnetv2-b0',
            'digits',
            hparam_str=('train.stages=2,train.image_size=48,train.min_image_size=64'),
        )
    with pytest.raises(hparams.ConfigValueError, match='gives a train size of 0 px'):
        experiment.build_config(
            'efficientnetv2-b0', 'digits', hparam_str='train.image_size=0.25,eval.image_size=32'
        )


# -- progressive plans per model ------------------------------------------------------------


def test_digits_demo_keeps_paper_mode_24_then_32():
    config = experiment.build_config('efficientnetv2-b0', 'digits')
    assert config.train.progressive == 'paper'
    assert config.train.lr_sched == 'cosine'
    plan = progressive.plan_for_config(config, 673)
    assert [s.image_size for s in plan] == [24, 32]  # 24 + 8 i / 1.
    assert [s.end_step for s in plan] == [336, 673]
    assert [round(s.dropout_rate, 3) for s in plan] == [0.1, 0.2]


@pytest.mark.parametrize('model', ['efficientnetv2-s', 'efficientnetv2-m', 'efficientnetv2-l'])
def test_paper_mode_stays_the_default_for_s_m_l(model):
    config = experiment.build_config(model, 'imagenet')
    assert config.train.progressive == 'paper'
    assert _sizes(config)[0] == 128


# Hand-computed from the released code: size int(128 + (S_e - 128)(i + 1)/4), RandAugment
# linspace(5, ram, 4), mixup = cutmix linspace(0, alpha, 4), dropout fixed.
OFFICIAL_PLANS = {
    # model: (sizes, RandAugment, mixup = cutmix, dropout)
    'efficientnetv2-b0': ([144, 160, 176, 192], [5, 10 / 3, 5 / 3, 0], [0, 0, 0, 0], 0.2),
    'efficientnetv2-b1': ([144, 160, 176, 192], [5, 10 / 3, 5 / 3, 0], [0, 0, 0, 0], 0.2),
    'efficientnetv2-b2': ([148, 168, 188, 208], [5, 10 / 3, 5 / 3, 0], [0, 0, 0, 0], 0.3),
    'efficientnetv2-b3': ([156, 184, 212, 240], [5, 10 / 3, 5 / 3, 0], [0, 0, 0, 0], 0.3),
    'efficientnetv2-xl': ([192, 256, 320, 384], [5, 10, 15, 20], [0, 1 / 6, 1 / 3, 0.5], 0.4),
}


@pytest.mark.parametrize('model', sorted(OFFICIAL_PLANS))
def test_models_without_table_6_follow_the_official_plan(model):
    sizes, ram, mix, dropout = OFFICIAL_PLANS[model]
    config = experiment.build_config(model, 'imagenet')
    assert config.train.progressive == 'official' and config.train.stages == 4
    plan = progressive.plan_for_config(config, 1000)
    assert [s.image_size for s in plan] == sizes
    np.testing.assert_allclose([s.ram for s in plan], ram, atol=1e-9)
    np.testing.assert_allclose([s.mixup_alpha for s in plan], mix, atol=1e-9)
    np.testing.assert_allclose([s.cutmix_alpha for s in plan], mix, atol=1e-9)
    assert [s.dropout_rate for s in plan] == [dropout] * 4
    assert [s.end_step for s in plan] == [250, 500, 750, 1000]


# -- through main.py ------------------------------------------------------------------------


def _image_folder(root, size=48, per_class=10):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    for name in ('cats', 'dogs'):
        os.makedirs(os.path.join(root, name))
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            with open(os.path.join(root, name, f'{i}.png'), 'wb') as f:
                f.write(tf.io.encode_png(pixels).numpy())
    return root


def test_main_bad_value_is_a_usage_error_that_writes_nothing(tmp_path):
    model_dir = tmp_path / 'run'
    done = script_runner.run_main(f'--model_dir={model_dir}', '--hparam_str=train.batch_size=abc')
    assert done.returncode == 2, done.stderr[-3000:]
    assert "train.batch_size must be an integer > 0; received 'abc' (str)" in done.stderr
    assert 'Traceback' not in done.stderr
    assert not model_dir.exists()


def test_main_trains_a_small_image_folder_with_derived_first_stage(tmp_path):
    # 48 px images, final size 64, 2 stages: the first stage starts from 32 (half of 64), where
    # a fixed 128 used to fail; eval runs at B0's 224 px, larger than the images.
    data_dir = _image_folder(str(tmp_path / 'images'))
    model_dir = tmp_path / 'run'
    done = script_runner.run_main(
        '--mode=train',
        '--strategy=cpu',
        '--dataset_cfg=folder',
        f'--data_dir={data_dir}',
        f'--model_dir={model_dir}',
        f'--hparam_str={TINY},train.stages=2,train.image_size=64,train.epochs=1',
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'Progressive learning plan (official mode, 2 stages, 2 steps)' in done.stderr
    assert 'image size 48' in done.stderr and 'image size 64' in done.stderr
    saved = yaml.safe_load((model_dir / 'config.yaml').read_text())
    assert saved['train']['min_image_size'] is None
