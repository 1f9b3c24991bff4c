"""Optimizers: RMSProp with TF1 semantics and a small name-based factory.

The official EfficientNet(V2) ImageNet runs use TF1's
`tf.compat.v1.train.RMSPropOptimizer` (decay 0.9, momentum 0.9, epsilon 1e-3).
Keras' `RMSprop` differs in one detail that matters early in training: its
mean-square accumulator starts at 0, whereas TF1 starts it at 1. With a zero
start and epsilon 1e-3 the first updates are up to ~3x `lr * sign(g)`, while
TF1's are about `lr * g`. `RMSPropTF1` reproduces the TF1 update exactly.
"""

import keras
from keras import ops
import tensorflow as tf

from efficientnetv2.config import OPTIMIZER_NAMES

_PACKAGE = 'efficientnetv2'


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RMSPropTF1(keras.optimizers.Optimizer):
    """RMSProp with the semantics of TF1 `tf.compat.v1.train.RMSPropOptimizer`.

    Non-centered RMSProp with plain momentum. Per variable `w` with gradient
    `g` and learning rate `lr`:

        ms  <- ms + (g^2 - ms) * (1 - rho)        # = rho*ms + (1-rho)*g^2
        mom <- momentum * mom + lr * g / sqrt(ms + epsilon)
        w   <- w - mom

    with `ms` initialised to 1.0 and `mom` to 0.0. Epsilon sits inside the
    square root. The arithmetic follows the order of TF's `ApplyRMSProp`
    kernel, so trajectories agree with TF1 to float32 round-off.

    Slot variables are named `<variable path>_ms` and `<variable path>_mom`
    (see `optimizer.variables`). In a `tf.train.Checkpoint` they are stored
    under the optimizer's `_variables/<index>` keys like every Keras 3
    optimizer variable.

    Distribution and precision: the update runs through the Keras 3 TF
    optimizer machinery, so under `tf.distribute` the gradients are
    all-reduced with SUM across replicas (scale per-replica losses by
    `1 / global_batch_size`) and the update is applied on every replica's
    copy. It can be wrapped in `keras.optimizers.LossScaleOptimizer` for
    mixed precision; gradients are cast to the variable dtype (float32 under
    the `mixed_*` policies). Build it under `strategy.scope()` before the
    first distributed step (`optimizer.build(model.trainable_variables)`):
    Keras 3 optimizers cannot create their variables lazily inside
    `strategy.run` in a `tf.function` (the graph fails at run time).

    Sparse gradients (`tf.IndexedSlices`) are densified, so rows without a
    gradient are still decayed; TF1's sparse kernel leaves those rows alone.
    Convolutional networks never produce sparse gradients.

    Args:
        learning_rate: Float, `LearningRateSchedule` or zero-argument callable.
        rho: Discount factor of the mean-square accumulator (TF1 `decay`).
        momentum: Momentum coefficient, in [0, 1).
        epsilon: Added to the mean square inside the square root.
        name: Optimizer name.
        **kwargs: Other `keras.optimizers.Optimizer` arguments (`clipnorm`,
            `global_clipnorm`, `loss_scale_factor`, ...).
    """

    def __init__(
        self,
        learning_rate=0.001,
        rho=0.9,
        momentum=0.9,
        epsilon=1e-3,
        name='rmsprop_tf1',
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        _check_fraction('rho', rho, allow_zero=True)
        _check_fraction('momentum', momentum, allow_zero=True)
        if not epsilon > 0:
            raise ValueError(
                f'Argument `epsilon` must be a positive float; received: epsilon={epsilon!r}.'
            )
        self.rho = float(rho)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)

    def build(self, var_list):
        """Creates the `ms` (ones) and `mom` (zeros) slots for `var_list`."""
        if self.built:
            return
        super().build(var_list)
        self._ms_slots = self.add_optimizer_variables(var_list, 'ms', initializer='ones')
        self._mom_slots = self.add_optimizer_variables(var_list, 'mom', initializer='zeros')

    def update_step(self, gradient, variable, learning_rate):
        """Applies one TF1 RMSProp update to `variable`."""
        dtype = variable.dtype
        if isinstance(gradient, tf.IndexedSlices):
            gradient = tf.convert_to_tensor(gradient)
        gradient = ops.cast(gradient, dtype)
        lr = ops.cast(learning_rate, dtype)
        one = ops.cast(1.0, dtype)
        rho = ops.cast(self.rho, dtype)
        momentum = ops.cast(self.momentum, dtype)
        epsilon = ops.cast(self.epsilon, dtype)

        index = self._get_variable_index(variable)
        ms = self._ms_slots[index]
        mom = self._mom_slots[index]

        new_ms = ms + (ops.square(gradient) - ms) * (one - rho)
        self.assign(ms, new_ms)
        new_mom = mom * momentum + (gradient * lr) / ops.sqrt(new_ms + epsilon)
        self.assign(mom, new_mom)
        self.assign_sub(variable, new_mom)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                'rho': self.rho,
                'momentum': self.momentum,
                'epsilon': self.epsilon,
            }
        )
        return config


def _check_fraction(argument, value, allow_zero):
    """Raises ValueError unless `value` lies in [0, 1) (or (0, 1))."""
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value < 1):
        interval = '[0, 1)' if allow_zero else '(0, 1)'
        raise ValueError(
            f'Argument `{argument}` must be a float in {interval}; received: {argument}={value!r}.'
        )


def _rmsprop_tf1(learning_rate, **kwargs):
    return RMSPropTF1(learning_rate=learning_rate, **kwargs)


def _rmsprop_keras(learning_rate, **kwargs):
    settings = {'rho': 0.9, 'momentum': 0.9, 'epsilon': 1e-3}
    settings.update(kwargs)
    return keras.optimizers.RMSprop(learning_rate=learning_rate, **settings)


def _sgd(learning_rate, **kwargs):
    settings = {'momentum': 0.9, 'nesterov': False}
    settings.update(kwargs)
    return keras.optimizers.SGD(learning_rate=learning_rate, **settings)


def _adam(learning_rate, **kwargs):
    return keras.optimizers.Adam(learning_rate=learning_rate, **kwargs)


def _adamw(learning_rate, **kwargs):
    return keras.optimizers.AdamW(learning_rate=learning_rate, **kwargs)


_BUILDERS = {
    'rmsprop': _rmsprop_tf1,
    'rmsprop_keras': _rmsprop_keras,
    'sgd': _sgd,
    'adam': _adam,
    'adamw': _adamw,
}

# The names are the config's choices (`config.OPTIMIZER_NAMES`, their one source);
# tests/test_optimizers.py checks that they and `_BUILDERS` agree.


def build_optimizer(name, learning_rate, **kwargs):
    """Builds an optimizer by name.

    Names (case-insensitive):
      * `rmsprop`: `RMSPropTF1` (TF1 semantics; rho 0.9, momentum 0.9,
        epsilon 1e-3), the recipe of the paper.
      * `rmsprop_keras`: Keras `RMSprop` with the same hyper-parameters but a
        zero-initialised accumulator (what the official TF2 script uses).
      * `sgd`: Keras `SGD` with momentum 0.9; pass `nesterov=True` for
        Nesterov momentum.
      * `adam`, `adamw`: Keras `Adam` / `AdamW` with Keras defaults.

    Args:
        name: One of `OPTIMIZER_NAMES`.
        learning_rate: Float, `LearningRateSchedule` or callable.
        **kwargs: Keyword arguments of the optimizer class; they override the
            defaults listed above.

    Returns:
        A `keras.optimizers.Optimizer`.

    Raises:
        ValueError: If `name` is not a known optimizer name.
    """
    key = str(name).lower()
    if key not in _BUILDERS:
        raise ValueError(
            f'Argument `name` must be one of {list(OPTIMIZER_NAMES)}; received: name={name!r}.'
        )
    return _BUILDERS[key](learning_rate, **kwargs)
