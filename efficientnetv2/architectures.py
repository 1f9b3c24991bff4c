"""The published EfficientNet (V1) and EfficientNetV2 variants.

Each variant is a base block list plus scaling numbers and the official training sizes and
regularisation. Numbers are those of the official code (google/automl `efficientnetv2/` for V2,
tensorflow/tpu `efficientnet/` for V1); the paper's progressive-learning targets (Table 6)
are kept beside them for the training recipe.
"""

import dataclasses

# The `model` section of a run config: every hyper-parameter of the `EfficientNet` constructor
# (what the network is, not how it is built: no head, pooling or input options) with its
# default. The package's one source of model defaults: the constructor's signature reads its
# defaults from here (`efficientnetv2.model`), and so does the run config (`config.py`).
# `blocks`, which the constructor requires, is the empty list.
DEFAULT_MODEL_HPARAMS = {
    'blocks': [],
    'width_coefficient': 1.0,
    'depth_coefficient': 1.0,
    'depth_divisor': 8,
    'min_depth': 8,
    'round_filters_10pct': False,
    'feature_size': 1280,
    'dropout_rate': 0.2,
    'survival_prob': 0.8,
    'bn_momentum': 0.9,
    'bn_epsilon': 1e-3,
    'act_fn': 'silu',
    'sync_bn': False,
    'fused_bn': True,
    'conv_dropout': 0.0,
    'headbias': None,
    'bn_group_size': 8,
    'num_classes': 1000,
    'data_format': 'channels_last',
    'model_name': None,
}

# V1 B0, all MBConv with SE 0.25 (V1 paper, Table 1).
V1_BASE_BLOCKS = (
    'r1_k3_s1_e1_i32_o16_se0.25',
    'r2_k3_s2_e6_i16_o24_se0.25',
    'r2_k5_s2_e6_i24_o40_se0.25',
    'r3_k3_s2_e6_i40_o80_se0.25',
    'r3_k5_s1_e6_i80_o112_se0.25',
    'r4_k5_s2_e6_i112_o192_se0.25',
    'r1_k3_s1_e6_i192_o320_se0.25',
)

# V2 base for b0-b3: three Fused-MBConv stages then MBConv with SE.
V2_BASE_BLOCKS = (
    'r1_k3_s1_e1_i32_o16_c1',
    'r2_k3_s2_e4_i16_o32_c1',
    'r2_k3_s2_e4_i32_o48_c1',
    'r3_k3_s2_e4_i48_o96_se0.25',
    'r5_k3_s1_e6_i96_o112_se0.25',
    'r8_k3_s2_e6_i112_o192_se0.25',
)

V2_S_BLOCKS = (
    'r2_k3_s1_e1_i24_o24_c1',
    'r4_k3_s2_e4_i24_o48_c1',
    'r4_k3_s2_e4_i48_o64_c1',
    'r6_k3_s2_e4_i64_o128_se0.25',
    'r9_k3_s1_e6_i128_o160_se0.25',
    'r15_k3_s2_e6_i160_o256_se0.25',
)

V2_M_BLOCKS = (
    'r3_k3_s1_e1_i24_o24_c1',
    'r5_k3_s2_e4_i24_o48_c1',
    'r5_k3_s2_e4_i48_o80_c1',
    'r7_k3_s2_e4_i80_o160_se0.25',
    'r14_k3_s1_e6_i160_o176_se0.25',
    'r18_k3_s2_e6_i176_o304_se0.25',
    'r5_k3_s1_e6_i304_o512_se0.25',
)

V2_L_BLOCKS = (
    'r4_k3_s1_e1_i32_o32_c1',
    'r7_k3_s2_e4_i32_o64_c1',
    'r7_k3_s2_e4_i64_o96_c1',
    'r10_k3_s2_e4_i96_o192_se0.25',
    'r19_k3_s1_e6_i192_o224_se0.25',
    'r25_k3_s2_e6_i224_o384_se0.25',
    'r7_k3_s1_e6_i384_o640_se0.25',
)

V2_XL_BLOCKS = (
    'r4_k3_s1_e1_i32_o32_c1',
    'r8_k3_s2_e4_i32_o64_c1',
    'r8_k3_s2_e4_i64_o96_c1',
    'r16_k3_s2_e4_i96_o192_se0.25',
    'r24_k3_s1_e6_i192_o256_se0.25',
    'r32_k3_s2_e6_i256_o512_se0.25',
    'r8_k3_s1_e6_i512_o640_se0.25',
)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One published model: architecture plus its official image sizes and regularisation.

    Attributes:
        name: the model name, e.g. 'efficientnetv2-s'.
        family: 'v1' or 'v2'.
        blocks: base block strings (before scaling).
        width_coefficient, depth_coefficient: compound-scaling multipliers.
        eval_size: evaluation resolution (V1: the model's resolution).
        train_size: the official code's final training resolution.
        dropout_rate: dropout before the classifier (official).
        randaug_magnitude: final RandAugment magnitude (V2-S/M/L/XL).
        mix_alpha: final mixup = cutmix alpha.
        augname: official augmentation ('randaug' or 'effnetv1_autoaug').
        paper_final: the paper's Table 6 final (size, RandAugment, mixup, dropout), where given.
        keras_name: the keras.applications constructor for the same architecture, if any.
    """

    name: str
    family: str
    blocks: tuple
    width_coefficient: float
    depth_coefficient: float
    eval_size: int
    train_size: int
    dropout_rate: float
    randaug_magnitude: float = 0.0
    mix_alpha: float = 0.0
    augname: str = 'randaug'
    paper_final: tuple = None
    keras_name: str = None

    @property
    def is_v1(self):
        return self.family == 'v1'

    @property
    def preprocess(self):
        """Pixel scaling family: V2-S/M/L/XL use (x-128)/128, the b-models ImageNet mean/std."""
        return 'legacy' if self.augname.startswith('effnetv1') else 'v2'

    def model_hparams(self):
        """The `model` config section this variant sets."""
        return dict(
            model_name=self.name,
            blocks=list(self.blocks),
            width_coefficient=self.width_coefficient,
            depth_coefficient=self.depth_coefficient,
            dropout_rate=self.dropout_rate,
            # V1 code: BN momentum 0.99 and the 10% filter-rounding rule; V2 code: 0.9, no rule.
            bn_momentum=0.99 if self.is_v1 else 0.9,
            round_filters_10pct=self.is_v1,
        )


def _v1(name, width, depth, res, dropout, keras_name=None):
    # The V2 code trains V1 models at 0.8 x resolution floored to 16; the V1 code at full size.
    return Variant(
        name=name,
        family='v1',
        blocks=V1_BASE_BLOCKS,
        width_coefficient=width,
        depth_coefficient=depth,
        eval_size=res,
        train_size=int(res * 0.8) // 16 * 16,
        dropout_rate=dropout,
        augname='effnetv1_autoaug',
        keras_name=keras_name,
    )


def _v2b(name, width, depth, train_size, eval_size, dropout, keras_name):
    return Variant(
        name=name,
        family='v2',
        blocks=V2_BASE_BLOCKS,
        width_coefficient=width,
        depth_coefficient=depth,
        eval_size=eval_size,
        train_size=train_size,
        dropout_rate=dropout,
        augname='effnetv1_autoaug',
        keras_name=keras_name,
    )


# A table, one variant a row: kept out of the formatter.
# fmt: off
_VARIANTS = (
    Variant('efficientnetv2-s', 'v2', V2_S_BLOCKS, 1.0, 1.0, 384, 300, 0.2, 10, 0.0,
            paper_final=(300, 15, 0.0, 0.3), keras_name='EfficientNetV2S'),
    Variant('efficientnetv2-m', 'v2', V2_M_BLOCKS, 1.0, 1.0, 480, 384, 0.3, 15, 0.2,
            paper_final=(380, 20, 0.2, 0.4), keras_name='EfficientNetV2M'),
    Variant('efficientnetv2-l', 'v2', V2_L_BLOCKS, 1.0, 1.0, 480, 384, 0.4, 20, 0.5,
            paper_final=(380, 25, 0.4, 0.5), keras_name='EfficientNetV2L'),
    Variant('efficientnetv2-xl', 'v2', V2_XL_BLOCKS, 1.0, 1.0, 512, 384, 0.4, 20, 0.5),
    _v2b('efficientnetv2-b0', 1.0, 1.0, 192, 224, 0.2, 'EfficientNetV2B0'),
    _v2b('efficientnetv2-b1', 1.0, 1.1, 192, 240, 0.2, 'EfficientNetV2B1'),
    _v2b('efficientnetv2-b2', 1.1, 1.2, 208, 260, 0.3, 'EfficientNetV2B2'),
    _v2b('efficientnetv2-b3', 1.2, 1.4, 240, 300, 0.3, 'EfficientNetV2B3'),
    _v1('efficientnet-b0', 1.0, 1.0, 224, 0.2, 'EfficientNetB0'),
    _v1('efficientnet-b1', 1.0, 1.1, 240, 0.2, 'EfficientNetB1'),
    _v1('efficientnet-b2', 1.1, 1.2, 260, 0.3, 'EfficientNetB2'),
    _v1('efficientnet-b3', 1.2, 1.4, 300, 0.3, 'EfficientNetB3'),
    _v1('efficientnet-b4', 1.4, 1.8, 380, 0.4, 'EfficientNetB4'),
    _v1('efficientnet-b5', 1.6, 2.2, 456, 0.4, 'EfficientNetB5'),
    _v1('efficientnet-b6', 1.8, 2.6, 528, 0.5, 'EfficientNetB6'),
    _v1('efficientnet-b7', 2.0, 3.1, 600, 0.5, 'EfficientNetB7'),
    _v1('efficientnet-b8', 2.2, 3.6, 672, 0.5),
    _v1('efficientnet-l2', 4.3, 5.3, 800, 0.5),
)
# fmt: on

VARIANTS = {v.name: v for v in _VARIANTS}


def list_models():
    """Names of every published variant, V2 first."""
    return [v.name for v in _VARIANTS]


def get_variant(name):
    """Looks a variant up by name (case-insensitive).

    Raises:
        ValueError: unknown name; the message lists the valid names.
    """
    key = str(name).strip().lower()
    if key not in VARIANTS:
        import difflib

        close = difflib.get_close_matches(key, VARIANTS, n=3)
        hint = (' Did you mean {}?'.format(' or '.join(close))) if close else ''
        raise ValueError(
            'Unknown model name {!r}.{} Valid names: {}.'.format(
                name, hint, ', '.join(list_models())
            )
        )
    return VARIANTS[key]


# Models registered at run time (efficientnetv2.scaling): looked up by name like the published
# ones, not listed by list_models().
_REGISTERED = {}


def register(variant, replace=False):
    """Makes `variant` (a `Variant`) known by its name to get_variant, get_model, --model_name and
    configs. Registering the same numbers again is a no-op.

    Raises:
        ValueError: the name is a built-in model, or is registered with other numbers (unless
            `replace`).
    """
    name = str(variant.name).strip().lower()
    if not name:
        raise ValueError('A registered model needs a name.')
    variant = dataclasses.replace(variant, name=name)
    if name in VARIANTS and name not in _REGISTERED:
        raise ValueError(f'{name!r} is a built-in model; register the variant under another name.')
    if name in _REGISTERED and _REGISTERED[name] != variant and not replace:
        raise ValueError(
            f'{name!r} is already registered with other numbers; pick another name or pass '
            'replace=True.'
        )
    _REGISTERED[name] = variant
    VARIANTS[name] = variant
    return variant


def unregister(name):
    """Forgets a registered model (built-in models stay)."""
    name = str(name).strip().lower()
    if _REGISTERED.pop(name, None) is not None:
        del VARIANTS[name]


def registered_models():
    """Names of the models registered at run time."""
    return list(_REGISTERED)


def variant_from_config(values):
    """The `Variant` a config mapping defines, or None.

    Two kinds of mapping define one: a `scaling` section (what `efficientnetv2.scaling` writes:
    the base model whose recipe the variant keeps, and the scaled eval / train sizes) with the
    `model` section's name, blocks and coefficients; or, without it, a whole run config (a
    run's config.yaml), whose model section and train / eval / data sections give the rest.
    """
    model = dict(values.get('model') or {})
    name, blocks = model.get('model_name'), model.get('blocks')
    if not name or not blocks:
        return None
    scaled = values.get('scaling')
    if scaled:
        base = get_variant(scaled['base'])
        return dataclasses.replace(
            base,
            name=str(name).strip().lower(),
            blocks=tuple(blocks),
            width_coefficient=float(model.get('width_coefficient', base.width_coefficient)),
            depth_coefficient=float(model.get('depth_coefficient', base.depth_coefficient)),
            eval_size=int(scaled.get('eval_size', base.eval_size)),
            train_size=int(scaled.get('train_size', base.train_size)),
            dropout_rate=float(model.get('dropout_rate', base.dropout_rate)),
            paper_final=None,
            keras_name=None,
        )
    train, evaluation, data = (dict(values.get(k) or {}) for k in ('train', 'eval', 'data'))
    eval_size = int(evaluation.get('image_size', 224))
    train_size = train.get('image_size', eval_size)
    if train_size <= 16:  # A fraction of the eval size (16ths), as the trainer reads it.
        train_size = int(eval_size * train_size) // 16 * 16
    return Variant(
        name=str(name).strip().lower(),
        family='v1' if model.get('round_filters_10pct') else 'v2',
        blocks=tuple(blocks),
        width_coefficient=float(model.get('width_coefficient', 1.0)),
        depth_coefficient=float(model.get('depth_coefficient', 1.0)),
        eval_size=eval_size,
        train_size=int(train_size),
        dropout_rate=float(model.get('dropout_rate', 0.2)),
        randaug_magnitude=float(data.get('ram', 0.0) or 0.0),
        mix_alpha=float(data.get('mixup_alpha', 0.0) or 0.0),
        augname=data.get('augname') or 'randaug',
    )


def register_from_config(values):
    """Registers the model a config mapping defines (see `variant_from_config`) when its name is
    not known yet; returns the registered name or None. Known names are left alone (the
    config's values override them as usual)."""
    variant = variant_from_config(values or {})
    if variant is None or variant.name in VARIANTS:
        return None
    return register(variant).name


# Table 3's Fused-MBConv ablation of B4 (efficientnetv2/fused_ablation.py): looked up by name,
# not listed by list_models().
from efficientnetv2 import fused_ablation as _fused_ablation  # noqa: E402

VARIANTS.update((v.name, v) for v in _fused_ablation.variants(VARIANTS[_fused_ablation.BASE_MODEL]))
