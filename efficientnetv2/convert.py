"""Converts keras.applications EfficientNet / EfficientNetV2 models into this package's models.

    import keras
    from efficientnetv2 import convert

    source = keras.applications.EfficientNetV2S(weights='imagenet')
    model = convert.from_keras_applications(source)       # logits, any input size
    preprocess = convert.keras_preprocessing(source)      # what `source` did to its input
    logits = model(preprocess(images_0_255), training=False)

Supported sources: `EfficientNetB0` ... `B7` and `EfficientNetV2B0` ... `B3`, `S`, `M`, `L`,
built with any `weights`, `include_top`, `pooling`, input shape and `include_preprocessing`.
The variant is recognised from the layer structure (stem and head widths, repeats and widths of
every stage, depthwise layer naming), so a renamed model converts too.

Input scaling. keras.applications models take raw RGB pixels in [0, 255] and scale them inside
the model; this package's models take already-scaled images. `keras_preprocessing(source)`
returns the exact per-channel affine map of the source's `Rescaling` / `Normalization` layers:

- V2-S/M/L: `(x - 128) / 128` (the official V2 scaling).
- V2-B0...B3: `x / 255`, then ImageNet mean/std `(x - mean) / std`.
- V1 with `weights='imagenet'`: `x / 255`, then a `Normalization` whose stored "variance" holds
  the std, then keras' extra `Rescaling(1 / sqrt(std))`; net `(x / 255 - mean) / std`.
- V1 with `weights=None` (or a weights file): the `Normalization` layer is not adapted (mean 0,
  variance 1), so the net map is just `x / 255`.
- `include_preprocessing=False` (V2): identity; the model was fed pre-scaled images.

Other differences, none of which changes inference outputs:

- keras' classifier applies softmax by default; the converted model returns logits unless
  `classifier_activation='softmax'` is passed.
- keras V1 pads stride-2 convolutions explicitly (`ZeroPadding2D` + 'valid', computed from the
  static input size, assuming even sizes when unknown); this package uses 'same'. Both agree for
  even image sizes; for odd sizes keras' model with unknown input size differs from 'same'.
- Training-only regularisation keeps this package's (official) values: head dropout per variant
  (keras V2 uses 0.2 for all) and stochastic depth as specified by the official code.
"""

import dataclasses
import re

from absl import logging
import keras
import numpy as np

from efficientnetv2 import _copier
from efficientnetv2 import architectures
from efficientnetv2 import blocks as blocks_lib
from efficientnetv2 import layers as layers_lib
from efficientnetv2 import model as model_lib

_BLOCK_LAYER = re.compile(r'^block(\d+)([a-z])_([a-z0-9_]+)$')

# keras.applications layer suffix -> attribute path inside this package's block layers.
_BLOCK_PARTS = {
    'expand_conv': ('expand_conv',),
    'expand_bn': ('expand_bn',),
    'dwconv': ('dwconv',),  # V1.
    'dwconv2': ('dwconv',),  # V2.
    'bn': ('bn',),
    'se_reduce': ('se', 'reduce'),
    'se_expand': ('se', 'expand'),
    'project_conv': ('project_conv',),
    'project_bn': ('project_bn',),
}

# keras.applications top-level layer -> (layer of this package, attribute path inside it).
_TOP_LEVEL_PARTS = {
    'stem_conv': ('stem', ('conv',)),
    'stem_bn': ('stem', ('bn',)),
    'top_conv': ('top', ('conv',)),
    'top_bn': ('top', ('bn',)),
    'predictions': ('predictions', ()),
}

_CLASSIFIER = 'predictions'


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """The structure that identifies a variant.

    Attributes:
        family: 'v1' or 'v2'.
        stem_filters: width of the stem convolution.
        head_filters: width of the 1x1 head convolution.
        stages: one (repeats, output_filters) pair per stage.
    """

    family: str
    stem_filters: int
    head_filters: int
    stages: tuple


@dataclasses.dataclass(frozen=True)
class InputScaling:
    """The per-channel affine map `images * scale + offset` a keras model applied to its input.

    Calling the object applies the map (in float32) to RGB images laid out as `data_format`.

    Attributes:
        scale: per-channel multiplier (3 values for RGB).
        offset: per-channel offset.
        steps: human-readable description of every source layer folded into the map.
        data_format: 'channels_last' or 'channels_first'.
    """

    scale: tuple
    offset: tuple
    steps: tuple
    data_format: str = 'channels_last'

    @property
    def is_identity(self):
        return not self.steps

    def describe(self):
        """One line: what the keras model did to its input and the net per-channel map."""
        if self.is_identity:
            return (
                'identity: the keras model had no input scaling; feed the converted model '
                'what the keras model was fed'
            )
        return '{}; net: x * {} + {}'.format(
            ' -> '.join(self.steps), _fmt(self.scale), _fmt(self.offset)
        )

    def __call__(self, images):
        images = keras.ops.cast(images, 'float32')
        if self.is_identity:
            return images
        shape = (-1, 1, 1) if self.data_format == 'channels_first' else (-1,)
        scale = np.asarray(self.scale, np.float32).reshape(shape)
        offset = np.asarray(self.offset, np.float32).reshape(shape)
        return images * scale + offset


def _fmt(values):
    return '[{}]'.format(', '.join(f'{v:.6g}' for v in values))


def _source_layers(source_model):
    if not isinstance(source_model, keras.Model):
        raise ValueError(
            'source_model must be a keras.Model built by keras.applications '
            f'EfficientNet or EfficientNetV2. Received: {source_model!r}'
        )
    by_name = {layer.name: layer for layer in source_model.layers}
    missing = [
        name for name in ('stem_conv', 'stem_bn', 'top_conv', 'top_bn') if name not in by_name
    ]
    if missing:
        raise ValueError(
            'source_model must be a keras.applications EfficientNet (B0-B7) or EfficientNetV2 '
            '(B0-B3, S, M, L) model; model {!r} has no layer(s) {}.'.format(
                source_model.name, ', '.join(missing)
            )
        )
    return by_name


def _kernel_shape(layer):
    return tuple(layer.kernel.shape)


def source_fingerprint(source_model):
    """Reads the identifying structure of a keras.applications EfficientNet model.

    Raises:
        ValueError: the model is not a keras.applications EfficientNet / EfficientNetV2.
    """
    by_name = _source_layers(source_model)
    families = set()
    stage_blocks = {}
    for name, layer in by_name.items():
        match = _BLOCK_LAYER.match(name)
        if not match:
            continue
        stage, letter, part = int(match.group(1)), match.group(2), match.group(3)
        if part in ('dwconv', 'dwconv2'):
            families.add('v1' if part == 'dwconv' else 'v2')
        if part == 'project_conv':
            stage_blocks.setdefault(stage, {})[letter] = _kernel_shape(layer)[-1]
    if len(families) != 1 or not stage_blocks:
        raise ValueError(
            f'source_model {source_model.name!r} does not have the block layout of a '
            'keras.applications EfficientNet: expected block<stage><letter>_dwconv (V1) or '
            '_dwconv2 (V2) layers.'
        )
    if sorted(stage_blocks) != list(range(1, len(stage_blocks) + 1)):
        raise ValueError(
            f'source_model {source_model.name!r}: block stages must run 1..N; '
            f'found {sorted(stage_blocks)}.'
        )
    stages = []
    for stage in sorted(stage_blocks):
        letters = sorted(stage_blocks[stage])
        expected = [chr(ord('a') + i) for i in range(len(letters))]
        if letters != expected:
            raise ValueError(
                f'source_model {source_model.name!r}: stage {stage} has blocks {letters}, '
                f'expected {expected}.'
            )
        stages.append((len(letters), stage_blocks[stage][letters[-1]]))
    return Fingerprint(
        family=families.pop(),
        stem_filters=_kernel_shape(by_name['stem_conv'])[-1],
        head_filters=_kernel_shape(by_name['top_conv'])[-1],
        stages=tuple(stages),
    )


def variant_fingerprint(variant):
    """The structure `source_fingerprint` would read from `variant` built by keras."""
    rule = variant.is_v1

    def width(filters):
        return blocks_lib.round_filters(filters, variant.width_coefficient, ten_percent_rule=rule)

    base = blocks_lib.decode_list(list(variant.blocks))
    stages = blocks_lib.scale_stages(
        base, variant.width_coefficient, variant.depth_coefficient, ten_percent_rule=rule
    )
    return Fingerprint(
        family=variant.family,
        stem_filters=width(base[0].input_filters),
        head_filters=width(model_lib.DEFAULT_MODEL_HPARAMS['feature_size']),
        stages=tuple((s.num_repeat, s.output_filters) for s in stages),
    )


def _normalised(name):
    return re.sub(r'[^a-z0-9]', '', name.lower())


def identify_variant(source_model):
    """Names the variant of a keras.applications model, e.g. 'efficientnetv2-s'.

    The layer structure decides; the model name (keras uses 'efficientnetv2-s',
    'efficientnetb0', ...) is only cross-checked, so renamed models are recognised.

    Raises:
        ValueError: not an EfficientNet, or a structure matching no supported variant.
    """
    fingerprint = source_fingerprint(source_model)
    candidates = [v for v in architectures.VARIANTS.values() if v.keras_name]
    matches = [v.name for v in candidates if variant_fingerprint(v) == fingerprint]
    if not matches:
        raise ValueError(
            'source_model {!r} matches no supported variant ({}). Its structure: {}.'.format(
                source_model.name, ', '.join(v.name for v in candidates), fingerprint
            )
        )
    if len(matches) > 1:  # Cannot happen for the published variants; guards future tables.
        raise ValueError(
            'source_model {!r} matches several variants: {}.'.format(
                source_model.name, ', '.join(matches)
            )
        )
    name = matches[0]
    by_name = [
        v.name
        for v in candidates
        if _normalised(source_model.name) in (_normalised(v.name), _normalised(v.keras_name))
    ]
    if by_name and by_name[0] != name:
        logging.warning(
            'Model %r is named like %s but its structure is %s; using %s.',
            source_model.name,
            by_name[0],
            name,
            name,
        )
    return name


def _values(value):
    """A float64 vector from a python number, list, tensor or keras variable."""
    if isinstance(value, keras.Variable):
        value = value.numpy()
    return np.asarray(keras.ops.convert_to_numpy(value), np.float64).reshape(-1)


def keras_preprocessing(source_model):
    """The input scaling built into a keras.applications model, as an `InputScaling`.

    Reads the source's own `Rescaling` and `Normalization` layers (in graph order, before the
    stem), so every case is reproduced as keras computes it, including V1's extra
    `Rescaling(1 / sqrt(std))` with `weights='imagenet'` and the unadapted (identity)
    `Normalization` with `weights=None`. Feed `scaling(images)` to the converted model where
    the keras model was fed `images`.

    Raises:
        ValueError: not a keras.applications EfficientNet, or an unsupported input layer.
    """
    by_name = _source_layers(source_model)
    data_format = getattr(by_name['stem_conv'], 'data_format', 'channels_last')
    channels = _kernel_shape(by_name['stem_conv'])[2]
    scale = np.ones(channels)
    offset = np.zeros(channels)
    steps = []
    for layer in source_model.layers:
        if layer.name == 'stem_conv':
            break
        if isinstance(layer, keras.layers.Rescaling):
            s = np.broadcast_to(_values(layer.scale), (channels,))
            o = np.broadcast_to(_values(layer.offset), (channels,))
            scale, offset = scale * s, offset * s + o
            steps.append(f'Rescaling(scale={_fmt(np.unique(s))}, offset={_fmt(np.unique(o))})')
        elif isinstance(layer, keras.layers.Normalization):
            if layer.invert:
                raise ValueError(
                    f'source_model layer {layer.name!r}: an inverted Normalization is not '
                    'supported.'
                )
            mean = np.broadcast_to(_values(layer.mean), (channels,))
            variance = np.broadcast_to(_values(layer.variance), (channels,))
            denominator = np.maximum(np.sqrt(variance), keras.config.epsilon())
            scale, offset = scale / denominator, (offset - mean) / denominator
            steps.append(f'Normalization(mean={_fmt(mean)}, variance={_fmt(variance)})')
    return InputScaling(
        scale=tuple(float(v) for v in scale),
        offset=tuple(float(v) for v in offset),
        steps=tuple(steps),
        data_format=data_format,
    )


def _is_preprocessing(layer):
    return isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization))


def _source_options(by_name):
    """Build arguments that reproduce the source: top, classes, pooling, BN and input layout."""
    stem_conv, stem_bn = by_name['stem_conv'], by_name['stem_bn']
    data_format = getattr(stem_conv, 'data_format', 'channels_last')
    channels = _kernel_shape(stem_conv)[2]
    has_top = _CLASSIFIER in by_name
    num_classes = by_name[_CLASSIFIER].units if has_top else None
    pooling = None  # A headless source's pooling; a classifier's own pooling is not copied.
    if not has_top:
        pooling = 'avg' if 'avg_pool' in by_name else 'max' if 'max_pool' in by_name else None
    options = dict(
        bn_momentum=float(stem_bn.momentum),
        bn_epsilon=float(stem_bn.epsilon),
        data_format=data_format,
        pooling=pooling,
        input_shape=(channels, None, None)
        if data_format == 'channels_first'
        else (None, None, channels),
    )
    return has_top, num_classes, options


def from_keras_applications(source_model, include_top=None, num_classes=None, **overrides):
    """Builds this package's model for a keras.applications EfficientNet and copies its weights.

    Every weight of the source (except its input-scaling `Normalization` state, see
    `keras_preprocessing`) is copied by explicit name: `stem_conv`/`stem_bn` -> `stem`,
    `block{s}{l}_{expand_conv, expand_bn, dwconv|dwconv2, bn, se_reduce, se_expand,
    project_conv, project_bn}` -> the same parts of block `block{s}{l}`, `top_conv`/`top_bn`
    -> `top`, `predictions` -> `predictions`. Shapes are checked, and every variable of the
    new model must receive a value.

    The converted model takes scaled images (see `keras_preprocessing`), accepts any input
    size (unless `input_shape` is given) and returns logits (unless
    `classifier_activation='softmax'`).

    Args:
        source_model: a keras.applications EfficientNetB0-B7 or EfficientNetV2B0-B3/S/M/L
            model, with any weights, include_top, pooling and input shape.
        include_top: build the classifier; default: as the source. True needs a source with a
            classifier.
        num_classes: classifier width; default: the source's. Another width leaves the
            classifier randomly initialised (logged) and copies everything else.
        **overrides: forwarded to `efficientnetv2.model.build_model` (e.g. `input_shape`, `pooling`,
            `classifier_activation`, `dropout_rate`, `survival_prob`). By default pooling,
            BN momentum/epsilon, data format and input channels follow the source.

    Returns:
        An `efficientnetv2.EfficientNet` holding the source's weights.

    Raises:
        ValueError: the source is not a supported EfficientNet, `include_top=True` without a
            source classifier, or any weight that cannot be matched (names listed).
    """
    by_name = _source_layers(source_model)
    name = identify_variant(source_model)
    has_top, source_classes, options = _source_options(by_name)
    if include_top is None:
        include_top = has_top
    if include_top and not has_top:
        raise ValueError(
            f'include_top=True needs a source model with a classifier; {source_model.name!r} was '
            f'built with include_top=False. Received: include_top={include_top!r}'
        )
    if num_classes is None:
        num_classes = source_classes or 1000
    options.update(overrides)
    model = model_lib.build_model(name, include_top=include_top, num_classes=num_classes, **options)
    copy_classifier = include_top and num_classes == source_classes
    if include_top and not copy_classifier:
        logging.warning(
            'num_classes=%d differs from the source classifier (%d classes); '
            'the classifier stays randomly initialised.',
            num_classes,
            source_classes,
        )
    entries, problems = weight_map(source_model, model, copy_classifier=copy_classifier)
    _copier.copy_entries(
        entries, model, f'keras.applications model {source_model.name!r}', problems
    )
    logging.info(
        'Converted %r to %s. Input the converted model expects: %s.',
        source_model.name,
        name,
        keras_preprocessing(source_model).describe(),
    )
    return model


def _blocks_by_position(model):
    """{(stage, repeat index): block layer} of this package's model (stages count from 1)."""
    positions = [
        (stage_id, repeat)
        for stage_id, stage in enumerate(model.stages, start=1)
        for repeat in range(stage.num_repeat)
    ]
    blocks = [
        layer
        for layer in model.layers
        if isinstance(layer, (layers_lib.MBConvBlock, layers_lib.FusedMBConvBlock))
    ]
    if len(blocks) != len(positions):
        raise ValueError(
            f'target model {model.name!r} has {len(blocks)} blocks but its stage table lists '
            f'{len(positions)}.'
        )
    return dict(zip(positions, blocks))


def _resolve(root, path, source_name):
    target = root
    for attribute in path:
        target = getattr(target, attribute, None)
        if target is None:
            raise ValueError(
                'source layer {!r} has no counterpart: {!r} has no {!r}.'.format(
                    source_name, root.name, '.'.join(path)
                )
            )
    return target


def _target_layer(model, blocks, source_name):
    """The layer of `model` receiving the weights of the keras layer `source_name`."""
    if source_name in _TOP_LEVEL_PARTS:
        layer_name, path = _TOP_LEVEL_PARTS[source_name]
        try:
            root = model.get_layer(layer_name)
        except ValueError:
            raise ValueError(
                f'source layer {source_name!r} has no counterpart: the target model has no '
                f'layer {layer_name!r}.'
            ) from None
        return _resolve(root, path, source_name)
    match = _BLOCK_LAYER.match(source_name)
    if not match or match.group(3) not in _BLOCK_PARTS:
        raise ValueError(
            f'source layer {source_name!r} is not part of a keras.applications EfficientNet.'
        )
    position = (int(match.group(1)), ord(match.group(2)) - ord('a'))
    if position not in blocks:
        raise ValueError(
            f'source layer {source_name!r} has no counterpart block (stage {position[0]}, '
            f'repeat {position[1]}).'
        )
    return _resolve(blocks[position], _BLOCK_PARTS[match.group(3)], source_name)


def _layer_entries(source, target):
    """`Entry`s pairing the variables of keras layer `source` with those of `target` by name."""
    source_vars = {v.name: v for v in source.weights}
    target_vars = {v.name: v for v in target.weights}
    if set(source_vars) != set(target_vars):
        raise ValueError(
            f'layer {source.name!r}: variables {sorted(source_vars)} do not match the target '
            f'{target.path!r} variables {sorted(target_vars)}.'
        )
    return [
        _copier.Entry(
            source_var.path, target_vars[var_name], tuple(source_var.shape), source_var.numpy
        )
        for var_name, source_var in source_vars.items()
    ]


def weight_map(source_model, model, copy_classifier=True):
    """Pairs every weight of a keras.applications EfficientNet with a variable of `model`.

    Nothing is assigned here: the pairs go to the package's one copier, which checks every
    shape before it assigns anything.

    Args:
        source_model: the keras.applications model.
        model: an `EfficientNet` of the same variant (e.g. from `from_keras_applications`).
        copy_classifier: map `predictions` (else it is skipped on both sides).

    Returns:
        (entries, problems): `_copier.Entry` tuples, and one line per source layer without a
        counterpart and per variable of `model` that would receive no value.
    """
    blocks = _blocks_by_position(model)
    entries, problems = [], []
    for layer in source_model.layers:
        if not layer.weights or _is_preprocessing(layer):
            continue
        if layer.name == _CLASSIFIER and not copy_classifier:
            continue
        try:
            entries += _layer_entries(layer, _target_layer(model, blocks, layer.name))
        except ValueError as error:
            problems.append(str(error))
    skipped = set()
    if getattr(model, 'include_top', False) and not copy_classifier:
        skipped = {id(v) for v in model.get_layer(_CLASSIFIER).weights}
    assigned = {id(entry.variable) for entry in entries}
    problems += [
        f'variable {v.path!r} of the target receives no value'
        for v in model.weights
        if id(v) not in assigned and id(v) not in skipped
    ]
    return entries, problems
