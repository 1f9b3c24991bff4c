"""Exponential moving average of Keras variables on the JAX and PyTorch backends.

The same averages as `efficientnetv2.train.ema.ExponentialMovingAverage` (the TensorFlow
implementation, a `tf.Module` that `tf.train.Checkpoint` saves), with the same methods, for
backends without TensorFlow. Shadows are non-trainable `keras.Variable`s (created under the
active `keras.distribution`, so they are laid out like replicated weights).

One `apply(step)` is one fused update of every shadow, without a device-to-host copy:
- JAX: one jitted function over all shadows (`step` stays a device array);
- PyTorch: `torch._foreach_*` in-place ops (a few kernel launches for all shadows);
- any other backend: Keras ops, one variable at a time.
"""

import contextlib

import keras

from efficientnetv2.variables import ShadowPairs


def _decay_at(decay, step):
    """`min(decay, (1 + t) / (10 + t))` in Keras ops (`step` None: `decay`)."""
    if step is None:
        return keras.ops.convert_to_tensor(decay, 'float32')
    t = keras.ops.cast(step, 'float32')
    return keras.ops.minimum(decay, (1.0 + t) / (10.0 + t))


class PortableEMA(ShadowPairs):
    """Shadow copies of Keras variables, `s <- d * s + (1 - d) * v` at each `apply`.

    Args:
        variables: the Keras variables to average, e.g. `variables.ema_variables(model)`.
        decay: target decay in [0, 1).
        use_num_updates: `apply(step)` uses `min(decay, (1 + t) / (10 + t))`.
        name: a label for the shadows' names.
    """

    def __init__(self, variables, decay=0.9999, use_num_updates=True, name='ema'):
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
        self.name = name
        self._variables = variables
        self.shadow_variables = [
            keras.Variable(
                keras.ops.copy(v.value),
                trainable=False,
                dtype=v.dtype,
                name=f'{name}_{i}',
            )
            for i, v in enumerate(variables)
        ]
        self._jax_update = None

    @property
    def model_variables(self):
        """The averaged variables, in the order of `shadow_variables`."""
        return list(self._variables)

    def apply(self, step=None):
        """Moves every shadow towards its variable by one EMA update.

        Args:
            step: number of updates so far (e.g. `optimizer.iterations`), a variable, tensor
                or int; ignored unless `use_num_updates`. Never copied to the host.
        """
        step = step if self.use_num_updates else None
        if isinstance(step, keras.Variable):
            step = step.value
        backend = keras.backend.backend()
        if backend == 'jax':
            self._apply_jax(step)
        elif backend == 'torch':
            self._apply_torch(step)
        else:
            decay = _decay_at(self.decay, step)
            for variable, shadow in self.pairs():
                d = keras.ops.cast(decay, shadow.dtype)
                value = keras.ops.cast(variable.value, shadow.dtype)
                shadow.assign(shadow.value * d + value * (1.0 - d))

    def _apply_jax(self, step):
        import jax

        if self._jax_update is None:
            target = self.decay
            with_step = step is not None

            def update(shadows, values, step):
                decay = _decay_at(target, step if with_step else None)
                return [
                    s * decay.astype(s.dtype) + v.astype(s.dtype) * (1 - decay).astype(s.dtype)
                    for s, v in zip(shadows, values)
                ]

            # Donating the old shadows updates them in place (no donation on the CPU).
            donate = () if jax.default_backend() == 'cpu' else (0,)
            self._jax_update = jax.jit(update, donate_argnums=donate)
        shadows = [s.value for s in self.shadow_variables]
        values = [v.value for v in self._variables]
        step = 0 if step is None else step
        for shadow, new in zip(self.shadow_variables, self._jax_update(shadows, values, step)):
            shadow.assign(new)

    def _apply_torch(self, step):
        import torch

        with torch.no_grad():
            decay = _decay_at(self.decay, step)
            shadows = [s.value for s in self.shadow_variables]
            values = [v.value.to(s.dtype) for v, s in zip(self._variables, shadows)]
            torch._foreach_mul_(shadows, decay)
            torch._foreach_add_(shadows, torch._foreach_mul(values, 1.0 - decay))

    def copy_to_model(self):
        """Overwrites the model variables with the shadows (permanent)."""
        for variable, shadow in self.pairs():
            variable.assign(keras.ops.cast(shadow.value, variable.dtype))

    def reset_from_model(self):
        """Overwrites the shadows with the model variables' current values."""
        for variable, shadow in self.pairs():
            shadow.assign(keras.ops.cast(variable.value, shadow.dtype))

    def swap(self):
        """Exchanges the values of model variables and shadows (twice: back exactly)."""
        for variable, shadow in self.pairs():
            model_value = keras.ops.copy(variable.value)
            variable.assign(keras.ops.cast(shadow.value, variable.dtype))
            shadow.assign(keras.ops.cast(model_value, shadow.dtype))

    @contextlib.contextmanager
    def average_weights(self):
        """Context manager: model holds the averages inside, originals after."""
        self.swap()
        try:
            yield self
        finally:
            self.swap()
