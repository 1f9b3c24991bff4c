"""Loading weights into an `EfficientNet`: every format the project reads.

`load_weights(model, weights)` accepts:

- a `.keras` file (a whole saved model; its weights are copied by variable path, or by
  `convert`'s name map when it is a keras.applications EfficientNet),
- a `.weights.h5` file (Keras weights of the same architecture),
- a TensorFlow checkpoint prefix or a directory holding checkpoints, either
  - an **official** TF1 name-based checkpoint of google/automl `efficientnetv2` or
    tensorflow/tpu `efficientnet` (variables like `efficientnetv2-s/blocks_3/conv2d/kernel`), or
  - this project's object-based training checkpoint (`tf.train.Checkpoint(model=...)`),
- `'imagenet'`: keras.applications' ImageNet weights, converted (needs internet once).

`.keras`, `.weights.h5` and 'imagenet' load on every Keras backend; TF checkpoints (official or
this project's) need TensorFlow and raise an ImportError saying so without it.

Whatever the format, a classifier of another width (or a model without one) skips the head and
loads everything else. Any other mismatch (a missing or unused tensor, a wrong shape, a
checkpoint of another model) raises one `ValueError` naming the file and the tensor, and the
model is left untouched, unless `skip_mismatch=True`, which loads what fits and logs the rest.

Official checkpoint names (SPEC §8.1) are derived from the model's structure, not from Keras
auto-naming: inside each block, convolutions are `conv2d`, `conv2d_1`, ... and batch norms
`tpu_batch_normalization`, `tpu_batch_normalization_1`, ... in creation order; the depthwise
kernel is `depthwise_conv2d/depthwise_kernel`; SE convs are `se/conv2d` and `se/conv2d_1`;
blocks are `blocks_<n>` with n the global block index; the classifier is `head/dense`.
A `<name>/ExponentialMovingAverage` copy is preferred to the plain variable when both exist
(unless `prefer_ema=False`, e.g. `train.ft_init_ema=False`).

Every format maps its tensors to the model's variables and hands them to one copier
(`efficientnetv2._copier`), which checks every shape before it assigns anything.

`get_model(name, weights=...)` builds a variant (`efficientnetv2.model`) and loads into it; it
is exported as `efficientnetv2.get_model`.
"""

import os
import re

from absl import logging
import keras

from efficientnetv2 import _backend
from efficientnetv2 import _copier
from efficientnetv2 import architectures
from efficientnetv2 import convert
from efficientnetv2 import hparams
from efficientnetv2 import layers as layers_lib
from efficientnetv2 import model as model_lib
from efficientnetv2 import variables as variables_lib

EMA_SUFFIX = '/ExponentialMovingAverage'
# Per-variable extras of a training checkpoint that are not model weights.
_OPTIMIZER_SLOT_RE = re.compile(r'/(RMSProp|Momentum|Adam|Adagrad)(_\d+)?$')
_STEM_KERNEL = '/stem/conv2d/kernel'
_BN_VARIABLES = ('gamma', 'beta', 'moving_mean', 'moving_variance')
_HEAD_PREFIX = 'predictions/'


# ------------------------------------------------------------------------------------------------
# Entry points.


def get_model(
    model_name,
    include_top=True,
    weights=None,
    input_shape=None,
    pooling=None,
    num_classes=model_lib.DEFAULT_MODEL_HPARAMS['num_classes'],
    classifier_activation=None,
    **overrides,
):
    """Builds a published EfficientNet / EfficientNetV2 variant, optionally with weights.

    Args:
        model_name: one of `list_models()`, e.g. 'efficientnetv2-s' or 'efficientnet-b0'.
        include_top: end with the classifier (else features, see `pooling`).
        weights: None (random init); a path to this project's checkpoint, a `.keras` or
            `.weights.h5` file, or an official TF checkpoint (see `load_weights`); or
            'imagenet' to convert keras.applications' ImageNet weights (needs internet the
            first time; V2-S/M/L/B0-B3 and V1-B0-B7).
        input_shape: input shape without batch axis; default any size, 3 channels.
        pooling: None, 'avg' or 'max' when include_top is False.
        num_classes: classifier width (weights of another width skip the classifier).
        classifier_activation: None for logits (default) or 'softmax'.
        **overrides: model hyper-parameters, e.g. dropout_rate=0.3, survival_prob=0.8,
            bn_momentum=0.99, act_fn='relu'.

    Returns:
        An `EfficientNet` keras.Model taking images preprocessed for the variant's family
        (see docs/api.md: V2-S/M/L/XL (x - 128) / 128; V1 and V2-B0..B3 ImageNet mean/std).
    """
    model = model_lib.build_model(
        model_name,
        include_top=include_top,
        input_shape=input_shape,
        pooling=pooling,
        classifier_activation=classifier_activation,
        num_classes=num_classes,
        **overrides,
    )
    return load_weights(model, weights)


def get_feature_extractor(model_name, input_shape=None, weights=None, **overrides):
    """A backbone returning the multi-scale endpoints `reduction_1` .. `reduction_5`."""
    return get_model(
        model_name, include_top=False, input_shape=input_shape, weights=weights, **overrides
    ).feature_extractor()


def load_weights(model, weights, skip_mismatch=False, prefer_ema=True):
    """Loads `weights` into `model` in place.

    Args:
        model: an `EfficientNet` (any head: another `num_classes` or `include_top=False` loads
            everything but the classifier).
        weights: a path (`.keras`, `.weights.h5`, TF checkpoint prefix or directory), or
            'imagenet'. None does nothing.
        skip_mismatch: load what fits and log what does not (missing, unused or mis-shaped
            tensors) instead of raising.
        prefer_ema: for checkpoints (this project's and official ones), use the moving-average
            weights when present; False loads the raw trained variables.

    Returns:
        The model.

    Raises:
        ValueError: the file is missing or unreadable, holds another model, or a tensor does
            not fit; the message names the file and the first offending tensor. Nothing is
            loaded in that case.
    """
    if weights is None:
        return model
    if isinstance(weights, str) and weights.strip().lower() == 'imagenet':
        _load_imagenet(model, skip_mismatch)
        return model
    try:
        path = os.fspath(weights)
    except TypeError:
        raise ValueError(
            "weights must be None, 'imagenet' or a path to a .keras, .weights.h5 or "
            f'TF checkpoint. Received: weights={weights!r}'
        ) from None
    if path.endswith('.keras'):
        _require_file(path)
        _load_keras_file(model, path, skip_mismatch)
    elif path.endswith('.h5'):
        _require_file(path)
        _load_h5(model, path, skip_mismatch)
    else:
        prefix = resolve_checkpoint(path)
        if is_official_checkpoint(prefix):
            load_official_checkpoint(
                model, prefix, skip_mismatch=skip_mismatch, prefer_ema=prefer_ema
            )
        else:
            _load_project_checkpoint(
                model, prefix, prefer_ema=prefer_ema, skip_mismatch=skip_mismatch
            )
            logging.info('Loaded project checkpoint %s.', prefix)
    return model


def _require_file(path):
    if not os.path.isfile(path):
        raise ValueError(
            f'weights must name an existing file. Received: weights={path!r} (no such file).'
        )


def resolve_checkpoint(path):
    """Turns a checkpoint directory or prefix into a prefix that `tf.train` can read.

    A directory resolves to its latest checkpoint (the `checkpoint` state file), else to the only
    `*.index` file in it (official archives ship `model.ckpt.*` without a state file).

    Raises:
        ValueError: nothing readable at `path` (or several candidates in a directory).
    """
    if os.path.isdir(path):
        tf = _tensorflow()
        latest = tf.train.latest_checkpoint(path)
        if latest:
            return latest
        indexes = sorted(f[: -len('.index')] for f in os.listdir(path) if f.endswith('.index'))
        if len(indexes) == 1:
            return os.path.join(path, indexes[0])
        if os.path.exists(os.path.join(path, 'saved_model.pb')):
            raise ValueError(
                f'weights={path!r} is a SavedModel directory, not weights; load it with '
                'tf.saved_model.load.'
            )
        raise ValueError(
            'weights={!r} is a directory without a unique checkpoint (found {}). Pass '
            'a checkpoint prefix such as {!r}.'.format(
                path, indexes or 'none', os.path.join(path, 'model.ckpt')
            )
        )
    if path.endswith('.index') and os.path.isfile(path):
        path = path[: -len('.index')]
    if os.path.isfile(path + '.index'):
        return path
    raise ValueError(
        'weights must be an existing .keras / .weights.h5 file, checkpoint prefix or '
        f'checkpoint directory. Received: weights={path!r} (no such file).'
    )


# ------------------------------------------------------------------------------------------------
# This project's object-based checkpoints.


def _load_project_checkpoint(model, path, prefer_ema=True, skip_mismatch=False):
    """Restores this project's training checkpoint, preferring its EMA weights.

    Training checkpoints are `tf.train.Checkpoint(model=..., optimizer=..., ema=..., step=...)`
    (see `efficientnetv2.train.trainer`). The network is rebuilt as the checkpoint's run
    built it (from `config.yaml` beside the checkpoint when present, else like `model` with
    a full head) and restored; with `prefer_ema`, the EMA shadows (`ema/shadow_variables/<i>`,
    one per `variables.ema_variables` entry, in that order) replace the averaged variables.
    Its weights then go to `model` by variable path: a classifier of another width (or none)
    is skipped, everything else must fit.

    Raises:
        ValueError: the checkpoint does not hold this architecture, naming the file.
    """
    tf = _tensorflow()
    if not _backend.is_tensorflow():
        raise RuntimeError(
            f'Checkpoint {path!r} is a training checkpoint (tf.train.Checkpoint): it restores into '
            f'Keras variables of the TensorFlow backend only (this is {_backend.name()}). Load it '
            'once with KERAS_BACKEND=tensorflow and save model.save_weights(...weights.h5) or '
            'model.save(...keras), which load on every backend.'
        )
    source = _source_model_for(model, path)
    keys = [name for name, _ in tf.train.list_variables(path)]
    has_ema = any(key.startswith('ema/') for key in keys)
    tracked = dict(model=source)
    averaged = shadows = None
    if prefer_ema and has_ema:
        averaged = variables_lib.ema_variables(source)
        # The layout `train.ema.ExponentialMovingAverage` saves: a module whose tracked list
        # `shadow_variables` holds one shadow per averaged variable.
        shadows = tf.Module(name='ema')
        shadows.shadow_variables = [
            tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False) for v in averaged
        ]
        tracked['ema'] = shadows
    try:
        status = tf.train.Checkpoint(**tracked).read(path)
        status.expect_partial()
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        raise ValueError(
            f'Cannot load checkpoint {path!r} into model {_copier.model_label(model)!r} '
            f'(a checkpoint of another model or head?): {_first_line(error)}'
        ) from None
    if shadows is not None:
        for variable, shadow in zip(averaged, shadows.shadow_variables):
            variable.assign(shadow)  # `source` is scratch: nothing to roll back.
    _copy_by_path(
        source,
        model,
        origin='checkpoint {}{}'.format(path, ' (EMA)' if shadows else ''),
        skip_mismatch=skip_mismatch,
    )


def _source_model_for(model, path):
    """The network a project checkpoint was trained as (its config.yaml), with a full head."""
    config_path = os.path.join(os.path.dirname(path), 'config.yaml')
    known = set(model_lib.DEFAULT_MODEL_HPARAMS)
    if _tensorflow().io.gfile.exists(config_path):
        args = dict(hparams.load_yaml(config_path).get('model', {}))
    else:
        args = {k: v for k, v in model.get_config().items() if k in known}
        if not model.include_top:
            args.pop('num_classes', None)
    args = {k: v for k, v in args.items() if k in known}
    args.update(include_top=True, sync_bn=False)
    return model_lib.EfficientNet(**args)


# ------------------------------------------------------------------------------------------------
# Official TF1 name-based checkpoints (SPEC §8).


def is_official_checkpoint(prefix):
    """Whether the checkpoint at `prefix` has official TF1 names (`<model>/stem/conv2d/...`)."""
    return any(n.endswith(_STEM_KERNEL) for n in _checkpoint_reader(prefix)[1])


def _checkpoint_reader(prefix):
    """(reader, {name: shape}) of a TF checkpoint; unreadable files raise ValueError."""
    tf = _tensorflow()
    try:
        reader = tf.train.load_checkpoint(prefix)
        return reader, reader.get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError) as error:
        raise ValueError(f'Cannot read checkpoint {prefix!r}: {_first_line(error)}') from None


def _tensorflow():
    return _backend.tensorflow('Reading TensorFlow checkpoints (official or training ones)')


def _numbered(base, index):
    return base if index == 0 else f'{base}_{index}'


class _ScopeNames:
    """Hands out `conv2d`, `conv2d_1`, ... and `tpu_batch_normalization`, ... in creation order."""

    def __init__(self):
        self.convs = 0
        self.norms = 0

    def conv(self):
        self.convs += 1
        return _numbered('conv2d', self.convs - 1)

    def norm(self):
        self.norms += 1
        return _numbered('tpu_batch_normalization', self.norms - 1)


def _conv_entries(scope, conv, with_bias=False):
    entries = [(scope + '/kernel', conv.kernel)]
    if with_bias:
        entries.append((scope + '/bias', conv.bias))
    return entries


def _norm_entries(scope, norm):
    return [(f'{scope}/{attr}', getattr(norm, attr)) for attr in _BN_VARIABLES]


def _block_entries(scope, block):
    """Official names of one MBConv / Fused-MBConv block, in the official creation order."""
    names = _ScopeNames()
    entries = []
    if block.expand_conv is not None:
        entries += _conv_entries(f'{scope}/{names.conv()}', block.expand_conv)
        entries += _norm_entries(f'{scope}/{names.norm()}', block.expand_bn)
    if isinstance(block, layers_lib.MBConvBlock):
        entries.append((scope + '/depthwise_conv2d/depthwise_kernel', block.dwconv.kernel))
        entries += _norm_entries(f'{scope}/{names.norm()}', block.bn)
    if block.se is not None:
        entries += _conv_entries(scope + '/se/conv2d', block.se.reduce, with_bias=True)
        entries += _conv_entries(scope + '/se/conv2d_1', block.se.expand, with_bias=True)
    entries += _conv_entries(f'{scope}/{names.conv()}', block.project_conv)
    entries += _norm_entries(f'{scope}/{names.norm()}', block.project_bn)
    return entries


def _blocks(model):
    blocks = [
        layer
        for layer in model.layers
        if isinstance(layer, (layers_lib.MBConvBlock, layers_lib.FusedMBConvBlock))
    ]
    stages = getattr(model, 'stages', None)
    if stages is not None and len(blocks) != sum(s.num_repeat for s in stages):
        raise ValueError(
            f'Model {_copier.model_label(model)!r} has {len(blocks)} blocks but its stages list '
            f'{sum(s.num_repeat for s in stages)}; cannot map names.'
        )
    return blocks


def official_variable_map(model, scope):
    """Maps official TF1 variable names to the model's variables.

    Args:
        model: an `EfficientNet`.
        scope: the checkpoint's top-level scope, e.g. 'efficientnetv2-s'.

    Returns:
        A list of `(name, variable, is_head)` in the official creation order; `is_head` marks
        the classifier (`<scope>/head/dense/*`), present only if the model has one.
    """
    stem = model.get_layer('stem')
    entries = [
        (n, v, False)
        for n, v in _conv_entries(scope + '/stem/conv2d', stem.conv)
        + _norm_entries(scope + '/stem/tpu_batch_normalization', stem.bn)
    ]
    for index, block in enumerate(_blocks(model)):
        block_scope = f'{scope}/blocks_{index}'
        entries += [(n, v, False) for n, v in _block_entries(block_scope, block)]
    top = model.get_layer('top')
    entries += [
        (n, v, False)
        for n, v in _conv_entries(scope + '/head/conv2d', top.conv)
        + _norm_entries(scope + '/head/tpu_batch_normalization', top.bn)
    ]
    if getattr(model, 'include_top', False):
        dense = model.get_layer('predictions')
        entries += [
            (scope + '/head/dense/kernel', dense.kernel, True),
            (scope + '/head/dense/bias', dense.bias, True),
        ]
    return entries


def _checkpoint_scope(shapes, path):
    scopes = sorted({n[: -len(_STEM_KERNEL)] for n in shapes if n.endswith(_STEM_KERNEL)})
    if len(scopes) != 1:
        raise ValueError(
            'Checkpoint {!r}: expected one model scope with {!r}, found {}.'.format(
                path, _STEM_KERNEL.lstrip('/'), scopes or 'none'
            )
        )
    return scopes[0]


def load_official_checkpoint(model, path, skip_mismatch=False, prefer_ema=True):
    """Loads an official google/automl or tensorflow/tpu EfficientNet(V2) TF1 checkpoint.

    Every body tensor must be present with the right shape, and every model tensor of the
    checkpoint (optimizer slots and variables outside the model scope, like `global_step`,
    aside) must be used. With `prefer_ema`, EMA copies are preferred per tensor. The classifier
    is skipped when the model has none, when its width differs, or when the checkpoint has none.

    Args:
        model: an `EfficientNet` built with the checkpoint's architecture.
        path: checkpoint prefix (or directory).
        skip_mismatch: load what fits, log the rest, instead of raising.
        prefer_ema: take `<name>/ExponentialMovingAverage` where present (the official
            evaluation weights); False takes the raw trained variables.

    Returns:
        A dict with counts: 'loaded', 'from_ema', 'skipped' (names), 'head_loaded'.

    Raises:
        ValueError: see `load_weights`; nothing is assigned when it raises.
    """
    prefix = resolve_checkpoint(os.fspath(path))
    reader, shapes = _checkpoint_reader(prefix)
    scope = _checkpoint_scope(shapes, prefix)
    origin = f'official checkpoint {prefix!r}'
    problems = []
    model_name = getattr(model, 'model_name', None)
    if model_name and model_name != scope:
        problems.append(f'the checkpoint holds model {scope!r} but the model is {model_name!r}')
        if not skip_mismatch:
            raise ValueError(
                f'Cannot load official checkpoint {prefix!r} into model {model_name!r}: '
                f'{problems[0]}.'
            )

    variable_map = official_variable_map(model, scope)
    head_loaded = _head_fits(variable_map, shapes, prefix, scope, prefer_ema)
    entries, used = [], set()
    for name, variable, is_head in variable_map:
        if is_head and not head_loaded:
            continue
        source = _source_name(name, shapes, prefer_ema)
        if source not in shapes:
            problems.append(f'tensor {name!r} is missing')
            continue
        used.add(name)
        entries.append(
            _copier.Entry(
                source, variable, shapes[source], lambda source=source: reader.get_tensor(source)
            )
        )
    problems += [
        f'tensor {n!r} is not used by the model'
        for n in _unused_names(shapes, scope, used, head_skipped=not head_loaded)
    ]
    loaded, problems = _copier.copy_entries(entries, model, origin, problems, skip_mismatch)
    from_ema = sum(name.endswith(EMA_SUFFIX) for name in loaded)
    logging.info(
        'Loaded %d tensors (%d from ExponentialMovingAverage) from official checkpoint '
        '%s (scope %r); classifier %s.',
        len(loaded),
        from_ema,
        prefix,
        scope,
        'loaded' if head_loaded else 'skipped',
    )
    return dict(loaded=len(loaded), from_ema=from_ema, skipped=problems, head_loaded=head_loaded)


def _source_name(name, shapes, prefer_ema):
    """The checkpoint tensor to read for `name`: its EMA copy when preferred and present."""
    if prefer_ema and name + EMA_SUFFIX in shapes:
        return name + EMA_SUFFIX
    if name not in shapes and name + EMA_SUFFIX in shapes:
        return name + EMA_SUFFIX  # Only the average was saved (an eval-only export).
    return name


def _head_fits(entries, shapes, prefix, scope, prefer_ema):
    """Whether the classifier loads: the model has one, and the checkpoint's has its width."""
    head = {n: v for n, v, is_head in entries if is_head}
    kernel_name = scope + '/head/dense/kernel'
    if kernel_name not in head:
        return False
    if kernel_name not in shapes and kernel_name + EMA_SUFFIX not in shapes:
        logging.warning(
            'Checkpoint %s has no classifier; the head keeps its initial values.', prefix
        )
        return False
    ckpt_classes = shapes[_source_name(kernel_name, shapes, prefer_ema)][-1]
    model_classes = head[kernel_name].shape[-1]
    if ckpt_classes != model_classes:
        logging.info(
            'Checkpoint %s has %d classes, the model %d: classifier skipped.',
            prefix,
            ckpt_classes,
            model_classes,
        )
        return False
    return True


def _unused_names(shapes, scope, used, head_skipped):
    """Model tensors of the checkpoint that no model variable took."""
    unused = []
    for name in sorted(shapes):
        if not name.startswith(scope + '/'):
            continue  # global_step and other non-model state.
        base = name[: -len(EMA_SUFFIX)] if name.endswith(EMA_SUFFIX) else name
        if base in used or _OPTIMIZER_SLOT_RE.search(base):
            continue
        if head_skipped and base.startswith(scope + '/head/dense/'):
            continue
        unused.append(name)
    return unused


# ------------------------------------------------------------------------------------------------
# Keras files and keras.applications.


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _copy_by_path(source, model, origin, skip_mismatch=False):
    """Copies weights from `source` into `model` by Keras variable path (e.g. 'block1a/bn/gamma').

    The classifier (`predictions/*`) is skipped when either model lacks it or the widths
    differ; every other variable must match in name and shape, and every source variable must
    be used. Raises (see `load_weights`) without assigning anything, unless `skip_mismatch`.
    """
    source_vars = {v.path: v for v in source.weights}
    target_vars = {v.path: v for v in model.weights}
    head_ok = _keras_head_fits(source_vars, target_vars, origin)
    problems, entries = [], []
    for path, variable in target_vars.items():
        if path.startswith(_HEAD_PREFIX) and not head_ok:
            continue
        if path not in source_vars:
            problems.append(f'tensor {path!r} is missing')
        else:
            value = source_vars[path]
            entries.append(_copier.Entry(path, variable, tuple(value.shape), value.numpy))
    for path in source_vars:
        if path not in target_vars and not (path.startswith(_HEAD_PREFIX) and not head_ok):
            problems.append(f'tensor {path!r} is not used by the model')
    loaded, _ = _copier.copy_entries(entries, model, origin, problems, skip_mismatch)
    logging.info(
        'Copied %d variables from %s; classifier %s.',
        len(loaded),
        origin,
        'loaded' if head_ok else 'skipped',
    )


def _keras_head_fits(source_vars, target_vars, origin):
    kernel = _HEAD_PREFIX + 'kernel'
    if kernel not in target_vars or kernel not in source_vars:
        if kernel in target_vars:
            logging.warning('%s has no classifier; the head keeps its initial values.', origin)
        return False
    if tuple(source_vars[kernel].shape) != tuple(target_vars[kernel].shape):
        logging.info(
            '%s has classifier shape %s, the model %s: classifier skipped.',
            origin,
            tuple(source_vars[kernel].shape),
            tuple(target_vars[kernel].shape),
        )
        return False
    return True


def _load_keras_file(model, path, skip_mismatch):
    try:
        source = keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for unreadable files.
        raise ValueError(f'Cannot read the .keras file {path!r}: {_first_line(error)}') from None
    origin = f'.keras file {path!r}'
    if _looks_like_keras_applications(source):
        _copy_keras_applications(source, model, origin, skip_mismatch)
    else:
        _copy_by_path(source, model, origin=origin, skip_mismatch=skip_mismatch)


def _looks_like_keras_applications(source):
    return any(layer.name == 'stem_conv' for layer in source.layers)


def _copy_keras_applications(source, model, origin, skip_mismatch):
    """Copies a keras.applications EfficientNet's weights by `convert`'s name map."""
    if not isinstance(model, model_lib.EfficientNet):
        raise ValueError(
            f'Cannot load {origin} into {model.name!r}: keras.applications weights load into an '
            'efficientnetv2 EfficientNet only.'
        )
    model_head = source_head = None
    if getattr(model, 'include_top', False):
        model_head = tuple(model.get_layer('predictions').kernel.shape)
    classifier = [layer for layer in source.layers if layer.name == 'predictions']
    if classifier:
        source_head = tuple(classifier[0].kernel.shape)
    copy_classifier = model_head is not None and model_head == source_head
    if model_head is not None and not copy_classifier:
        logging.info(
            '%s has classifier shape %s, the model %s: classifier skipped.',
            origin,
            source_head,
            model_head,
        )
    variant = convert.identify_variant(source)
    if model.model_name and model.model_name != variant:
        raise ValueError(
            f'Cannot load {origin} into model {_copier.model_label(model)!r}: it holds {variant}.'
        )
    entries, problems = convert.weight_map(source, model, copy_classifier=copy_classifier)
    loaded, _ = _copier.copy_entries(entries, model, origin, problems, skip_mismatch)
    logging.info(
        'Copied %d variables from %s; classifier %s. Input the model expects: %s.',
        len(loaded),
        origin,
        'loaded' if copy_classifier else 'skipped',
        convert.keras_preprocessing(source).describe(),
    )


def _load_h5(model, path, skip_mismatch):
    """Loads a `.weights.h5` file; a file with another classifier goes through a twin model."""
    file_head = _h5_head_shape(path)
    model_head = None
    if getattr(model, 'include_top', False):
        model_head = tuple(model.get_layer('predictions').kernel.shape)
    origin = f'weights file {path!r}'
    if file_head == model_head or not isinstance(model, model_lib.EfficientNet):
        # Keras' own loader; it assigns as it reads, so roll back on failure.
        _copier.with_rollback(
            model, lambda: _keras_load_weights(model, path, origin, skip_mismatch)
        )
        return
    # Another head: load into a twin with the file's head, then copy everything else.
    config = dict(model.get_config())
    config.update(
        include_top=file_head is not None,
        num_classes=file_head[-1] if file_head else config.get('num_classes'),
        classifier_activation=None,
    )
    twin = type(model).from_config(config)
    _keras_load_weights(twin, path, origin, skip_mismatch)
    _copy_by_path(twin, model, origin=origin, skip_mismatch=skip_mismatch)


def _h5_head_shape(path):
    """The classifier kernel shape stored in a `.weights.h5` file, or None."""
    import h5py  # A Keras dependency.

    try:
        with h5py.File(path, 'r') as f:
            kernel = f.get('layers/dense/vars/0')
            return tuple(kernel.shape) if kernel is not None else None
    except OSError as error:
        raise ValueError(f'Cannot read the weights file {path!r}: {_first_line(error)}') from None


def _keras_load_weights(model, path, origin, skip_mismatch):
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='Skipping nested container')
            model.load_weights(path, skip_mismatch=skip_mismatch)
    except Exception as error:  # Keras raises ValueError and others with long messages.
        lines = [line for line in str(error).splitlines() if line.strip()]
        detail = ' '.join(lines[:3])
        raise ValueError(
            f'Cannot load {origin} into model {_copier.model_label(model)!r}: {detail[:600]}'
        ) from None


def _load_imagenet(model, skip_mismatch):
    """Converts keras.applications' ImageNet weights (downloaded by Keras on first use)."""
    name = getattr(model, 'model_name', None)
    variant = architectures.get_variant(name) if name else None
    if variant is None or not variant.keras_name:
        raise ValueError(
            "weights='imagenet' needs a variant that keras.applications ships "
            '(EfficientNetV2 B0-B3/S/M/L, EfficientNet B0-B7). '
            f'Received model {_copier.model_label(model)!r}.'
        )
    constructor = getattr(keras.applications, variant.keras_name)
    source = constructor(include_top=True, weights='imagenet', classifier_activation=None)
    _copy_keras_applications(
        source, model, f'keras.applications.{variant.keras_name} ImageNet weights', skip_mismatch
    )
