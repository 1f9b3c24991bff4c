"""Fine-tuning helpers: stage names, freezing by stage, batch-norm mode, a new classifier.

Stages follow the paper's tables (EfficientNetV2 Table 4): stage 0 is the stem convolution,
stages 1..N are the MBConv / Fused-MBConv stages, the last is the 1x1 head convolution with
pooling and the classifier. Here they are named from the model's layers::

    'stem'            stem (this project) / stem_conv, stem_bn, stem_activation (keras.applications)
    'stage1'..'stageN'  the blocks `block<k><letter>` (block1a, block2a, block2b, ...)
    'top'             the 1x1 head convolution (top / top_conv, top_bn, top_activation)
    'head'            pooling, dropout and the classifier

Measured recipe (docs/finetuning.md, `benchmarks/finetune_transfer.py`, two tasks with
10 images per class, 3 seeds): it depends on how relevant the pretrained features are, so
first fit a linear probe (a logistic regression on the pretrained pooled features).

* Unrelated features (digits 0-4 -> 5-9: probe 87.0% < scratch 93.1%): the features must
  change. Fine-tuning every layer at the from-scratch rate won (94.4%; the stem frozen,
  `prepare`'s default, tied); every more conservative choice (stages or batch norm frozen,
  a 3x lower rate, LP-FT) lost: stages 1-2 and BN frozen 93.3%.
* Related features (10 photographs -> 10 other photographs: probe 87.0% > scratch 81.2%,
  naive 81.6%): keeping the early features won. The stem and stages 1-2 frozen with every
  batch norm in inference mode (`prepare(model, K, num_stages=2, freeze_bn=True)`, the
  from-scratch rate): 83.0% with the smallest seed spread; LP-FT (`fit_two_phase` with a
  head-only first phase) 82.0%; a lower rate alone or the stem alone frozen lost.

A deep network with ImageNet weights on natural photos is usually the second case::

    model = efficientnetv2.finetune.prepare(pretrained, num_classes=10, num_stages=2,
                                            freeze_bn=True)  # related data
    model = efficientnetv2.finetune.prepare(pretrained, num_classes=5)  # unrelated: stem frozen
    model.compile(keras.optimizers.Adam(3e-3), ...)   # the from-scratch rate
    model.fit(...)

    # The same as one call, or LP-FT with head_epochs > 0:
    efficientnetv2.finetune.fit_two_phase(
        efficientnetv2.finetune.replace_head(pretrained, 5), train, epochs=60,
        head_epochs=0, num_stages=0, learning_rate=3e-3, loss=..., steps_per_epoch=...)

Freeze before `compile` (Keras collects the trainable variables when it builds the train
function; recompile after changing what is frozen).
"""

import collections
import re

import keras

from efficientnetv2 import _backend
from efficientnetv2 import model as model_lib

__all__ = [
    'stage_names',
    'stage_layers',
    'freeze',
    'unfreeze',
    'trainable_counts',
    'replace_head',
    'prepare',
    'fit_two_phase',
]

_BLOCK = re.compile(r'^block(\d+)[a-z]+(_|$)')
_TOP = re.compile(r'^top(_conv|_bn|_activation)?$')


def stage_layers(model):
    """Ordered dict stage name -> list of the model's top-level layers in that stage.

    Raises:
        ValueError: the model has no `block<k><letter>` layers (not an EfficientNet-style
            model; name the layers to freeze yourself with `layer.trainable = False`).
    """
    groups = collections.OrderedDict()
    blocks = collections.OrderedDict()
    seen_body = False
    preamble = []
    for layer in model.layers:
        name = layer.name
        if isinstance(layer, keras.layers.InputLayer):
            continue
        match = _BLOCK.match(name)
        if name == 'stem' or name.startswith('stem_'):
            groups.setdefault('stem', []).append(layer)
            seen_body = True
        elif match:
            blocks.setdefault(f'stage{int(match.group(1))}', []).append(layer)
            seen_body = True
        elif _TOP.match(name):
            groups.setdefault('top', []).append(layer)
        elif seen_body:
            groups.setdefault('head', []).append(layer)
        else:
            preamble.append(layer)  # Input scaling of keras.applications: no trainable weights.
    if not blocks:
        raise ValueError(
            f'Model {model.name!r} has no block<k><letter> layers (block1a, block2a, ...): '
            'stage names are only defined for EfficientNet-style models. Its layers: '
            f'{[layer.name for layer in model.layers][:20]}.'
        )
    ordered = collections.OrderedDict()
    ordered['stem'] = preamble + groups.get('stem', [])
    for key in sorted(blocks, key=lambda k: int(k[5:])):
        ordered[key] = blocks[key]
    for key in ('top', 'head'):
        if key in groups:
            ordered[key] = groups[key]
    return ordered


def stage_names(model):
    """['stem', 'stage1', ..., 'stageN', 'top', 'head'] ('top'/'head' when the model has them)."""
    return list(stage_layers(model))


def _batch_norms(layer):
    return [
        sub
        for sub in layer._flatten_layers(include_self=True)
        if isinstance(sub, keras.layers.BatchNormalization)
    ]


def _resolve(model, num_stages, stages):
    groups = stage_layers(model)
    names = list(groups)
    block_stages = [n for n in names if n.startswith('stage')]
    if (num_stages is None) == (stages is None):
        raise ValueError(
            'Pass exactly one of `num_stages` (freeze the stem and the first N '
            f'stages) or `stages` (a list of stage names). Valid names: {names}.'
        )
    if stages is None:
        if num_stages == 'all':
            num_stages = len(block_stages)
        if (
            isinstance(num_stages, bool)
            or not isinstance(num_stages, int)
            or not 0 <= num_stages <= len(block_stages)
        ):
            raise ValueError(
                f"Argument `num_stages` must be an int in [0, {len(block_stages)}] or 'all'; "
                f'received num_stages={num_stages!r}.'
            )
        stages = ['stem'] + block_stages[:num_stages]
        if num_stages == len(block_stages) and 'top' in groups:
            stages.append('top')
    unknown = [s for s in stages if s not in groups]
    if unknown:
        raise ValueError(f'Unknown stage names {unknown}. Valid names: {names}.')
    return groups, list(stages)


def freeze(model, num_stages=None, stages=None, freeze_bn=True):
    """Freezes the stem and the first `num_stages` stages (or the named `stages`).

    Everything else is made trainable first, so calls do not accumulate.

    Args:
        model: an EfficientNet-style Keras model (this project's or keras.applications').
        num_stages: freeze 'stem' and 'stage1'..'stage<num_stages>'; 0 freezes the stem only;
            'all' freezes every stage and 'top' (only the head trains).
        stages: alternatively, the stage names to freeze (see `stage_names`).
        freeze_bn: True: EVERY batch-norm layer of the model is set untrainable, so Keras runs
            it in inference mode (moving statistics used and kept, gamma/beta fixed): the usual
            choice for small target sets and small batches. False: batch norm keeps training
            mode everywhere (batch statistics; moving statistics follow the new data); in the
            frozen stages only its gamma and beta are fixed.

    Returns:
        The frozen stage names.
    """
    groups, frozen = _resolve(model, num_stages, stages)
    unfreeze(model)
    for name in frozen:
        for layer in groups[name]:
            layer.trainable = False
    if freeze_bn:
        for norm in _batch_norms(model):
            norm.trainable = False
    else:
        for name in frozen:
            for layer in groups[name]:
                for norm in _batch_norms(layer):
                    norm.trainable = True  # Training mode ...
                    for variable in (norm.gamma, norm.beta):
                        if variable is not None:
                            variable.trainable = False  # ... with fixed scale and offset.
    return frozen


def unfreeze(model):
    """Makes every layer and variable trainable again (batch norm back in training mode)."""
    # Keras skips `model.trainable = True` when the model's own flag is already True, and a
    # layer's setter does not reach variables frozen one by one: set both explicitly.
    for layer in model._flatten_layers(include_self=True):
        layer.trainable = True
        for variable in layer._trainable_variables:
            variable.trainable = True


def trainable_counts(model):
    """Ordered dict stage name -> number of trainable variables in that stage."""
    counts = collections.OrderedDict()
    trainable = {id(v) for v in model.trainable_variables}
    for name, layers in stage_layers(model).items():
        counts[name] = sum(1 for layer in layers for v in layer.weights if id(v) in trainable)
    return counts


def _copy_flags(source, target):
    for a, b in zip(
        source._flatten_layers(include_self=True), target._flatten_layers(include_self=True)
    ):
        b.trainable = a.trainable
    for a, b in zip(source.weights, target.weights):
        b.trainable = a.trainable


def replace_head(model, num_classes, head_name='predictions', dropout_rate=None):
    """A model with a new `num_classes`-way classifier on the same pooled features.

    This project's models (`EfficientNet` with `include_top=True`) are rebuilt from their config
    with `num_classes` and every weight but the classifier's copied (trainable flags too), so
    the result is again an `EfficientNet` (settable dropout, `.keras` round trip). Any other
    Functional model: a new Dense layer (same name, activation and bias use) is put on the input
    of the layer `head_name` (default 'predictions', else the last layer when it is Dense).

    Args:
        model: the pretrained model (its weights are shared, not copied, in the Functional case).
        num_classes: width of the new classifier.
        head_name: name of the classifier to replace.
        dropout_rate: this project's models only: a new classifier dropout rate.

    Returns:
        The new model (the original is left unchanged).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f'Argument `num_classes` must be a positive int; received {num_classes!r}.'
        )
    if isinstance(model, model_lib.EfficientNet):
        if not model.include_top:
            raise ValueError(
                'The model has no classifier (include_top=False); build it with '
                'include_top=True, or add your own head on its features.'
            )
        config = model.get_config()
        config['num_classes'] = num_classes
        if dropout_rate is not None:
            config['dropout_rate'] = float(dropout_rate)
        new = model_lib.EfficientNet.from_config(config)
        for layer in model.layers:
            if layer.name == head_name or not layer.weights:
                continue
            target = new.get_layer(layer.name)
            target.set_weights(layer.get_weights())
            _copy_flags(layer, target)
        return new
    names = [layer.name for layer in model.layers]
    if head_name in names:
        head = model.get_layer(head_name)
    elif model.layers and isinstance(model.layers[-1], keras.layers.Dense):
        head = model.layers[-1]
    else:
        raise ValueError(
            f'No classifier named {head_name!r} and the last layer is not Dense; pass '
            f'head_name (one of {names}).'
        )
    if not isinstance(head, keras.layers.Dense):
        raise ValueError(f'Layer {head.name!r} is a {type(head).__name__}, not a Dense classifier.')
    features = head.input
    dense = keras.layers.Dense(
        num_classes,
        activation=head.activation,
        use_bias=head.use_bias,
        name=head.name,
        dtype=head.dtype_policy,
    )
    return keras.Model(model.inputs, dense(features), name=model.name)


def prepare(model, num_classes, num_stages=0, freeze_bn=False, **kwargs):
    """The recipe's model: `replace_head(model, num_classes)` then `freeze(...)`.

    The defaults are the measured recipe for unrelated pretraining data (module docstring):
    only the stem frozen, batch norm in training mode. With related data (a linear probe on
    the pretrained features beats training from scratch) `num_stages=2, freeze_bn=True` won.
    `**kwargs` go to `replace_head`.
    """
    new = replace_head(model, num_classes, **kwargs)
    freeze(new, num_stages=num_stages, freeze_bn=freeze_bn)
    return new


def _steps_per_epoch(x, steps_per_epoch, batch_size):
    """Batches per epoch as `model.fit` will count them, or None when unknown."""
    if steps_per_epoch is not None:
        return steps_per_epoch
    if _backend.is_tf_dataset(x):
        steps = int(x.cardinality())
        return steps if steps > 0 else None
    if isinstance(x, keras.utils.PyDataset):
        return len(x)
    if hasattr(x, 'shape') and len(x.shape) > 0:  # Arrays: fit batches them (default 32).
        return -(-int(x.shape[0]) // (batch_size or 32))
    return None


def _dataset_length(x):
    """'infinite' or 'unknown' for a tf.data.Dataset of that cardinality, else None."""
    import tensorflow as tf

    if isinstance(x, tf.data.Dataset):
        cardinality = int(x.cardinality())
        if cardinality == tf.data.INFINITE_CARDINALITY:
            return 'infinite'
        if cardinality == tf.data.UNKNOWN_CARDINALITY:
            return 'unknown'
    return None


def _optimizer(optimizer, learning_rate):
    if isinstance(optimizer, keras.optimizers.Optimizer):
        raise ValueError(
            'Argument `optimizer` must be a name (e.g. "adam") or a callable '
            'learning_rate -> optimizer (e.g. keras.optimizers.AdamW), not an optimizer '
            'instance: each phase needs a fresh optimizer with its own learning rate.'
        )
    if isinstance(optimizer, str):
        return keras.optimizers.get(
            {'class_name': optimizer, 'config': {'learning_rate': learning_rate}}
        )
    if callable(optimizer):
        return optimizer(learning_rate=learning_rate)
    raise ValueError(f'Argument `optimizer` must be a name or a callable; received {optimizer!r}.')


def fit_two_phase(
    model,
    x,
    *,
    epochs,
    head_epochs,
    loss,
    learning_rate,
    head_learning_rate=None,
    optimizer='adam',
    metrics=None,
    schedule='cosine',
    num_stages=None,
    freeze_bn=False,
    steps_per_epoch=None,
    head_x=None,
    **fit_kwargs,
):
    """Fine-tunes in two phases: the new head alone, then the network (LP-FT).

    Phase 1, epochs [0, head_epochs): every layer but the classifier ('head') is frozen and
    every batch norm is in inference mode, so the pretrained features are left exactly as they
    are while a new head learns to read them at `head_learning_rate` (high: only a linear layer
    trains). Phase 2, epochs [head_epochs, epochs): every layer trains (or all but the stem
    and the first `num_stages` stages), batch norm in training mode unless `freeze_bn`, at
    `learning_rate`, starting from a head that already fits instead of a random one (Kumar et
    al. 2022, "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-
    Distribution"). Each phase compiles the model with a fresh optimizer whose learning rate
    follows `schedule` over that phase's steps. `head_epochs=0` skips phase 1 (a one-phase
    fine-tune with the same options).

    Phase 1 may read other data than phase 2 (`head_x`): a linear head on fixed features
    learns best from the images as they will be seen at test time, while the augmented
    pipeline that helps the network in phase 2 (RandAugment, small random crops) gives it
    features it never meets at evaluation (the transfer benchmark: 74.5% after a head phase on
    augmented crops against 87.0% for a logistic regression on the un-augmented images).

    Args:
        model: an EfficientNet-style model with a new head (`replace_head`); this project's
            models or keras.applications EfficientNet / EfficientNetV2 models.
        x: training data for `model.fit` (a `tf.data.Dataset`, arrays, a PyDataset ...).
        epochs: total epochs, both phases together (as `model.fit(epochs=...)`).
        head_epochs: epochs of phase 1, in [0, epochs].
        loss: passed to `model.compile`.
        learning_rate: phase 2's peak learning rate.
        head_learning_rate: phase 1's peak learning rate (needed when head_epochs > 0; the
            benchmark used 0.1 with Adam: only a linear layer trains, and at 1e-2 it was still
            far from fitted after 10 epochs).
        optimizer: a Keras optimizer name ('adam', 'sgd', ...) or a callable
            `learning_rate -> optimizer` (e.g. `keras.optimizers.AdamW`, a lambda).
        metrics: passed to `model.compile`.
        schedule: 'cosine' (cosine decay to 0 over each phase's steps; needs the steps per
            epoch: `steps_per_epoch`, or data with a known length) or 'constant'.
        num_stages: phase 2 keeps the stem and stages 1..num_stages frozen (as `freeze`);
            None trains every layer.
        freeze_bn: phase 2 runs every batch norm in inference mode (as `freeze`).
        steps_per_epoch: passed to `model.fit`; also sets the cosine schedule's length. Only
            for `x`: with `head_x`, phase 1 runs one pass over `head_x` per epoch.
        head_x: phase 1's training data (e.g. the train images through the evaluation
            pipeline, without augmentation); None: `x`. A dataset or PyDataset that yields
            (images, labels) and has a known length when `schedule='cosine'`; with array data
            (`y` in `fit_kwargs`), a tuple (images, labels), batched by `batch_size`.
        **fit_kwargs: passed to both `model.fit` calls (validation_data, callbacks, verbose,
            ...). Not `epochs` / `initial_epoch`: the phases set them.

    Returns:
        A `keras.callbacks.History` of all `epochs` epochs (phase 1 first), with its `phases`
        attribute listing (first epoch, end epoch, learning rate, trainable variables) per
        phase that ran. The model stays compiled and frozen as its last phase left it.
    """
    for name, value in (('epochs', epochs), ('head_epochs', head_epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f'Argument `{name}` must be an int >= 0; received {value!r}.')
    if head_epochs > epochs:
        raise ValueError(
            f'Argument `head_epochs` ({head_epochs}) must not exceed `epochs` ({epochs}): '
            '`epochs` counts both phases.'
        )
    if head_epochs and head_learning_rate is None:
        raise ValueError('Argument `head_learning_rate` is needed when `head_epochs` > 0.')
    if schedule not in ('cosine', 'constant'):
        raise ValueError(
            f"Argument `schedule` must be 'cosine' or 'constant'; received {schedule!r}."
        )
    for key in ('epochs', 'initial_epoch'):
        if key in fit_kwargs:
            raise ValueError(f'Argument `{key}` is set by the phases; use `epochs`/`head_epochs`.')
    steps = _steps_per_epoch(x, steps_per_epoch, fit_kwargs.get('batch_size'))
    if schedule == 'cosine' and not steps:
        raise ValueError(
            "schedule='cosine' needs the number of steps per epoch: pass `steps_per_epoch` "
            "(the length of this data is unknown), or use schedule='constant'."
        )
    # Phase 1's data, its fit arguments and its steps per epoch.
    head_data, head_kwargs, head_steps = x, fit_kwargs, steps
    head_fit_steps = steps_per_epoch
    if head_x is not None:
        head_kwargs, head_fit_steps = dict(fit_kwargs), None
        if 'y' in fit_kwargs:  # Array data: head_x brings its own labels.
            if not (isinstance(head_x, (tuple, list)) and len(head_x) == 2):
                raise ValueError(
                    'With array data (`y` given), `head_x` must be a tuple (images, labels); '
                    f'received {type(head_x).__name__}.'
                )
            head_data, head_kwargs['y'] = head_x
        else:
            head_data = head_x
        head_steps = _steps_per_epoch(head_data, None, fit_kwargs.get('batch_size'))
        length = _dataset_length(head_data)
        if head_epochs and length == 'infinite':
            raise ValueError(
                '`head_x` repeats forever, but phase 1 runs one pass over it per epoch: '
                'give a finite dataset (without .repeat()).'
            )
        if schedule == 'cosine' and head_epochs and not head_steps:
            if length == 'unknown':
                hint = (
                    'tf.data cannot count this dataset (a filter or ignore_errors hides its '
                    'length): declare it with head_x.apply(tf.data.experimental.'
                    'assert_cardinality(number_of_batches))'
                )
            else:
                hint = 'give it a known length'
            raise ValueError(
                f"schedule='cosine' needs the length of `head_x`: {hint}, or use "
                "schedule='constant'."
            )
    if 'head' not in stage_layers(model):
        raise ValueError(
            'The model has no classifier after its top layers (include_top=False?); '
            'fit_two_phase trains a new head first: give it one with `replace_head`.'
        )
    history = keras.callbacks.History()
    history.epoch, history.history, history.phases = [], {}, []
    # Per phase: name, first and end epoch, rate, data, fit arguments, steps per epoch (for the
    # schedule) and the `steps_per_epoch` passed to fit.
    phases = [
        (
            'head',
            0,
            head_epochs,
            head_learning_rate,
            head_data,
            head_kwargs,
            head_steps,
            head_fit_steps,
        ),
        ('network', head_epochs, epochs, learning_rate, x, fit_kwargs, steps, steps_per_epoch),
    ]
    for kind, start, end, lr, phase_x, phase_kwargs, phase_steps, fit_steps in phases:
        if end <= start:
            continue
        if kind == 'head':
            freeze(model, num_stages='all', freeze_bn=True)
        elif num_stages is None:
            unfreeze(model)
            if freeze_bn:
                for norm in _batch_norms(model):
                    norm.trainable = False
        else:
            freeze(model, num_stages=num_stages, freeze_bn=freeze_bn)
        if schedule == 'cosine':
            rate = keras.optimizers.schedules.CosineDecay(lr, (end - start) * phase_steps)
        else:
            rate = lr
        model.compile(optimizer=_optimizer(optimizer, rate), loss=loss, metrics=metrics)
        result = model.fit(
            phase_x,
            initial_epoch=start,
            epochs=end,
            steps_per_epoch=fit_steps,
            **phase_kwargs,
        )
        history.epoch += list(result.epoch)
        for key, values in result.history.items():
            history.history.setdefault(key, []).extend(values)
        history.phases.append((start, end, lr, len(model.trainable_variables)))
    history.set_model(model)
    return history
