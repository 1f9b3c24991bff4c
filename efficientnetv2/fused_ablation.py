"""EfficientNet-B4 with Fused-MBConv in its first stages: the EfficientNetV2 paper's Table 3.

The paper replaces MBConv by Fused-MBConv in the first 3, 5 or all 7 stages of EfficientNet-B4
("Fused stage1-3" counts the stages after the stem; its caption's numbering, which gives the
stem the number 1, calls them stages 2-4). These variants are registered as

    efficientnet-b4-fused1-3, efficientnet-b4-fused1-5, efficientnet-b4-fused1-7

so `efficientnetv2.get_model('efficientnet-b4-fused1-3')` and `--model_name` accept them. They
carry B4's scaling, sizes and regularisation.

Replacement rule (`fuse_blocks`): in each replaced stage the block type becomes Fused-MBConv
(`c1`) and squeeze-excitation is removed, as in EfficientNetV2's own Fused-MBConv stages; the
repeats, kernel size, stride, expansion ratio and channels stay those of the MBConv stage
(so B4's 5x5 stages become 5x5 Fused-MBConv).

How well it reproduces Table 3 (trainable parameters; multiply-adds at 380 px, counted with
`efficientnetv2.summary`; exact figures in `COMPUTED`):

| variant    | paper params | ours    | paper FLOPs | ours   |
| ---------- | ------------ | ------- | ----------- | ------ |
| no fused   | 19.3M        | 19.34M  | 4.5B        | 4.39B  |
| fused1-3   | 20.0M        | 20.95M  | 7.5B        | 9.65B  |
| fused1-5   | 43.4M        | 43.53M  | 21.3B       | 23.00B |
| fused1-7   | 132.0M       | 132.12M | 34.4B       | 36.04B |

The parameter counts of fused1-5 and fused1-7 match to 0.13M and 0.12M; fused1-3 is 0.95M
high. No rule applied alike to every replaced stage matches all three rows (kernel kept or 3x3,
SE kept or dropped, expansion kept or set to 1/4/6 were all tried): keeping SE gives 44.20M
and 135.27M for the larger rows; turning every fused kernel into 3x3 matches fused1-3
(19.99M with SE, 7.34B) but gives 29.7M and 68.6M for the others. The per-stage best fit is
telling: fused1-3 matches (+0.65M, +2.95B over no-fused; paper +0.7M, +3.0B) only if the 5x5
stage 3 became 3x3, whereas the later 5x5 stages must stay 5x5 for fused1-5/1-7. Our FLOPs
are 0.11B below the paper for plain B4 (a counting convention: the paper's 4.5B is also
above the V1 paper's 4.2B) and 1.6-2.3B above for the fused rows, almost all from stage 3's
5x5 kernel (2.31B).
"""

import dataclasses

BASE_MODEL = 'efficientnet-b4'
FUSED_STAGES = (3, 5, 7)

# EfficientNetV2 paper, Table 3: params, FLOPs, ImageNet top-1, TPUv3 imgs/s/core, V100 imgs/s.
PAPER_TABLE3 = {
    BASE_MODEL: dict(params=19.3e6, flops=4.5e9, top1=82.8, tpu=262, v100=155),
    BASE_MODEL + '-fused1-3': dict(params=20.0e6, flops=7.5e9, top1=83.1, tpu=362, v100=216),
    BASE_MODEL + '-fused1-5': dict(params=43.4e6, flops=21.3e9, top1=83.1, tpu=327, v100=223),
    BASE_MODEL + '-fused1-7': dict(params=132.0e6, flops=34.4e9, top1=81.7, tpu=254, v100=206),
}

# Our counts (trainable params, total params with BN statistics, MACs at 380 px).
COMPUTED = {
    BASE_MODEL: dict(trainable=19341616, total=19466816, flops=4393771024),
    BASE_MODEL + '-fused1-3': dict(trainable=20945870, total=21067086, flops=9648314752),
    BASE_MODEL + '-fused1-5': dict(trainable=43528144, total=43631024, flops=22995292864),
    BASE_MODEL + '-fused1-7': dict(trainable=132121624, total=132191096, flops=36044712640),
}


def variant_name(num_fused):
    return f'{BASE_MODEL}-fused1-{int(num_fused)}'


def fuse_blocks(block_strings, num_fused, drop_se=True):
    """Block strings with the first `num_fused` stages turned into Fused-MBConv.

    Args:
        block_strings: the base stages (e.g. `architectures.V1_BASE_BLOCKS`).
        num_fused: how many leading stages to replace (0 .. number of stages).
        drop_se: remove squeeze-excitation from the replaced stages (the registered rule).

    Raises:
        ValueError: num_fused outside 0 .. len(block_strings).
    """
    from efficientnetv2 import blocks as blocks_lib

    block_strings = list(block_strings)
    if not 0 <= num_fused <= len(block_strings):
        raise ValueError(f'num_fused must be in [0, {len(block_strings)}]. Received: {num_fused!r}')
    out = []
    for index, text in enumerate(block_strings):
        args = blocks_lib.decode(text)
        if index < num_fused:
            args = args.replace(conv_type=1, se_ratio=None if drop_se else args.se_ratio)
        out.append(blocks_lib.encode(args))
    return out


def variants(base):
    """The Table 3 variants of `base` (B4's `architectures.Variant`) with fused block strings.

    `architectures` registers them under their names; it passes its B4 in, so this module
    imports nothing of the registry (no import cycle).
    """
    return [
        dataclasses.replace(
            base, name=variant_name(n), keras_name=None, blocks=tuple(fuse_blocks(base.blocks, n))
        )
        for n in FUSED_STAGES
    ]


def list_variants():
    """Names of the Table 3 models, the no-fused baseline first."""
    return [BASE_MODEL] + [variant_name(n) for n in FUSED_STAGES]
