"""Run configs: recipes, override order, the shipped YAML files and validation."""

import glob
import os

import pytest
import yaml

from efficientnetv2 import config as config_lib

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          'configs')


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(CONFIG_DIR, '*.yaml'))))
def test_shipped_configs_load(path):
    with open(path) as f:
        values = yaml.safe_load(f)
    model_name = values['model']['model_name']
    dataset = 'cifar10Ft' if 'finetune' in path else (
        'digits' if 'digits' in path else 'imagenet')
    config = config_lib.build_config(model_name, dataset, config_file=path)
    for section, entries in values.items():
        for key, value in entries.items():
            assert config[section][key] == value, (section, key)


def test_digits_yaml_equals_the_built_in_demo():
    built_in = config_lib.build_config('efficientnetv2-b0', 'digits')
    from_file = config_lib.build_config('efficientnetv2-b0', 'digits',
                                        config_file=os.path.join(CONFIG_DIR, 'digits.yaml'))
    assert built_in == from_file


def test_paper_recipe_targets_table_6():
    config = config_lib.build_config('efficientnetv2-s', 'imagenet')
    assert (config.train.image_size, config.data.ram, config.data.mixup_alpha,
            config.model.dropout_rate) == (300, 15.0, 0.0, 0.3)
    assert config.eval.image_size == 384 and config.train.stages == 4
    v1 = config_lib.build_config('efficientnet-b0', 'imagenet')
    assert v1.train.stages == 0 and v1.model.bn_momentum == 0.99
    assert config_lib.train_image_size(v1) == 176


def test_override_order_and_finetune_recipe():
    config = config_lib.build_config('efficientnetv2-b0', 'cifar10Ft',
                                     hparam_str='train.lr_base=0.001')
    assert config.model.num_classes == 10
    assert config.train.lr_base == 0.001          # hparam_str beats the dataset recipe.
    assert config.train.lr_sched == 'constant'     # dataset recipe beats the defaults.
    assert config_lib.train_image_size(config) == 224


def test_config_for_another_model_is_refused():
    with pytest.raises(ValueError, match='--model_name=efficientnetv2-s'):
        config_lib.build_config('efficientnetv2-m', 'imagenet', config_file=os.path.join(
            CONFIG_DIR, 'imagenet-efficientnetv2-s.yaml'))


@pytest.mark.parametrize('override,message', [
    ('train.lr_sched=step', 'train.lr_sched must be one of'),
    ('train.batch_size=0', 'train.batch_size must be > 0'),
    ('runtime.strategy=tpus', 'runtime.strategy must be one of'),
])
def test_bad_values_are_named(override, message):
    with pytest.raises(ValueError, match=message):
        config_lib.build_config('efficientnetv2-b0', 'digits', hparam_str=override)
