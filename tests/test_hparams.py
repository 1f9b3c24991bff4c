"""The config system: strict overrides from dicts, YAML and strings, safe value parsing."""

import re

import pytest

from efficientnetv2 import hparams


def make():
    return hparams.Config(
        dict(
            model=dict(width_coefficient=1.0, dropout_rate=0.2, act_fn='silu', blocks=['a']),
            train=dict(
                epochs=350,
                batch_size=4096,
                lr_base=0.016,
                stages=4,
                ft_init_ckpt=None,
                use_ema=True,
            ),
            data=dict(extra={}),
        )
    )


def test_attribute_and_item_access():
    cfg = make()
    assert cfg.model.dropout_rate == 0.2
    assert cfg['train']['epochs'] == 350
    assert 'model' in cfg and 'nope' not in cfg


def test_override_from_string_parses_values_safely():
    cfg = make().override(
        'train.epochs=10,train.lr_base=1,model.act_fn=relu,train.use_ema=False,'
        'train.ft_init_ckpt=none,model.blocks=x|y,train.batch_size=0x10'
    )
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


# -- typed configs --------------------------------------------------------------------------

DEFAULTS = dict(
    train=dict(
        epochs=350,
        lr_base=0.016,
        use_ema=True,
        optimizer='rmsprop',
        blocks=['a'],
        seed=None,
        ckpt=None,
    ),
    data=dict(extra={}),
)
EXPLICIT = {
    'train.epochs': hparams.Spec('number', low=0, low_open=True),
    'train.seed': hparams.Spec('int', low=0, nullable=True),
    'train.optimizer': hparams.Spec('str', choices=('rmsprop', 'sgd')),
    'train.not_yet_a_key': hparams.Spec('bool', nullable=True),
}


def typed():
    return hparams.typed_config(DEFAULTS, EXPLICIT)


def test_kinds_come_from_the_defaults():
    schema = hparams.derive_schema(DEFAULTS)
    assert {k: s.kind for k, s in schema.items()} == {
        'train.epochs': 'int',
        'train.lr_base': 'float',
        'train.use_ema': 'bool',
        'train.optimizer': 'str',
        'train.blocks': 'list',
        'train.seed': 'any',
        'train.ckpt': 'any',
    }
    assert not schema['train.epochs'].nullable and schema['train.seed'].nullable


@pytest.mark.parametrize(
    'override,message',
    [
        ('train.epochs=abc', re.escape("train.epochs must be a number > 0; received 'abc' (str)")),
        (
            "train.epochs=__import__('os').system('false')",
            re.escape(
                "train.epochs must be a number > 0; received \"__import__('os').system('false')\""
            ),
        ),
        ('train.epochs=0', r'train.epochs must be a number > 0; received 0 \(int\)'),
        ('train.epochs=True', r'received True \(bool\)'),  # bools are not numbers
        ('train.lr_base=none', r'train.lr_base must be a number; received None'),
        ('train.lr_base=True', r'train.lr_base must be a number; received True'),
        ('train.use_ema=1', r'train.use_ema must be a boolean \(true/false\); received 1 \(int\)'),
        ('train.optimizer=3', r"train.optimizer must be one of \['rmsprop', 'sgd'\]; received 3"),
        ('train.optimizer=adam', r"must be one of \['rmsprop', 'sgd'\]; received 'adam'"),
        ('train.seed=1.5', r'train.seed must be an integer >= 0 or None; received 1.5 \(float\)'),
        ('train.seed=-2', r'train.seed must be an integer >= 0 or None; received -2'),
        ('train.blocks=3', r'train.blocks must be a list; received 3'),
        ('train.lr_base=nan', r"train.lr_base must be a number; received 'nan' \(str\)"),
        ({'train': {'lr_base': float('inf')}}, r'train.lr_base must be a number; received inf'),
    ],
)
def test_bad_values_name_key_expectation_and_value(override, message):
    with pytest.raises(hparams.ConfigValueError, match=message):
        typed().override(override)
    assert issubclass(hparams.ConfigValueError, ValueError)


def test_good_values_are_stored_in_their_kind():
    cfg = typed().override(
        'train.epochs=0.5,train.lr_base=1,train.seed=3,train.seed=none,train.blocks=x,train.ckpt=7'
    )
    assert cfg.train.epochs == 0.5
    assert cfg.train.lr_base == 1.0 and isinstance(cfg.train.lr_base, float)
    assert cfg.train.seed is None
    assert cfg.train.blocks == ['x']
    assert cfg.train.ckpt == 7  # None default, no spec: any
    cfg.override({'train': {'seed': 2.0, 'lr_base': '1e-5'}})  # YAML reads 1e-5 as text
    assert cfg.train.seed == 2 and isinstance(cfg.train.seed, int)
    assert cfg.train.lr_base == 1e-5


def test_dicts_yaml_and_assignments_are_checked_alike(tmp_path):
    with pytest.raises(hparams.ConfigValueError, match='train.use_ema'):
        typed().override({'train': {'use_ema': 'yes'}})
    with pytest.raises(hparams.ConfigValueError, match='train.use_ema'):
        typed().override({'train.use_ema': 'yes'})
    path = tmp_path / 'bad.yaml'
    path.write_text('train:\n  epochs: ten\n')
    with pytest.raises(hparams.ConfigValueError, match="train.epochs .*received 'ten'"):
        typed().override(str(path))
    cfg = typed()
    with pytest.raises(hparams.ConfigValueError, match='train.use_ema'):
        cfg.train.use_ema = 'no'
    with pytest.raises(hparams.ConfigValueError, match='train.seed'):
        cfg['train']['seed'] = -1
    with pytest.raises(hparams.ConfigValueError, match='train.epochs'):
        cfg.train = {'epochs': -1}
    # Open sections stay untyped.
    assert cfg.override('data.extra.anything=x').data.extra.anything == 'x'


def test_copies_stay_typed_and_new_default_keys_are_typed():
    clone = typed().copy()
    with pytest.raises(hparams.ConfigValueError, match='train.epochs'):
        clone.override('train.epochs=-1')
    defaults = dict(DEFAULTS, runtime=dict(jit=None, group=0))
    cfg = hparams.typed_config(defaults, EXPLICIT)
    with pytest.raises(hparams.ConfigValueError, match='runtime.group must be an integer'):
        cfg.override('runtime.group=x')
    # An explicit spec for a key the defaults do not have is harmless...
    assert 'not_yet_a_key' not in cfg.train
    # ...and the defaults themselves must pass their specs.
    with pytest.raises(hparams.ConfigValueError, match='train.seed'):
        hparams.typed_config(dict(train=dict(seed=-1)), EXPLICIT)


def test_spec_describe():
    assert hparams.Spec('float', low=0.0, high=1.0, high_open=True).describe() == (
        'a number in [0.0, 1.0)'
    )
    assert hparams.Spec('int', low=0, low_open=True).describe() == 'an integer > 0'
    assert hparams.Spec('str', choices=('a', 'b'), nullable=True).describe() == (
        "one of ['a', 'b'] or None"
    )
    with pytest.raises(ValueError, match='kind'):
        hparams.Spec('complex')
