"""Which model variables the exponential moving average tracks.

Shared by training (`efficientnetv2.train.ema` keeps shadows of these variables) and inference
(`efficientnetv2.weights` reads a training checkpoint's shadows back in the same order), so the
loader needs nothing from `train/`.
"""


def variable_name(variable):
    """Keras path (`dense/kernel`) or TF name without the `:0` suffix."""
    path = getattr(variable, 'path', None)
    if path:
        return path
    name = variable.name
    return name[:-2] if name.endswith(':0') else name


def ema_variables(model):
    """Returns the variables the recipe averages: trainable + BN statistics.

    Trainable variables come first (model order), then every non-trainable variable whose path
    contains `moving_mean` or `moving_variance`. The order is part of the checkpoint format:
    a training checkpoint stores the i-th shadow for the i-th variable of this list.

    Args:
        model: A built `keras.Model` (or layer).

    Returns:
        A list of Keras variables without duplicates.
    """
    selected = list(model.trainable_variables)
    seen = {id(v) for v in selected}
    for variable in model.non_trainable_variables:
        if id(variable) in seen:
            continue
        name = variable_name(variable)
        if 'moving_mean' in name or 'moving_variance' in name:
            selected.append(variable)
            seen.add(id(variable))
    return selected


class ShadowPairs:
    """`pairs` and `shadow_for` of a moving average with `model_variables` and
    `shadow_variables` in the same order (the TF `ExponentialMovingAverage` and the portable
    one share them)."""

    def pairs(self):
        """Returns `(model variable, shadow variable)` pairs."""
        return list(zip(self.model_variables, self.shadow_variables))

    def shadow_for(self, variable):
        """Returns the shadow of `variable` (matched by identity)."""
        for model_variable, shadow in self.pairs():
            if model_variable is variable:
                return shadow
        raise ValueError(
            f'Argument `variable` must be one of the averaged variables; '
            f'received: {variable_name(variable)!r}.'
        )
