"""Nested hyper-parameter configs with strict, typed overrides.

A `Config` is a tree of plain values (numbers, strings, booleans, None, lists) held in nested
`Config` nodes, read as attributes (`cfg.train.epochs`) or items (`cfg['train']['epochs']`).
Overrides come from dicts, other configs, YAML files and `"a.b=1,c.d=x"` strings, in the order
they are applied. Every override is strict: a key that the defaults do not define is an error
naming the closest valid keys, so a typo never silently trains the wrong thing.

Values given as text are parsed without `eval`: `ast.literal_eval` for Python literals, plus
`true`/`false`/`none`/`null`, and `|` to separate list items (`"train.stages_sizes=128|256"`).
"""

import ast
import copy
import difflib

import yaml

_LIST_SEPARATOR = '|'
_WORD_LITERALS = {'true': True, 'false': False, 'none': None, 'null': None}


class Config(object):
    """A nested, attribute-accessible dictionary of hyper-parameters."""

    def __init__(self, values=None):
        object.__setattr__(self, '_values', {})
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
        self._values[key] = _wrap(value)

    def __getitem__(self, key):
        return self._values[key]

    def __setitem__(self, key, value):
        self._values[key] = _wrap(value)

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
        return 'Config(%r)' % self.as_dict()

    def __deepcopy__(self, memo):
        return Config(copy.deepcopy(self.as_dict(), memo))

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
        return {k: v.as_dict() if isinstance(v, Config) else copy.deepcopy(v)
                for k, v in self._values.items()}

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
        """Serialises the config to YAML; writes it to `path` when given and returns the text."""
        text = yaml.safe_dump(self.as_dict(), default_flow_style=False, sort_keys=False)
        if path:
            import tensorflow as tf  # Only needed for gs:// paths; keep the module light.
            with tf.io.gfile.GFile(path, 'w') as f:
                f.write(text)
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
            raise ValueError('Config overrides must be a dict, a Config, a YAML path or a '
                             '"a.b=v,c=w" string. Received: %r' % (overrides,))
        self._merge(_expand_dotted_keys(overrides), allow_new=allow_new)
        return self

    def _merge(self, values, allow_new, path=''):
        for key, value in values.items():
            if not isinstance(key, str):
                raise KeyError('Config keys must be strings. Received %r at %r.' % (key, path))
            full = path + key
            if key not in self._values:
                if not allow_new:
                    raise KeyError(_unknown_key_message(full, self._root_keys_hint(path)))
                self._values[key] = _wrap(value)
                continue
            current = self._values[key]
            if isinstance(current, Config) and isinstance(value, (dict, Config)):
                if isinstance(value, Config):
                    value = value.as_dict()
                # A node that is empty in the defaults is open: it takes any keys.
                current._merge(value, allow_new=allow_new or not len(current), path=full + '.')
            else:
                self._values[key] = _wrap(_coerce(current, value, full))

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
        raise ValueError('Config key %r is a section and takes a mapping; received %r.'
                         % (key, value))
    return value


def _unknown_key_message(key, valid_keys):
    valid_keys = sorted(set(valid_keys))
    close = difflib.get_close_matches(key, valid_keys, n=5, cutoff=0.5)
    if not close:
        tail = key.rsplit('.', 1)[-1]
        close = [k for k in valid_keys if k.rsplit('.', 1)[-1] == tail][:5]
    hint = ('Did you mean: %s?' % ', '.join(close)) if close else (
        'Valid keys: %s' % ', '.join(valid_keys[:40]))
    return 'Unknown config key %r. %s' % (key, hint)


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
            raise ValueError('Malformed override %r in %r: expected "dotted.key=value".'
                             % (item, text))
        key, value = item.split('=', 1)
        key = key.strip()
        if not key:
            raise ValueError('Malformed override %r in %r: empty key.' % (item, text))
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
                raise ValueError('Override key %r conflicts with another override.' % key)
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
        raise FileNotFoundError('Config file not found: %s' % path)
    with tf.io.gfile.GFile(path, 'r') as f:
        try:
            values = yaml.safe_load(f.read())
        except yaml.YAMLError as e:
            raise ValueError('Config file %s is not valid YAML: %s' % (path, e)) from e
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError('Config file %s must hold a mapping at the top level; found %s.'
                         % (path, type(values).__name__))
    return values
