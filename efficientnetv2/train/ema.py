"""Exponential moving average (EMA) of model weights for Keras 3 variables.

The official recipe keeps `tf.train.ExponentialMovingAverage(0.9999,
num_updates=global_step)` of every trainable variable and every batch-norm
moving mean and variance, updates it after each optimizer step, and
evaluates and exports with the averaged weights. This module does the same
for Keras 3 (TF backend) variables, inside or outside `tf.function` and
`tf.distribute`.

Typical use in a custom loop::

    with strategy.scope():
        model = ...
        optimizer = ...
        ema = ExponentialMovingAverage(ema_variables(model), decay=0.9999)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer,
                                     ema=ema)

    def step_fn(batch):          # run by strategy.run (replica context)
        ...                       # forward, backward, optimizer.apply
        ema.apply(optimizer.iterations)

    with ema.average_weights():   # cross-replica context (outside run)
        evaluate(model)
"""

import contextlib

import keras
import tensorflow as tf

from efficientnetv2.variables import ShadowPairs
from efficientnetv2.variables import ema_variables  # noqa: F401  (re-exported)
from efficientnetv2.variables import variable_name as _variable_name

SHADOW_SUFFIX = 'ExponentialMovingAverage'


def effective_decay(decay, step=None):
    """Decay actually used at `step`: `min(decay, (1 + t) / (10 + t))`.

    Args:
        decay: The target decay, e.g. 0.9999.
        step: Number of updates so far (int, tensor or variable); `None`
            disables the warm-up and returns `decay`.

    Returns:
        A float32 scalar tensor.
    """
    decay = tf.constant(decay, tf.float32)
    if step is None:
        return decay
    t = tf.cast(tf.convert_to_tensor(step), tf.float32)
    return tf.minimum(decay, (1.0 + t) / (10.0 + t))


class _Untracked:
    """Holds model variables out of sight of checkpoint dependency tracking."""

    def __init__(self, items):
        self.items = list(items)


class ExponentialMovingAverage(ShadowPairs, tf.Module):
    """Shadow copies of variables, updated as `s <- s - (1 - d) * (s - v)`.

    With `use_num_updates=True` the decay at update `t` is
    `d = min(decay, (1 + t) / (10 + t))` (0.1 at t=0, 0.918 at 100, 0.991 at
    1000), as `tf.train.ExponentialMovingAverage(decay, num_updates=t)`.

    Shadows are `tf.Variable`s held in the tracked list `shadow_variables`,
    so passing this object to `tf.train.Checkpoint` saves and restores them
    (keys `<name>/shadow_variables/<i>/...`, in the order of `variables`).
    Each shadow is named `<variable path>/ExponentialMovingAverage` and starts
    as a copy of its variable's current value.

    Distribution: create the object under the same `strategy.scope()` as the
    model, so shadows are mirrored like the weights they follow. `apply` may
    be called in replica context (inside `strategy.run`): it enters cross-
    replica context with `merge_call` and updates each replica's copy of the
    shadow from that replica's copy of the variable with
    `strategy.extended.update` (no cross-device traffic; mirrored weights are
    equal on every replica after the optimizer step). It also works in
    cross-replica context and without any strategy. `swap`,
    `average_weights` and `copy_to_model` assign whole variables and must be
    called in cross-replica context (outside `strategy.run`), eagerly or in
    a `tf.function`.

    Args:
        variables: The variables to average (Keras variables or
            `tf.Variable`s), e.g. `ema_variables(model)`.
        decay: Target decay in [0, 1).
        use_num_updates: Whether `apply(step)` uses the num-updates warm-up.
        name: Name of the module.
    """

    def __init__(self, variables, decay=0.9999, use_num_updates=True, name='ema'):
        super().__init__(name=name)
        variables = list(variables)
        if not variables:
            raise ValueError(
                'Argument `variables` must be a non-empty list of variables; '
                'received an empty list.'
            )
        if not 0.0 <= decay < 1.0:
            raise ValueError(
                f'Argument `decay` must be a float in [0, 1); received: decay={decay!r}.'
            )
        self.decay = float(decay)
        self.use_num_updates = bool(use_num_updates)
        self._model_refs = _Untracked(variables)
        self.shadow_variables = [_make_shadow(v) for v in variables]

    @property
    def model_variables(self):
        """The averaged variables, in the order of `shadow_variables`."""
        return list(self._model_refs.items)

    def apply(self, step=None):
        """Moves every shadow towards its variable by one EMA update.

        Args:
            step: Number of updates so far for the warm-up (usually
                `optimizer.iterations` after the optimizer step). Ignored
                when `use_num_updates` is False.

        Returns:
            The decay used, a float32 scalar tensor.
        """
        decay = effective_decay(self.decay, step if self.use_num_updates else None)
        replica_context = tf.distribute.get_replica_context()
        if replica_context is None:
            self._update_shadows(tf.distribute.get_strategy(), decay)
        else:
            replica_context.merge_call(self._update_shadows, args=(decay,))
        return decay

    def _update_shadows(self, strategy, decay):
        """Cross-replica body of `apply`."""

        def update(shadow, value, decay_value):
            shadow_decay = tf.cast(decay_value, shadow.dtype)
            value = tf.cast(value, shadow.dtype)
            return shadow.assign_sub((shadow - value) * (1.0 - shadow_decay))

        for model_variable, shadow in self.pairs():
            strategy.extended.update(
                shadow,
                update,
                args=(_tf_variable(model_variable), decay),
                group=False,
            )

    def copy_to_model(self):
        """Overwrites the model variables with the shadows (permanent)."""
        for model_variable, shadow in self.pairs():
            model_variable.assign(tf.cast(shadow.read_value(), model_variable.dtype))

    def reset_from_model(self):
        """Overwrites the shadows with the model variables' current values.

        Useful after restoring weights that came without averages (e.g. a
        fine-tuning start point).
        """
        for model_variable, shadow in self.pairs():
            shadow.assign(tf.cast(_read(model_variable), shadow.dtype))

    def swap(self):
        """Exchanges the values of model variables and shadows.

        Calling it twice restores the original state exactly.
        """
        for model_variable, shadow in self.pairs():
            model_value = tf.identity(_read(model_variable))
            model_variable.assign(tf.cast(shadow.read_value(), model_variable.dtype))
            shadow.assign(tf.cast(model_value, shadow.dtype))

    @contextlib.contextmanager
    def average_weights(self):
        """Context manager: model holds the averages inside, originals after.

        Example::

            with ema.average_weights():
                model.save_weights(...)   # or evaluate / export
        """
        self.swap()
        try:
            yield self
        finally:
            self.swap()


def _tf_variable(variable):
    """The `tf.Variable` (possibly distributed) behind a Keras variable."""
    if isinstance(variable, keras.Variable):
        return variable.value
    return variable


def _read(variable):
    """Current value of a Keras or TF variable as a tensor."""
    return tf.convert_to_tensor(_tf_variable(variable))


def _make_shadow(variable):
    """Creates the shadow `tf.Variable` of `variable`, initialised to it."""
    name = f'{_variable_name(variable)}/{SHADOW_SUFFIX}'
    source = _tf_variable(variable)
    return tf.Variable(
        initial_value=lambda: tf.identity(source),
        trainable=False,
        name=name,
        dtype=source.dtype,
        shape=source.shape,
    )
