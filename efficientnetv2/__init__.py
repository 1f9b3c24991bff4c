"""EfficientNet (V1) and EfficientNetV2 for TensorFlow 2 / Keras 3.

import efficientnetv2
model = efficientnetv2.get_model('efficientnetv2-s')          # logits, any input size
model = efficientnetv2.EfficientNetV2S(include_top=False, pooling='avg')
efficientnetv2.list_models()
"""

from efficientnetv2 import architectures
from efficientnetv2 import convert
from efficientnetv2 import finetune
from efficientnetv2 import keras_workflow
from efficientnetv2 import summary
from efficientnetv2.architectures import list_models
from efficientnetv2.keras_workflow import ModelEMA
from efficientnetv2.keras_workflow import fit_progressive
from efficientnetv2.keras_workflow import progressive_plan
from efficientnetv2.model import EfficientNet
from efficientnetv2.model import model_hparams
from efficientnetv2.weights import get_feature_extractor
from efficientnetv2.weights import get_model
from efficientnetv2.weights import load_weights

__all__ = [
    'architectures',
    'convert',
    'finetune',
    'keras_workflow',
    'summary',
    'list_models',
    'ModelEMA',
    'fit_progressive',
    'progressive_plan',
    'EfficientNet',
    'model_hparams',
    'get_feature_extractor',
    'get_model',
    'load_weights',
    'EfficientNetV2S',
    'EfficientNetV2M',
    'EfficientNetV2L',
    'EfficientNetV2XL',
    'EfficientNetV2B0',
    'EfficientNetV2B1',
    'EfficientNetV2B2',
    'EfficientNetV2B3',
    'EfficientNetB0',
    'EfficientNetB1',
    'EfficientNetB2',
    'EfficientNetB3',
    'EfficientNetB4',
    'EfficientNetB5',
    'EfficientNetB6',
    'EfficientNetB7',
    'EfficientNetB8',
    'EfficientNetL2',
]

__version__ = '0.1.0'

_CONSTRUCTOR_DOC = """Builds {model_name}; the same as `get_model({model_name!r}, ...)`.

    The signature looks like `keras.applications.{keras_like}`, but the model differs:

    - `weights` defaults to None (random initialisation), not 'imagenet'; pass
      weights='imagenet' to convert keras.applications' ImageNet weights{imagenet_note}, or a
      checkpoint / `.keras` / `.weights.h5` path.
    - The output is logits: `classifier_activation` defaults to None, not 'softmax'.
    - There is no input scaling inside the model (keras.applications models take 0-255 pixels
      and rescale them in their first layers). Feed images already scaled as the family was
      trained: {scaling}.
    - The classifier width is `num_classes` (default 1000); keras' name `classes=` is accepted
      as an alias. There is no `input_tensor` or `include_preprocessing` argument.
    - `input_shape` defaults to any size, (None, None, 3).
    - Extra keyword arguments are model hyper-parameters (e.g. dropout_rate=0.3,
      survival_prob=0.8, bn_momentum=0.99); see `get_model`.

    Returns:
        An `efficientnetv2.EfficientNet` (keras.Model).
    """

_SCALING = {
    'v2': '`(x - 128) / 128` (x in [0, 255])',
    'legacy': '`(x / 255 - mean) / std` with ImageNet mean (0.485, 0.456, 0.406) and std '
    '(0.229, 0.224, 0.225)',
}


def _constructor(model_name, public_name):
    def build(
        include_top=True,
        weights=None,
        input_shape=None,
        pooling=None,
        num_classes=None,
        classifier_activation=None,
        classes=None,
        **overrides,
    ):
        if classes is not None and num_classes is not None and classes != num_classes:
            raise ValueError(
                'Pass num_classes or its alias classes, not both. Received: '
                f'num_classes={num_classes!r}, classes={classes!r}'
            )
        width = num_classes if num_classes is not None else classes
        if width is not None:
            overrides['num_classes'] = width
        return get_model(
            model_name,
            include_top=include_top,
            weights=weights,
            input_shape=input_shape,
            pooling=pooling,
            classifier_activation=classifier_activation,
            **overrides,
        )

    variant = architectures.get_variant(model_name)
    build.__name__ = build.__qualname__ = public_name
    build.__doc__ = _CONSTRUCTOR_DOC.format(
        model_name=model_name,
        keras_like=variant.keras_name or public_name,
        imagenet_note=''
        if variant.keras_name
        else ' (not available for this variant: keras.applications does not ship it)',
        scaling=_SCALING[variant.preprocess],
    )
    return build


EfficientNetV2S = _constructor('efficientnetv2-s', 'EfficientNetV2S')
EfficientNetV2M = _constructor('efficientnetv2-m', 'EfficientNetV2M')
EfficientNetV2L = _constructor('efficientnetv2-l', 'EfficientNetV2L')
EfficientNetV2XL = _constructor('efficientnetv2-xl', 'EfficientNetV2XL')
EfficientNetV2B0 = _constructor('efficientnetv2-b0', 'EfficientNetV2B0')
EfficientNetV2B1 = _constructor('efficientnetv2-b1', 'EfficientNetV2B1')
EfficientNetV2B2 = _constructor('efficientnetv2-b2', 'EfficientNetV2B2')
EfficientNetV2B3 = _constructor('efficientnetv2-b3', 'EfficientNetV2B3')
EfficientNetB0 = _constructor('efficientnet-b0', 'EfficientNetB0')
EfficientNetB1 = _constructor('efficientnet-b1', 'EfficientNetB1')
EfficientNetB2 = _constructor('efficientnet-b2', 'EfficientNetB2')
EfficientNetB3 = _constructor('efficientnet-b3', 'EfficientNetB3')
EfficientNetB4 = _constructor('efficientnet-b4', 'EfficientNetB4')
EfficientNetB5 = _constructor('efficientnet-b5', 'EfficientNetB5')
EfficientNetB6 = _constructor('efficientnet-b6', 'EfficientNetB6')
EfficientNetB7 = _constructor('efficientnet-b7', 'EfficientNetB7')
EfficientNetB8 = _constructor('efficientnet-b8', 'EfficientNetB8')
EfficientNetL2 = _constructor('efficientnet-l2', 'EfficientNetL2')
