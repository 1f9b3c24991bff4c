"""Which Keras backend runs, and TensorFlow imported only where a feature needs it.

The Keras surface of the package (models, weights in `.keras` / `.weights.h5` files,
`fit_progressive`, `ModelEMA`, `finetune`, parameter counts) runs on every Keras 3 backend;
TensorFlow is imported only by the parts that are TensorFlow by nature (tf.data pipelines and
augmentation, the CLI trainer, SavedModel/TFLite export, TF checkpoints, FLOP counting), through
`tensorflow(feature)`, which names the feature when TensorFlow is missing.
"""

import sys

import keras

INSTALL_HINT = (
    "pip install 'tensorflow>=2.16,<2.22' (or the package's default install, "
    '`pip install efficientnetv2`)'
)


def name():
    """The Keras backend name: 'tensorflow', 'jax', 'torch' or 'numpy'."""
    return keras.backend.backend()


def is_tensorflow():
    """Whether Keras runs on TensorFlow (the fused batch norm and TF fast paths apply)."""
    return name() == 'tensorflow'


def tensorflow(feature):
    """Imports and returns TensorFlow for `feature`, or raises an ImportError that names it.

    Args:
        feature: what needs TensorFlow, e.g. 'Reading TF checkpoints'.
    """
    try:
        import tensorflow as tf
    except ImportError as error:
        raise ImportError(
            f'{feature} needs TensorFlow, which is not installed (Keras backend: {name()}). '
            f'Install it with {INSTALL_HINT}. Everything else in efficientnetv2 (models, '
            '.keras / .weights.h5 files, fit_progressive, ModelEMA, finetune) runs without it; '
            'see docs/backends.md.'
        ) from error
    return tf


def tensorflow_if_loaded():
    """TensorFlow if something already imported it, else None (never imports it).

    For type checks such as "is this a tf.data.Dataset": an object of a TF type cannot exist
    unless TensorFlow is loaded.
    """
    return sys.modules.get('tensorflow')


def is_tf_dataset(obj):
    """Whether `obj` is a `tf.data.Dataset` (False, without importing TF, when TF isn't loaded)."""
    tf = tensorflow_if_loaded()
    data = getattr(tf, 'data', None) if tf is not None else None
    return data is not None and isinstance(obj, data.Dataset)
