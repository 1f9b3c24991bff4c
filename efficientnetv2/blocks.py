"""Block strings: the compact notation for one stage of an EfficientNet.

A stage is written as `_`-separated options, each a key (its leading letters) followed by a
value, e.g. `r2_k3_s1_e1_i24_o24_c1` or `r6_k3_s2_e4_i64_o128_se0.25`:

| key  | meaning                                                           | required |
| ---- | ----------------------------------------------------------------- | -------- |
| r    | repeats of the block in the stage (before depth scaling)          | yes      |
| k    | square kernel size                                                | yes      |
| s    | stride of the first block (later repeats use 1); `s22`/`s11` as   | yes      |
|      | written by the V1 code are read as 2 / 1                          |          |
| e    | expansion ratio                                                   | yes      |
| i, o | input / output channels before width scaling                      | yes      |
| se   | squeeze-excitation ratio; SE is used iff 0 < se <= 1              | no       |
| c    | block type: 0 = MBConv (default), 1 = Fused-MBConv                | no       |

Every malformed string raises `ValueError` quoting it, and `encode(decode(s)) == s` holds for the
canonical form used in this package.
"""

import dataclasses
import math
import re

_OPTION_RE = re.compile(r'^([a-z]+)(.*)$')
_REQUIRED = ('r', 'k', 's', 'e', 'i', 'o')
_KNOWN = _REQUIRED + ('se', 'c')
CONV_TYPES = {0: 'mbconv', 1: 'fused_mbconv'}


@dataclasses.dataclass(frozen=True)
class BlockArgs:
    """One stage of blocks, as decoded from a block string."""

    num_repeat: int
    kernel_size: int
    strides: int
    expand_ratio: int
    input_filters: int
    output_filters: int
    se_ratio: float = None
    conv_type: int = 0

    @property
    def has_se(self):
        return self.se_ratio is not None and 0 < self.se_ratio <= 1

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def _parse_int(text, key, block_string):
    if not re.fullmatch(r'\d+', text):
        raise ValueError(
            f'Block string {block_string!r}: option {key!r} needs a non-negative integer, '
            f'got {text!r}.'
        )
    return int(text)


def decode(block_string):
    """Parses one block string into `BlockArgs`.

    Raises:
        ValueError: the string has an unknown, repeated, missing or malformed option; the
            message quotes the whole string.
    """
    if not isinstance(block_string, str) or not block_string.strip():
        raise ValueError(
            'A block string must be a non-empty string like '
            f'"r2_k3_s1_e1_i24_o24_c1". Received: {block_string!r}'
        )
    options = {}
    for token in block_string.strip().split('_'):
        match = _OPTION_RE.match(token)
        if not match or not match.group(2):
            raise ValueError(
                f'Block string {block_string!r}: malformed option {token!r} '
                '(expected a key such as r, k, s, e, i, o, se, c followed by a number).'
            )
        key, value = match.groups()
        if key not in _KNOWN:
            raise ValueError(
                'Block string {!r}: unknown option {!r}; valid options are {}.'.format(
                    block_string, key, ', '.join(_KNOWN)
                )
            )
        if key in options:
            raise ValueError(f'Block string {block_string!r}: option {key!r} given twice.')
        options[key] = value
    missing = [k for k in _REQUIRED if k not in options]
    if missing:
        raise ValueError(
            'Block string {!r}: missing option(s) {}.'.format(block_string, ', '.join(missing))
        )

    stride_text = options['s']
    if len(stride_text) == 2 and stride_text[0] == stride_text[1]:
        stride_text = stride_text[0]  # V1 code's per-axis form: s22 -> 2.
    strides = _parse_int(stride_text, 's', block_string)

    se_ratio = None
    if 'se' in options:
        try:
            se_ratio = float(options['se'])
        except ValueError:
            raise ValueError(
                'Block string {!r}: option se needs a number, got {!r}.'.format(
                    block_string, options['se']
                )
            ) from None
        if not (math.isfinite(se_ratio) and 0 <= se_ratio <= 1):
            raise ValueError(
                f'Block string {block_string!r}: se ratio must be in [0, 1], got {se_ratio!r}.'
            )
    conv_type = _parse_int(options.get('c', '0'), 'c', block_string)
    if conv_type not in CONV_TYPES:
        valid = ', '.join(f'c{code} ({name})' for code, name in CONV_TYPES.items())
        raise ValueError(
            f'Block string {block_string!r}: block type c{conv_type} is unknown; valid: {valid}.'
        )
    args = BlockArgs(
        num_repeat=_parse_int(options['r'], 'r', block_string),
        kernel_size=_parse_int(options['k'], 'k', block_string),
        strides=strides,
        expand_ratio=_parse_int(options['e'], 'e', block_string),
        input_filters=_parse_int(options['i'], 'i', block_string),
        output_filters=_parse_int(options['o'], 'o', block_string),
        se_ratio=se_ratio,
        conv_type=conv_type,
    )
    for name in (
        'num_repeat',
        'kernel_size',
        'strides',
        'expand_ratio',
        'input_filters',
        'output_filters',
    ):
        if getattr(args, name) < 1:
            raise ValueError(
                f'Block string {block_string!r}: {name} must be >= 1, got {getattr(args, name)}.'
            )
    return args


def encode(args):
    """Writes `BlockArgs` back as a canonical block string."""
    parts = [
        f'r{int(args.num_repeat)}',
        f'k{int(args.kernel_size)}',
        f's{int(args.strides)}',
        f'e{int(args.expand_ratio)}',
        f'i{int(args.input_filters)}',
        f'o{int(args.output_filters)}',
    ]
    if args.se_ratio is not None:
        parts.append(f'se{args.se_ratio:g}')
    if args.conv_type:
        parts.append(f'c{int(args.conv_type)}')
    return '_'.join(parts)


def decode_list(block_strings):
    """Decodes a list of stage strings and checks that each stage's input is the last output."""
    if isinstance(block_strings, str) or not block_strings:
        raise ValueError(f'Expected a non-empty list of block strings. Received: {block_strings!r}')
    stages = [decode(s) for s in block_strings]
    for prev, (cur, text) in zip(stages, zip(stages[1:], block_strings[1:])):
        if cur.input_filters != prev.output_filters:
            raise ValueError(
                f'Block string {text!r}: input channels i{cur.input_filters} do not match the '
                f"previous stage's output o{prev.output_filters}."
            )
    return stages


def round_filters(filters, width_coefficient, divisor=8, min_depth=8, ten_percent_rule=False):
    """Scales a channel count by the width coefficient and rounds it to the divisor.

    `ten_percent_rule` is the V1 code's (and keras' V1) extra step: if rounding lost more than
    10% of the scaled width, add one divisor. The V2 code omits it; it changes only V1-B3.
    """
    if not width_coefficient:
        return filters
    scaled = filters * width_coefficient
    rounded = max(min_depth or divisor, int(scaled + divisor / 2) // divisor * divisor)
    if ten_percent_rule and rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats, depth_coefficient):
    """Scales a stage's repeat count by the depth coefficient, rounding up."""
    if not depth_coefficient:
        return repeats
    return int(math.ceil(depth_coefficient * repeats))


def scale_stages(
    stages, width_coefficient, depth_coefficient, divisor=8, min_depth=8, ten_percent_rule=False
):
    """Applies width and depth scaling to decoded stages."""

    def width(f):
        return round_filters(f, width_coefficient, divisor, min_depth, ten_percent_rule)

    return [
        s.replace(
            input_filters=width(s.input_filters),
            output_filters=width(s.output_filters),
            num_repeat=round_repeats(s.num_repeat, depth_coefficient),
        )
        for s in stages
    ]
