"""Small offline transfer tasks: pretrain a tiny EfficientNetV2, fine-tune it on few images.

    python benchmarks/finetune_transfer.py --task=photos [--per_class=10] [--seeds=3]
    python benchmarks/finetune_transfer.py --task=digits [--per_class=10] [--epochs=60]
    python benchmarks/finetune_transfer.py --task=photos --methods=scratch,naive,lpft

Two tasks (`--task`), at the two ends of how close the pretraining data is to the target:

* `photos` (default; needs scikit-image): pretraining on progressive.py's photo crops (10
  classes, one per colour photograph of scikit-image / scikit-learn, 120 random crops each,
  converted to grayscale unless `--nopretrain_gray`), 4 stages, 20 epochs, 24 -> 48 px.
  Target: 10 other photographs of `skimage.data` (brick, camera, cell, clock, coins, grass,
  gravel, moon, page, text; grayscale, as RGB), one class each, `--per_class` (10) train crops
  per photograph and 40 held-out crops from disjoint origin cells (progressive.py's trick).
  The pretrained features are relevant here: a linear probe on them beats training the whole
  network from scratch.
* `digits`: sklearn's 8x8 digits, pretraining on 0-4 (every image; 3 stages, 12 epochs,
  12 -> 24 px), target 5-9 with `--per_class` (10) train images per class and the rest held
  out. The pretrained features are far from the target: the linear probe (87.0%) stays under
  training the whole network from scratch (93.1%).

Steps: 1. write the image folders under `--work_dir`; 2. pretrain with `fit_progressive`
(2 stages, EMA of weights and BN statistics, the averages kept); 3. a linear probe (logistic
regression on the pretrained pooled features of the target train images, scored on the
held-out ones); 4. fine-tune with `finetune.fit_two_phase`, the same data, epochs (both
phases together), cosine schedule, Adam and label smoothing for every method of the task
(`METHODS`, `PHOTO_METHODS`; select with `--methods`):

   - scratch:    a fresh model, every layer trained, lr 3e-3;
   - naive:      the pretrained model with a new head, every layer trained, the same 3e-3,
                 batch norm in training mode;
   - stem:       as naive, the stem frozen (`num_stages=0`; its BN keeps training mode);
   - lpft:       LP-FT: the new head alone for 1/6 of the epochs at 0.1 (backbone and BN
                 statistics fixed), then every layer at 3e-3;
   photos by default (any task with --methods):
   - head:       the new head alone for every epoch at 0.1 (a linear probe trained with the
                 augmented pipeline);
   - naive_low, lpft_low: naive / LP-FT with the network at 1e-3;
   - frozen2(_bn): the stem and stages 1-2 frozen (with their batch norm in inference mode);
   - lpft_plain_frozen2_bn: LP-FT whose head phase (1/6 of the epochs at 0.1) reads the
                 train images through the eval pipeline, unaugmented and shuffled (`head_x`;
                 the probe's data), then as frozen2_bn (3e-3) on the augmented pipeline;
   - lpft_plain_all: the same, phase 2 on the un-augmented images too.

5. Prints a table: top-1 on the held-out target images (mean and min-max over seeds),
   training seconds and the trainable variables of the last phase; for LP-FT methods also the
   top-1 per seed after phase 1 (the head-only model).

60 fine-tuning epochs for both tasks (digits: at 30 every method was still gaining). Small on
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

flags.DEFINE_enum('task', 'photos', ['photos', 'digits'], 'The transfer task (docstring).')
flags.DEFINE_string('work_dir', None, 'Where the image folders go (default: a temp dir).')
flags.DEFINE_integer('per_class', None, 'Fine-tuning train images per class (task default).')
flags.DEFINE_integer('pretrain_epochs', None, 'Pretraining epochs (task default).')
flags.DEFINE_integer(
    'epochs', None, 'Fine-tuning epochs, every method, both phases (task default).'
)
flags.DEFINE_integer('seeds', 3, 'Repeats of the fine-tuning runs (different seeds).')
flags.DEFINE_integer('image_size', None, 'Final image size (task default).')
flags.DEFINE_bool('pretrain_gray', True, 'Photos: pretrain on grayscale crops (as the target).')
flags.DEFINE_string(
    'methods', None, 'Comma-separated method keys to run (default: all of the task).'
)
FLAGS = flags.FLAGS

BLOCKS = ['r1_k3_s1_e1_i16_o16_c1', 'r2_k3_s2_e4_i16_o24_c1', 'r2_k3_s2_e4_i24_o40_se0.25']
PHOTO_BLOCKS = BLOCKS + ['r2_k3_s2_e4_i40_o64_se0.25']
BATCH = 16


@dataclasses.dataclass(frozen=True)
class Method:
    """One fine-tuning run: `finetune.fit_two_phase` arguments (epochs: a fraction of --epochs)."""

    key: str
    name: str
    pretrained: bool
    lr: float = 3e-3
    head_epochs: float = 0.0  # Fraction of --epochs for the head-only phase 1 (LP-FT).
    head_lr: float = 0.1
    num_stages: int | None = None  # Phase 2: stem + stages 1..num_stages frozen.
    freeze_bn: bool = False
    plain_head: bool = False  # Phase 1 on the un-augmented train images (as the probe).
    augment: bool = True  # Phase 2 on the augmented pipeline; False: the un-augmented images.


SCRATCH = Method('scratch', 'scratch (every layer)', pretrained=False)
NAIVE = Method('naive', 'naive (pretrained, every layer)', pretrained=True)
STEM = Method('stem', 'pretrained, stem frozen', pretrained=True, num_stages=0)
LPFT = Method(
    'lpft', 'LP-FT (head 1/6 of the epochs at 0.1, then every layer)', True, head_epochs=1 / 6
)
METHODS = (SCRATCH, NAIVE, STEM, LPFT)
PHOTO_METHODS = METHODS + (
    Method('head', 'pretrained, head only (every epoch at 0.1)', True, head_epochs=1.0),
    Method('naive_low', 'pretrained, every layer, lr / 3', True, lr=1e-3),
    Method('lpft_low', 'LP-FT, then every layer at lr / 3', True, lr=1e-3, head_epochs=1 / 6),
    Method(
        'frozen2_bn',
        'pretrained, stem + stages 1-2 and BN frozen',
        True,
        num_stages=2,
        freeze_bn=True,
    ),
    Method('frozen2', 'pretrained, stem + stages 1-2 frozen', True, num_stages=2),
    Method(
        'lpft_plain_all',
        'LP-FT on un-augmented images (both phases), stem + stages 1-2 and BN frozen',
        True,
        head_epochs=1 / 6,
        num_stages=2,
        freeze_bn=True,
        plain_head=True,
        augment=False,
    ),
    Method(
        'lpft_plain_frozen2_bn',
        'LP-FT, head on un-augmented images, then stem + stages 1-2 and BN frozen',
        True,
        head_epochs=1 / 6,
        num_stages=2,
        freeze_bn=True,
        plain_head=True,
    ),
)


def write_folders(root, per_class, seed=0):
    """Digits: PNG folders from sklearn digits (8x8, gray -> RGB)."""
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


# Target photographs of the photos task: scikit-image's grayscale test images (none of them
# is among the pretraining photographs), one class each.
TARGET_PHOTOS = (
    'brick',
    'camera',
    'cell',
    'clock',
    'coins',
    'grass',
    'gravel',
    'moon',
    'page',
    'text',
)
PHOTO_PRETRAIN_PER_CLASS = 120  # Crops per pretraining photograph (80% train, 20% eval).
PHOTO_EVAL_PER_CLASS = 40  # Held-out target crops per photograph.
PHOTO_CROP = 64  # Crop side in the folders (the pipeline resizes to --image_size).


def _write_gray_pretraining(data_dir, progressive):
    # progressive.py's photo crops (same photographs, crop sizes, origin cells), in grayscale.
    from PIL import Image

    rng = np.random.default_rng(1234)
    num_eval = PHOTO_PRETRAIN_PER_CLASS // 5
    for name, image in progressive.class_regions('photos'):
        gray = np.asarray(Image.fromarray(image).convert('L'))
        image = np.repeat(gray[..., None], 3, axis=-1)
        for split, count in (('train', PHOTO_PRETRAIN_PER_CLASS - num_eval), ('eval', num_eval)):
            folder = os.path.join(data_dir, split, name)
            os.makedirs(folder, exist_ok=True)
            crops = progressive._crops(image, count, split == 'eval', PHOTO_CROP, rng)
            for i, crop in enumerate(crops):
                crop.save(os.path.join(folder, f'{i:04d}.png'))


def write_photo_folders(root, per_class, seed=0):
    """Photos: colour pretraining crops (progressive.py's set) and grayscale target crops."""
    import progressive  # benchmarks/progressive.py: the photo crops and origin cells.
    import skimage.data

    if FLAGS.pretrain_gray:
        _write_gray_pretraining(os.path.join(root, 'pretrain'), progressive)
    else:
        progressive.build_photo_folder(
            'photos', os.path.join(root, 'pretrain'), PHOTO_PRETRAIN_PER_CLASS, PHOTO_CROP
        )
    rng = np.random.default_rng(seed)
    counts = {'pretrain': 10 * PHOTO_PRETRAIN_PER_CLASS}
    for name in TARGET_PHOTOS:
        gray = np.asarray(getattr(skimage.data, name)()).astype(np.uint8)
        image = np.repeat(gray[..., None], 3, axis=-1)
        for split, count in (('train', per_class), ('val', PHOTO_EVAL_PER_CLASS)):
            folder = os.path.join(root, 'transfer', split, name)
            os.makedirs(folder, exist_ok=True)
            crops = progressive._crops(image, count, split == 'val', PHOTO_CROP, rng)
            for i, crop in enumerate(crops):
                crop.save(os.path.join(folder, f'{i:04d}.png'))
            counts[f'transfer/{split}'] = counts.get(f'transfer/{split}', 0) + count
    return counts


def digit_info(directory):
    # Digits: no flips (they change the meaning), mild crops, no eval centre crop.
    return dataclasses.replace(
        data.folder_dataset_info(directory),
        random_flip=False,
        train_area_range=(0.8, 1.0),
        eval_center_crop=False,
    )


def photo_info(directory):
    # Photo crops: flips are fine, crops down to a quarter of the area, no eval centre crop.
    return dataclasses.replace(
        data.folder_dataset_info(directory),
        train_area_range=(0.25, 1.0),
        eval_center_crop=False,
    )


@dataclasses.dataclass(frozen=True)
class Task:
    blocks: tuple
    image_size: int
    pretrain_epochs: int
    epochs: int
    per_class: int
    pretrain_classes: int
    classes: int
    write: object
    info: object
    methods: tuple
    source: str
    target: str


TASKS = {
    'digits': Task(
        tuple(BLOCKS),
        24,
        12,
        60,
        10,
        5,
        5,
        write_folders,
        digit_info,
        METHODS,
        'digits 0-4',
        'digits 5-9',
    ),
    'photos': Task(
        tuple(PHOTO_BLOCKS),
        48,
        20,
        60,
        10,
        10,
        len(TARGET_PHOTOS),
        write_photo_folders,
        photo_info,
        PHOTO_METHODS,
        '10 photographs',
        '10 other (grayscale) photographs',
    ),
}


def setting(name):
    value = getattr(FLAGS, name)
    return getattr(TASKS[FLAGS.task], name) if value is None else value


def compile_model(model, lr, total_steps):
    schedule = keras.optimizers.schedules.CosineDecay(lr, total_steps)
    model.compile(
        keras.optimizers.Adam(schedule),
        keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
        metrics=[keras.metrics.CategoricalAccuracy(name='top_1')],
    )
    return model


def new_model(num_classes):
    blocks = list(TASKS[FLAGS.task].blocks)
    return model_lib.EfficientNet(
        blocks, feature_size=128, num_classes=num_classes, dropout_rate=0.1
    )


def pretrain(root, seed):
    task = TASKS[FLAGS.task]
    keras.utils.set_random_seed(seed)
    info = task.info(os.path.join(root, 'pretrain'))
    steps = info.get_split('train').num_images // BATCH
    epochs, image_size = setting('pretrain_epochs'), setting('image_size')
    model = new_model(task.pretrain_classes)
    compile_model(model, 3e-3, epochs * steps)
    plan = efficientnetv2.progressive_plan(
        epochs=epochs,
        image_size=image_size,
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

    val = data.build_dataset(info, 'eval', image_size=image_size, batch_size=64)
    start = time.time()
    result = efficientnetv2.fit_progressive(
        model, dataset_fn, plan, steps_per_epoch=steps, validation_data=val, ema=0.99, verbose=0
    )
    result.ema.copy_to_model()
    top1 = model.evaluate(val, verbose=0, return_dict=True)['top_1']
    return model, top1, time.time() - start


def finetune_once(root, pretrained, method, seed):
    task = TASKS[FLAGS.task]
    keras.utils.set_random_seed(seed)
    info = task.info(os.path.join(root, 'transfer'))
    steps = max(1, info.get_split('train').num_images // BATCH)
    epochs, image_size = setting('epochs'), setting('image_size')
    if method.pretrained:
        model = finetune.replace_head(pretrained, task.classes)
    else:
        model = new_model(task.classes)
    train = data.build_dataset(
        info,
        'train',
        image_size=image_size,
        batch_size=BATCH,
        augname='randaug',
        ram=5.0,
        seed=seed,
    )
    val = data.build_dataset(info, 'eval', image_size=image_size, batch_size=64)
    head_epochs = int(round(method.head_epochs * epochs))
    head_x = plain_train(root, seed) if method.plain_head else None
    if not method.augment:
        train = plain_train(root, seed).repeat()  # `steps` batches per epoch, as `train`.
    after_head = AfterHead(head_epochs, val)
    start = time.time()
    history = finetune.fit_two_phase(
        model,
        train,
        epochs=epochs,
        head_epochs=head_epochs,
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
        learning_rate=method.lr,
        head_learning_rate=method.head_lr,
        metrics=[keras.metrics.CategoricalAccuracy(name='top_1')],
        num_stages=method.num_stages,
        freeze_bn=method.freeze_bn,
        steps_per_epoch=steps,
        head_x=head_x,
        callbacks=[after_head],
        verbose=0,
    )
    seconds = time.time() - start
    top1 = model.evaluate(val, verbose=0, return_dict=True)['top_1']
    return top1, seconds, history.phases[-1][3], after_head.top1


class AfterHead(keras.callbacks.Callback):
    """Top-1 on the held-out images at the end of phase 1 (the head-only model)."""

    def __init__(self, head_epochs, val):
        super().__init__()
        self.head_epochs, self.val, self.top1 = head_epochs, val, None

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.head_epochs - 1:
            self.top1 = self.model.evaluate(self.val, verbose=0, return_dict=True)['top_1']


def plain_train(root, seed):
    """The target train images through the eval pipeline (no augmentation), shuffled."""
    folder = probe_folder(root)
    dataset = data.build_dataset(
        TASKS[FLAGS.task].info(folder), 'eval', image_size=setting('image_size'), batch_size=64
    )
    images, labels = [], []
    for x, y in dataset:
        images.append(x.numpy())
        labels.append(y.numpy())
    images, labels = np.concatenate(images), np.concatenate(labels)
    return (
        tf.data.Dataset.from_tensor_slices((images, labels))
        .shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        .batch(BATCH)
    )


def probe_folder(root):
    """A folder whose 'val' split is the target train images (read with no augmentation)."""
    probe = os.path.join(root, 'probe')
    if not os.path.exists(probe):
        os.makedirs(probe)
        os.symlink(os.path.join(root, 'transfer', 'train'), os.path.join(probe, 'train'))
        os.symlink(os.path.join(root, 'transfer', 'train'), os.path.join(probe, 'val'))
    return probe


def linear_probe(root, pretrained):
    """Top-1 of a logistic regression on the pretrained pooled features, no augmentation.

    How relevant the pretrained features are to the target task: fitted on the target train
    images, scored on the target val images, both through the eval pipeline.
    """
    from sklearn.linear_model import LogisticRegression

    task = TASKS[FLAGS.task]
    probe = probe_folder(root)  # The train images as an eval split: no augmentation.
    features = keras.Model(pretrained.inputs, pretrained.get_layer('avg_pool').output)
    arrays = []
    for folder in (probe, os.path.join(root, 'transfer')):
        dataset = data.build_dataset(
            task.info(folder), 'eval', image_size=setting('image_size'), batch_size=64
        )
        x, y = [], []
        for images, labels in dataset:
            x.append(features(images, training=False).numpy())
            y.append(np.argmax(labels.numpy(), axis=-1))
        arrays.append((np.concatenate(x), np.concatenate(y)))
    (x_train, y_train), (x_val, y_val) = arrays
    classifier = LogisticRegression(C=1.0, max_iter=2000).fit(x_train, y_train)
    return classifier.score(x_val, y_val)


def main(_):
    task = TASKS[FLAGS.task]
    methods = task.methods  # --methods=none: pretraining and the linear probe only.
    if FLAGS.methods and FLAGS.methods != 'none':
        keys = {m.key: m for m in PHOTO_METHODS}  # Any method on either task.
        unknown = sorted(set(FLAGS.methods.split(',')) - set(keys))
        if unknown:
            raise ValueError(f"Unknown --methods {unknown}; valid: {sorted(keys)} or 'none'.")
        methods = [keys[k] for k in FLAGS.methods.split(',')]
    root = FLAGS.work_dir or tempfile.mkdtemp(prefix='finetune_transfer_')
    per_class = setting('per_class')
    counts = task.write(root, per_class)
    logging.info('Image folders in %s: %s', root, counts)
    pretrained, pre_top1, pre_seconds = pretrain(root, seed=0)
    image_size = setting('image_size')
    gray = ', grayscale' if FLAGS.task == 'photos' and FLAGS.pretrain_gray else ''
    print(
        f'pretrain on {task.source}{gray} ({counts["pretrain"]} images, '
        f'{setting("pretrain_epochs")} epochs, {image_size // 2} -> {image_size} px): '
        f'top-1 {pre_top1:.3f}, {pre_seconds:.0f} s',
        flush=True,
    )
    print(f'linear probe on the pretrained features: top-1 {linear_probe(root, pretrained):.3f}')
    if FLAGS.methods == 'none':
        return
    rows = []
    for method in methods:
        results = []
        for seed in range(FLAGS.seeds):
            results.append(finetune_once(root, pretrained, method, seed))
            logging.info('%s seed %d: top-1 %.3f, %.0f s', method.key, seed, *results[-1][:2])
        top1 = [r[0] for r in results]
        head = [r[3] for r in results if r[3] is not None]
        if head and method.head_epochs < 1:
            print(f'{method.key} after phase 1 (head only): {[round(t, 3) for t in head]}')
        rows.append(
            (
                method.name,
                np.mean(top1),
                min(top1),
                max(top1),
                np.mean([r[1] for r in results]),
                results[0][2],
                method.head_lr if method.head_epochs >= 1 else method.lr,
            )
        )
        print(f'{method.key}: {[round(t, 3) for t in top1]}', flush=True)
    print(
        f'\nfine-tune on {task.target}: {counts["transfer/train"]} train images '
        f'({per_class} per class), {counts["transfer/val"]} val, {setting("epochs")} epochs, '
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
