"""EfficientNet (V1) and EfficientNetV2 for TensorFlow 2 / Keras 3."""
