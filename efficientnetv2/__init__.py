"""EfficientNet (V1) and EfficientNetV2 for TensorFlow 2 / Keras 3.

    import efficientnetv2
    model = efficientnetv2.get_model('efficientnetv2-s')          # logits, any input size
    model = efficientnetv2.EfficientNetV2S(include_top=False, pooling='avg')
    efficientnetv2.list_models()
"""

from efficientnetv2 import convert
from efficientnetv2 import summary
from efficientnetv2.architectures import list_models
from efficientnetv2.model import EfficientNet
from efficientnetv2.model import get_feature_extractor
from efficientnetv2.model import get_model
from efficientnetv2.model import model_hparams

__version__ = '0.1.0'


def _constructor(model_name, public_name):
    def build(include_top=True, weights=None, input_shape=None, pooling=None, num_classes=1000,
              classifier_activation=None, **overrides):
        return get_model(model_name, include_top=include_top, weights=weights,
                         input_shape=input_shape, pooling=pooling, num_classes=num_classes,
                         classifier_activation=classifier_activation, **overrides)

    build.__name__ = build.__qualname__ = public_name
    build.__doc__ = ('Builds %s; the same as `get_model(%r, ...)` (see its arguments).'
                     % (model_name, model_name))
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
