"""Parameters and multiply-adds of an EfficientNet, counted from its block strings (no TensorFlow).

`efficientnetv2.summary` counts a built Keras model (params from its weights, MACs from the
traced graph); building and tracing B7 takes tens of seconds. The scaling search evaluates a
model at hundreds of coefficients, so it counts the same figures analytically, layer by layer as
`efficientnetv2.model` / `layers` build them (tests check both agree digit for digit):

- stem: 3x3 stride-2 conv (no bias) + BN; head: 1x1 conv to round_filters(feature_size) + BN;
  classifier: dense with bias (MACs = in x out).
- MBConv: [1x1 expand + BN] -> kxk depthwise (strided) + BN -> [SE] -> 1x1 project + BN.
- Fused-MBConv: kxk expand (strided) + BN -> [SE] -> 1x1 project + BN; with expansion 1 a single
  kxk conv to the output + BN and no SE.
- SE: two 1x1 convs with bias on the pooled vector, bottleneck max(1, int(input x se_ratio)).
- 'same' padding: a stride-s layer maps n pixels to ceil(n / s).

MACs are the convolutions' and the classifier's (what `summary.count_flops` counts); params are
(trainable, non-trainable): BN has 2 trainable and 2 non-trainable values per channel.
"""

from efficientnetv2 import blocks as blocks_lib


def _ceil_div(n, s):
    return -(-n // s)


def count(
    blocks,
    image_size,
    width_coefficient=1.0,
    depth_coefficient=1.0,
    depth_divisor=8,
    min_depth=8,
    round_filters_10pct=False,
    feature_size=1280,
    num_classes=1000,
    include_top=True,
    **unused,
):
    """(trainable params, non-trainable params, MACs at `image_size` x `image_size`).

    The keyword arguments are those of `efficientnetv2.EfficientNet` (others are ignored, so a
    config's `model` section can be passed as is).
    """
    del unused
    base = blocks_lib.decode_list(list(blocks))
    stages = blocks_lib.scale_stages(
        base,
        width_coefficient,
        depth_coefficient,
        depth_divisor,
        min_depth,
        round_filters_10pct,
    )

    def width(f):
        return blocks_lib.round_filters(
            f, width_coefficient, depth_divisor, min_depth, round_filters_10pct
        )

    trainable = frozen = macs = 0

    def conv(cin, cout, k, pixels, bias=False):
        nonlocal trainable, macs
        trainable += k * k * cin * cout + (cout if bias else 0)
        macs += pixels * k * k * cin * cout

    def bn(channels):
        nonlocal trainable, frozen
        trainable += 2 * channels
        frozen += 2 * channels

    size = _ceil_div(int(image_size), 2)
    stem = width(base[0].input_filters)
    conv(3, stem, 3, size * size)
    bn(stem)
    for stage in stages:
        for repeat in range(stage.num_repeat):
            cin = stage.input_filters if repeat == 0 else stage.output_filters
            cout = stage.output_filters
            stride = stage.strides if repeat == 0 else 1
            k = stage.kernel_size
            expanded = cin * stage.expand_ratio
            before = size * size
            size = _ceil_div(size, stride)
            after = size * size
            se = stage.has_se
            if stage.conv_type:  # Fused-MBConv.
                if stage.expand_ratio != 1:
                    conv(cin, expanded, k, after)
                    bn(expanded)
                else:
                    conv(cin, cout, k, after)
                    bn(cout)
                    continue
            else:
                if stage.expand_ratio != 1:
                    conv(cin, expanded, 1, before)
                    bn(expanded)
                trainable += k * k * expanded  # Depthwise.
                macs += after * k * k * expanded
                bn(expanded)
            if se:
                reduced = max(1, int(cin * stage.se_ratio))
                conv(expanded, reduced, 1, 1, bias=True)
                conv(reduced, expanded, 1, 1, bias=True)
            conv(expanded, cout, 1, after)
            bn(cout)
    last = stages[-1].output_filters
    head = width(feature_size)
    conv(last, head, 1, size * size)
    bn(head)
    if include_top:
        trainable += head * num_classes + num_classes
        macs += head * num_classes
    return trainable, frozen, macs
