"""Parameter and FLOP counts of any model at any image size.

FLOPs here are multiply-accumulates (MACs) of convolutions and matrix multiplies, the figure the
EfficientNet papers quote (V2-S: 8.4B at 384 px; V1-B0: 0.39B at 224 px). They are counted from
the traced inference graph, so they hold for any Keras model, keras.applications' included.
Counting FLOPs traces a TensorFlow graph: it needs TensorFlow and the TensorFlow backend;
parameter counts (`count_params`) work on every backend.

Command line (installed as `efficientnetv2-summary`, the same flags):

    python -m efficientnetv2.summary --model_name=efficientnetv2-s --image_size=384
    python -m efficientnetv2.summary --all
"""

import numpy as np

from efficientnetv2 import _backend
from efficientnetv2 import architectures
from efficientnetv2 import model as model_lib

_MAC_OPS = ('Conv2D', 'DepthwiseConv2dNative', 'MatMul', 'BatchMatMulV2', 'Conv2DBackpropInput')


def _static(shape):
    dims = shape.as_list() if hasattr(shape, 'as_list') else list(shape)
    if any(d is None for d in dims):
        raise ValueError(f'FLOP counting needs static shapes; got {dims}.')
    return dims


def _op_macs(op):
    if op.type in ('Conv2D', 'DepthwiseConv2dNative'):
        out = _static(op.outputs[0].shape)
        kernel = _static(op.inputs[1].shape)
        out_elements = int(np.prod(out))
        if op.type == 'Conv2D':
            # Each output element sums kh * kw * in_channels products.
            return out_elements * kernel[0] * kernel[1] * kernel[2]
        return out_elements * kernel[0] * kernel[1]
    if op.type in ('MatMul', 'BatchMatMulV2'):
        a = _static(op.inputs[0].shape)
        out = _static(op.outputs[0].shape)
        transpose_a = op.get_attr('transpose_a' if op.type == 'MatMul' else 'adj_x')
        inner = a[-2] if transpose_a else a[-1]
        return int(np.prod(out)) * inner
    return 0


def count_flops(model, image_size=None, input_shape=None):
    """Multiply-accumulates of one inference pass of `model` on one image.

    Args:
        model: a Keras model taking images.
        image_size: square side in pixels (used with a 3-channel channels-last input).
        input_shape: full input shape without batch, instead of image_size.

    Returns:
        The MAC count (int) over Conv2D, depthwise conv and matmul ops.

    Raises:
        ImportError: TensorFlow is not installed.
        RuntimeError: Keras runs on another backend (the graph is a TensorFlow graph).
    """
    tf = _backend.tensorflow('FLOP counting (efficientnetv2.summary.count_flops)')
    if not _backend.is_tensorflow():
        raise RuntimeError(
            'FLOP counting traces a TensorFlow graph of the model: it needs '
            f'KERAS_BACKEND=tensorflow (this is {_backend.name()}). Parameter counts '
            '(count_params) work on every backend.'
        )
    if input_shape is None:
        if image_size is None:
            input_shape = tuple(model.inputs[0].shape[1:])
        else:
            channels_first = (
                getattr(model, 'get_config', lambda: {})().get('data_format') == 'channels_first'
            )
            input_shape = (
                (3, image_size, image_size) if channels_first else (image_size, image_size, 3)
            )
    spec = tf.TensorSpec((1,) + tuple(input_shape), model.inputs[0].dtype)
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec).graph
    return sum(_op_macs(op) for op in graph.get_operations() if op.type in _MAC_OPS)


def count_params(model):
    """(trainable, non-trainable) parameter counts of a model."""
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    non_trainable = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    return trainable, non_trainable


def describe(model_name, image_size=None, **overrides):
    """A dict with the params and MACs of a published variant at an image size."""
    variant = architectures.get_variant(model_name)
    image_size = image_size or variant.eval_size
    model = model_lib.build_model(model_name, **overrides)
    trainable, non_trainable = count_params(model)
    return dict(
        model_name=variant.name,
        image_size=image_size,
        trainable_params=trainable,
        total_params=trainable + non_trainable,
        flops=count_flops(model, image_size),
    )


def main(argv=None):
    import argparse
    import os
    import sys

    from absl import logging

    command = os.path.basename(sys.argv[0])
    parser = argparse.ArgumentParser(
        # The installed command, or the module run with -m (whose argv[0] is summary.py).
        prog=command if command == 'efficientnetv2-summary' else 'python -m efficientnetv2.summary',
        description='Print parameters and FLOPs (multiply-adds) of EfficientNet models.',
    )
    parser.add_argument(
        '--model_name',
        default='efficientnetv2-s',
        help='one of: {}'.format(', '.join(architectures.list_models())),
    )
    parser.add_argument(
        '--image_size',
        type=int,
        default=None,
        help="square input size (default: the model's eval size)",
    )
    parser.add_argument('--all', action='store_true', help='every published model')
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.WARNING)
    names = architectures.list_models() if args.all else [args.model_name]
    print(f'{"model":<20} {"size":>6} {"trainable":>15} {"total":>15} {"FLOPs (MACs)":>17}')
    for name in names:
        try:
            row = describe(name, args.image_size)
        except ValueError as e:
            parser.error(str(e))
        print(
            f'{row["model_name"]:<20} {int(row["image_size"]):6d} '
            f'{row["trainable_params"]:>15,} {row["total_params"]:>15,} {row["flops"]:>17,}',
            flush=True,
        )


if __name__ == '__main__':
    main()
