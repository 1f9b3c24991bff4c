"""What to train: the image-classification task, usable without the `Trainer`.

In the spirit of the TF Model Garden's `base_task`: a `ClassificationTask` built from a run config
knows WHAT is trained (the model, the loss with weight decay, the evaluation math, the input
pipelines of a progressive-learning stage or an eval size, the stage plan) and nothing about HOW
(strategy, steps per compiled call, optimizer wrapping, EMA, checkpoints, summaries). The
`Trainer` drives it in a `tf.distribute` custom loop; a Keras `fit` workflow or a NAS trial can
use it directly::

    task = ClassificationTask(config)
    model = task.build_model()
    stage = task.build_stage_plan()[0]
    task.set_stage(model, stage)
    dataset = task.build_train_dataset(stage)
    for images, labels in dataset.take(10):
        loss = task.train_step(images, labels, model, optimizer)

Shapes: the pipelines built here can relax their image height and width to unknown
(`relax_shapes=True`), so one traced step serves every stage size. XLA needs static shapes;
pass `relax_shapes=False` there.
"""

from absl import logging
import keras
import tensorflow as tf

from efficientnetv2 import config as config_lib
from efficientnetv2 import data
from efficientnetv2 import model as model_lib
from efficientnetv2.train import losses
from efficientnetv2.train import progressive


def _relax_image_shape(dataset):
    """(images, labels) with the images' height and width made unknown in the element spec.

    `placeholder_with_default` passes its input through unchanged; only the static shape it
    reports is the looser one. A traced function fed by this dataset therefore matches every
    image size with one trace (the batch dimension stays as it was).
    """
    spec = dataset.element_spec[0]
    shape = spec.shape.as_list()
    if shape[1] is None and shape[2] is None:
        return dataset
    relaxed = [shape[0], None, None, shape[3]]

    def relax(images, labels):
        return tf.compat.v1.placeholder_with_default(images, relaxed), labels

    return dataset.map(relax, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


class ClassificationTask:
    """Image classification on a config's dataset (see module docstring).

    Args:
        config: a resolved run config (`efficientnetv2.experiment.build_config`).
        info: the dataset's `DatasetInfo`; default from `config.data`.
    """

    def __init__(self, config, info=None):
        self.config = config
        self.info = info or data.get_dataset_info(
            config.data.dataset, data_dir=config.data.data_dir
        )
        self.global_batch = int(config.train.batch_size)
        num_images = self.info.get_split(config.data.train_split).num_images
        self.steps_per_epoch = num_images / self.global_batch
        self.total_steps = max(
            int(config.train.min_steps or 0),
            int(config.train.epochs * num_images // self.global_batch),
        )
        self.train_image_size = config_lib.train_image_size(config)
        self.eval_image_size = int(config.eval.image_size)

    # -- what is trained --------------------------------------------------------------------

    def build_stage_plan(self):
        """The progressive-learning plan (EfficientNetV2 Algorithm 1) over `total_steps`."""
        return progressive.plan_for_config(self.config, self.total_steps)

    def build_model(self, strategy=None, sync_bn=None):
        """The network of `config.model`, created under `strategy.scope()` when given.

        Args:
            strategy: a `tf.distribute.Strategy` whose scope holds the variables.
            sync_bn: override `model.sync_bn` (the Trainer forces it on for TPUs).
        """
        args = self.config.model.as_dict()
        if sync_bn is not None:
            args['sync_bn'] = bool(sync_bn)
        if strategy is None:
            return model_lib.EfficientNet(**args)
        with strategy.scope():
            return model_lib.EfficientNet(**args)

    def set_stage(self, model, stage):
        """Sets the in-graph per-stage knobs (today the classifier dropout; no retrace)."""
        model.dropout_rate = stage.dropout_rate

    def build_losses(self, labels, logits, model=None, num_replicas=1):
        """This replica's share of the loss: classification loss + coupled L2 weight decay.

        The classification part is normalised by the global batch, the weight decay divided
        by `num_replicas`, so summing over replicas gives the loss of the whole batch.
        """
        config = self.config.train
        loss = losses.classification_loss(
            labels,
            tf.cast(logits, tf.float32),
            loss_type=config.loss_type,
            label_smoothing=config.label_smoothing,
            normalize_labels=self.info.multi_label,
            global_batch_size=self.global_batch,
        )
        if config.weight_decay and model is not None:
            loss += losses.l2_loss(model.trainable_variables, config.weight_decay) / num_replicas
        return loss

    def train_step(self, images, labels, model, optimizer, num_replicas=1, grad_norm=False):
        """One optimizer step on a (per-replica) batch; returns the unscaled loss.

        With `grad_norm=True` returns `(loss, norm)`, the global norm of this replica's
        gradients (after clipping, unscaled) times `num_replicas`: on one replica the norm of
        the step's gradient, on several an estimate of it (each replica holds its share).

        With a `LossScaleOptimizer` the gradients are unscaled before `train.gclip` clips
        them and scaled back afterwards (the loss scale is a power of two: exact), so the
        clipping threshold means the same with and without loss scaling, and the optimizer
        still sees non-finite gradients and lowers its scale.
        """
        variables = model.trainable_variables
        scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = self.build_losses(labels, logits, model, num_replicas)
            scaled_loss = optimizer.scale_loss(loss) if scaled else loss
        gradients = tape.gradient(scaled_loss, variables)
        gradients = self.clip_gradients(gradients, optimizer)
        norm = None
        if grad_norm:
            norm = tf.linalg.global_norm(
                [tf.cast(g, tf.float32) for g in gradients if g is not None]
            )
            if scaled:
                norm /= tf.cast(tf.convert_to_tensor(optimizer.dynamic_scale), tf.float32)
            norm *= num_replicas
        optimizer.apply(gradients, variables)
        return loss if not grad_norm else (loss, norm)

    def clip_gradients(self, gradients, optimizer):
        """`train.gclip` on the true gradients, also under loss scaling (see `train_step`)."""
        clip = self.config.train.gclip
        if not clip:
            return list(gradients)
        if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            return losses.clip_gradients(gradients, clip)
        scale = tf.cast(tf.convert_to_tensor(optimizer.dynamic_scale), tf.float32)
        unscaled = [None if g is None else tf.cast(g, tf.float32) / scale for g in gradients]
        clipped = losses.clip_gradients(unscaled, clip)
        return [
            None if c is None else tf.cast(c * scale, g.dtype) for c, g in zip(clipped, gradients)
        ]

    def validation_step(self, images, labels, model):
        """Sums over the batch: [top-1 hits, top-k hits, count], k = min(5, num_classes)."""
        logits = model(images, training=False)
        return self.eval_metrics(labels, logits)

    def eval_metrics(self, labels, logits):
        """[top-1 hits, top-k hits, count] of a batch (sums; divide totals by count)."""
        k = min(5, self.info.num_classes)
        logits = tf.cast(logits, tf.float32)
        truth = tf.argmax(labels, axis=-1, output_type=tf.int32)
        top1 = tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), truth), tf.float32)
        )
        topk = tf.reduce_sum(tf.cast(tf.math.in_top_k(truth, logits, k), tf.float32))
        count = tf.cast(tf.shape(labels)[0], tf.float32)
        return tf.stack([top1, topk, count])

    # -- input pipelines --------------------------------------------------------------------

    def build_train_dataset(
        self,
        stage,
        input_context=None,
        image_dtype=tf.float32,
        skip_batches=0,
        relax_shapes=False,
        num_batches=None,
    ):
        """The training pipeline of a stage (size, RandAugment, mixup, cutmix of `stage`).

        Args:
            stage: a `progressive.Stage`.
            input_context: a `tf.distribute.InputContext` (per-replica batch, sharding).
            image_dtype: the images' dtype (bfloat16 on TPU).
            skip_batches: batches to skip (exact data replay on resume).
            relax_shapes: report unknown image height/width (one trace for all stages).
            num_batches: batches to yield after the skipped ones, e.g. the stage's remaining
                steps times the replicas this pipeline feeds; None: endless. A bounded
                pipeline stops decoding at its last needed batch.
        """
        config = self.config
        batch = self.global_batch
        if input_context is not None:
            batch = input_context.get_per_replica_batch_size(self.global_batch)
        dataset = data.build_dataset(
            self.info,
            split=config.data.train_split,
            data_dir=config.data.data_dir,
            image_size=stage.image_size,
            batch_size=batch,
            is_training=True,
            preprocess=config.data.preprocess,
            augname=config.data.augname,
            ram=stage.ram,
            ra_num_layers=config.data.ra_num_layers,
            mixup_alpha=stage.mixup_alpha,
            cutmix_alpha=stage.cutmix_alpha,
            image_dtype=image_dtype,
            input_context=input_context,
            seed=None if config.train.seed is None else config.train.seed + stage.index,
            cache=config.data.cache,
            shuffle_buffer=config.data.shuffle_buffer,
            solarize_wrap=config.data.solarize_wrap,
            skip_batches=skip_batches,
            num_batches=num_batches,
            augment_pixel_scale=progressive.config_augment_pixel_scale(config, stage.image_size),
        )
        return _relax_image_shape(dataset) if relax_shapes else dataset

    def build_eval_dataset(
        self,
        image_size=None,
        input_context=None,
        image_dtype=tf.float32,
        drop_remainder=False,
        relax_shapes=False,
    ):
        """The eval pipeline at `image_size` (default `eval.image_size`)."""
        config = self.config
        batch = int(config.eval.batch_size)
        if input_context is not None:
            batch = input_context.get_per_replica_batch_size(batch)
        dataset = data.build_dataset(
            self.info,
            split=config.eval.split,
            data_dir=config.data.data_dir,
            image_size=int(image_size or self.eval_image_size),
            batch_size=batch,
            is_training=False,
            preprocess=config.data.preprocess,
            augname=config.data.augname,
            image_dtype=image_dtype,
            input_context=input_context,
            drop_remainder=drop_remainder,
        )
        return _relax_image_shape(dataset) if relax_shapes else dataset

    def log_stage(self, stage, num_stages, step):
        logging.info(
            'Stage %d/%d: steps %d-%d, image size %d, RandAugment %.2f, mixup %.3f, '
            'cutmix %.3f, dropout %.3f%s.',
            stage.index + 1,
            num_stages,
            stage.start_step,
            stage.end_step,
            stage.image_size,
            stage.ram,
            stage.mixup_alpha,
            stage.cutmix_alpha,
            stage.dropout_rate,
            f' (resuming at step {int(step)})' if step > stage.start_step else '',
        )
