"""Experiment configs: defaults, per-model and per-dataset recipes, and their override order.

A run's config is built in a fixed order, each step strict about keys:

    defaults -> model recipe -> dataset recipe -> --config_file (YAML) -> --hparam_str

and saved as `config.yaml` in the model directory.

Recipes follow the EfficientNetV2 paper where it is specific (progressive learning, Algorithm 1,
with Table 6's targets for V2-S/M/L) and the official code elsewhere. `configs/*-official.yaml`
reproduce the official code's choices where they differ (see README).
"""

from efficientnetv2 import architectures
from efficientnetv2 import hparams
from efficientnetv2 import model as model_lib


def default_config():
    """Every key a run understands, with the ImageNet recipe's values (SPEC §3)."""
    return hparams.Config(dict(
        model=dict(model_lib.DEFAULT_MODEL_HPARAMS),
        train=dict(
            epochs=350,                 # Length of the run, in epochs of the train split.
            min_steps=0,                # The run is max(min_steps, epochs * images // batch).
            batch_size=4096,            # Global batch over all replicas.
            optimizer='rmsprop',        # rmsprop (TF1 semantics), rmsprop_keras, sgd, adam, ...
            lr_base=0.016,              # Per 256 images; scaled by batch_size / 256.
            lr_sched='exponential',     # exponential, cosine, linear, constant.
            lr_decay_factor=0.97,
            lr_decay_epochs=2.4,
            lr_warmup_epochs=5.0,
            lr_min=0.0,                 # Floor, per 256 images like lr_base.
            ema_decay=0.9999,           # 0 disables the moving average.
            weight_decay=1e-5,          # Coupled L2 on conv/dense kernels.
            label_smoothing=0.1,
            loss_type='softmax',        # softmax, sigmoid (multi-label), custom.
            gclip=0.0,                  # Gradient clipping norm; 0 = off.
            image_size=300,             # Final train size; a value <= 16 is a fraction of eval.
            stages=4,                   # Progressive-learning stages; 0 = fixed size.
            progressive='paper',        # paper (Algorithm 1) or official (the released code).
            min_image_size=128,         # Stage-0 image size (paper S0, official data.ibase).
            min_ram=5.0,                # Stage-0 RandAugment magnitude.
            min_mixup=0.0,
            min_cutmix=0.0,
            min_dropout=0.1,            # Stage-0 dropout (paper mode only).
            steps_per_loop=100,         # Train steps per compiled call.
            ckpt_interval=1000,         # Steps between checkpoints (also at every stage end).
            keep_ckpt_max=5,
            ft_init_ckpt=None,          # Fine-tune from this checkpoint (head skipped).
            ft_init_ema=True,           # ... preferring its EMA weights.
            seed=None,
        ),
        eval=dict(
            image_size=384,
            batch_size=8,
            split='eval',
            steps=None,                 # None: the whole split.
            timeout=86400,              # --mode=eval waits this long for a new checkpoint.
        ),
        data=dict(
            dataset='imagenet',
            data_dir=None,
            train_split='train',
            preprocess=None,            # v2, legacy, ft; None: chosen from augname.
            augname='randaug',          # randaug, autoaug, ra_aa, effnetv1_autoaug, ft, None.
            ram=15.0,                   # Final RandAugment magnitude.
            ra_num_layers=2,
            mixup_alpha=0.0,            # Final mixup alpha.
            cutmix_alpha=0.0,           # Final CutMix alpha.
            cache=None,                 # None: cache splits small enough to fit in memory.
            shuffle_buffer=None,
        ),
        runtime=dict(
            strategy='auto',            # auto, cpu, gpus, multi_worker, tpu.
            mixed_precision=None,       # None: bfloat16 on TPU, float16 on GPU, float32 on CPU.
            deterministic=False,        # Deterministic ops and exact data replay on resume.
            jit_compile=None,           # XLA train step, compiled per stage; None: on for TPU/GPU.
        ),
    ))


def model_recipe(model_name):
    """Overrides a published variant brings (architecture, sizes, regularisation)."""
    variant = architectures.get_variant(model_name)
    recipe = dict(
        model=variant.model_hparams(),
        train=dict(image_size=variant.train_size, stages=0 if variant.is_v1 else 4),
        eval=dict(image_size=variant.eval_size),
        data=dict(augname=variant.augname, preprocess=variant.preprocess,
                  ram=float(variant.randaug_magnitude or 0.0),
                  mixup_alpha=variant.mix_alpha, cutmix_alpha=variant.mix_alpha),
    )
    if variant.paper_final:
        # Paper Table 6 targets for the last progressive stage (the paper adapts mixup only).
        size, ram, mixup, dropout = variant.paper_final
        recipe['train']['image_size'] = size
        recipe['data'].update(ram=float(ram), mixup_alpha=mixup, cutmix_alpha=0.0)
        recipe['model']['dropout_rate'] = dropout
    return recipe


_FINETUNE = dict(
    train=dict(batch_size=512, lr_base=0.0005, lr_sched='constant', lr_warmup_epochs=1.0,
               epochs=15, min_steps=10000, weight_decay=1e-5, ema_decay=0.9996,
               label_smoothing=0.1, stages=0, image_size=1.0),
    model=dict(dropout_rate=1e-6, survival_prob=0.8),
    data=dict(augname='ft', preprocess='ft', mixup_alpha=0.0, cutmix_alpha=0.0),
)

# The offline demo: 8x8 digits upscaled; progressive from 16 to 32 px in 4 stages.
_DIGITS = dict(
    train=dict(batch_size=64, epochs=30, lr_base=0.004, lr_warmup_epochs=1.0,
               lr_decay_epochs=2.4, lr_decay_factor=0.9, ema_decay=0.999, image_size=32,
               min_image_size=16, min_ram=0.0, stages=4, steps_per_loop=20,
               ckpt_interval=200),
    eval=dict(image_size=32, batch_size=128),
    data=dict(augname=None, preprocess='v2', ram=0.0, mixup_alpha=0.0, cutmix_alpha=0.0),
    model=dict(dropout_rate=0.2),
)

DATASET_RECIPES = {
    'imagenet': {},
    'imagenettfds': {},
    'imagenet21k': dict(
        train=dict(epochs=60, lr_base=0.008, lr_warmup_epochs=1.0, lr_sched='cosine',
                   label_smoothing=0.0, image_size=224, stages=0),
        eval=dict(image_size=224, batch_size=128),
        model=dict(dropout_rate=1e-6, survival_prob=1.0),
        data=dict(augname=None, mixup_alpha=0.0, cutmix_alpha=0.0)),
    'imagenetft': _FINETUNE, 'cifar10ft': _FINETUNE, 'cifar100ft': _FINETUNE,
    'flowersft': _FINETUNE, 'carsft': _FINETUNE, 'tfflowersft': _FINETUNE,
    'cifar10': {}, 'cifar100': {}, 'flowers': {}, 'cars': {}, 'tfflowers': {},
    'digits': _DIGITS,
    'folder': dict(train=dict(batch_size=64, epochs=30, steps_per_loop=20, ckpt_interval=200),
                   eval=dict(batch_size=32)),
}


def build_config(model_name='efficientnetv2-s', dataset_cfg='imagenet', config_file=None,
                 hparam_str=None, data_dir=None):
    """The run config in override order: defaults, model, dataset, YAML file, hparam string.

    Raises:
        ValueError: unknown model or dataset name (lists the valid ones), malformed overrides.
        KeyError: an override names an unknown key (names the closest valid keys).
    """
    from efficientnetv2 import data
    info = data.get_dataset_info(dataset_cfg, data_dir=data_dir)
    config = default_config()
    config.override(model_recipe(model_name))
    config.override(DATASET_RECIPES.get(info.name.lower(), {}))
    config.override(dict(model=dict(num_classes=info.num_classes),
                         data=dict(dataset=info.name, data_dir=data_dir)))
    if config_file:
        config.override(config_file)
    if hparam_str:
        config.override(hparam_str)
    expected = architectures.get_variant(model_name).name
    if config.model.model_name != expected:
        raise ValueError('The config names model %r but --model_name is %r: pass '
                         '--model_name=%s (the architecture comes from the model name).'
                         % (config.model.model_name, expected, config.model.model_name))
    validate(config)
    return config


def train_image_size(config):
    """The final training size; values <= 16 are a fraction of the eval size (official)."""
    size = config.train.image_size
    if size <= 16:
        return int(config.eval.image_size * size) // 16 * 16
    return int(size)


def validate(config):
    """Checks values that the key check cannot: choices and ranges, with clear messages."""
    from efficientnetv2.train import optimizers
    from efficientnetv2.train import progressive
    from efficientnetv2.train import schedules
    checks = [
        ('train.optimizer', config.train.optimizer, optimizers.OPTIMIZER_NAMES),
        ('train.lr_sched', config.train.lr_sched, schedules.DECAY_TYPES),
        ('train.progressive', config.train.progressive, progressive.PLAN_MODES),
        ('train.loss_type', config.train.loss_type, ('softmax', 'sigmoid', 'custom')),
        ('runtime.strategy', config.runtime.strategy,
         ('auto', 'cpu', 'gpus', 'multi_worker', 'tpu')),
        ('runtime.mixed_precision', config.runtime.mixed_precision,
         (None, 'float32', 'mixed_float16', 'mixed_bfloat16')),
    ]
    for key, value, valid in checks:
        if value not in valid:
            raise ValueError('%s must be one of %s. Received: %r' % (key, list(valid), value))
    for key in ('train.epochs', 'train.batch_size', 'eval.batch_size', 'eval.image_size',
                'train.steps_per_loop'):
        section, name = key.split('.')
        if not config[section][name] or config[section][name] <= 0:
            raise ValueError('%s must be > 0. Received: %r' % (key, config[section][name]))
    if config.train.stages < 0:
        raise ValueError('train.stages must be >= 0. Received: %r' % config.train.stages)
    return config
