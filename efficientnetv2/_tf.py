"""`from efficientnetv2._tf import tf`: TensorFlow for the TensorFlow-only parts of the package.

`efficientnetv2.data` imports this first, so everything built on it (tf.data pipelines and
augmentation, the CLI trainer, SavedModel/TFLite export, NAS) fails without TensorFlow with an
ImportError that says what needs it and how to install it, instead of a bare
"No module named 'tensorflow'".
"""

from efficientnetv2 import _backend

tf = _backend.tensorflow(
    'efficientnetv2.data and what is built on it (tf.data pipelines and augmentation, the CLI '
    'Trainer, SavedModel/TFLite export, NAS)'
)
