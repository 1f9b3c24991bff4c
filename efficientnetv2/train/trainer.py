"""The training engine: a `tf.distribute` custom loop with progressive learning.

One `Trainer` owns the model, optimizer, EMA, checkpoint manager and summary writers of a model
directory. `train()` runs the stage plan (EfficientNetV2 Algorithm 1): for every stage it
rebuilds the input pipeline at the stage's image size and augmentation strength, sets the
stage's dropout, and traces a fresh multi-step train function (the official
`iterations_per_loop` idea: several steps per compiled call). Weights, optimizer slots, EMA
and the step counter carry over; checkpoints are written periodically and at every stage end,
so a restarted run resumes at the exact step and stage.

Evaluation uses the EMA weights when the run keeps an average (`train.ema_decay > 0`).
"""

import json
import math
import os
import signal
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from efficientnetv2 import config as config_lib
from efficientnetv2 import data
from efficientnetv2 import distribute
from efficientnetv2 import model as model_lib
from efficientnetv2.train import ema as ema_lib
from efficientnetv2.train import losses
from efficientnetv2.train import optimizers
from efficientnetv2.train import progressive
from efficientnetv2.train import schedules

# Keys that identify what a model directory holds: a restart with other values is refused.
IDENTITY_KEYS = ('model.model_name', 'model.blocks', 'model.width_coefficient',
                 'model.depth_coefficient', 'model.num_classes', 'data.dataset')


class TrainingError(RuntimeError):
    """Training stopped (non-finite loss, refused model directory, ...)."""


def _get(config, dotted):
    node = config
    for part in dotted.split('.'):
        node = node[part]
    return node


def check_model_dir(model_dir, config):
    """Refuses a model_dir that holds a run of another model or dataset."""
    path = os.path.join(model_dir, 'config.yaml')
    if not tf.io.gfile.exists(path):
        return
    from efficientnetv2 import hparams
    saved = hparams.Config(hparams.load_yaml(path))
    different = []
    for key in IDENTITY_KEYS:
        try:
            old = _get(saved, key)
        except KeyError:
            continue
        new = _get(config, key)
        if isinstance(old, (list, tuple)) or isinstance(new, (list, tuple)):
            old, new = list(old or []), list(new or [])
        if old != new:
            different.append('%s: %r in the directory, %r now' % (key, old, new))
    if different:
        raise TrainingError(
            'model_dir %s holds a run of a different model or dataset (%s). Use another '
            '--model_dir, or remove that directory to start over.'
            % (model_dir, '; '.join(different)))


def model_random_states(model):
    """The state variables of the model's random generators, by layer path.

    Dropout and stochastic depth draw their masks from Keras `SeedGenerator`s whose state (a
    key and a counter that grows at each draw) is a variable outside `model.weights`, so a
    checkpoint of the model alone does not hold it: a restarted run would draw the masks of
    step 0 again. The trainer checkpoints these states beside the model.
    """
    states = {}
    for top in model.layers:
        for layer in top._flatten_layers(include_self=True):
            name = top.name if layer is top else '%s/%s' % (top.name, layer.name)
            for i, generator in enumerate(getattr(layer, '_seed_generators', ())):
                states['%s/%d' % (name, i) if i else name] = generator.state
    return states


class Trainer(object):
    """Trains and evaluates one model directory.

    Args:
        config: a resolved run config (`efficientnetv2.config.build_config`).
        model_dir: where checkpoints, summaries and config.yaml go (local or gs://).
        strategy: a `tf.distribute.Strategy`; default from `config.runtime.strategy`.
    """

    def __init__(self, config, model_dir, strategy=None):
        self.config = config
        self.model_dir = model_dir
        self.strategy = strategy or distribute.get_strategy(config.runtime.strategy)
        self.is_chief = distribute.is_chief()
        if config.train.seed is not None:
            keras.utils.set_random_seed(config.train.seed)
        if config.runtime.deterministic:
            tf.config.experimental.enable_op_determinism()
        self.precision = distribute.set_precision(
            config.runtime.mixed_precision or distribute.default_precision(self.strategy))

        self.info = data.get_dataset_info(config.data.dataset, data_dir=config.data.data_dir)
        self.num_replicas = self.strategy.num_replicas_in_sync
        self.global_batch = int(config.train.batch_size)
        distribute.batch_plan(self.strategy, self.global_batch, config.train.lr_base)
        num_images = self.info.get_split(config.data.train_split).num_images
        self.steps_per_epoch = num_images / self.global_batch
        self.total_steps = max(int(config.train.min_steps or 0),
                               int(config.train.epochs * num_images // self.global_batch))
        self.plan = progressive.build_stage_plan(
            num_stages=config.train.stages, total_steps=self.total_steps,
            final_image_size=config_lib.train_image_size(config),
            final_ram=config.data.ram, final_mixup=config.data.mixup_alpha,
            final_cutmix=config.data.cutmix_alpha, final_dropout=config.model.dropout_rate,
            min_image_size=config.train.min_image_size, min_ram=config.train.min_ram,
            min_mixup=config.train.min_mixup, min_cutmix=config.train.min_cutmix,
            min_dropout=config.train.min_dropout, mode=config.train.progressive)

        with self.strategy.scope():
            model_args = config.model.as_dict()
            model_args['sync_bn'] = bool(model_args['sync_bn'] or
                                         distribute.is_tpu_strategy(self.strategy))
            self.model = model_lib.EfficientNet(**model_args)
            self.schedule = schedules.WarmupDecaySchedule(
                lr_base=config.train.lr_base, global_batch_size=self.global_batch,
                steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps,
                decay_type=config.train.lr_sched, warmup_epochs=config.train.lr_warmup_epochs,
                lr_min=config.train.lr_min, decay_rate=config.train.lr_decay_factor,
                decay_epochs=config.train.lr_decay_epochs)
            optimizer = optimizers.build_optimizer(config.train.optimizer, self.schedule)
            if self.precision == 'mixed_float16':
                optimizer = distribute.loss_scale_optimizer(optimizer)
            self.optimizer = optimizer
            self.optimizer.build(self.model.trainable_variables)
            self.ema = None
            if config.train.ema_decay:
                self.ema = ema_lib.ExponentialMovingAverage(
                    ema_lib.ema_variables(self.model), decay=config.train.ema_decay)
            self.global_step = tf.Variable(
                0, dtype=tf.int64, trainable=False, name='global_step',
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self._loss_sum = tf.Variable(0.0, trainable=False, name='loss_sum',
                                         aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self._bad_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name='bad_step',
                                         aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

        tracked = dict(model=self.model, optimizer=self.optimizer, step=self.global_step)
        if self.ema is not None:
            tracked['ema'] = self.ema
        random_states = model_random_states(self.model)
        if random_states:  # Dropout / stochastic-depth draws continue where they stopped.
            tracked['random'] = random_states
        self._tracked = tracked
        self.checkpoint = tf.train.Checkpoint(**tracked)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self._write_dir(),
            max_to_keep=config.train.keep_ckpt_max if self.is_chief else 1,
            step_counter=self.global_step)
        self._summary = {}  # Summary writers by sub-directory name.
        self._eval_step = None
        self._stop_requested = False
        self.history = []  # One entry per compiled call: step, stage, loss, lr, throughput.

    # -- set-up helpers -------------------------------------------------------------------

    def _write_dir(self):
        """Chief writes into model_dir; other multi-worker workers into throw-away dirs."""
        if self.is_chief:
            return self.model_dir
        return os.path.join(self.model_dir, '.worker_tmp', '%s_%d' % distribute.task_info())

    def _summary_writer(self, name):
        if name not in self._summary:
            self._summary[name] = tf.summary.create_file_writer(
                os.path.join(self._write_dir(), name))
        return self._summary[name]

    def _image_dtype(self):
        return tf.bfloat16 if self.precision == 'mixed_bfloat16' else tf.float32

    def restore(self):
        """Restores the latest checkpoint of model_dir; returns True if there was one."""
        latest = tf.train.latest_checkpoint(self.model_dir)
        if not latest:
            return False
        checkpoint = self.checkpoint
        saved = {name.split('/')[0] for name, _ in tf.train.list_variables(latest)}
        if 'random' in self._tracked and 'random' not in saved:
            logging.warning('%s holds no random-generator state (written by an older version): '
                            'dropout and stochastic-depth masks restart from their first draw, '
                            'so this run does not replay an uninterrupted one exactly.', latest)
            checkpoint = tf.train.Checkpoint(
                **{key: value for key, value in self._tracked.items() if key != 'random'})
        checkpoint.restore(latest).assert_existing_objects_matched().expect_partial()
        logging.info('Restored %s at step %d.', latest, int(self.global_step.numpy()))
        return True

    def _init_from_pretrained(self):
        path = self.config.train.ft_init_ckpt
        if not path:
            return
        from efficientnetv2 import weights as weights_lib
        logging.info('Fine-tuning: initialising from %s (classifier head skipped).', path)
        weights_lib.load_weights(self.model, path, prefer_ema=self.config.train.ft_init_ema)
        if self.ema is not None:
            self.ema.reset_from_model()

    def _save_config(self):
        if not self.is_chief:
            return
        tf.io.gfile.makedirs(self.model_dir)
        self.config.to_yaml(os.path.join(self.model_dir, 'config.yaml'))

    # -- the compiled steps ---------------------------------------------------------------

    def _step_fn(self, images, labels):
        config = self.config.train
        model = self.model
        variables = model.trainable_variables
        with tf.GradientTape() as tape:
            logits = tf.cast(model(images, training=True), tf.float32)
            loss = losses.classification_loss(
                labels, logits, loss_type=config.loss_type,
                label_smoothing=config.label_smoothing,
                normalize_labels=self.info.multi_label, global_batch_size=self.global_batch)
            if config.weight_decay:
                loss += losses.l2_loss(variables, config.weight_decay) / self.num_replicas
            scaled_loss = loss
            if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
                scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, variables)
        if config.gclip and not isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            gradients = losses.clip_gradients(gradients, config.gclip)
        self.optimizer.apply(gradients, variables)
        if self.ema is not None:
            self.ema.apply(self.global_step + 1)
        return loss

    def _make_train_loop(self):
        """A fresh tf.function (so a new stage retraces: new image size, new dropout)."""
        strategy = self.strategy

        @tf.function
        def train_loop(iterator, num_steps):
            for _ in tf.range(num_steps):
                images, labels = next(iterator)
                per_replica = strategy.run(self._step_fn, args=(images, labels))
                loss = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
                self.global_step.assign_add(1)
                self._loss_sum.assign_add(loss)
                if tf.logical_and(tf.logical_not(tf.math.is_finite(loss)), self._bad_step < 0):
                    self._bad_step.assign(self.global_step)

        return train_loop

    # -- data -------------------------------------------------------------------------------

    def _train_dataset(self, stage, skip_batches=0):
        config = self.config

        def dataset_fn(input_context):
            batch = input_context.get_per_replica_batch_size(self.global_batch)
            dataset = data.build_dataset(
                self.info, split=config.data.train_split, data_dir=config.data.data_dir,
                image_size=stage.image_size, batch_size=batch, is_training=True,
                preprocess=config.data.preprocess, augname=config.data.augname,
                ram=stage.ram, ra_num_layers=config.data.ra_num_layers,
                mixup_alpha=stage.mixup_alpha, cutmix_alpha=stage.cutmix_alpha,
                image_dtype=self._image_dtype(), input_context=input_context,
                seed=None if config.train.seed is None else config.train.seed + stage.index,
                cache=config.data.cache, shuffle_buffer=config.data.shuffle_buffer)
            if skip_batches:
                dataset = dataset.skip(skip_batches)
            return dataset

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def _eval_dataset(self):
        config = self.config

        def dataset_fn(input_context):
            batch = input_context.get_per_replica_batch_size(config.eval.batch_size)
            return data.build_dataset(
                self.info, split=config.eval.split, data_dir=config.data.data_dir,
                image_size=config.eval.image_size, batch_size=batch, is_training=False,
                preprocess=config.data.preprocess, augname=config.data.augname,
                image_dtype=self._image_dtype(), input_context=input_context,
                drop_remainder=distribute.is_tpu_strategy(self.strategy))

        if config.eval.batch_size % self.num_replicas:
            raise ValueError('eval.batch_size (%d) must be divisible by the number of replicas '
                             '(%d).' % (config.eval.batch_size, self.num_replicas))
        return self.strategy.distribute_datasets_from_function(dataset_fn)

    # -- training ---------------------------------------------------------------------------

    def _stop_agreed(self):
        """Whether any worker was asked to stop (all workers must stop at the same step)."""
        self._stop_requested = distribute.any_worker(self.strategy, self._stop_requested)
        return self._stop_requested

    def _request_stop(self, signum, frame):
        del frame
        logging.warning('Signal %d received: saving a checkpoint and stopping.', signum)
        self._stop_requested = True

    def train(self, evaluate_each_stage=False):
        """Runs (or resumes) the stage plan to the final step; returns the last eval or None."""
        check_model_dir(self.model_dir, self.config)
        resumed = self.restore()
        if not resumed:
            self._init_from_pretrained()
        self._save_config()
        logging.info('Progressive-learning plan (%s mode, %d steps of %d images, %.1f steps '
                     'per epoch):\n%s', self.plan.mode, self.total_steps, self.global_batch,
                     self.steps_per_epoch, self.plan.format_table())
        self._write_text_summary()
        previous_handler = None
        try:
            previous_handler = signal.signal(signal.SIGTERM, self._request_stop)
        except ValueError:  # Not in the main thread.
            pass
        result = None
        try:
            step = int(self.global_step.numpy())
            for stage in self.plan.stages:
                if step >= stage.end_step:
                    continue
                self._run_stage(stage, step)
                step = int(self.global_step.numpy())
                if self._stop_requested:
                    logging.warning('Stopped at step %d on request; the run resumes from here.',
                                    step)
                    return None
                if evaluate_each_stage:
                    result = self.evaluate()
            if evaluate_each_stage and result is None:  # The run had already finished.
                result = self.evaluate()
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
        return result

    def _run_stage(self, stage, step):
        config = self.config.train
        self.model.dropout_rate = stage.dropout_rate
        skip = 0
        if step > stage.start_step and self.config.train.seed is not None:
            # A seeded stage pipeline is the same sequence of batches in every run: pass over
            # the ones already trained on. (Unseeded, the resumed stage draws new batches.)
            skip = step - stage.start_step
        logging.info('Stage %d/%d: steps %d-%d, image size %d, RandAugment %.2f, mixup %.3f, '
                     'cutmix %.3f, dropout %.3f%s.', stage.index + 1, len(self.plan.stages),
                     stage.start_step, stage.end_step, stage.image_size, stage.ram,
                     stage.mixup_alpha, stage.cutmix_alpha, stage.dropout_rate,
                     ' (resuming at step %d)' % step if step > stage.start_step else '')
        iterator = iter(self._train_dataset(stage, skip))
        train_loop = self._make_train_loop()
        progbar = keras.utils.Progbar(stage.end_step - stage.start_step, unit_name='step',
                                      stateful_metrics=['loss', 'lr', 'img/s', 'stage'])
        progbar.update(step - stage.start_step)
        last_save = step
        writer = self._summary_writer('train')
        while step < stage.end_step and not self._stop_agreed():
            num = min(config.steps_per_loop, stage.end_step - step)
            self._loss_sum.assign(0.0)
            start = time.time()
            train_loop(iterator, tf.constant(num, tf.int32))
            loss = float(self._loss_sum.numpy()) / num
            elapsed = time.time() - start
            bad = int(self._bad_step.numpy())
            if bad >= 0 or not math.isfinite(loss):
                raise TrainingError(
                    'Non-finite loss at step %d; stopped. The last good checkpoint in %s is '
                    'kept (latest: %s).' % (bad if bad >= 0 else step + num, self.model_dir,
                                            self.manager.latest_checkpoint))
            step = int(self.global_step.numpy())
            lr = float(self.schedule(step))
            images_per_sec = num * self.global_batch / max(elapsed, 1e-9)
            self.history.append(dict(step=step, stage=stage.index, loss=loss, lr=lr,
                                     image_size=stage.image_size,
                                     images_per_sec=images_per_sec, seconds=elapsed))
            progbar.update(step - stage.start_step, values=[
                ('loss', loss), ('lr', lr), ('img/s', images_per_sec),
                ('stage', stage.index + 1)])
            with writer.as_default(step=step):
                tf.summary.scalar('loss', loss)
                tf.summary.scalar('learning_rate', lr)
                tf.summary.scalar('images_per_second', images_per_sec)
                tf.summary.scalar('image_size', stage.image_size)
                tf.summary.scalar('stage', stage.index)
                tf.summary.scalar('dropout_rate', stage.dropout_rate)
                tf.summary.scalar('randaug_magnitude', stage.ram)
            if step - last_save >= config.ckpt_interval:
                self.manager.save(checkpoint_number=step)
                last_save = step
        self.manager.save(checkpoint_number=step)
        writer.flush()
        skipped = data.skipped_images()
        if skipped:
            logging.warning('%d corrupt or undecodable images skipped so far.', skipped)

    def _write_text_summary(self):
        with self._summary_writer('train').as_default(step=int(self.global_step.numpy())):
            tf.summary.text('config', '```\n%s\n```' % self.config.to_yaml())
            tf.summary.text('stage_plan', '```\n%s\n```' % self.plan.format_table())

    # -- evaluation -------------------------------------------------------------------------

    def _make_eval_step(self):
        k = min(5, self.info.num_classes)
        model = self.model

        @tf.function
        def eval_step(images, labels):
            logits = tf.cast(model(images, training=False), tf.float32)
            truth = tf.argmax(labels, axis=-1, output_type=tf.int32)
            top1 = tf.reduce_sum(tf.cast(
                tf.equal(tf.argmax(logits, -1, output_type=tf.int32), truth), tf.float32))
            topk = tf.reduce_sum(tf.cast(tf.math.in_top_k(truth, logits, k), tf.float32))
            count = tf.cast(tf.shape(labels)[0], tf.float32)
            return tf.stack([top1, topk, count])

        return eval_step

    def evaluate(self, use_ema=True):
        """Top-1 / top-5 on the eval split (EMA weights when kept); writes summaries."""
        if self._eval_step is None:
            self._eval_step = self._make_eval_step()
        eval_step = self._eval_step
        totals = np.zeros(3)
        context = self.ema.average_weights() if (use_ema and self.ema is not None) else None
        start = time.time()
        if context is not None:
            context.__enter__()
        try:
            for i, (images, labels) in enumerate(self._eval_dataset()):
                if self.config.eval.steps and i >= self.config.eval.steps:
                    break
                per_replica = self.strategy.run(eval_step, args=(images, labels))
                totals += self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica,
                                               axis=None).numpy()
        finally:
            if context is not None:
                context.__exit__(None, None, None)
        count = max(totals[2], 1.0)
        step = int(self.global_step.numpy())
        result = dict(step=step, top_1=totals[0] / count, top_5=totals[1] / count,
                      num_images=int(totals[2]), ema=bool(use_ema and self.ema is not None),
                      seconds=time.time() - start)
        logging.info('Eval at step %d on %d images (%s weights): top-1 %.4f, top-5 %.4f.',
                     step, result['num_images'], 'EMA' if result['ema'] else 'raw',
                     result['top_1'], result['top_5'])
        with self._summary_writer('eval').as_default(step=step):
            tf.summary.scalar('top_1', result['top_1'])
            tf.summary.scalar('top_5', result['top_5'])
        self._summary_writer('eval').flush()
        if self.is_chief:
            with tf.io.gfile.GFile(os.path.join(self.model_dir, 'eval_results.json'), 'w') as f:
                json.dump(result, f, indent=2)
        return result

    def evaluate_checkpoints(self):
        """`--mode=eval`: evaluates each new checkpoint until the final step's."""
        result = None
        for path in tf.train.checkpoints_iterator(self.model_dir,
                                                  timeout=self.config.eval.timeout):
            self.checkpoint.restore(path).expect_partial()
            result = self.evaluate()
            if result['step'] >= self.total_steps:
                break
        if result is None:
            raise TrainingError('No checkpoint appeared in %s within %d s.'
                                % (self.model_dir, self.config.eval.timeout))
        return result
