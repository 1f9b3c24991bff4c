"""Keras 3 layers of EfficientNet (V1) and EfficientNetV2.

All layers are registered under the package name `efficientnetv2` and return their constructor
arguments from `get_config`, so models holding them round-trip through `.keras` files. Every
layer creates its sub-layers in `__init__` and its `call` is pure (no side effects beyond the
batch-norm moving statistics).

Op order follows the official code (SPEC §1.6-1.10):
- MBConv: [1x1 expand, BN, act] -> kxk depthwise (strided), BN, act -> [SE] -> 1x1 project, BN
  (linear) -> [stochastic depth + identity] when stride 1 and in == out.
- Fused-MBConv: kxk expand (strided), BN, act -> [SE] -> 1x1 project, BN (linear); with expand
  ratio 1 a single kxk conv, BN, act. Same residual rule.
"""

import keras

from efficientnetv2 import _backend

PACKAGE = 'efficientnetv2'
register = keras.saving.register_keras_serializable(package=PACKAGE)

ACTIVATIONS = (
    'silu',
    'swish',
    'relu',
    'relu6',
    'hard_silu',
    'hard_swish',
    'elu',
    'leaky_relu',
    'selu',
    'gelu',
    'mish',
)


def conv_kernel_initializer():
    """Normal(0, sqrt(2 / fan_out)) with fan_out = kh*kw*out (kh*kw for depthwise), untruncated."""
    return keras.initializers.VarianceScaling(
        scale=2.0, mode='fan_out', distribution='untruncated_normal'
    )


def dense_kernel_initializer():
    """Uniform(-r, r) with r = 1/sqrt(num_classes), as the official classifier."""
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode='fan_out', distribution='uniform'
    )


def get_activation(name):
    """Returns the activation function for `name`; unknown names list the valid ones."""
    if name not in ACTIVATIONS:
        raise ValueError(
            'Unknown activation act_fn={!r}. Valid: {}.'.format(name, ', '.join(ACTIVATIONS))
        )
    return keras.activations.get({'swish': 'silu', 'hard_swish': 'hard_silu'}.get(name, name))


@register
class BatchNorm(keras.layers.BatchNormalization):
    """Batch normalization that runs TensorFlow's fused kernel when it can.

    Keras 3 computes batch norm from separate moment, subtract, multiply ops; on CPU and GPU a
    single `FusedBatchNormV3` (and its fused gradient) is markedly faster. The fused path is
    used for 4-D inputs when the layer is not synchronized across replicas; otherwise (and with
    `fused=False`) the stock Keras computation runs. Variables, momentum semantics
    (moving = momentum * moving + (1 - momentum) * batch) and serialization are Keras'.

    As in TF1's fused batch norm used by the official code, the moving variance is updated with
    the unbiased (Bessel-corrected) batch variance; normalisation uses the biased one.
    Set `synchronized=True` for cross-replica statistics (TPU, multi-GPU).

    On the JAX and PyTorch backends (no TensorFlow kernel) the same computation runs in Keras
    ops, float32 inside as Keras' own batch norm: the fused semantics, Bessel-corrected moving
    variance included, so the statistics match the TensorFlow path's. Under
    `keras.distribution.DataParallel` on JAX the batch moments are those of the whole global
    batch (XLA reduces over the sharded batch axis), i.e. synchronized over all devices;
    `synchronized=True` (and `group_size`) changes nothing there.

    `group_size` (with `synchronized=True`): the batch statistics are summed over groups of that
    many consecutive replicas (0 or at least the replica count: over all of them). The
    official TPU batch norm uses groups of min(8, replicas). On TPU one `CrossReplicaSum` with
    a group assignment computes the group sums; under the other strategies each replica puts
    its sums in its group's row of a zero matrix and the rows are all-reduced.
    """

    def __init__(self, fused=True, group_size=0, **kwargs):
        super().__init__(**kwargs)
        self.fused = fused
        self.group_size = self.check_group_size(group_size)

    @staticmethod
    def check_group_size(group_size):
        """Returns `group_size` if it is an integer >= 0, else raises a ValueError."""
        if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 0:
            raise ValueError(
                'bn_group_size must be an integer >= 0 (replicas per batch-norm '
                f'group; 0: all replicas). Received: {group_size!r}'
            )
        return group_size

    def add_weight(self, *args, **kwargs):
        # Replicas update the moving statistics from their own batches; averaging the updates
        # keeps every replica's copy equal (and the checkpointed copy representative).
        if kwargs.get('name') in ('moving_mean', 'moving_variance'):
            kwargs.setdefault('aggregation', 'mean')
        return super().add_weight(*args, **kwargs)

    def _can_fuse(self, inputs):
        # Keras 3.12 (the TPU pin) has no batch renormalization and no `renorm` attribute.
        # Off TensorFlow, `synchronized` needs no kernel of its own: Keras' JAX batch norm
        # refuses it, and under DataParallel the moments are global already (class doc).
        return (
            self.fused
            and not (self.synchronized and _backend.is_tensorflow())
            and not getattr(self, 'renorm', False)
            and self.scale
            and self.center
            and len(inputs.shape) == 4
            and self.axis in (1, 3, -1)
        )

    def call(self, inputs, training=None, mask=None):
        if mask is not None or not self._can_fuse(inputs):
            return super().call(inputs, training=training, mask=mask)
        if not _backend.is_tensorflow():
            return self._portable_fused_call(inputs, training)
        import tensorflow as tf  # The TF backend: loaded already.

        data_format = 'NCHW' if self.axis == 1 else 'NHWC'
        x = inputs
        if x.dtype not in (tf.float16, tf.bfloat16, tf.float32):
            x = tf.cast(x, tf.float32)
        if training and self.trainable:
            outputs, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x,
                scale=self.gamma.value,
                offset=self.beta.value,
                mean=tf.constant([], tf.float32),
                variance=tf.constant([], tf.float32),
                epsilon=self.epsilon,
                exponential_avg_factor=1.0,
                data_format=data_format,
                is_training=True,
            )
            # A fused training op has its gradient registered; the moving-average update
            # follows Keras' momentum convention.
            decay = 1.0 - self.momentum
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * decay)
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * decay)
        else:
            outputs, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x,
                scale=self.gamma.value,
                offset=self.beta.value,
                mean=self.moving_mean.value,
                variance=self.moving_variance.value,
                epsilon=self.epsilon,
                data_format=data_format,
                is_training=False,
            )
        return tf.cast(outputs, self.compute_dtype)

    def _portable_fused_call(self, inputs, training):
        """`FusedBatchNormV3`'s computation in Keras ops (JAX, PyTorch).

        Statistics in float32 (as the fused kernel and Keras' batch norm); the output is
        normalised with the biased batch variance and the moving variance is updated with the
        Bessel-corrected one, n / (n - 1) with n = the number of values per channel.
        """
        ops = keras.ops
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, 'float32'))
        gamma = ops.cast(self.gamma, x.dtype)
        beta = ops.cast(self.beta, x.dtype)
        if training and self.trainable:
            axes = self._reduction_axes
            mean, variance = ops.moments(x, axes=axes)
            count = 1
            for axis in axes:
                count *= x.shape[axis]
            unbiased = variance * (count / max(count - 1, 1))
            momentum, decay = self.momentum, 1.0 - self.momentum
            self.moving_mean.assign(ops.cast(self.moving_mean, x.dtype) * momentum + mean * decay)
            self.moving_variance.assign(
                ops.cast(self.moving_variance, x.dtype) * momentum + unbiased * decay
            )
        else:
            mean = ops.cast(self.moving_mean, x.dtype)
            variance = ops.cast(self.moving_variance, x.dtype)
        outputs = ops.batch_normalization(
            x, mean, variance, axis=self.axis, offset=beta, scale=gamma, epsilon=self.epsilon
        )
        return ops.cast(outputs, self.compute_dtype)

    def _moments(self, inputs, mask):
        if not self.synchronized or mask is not None or not _backend.is_tensorflow():
            return super()._moments(inputs, mask)
        import tensorflow as tf  # The TF backend: loaded already.

        context = tf.distribute.get_replica_context()
        if context is None:
            return super()._moments(inputs, mask)
        replicas = context.num_replicas_in_sync
        group = self.group_size or replicas
        if group >= replicas:
            return super()._moments(inputs, mask)  # Keras' all-replica statistics.
        if replicas % group:
            raise ValueError(
                f'group_size ({group}) must divide the number of replicas ({replicas}); set '
                'model.bn_group_size to a divisor, or to 0 for all replicas.'
            )
        return self._grouped_moments(inputs, self._reduction_axes, context, group)

    @staticmethod
    def _grouped_moments(x, axes, context, group_size):
        """Mean and biased variance over this replica's group of replicas (float32).

        Each replica contributes its sum, sum of squares and count; they are summed over the
        group of `group_size` consecutive replica ids that this replica belongs to.
        """
        import tensorflow as tf  # tf.distribute only: the TF backend, loaded already.

        total = tf.reduce_sum(x, axis=axes)
        count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), axes)), x.dtype)
        local = tf.stack(
            [total, tf.reduce_sum(tf.square(x), axis=axes), tf.fill(tf.shape(total), count)]
        )
        replicas = context.num_replicas_in_sync
        if 'TPUStrategy' in type(context.strategy).__name__:
            assignment = [
                [g * group_size + i for i in range(group_size)]
                for g in range(replicas // group_size)
            ]
            sums = tf.raw_ops.CrossReplicaSum(input=local, group_assignment=assignment)
        else:
            group = tf.cast(context.replica_id_in_sync_group, tf.int32) // group_size
            rows = tf.one_hot(group, replicas // group_size, dtype=x.dtype)
            table = context.all_reduce(tf.distribute.ReduceOp.SUM, rows[:, None, None] * local)
            sums = tf.gather(table, group)
        mean = tf.math.divide_no_nan(sums[0], sums[2])
        variance = tf.maximum(tf.math.divide_no_nan(sums[1], sums[2]) - tf.square(mean), 0.0)
        return mean, variance

    def get_config(self):
        config = super().get_config()
        config.update(fused=self.fused, group_size=self.group_size)
        return config


def _norm(name, momentum, epsilon, synchronized, fused, data_format):
    return BatchNorm(
        axis=1 if data_format == 'channels_first' else -1,
        momentum=momentum,
        epsilon=epsilon,
        synchronized=synchronized,
        fused=fused,
        name=name,
    )


def _conv(filters, kernel_size, strides, name, data_format, use_bias=False):
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding='same',
        use_bias=use_bias,
        kernel_initializer=conv_kernel_initializer(),
        data_format=data_format,
        name=name,
    )


@register
class AdaptiveDropout(keras.layers.Layer):
    """Dropout whose rate may change after construction, without retracing, from 0 included.

    Progressive learning raises the classifier dropout per stage. The rate lives in a
    non-trainable variable read in `call`, so a traced train step sees the new rate at its next
    call. The variable is deliberately not tracked: it is not one of the layer's weights, so
    checkpoints, `.keras` files and weight loading are unaffected (the rate is in `get_config`).
    (Keras' own Dropout bakes the rate into the trace and only makes its random state when
    built with rate > 0.)

    On JAX and PyTorch the rate is a Python float read in `call`: a compiled (jitted) train
    step bakes it in, so whoever changes it rebuilds the train function
    (`fit_progressive` does, at each stage; the image size changes then anyway).
    """

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        # object.__setattr__: neither Keras nor tf.train.Checkpoint tracks this variable.
        object.__setattr__(self, '_rate_variable', None)
        if _backend.is_tensorflow():
            import tensorflow as tf  # The TF backend: loaded already.

            self._rate_variable = tf.Variable(
                float(rate),
                trainable=False,
                dtype=tf.float32,
                name='dropout_rate',
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
        self._rate = float(rate)

    @property
    def rate(self):
        """The current rate (a Python float); assigning it updates the variable."""
        return self._rate

    @rate.setter
    def rate(self, value):
        value = float(value)
        if not 0.0 <= value < 1.0:
            raise ValueError(f'Dropout rate must be in [0, 1). Received: rate={value!r}')
        self._rate = value
        if self._rate_variable is not None:
            self._rate_variable.assign(value)

    def call(self, inputs, training=None):
        if not training:
            return inputs
        if self._rate_variable is None:
            rate = keras.ops.cast(self._rate, inputs.dtype)
        else:
            rate = keras.ops.cast(keras.ops.convert_to_tensor(self._rate_variable), inputs.dtype)
        noise = keras.random.uniform(
            keras.ops.shape(inputs), seed=self.seed_generator, dtype=inputs.dtype
        )
        return keras.ops.where(noise >= rate, inputs / (1.0 - rate), keras.ops.zeros_like(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(rate=self.rate, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE, name='Dropout')
class _DropoutAlias(AdaptiveDropout):
    """Reads `.keras` files saved when `AdaptiveDropout` was called `Dropout`."""


@register
class StochasticDepth(keras.layers.Layer):
    """Drops a residual branch per example with probability 1 - survival_prob (training only).

    Kept branches are scaled by 1 / survival_prob, so inference returns the branch unchanged.
    """

    def __init__(self, survival_prob, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < survival_prob <= 1.0:
            raise ValueError(
                f'survival_prob must be in (0, 1]. Received: survival_prob={survival_prob!r}'
            )
        self.survival_prob = float(survival_prob)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training or self.survival_prob >= 1.0:
            return inputs
        shape = [keras.ops.shape(inputs)[0]] + [1] * (len(inputs.shape) - 1)
        noise = keras.random.uniform(shape, dtype=inputs.dtype, seed=self.seed_generator)
        mask = keras.ops.floor(self.survival_prob + noise)
        return inputs / self.survival_prob * mask

    def get_config(self):
        config = super().get_config()
        config.update(survival_prob=self.survival_prob, seed=self.seed)
        return config


@register
class SqueezeExcite(keras.layers.Layer):
    """Channel gating: mean over H, W -> 1x1 conv (reduce, bias) -> act -> 1x1 conv -> sigmoid.

    Args:
        filters: channels of the gated tensor.
        reduced_filters: width of the bottleneck (block input channels x se_ratio).
        act_fn: activation between the two convolutions.
    """

    def __init__(
        self, filters, reduced_filters, act_fn='silu', data_format='channels_last', **kwargs
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.reduced_filters = reduced_filters
        self.act_fn = act_fn
        self.data_format = data_format
        self._act = get_activation(act_fn)
        self._spatial_axes = [2, 3] if data_format == 'channels_first' else [1, 2]
        self.reduce = _conv(reduced_filters, 1, 1, 'se_reduce', data_format, use_bias=True)
        self.expand = _conv(filters, 1, 1, 'se_expand', data_format, use_bias=True)

    def build(self, input_shape):
        pooled = list(input_shape)
        for axis in self._spatial_axes:
            pooled[axis] = 1
        self.reduce.build(pooled)
        reduced = list(pooled)
        reduced[1 if self.data_format == 'channels_first' else -1] = self.reduced_filters
        self.expand.build(reduced)

    def call(self, inputs):
        if _backend.is_tensorflow():
            import tensorflow as tf  # The TF backend: its ops, as before (same numbers).

            mean, sigmoid = tf.reduce_mean, tf.sigmoid
        else:
            mean, sigmoid = keras.ops.mean, keras.ops.sigmoid
        x = mean(inputs, self._spatial_axes, keepdims=True)
        x = self.expand(self._act(self.reduce(x)))
        return inputs * sigmoid(x)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            reduced_filters=self.reduced_filters,
            act_fn=self.act_fn,
            data_format=self.data_format,
        )
        return config


class _Block(keras.layers.Layer):
    """What MBConv and Fused-MBConv share: arguments, SE, residual and stochastic depth."""

    def __init__(
        self,
        input_filters,
        output_filters,
        kernel_size=3,
        strides=1,
        expand_ratio=1,
        se_ratio=None,
        survival_prob=None,
        act_fn='silu',
        bn_momentum=0.9,
        bn_epsilon=1e-3,
        sync_bn=False,
        fused_bn=True,
        conv_dropout=0.0,
        data_format='channels_last',
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.input_filters = input_filters
        self.output_filters = output_filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.expand_ratio = expand_ratio
        self.se_ratio = se_ratio
        self.survival_prob = survival_prob
        self.act_fn = act_fn
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.sync_bn = sync_bn
        self.fused_bn = fused_bn
        self.conv_dropout = conv_dropout
        self.data_format = data_format

        self._act = get_activation(act_fn)
        self.expanded_filters = input_filters * expand_ratio
        self.has_residual = strides == 1 and input_filters == output_filters
        self.se = None  # Created by the subclass in op order, so weights list in op order.
        self.drop_path = None
        if self.has_residual and survival_prob and survival_prob < 1.0:
            self.drop_path = StochasticDepth(survival_prob, name='drop_path')
        self.dropout = None
        if conv_dropout and expand_ratio > 1:
            self.dropout = keras.layers.Dropout(conv_dropout, name='conv_dropout')

    def _make_se(self):
        if self.se_ratio is not None and 0 < self.se_ratio <= 1:
            # The bottleneck width comes from the block *input*, not the expanded width.
            reduced = max(1, int(self.input_filters * self.se_ratio))
            self.se = SqueezeExcite(
                self.expanded_filters, reduced, self.act_fn, self.data_format, name='se'
            )

    def _norm(self, name):
        return _norm(
            name, self.bn_momentum, self.bn_epsilon, self.sync_bn, self.fused_bn, self.data_format
        )

    def _conv(self, filters, kernel_size, strides, name):
        return _conv(filters, kernel_size, strides, name, self.data_format)

    def _residual(self, inputs, x, training):
        if not self.has_residual:
            return x
        if self.drop_path is not None:
            x = self.drop_path(x, training=training)
        return x + inputs

    def compute_output_shape(self, input_shape):
        return _strided_shape(input_shape, self.output_filters, self.strides, self.data_format)

    def get_config(self):
        config = super().get_config()
        config.update(
            input_filters=self.input_filters,
            output_filters=self.output_filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            expand_ratio=self.expand_ratio,
            se_ratio=self.se_ratio,
            survival_prob=self.survival_prob,
            act_fn=self.act_fn,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            sync_bn=self.sync_bn,
            fused_bn=self.fused_bn,
            conv_dropout=self.conv_dropout,
            data_format=self.data_format,
        )
        return config


@register
class MBConvBlock(_Block):
    """Inverted residual block with a depthwise convolution (MobileNetV2 / EfficientNet)."""

    def __init__(self, input_filters, output_filters, **kwargs):
        super().__init__(input_filters, output_filters, **kwargs)
        self.expand_conv = self.expand_bn = None
        if self.expand_ratio != 1:
            self.expand_conv = self._conv(self.expanded_filters, 1, 1, 'expand_conv')
            self.expand_bn = self._norm('expand_bn')
        self.dwconv = keras.layers.DepthwiseConv2D(
            self.kernel_size,
            strides=self.strides,
            padding='same',
            use_bias=False,
            depthwise_initializer=conv_kernel_initializer(),
            data_format=self.data_format,
            name='dwconv',
        )
        self.bn = self._norm('bn')
        self._make_se()
        self.project_conv = self._conv(self.output_filters, 1, 1, 'project_conv')
        self.project_bn = self._norm('project_bn')

    def build(self, input_shape):
        shape = _channels(input_shape, self.input_filters, self.data_format)
        if self.expand_conv is not None:
            self.expand_conv.build(shape)
            shape = _channels(shape, self.expanded_filters, self.data_format)
            self.expand_bn.build(shape)
        self.dwconv.build(shape)
        self.bn.build(shape)
        if self.se is not None:
            self.se.build(shape)
        self.project_conv.build(shape)
        self.project_bn.build(_channels(shape, self.output_filters, self.data_format))

    def call(self, inputs, training=None):
        x = inputs
        if self.expand_conv is not None:
            x = self._act(self.expand_bn(self.expand_conv(x), training=training))
        x = self._act(self.bn(self.dwconv(x), training=training))
        if self.dropout is not None:
            x = self.dropout(x, training=training)
        if self.se is not None:
            x = self.se(x)
        x = self.project_bn(self.project_conv(x), training=training)
        return self._residual(inputs, x, training)


@register
class FusedMBConvBlock(_Block):
    """EfficientNetV2's Fused-MBConv: the 1x1 expansion and depthwise conv fused into one kxk."""

    def __init__(self, input_filters, output_filters, **kwargs):
        super().__init__(input_filters, output_filters, **kwargs)
        self.expand_conv = self.expand_bn = None
        if self.expand_ratio != 1:
            self.expand_conv = self._conv(
                self.expanded_filters, self.kernel_size, self.strides, 'expand_conv'
            )
            self.expand_bn = self._norm('expand_bn')
            self._make_se()
            self.project_conv = self._conv(self.output_filters, 1, 1, 'project_conv')
        else:
            # A single strided kxk conv straight to the output width, followed by an activation.
            self.project_conv = self._conv(
                self.output_filters, self.kernel_size, self.strides, 'project_conv'
            )
        self.project_bn = self._norm('project_bn')

    def build(self, input_shape):
        shape = _channels(input_shape, self.input_filters, self.data_format)
        if self.expand_conv is not None:
            self.expand_conv.build(shape)
            shape = _channels(shape, self.expanded_filters, self.data_format)
            self.expand_bn.build(shape)
            if self.se is not None:
                self.se.build(shape)
        self.project_conv.build(shape)
        self.project_bn.build(_channels(shape, self.output_filters, self.data_format))

    def call(self, inputs, training=None):
        x = inputs
        if self.expand_conv is not None:
            x = self._act(self.expand_bn(self.expand_conv(x), training=training))
            if self.dropout is not None:
                x = self.dropout(x, training=training)
            if self.se is not None:
                x = self.se(x)
            x = self.project_bn(self.project_conv(x), training=training)
        else:
            x = self._act(self.project_bn(self.project_conv(x), training=training))
        return self._residual(inputs, x, training)


@register
class ConvBNAct(keras.layers.Layer):
    """Conv (no bias) -> BN -> activation: the stem (3x3, stride 2) and the head (1x1)."""

    def __init__(
        self,
        filters,
        kernel_size=3,
        strides=1,
        act_fn='silu',
        bn_momentum=0.9,
        bn_epsilon=1e-3,
        sync_bn=False,
        fused_bn=True,
        data_format='channels_last',
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.act_fn = act_fn
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.sync_bn = sync_bn
        self.fused_bn = fused_bn
        self.data_format = data_format
        self._act = get_activation(act_fn)
        self.conv = _conv(filters, kernel_size, strides, 'conv', data_format)
        self.bn = _norm('bn', bn_momentum, bn_epsilon, sync_bn, fused_bn, data_format)

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.bn.build(_channels(input_shape, self.filters, self.data_format))

    def call(self, inputs, training=None):
        return self._act(self.bn(self.conv(inputs), training=training))

    def compute_output_shape(self, input_shape):
        return _strided_shape(input_shape, self.filters, self.strides, self.data_format)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            act_fn=self.act_fn,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            sync_bn=self.sync_bn,
            fused_bn=self.fused_bn,
            data_format=self.data_format,
        )
        return config


def _strided_shape(input_shape, channels, strides, data_format):
    """Output shape of a 'same'-padded strided op: spatial dims ceil-divided, new channels."""
    shape = list(input_shape)
    for axis in [2, 3] if data_format == 'channels_first' else [1, 2]:
        if shape[axis] is not None:
            shape[axis] = -(-shape[axis] // strides)
    return _channels(shape, channels, data_format)


def _channels(shape, channels, data_format):
    shape = list(shape)
    shape[1 if data_format == 'channels_first' else -1] = channels
    return tuple(shape)
