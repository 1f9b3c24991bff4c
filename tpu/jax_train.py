"""fit_progressive with keras.distribution.DataParallel on every device of a TPU slice (JAX).

UNTESTED on a real TPU: the same code is tested on 4 virtual CPU devices
(tests/test_backends.py::test_jax_data_parallel_fit_progressive_and_global_batch_norm).

Run on every host of the slice (tpu/jax_train.sh does); each host feeds its own share of the
global batch (`global_batch / jax.process_count()` images per step). The data here is random
(a throughput and wiring check); replace `HostBatches` with your own reader (grain, a PyDataset
over your files) that applies the stage's augmentation (`stage.ram`, `stage.mixup_alpha`,
`stage.cutmix_alpha`; see docs/backends.md). Batch-norm statistics are those of the global
batch (docs/backends.md).
"""

import argparse
import os

os.environ.setdefault('KERAS_BACKEND', 'jax')

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import efficientnetv2  # noqa: E402


class HostBatches(keras.utils.PyDataset):
    """Random images and one-hot labels: this host's share of each global batch."""

    def __init__(self, size, batch, steps, classes, seed):
        super().__init__()
        self.size, self.batch, self.steps, self.classes = size, batch, steps, classes
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return self.steps

    def __getitem__(self, index):
        x = self.rng.uniform(-1, 1, (self.batch, self.size, self.size, 3)).astype('float32')
        y = self.rng.integers(0, self.classes, self.batch)
        return x, keras.utils.to_categorical(y, self.classes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model_name', default='efficientnetv2-s')
    parser.add_argument('--epochs', type=int, default=4)
    parser.add_argument('--stages', type=int, default=4)
    parser.add_argument('--image_size', type=int, default=300)
    parser.add_argument('--global_batch', type=int, default=1024)
    parser.add_argument('--steps_per_epoch', type=int, default=50)
    parser.add_argument('--num_classes', type=int, default=1000)
    parser.add_argument('--learning_rate', type=float, default=0.016)
    parser.add_argument('--dtype', default='mixed_bfloat16')
    args = parser.parse_args()

    if ',' in os.environ.get('TPU_WORKER_HOSTNAMES', ''):
        # A multi-host slice: connect the hosts' JAX processes before JAX touches a device.
        keras.distribution.initialize()
    keras.mixed_precision.set_global_policy(args.dtype)
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    print(
        f'process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} '
        f'local of {jax.device_count()} devices',
        flush=True,
    )

    model = efficientnetv2.get_model(args.model_name, num_classes=args.num_classes)
    model.compile(
        keras.optimizers.RMSprop(args.learning_rate, rho=0.9, momentum=0.9, epsilon=1e-3),
        keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
        metrics=['accuracy'],
    )
    plan = efficientnetv2.progressive_plan(
        epochs=args.epochs, image_size=args.image_size, num_stages=args.stages
    )
    per_host = args.global_batch // jax.process_count()

    def dataset_fn(stage):
        return HostBatches(
            stage.image_size,
            per_host,
            args.steps_per_epoch,
            args.num_classes,
            seed=jax.process_index() * 1000 + stage.index,
        )

    result = efficientnetv2.fit_progressive(model, dataset_fn, plan, ema=0.9999, verbose=2)
    for stage, history in result.stages:
        print(stage.index, stage.image_size, history.history.get('loss'), flush=True)


if __name__ == '__main__':
    main()
