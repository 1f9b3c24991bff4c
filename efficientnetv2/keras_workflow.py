"""Progressive learning with plain `model.fit`: stages, adaptive regularisation and a BN-aware EMA.

The custom loop (`efficientnetv2.train.trainer`) is the reference trainer; this module gives
the same recipe to anyone who prefers a compiled Keras model and `fit`::

    import efficientnetv2
    from efficientnetv2 import data

    model = efficientnetv2.get_model('efficientnetv2-b0', num_classes=10)
    model.compile(keras.optimizers.RMSprop(1e-3), keras.losses.CategoricalCrossentropy(True),
                  metrics=['accuracy'])
    info = data.folder_dataset_info('/images')
    plan = efficientnetv2.progressive_plan(epochs=20, image_size=128, num_stages=4)

    def dataset_fn(stage):   # a tf.data.Dataset for one stage
        return data.build_dataset(info, 'train', image_size=stage.image_size, batch_size=32,
                                  ram=stage.ram, mixup_alpha=stage.mixup_alpha,
                                  cutmix_alpha=stage.cutmix_alpha)

    result = efficientnetv2.fit_progressive(model, dataset_fn, plan, steps_per_epoch=50,
                                            ema=0.999, callbacks=[keras.callbacks.TensorBoard(d)])
    result.ema.copy_to_model()   # keep the averaged weights

What changes per stage: the image size, the RandAugment magnitude and mixup/CutMix alphas
(through `dataset_fn(stage)`, which receives the plan's `Stage`) and the dropout (set in the
model, see `set_dropout`). What carries over: the compiled model (never recompiled), so the
optimizer's slots, its step counter and learning-rate schedule; the EMA; the user's callbacks,
which see ONE training run (`on_train_begin` before the first stage, `on_train_end` after the
last), so TensorBoard writes one continuous run and EarlyStopping's patience spans stages (when
it stops training, the remaining stages are skipped).

EMA and batch norm: `ModelEMA` averages the trainable weights AND the batch-norm moving means
and variances (`efficientnetv2.variables.ema_variables`), as the official recipe does. Keras'
own `optimizer(use_ema=True)` averages only the trainable variables (BN statistics stay those
of the raw weights, a mismatch for the averaged convolutions), and with one `fit` call per
stage it would also overwrite the raw weights with the averages at the end of every stage
(`fit` ends with `optimizer.finalize_variable_values`). Use `ModelEMA` here instead.

Backends: everything here runs on TensorFlow, JAX and PyTorch; `dataset_fn` returns whatever
`model.fit` takes on the backend (a tf.data.Dataset, a `keras.utils.PyDataset`, a torch
`DataLoader`, a grain dataset, an `(x, y)` tuple of arrays). See docs/backends.md.
"""

import os

from absl import logging
import keras

from efficientnetv2 import _backend
from efficientnetv2 import variables as variables_lib
from efficientnetv2.train import portable_ema
from efficientnetv2.train import progressive

__all__ = [
    'fit_progressive',
    'progressive_plan',
    'stage_epochs',
    'set_dropout',
    'ModelEMA',
    'ProgressiveHistory',
]

CHECKPOINT_SUFFIXES = ('.keras', '.weights.h5')


def progressive_plan(
    epochs,
    image_size,
    num_stages=4,
    mode='paper',
    min_image_size=None,
    ram=(5.0, 15.0),
    mixup=(0.0, 0.0),
    cutmix=(0.0, 0.0),
    dropout=(0.1, 0.3),
    size_divisor=1,
):
    """A progressive-learning plan counted in epochs, from simple (start, final) ranges.

    The same `StagePlan` the trainer uses (`efficientnetv2.train.progressive.build_stage_plan`),
    with `total_steps = epochs`, so each stage's `start_step`/`end_step` are epochs.

    Args:
        epochs: length of the run in epochs (>= num_stages).
        image_size: the final (last-stage) image size.
        num_stages: number of stages; 0 or 1 trains one stage at the final values.
        mode: 'paper' (Algorithm 1, dropout grows) or 'official' (the released code: first
            stage above `min_image_size`, dropout fixed at its final value).
        min_image_size: the size the interpolation starts from; None: 128, or half the final
            size when that is <= 128.
        ram, mixup, cutmix, dropout: (start, final) RandAugment magnitude, mixup alpha, CutMix
            alpha and dropout rate; a single number means the same value throughout.
        size_divisor: paper mode rounds intermediate sizes to a multiple of this.

    Returns:
        A `progressive.StagePlan`.
    """
    ranges = {}
    for name, value in (('ram', ram), ('mixup', mixup), ('cutmix', cutmix), ('dropout', dropout)):
        if isinstance(value, (int, float)):
            value = (value, value)
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise ValueError(
                f'Argument `{name}` must be a number or a (start, final) pair; '
                f'received {name}={value!r}.'
            )
        ranges[name] = (float(value[0]), float(value[1]))
    return progressive.build_stage_plan(
        num_stages=num_stages,
        total_steps=epochs,
        final_image_size=image_size,
        final_ram=ranges['ram'][1],
        final_mixup=ranges['mixup'][1],
        final_cutmix=ranges['cutmix'][1],
        final_dropout=ranges['dropout'][1],
        min_image_size=min_image_size,
        min_ram=ranges['ram'][0],
        min_mixup=ranges['mixup'][0],
        min_cutmix=ranges['cutmix'][0],
        min_dropout=ranges['dropout'][0],
        mode=mode,
        size_divisor=size_divisor,
    )


def stage_epochs(plan, epochs=None):
    """`[(stage, first_epoch, end_epoch)]`: the plan's stages mapped onto `epochs` epochs.

    A plan counted in epochs (`plan.total_steps == epochs`, e.g. from `progressive_plan`) is
    used as is. A plan counted in steps (e.g. `config.stage_plan(config, total_steps)`) is
    scaled: stage `i` starts at epoch `floor(start_step * epochs / total_steps)`, the same
    floor rule the plan uses for its own boundaries.

    Raises:
        ValueError: a stage would get no epoch (more stages than epochs).
    """
    total = plan.total_steps
    epochs = total if epochs is None else int(epochs)
    if epochs < 1:
        raise ValueError(f'Argument `epochs` must be >= 1; received epochs={epochs!r}.')
    result = []
    for stage in plan:
        first = stage.start_step * epochs // total
        end = stage.end_step * epochs // total
        if end <= first:
            raise ValueError(
                f'Stage {stage.index} of the plan gets no epoch: {epochs} epochs cannot be split '
                f'over {len(plan)} stages (plan steps {stage.start_step}-{stage.end_step} of '
                f'{total}). Use epochs >= {len(plan)} or fewer stages.'
            )
        result.append((stage, first, end))
    return result


def set_dropout(model, rate):
    """Sets the dropout of `model` to `rate`; returns how many layers were changed.

    This project's models (`efficientnetv2.EfficientNet`) have a settable `dropout_rate` (a
    variable read by the traced step: no retrace). Any other Keras model: every
    `keras.layers.Dropout` whose rate is above 0 gets `rate` (Keras bakes the rate into the
    traced train function, so `fit_progressive` rebuilds it at the stage change). Dropout layers
    built with rate 0 have no random state in Keras 3 and cannot be raised: they are left
    alone (and counted out), as are other dropout-like layers (SpatialDropout, AlphaDropout).
    """
    if _has_adaptive_dropout(model):
        model.dropout_rate = rate
        return 1 if getattr(model, 'include_top', True) else 0
    changed = 0
    for layer in model._flatten_layers(include_self=False):
        if type(layer) is keras.layers.Dropout and getattr(layer, 'seed_generator', None):
            layer.rate = float(rate)
            changed += 1
    return changed


def _has_adaptive_dropout(model):
    prop = getattr(type(model), 'dropout_rate', None)
    return isinstance(prop, property) and prop.fset is not None


class ModelEMA(keras.callbacks.Callback):
    """Exponential moving average of the weights AND the batch-norm statistics, as a callback.

    After every training batch, each trainable variable and each BN `moving_mean` /
    `moving_variance` (`efficientnetv2.variables.ema_variables`) has a shadow updated as
    `shadow <- decay * shadow + (1 - decay) * value`. With `use_num_updates` the decay warms up
    as `min(decay, (1 + t) / (10 + t))`, `t = optimizer.iterations` (the official recipe).
    Keras' own `use_ema` optimizer option does NOT average the BN moving statistics.

    Args:
        decay: target decay in [0, 1), e.g. 0.9999 for ImageNet-length runs, 0.99-0.999 for short.
        use_num_updates: warm the decay up with the optimizer step (see above).
        evaluate_with_ema: validation inside `fit` (and `model.evaluate(callbacks=[ema])`) runs
            with the averaged weights; the raw weights are back afterwards.
        filepath: when set, the averaged weights are saved there (a `.weights.h5` path) at the
            end of every epoch, and `fit_progressive` reads them back when it resumes.

    After training: `copy_to_model()` keeps the averages, or `with ema.average_weights(): ...`
    uses them temporarily (save, export, evaluate). The shadows start as a copy of the weights
    at the first `on_train_begin` and survive any number of `fit` calls.
    """

    def __init__(self, decay=0.9999, use_num_updates=True, evaluate_with_ema=True, filepath=None):
        super().__init__()
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f'Argument `decay` must be in [0, 1); received decay={decay!r}.')
        if filepath is not None and not str(filepath).endswith('.weights.h5'):
            raise ValueError(
                f"Argument `filepath` must end with '.weights.h5'; received filepath={filepath!r}."
            )
        self.decay = float(decay)
        self.use_num_updates = bool(use_num_updates)
        self.evaluate_with_ema = bool(evaluate_with_ema)
        self.filepath = None if filepath is None else str(filepath)
        self.ema = None
        self._apply = None
        self._swapped = False

    @property
    def variables(self):
        """The averaged model variables (trainable first, then BN statistics)."""
        self._require()
        return self.ema.model_variables

    def build(self, model=None):
        """Creates the shadows from the model's current weights (done at `on_train_begin`)."""
        model = model or self.model
        if self.ema is None:
            if _backend.is_tensorflow():
                import tensorflow as tf  # The TF backend: loaded already.

                from efficientnetv2.train import ema as ema_lib

                self.ema = ema_lib.ExponentialMovingAverage(
                    variables_lib.ema_variables(model),
                    decay=self.decay,
                    use_num_updates=self.use_num_updates,
                    name='model_ema',
                )
                apply = tf.function(self.ema.apply)
                self._apply = lambda step: apply(tf.convert_to_tensor(step))
            else:
                # JAX / PyTorch: one fused update per batch, on the device.
                self.ema = portable_ema.PortableEMA(
                    variables_lib.ema_variables(model),
                    decay=self.decay,
                    use_num_updates=self.use_num_updates,
                    name='model_ema',
                )
                self._apply = self.ema.apply
        return self

    def _require(self):
        if self.ema is None:
            raise ValueError('ModelEMA has no averages yet: train with it (or call build()) first.')

    def on_train_begin(self, logs=None):
        self.build()
        if getattr(self.model, 'steps_per_execution', 1) not in (1, None):
            logging.warning(
                'ModelEMA updates once per batch callback: with steps_per_execution='
                '%s it averages every %s-th step only.',
                self.model.steps_per_execution,
                self.model.steps_per_execution,
            )

    def on_train_batch_end(self, batch, logs=None):
        optimizer = getattr(self.model, 'optimizer', None)
        # The step stays a device value: no host sync per batch.
        self._apply(optimizer.iterations if optimizer is not None else batch + 1)

    def on_test_begin(self, logs=None):
        if self.evaluate_with_ema and self.ema is not None and not self._swapped:
            self.ema.swap()
            self._swapped = True

    def on_test_end(self, logs=None):
        if self._swapped:
            self.ema.swap()
            self._swapped = False

    def on_epoch_end(self, epoch, logs=None):
        if self.filepath and self.ema is not None:
            with self.average_weights():
                self.model.save_weights(self.filepath, overwrite=True)

    def average_weights(self):
        """Context manager: the model holds the averages inside, its own weights after."""
        self._require()
        return self.ema.average_weights()

    def copy_to_model(self):
        """Replaces the model's weights and BN statistics with the averages (permanent)."""
        self._require()
        self.ema.copy_to_model()

    def reset_from_model(self):
        """Restarts the averages from the model's current weights."""
        self._require()
        self.ema.reset_from_model()

    def restore(self, filepath=None):
        """Reads averaged weights saved by `on_epoch_end` into the shadows (model unchanged).

        Non-averaged variables (none in this project's models) take the file's values.
        """
        filepath = filepath or self.filepath
        self.build()
        with self.average_weights():
            self.model.load_weights(filepath)


class _OneRun(keras.callbacks.Callback):
    """Forwards every hook to `callbacks`, but `on_train_begin`/`on_train_end` once per run.

    Each stage is one `fit` call; wrapped this way the user's callbacks see one training run
    (TensorBoard keeps its writers and step counter, EarlyStopping its best value and
    patience, ModelCheckpoint its best value).
    """

    def __init__(self, callbacks):
        super().__init__()
        self.callbacks = list(callbacks)
        self.first = True
        self.last = False
        self.begun = False

    def set_model(self, model):
        super().set_model(model)
        for callback in self.callbacks:
            callback.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        for callback in self.callbacks:
            callback.set_params(params)

    def _forward(self, hook, *args, **kwargs):
        for callback in self.callbacks:
            getattr(callback, hook)(*args, **kwargs)

    def on_train_begin(self, logs=None):
        if not self.begun:
            self.begun = True
            self._forward('on_train_begin', logs)

    def on_train_end(self, logs=None):
        if self.last or self.model.stop_training:
            self._forward('on_train_end', logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._forward('on_epoch_begin', epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._forward('on_epoch_end', epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        self._forward('on_train_batch_begin', batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self._forward('on_train_batch_end', batch, logs)

    def on_test_begin(self, logs=None):
        self._forward('on_test_begin', logs)

    def on_test_end(self, logs=None):
        self._forward('on_test_end', logs)

    def on_test_batch_begin(self, batch, logs=None):
        self._forward('on_test_batch_begin', batch, logs)

    def on_test_batch_end(self, batch, logs=None):
        self._forward('on_test_batch_end', batch, logs)


class ProgressiveHistory:
    """What `fit_progressive` returns.

    Attributes:
        stages: list of `(Stage, keras.callbacks.History)`, one per stage trained by this call.
        history: the stages' histories merged: metric name -> list over all epochs trained.
        epoch: the epoch numbers trained (0-based, as Keras counts them).
        ema: the `ModelEMA` callback, or None.
        plan: the `StagePlan`.
        stopped_early: whether a callback stopped training before the plan's end.
    """

    def __init__(self, plan, ema):
        self.plan = plan
        self.ema = ema
        self.stages = []
        self.history = {}
        self.epoch = []
        self.stopped_early = False

    def _add(self, stage, history):
        self.stages.append((stage, history))
        self.epoch.extend(history.epoch)
        for key, values in history.history.items():
            self.history.setdefault(key, []).extend(values)


def _check_input_size(model, size):
    for tensor in getattr(model, 'inputs', None) or []:
        shape = tuple(tensor.shape)
        if len(shape) == 4:
            spatial = shape[1:3] if shape[-1] in (1, 3, 4) or shape[1] is None else shape[2:4]
            if any(d is not None and d != size for d in spatial):
                raise ValueError(
                    f'The model takes images of fixed size {shape[1:]} but the plan trains at '
                    f'{size} px. Build it with input_shape=(None, None, 3) (any size) for '
                    'progressive learning.'
                )


def _restore(model, path):
    """Loads a `.keras` or `.weights.h5` checkpoint into the compiled model (optimizer too)."""
    path = str(path)
    if not path.endswith(CHECKPOINT_SUFFIXES):
        raise ValueError(
            'Argument `resume_from` must be a {} file; received {!r}.'.format(
                ' or '.join(CHECKPOINT_SUFFIXES), path
            )
        )
    if not os.path.exists(path):
        raise ValueError(f'Argument `resume_from` names a missing file: {path!r}.')
    optimizer = getattr(model, 'optimizer', None)
    if path.endswith('.keras') and optimizer is not None and not optimizer.built:
        # A .keras file holds the optimizer's variables; Keras skips them unless it is built.
        optimizer.build(model.trainable_variables)
    model.load_weights(path)


def fit_progressive(
    model,
    dataset_fn,
    plan,
    epochs=None,
    steps_per_epoch=None,
    validation_data=None,
    validation_steps=None,
    validation_freq=1,
    callbacks=None,
    ema=None,
    initial_epoch=0,
    resume_from=None,
    verbose='auto',
    **fit_kwargs,
):
    """Trains a compiled Keras model with progressive learning, one `model.fit` per stage.

    Args:
        model: a compiled `keras.Model` taking images of any size (this project's models by
            default). It is never recompiled: optimizer slots, step and schedule carry over.
        dataset_fn: `dataset_fn(stage) -> tf.data.Dataset` of `(images, labels)` at
            `stage.image_size`, with RandAugment `stage.ram` and mixup/CutMix
            `stage.mixup_alpha`/`stage.cutmix_alpha` (e.g. `efficientnetv2.data.build_dataset`).
            Called once per stage, when the stage starts. Any input `model.fit` takes works:
            a `keras.utils.PyDataset`, a torch `DataLoader`, a grain dataset, or an
            `(x, y)` tuple of arrays (then pass `batch_size=`).
        plan: a `progressive.StagePlan` (`progressive_plan(...)`, `config.stage_plan(...)` or
            `progressive.build_stage_plan(...)`), counted in epochs or in steps (see
            `stage_epochs`).
        epochs: total epochs; default `plan.total_steps` (a plan counted in epochs).
        steps_per_epoch: batches per epoch; needed for an infinite (repeated) dataset.
        validation_data: a dataset, or `fn(stage) -> dataset`, passed to `fit`.
        validation_steps, validation_freq: passed to `fit`.
        callbacks: Keras callbacks (ModelCheckpoint, TensorBoard, EarlyStopping, ...); they see
            one run spanning all stages (see the module docstring).
        ema: None (no average), a decay (float) or a `ModelEMA`; averages weights and BN
            statistics; validation uses the averages.
        initial_epoch: the epoch to start from (resuming: the number of epochs done).
        resume_from: a `.keras` or `.weights.h5` checkpoint loaded before training (a `.keras`
            file also restores the optimizer); training continues at `initial_epoch`, in the
            stage that contains it. When `ema` has a `filepath` that exists, the averages are
            read back too; otherwise they restart from the loaded weights.
        verbose: passed to `fit`.
        **fit_kwargs: other `fit` arguments (class_weight, ...); not `epochs`, `x`, `y`.

    Returns:
        A `ProgressiveHistory`.
    """
    if getattr(model, 'optimizer', None) is None or not getattr(model, 'compiled', True):
        raise ValueError(
            'Argument `model` must be compiled (model.compile(optimizer, loss)) '
            'before fit_progressive.'
        )
    if not callable(dataset_fn):
        raise ValueError(
            'Argument `dataset_fn` must be a function stage -> tf.data.Dataset; '
            f'received {dataset_fn!r}.'
        )
    if not isinstance(plan, progressive.StagePlan):
        raise ValueError(
            'Argument `plan` must be a StagePlan (progressive_plan(...), '
            'config.stage_plan(...) or progressive.build_stage_plan(...)); '
            f'received {plan!r}.'
        )
    for key in ('x', 'y', 'epochs', 'initial_epoch'):
        if key in fit_kwargs:
            raise ValueError(
                f'fit_progressive sets `{key}` itself; remove it from the fit arguments.'
            )
    schedule = stage_epochs(plan, epochs)
    total_epochs = schedule[-1][2]
    initial_epoch = int(initial_epoch)
    if not 0 <= initial_epoch <= total_epochs:
        raise ValueError(
            f'Argument `initial_epoch` must be in [0, {total_epochs}]; received {initial_epoch!r}.'
        )
    if isinstance(ema, ModelEMA):
        ema_callback = ema
    elif ema:
        ema_callback = ModelEMA(decay=float(ema))
    else:
        ema_callback = None

    if resume_from is not None:
        _restore(model, resume_from)
        logging.info('Resumed from %s at epoch %d.', resume_from, initial_epoch)
    optimizer = model.optimizer
    if initial_epoch and steps_per_epoch and int(optimizer.iterations) == 0:
        # A weights-only checkpoint: start the step counter (schedule, EMA warm-up) where the
        # epochs done put it.
        optimizer.iterations.assign(initial_epoch * int(steps_per_epoch))
    if ema_callback is not None:
        ema_callback.set_model(model)
        ema_callback.build(model)
        if initial_epoch and ema_callback.filepath and os.path.exists(ema_callback.filepath):
            ema_callback.restore()
            logging.info('EMA averages read back from %s.', ema_callback.filepath)

    result = ProgressiveHistory(plan, ema_callback)
    todo = [entry for entry in schedule if entry[2] > initial_epoch]
    user = _OneRun(callbacks or [])
    for position, (stage, first, end) in enumerate(todo):
        start = max(first, initial_epoch)
        _check_input_size(model, stage.image_size)
        changed = set_dropout(model, stage.dropout_rate)
        if changed and not _backend.is_tensorflow():
            # JAX / PyTorch: every dropout rate (ours too) is baked into the compiled step.
            # `fit` builds a new one (after recording the state's shardings, which must
            # include the optimizer's slots: hence not make_train_function here).
            model.train_function = None
        elif changed and not _has_adaptive_dropout(model):
            # Keras' Dropout bakes its rate into the trace: rebuild the train function.
            model.make_train_function(force=True)
        logging.info(
            'Stage %d/%d: epochs %d-%d, image size %d, RandAugment %.2f, mixup %.3f, '
            'cutmix %.3f, dropout %.3f%s.',
            stage.index + 1,
            len(plan),
            first,
            end,
            stage.image_size,
            stage.ram,
            stage.mixup_alpha,
            stage.cutmix_alpha,
            stage.dropout_rate,
            f' (resuming at epoch {start})' if start > first else '',
        )
        if not changed and stage.dropout_rate:
            logging.info(
                'The model has no adjustable dropout: the stage rate %.3f is not applied.',
                stage.dropout_rate,
            )
        dataset = dataset_fn(stage)
        if (
            steps_per_epoch is None
            and _backend.is_tf_dataset(dataset)
            and dataset.cardinality() == _backend.tensorflow_if_loaded().data.INFINITE_CARDINALITY
        ):
            raise ValueError(
                'dataset_fn returned an infinite (repeated) dataset: pass steps_per_epoch.'
            )
        validation = validation_data(stage) if callable(validation_data) else validation_data
        stage_kwargs = dict(fit_kwargs)
        if _backend.is_tf_dataset(dataset):
            stage_kwargs.setdefault('shuffle', False)  # A dataset shuffles itself.
        user.last = position == len(todo) - 1
        stage_callbacks = [user] if ema_callback is None else [ema_callback, user]
        x, y = dataset, None
        if isinstance(dataset, tuple) and len(dataset) == 2:
            x, y = dataset  # (x, y) arrays: `fit` takes them as two arguments.
        history = model.fit(
            x,
            y,
            epochs=end,
            initial_epoch=start,
            steps_per_epoch=steps_per_epoch,
            validation_data=validation,
            validation_steps=validation_steps,
            validation_freq=validation_freq,
            callbacks=stage_callbacks,
            verbose=verbose,
            **stage_kwargs,
        )
        result._add(stage, history)
        if model.stop_training:
            result.stopped_early = position < len(todo) - 1 or (len(history.epoch) < end - start)
            logging.info(
                'Training stopped by a callback in stage %d at epoch %d.',
                stage.index + 1,
                (history.epoch or [start])[-1] + 1,
            )
            break
    return result


def stages_per_epoch(plan, epochs=None):
    """The stage index of each epoch (a list of length `epochs`); handy for resuming logic."""
    indices = []
    for stage, first, end in stage_epochs(plan, epochs):
        indices.extend([stage.index] * (end - first))
    return indices
