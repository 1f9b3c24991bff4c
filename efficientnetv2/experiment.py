"""A run's config from names: the layer above `config` (which is data) and `data`.

`build_config(model_name, dataset_cfg, ...)` resolves the dataset (`data.get_dataset_info`),
registers the model a YAML `config_file` defines (`architectures.register_from_config`),
composes the config in override order (`config.compose`) and checks it, the
preprocessing-family check included (`data.preprocessing.resolve_family`, which
`config.validate` cannot import).
"""

from efficientnetv2 import architectures
from efficientnetv2 import config as config_lib
from efficientnetv2 import data
from efficientnetv2 import hparams


def check_preprocess(config):
    """`data.preprocess` agrees with `data.augname` and names a transform family.

    Raises:
        hparams.ConfigValueError: naming both keys and what is wrong.
    """
    try:
        data.preprocessing.resolve_family(config.data.preprocess, config.data.augname)
    except ValueError as e:
        raise hparams.ConfigValueError(f'data.augname / data.preprocess: {e}') from None


def validate(config):
    """`config.validate` with the checks that need the data code; returns the config.

    Raises:
        hparams.ConfigValueError (a ValueError): the message names the key, what it accepts
            and the value received.
    """
    return config_lib.validate(config, checks=(check_preprocess,))


def build_config(
    model_name='efficientnetv2-s',
    dataset_cfg='imagenet',
    config_file=None,
    hparam_str=None,
    data_dir=None,
):
    """The run config in override order: defaults, model, dataset, YAML file, hparam string.

    Raises:
        ValueError: unknown model or dataset name (lists the valid ones), malformed overrides.
        KeyError: an override names an unknown key (names the closest valid keys).
    """
    info = data.get_dataset_info(dataset_cfg, data_dir=data_dir)
    if isinstance(config_file, str) and config_file.strip().endswith(('.yaml', '.yml')):
        # A model defined by the file itself (efficientnetv2.scaling --write_config, or a run's
        # config.yaml) is registered under its name, so a fresh process takes it; the file's
        # `scaling` section (base model, sizes) only serves that and is not a config key.
        config_file = hparams.load_yaml(config_file.strip())
        architectures.register_from_config(config_file)
        config_file.pop('scaling', None)
    return config_lib.compose(
        model_name,
        info.name,
        info.num_classes,
        data_dir=data_dir,
        config_file=config_file,
        hparam_str=hparam_str,
        checks=(check_preprocess,),
    )
