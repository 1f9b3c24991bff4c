r"""Input-pipeline throughput against what an EfficientNetV2-B0 train step consumes.

Writes ImageNet-format TFRecords of real-size JPEGs (about 500x375, smooth random
"natural-ish" content plus grain, quality 90) to a temporary directory, then measures in one
run, each on its own:

- train pipeline: `data.build_dataset('imagenet', 'trainval', ...)` at 224 px with RandAugment
  (2 layers, magnitude 15) and mixup 0.2, V2 transform (Inception crop, bilinear, flip);
- eval pipeline: centre crop + resize at 224 px (repeated so it can be timed);
- model: images/s consumed by a plain `tf.function` train step of efficientnetv2-b0 at 224 px
  (forward in training mode, softmax cross-entropy, `tf.GradientTape`, RMSprop update), fed one
  fixed batch from the train pipeline so the input does not limit it.

Warm-up batches/steps (tracing, shuffle-buffer fill) are not timed. Prints a table and the
ratio train-pipeline / model (the target is >= 2).

    python benchmarks/input_pipeline.py --num_images 256 --batch 32 --steps 20
"""

import argparse
import os
import tempfile
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from efficientnetv2 import data


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--num_images',
        type=int,
        default=256,
        help='JPEGs written for the train split (eval gets a quarter).',
    )
    parser.add_argument('--num_shards', type=int, default=8, help='TFRecord files per split.')
    parser.add_argument('--image_size', type=int, default=224)
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--steps', type=int, default=20, help='Timed pipeline batches.')
    parser.add_argument('--warmup', type=int, default=5, help='Untimed pipeline batches.')
    parser.add_argument('--model_steps', type=int, default=5, help='Timed model train steps.')
    parser.add_argument('--ram', type=float, default=15.0, help='RandAugment magnitude.')
    parser.add_argument('--mixup', type=float, default=0.2, help='Mixup alpha.')
    parser.add_argument('--model', default='efficientnetv2-b0')
    return parser.parse_args(argv)


def natural_image(rng, height=375, width=500):
    """Smooth colour fields at two scales plus grain: JPEG sizes like photos."""
    coarse = rng.uniform(0, 255, (1, 6, 8, 3)).astype(np.float32)
    fine = rng.normal(0, 40, (1, 48, 64, 3)).astype(np.float32)
    image = (
        tf.image.resize(coarse, [height, width], 'bicubic')
        + tf.image.resize(fine, [height, width], 'bicubic')
    )[0]
    image += rng.normal(0, 6, (height, width, 3)).astype(np.float32)
    return tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)


def write_records(directory, prefix, num_images, num_shards, rng):
    """Writes `num_images` JPEG examples in ImageNet format; returns mean JPEG bytes."""
    sizes = []
    per_shard = -(-num_images // num_shards)
    for shard in range(num_shards):
        path = os.path.join(directory, f'{prefix}-{shard:05d}-of-{num_shards:05d}')
        with tf.io.TFRecordWriter(path) as writer:
            for _ in range(min(per_shard, num_images - shard * per_shard)):
                encoded = tf.io.encode_jpeg(natural_image(rng), quality=90).numpy()
                sizes.append(len(encoded))
                label = int(rng.integers(1, 1001))
                example = tf.train.Example(
                    features=tf.train.Features(
                        feature={
                            'image/encoded': tf.train.Feature(
                                bytes_list=tf.train.BytesList(value=[encoded])
                            ),
                            'image/class/label': tf.train.Feature(
                                int64_list=tf.train.Int64List(value=[label])
                            ),
                        }
                    )
                )
                writer.write(example.SerializeToString())
    return float(np.mean(sizes))


def pipeline_rate(dataset, warmup, steps, batch):
    """Images per second drawn from `dataset` after `warmup` batches."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return steps * batch / (time.perf_counter() - start)


def build_model(name):
    try:
        import efficientnetv2

        return efficientnetv2.get_model(name, weights=None), 'efficientnetv2.get_model'
    except (ImportError, AttributeError):
        return (
            keras.applications.EfficientNetV2B0(weights=None, include_preprocessing=False),
            'keras.applications.EfficientNetV2B0',
        )


def model_rate(name, images, labels, steps):
    """Images per second of a plain tf.function train step (RMSprop)."""
    model, source = build_model(name)
    optimizer = keras.optimizers.RMSprop(learning_rate=0.01, rho=0.9, momentum=0.9, epsilon=1e-3)

    @tf.function
    def train_step(batch_images, batch_labels):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(batch_images, training=True), tf.float32)
            loss = tf.reduce_mean(
                keras.losses.categorical_crossentropy(batch_labels, logits, from_logits=True)
            )
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    train_step(images, labels).numpy()  # Trace and build the optimizer.
    train_step(images, labels).numpy()
    start = time.perf_counter()
    for _ in range(steps):
        loss = train_step(images, labels)
    loss.numpy()
    return steps * images.shape[0] / (time.perf_counter() - start), source


def main(argv=None):
    args = parse_args(argv)
    logging.set_verbosity(logging.WARNING)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        jpeg_bytes = write_records(directory, 'train', args.num_images, args.num_shards, rng)
        write_records(
            directory, 'validation', max(args.num_images // 4, 1), max(args.num_shards // 4, 1), rng
        )
        write_seconds = time.perf_counter() - start

        common = dict(data_dir=directory, image_size=args.image_size, batch_size=args.batch)
        train = data.build_dataset(
            'imagenet',
            split='trainval',
            is_training=True,
            augname='randaug',
            ram=args.ram,
            mixup_alpha=args.mixup,
            **common,
        )
        train_rate = pipeline_rate(train, args.warmup, args.steps, args.batch)
        evaluation = data.build_dataset(
            'imagenet', split='eval', is_training=False, repeat=True, **common
        )
        eval_rate = pipeline_rate(evaluation, args.warmup, args.steps, args.batch)
        images, labels = next(iter(train))

    step_rate, model_source = model_rate(args.model, images, labels, args.model_steps)
    rows = [
        (f'train pipeline (RandAugment M={args.ram:g}, mixup {args.mixup:g})', train_rate),
        ('eval pipeline (centre crop)', eval_rate),
        (f'{args.model} train step, batch {args.batch} ({model_source})', step_rate),
    ]
    print(
        f'\n{args.num_images} JPEGs of 500x375 (mean {jpeg_bytes / 1024:.0f} KiB, written in '
        f'{write_seconds:.0f} s), {args.image_size} px, batch {args.batch}, '
        f'{os.cpu_count()} CPU cores, TF {tf.__version__}'
    )
    width = max(len(name) for name, _ in rows)
    print(f'{"measured":<{width}}  images/s')
    for name, rate in rows:
        print(f'{name:<{width}}  {rate:8.1f}')
    print(f'train pipeline / train step = {train_rate / step_rate:.1f}x (target >= 2x)')


if __name__ == '__main__':
    main()
