"""Progressive learning with `model.fit` on an image folder (one sub-folder per class).

    python examples/progressive_folder.py --data_dir=/path/to/images --model=efficientnetv2-b0 \
        --image_size=128 --epochs=20 --batch_size=32 --model_dir=/tmp/run

Resume after an interruption from the last checkpoint (the epoch it ends is in its name):

    python examples/progressive_folder.py ... --resume_epoch=7

The folder is split as `efficientnetv2.data.folder_dataset_info` says (a `train/` + `val/`
layout, or 20% of each class held out). Checkpoints: `<model_dir>/ckpt-<epoch>.keras` (model
and optimizer), the EMA averages in `<model_dir>/ema.weights.h5` (the previous epoch's in
`ema.previous.weights.h5`, so a resume finds those of its checkpoint), TensorBoard logs in
`<model_dir>/logs`, the final averaged model in `<model_dir>/final.keras`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import keras  # noqa: E402

import efficientnetv2  # noqa: E402
from efficientnetv2 import data  # noqa: E402
from efficientnetv2.train import progressive  # noqa: E402

flags.DEFINE_string('data_dir', None, 'Image folder root.', required=True)
flags.DEFINE_string('model_dir', '/tmp/progressive_folder', 'Checkpoints and logs.')
flags.DEFINE_string('model', 'efficientnetv2-b0', 'Variant (efficientnetv2.list_models()).')
flags.DEFINE_integer('image_size', 128, 'Final train size.')
flags.DEFINE_integer('eval_size', None, 'Validation size (default: image_size).')
flags.DEFINE_integer('epochs', 20, 'Epochs in all.')
flags.DEFINE_integer('stages', 4, 'Progressive-learning stages.')
flags.DEFINE_enum('mode', 'paper', ['paper', 'official'], 'Plan interpolation.')
flags.DEFINE_integer('batch_size', 32, 'Batch size.')
flags.DEFINE_float('learning_rate', 1e-3, 'Adam learning rate (cosine decay).')
flags.DEFINE_float(
    'beta_2',
    0.99,
    "Adam's squared-gradient decay: 0.99 averages over about 100 steps, shorter than a stage "
    "of a short run (Keras' default 0.999 carries earlier sizes' gradients into later stages; "
    'docs/progressive.md).',
)
flags.DEFINE_float('ema_decay', 0.999, 'EMA decay (0: none).')
flags.DEFINE_float('final_ram', 10.0, 'Last-stage RandAugment magnitude (from 5).')
flags.DEFINE_float('final_mixup', 0.0, 'Last-stage mixup alpha (from 0).')
flags.DEFINE_float('final_dropout', 0.3, 'Last-stage dropout (from 0.1).')
flags.DEFINE_bool(
    'resize_augment_pixels',
    False,
    "Scale RandAugment's translate and cutout pixels by stage size / final size, as the CLI's "
    "train.resize_augment_pixels does; off here: measured to help with the CLI's RMSProp, "
    "not with this example's Adam (docs/progressive.md).",
)
flags.DEFINE_integer('resume_epoch', 0, 'Resume from <model_dir>/ckpt-<resume_epoch>.keras.')
flags.DEFINE_integer('seed', None, 'Seed of the weights, the data order and augmentation.')
flags.DEFINE_float(
    'resize_lr_power',
    efficientnetv2.keras_workflow.RESIZE_LR_POWER,
    "Each stage's learning rate times (size / final size) ** this (default: 0 for Adam, "
    'which normalises the gradient; see efficientnetv2.keras_workflow.resize_lr_power_for).',
)
flags.DEFINE_float(
    'resize_warmup',
    efficientnetv2.keras_workflow.RESIZE_WARMUP,
    'Share of each stage at a larger size during which the learning rate ramps up again.',
)
FLAGS = flags.FLAGS


def main(_):
    os.makedirs(FLAGS.model_dir, exist_ok=True)
    if FLAGS.seed is not None:
        keras.utils.set_random_seed(FLAGS.seed)
    info = data.folder_dataset_info(FLAGS.data_dir)
    steps_per_epoch = max(1, info.get_split('train').num_images // FLAGS.batch_size)
    plan = efficientnetv2.progressive_plan(
        epochs=FLAGS.epochs,
        image_size=FLAGS.image_size,
        num_stages=FLAGS.stages,
        mode=FLAGS.mode,
        ram=(5.0, FLAGS.final_ram),
        mixup=(0.0, FLAGS.final_mixup),
        dropout=(0.1, FLAGS.final_dropout),
    )
    logging.info('%s', plan.format_table())

    def dataset_fn(stage):
        return data.build_dataset(
            info,
            'train',
            image_size=stage.image_size,
            batch_size=FLAGS.batch_size,
            augname='randaug',
            ram=stage.ram,
            mixup_alpha=stage.mixup_alpha,
            cutmix_alpha=stage.cutmix_alpha,
            augment_pixel_scale=(
                progressive.augment_pixel_scale(stage.image_size, FLAGS.image_size)
                if FLAGS.resize_augment_pixels
                else 1.0
            ),
            # Seeded per stage, as the CLI trainer does: a run replays. A resumed stage
            # starts its sequence of batches again.
            seed=None if FLAGS.seed is None else FLAGS.seed + stage.index,
        )

    validation = data.build_dataset(
        info, 'eval', image_size=FLAGS.eval_size or FLAGS.image_size, batch_size=FLAGS.batch_size
    )
    model = efficientnetv2.get_model(FLAGS.model, num_classes=info.num_classes)
    schedule = keras.optimizers.schedules.CosineDecay(
        FLAGS.learning_rate, FLAGS.epochs * steps_per_epoch
    )
    model.compile(
        keras.optimizers.Adam(schedule, beta_2=FLAGS.beta_2),
        keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
        metrics=[keras.metrics.CategoricalAccuracy(name='top_1')],
    )
    ema = None
    if FLAGS.ema_decay:
        ema = efficientnetv2.ModelEMA(
            FLAGS.ema_decay, filepath=os.path.join(FLAGS.model_dir, 'ema.weights.h5')
        )
    callbacks = [
        keras.callbacks.ModelCheckpoint(os.path.join(FLAGS.model_dir, 'ckpt-{epoch}.keras')),
        keras.callbacks.TensorBoard(os.path.join(FLAGS.model_dir, 'logs')),
    ]
    resume = None
    if FLAGS.resume_epoch:
        resume = os.path.join(FLAGS.model_dir, f'ckpt-{FLAGS.resume_epoch}.keras')
    result = efficientnetv2.fit_progressive(
        model,
        dataset_fn,
        plan,
        steps_per_epoch=steps_per_epoch,
        validation_data=validation,
        callbacks=callbacks,
        ema=ema,
        initial_epoch=FLAGS.resume_epoch,
        resume_from=resume,
        resize_lr_power=FLAGS.resize_lr_power,
        resize_warmup=FLAGS.resize_warmup,
    )
    if ema is not None:
        ema.copy_to_model()
    model.save(os.path.join(FLAGS.model_dir, 'final.keras'))
    for stage, history in result.stages:
        logging.info(
            'Stage %d (%d px): %s',
            stage.index,
            stage.image_size,
            {k: round(v[-1], 4) for k, v in history.history.items()},
        )


if __name__ == '__main__':
    app.run(main)
