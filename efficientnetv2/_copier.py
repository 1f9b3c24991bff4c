"""The one weight copier: every loader and converter hands it (target, value) pairs.

Callers map names (official TF1 names, Keras variable paths, keras.applications layers) to the
model's variables and hand the result here. The copier checks every shape before assigning
anything, so a mismatch raises one `ValueError` and leaves the model untouched (or, with
`skip_mismatch=True`, is logged and skipped); if an assignment itself fails midway, the
variables already assigned are restored before the error propagates.
"""

import collections

from absl import logging
import numpy as np

Entry = collections.namedtuple('Entry', 'name variable shape value')
Entry.__doc__ = """One tensor to copy.

Attributes:
    name: the source tensor's name, for messages.
    variable: the model variable receiving it.
    shape: the source tensor's shape (checked against the variable's before anything loads).
    value: the value (array-like), or a zero-argument callable returning it (read lazily,
        only once every shape has been checked).
"""


def model_label(model):
    return getattr(model, 'model_name', None) or model.name


def raise_or_log(problems, origin, model, skip_mismatch):
    """Raises on the first problem (counting the rest), or logs them all when skipping."""
    if problems and not skip_mismatch:
        more = f' (and {len(problems) - 1} more problems)' if len(problems) > 1 else ''
        raise ValueError(
            f'Cannot load {origin} into model {model_label(model)!r}: {problems[0]}{more}.'
        )
    for problem in problems:
        logging.warning('%s: skipped: %s.', origin, problem)


def copy_entries(entries, model, origin, problems=(), skip_mismatch=False):
    """Assigns every entry, all or nothing.

    Args:
        entries: `Entry` tuples.
        model: the model being filled (named in messages).
        origin: how to name the source in messages (e.g. the file).
        problems: mismatches the caller already found (missing or unused tensors).
        skip_mismatch: assign what fits and log the rest instead of raising.

    Returns:
        (names of the assigned source tensors, every problem, the callers' and shape ones).

    Raises:
        ValueError: a problem and not `skip_mismatch`; nothing is assigned then.
    """
    problems = list(problems)
    fitting = []
    for entry in entries:
        if tuple(entry.shape) != tuple(entry.variable.shape):
            problems.append(
                f'tensor {entry.name!r} has shape {list(entry.shape)} but model variable '
                f'{_path(entry.variable)!r} needs {list(entry.variable.shape)}'
            )
        else:
            fitting.append(entry)
    raise_or_log(problems, origin, model, skip_mismatch)
    assigned = []  # (variable, previous value), to roll back.
    try:
        for entry in fitting:
            value = entry.value() if callable(entry.value) else entry.value
            value = np.asarray(value)
            if tuple(value.shape) != tuple(entry.variable.shape):  # A lying shape map.
                raise ValueError(
                    f'Cannot load {origin} into model {model_label(model)!r}: '
                    f'tensor {entry.name!r} holds shape {list(value.shape)}, '
                    f'not the {list(entry.shape)} its header announced.'
                )
            previous = np.array(entry.variable.numpy())
            entry.variable.assign(value.astype(_dtype(entry.variable)))
            assigned.append((entry.variable, previous))
    except Exception:
        for variable, previous in reversed(assigned):
            variable.assign(previous)
        raise
    return [entry.name for entry in fitting], problems


def with_rollback(model, load_fn):
    """Runs `load_fn` (a loader that assigns on its own); on failure restores every weight."""
    backup = [np.array(v.numpy()) for v in model.weights]
    try:
        return load_fn()
    except Exception:
        for variable, value in zip(model.weights, backup):
            variable.assign(value)
        raise


def _path(variable):
    return getattr(variable, 'path', None) or variable.name


def _dtype(variable):
    dtype = variable.dtype
    return getattr(dtype, 'as_numpy_dtype', dtype)  # tf.DType or a Keras dtype string.
