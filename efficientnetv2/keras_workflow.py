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
import numpy as np

from efficientnetv2 import _backend
from efficientnetv2 import variables as variables_lib
from efficientnetv2.train import portable_ema
from efficientnetv2.train import progressive
from efficientnetv2.train import schedules

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
    used as is. A plan counted in steps (e.g. `progressive.plan_for_config(config, total_steps)`)
    is scaled: stage `i` starts at epoch `floor(start_step * epochs / total_steps)`, the same
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
            end of every epoch, and `fit_progressive` reads them back when it resumes. The file
            holds the model's averaged variables only (no optimizer state: that belongs to the
            checkpoint), records the epochs done and the optimizer step it was saved at, and is
            replaced atomically; the one it replaces is kept as `<name>.previous.weights.h5`.
            So whenever the process is killed, the averages saved at the checkpoint's epoch are
            on disk (the EMA file is written just before the checkpoint of the same epoch).

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
            self.save(epoch=epoch + 1)

    @property
    def previous_filepath(self):
        """Where the averages saved before the latest ones are kept (None without `filepath`)."""
        return None if self.filepath is None else _previous_path(self.filepath)

    def save(self, filepath=None, epoch=None):
        """Writes the averages to `filepath` (default: `self.filepath`) with the model's layout.

        Only the model's variables are written (the optimizer's state belongs to the
        checkpoint), with the epochs done (`epoch`) and the optimizer step recorded in the
        file. The file is written under a temporary name and renamed into place, the file it
        replaces becoming `<name>.previous.weights.h5`: a kill at any moment leaves complete
        files, the latest or the one before it matching the newest checkpoint.
        """
        import h5py

        self._require()
        filepath = str(filepath or self.filepath)
        partial = filepath[: -len('.weights.h5')] + '.partial.weights.h5'
        with self.average_weights():
            _save_model_weights(self.model, partial)
        with h5py.File(partial, 'a') as store:
            store.attrs[_EMA_EPOCH_ATTR] = -1 if epoch is None else int(epoch)
            store.attrs[_EMA_STEP_ATTR] = _optimizer_step(self.model)
        if os.path.exists(filepath):
            os.replace(filepath, _previous_path(filepath))
        os.replace(partial, filepath)

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

    def restore(self, filepath=None, epoch=None):
        """Reads averaged weights saved by `save` into the shadows (model unchanged).

        The optimizer is never touched: its state comes from the checkpoint alone. Non-averaged
        variables (none in this project's models) take the file's values.

        Args:
            filepath: the file to read; default `self.filepath`.
            epoch: when given (resuming after `epoch` epochs), only averages saved at the end
                of that epoch are read, from `filepath` or the file it replaced
                (`previous_filepath`), and only if the step they record is the optimizer's
                (when the optimizer has one); others are ignored, with a warning.

        Returns:
            The path read, or None when `epoch` was given and no saved averages match it.
        """
        filepath = str(filepath or self.filepath)
        self.build()
        if epoch is not None:
            step = _optimizer_step(self.model)
            found = []
            for path in (filepath, _previous_path(filepath)):
                saved = _ema_file_record(path)
                if saved is None:
                    continue
                found.append(f'{path} (epoch {saved[0]}, step {saved[1]})')
                if saved[0] == int(epoch) and (not step or saved[1] == step):
                    filepath = path
                    break
            else:
                logging.warning(
                    'No saved EMA averages match the resumed state (epoch %d, optimizer step '
                    '%d); found: %s. The averages restart from the restored weights.',
                    int(epoch),
                    step,
                    '; '.join(found) or 'none',
                )
                return None
        skip = [self.model.optimizer] if getattr(self.model, 'optimizer', None) else []
        with self.average_weights():
            self.model.load_weights(filepath, objects_to_skip=skip)
        return filepath


_EMA_EPOCH_ATTR = 'efficientnetv2_ema_epoch'
_EMA_STEP_ATTR = 'efficientnetv2_ema_step'


def _previous_path(filepath):
    return filepath[: -len('.weights.h5')] + '.previous.weights.h5'


def _optimizer_step(model):
    optimizer = getattr(model, 'optimizer', None)
    return int(optimizer.iterations) if optimizer is not None else 0


def _save_model_weights(model, filepath):
    """`model.save_weights(filepath)` without the optimizer's variables."""
    from keras.src.saving import saving_lib

    optimizer = getattr(model, 'optimizer', None)
    saving_lib.save_weights_only(
        model, filepath, objects_to_skip=[optimizer] if optimizer is not None else None
    )


def _ema_file_record(path):
    """(epochs done, optimizer step) recorded in an EMA file; None if missing or unrecorded."""
    import h5py

    if not os.path.exists(path):
        return None
    try:
        with h5py.File(path, 'r') as store:
            if _EMA_EPOCH_ATTR not in store.attrs:
                return None
            return int(store.attrs[_EMA_EPOCH_ATTR]), int(store.attrs[_EMA_STEP_ATTR])
    except OSError:  # Not a readable HDF5 file.
        return None


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


# fit_progressive's defaults for the stage learning rate (see schedules.ResizeWarmup): each
# stage's rate times (size / final size) ** resize_lr_power (None: by the optimizer, see
# `resize_lr_power_for`), and ramped up again over the first RESIZE_WARMUP share of each stage
# that starts at a larger image size.
RESIZE_LR_POWER = None
RESIZE_WARMUP = 0.2


def resize_lr_power_for(optimizer):
    """The stage-rate power that fits `optimizer`: 1 where its step grows with the gradient,
    0 where it divides the gradient by the gradient's own running scale.

    Small images give larger gradients (docs/progressive.md). Plain and momentum SGD step in
    proportion, and so does the recipe's `RMSPropTF1`, whose epsilon (1e-3) stays above its
    mean square: those get each stage's rate times `size / final size`. Adam, AdamW, Keras'
    RMSprop (epsilon 1e-7) and the like normalise the gradient, so a larger gradient is not a
    larger step; scaling their rate only slows the small stages down. Measured with Adam on the
    photo benchmark (examples/progressive_folder.py, seed 0, 10 epochs): 67.5% top-1 with the
    power 1, 77.3% with 0, against 70.3% at a fixed size.
    """
    optimizer = getattr(optimizer, 'inner_optimizer', optimizer)  # A loss-scale wrapper.
    if isinstance(optimizer, keras.optimizers.SGD):
        return 1.0
    # By name: train.optimizers imports TensorFlow, which this module must not need.
    if any(cls.__name__ == 'RMSPropTF1' for cls in type(optimizer).__mro__):
        return 1.0
    return 0.0


def second_moment_steps(optimizer):
    """About how many steps `optimizer` averages its squared gradients over, or None.

    `1 / (1 - beta_2)` for Adam-style optimizers (Adam, AdamW, Adamax, Nadam, Lamb: 1,000 at
    the default 0.999), `1 / (1 - rho)` for Keras' RMSprop and Adadelta; None for optimizers
    without such an average (SGD, Lion, Adagrad's sum).
    """
    optimizer = getattr(optimizer, 'inner_optimizer', optimizer)  # A loss-scale wrapper.
    if type(optimizer).__name__ in ('Lion', 'Adagrad'):
        return None
    for name in ('beta_2', 'rho'):
        value = getattr(optimizer, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1:
            return 1.0 / (1.0 - float(value))
    return None


def _warn_long_second_moment(optimizer, schedule, steps_per_epoch):
    """Warns when the optimizer's squared-gradient average outlasts the shortest stage.

    Gradients change scale with the image size (docs/progressive.md). An average over more
    steps than a stage has carries the earlier, smaller images' gradients into later stages:
    measured at the end of a 10-epoch photo run with Adam (beta_2 0.999, stages of 100-150
    steps), the second moment of the stem and blocks 1-5 was 13-41 times the squared gradient
    the final weights got, against 7-26 times in the fixed-size run, so the progressive run's
    early layers stepped 1.2-1.6 times shorter; over 5 seeds it ended 4.8 points under fixed.
    With beta_2 0.99 (100 steps) the same seed ended 1.3 points under fixed instead of 10.5.
    """
    optimizer = getattr(optimizer, 'inner_optimizer', optimizer)  # A loss-scale wrapper.
    memory = second_moment_steps(optimizer)
    if memory is None or not steps_per_epoch or len(schedule) < 2:
        return
    shortest = min(end - first for _, first, end in schedule) * int(steps_per_epoch)
    if memory > shortest:
        name = 'beta_2' if hasattr(optimizer, 'beta_2') else 'rho'
        logging.warning(
            '%s averages squared gradients over about %d steps (%s=%g), more than the '
            'shortest stage (%d steps): each stage then steps on the gradient scale of '
            'earlier, smaller images. For a run this short use %s <= %.3g (about %d steps; '
            'docs/progressive.md).',
            type(optimizer).__name__,
            round(memory),
            name,
            getattr(optimizer, name),
            shortest,
            name,
            1.0 - 1.0 / shortest,
            shortest,
        )


class _StageRate(keras.callbacks.Callback):
    """Fits the compiled model's own learning rate to each stage's image size.

    A learning-rate schedule is wrapped in a `schedules.ResizeWarmup` (the train function is
    retraced when a stage changes the wrapper, and the schedule is given back at the end); a
    plain (variable) rate is scaled before each batch and set back after the run.
    """

    def __init__(self, model, power, fraction):
        super().__init__()
        self.power = float(power)
        self.fraction = float(fraction)
        self.optimizer = model.optimizer
        self.original = self.optimizer._learning_rate
        base = self.original
        if isinstance(base, schedules.ResizeWarmup):  # From a resumed .keras checkpoint.
            base = base.base
        self.base = base
        self.is_schedule = isinstance(base, keras.optimizers.schedules.LearningRateSchedule)
        self.ramps = []
        self.scales = []
        self.scale = 1.0  # The current stage's.
        self._rate = None  # The unscaled plain rate while it is scaled.
        self._stage_step = 0  # The optimizer step at the start of this epoch (counted).

    def stage_start(self, model, plan, stage, first, start, end, steps_per_epoch):
        """Sets the rate of `stage` (epochs `first`-`end`, trained from epoch `start`)."""
        step = int(self.optimizer.iterations)
        self._stage_step = step
        changed = False
        scale = (stage.image_size / plan.stages[-1].image_size) ** self.power
        if scale != self.scale or (self.scales and self.scales[-1][1] != scale):
            self.scales.append((step, scale))
            changed = True
        self.scale = scale
        previous = plan[stage.index - 1] if stage.index else None
        grows = previous is not None and stage.image_size > previous.image_size
        if grows and self.fraction:
            if steps_per_epoch:
                begin = step - (start - first) * steps_per_epoch
                length = int(round(self.fraction * (end - first) * steps_per_epoch))
                if length and begin + length > step:
                    self.ramps.append((begin, length))
                    changed = True
                    logging.info(
                        'Stage %d: the learning rate ramps up over steps %d-%d.',
                        stage.index + 1,
                        begin,
                        begin + length,
                    )
            else:
                logging.warning(
                    'resize_warmup: the number of steps per epoch is unknown (pass '
                    'steps_per_epoch); stage %d starts without a learning-rate ramp.',
                    stage.index + 1,
                )
        if scale != 1:
            logging.info(
                'Stage %d: learning rate x %.3f for its image size.', stage.index + 1, scale
            )
        if changed and self.is_schedule:
            self.optimizer.learning_rate = schedules.ResizeWarmup(
                self.base, self.ramps, self.scales
            )
            _rebuild_train_function(model)

    def on_epoch_end(self, epoch, logs=None):
        steps = self.params.get('steps') if self.params else None
        if steps:
            self._stage_step += steps
        else:  # Unknown length: one read per epoch.
            self._stage_step = int(self.optimizer.iterations)

    def _factor(self, step):
        factor = self.scale
        for begin, length in self.ramps:
            if begin <= step < begin + length:
                factor *= (step - begin + 1) / length
        return factor

    def on_train_batch_begin(self, batch, logs=None):
        if self.is_schedule:
            return
        # The step is counted here from the stage's start, not read from the optimizer: a
        # read every batch would wait for the device (JAX, PyTorch) each step.
        step = self._stage_step + batch
        factor = self._factor(step)
        if factor != 1.0:
            if self._rate is None:
                self._rate = float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))
            self.optimizer.learning_rate = self._rate * factor
        elif self._rate is not None:
            self.optimizer.learning_rate = self._rate
            self._rate = None

    def restore(self, model):
        """Gives the optimizer its own rate back."""
        if self.is_schedule and (self.ramps or self.scales):
            self.optimizer.learning_rate = self.original
            _rebuild_train_function(model)
        elif self._rate is not None:
            self.optimizer.learning_rate = self._rate
            self._rate = None


def _rebuild_train_function(model):
    """Makes the next `fit` trace its train step again (a new rate schedule, dropout)."""
    if _backend.is_tensorflow():
        model.make_train_function(force=True)
    else:
        # JAX / PyTorch: `fit` builds a new step after recording the state's shardings, which
        # must include the optimizer's slots (make_train_function here broke DataParallel).
        model.train_function = None


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


_SPARSE_LOSSES = ('sparse_categorical_crossentropy', 'SparseCategoricalCrossentropy')
_ONE_HOT_LOSSES = (
    'categorical_crossentropy',
    'CategoricalCrossentropy',
    'categorical_focal_crossentropy',
    'CategoricalFocalCrossentropy',
)


def _loss_name(model):
    loss = getattr(model, 'loss', None)
    if isinstance(loss, str):
        return loss
    if isinstance(loss, keras.losses.Loss):
        return type(loss).__name__
    return getattr(loss, '__name__', None)


def _num_classes(model):
    """The width of the model's single output, or None when it cannot be read cheaply."""
    outputs = getattr(model, 'outputs', None) or []  # Functional models.
    if len(outputs) == 1 and len(outputs[0].shape) == 2:
        return outputs[0].shape[-1]
    if getattr(model, 'include_top', False) and isinstance(getattr(model, 'num_classes', 0), int):
        return model.num_classes  # This project's models.
    return None


def _input_channels(model):
    """Channels of the model's image input: 3 unless its inputs say otherwise; None: no image."""
    inputs = getattr(model, 'inputs', None) or []  # Functional models.
    if len(inputs) != 1:
        return 3
    shape = tuple(inputs[0].shape)
    if len(shape) != 4:
        return None
    return shape[-1] or 3


def _static_spec(spec):
    """Whether a dataset's `element_spec` shows all that `_check_stage_data` checks."""
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        return False
    tf = _backend.tensorflow_if_loaded()
    if tf is None or not all(isinstance(part, tf.TensorSpec) for part in spec[:2]):
        return False
    images, labels = spec[0].shape, spec[1].shape
    if images.rank is None or labels.rank is None or spec[1].dtype.is_integer:
        return False  # Class indices: their values are checked too.
    return None not in images[1:] and None not in labels[1:]


def _check_stage_data(model, dataset, stage, steps_per_epoch):
    """Checks what `dataset_fn(stage)` returned, from its length and its first batch.

    A dataset whose `element_spec` gives every size but the batch's (as `data.build_dataset`
    does) is checked from it; otherwise one batch is read (`take(1)` of a dataset, item 0 of a
    PyDataset). Python generators are not read, since that would consume them. Raises a
    ValueError naming `dataset_fn`, the stage and what it asked for, instead of an error deep
    inside Keras or a stage silently trained at another size.
    """
    size = stage.image_size
    asked = f'dataset_fn(stage) for stage {stage.index} (image size {size})'
    channels = _input_channels(model)
    expected = f'[batch, {size}, {size}, {channels}]'
    if dataset is None:
        raise ValueError(
            f'{asked} returned None; it must return a tf.data.Dataset (or a '
            'keras.utils.PyDataset) of (images, labels) batches.'
        )
    tf = _backend.tensorflow_if_loaded()
    if _backend.is_tf_dataset(dataset):
        length = int(dataset.cardinality())
        if steps_per_epoch is None and length == tf.data.INFINITE_CARDINALITY:
            raise ValueError(
                f'{asked} returned a dataset that repeats forever, so model.fit would never end '
                'its first epoch: pass steps_per_epoch (e.g. the number of training images // '
                'batch size).'
            )
        if steps_per_epoch is None and length == tf.data.UNKNOWN_CARDINALITY:
            logging.warning(
                'The length of the dataset %s returned is unknown: if it repeats, its first '
                'epoch never ends. Pass steps_per_epoch.',
                asked,
            )
        batch = dataset.element_spec
        if not _static_spec(batch):
            batch = next(iter(dataset.take(1)), None)
            if batch is None:
                raise ValueError(f'{asked} returned an empty dataset.')
    elif isinstance(dataset, keras.utils.PyDataset):
        batch = dataset[0]
    elif (
        isinstance(dataset, tuple)
        and len(dataset) == 2
        and all(hasattr(part, 'shape') for part in dataset)
    ):
        batch = dataset  # (x, y) arrays, passed to fit with batch_size=.
    elif isinstance(dataset, (tuple, list, dict)) or hasattr(dataset, 'shape'):
        raise ValueError(
            f'{asked} returned a {type(dataset).__name__}; it must return a tf.data.Dataset '
            '(or a keras.utils.PyDataset) of (images, labels) batches, e.g. '
            'tf.data.Dataset.from_tensor_slices((images, labels)).batch(32).'
        )
    else:
        return
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        kind = type(batch).__name__
        if len(getattr(batch, 'shape', ())) == 4:
            kind = f'images alone (shape {tuple(batch.shape)}) without labels'
        raise ValueError(
            f'{asked} yields {kind}; it must yield (images, labels) batches '
            '(or (images, labels, sample_weights)).'
        )
    images, labels = batch[0], batch[1]
    shape = tuple(getattr(images, 'shape', ()))
    if channels is not None and (len(shape) != 4 or shape[-1] != channels):
        raise ValueError(
            f'{asked} yields images of shape {shape}; expected {expected} (channels last).'
        )
    if channels is not None and shape[1:3] != (size, size):
        raise ValueError(
            f'{asked} yields images of {shape[1]}x{shape[2]} px; this stage trains at '
            f'{size}x{size} px ({expected}): build its data at stage.image_size.'
        )
    if labels is None or not hasattr(labels, 'shape'):
        raise ValueError(f'{asked} yields no labels ({labels!r}); it must yield (images, labels).')
    if tf is None or not isinstance(labels, tf.TensorSpec):
        labels = np.asarray(labels)
    label_shape = tuple(labels.shape)
    num_classes = _num_classes(model)
    loss = _loss_name(model)
    wanted = (
        f'[batch, {num_classes}] one-hot or [batch] class indices'
        if num_classes
        else '[batch, num_classes] one-hot or [batch] class indices'
    )
    rank_ok = len(label_shape) in (1, 2)
    sizes = (shape[0] if shape else None, label_shape[0] if rank_ok else None)
    if not rank_ok or (None not in sizes and sizes[0] != sizes[1]):
        raise ValueError(
            f'{asked} yields labels of shape {label_shape} with images of shape {shape}; '
            f'expected labels {wanted}.'
        )
    indices = len(label_shape) == 1 or label_shape[1] == 1
    if num_classes and not indices and label_shape[1] != num_classes:
        raise ValueError(
            f'{asked} yields labels for {label_shape[1]} classes (shape {label_shape}); the '
            f"model's head has {num_classes} classes."
        )
    if indices and loss in _ONE_HOT_LOSSES:
        raise ValueError(
            f'{asked} yields class indices (labels of shape {label_shape}) but the loss '
            f'{loss} takes one-hot labels of shape [batch, {num_classes or "num_classes"}].'
        )
    if not indices and loss in _SPARSE_LOSSES:
        raise ValueError(
            f'{asked} yields one-hot labels of shape {label_shape} but the loss {loss} takes '
            'class indices of shape [batch].'
        )
    values = isinstance(labels, np.ndarray) and indices and labels.size
    integers = values and np.issubdtype(labels.dtype, np.integer)
    if integers and num_classes and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f'{asked} yields class indices from {labels.min()} to {labels.max()}; the '
            f"model's head has {num_classes} classes (0 to {num_classes - 1})."
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
    resize_lr_power=RESIZE_LR_POWER,
    resize_warmup=RESIZE_WARMUP,
    **fit_kwargs,
):
    """Trains a compiled Keras model with progressive learning, one `model.fit` per stage.

    Args:
        model: a compiled `keras.Model` taking images of any size (this project's models by
            default). It is never recompiled: optimizer slots, step and schedule carry over.
        dataset_fn: `dataset_fn(stage) -> tf.data.Dataset` of `(images, labels)` at
            `stage.image_size`, with RandAugment `stage.ram` and mixup/CutMix
            `stage.mixup_alpha`/`stage.cutmix_alpha` (e.g. `efficientnetv2.data.build_dataset`).
            Called once per stage, when the stage starts; its first batch is checked (image
            size and channels, label shape and classes against the model's head and loss).
            Any input `model.fit` takes works: a `keras.utils.PyDataset`, a torch
            `DataLoader`, a grain dataset, or an `(x, y)` tuple of arrays (then pass
            `batch_size=`).
        plan: a `progressive.StagePlan` (`progressive_plan(...)`,
            `progressive.plan_for_config(...)` or `progressive.build_stage_plan(...)`), counted
            in epochs or in steps (see `stage_epochs`).
        epochs: total epochs; default `plan.total_steps` (a plan counted in epochs).
        steps_per_epoch: batches per epoch; needed for an infinite (repeated) dataset, as
            `data.build_dataset` makes for training: without it that is refused at once.
        validation_data: a dataset, or `fn(stage) -> dataset`, passed to `fit`.
        validation_steps, validation_freq: passed to `fit`.
        callbacks: Keras callbacks (ModelCheckpoint, TensorBoard, EarlyStopping, ...); they see
            one run spanning all stages (see the module docstring).
        ema: None (no average), a decay (float) or a `ModelEMA`; averages weights and BN
            statistics; validation uses the averages.
        initial_epoch: the epoch to start from (resuming: the number of epochs done).
        resume_from: a `.keras` or `.weights.h5` checkpoint loaded before training (a `.keras`
            file also restores the optimizer); training continues at `initial_epoch`, in the
            stage that contains it. The weights and the optimizer's state (step counter,
            moments) come from this checkpoint alone. When `ema` has a `filepath`, the
            averages saved at the end of epoch `initial_epoch` at the checkpoint's optimizer
            step are read back (see `ModelEMA`); if none were saved, or only at other epochs,
            they restart from the loaded weights, with a warning.
        verbose: passed to `fit`.
        resize_lr_power: each stage trains at the optimizer's rate times
            `(stage size / final size) ** resize_lr_power`; 0: the same rate at every size.
            Smaller images give larger gradients, and for an optimizer whose step follows the
            gradient the first, smallest stage at the full rate can wreck the run (see
            `efficientnetv2.train.schedules.ResizeWarmup`). None (default): 1 for SGD and
            `RMSPropTF1`, 0 for optimizers that normalise the gradient, such as Adam
            (`resize_lr_power_for`).
        resize_warmup: share (0-1) of each stage that starts at a larger image size during
            which the rate ramps up linearly again from near 0; 0: off. At a new size the
            early layers' gradients are many times larger than at the size just trained.
            Needs the steps per epoch (`steps_per_epoch` or a dataset of known length).
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
            'progressive.plan_for_config(...) or progressive.build_stage_plan(...)); '
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
        if initial_epoch and ema_callback.filepath:
            # Only averages saved at the end of the resumed epoch, never the optimizer state.
            path = ema_callback.restore(epoch=initial_epoch)
            if path:
                logging.info('EMA averages of epoch %d read back from %s.', initial_epoch, path)

    if resize_lr_power is None and model.optimizer is not None:
        resize_lr_power = resize_lr_power_for(model.optimizer)
        logging.info(
            'Stage learning rates: resize_lr_power=%g for %s.',
            resize_lr_power,
            type(model.optimizer).__name__,
        )
    for name, value, high in (
        ('resize_warmup', resize_warmup, 1.0),
        ('resize_lr_power', resize_lr_power, float('inf')),
    ):
        if not (isinstance(value, (int, float)) and not isinstance(value, bool)) or not (
            0 <= value <= high
        ):
            bound = 'in [0, 1]' if high == 1.0 else '>= 0'
            raise ValueError(f'Argument `{name}` must be a number {bound}; received {value!r}.')
    ramp = None
    if resize_warmup or resize_lr_power:
        ramp = _StageRate(model, resize_lr_power, resize_warmup)
    result = ProgressiveHistory(plan, ema_callback)
    todo = [entry for entry in schedule if entry[2] > initial_epoch]
    user = _OneRun(callbacks or [])
    try:
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
            _check_stage_data(model, dataset, stage, steps_per_epoch)
            if position == 0:
                _warn_long_second_moment(optimizer, schedule, steps_per_epoch or _steps_in(dataset))
            validation = validation_data(stage) if callable(validation_data) else validation_data
            stage_kwargs = dict(fit_kwargs)
            if _backend.is_tf_dataset(dataset):
                stage_kwargs.setdefault('shuffle', False)  # A dataset shuffles itself.
            user.last = position == len(todo) - 1
            stage_callbacks = [user] if ema_callback is None else [ema_callback, user]
            if ramp is not None:
                ramp.stage_start(
                    model, plan, stage, first, start, end, steps_per_epoch or _steps_in(dataset)
                )
                stage_callbacks.insert(0, ramp)
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
                stopped_inside = len(history.epoch) < end - start
                result.stopped_early = position < len(todo) - 1 or stopped_inside
                logging.info(
                    'Training stopped by a callback in stage %d at epoch %d.',
                    stage.index + 1,
                    (history.epoch or [start])[-1] + 1,
                )
                break
    finally:
        if ramp is not None:
            ramp.restore(model)
    return result


def _steps_in(dataset):
    """The number of batches of a finite dataset of known length, else None."""
    if _backend.is_tf_dataset(dataset):
        count = int(dataset.cardinality())
        return count if count > 0 else None
    try:
        return len(dataset) or None
    except TypeError:
        return None


def stages_per_epoch(plan, epochs=None):
    """The stage index of each epoch (a list of length `epochs`); handy for resuming logic."""
    indices = []
    for stage, first, end in stage_epochs(plan, epochs):
        indices.extend([stage.index] * (end - first))
    return indices
