"""The EfficientNet / EfficientNetV2 network as a Keras 3 Functional model.

This module only builds networks; it knows nothing of weight files. Loading weights, and
`get_model(..., weights=...)`, live in `efficientnetv2.weights`.
"""

import inspect

import keras

from efficientnetv2 import architectures
from efficientnetv2 import blocks as blocks_lib
from efficientnetv2 import hparams
from efficientnetv2 import layers

POOLING = (None, 'avg', 'max')
# The constructor's defaults (one source, shared with the run config's `model` section).
_DEFAULTS = architectures.DEFAULT_MODEL_HPARAMS


def _block_name(stage, repeat):
    """block1a, block1b, ..., block6z, block6aa, ... (keras.applications style, never ambiguous)."""
    letters = ''
    n = repeat
    while True:
        letters = chr(ord('a') + n % 26) + letters
        n = n // 26 - 1
        if n < 0:
            return f'block{stage}{letters}'


@layers.register
class EfficientNet(keras.Model):
    """EfficientNet (V1) or EfficientNetV2, built from block strings.

    The constructor arguments are the model's whole config (`get_config` returns them and
    `from_config` calls the constructor), so `.keras` files round-trip. Its defaults come from
    `architectures.DEFAULT_MODEL_HPARAMS`, the package's one source of model defaults (also the
    `model` section of a run config).

    Args:
        blocks: list of block strings, one per stage (see `efficientnetv2.blocks`).
        width_coefficient: channel multiplier (compound scaling).
        depth_coefficient: repeat multiplier (compound scaling).
        depth_divisor: channels are rounded to a multiple of this.
        min_depth: smallest channel count after rounding.
        round_filters_10pct: the V1 rounding rule (add a divisor when rounding lost > 10%).
        feature_size: head width before width scaling (1280).
        dropout_rate: dropout before the classifier.
        survival_prob: stochastic-depth survival probability of the last block; block `i` of `N`
            keeps its branch with probability `1 - (1 - survival_prob) * i / N`. None or 0
            disables stochastic depth.
        bn_momentum: batch-norm moving-average momentum (Keras convention).
        bn_epsilon: batch-norm epsilon.
        act_fn: activation name (silu, relu, ...).
        sync_bn: cross-replica batch norm (TPU, multi-GPU).
        bn_group_size: with sync_bn, batch statistics are shared within groups of this many
            replicas (8: the released TPU code's min(8, replicas)); 0: all replicas.
        fused_bn: use TensorFlow's fused batch-norm kernel where possible.
        conv_dropout: dropout inside MBConv blocks after the depthwise conv (official option).
        headbias: initial value of the classifier bias (None: 0).
        include_top: whether to end with pooling, dropout and the classifier.
        num_classes: classifier width.
        pooling: with `include_top=False`: None (4-D head features), 'avg' or 'max'.
        input_shape: input shape without the batch axis; default (None, None, 3), any size.
        classifier_activation: None (logits, the default) or e.g. 'softmax'.
        data_format: 'channels_last' or 'channels_first' (the latter needs a GPU).
        model_name: the variant name, kept for reference.
        name: the Keras model name (defaults to `model_name`).
    """

    def __init__(
        self,
        blocks,
        width_coefficient=_DEFAULTS['width_coefficient'],
        depth_coefficient=_DEFAULTS['depth_coefficient'],
        depth_divisor=_DEFAULTS['depth_divisor'],
        min_depth=_DEFAULTS['min_depth'],
        round_filters_10pct=_DEFAULTS['round_filters_10pct'],
        feature_size=_DEFAULTS['feature_size'],
        dropout_rate=_DEFAULTS['dropout_rate'],
        survival_prob=_DEFAULTS['survival_prob'],
        bn_momentum=_DEFAULTS['bn_momentum'],
        bn_epsilon=_DEFAULTS['bn_epsilon'],
        act_fn=_DEFAULTS['act_fn'],
        sync_bn=_DEFAULTS['sync_bn'],
        fused_bn=_DEFAULTS['fused_bn'],
        conv_dropout=_DEFAULTS['conv_dropout'],
        headbias=_DEFAULTS['headbias'],
        bn_group_size=_DEFAULTS['bn_group_size'],
        include_top=True,
        num_classes=_DEFAULTS['num_classes'],
        pooling=None,
        input_shape=None,
        classifier_activation=None,
        data_format=_DEFAULTS['data_format'],
        model_name=_DEFAULTS['model_name'],
        name=None,
        **kwargs,
    ):
        config = {key: value for key, value in locals().items() if key in _CONFIG_KEYS}
        config['blocks'] = list(blocks)
        if pooling not in POOLING:
            raise ValueError(f'pooling must be one of {POOLING}. Received: pooling={pooling!r}')
        if include_top and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(
                f'num_classes must be a positive integer. Received: num_classes={num_classes!r}'
            )
        if data_format not in ('channels_last', 'channels_first'):
            raise ValueError(
                "data_format must be 'channels_last' or 'channels_first'. "
                f'Received: data_format={data_format!r}'
            )
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(
                f'dropout_rate must be in [0, 1). Received: dropout_rate={dropout_rate!r}'
            )
        layers.get_activation(act_fn)  # Fails early on an unknown name.
        base_stages = blocks_lib.decode_list(list(blocks))
        stages = blocks_lib.scale_stages(
            base_stages,
            width_coefficient,
            depth_coefficient,
            depth_divisor,
            min_depth,
            round_filters_10pct,
        )

        def width(filters):
            return blocks_lib.round_filters(
                filters, width_coefficient, depth_divisor, min_depth, round_filters_10pct
            )

        channel_axis = 1 if data_format == 'channels_first' else -1
        if input_shape is None:
            input_shape = (3, None, None) if channel_axis == 1 else (None, None, 3)
        norm_args = dict(
            bn_momentum=bn_momentum,
            bn_epsilon=bn_epsilon,
            sync_bn=sync_bn,
            fused_bn=fused_bn,
            data_format=data_format,
        )

        inputs = keras.Input(shape=tuple(input_shape), name='images')
        x = layers.ConvBNAct(
            width(base_stages[0].input_filters), 3, 2, act_fn=act_fn, name='stem', **norm_args
        )(inputs)

        total_blocks = sum(s.num_repeat for s in stages)
        block_specs = []  # (name, strides) per block, for the endpoint table.
        index = 0
        for stage_id, stage in enumerate(stages, start=1):
            block_cls = layers.FusedMBConvBlock if stage.conv_type else layers.MBConvBlock
            for repeat in range(stage.num_repeat):
                first = repeat == 0
                prob = None
                if survival_prob:
                    prob = 1.0 - (1.0 - survival_prob) * index / total_blocks
                block_name = _block_name(stage_id, repeat)
                x = block_cls(
                    stage.input_filters if first else stage.output_filters,
                    stage.output_filters,
                    kernel_size=stage.kernel_size,
                    strides=stage.strides if first else 1,
                    expand_ratio=stage.expand_ratio,
                    se_ratio=stage.se_ratio,
                    survival_prob=prob,
                    act_fn=act_fn,
                    conv_dropout=conv_dropout,
                    name=block_name,
                    **norm_args,
                )(x)
                block_specs.append((block_name, stage.strides if first else 1))
                index += 1

        x = layers.ConvBNAct(width(feature_size), 1, 1, act_fn=act_fn, name='top', **norm_args)(x)
        if include_top:
            x = keras.layers.GlobalAveragePooling2D(data_format=data_format, name='avg_pool')(x)
            # Always present (rate may be 0) so progressive training can change the rate.
            x = layers.AdaptiveDropout(dropout_rate, name='top_dropout')(x)
            x = keras.layers.Dense(
                num_classes,
                activation=classifier_activation,
                kernel_initializer=layers.dense_kernel_initializer(),
                bias_initializer=keras.initializers.Constant(headbias or 0.0),
                name='predictions',
                dtype='float32' if classifier_activation else None,
            )(x)
        elif pooling == 'avg':
            x = keras.layers.GlobalAveragePooling2D(data_format=data_format, name='avg_pool')(x)
        elif pooling == 'max':
            x = keras.layers.GlobalMaxPooling2D(data_format=data_format, name='max_pool')(x)

        super().__init__(
            inputs=inputs, outputs=x, name=name or model_name or 'efficientnet', **kwargs
        )
        self._init_args = dict(config, input_shape=tuple(input_shape))
        self.model_name = model_name
        self.include_top = include_top
        self.num_classes = num_classes
        self.stages = stages
        self.endpoint_names = _reduction_endpoints(block_specs)
        for layer in self._flatten_layers(include_self=False):  # Validates the value too.
            if isinstance(layer, layers.BatchNorm):
                layer.group_size = layers.BatchNorm.check_group_size(bn_group_size)

    def get_config(self):
        config = dict(self._init_args)
        config['name'] = self.name
        config['trainable'] = self.trainable
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        trainable = config.pop('trainable', True)
        model = cls(**config)
        model.trainable = trainable
        return model

    @property
    def dropout_rate(self):
        """The classifier dropout rate; settable (a variable: no retrace needed)."""
        return self.get_layer('top_dropout').rate if self.include_top else 0.0

    @dropout_rate.setter
    def dropout_rate(self, rate):
        if self.include_top:
            self.get_layer('top_dropout').rate = float(rate)
            self._init_args['dropout_rate'] = float(rate)

    def feature_extractor(self):
        """A model on the same layers returning {'reduction_1': ..., 'reduction_5': ...}.

        Reduction level k has stride 2**k; these are the block outputs just before each
        spatial reduction (and the last block), as the official `reduction_k` endpoints.
        """
        outputs = {
            f'reduction_{i + 1}': self.get_layer(name).output
            for i, name in enumerate(self.endpoint_names)
        }
        return keras.Model(self.inputs, outputs, name=self.name + '_features')


def _reduction_endpoints(block_specs):
    """Names of blocks that end a resolution level: the last block, or one before a stride."""
    names = []
    for i, (name, _) in enumerate(block_specs):
        if i == len(block_specs) - 1 or block_specs[i + 1][1] > 1:
            names.append(name)
    return names


# The constructor's parameters (their defaults: `architectures.DEFAULT_MODEL_HPARAMS`).
_SIGNATURE = inspect.signature(EfficientNet.__init__).parameters
# Everything `get_config` returns besides the Keras name.
_CONFIG_KEYS = tuple(
    key
    for key, p in _SIGNATURE.items()
    if key not in ('self', 'name') and p.kind is p.POSITIONAL_OR_KEYWORD
)
# How a model is built (head, pooling, input), not what the network is.
BUILD_OPTIONS = ('include_top', 'pooling', 'input_shape', 'classifier_activation')
# The `model` section of a run config: the constructor's hyper-parameters and their defaults,
# defined in `architectures` (below the config) and read by the signature above.
# tests/test_layering.py checks that it names every such parameter.
DEFAULT_MODEL_HPARAMS = architectures.DEFAULT_MODEL_HPARAMS


def model_hparams(model_name, **overrides):
    """The resolved `model` hyper-parameters for a variant, with strict overrides.

    Raises:
        ValueError: unknown model name (lists the valid names).
        KeyError: unknown override key (names the closest valid keys).
    """
    variant = architectures.get_variant(model_name)
    config = hparams.Config(DEFAULT_MODEL_HPARAMS)
    config.override(variant.model_hparams())
    config.override(overrides)
    return config


def build_model(
    model_name,
    include_top=True,
    input_shape=None,
    pooling=None,
    classifier_activation=None,
    **overrides,
):
    """Builds a published variant with freshly initialised weights.

    `efficientnetv2.get_model` is this plus `weights=`; see it for the arguments.
    `num_classes` and every other model hyper-parameter go in `overrides`.
    """
    config = model_hparams(model_name, **overrides)
    return EfficientNet(
        include_top=include_top,
        pooling=pooling,
        input_shape=input_shape,
        classifier_activation=classifier_activation,
        **config.as_dict(),
    )
