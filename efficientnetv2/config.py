"""Experiment configs: keys, types, defaults, per-model and per-dataset recipes, override order.

The bottom layer of the package's training side: data, not machinery. It imports only the pure
tables below it (`hparams`, `architectures`), never the model, data or training code nor Keras
or TensorFlow (tests/test_layering.py checks), and the choice lists that the implementing
modules accept (optimizer names, decay types, plan modes, the fine-tune recipe's datasets) are
defined here and imported by them.

A run's config is composed in a fixed order, each step strict about keys:

    defaults -> model recipe -> dataset recipe -> --config_file (YAML) -> --hparam_str

(`compose`) and saved as `config.yaml` in the model directory. A run's config is assembled
from names by `efficientnetv2.experiment.build_config`: it resolves the dataset, registers a
model a YAML file defines, composes, and adds the checks that need the data code. The
progressive-learning plan of a config is `efficientnetv2.train.progressive.plan_for_config`.

Recipes follow the EfficientNetV2 paper where it is specific (progressive learning, Algorithm 1,
with Table 6's targets for V2-S/M/L) and the official code elsewhere. `configs/*-official.yaml`
reproduce the official code's choices where they differ (see README).
"""

from efficientnetv2 import architectures
from efficientnetv2 import hparams

# -- choices the implementing modules accept (each is imported from here by its module) --------

# `train.optimizer`: the builders of `efficientnetv2.train.optimizers`.
OPTIMIZER_NAMES = ('rmsprop', 'rmsprop_keras', 'sgd', 'adam', 'adamw')
# `train.lr_sched`: the decays of `efficientnetv2.train.schedules.WarmupDecaySchedule`.
DECAY_TYPES = ('exponential', 'cosine', 'linear', 'constant')
# `train.progressive`: the interpolations of `efficientnetv2.train.progressive`.
PLAN_MODES = ('paper', 'official')

# Fine-tune configs: the official `*Ft` dataset configs read these datasets with the fine-tune
# transform family and augmentation ('ft': resize the whole image, flip, noise cutout). The
# dataset registry (`efficientnetv2.data.registry`) builds its `*Ft` entries from these, and
# `DATASET_RECIPES` gives each the fine-tune recipe.
FINETUNE_PREPROCESS = 'ft'
FINETUNE_AUGNAME = 'ft'
FINETUNE_BASES = {
    'imagenetFt': 'imagenettfds',
    'cifar10Ft': 'cifar10',
    'cifar100Ft': 'cifar100',
    'flowersFt': 'flowers',
    'carsFt': 'cars',
    'tfflowersFt': 'tfflowers',
}

_S = hparams.Spec
_PROBABILITY = dict(low=0.0, high=1.0)

# Types and ranges of the run config's keys. Every other key is typed by its default value
# (hparams.derive_schema): bool, int, float (ints accepted), str or list, None not allowed.
# Entries here add ranges and choices, or type keys whose default is None.
KEY_SPECS = {
    'model.model_name': _S('str', nullable=True),
    'model.width_coefficient': _S('float', low=0.0, low_open=True),
    'model.depth_coefficient': _S('float', low=0.0, low_open=True),
    'model.depth_divisor': _S('int', low=0, low_open=True),
    'model.min_depth': _S('int', low=0, low_open=True, nullable=True),
    'model.feature_size': _S('int', low=0, low_open=True),
    'model.dropout_rate': _S('float', low=0.0, high=1.0, high_open=True),
    'model.survival_prob': _S('float', low=0.0, high=1.0, low_open=True, nullable=True),
    'model.bn_momentum': _S('float', **_PROBABILITY),
    'model.bn_epsilon': _S('float', low=0.0, low_open=True),
    'model.bn_group_size': _S('int', low=0),
    'model.conv_dropout': _S('float', low=0.0, high=1.0, high_open=True),
    'model.headbias': _S('float', nullable=True),
    'model.num_classes': _S('int', low=0, low_open=True),
    'model.data_format': _S('str', choices=('channels_last', 'channels_first')),
    'train.epochs': _S('number', low=0, low_open=True),
    'train.min_steps': _S('int', low=0),
    'train.batch_size': _S('int', low=0, low_open=True),
    'train.optimizer': _S('str', choices=OPTIMIZER_NAMES),
    'train.lr_sched': _S('str', choices=DECAY_TYPES),
    'train.loss_type': _S('str', choices=('softmax', 'sigmoid', 'custom')),
    'train.progressive': _S('str', choices=PLAN_MODES),
    'train.lr_base': _S('float', low=0.0),
    'train.lr_decay_factor': _S('float', low=0.0, high=1.0, low_open=True),
    'train.lr_decay_epochs': _S('float', low=0.0, low_open=True),
    'train.lr_warmup_epochs': _S('float', low=0.0),
    'train.lr_min': _S('float', low=0.0),
    'train.ema_decay': _S('float', low=0.0, high=1.0, high_open=True),
    'train.weight_decay': _S('float', low=0.0),
    'train.label_smoothing': _S('float', low=0.0, high=1.0, high_open=True),
    'train.gclip': _S('float', low=0.0),
    'train.image_size': _S('number', low=0, low_open=True),
    'train.stages': _S('int', low=0),
    'train.min_image_size': _S('number', low=0, nullable=True),
    'train.min_ram': _S('float', low=0.0),
    'train.min_mixup': _S('float', low=0.0),
    'train.min_cutmix': _S('float', low=0.0),
    'train.min_dropout': _S('float', low=0.0, high=1.0, high_open=True),
    'train.resize_warmup': _S('float', low=0.0, high=1.0),
    'train.resize_lr_power': _S('float', low=0.0),
    'train.resize_augment_pixels': _S('bool', nullable=True),
    'train.steps_per_loop': _S('int', low=0, low_open=True),
    'train.ckpt_interval': _S('int', low=0, low_open=True),
    'train.keep_ckpt_max': _S('int', low=0, low_open=True),
    'train.ft_init_ckpt': _S('str', nullable=True),
    'train.seed': _S('int', low=0, nullable=True),
    'eval.image_size': _S('int', low=0, low_open=True),
    'eval.batch_size': _S('int', low=0, low_open=True),
    'eval.steps': _S('int', low=0, low_open=True, nullable=True),
    'eval.timeout': _S('number', low=0),
    'data.dataset': _S('str'),
    'data.data_dir': _S('str', nullable=True),
    'data.preprocess': _S('str', choices=('v2', 'legacy', 'ft'), nullable=True),
    'data.augname': _S('str', nullable=True),
    'data.ram': _S('float', low=0.0),
    'data.ra_num_layers': _S('int', low=0),
    'data.mixup_alpha': _S('float', low=0.0),
    'data.cutmix_alpha': _S('float', low=0.0),
    'data.cache': _S('any', nullable=True),  # None (auto), a bool, or a cache file path.
    'data.shuffle_buffer': _S('int', low=0, low_open=True, nullable=True),
    'data.solarize_wrap': _S('bool'),
    'runtime.mixed_precision': _S(
        'str', choices=('float32', 'mixed_float16', 'mixed_bfloat16'), nullable=True
    ),
    'runtime.strategy': _S('str', choices=('auto', 'cpu', 'gpus', 'multi_worker', 'tpu')),
    'runtime.jit_compile': _S('bool', nullable=True),
}


def default_config():
    """Every key a run understands, with the ImageNet recipe's values (SPEC §3).

    The config is typed (`KEY_SPECS` and the defaults' own types): a value of the wrong type or
    out of range is refused when it is set, naming the key.
    """
    return hparams.typed_config(_default_values(), KEY_SPECS)


def _default_values():
    return dict(
        model=dict(architectures.DEFAULT_MODEL_HPARAMS),
        train=dict(
            epochs=350,  # Length of the run, in epochs of the train split.
            min_steps=0,  # The run is max(min_steps, epochs * images // batch).
            batch_size=4096,  # Global batch over all replicas.
            optimizer='rmsprop',  # rmsprop (TF1 semantics), rmsprop_keras, sgd, adam, ...
            lr_base=0.016,  # Per 256 images; scaled by batch_size / 256.
            lr_sched='exponential',  # exponential, cosine, linear, constant.
            lr_decay_factor=0.97,
            lr_decay_epochs=2.4,
            lr_warmup_epochs=5.0,
            lr_min=0.0,  # Floor, per 256 images like lr_base.
            ema_decay=0.9999,  # 0 disables the moving average.
            weight_decay=1e-5,  # Coupled L2 on conv/dense kernels.
            label_smoothing=0.1,
            loss_type='softmax',  # softmax, sigmoid (multi-label), custom.
            gclip=0.0,  # Gradient clipping norm; 0 = off.
            image_size=300,  # Final train size; a value <= 16 is a fraction of eval.
            stages=4,  # Progressive-learning stages; 0 = fixed size.
            progressive='paper',  # paper (Algorithm 1) or official (the released code).
            min_image_size=None,  # Interpolation start (paper S0, official data.ibase);
            # None: progressive.default_min_image_size (128).
            min_ram=5.0,  # Stage-0 RandAugment magnitude.
            min_mixup=0.0,
            min_cutmix=0.0,
            min_dropout=0.1,  # Stage-0 dropout (paper mode only).
            # The learning rate of each progressive stage fits its image size
            # (schedules.ResizeWarmup, docs/progressive.md): times (size / final size) **
            # resize_lr_power, and ramped up again from 0 over the first resize_warmup share of
            # each stage that starts at a larger size. 0 and 0 are the released code, which the
            # ImageNet recipes keep (batch 4096; their size changes come at 3-33% of the peak
            # rate); every other dataset uses 1 and 0.2 (a short run at a small batch meets
            # the first, smallest stage and its size changes near the peak rate).
            resize_lr_power=1.0,
            resize_warmup=0.2,
            # RandAugment's and AutoAugment's Translate and Cutout sizes (absolute pixels in
            # the released code) times stage size / final size in each progressive stage, so
            # they take the same share of a small stage's images as of the final size's and
            # the magnitude ramp stays a ramp (docs/progressive.md). None: on for the paper
            # plan, off for the official plan (the released code's, whose sizes start higher;
            # there it cost short runs accuracy). False is the released code, which the ImageNet
            # recipes keep. The final stage and fixed-size runs are unchanged either way.
            resize_augment_pixels=None,
            steps_per_loop=100,  # Train steps per compiled call.
            ckpt_interval=1000,  # Steps between checkpoints (also at every stage end).
            keep_ckpt_max=5,
            ft_init_ckpt=None,  # Fine-tune from this checkpoint (head skipped).
            ft_init_ema=True,  # ... preferring its EMA weights.
            seed=None,
        ),
        eval=dict(
            image_size=384,
            batch_size=8,
            split='eval',
            steps=None,  # None: the whole split.
            timeout=86400,  # --mode=eval waits this long for a new checkpoint.
        ),
        data=dict(
            dataset='imagenet',
            data_dir=None,
            train_split='train',
            preprocess=None,  # v2, legacy, ft; None: chosen from augname.
            augname='randaug',  # randaug, autoaug, ra_aa, effnetv1_autoaug, ft, None.
            ram=15.0,  # Final RandAugment magnitude.
            ra_num_layers=2,
            solarize_wrap=True,  # Solarize wraps mod 256 as released; False clamps.
            mixup_alpha=0.0,  # Final mixup alpha.
            cutmix_alpha=0.0,  # Final CutMix alpha.
            cache=None,  # None: cache splits small enough to fit in memory.
            shuffle_buffer=None,
        ),
        runtime=dict(
            strategy='auto',  # auto, cpu, gpus, multi_worker, tpu.
            mixed_precision=None,  # None: bfloat16 on TPU, float16 on GPU, float32 on CPU.
            deterministic=False,  # Deterministic ops and exact data replay on resume.
            jit_compile=None,  # XLA train step, compiled per stage; None: on for TPU/GPU.
        ),
    )


def model_recipe(model_name):
    """Overrides a published variant brings (architecture, sizes, regularisation).

    `model_name` is a name or an `architectures.Variant` (e.g. a scaled one not registered).
    """
    if isinstance(model_name, architectures.Variant):
        variant = model_name
    else:
        variant = architectures.get_variant(model_name)
    recipe = dict(
        model=variant.model_hparams(),
        # V2-S/M/L follow the paper (Algorithm 1 to Table 6's targets); V2-B0..B3 and XL, which
        # Table 6 does not cover, follow the released code's plan to its final values.
        train=dict(
            image_size=variant.train_size,
            stages=0 if variant.is_v1 else 4,
            progressive='paper' if variant.paper_final or variant.is_v1 else 'official',
        ),
        eval=dict(image_size=variant.eval_size),
        data=dict(
            augname=variant.augname,
            preprocess=variant.preprocess,
            ram=float(variant.randaug_magnitude or 0.0),
            mixup_alpha=variant.mix_alpha,
            cutmix_alpha=variant.mix_alpha,
        ),
    )
    if variant.paper_final:
        # Paper Table 6 targets for the last progressive stage (the paper adapts mixup only).
        size, ram, mixup, dropout = variant.paper_final
        recipe['train']['image_size'] = size
        recipe['data'].update(ram=float(ram), mixup_alpha=mixup, cutmix_alpha=0.0)
        recipe['model']['dropout_rate'] = dropout
    return recipe


_FINETUNE = dict(
    train=dict(
        batch_size=512,
        lr_base=0.0005,
        lr_sched='constant',
        lr_warmup_epochs=1.0,
        epochs=15,
        min_steps=10000,
        weight_decay=1e-5,
        ema_decay=0.9996,
        label_smoothing=0.1,
        stages=0,
        image_size=1.0,
    ),
    model=dict(dropout_rate=1e-6, survival_prob=0.8),
    data=dict(
        augname=FINETUNE_AUGNAME,
        preprocess=FINETUNE_PREPROCESS,
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
    ),
)

# The offline demo: 8x8 digits upscaled; progressive learning in 2 stages, 24 then 32 px.
_DIGITS = dict(
    # 2 stages, 24 and 32 px: half the steps at the final size (16 px collapses B0's feature
    # maps of an 8x8 digit and does not transfer; with 3 stages, 24-28-32, only a third of the
    # run was at 32 px and it ended 0.56 points below fixed size, with 2 stages 0.09). Cosine
    # decay to 0 (a short run ends converged). The EMA warm-up min(decay, (1 + t) / (10 + t))
    # keeps its mean age near a tenth of the run.
    train=dict(
        batch_size=64,
        epochs=30,
        lr_base=0.004,
        lr_warmup_epochs=1.0,
        lr_sched='cosine',
        ema_decay=0.999,
        image_size=32,
        min_image_size=24,
        min_ram=0.0,
        stages=2,
        progressive='paper',
        steps_per_loop=20,
        ckpt_interval=200,
    ),
    eval=dict(image_size=32, batch_size=128),
    data=dict(augname=None, preprocess='v2', ram=0.0, mixup_alpha=0.0, cutmix_alpha=0.0),
    model=dict(dropout_rate=0.2),
)

# The released ImageNet runs: neither the learning rate nor the augmentation's pixel sizes depend
# on the stage's image size.
_RELEASED = dict(train=dict(resize_warmup=0.0, resize_lr_power=0.0, resize_augment_pixels=False))

DATASET_RECIPES = {
    'imagenet': _RELEASED,
    'imagenettfds': _RELEASED,
    'imagenet21k': dict(
        train=dict(
            epochs=60,
            lr_base=0.008,
            lr_warmup_epochs=1.0,
            lr_sched='cosine',
            label_smoothing=0.0,
            image_size=224,
            stages=0,
        ),
        eval=dict(image_size=224, batch_size=128),
        model=dict(dropout_rate=1e-6, survival_prob=1.0),
        # The released code takes the V2 transform ((x-128)/128, bilinear) whenever augname is
        # None, for every family: V1 and V2-B0..B3 too.
        data=dict(augname=None, preprocess='v2', mixup_alpha=0.0, cutmix_alpha=0.0),
    ),
    **{name.lower(): _FINETUNE for name in FINETUNE_BASES},
    'cifar10': {},
    'cifar100': {},
    'flowers': {},
    'cars': {},
    'tfflowers': {},
    'digits': _DIGITS,
    'folder': dict(
        train=dict(batch_size=64, epochs=30, steps_per_loop=20, ckpt_interval=200),
        eval=dict(batch_size=32),
    ),
}


def compose(
    model_name,
    dataset_name,
    num_classes,
    data_dir=None,
    config_file=None,
    hparam_str=None,
    checks=(),
):
    """The run config in override order: defaults, model, dataset, YAML file, hparam string.

    Pure: the dataset is given by its (canonical) name and class count, and `config_file` is a
    mapping or a YAML path whose model, if it defines one, is already registered;
    `efficientnetv2.experiment.build_config` does both from names.

    Args:
        model_name: a registered model name (or an `architectures.Variant`).
        dataset_name: the dataset's name (its recipe is looked up case-insensitively).
        num_classes: the dataset's class count (`model.num_classes`).
        data_dir: `data.data_dir`.
        config_file: a mapping or a YAML path of overrides, or None.
        hparam_str: `dotted.key=value,...` overrides, or None.
        checks: more checks for `validate` (see there).

    Raises:
        ValueError: unknown model name (lists the valid ones), malformed overrides, a config
            that names another model than `model_name`, a value out of range.
        KeyError: an override names an unknown key (names the closest valid keys).
    """
    config = default_config()
    config.override(model_recipe(model_name))
    config.override(DATASET_RECIPES.get(dataset_name.lower(), {}))
    config.override(
        dict(
            model=dict(num_classes=num_classes),
            data=dict(dataset=dataset_name, data_dir=data_dir),
        )
    )
    if config_file:
        config.override(config_file)
    if hparam_str:
        config.override(hparam_str)
    expected = architectures.get_variant(model_name).name
    if config.model.model_name != expected:
        raise ValueError(
            f'The config names model {config.model.model_name!r} but --model_name is '
            f'{expected!r}: pass --model_name={config.model.model_name} (the architecture comes '
            'from the model name).'
        )
    validate(config, checks=checks)
    return config


def train_image_size(config):
    """The final training size; values <= 16 are a fraction of the eval size (official)."""
    size = config.train.image_size
    if size <= 16:
        return int(config.eval.image_size * size) // 16 * 16
    return int(size)


def validate(config, checks=()):
    """Checks every value's type and range, the choices, and the sizes against each other.

    Args:
        config: a run config (typed or not: an untyped one is typed first).
        checks: callables `check(config)` run after the per-key checks and before the size
            checks, for what needs code above the config (`efficientnetv2.experiment.validate`
            adds the preprocessing-family check).

    Raises:
        hparams.ConfigValueError (a ValueError): the message names the key, what it accepts
            and the value received.
    """
    if config.schema is None:
        config.set_schema(hparams.derive_schema(_default_values(), KEY_SPECS))
    config.check_values()
    for check in checks:
        check(config)
    final = train_image_size(config)
    if final < 1:
        raise hparams.ConfigValueError(
            f'train.image_size={config.train.image_size!r} is a fraction of '
            f'eval.image_size={config.eval.image_size!r} that gives a train size of {final} px; '
            'use a larger fraction or a size in pixels (> 16).'
        )
    # Unset, the start size is derived from the final size and never above it
    # (`progressive.default_min_image_size`): only an explicit value can be too large.
    minimum = config.train.min_image_size
    if config.train.stages > 1 and minimum is not None and minimum > final:
        raise hparams.ConfigValueError(
            f'train.min_image_size must be <= the final train size {final} px '
            f'(train.image_size={config.train.image_size!r}) when train.stages > 1; received '
            f'{config.train.min_image_size!r}. Lower it, or leave it unset (None) to derive it '
            'from the final size.'
        )
    return config
