"""A small offline transfer task: pretrain on digits 0-4, fine-tune on digits 5-9, few images.

    python benchmarks/finetune_transfer.py [--per_class=10] [--epochs=60] [--seeds=3]

1. Writes scikit-learn's 8x8 digits as PNG image folders under `--work_dir`: `pretrain/`
   (digits 0-4, every image) and `transfer/train` (digits 5-9, `--per_class` images per class) +
   `transfer/val` (the other images of 5-9).
2. Pretrains a tiny EfficientNetV2 (3 stages, 24 px) on 0-4 with `fit_progressive` (2 stages,
   12 -> 24 px, EMA of weights and BN statistics; the averages are kept).
3. Fine-tunes on 5-9 with `finetune.fit_two_phase`, the same data, epochs (both phases
   together), cosine schedule and optimizer (Adam) for every method in `METHODS`:
   - scratch: a fresh model, every layer trained, lr 3e-3;
   - naive:   the pretrained model with a new head, every layer trained, the same lr 3e-3,
              batch norm in training mode;
   - recipe:  as naive, but the stem frozen (`num_stages=0`; its batch norm keeps training
              mode, gamma/beta fixed);
   - LP-FT:   the new head alone for 1/6 of the epochs at lr 0.1 (backbone and BN statistics
              fixed), then every layer at 3e-3 for the rest (an ablation: it did not win here).
4. Prints a table: top-1 on `transfer/val` (mean and min-max over seeds), training seconds and
   the trainable variables of the last phase.

60 epochs (180 steps of 16): at 30 every method was still gaining (scratch gained 2.6 points
from 30 to 60 epochs and more from a higher rate), so 30 compared undertrained runs. Small on
purpose (2 shared CPU cores): under a minute per seed and method on a quiet machine.
"""

import dataclasses
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import efficientnetv2  # noqa: E402
from efficientnetv2 import data  # noqa: E402
from efficientnetv2 import finetune  # noqa: E402
from efficientnetv2 import model as model_lib  # noqa: E402

flags.DEFINE_string('work_dir', None, 'Where the image folders go (default: a temp dir).')
flags.DEFINE_integer('per_class', 10, 'Fine-tuning images per class (digits 5-9).')
flags.DEFINE_integer('pretrain_epochs', 12, 'Pretraining epochs on digits 0-4.')
flags.DEFINE_integer('epochs', 60, 'Fine-tuning epochs (every method, both phases).')
flags.DEFINE_integer('seeds', 3, 'Repeats of the fine-tuning runs (different seeds).')
flags.DEFINE_integer('image_size', 24, 'Final image size.')
FLAGS = flags.FLAGS

BLOCKS = ['r1_k3_s1_e1_i16_o16_c1', 'r2_k3_s2_e4_i16_o24_c1', 'r2_k3_s2_e4_i24_o40_se0.25']
BATCH = 16


@dataclasses.dataclass(frozen=True)
class Method:
    """One fine-tuning run: `finetune.fit_two_phase` arguments (epochs: a fraction of --epochs)."""

    name: str
    pretrained: bool
    lr: float = 3e-3
    head_epochs: float = 0.0  # Fraction of --epochs for the head-only phase 1 (LP-FT).
    head_lr: float = 0.1
    num_stages: int | None = None  # Phase 2: stem + stages 1..num_stages frozen.
    freeze_bn: bool = False


METHODS = (
    Method('scratch (every layer)', pretrained=False),
    Method('naive (pretrained, every layer)', pretrained=True),
    Method('recipe (pretrained, stem frozen)', pretrained=True, num_stages=0),
    Method('LP-FT (head 1/6 of the epochs at 0.1, then every layer)', True, head_epochs=1 / 6),
)


def write_folders(root, per_class, seed=0):
    """PNG folders from sklearn digits (8x8, gray -> RGB)."""
    from sklearn import datasets as sk_datasets

    digits = sk_datasets.load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    rng = np.random.RandomState(seed)
    counts = {}
    for digit in range(10):
        index = np.flatnonzero(digits.target == digit)
        rng.shuffle(index)
        if digit < 5:
            targets = [('pretrain', index)]
        else:
            targets = [('transfer/train', index[:per_class]), ('transfer/val', index[per_class:])]
        for folder, chosen in targets:
            directory = os.path.join(root, folder, f'd{digit}')
            os.makedirs(directory, exist_ok=True)
            for i in chosen:
                image = np.repeat(pixels[i][..., None], 3, axis=-1)
                tf.io.write_file(os.path.join(directory, f'{i:04d}.png'), tf.io.encode_png(image))
            counts[folder] = counts.get(folder, 0) + len(chosen)
    return counts


def digit_info(directory):
    # Digits: no flips (they change the meaning), mild crops, no eval centre crop.
    return dataclasses.replace(
        data.folder_dataset_info(directory),
        random_flip=False,
        train_area_range=(0.8, 1.0),
        eval_center_crop=False,
    )


def compile_model(model, lr, total_steps):
    schedule = keras.optimizers.schedules.CosineDecay(lr, total_steps)
    model.compile(
        keras.optimizers.Adam(schedule),
        keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
        metrics=[keras.metrics.CategoricalAccuracy(name='top_1')],
    )
    return model


def pretrain(root, seed):
    keras.utils.set_random_seed(seed)
    info = digit_info(os.path.join(root, 'pretrain'))
    steps = info.get_split('train').num_images // BATCH
    model = model_lib.EfficientNet(BLOCKS, feature_size=128, num_classes=5, dropout_rate=0.1)
    compile_model(model, 3e-3, FLAGS.pretrain_epochs * steps)
    plan = efficientnetv2.progressive_plan(
        epochs=FLAGS.pretrain_epochs,
        image_size=FLAGS.image_size,
        num_stages=2,
        ram=(2.0, 5.0),
        dropout=(0.05, 0.1),
    )

    def dataset_fn(stage):
        return data.build_dataset(
            info,
            'train',
            image_size=stage.image_size,
            batch_size=BATCH,
            augname='randaug',
            ram=stage.ram,
            seed=seed,
        )

    val = data.build_dataset(info, 'eval', image_size=FLAGS.image_size, batch_size=64)
    start = time.time()
    result = efficientnetv2.fit_progressive(
        model, dataset_fn, plan, steps_per_epoch=steps, validation_data=val, ema=0.99, verbose=0
    )
    result.ema.copy_to_model()
    top1 = model.evaluate(val, verbose=0, return_dict=True)['top_1']
    return model, top1, time.time() - start


def finetune_once(root, pretrained, method, seed):
    keras.utils.set_random_seed(seed)
    info = digit_info(os.path.join(root, 'transfer'))
    steps = max(1, info.get_split('train').num_images // BATCH)
    if method.pretrained:
        model = finetune.replace_head(pretrained, 5)
    else:
        model = model_lib.EfficientNet(BLOCKS, feature_size=128, num_classes=5, dropout_rate=0.1)
    train = data.build_dataset(
        info,
        'train',
        image_size=FLAGS.image_size,
        batch_size=BATCH,
        augname='randaug',
        ram=5.0,
        seed=seed,
    )
    val = data.build_dataset(info, 'eval', image_size=FLAGS.image_size, batch_size=64)
    start = time.time()
    history = finetune.fit_two_phase(
        model,
        train,
        epochs=FLAGS.epochs,
        head_epochs=int(round(method.head_epochs * FLAGS.epochs)),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
        learning_rate=method.lr,
        head_learning_rate=method.head_lr,
        metrics=[keras.metrics.CategoricalAccuracy(name='top_1')],
        num_stages=method.num_stages,
        freeze_bn=method.freeze_bn,
        steps_per_epoch=steps,
        verbose=0,
    )
    seconds = time.time() - start
    top1 = model.evaluate(val, verbose=0, return_dict=True)['top_1']
    return top1, seconds, history.phases[-1][3]


def main(_):
    root = FLAGS.work_dir or tempfile.mkdtemp(prefix='finetune_transfer_')
    counts = write_folders(root, FLAGS.per_class)
    logging.info('Image folders in %s: %s', root, counts)
    pretrained, pre_top1, pre_seconds = pretrain(root, seed=0)
    print(
        f'pretrain on digits 0-4 ({counts["pretrain"]} images, {FLAGS.pretrain_epochs} epochs, '
        f'{FLAGS.image_size // 2} -> {FLAGS.image_size} px): top-1 {pre_top1:.3f}, '
        f'{pre_seconds:.0f} s'
    )
    rows = []
    for method in METHODS:
        results = [finetune_once(root, pretrained, method, seed) for seed in range(FLAGS.seeds)]
        top1 = [r[0] for r in results]
        rows.append(
            (
                method.name,
                np.mean(top1),
                min(top1),
                max(top1),
                np.mean([r[1] for r in results]),
                results[0][2],
                method.lr,
            )
        )
    print(
        f'\nfine-tune on digits 5-9: {counts["transfer/train"]} train images '
        f'({FLAGS.per_class} per class), {counts["transfer/val"]} val, {FLAGS.epochs} epochs, '
        f'{FLAGS.seeds} seeds'
    )
    print('| method | lr | trainable variables | top-1 (mean, min-max) | train s |')
    print('| --- | --- | --- | --- | --- |')
    for name, mean, low, high, seconds, variables, lr in rows:
        print(
            f'| {name} | {lr:g} | {variables} | {100 * mean:.1f}% '
            f'({100 * low:.1f}-{100 * high:.1f}) | {seconds:.0f} |'
        )
    if not FLAGS.work_dir:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
    app.run(main)
