"""The config system: strict overrides from dicts, YAML and strings, safe value parsing."""

import pytest

from efficientnetv2 import hparams


def make():
    return hparams.Config(dict(
        model=dict(width_coefficient=1.0, dropout_rate=0.2, act_fn='silu', blocks=['a']),
        train=dict(epochs=350, batch_size=4096, lr_base=0.016, stages=4, ft_init_ckpt=None,
                   use_ema=True),
        data=dict(extra={})))


def test_attribute_and_item_access():
    cfg = make()
    assert cfg.model.dropout_rate == 0.2
    assert cfg['train']['epochs'] == 350
    assert 'model' in cfg and 'nope' not in cfg


def test_override_from_string_parses_values_safely():
    cfg = make().override(
        "train.epochs=10,train.lr_base=1,model.act_fn=relu,train.use_ema=False,"
        "train.ft_init_ckpt=none,model.blocks=x|y,train.batch_size=0x10")
    assert cfg.train.epochs == 10
    assert cfg.train.lr_base == 1.0 and isinstance(cfg.train.lr_base, float)
    assert cfg.model.act_fn == 'relu'
    assert cfg.train.use_ema is False
    assert cfg.train.ft_init_ckpt is None
    assert cfg.model.blocks == ['x', 'y']
    assert cfg.train.batch_size == 16


def test_brackets_and_quotes_keep_commas():
    cfg = make().override("model.blocks=['r1_k3', 'r2_k5'],model.act_fn='a,b'")
    assert cfg.model.blocks == ['r1_k3', 'r2_k5']
    assert cfg.model.act_fn == 'a,b'


def test_values_are_never_evaluated():
    cfg = make().override("model.act_fn=__import__('os').system('false')")
    assert cfg.model.act_fn == "__import__('os').system('false')"


def test_unknown_key_names_the_closest_keys():
    with pytest.raises(KeyError, match='train.epochs'):
        make().override('train.epoch=3')
    with pytest.raises(KeyError, match='dropout_rate'):
        make().override({'model': {'droput_rate': 0.1}})


def test_open_sections_accept_new_keys():
    cfg = make().override('data.extra.anything=1')
    assert cfg.data.extra.anything == 1


def test_malformed_override_string():
    with pytest.raises(ValueError, match='expected "dotted.key=value"'):
        make().override('train.epochs')


def test_section_cannot_be_replaced_by_a_scalar():
    with pytest.raises(ValueError, match='section'):
        make().override('model=3')


def test_yaml_round_trip(tmp_path):
    cfg = make().override('train.epochs=7')
    path = str(tmp_path / 'c.yaml')
    cfg.to_yaml(path)
    again = make().override(path)
    assert again == cfg
    assert make().override({'train': {'epochs': 7}}) == cfg


def test_yaml_file_must_hold_a_mapping(tmp_path):
    path = tmp_path / 'bad.yaml'
    path.write_text('- 1\n- 2\n')
    with pytest.raises(ValueError, match='mapping'):
        make().override(str(path))
    with pytest.raises(FileNotFoundError, match='missing.yaml'):
        make().override(str(tmp_path / 'missing.yaml'))


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / 'evil.yaml'
    path.write_text('train: !!python/object/apply:os.system ["false"]\n')
    with pytest.raises(ValueError, match='not valid YAML'):
        make().override(str(path))


def test_flat_keys_and_copy_are_independent():
    cfg = make()
    assert 'train.epochs' in cfg.flat_keys()
    clone = cfg.copy()
    clone.train.epochs = 1
    assert cfg.train.epochs == 350
