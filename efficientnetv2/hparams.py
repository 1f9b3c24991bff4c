"""Nested hyper-parameter configs with strict, typed overrides.

A `Config` is a tree of plain values (numbers, strings, booleans, None, lists) held in nested
`Config` nodes, read as attributes (`cfg.train.epochs`) or items (`cfg['train']['epochs']`).
Overrides come from dicts, other configs, YAML files and `"a.b=1,c.d=x"` strings, in the order
they are applied. Every override is strict: a key that the defaults do not define is an error
naming the closest valid keys, so a typo never silently trains the wrong thing.

Values given as text are parsed without `eval`: `ast.literal_eval` for Python literals, plus
`true`/`false`/`none`/`null`, and `|` to separate list items (`"train.stages_sizes=128|256"`).

Typed configs: `Config.set_schema(schema)` (or `typed_config(defaults, explicit)`) gives every
leaf key a `Spec` (type, range, choices, whether None is allowed), and every later write -- an
override from a string, a YAML file, a dict, or an attribute assignment -- is checked against it;
a violation is a `ConfigValueError` naming the key, what it accepts and the value received.
`derive_schema` takes each key's type from its default value (bool, int, float, str, list), so a
key added to the defaults is typed without further work; keys whose default is None accept
anything unless an explicit `Spec` says otherwise. Ints are accepted (and stored as floats)
where floats are expected; bools are never accepted as numbers.
"""

import ast
import copy
import difflib
import math
import numbers
import os

import yaml

_LIST_SEPARATOR = '|'
_WORD_LITERALS = {'true': True, 'false': False, 'none': None, 'null': None}

# Value kinds a `Spec` understands. 'number' takes ints and floats and keeps them as given;
# 'float' takes both and stores floats; 'any' takes everything.
KINDS = ('bool', 'int', 'float', 'number', 'str', 'list', 'any')
_KIND_WORDS = {
    'bool': 'a boolean (true/false)',
    'int': 'an integer',
    'float': 'a number',
    'number': 'a number',
    'str': 'a string',
    'list': 'a list',
    'any': 'any value',
}


class ConfigValueError(ValueError):
    """A config value has the wrong type, is out of range, or is not one of the choices."""


class Spec:
    """What one config key accepts.

    Args:
        kind: one of `KINDS`, or None to take the kind from the key's default value.
        nullable: whether None is accepted.
        low, high: bounds for numbers (None: unbounded).
        low_open, high_open: whether the bound itself is excluded (`> low`, `< high`).
        choices: the only values accepted (besides None when nullable).
    """

    def __init__(
        self,
        kind=None,
        nullable=False,
        low=None,
        high=None,
        low_open=False,
        high_open=False,
        choices=None,
    ):
        if kind is not None and kind not in KINDS:
            raise ValueError(f'Spec kind must be one of {list(KINDS)}; received {kind!r}.')
        self.kind = kind
        self.nullable = nullable
        self.low, self.high = low, high
        self.low_open, self.high_open = low_open, high_open
        self.choices = tuple(choices) if choices is not None else None

    def __repr__(self):
        return f'Spec({self.describe()})'

    def with_kind(self, kind):
        """A copy whose kind is `kind` when this spec leaves it open."""
        spec = copy.copy(self)
        if spec.kind is None:
            spec.kind = kind
        return spec

    def describe(self):
        """The accepted values in words, e.g. 'an integer > 0', 'one of ['a', 'b'] or None'."""
        if self.choices is not None:
            text = f'one of {list(self.choices)}'
        else:
            text = _KIND_WORDS.get(self.kind or 'any')
            if self.low is not None and self.high is not None:
                text += ' in {}{!r}, {!r}{}'.format(
                    '(' if self.low_open else '[',
                    self.low,
                    self.high,
                    ')' if self.high_open else ']',
                )
            elif self.low is not None:
                text += ' {} {!r}'.format('>' if self.low_open else '>=', self.low)
            elif self.high is not None:
                text += ' {} {!r}'.format('<' if self.high_open else '<=', self.high)
        if self.nullable:
            text += ' or None'
        return text

    def check(self, key, value):
        """Returns `value` in its stored form, or raises ConfigValueError naming `key`."""
        if value is None:
            if self.nullable or self.kind in (None, 'any'):
                return None
            raise self._error(key, value)
        if self.choices is not None:
            if value in self.choices and not _bool_posing_as_number(value, self.choices):
                return value
            raise self._error(key, value)
        value = self._convert(key, value)
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                raise self._error(key, value)
            if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
                raise self._error(key, value)
            if self.high is not None and (
                value > self.high or (self.high_open and value == self.high)
            ):
                raise self._error(key, value)
        return value

    def _convert(self, key, value):
        kind = self.kind or 'any'
        if kind == 'any':
            return value
        if kind == 'bool':
            if isinstance(value, bool):
                return value
            raise self._error(key, value)
        if kind == 'str':
            if isinstance(value, str):
                return value
            raise self._error(key, value)
        if kind == 'list':
            if isinstance(value, (list, tuple)):
                return list(value)
            if isinstance(value, str):  # One item given without brackets.
                return [value]
            raise self._error(key, value)
        # Numbers. A numeric string (YAML reads `1e-5` as text) is accepted as its number.
        number = value
        if isinstance(number, str):
            number = parse_value(number)
        if isinstance(number, bool) or not isinstance(number, numbers.Real):
            raise self._error(key, value)
        if kind == 'int':
            if isinstance(number, numbers.Integral):
                return int(number)
            if math.isfinite(number) and float(number).is_integer():
                return int(number)
            raise self._error(key, value)
        if kind == 'float':
            return float(number)
        return number

    def _error(self, key, value):
        return ConfigValueError(
            f'Config key {key} must be {self.describe()}; received {value!r} '
            f'({type(value).__name__}).'
        )


def _bool_posing_as_number(value, choices):
    """True for True/False matching a 1/0 among the choices (bools are not ints)."""
    return isinstance(value, bool) and not any(isinstance(c, bool) and c is value for c in choices)


def kind_of(value):
    """The `Spec` kind a default value implies: bool, int, float, str, list or any."""
    if isinstance(value, bool):
        return 'bool'
    if isinstance(value, numbers.Integral):
        return 'int'
    if isinstance(value, numbers.Real):
        return 'float'
    if isinstance(value, str):
        return 'str'
    if isinstance(value, (list, tuple)):
        return 'list'
    return 'any'


def derive_schema(defaults, explicit=None):
    """A schema {dotted key: Spec} for every leaf of `defaults`.

    Each key's kind comes from its default value (a None default: any value), refined by
    `explicit` ({dotted key: Spec}), whose entries win; an explicit Spec without a kind takes
    the default's. Explicit entries for keys the defaults lack are kept, so they apply as soon
    as such a key is added.
    """
    if isinstance(defaults, Config):
        defaults = defaults.as_dict()
    explicit = dict(explicit or {})
    schema = {}

    def walk(values, prefix):
        for key, value in values.items():
            path = prefix + key
            if isinstance(value, dict) and value:
                walk(value, path + '.')
            elif isinstance(value, dict):
                continue  # An open section: any keys, any values.
            else:
                schema[path] = Spec(kind_of(value), nullable=value is None)

    walk(defaults, '')
    for key, spec in explicit.items():
        base = schema.get(key)
        schema[key] = spec.with_kind(base.kind if base else 'any')
    return schema


def typed_config(defaults, explicit=None):
    """A `Config` of `defaults` whose keys are typed by `derive_schema(defaults, explicit)`."""
    config = Config(defaults)
    config.set_schema(derive_schema(defaults, explicit))
    config.check_values()
    return config


class Config:
    """A nested, attribute-accessible dictionary of hyper-parameters."""

    def __init__(self, values=None):
        object.__setattr__(self, '_values', {})
        object.__setattr__(self, '_schema', None)
        object.__setattr__(self, '_prefix', '')
        if values:
            self._merge(values, allow_new=True)

    # -- mapping protocol -------------------------------------------------------------------

    def __getattr__(self, key):
        if key.startswith('__'):
            raise AttributeError(key)
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(_unknown_key_message(key, self._values.keys())) from None

    def __setattr__(self, key, value):
        self[key] = value

    def __getitem__(self, key):
        return self._values[key]

    def __setitem__(self, key, value):
        current = self._values.get(key)
        if isinstance(current, Config) and isinstance(value, (dict, Config)):
            value = Config(value.as_dict() if isinstance(value, Config) else value)
            value._attach_schema(self._schema, self._prefix + key + '.')
            value.check_values()
            self._values[key] = value
        else:
            self._values[key] = _wrap(self._checked(key, value))

    def __contains__(self, key):
        return key in self._values

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)

    def __eq__(self, other):
        if isinstance(other, Config):
            return self.as_dict() == other.as_dict()
        if isinstance(other, dict):
            return self.as_dict() == other
        return NotImplemented

    def __repr__(self):
        return f'Config({self.as_dict()!r})'

    def __deepcopy__(self, memo):
        clone = Config(copy.deepcopy(self.as_dict(), memo))
        clone._attach_schema(self._schema, self._prefix)
        return clone

    def keys(self):
        return self._values.keys()

    def items(self):
        return self._values.items()

    def get(self, key, default=None):
        return self._values.get(key, default)

    def copy(self):
        return copy.deepcopy(self)

    # -- conversion -------------------------------------------------------------------------

    def as_dict(self):
        """Returns the config as nested plain dicts."""
        return {
            k: v.as_dict() if isinstance(v, Config) else copy.deepcopy(v)
            for k, v in self._values.items()
        }

    def flat_keys(self, prefix=''):
        """All leaf keys in dotted form, e.g. ['model.width_coefficient', ...]."""
        keys = []
        for k, v in self._values.items():
            path = prefix + k
            if isinstance(v, Config) and len(v):
                keys.extend(v.flat_keys(path + '.'))
            else:
                keys.append(path)
        return keys

    def to_yaml(self, path=None):
        """Serialises the config to YAML; writes it to `path` when given and returns the text.

        The file is written whole or not at all (a temporary file renamed into place), so a
        process polling for it (an evaluator started before its trainer) never reads half.
        """
        text = yaml.safe_dump(self.as_dict(), default_flow_style=False, sort_keys=False)
        if path:
            import tensorflow as tf  # Only needed for gs:// paths; keep the module light.

            partial = f'{path}.tmp-{os.getpid()}'
            with tf.io.gfile.GFile(partial, 'w') as f:
                f.write(text)
            tf.io.gfile.rename(partial, path, overwrite=True)
        return text

    # -- overrides --------------------------------------------------------------------------

    def override(self, overrides, allow_new=False):
        """Applies overrides in place and returns self.

        Args:
            overrides: a dict, a `Config`, a path to a YAML file, or a string of comma-separated
                `dotted.key=value` pairs (which may also be a YAML path). None or '' is a no-op.
            allow_new: if True, keys missing from this config are added instead of rejected.

        Raises:
            KeyError: an override names a key this config does not define (the message lists the
                closest valid keys).
            ValueError: an override string is malformed.
        """
        if overrides is None or (isinstance(overrides, str) and not overrides.strip()):
            return self
        if isinstance(overrides, str):
            overrides = _parse_override_text(overrides)
        elif isinstance(overrides, Config):
            overrides = overrides.as_dict()
        if not isinstance(overrides, dict):
            raise ValueError(
                'Config overrides must be a dict, a Config, a YAML path or a '
                f'"a.b=v,c=w" string. Received: {overrides!r}'
            )
        self._merge(_expand_dotted_keys(overrides), allow_new=allow_new)
        return self

    # -- typing ---------------------------------------------------------------------------

    def set_schema(self, schema):
        """Types this config's keys: `schema` maps dotted keys to `Spec`s (see derive_schema).

        Later writes are checked against it; call `check_values` to check the current values.
        """
        self._attach_schema(dict(schema), '')
        return self

    @property
    def schema(self):
        """The {dotted key: Spec} this config checks writes against, or None."""
        return self._schema

    def spec(self, key):
        """The `Spec` of a key relative to this node (e.g. 'train.epochs'), or None."""
        return (self._schema or {}).get(self._prefix + key)

    def check_values(self):
        """Checks every typed leaf against its Spec (storing the converted values); returns self.

        Raises:
            ConfigValueError: the first value that its Spec refuses, naming the key.
        """
        for key, value in list(self._values.items()):
            if isinstance(value, Config):
                value.check_values()
            else:
                self._values[key] = self._checked(key, value)
        return self

    def _attach_schema(self, schema, prefix):
        object.__setattr__(self, '_schema', schema)
        object.__setattr__(self, '_prefix', prefix)
        for key, value in self._values.items():
            if isinstance(value, Config):
                value._attach_schema(schema, prefix + key + '.')

    def _checked(self, key, value):
        spec = self._schema.get(self._prefix + key) if self._schema else None
        if spec is None or isinstance(value, (dict, Config)):
            return value
        return spec.check(self._prefix + key, value)

    def _merge(self, values, allow_new, path=''):
        for key, value in values.items():
            if not isinstance(key, str):
                raise KeyError(f'Config keys must be strings. Received {key!r} at {path!r}.')
            full = path + key
            if key not in self._values:
                if not allow_new:
                    raise KeyError(_unknown_key_message(full, self._root_keys_hint(path)))
                self._values[key] = _wrap(value)
                if isinstance(self._values[key], Config) and self._schema is not None:
                    self._values[key]._attach_schema(self._schema, self._prefix + key + '.')
                continue
            current = self._values[key]
            if isinstance(current, Config) and isinstance(value, (dict, Config)):
                if isinstance(value, Config):
                    value = value.as_dict()
                # A node that is empty in the defaults is open: it takes any keys.
                current._merge(value, allow_new=allow_new or not len(current), path=full + '.')
            else:
                if isinstance(current, Config) or self.spec(key) is None:
                    # Untyped keys keep in line with the value they replace (int -> float, ...).
                    value = _coerce(current, value, self._prefix + full)
                self._values[key] = _wrap(self._checked(key, value))

    def _root_keys_hint(self, path):
        return [path + k for k in self.flat_keys()] + [path + k for k in self._values]


def _wrap(value):
    if isinstance(value, Config):
        return value
    if isinstance(value, dict):
        return Config(value)
    return value


def _coerce(current, value, key):
    """Keeps a value's type in line with the default it replaces (int -> float, str -> list)."""
    if isinstance(current, bool) or current is None or value is None:
        return value
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, (list, tuple)) and not isinstance(value, (list, tuple)):
        return [value]
    if isinstance(current, Config) and not isinstance(value, (dict, Config)):
        raise ValueError(
            f'Config key {key!r} is a section and takes a mapping; received {value!r}.'
        )
    return value


def _unknown_key_message(key, valid_keys):
    valid_keys = sorted(set(valid_keys))
    close = difflib.get_close_matches(key, valid_keys, n=5, cutoff=0.5)
    if not close:
        tail = key.rsplit('.', 1)[-1]
        close = [k for k in valid_keys if k.rsplit('.', 1)[-1] == tail][:5]
    hint = (
        ('Did you mean: {}?'.format(', '.join(close)))
        if close
        else ('Valid keys: {}'.format(', '.join(valid_keys[:40])))
    )
    return f'Unknown config key {key!r}. {hint}'


def parse_value(text):
    """Parses one override value without `eval`.

    Python literals (numbers, quoted strings, lists, tuples, dicts), the words true/false/none/
    null (any case), and `|`-separated lists are understood; anything else stays a string.
    """
    text = text.strip()
    if _LIST_SEPARATOR in text and not text.startswith(('[', '(', '{', '"', "'")):
        return [parse_value(item) for item in text.split(_LIST_SEPARATOR) if item.strip()]
    lowered = text.lower()
    if lowered in _WORD_LITERALS:
        return _WORD_LITERALS[lowered]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def _split_top_level(text):
    """Splits on commas that are not inside brackets or quotes."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in '\'"':
            quote = ch
        elif ch in '([{':
            depth += 1
        elif ch in ')]}':
            depth -= 1
        elif ch == ',' and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in (p.strip() for p in parts) if p]


def _parse_override_text(text):
    text = text.strip()
    if text.endswith(('.yaml', '.yml')) and '=' not in text:
        return load_yaml(text)
    result = {}
    for item in _split_top_level(text):
        if item.endswith(('.yaml', '.yml')) and '=' not in item:
            result = _deep_update(result, load_yaml(item))
            continue
        if '=' not in item:
            raise ValueError(
                f'Malformed override {item!r} in {text!r}: expected "dotted.key=value".'
            )
        key, value = item.split('=', 1)
        key = key.strip()
        if not key:
            raise ValueError(f'Malformed override {item!r} in {text!r}: empty key.')
        result[key] = parse_value(value)
    return result


def _expand_dotted_keys(values):
    """Turns {'a.b': 1} into {'a': {'b': 1}}, recursively."""
    result = {}
    for key, value in values.items():
        if isinstance(value, Config):
            value = value.as_dict()
        if isinstance(value, dict):
            value = _expand_dotted_keys(value)
        parts = str(key).split('.')
        node = result
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f'Override key {key!r} conflicts with another override.')
        leaf = parts[-1]
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf] = _deep_update(node[leaf], value)
        else:
            node[leaf] = value
    return result


def _deep_update(base, update):
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


def load_yaml(path):
    """Reads a YAML mapping with `yaml.safe_load`; errors name the file."""
    import tensorflow as tf  # gfile reads local and gs:// paths alike.

    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f'Config file not found: {path}')
    with tf.io.gfile.GFile(path, 'r') as f:
        try:
            values = yaml.safe_load(f.read())
        except yaml.YAMLError as e:
            raise ValueError(f'Config file {path} is not valid YAML: {e}') from e
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(
            f'Config file {path} must hold a mapping at the top level; '
            f'found {type(values).__name__}.'
        )
    return values
