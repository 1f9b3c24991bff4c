"""The training engine: a `tf.distribute` custom loop with progressive learning.

WHAT is trained (model, loss, eval math, input pipelines, stage plan) is the
`efficientnetv2.train.task.ClassificationTask`; this module is HOW: one `Trainer` owns the
strategy, optimizer, EMA, checkpoint manager, summary writers and signals of a model directory.
`train()` runs the stage plan (EfficientNetV2 Algorithm 1): for every stage it rebuilds the
input pipeline at the stage's image size and augmentation strength and sets the stage's dropout
(a variable), then runs a multi-step train function (the official `iterations_per_loop` idea:
several steps per compiled call). Weights, optimizer slots, EMA and the step counter carry
over; checkpoints are written periodically and at every stage end, so a restarted run resumes
at the exact step and stage.

Tracing: without XLA (CPU; GPU with `runtime.jit_compile=False`) the train loop is ONE
tf.function for the whole run: the pipelines report unknown image height/width, so a new stage
costs a pipeline rebuild, not a retrace. With XLA (TPU; GPU by default) shapes must be static,
so every stage traces and compiles its own step once. The trace (and first call) time of each
stage is logged and written to TensorBoard (`train/trace_seconds`, `train/first_call_seconds`).

Evaluation uses the EMA weights when the run keeps an average (`train.ema_decay > 0`). In
traineval every stage end is evaluated at the final eval size (`eval/top_1`, the number to
report) and at the stage's own train size (`eval/top_1_at_train_size`).
"""

import contextlib
import json
import math
import os
import signal
import threading
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from efficientnetv2 import data
from efficientnetv2 import distribute
from efficientnetv2.train import ema as ema_lib
from efficientnetv2.train import optimizers
from efficientnetv2.train import schedules
from efficientnetv2.train import task as task_lib

# Keys that identify what a model directory holds: a restart with other values is refused.
IDENTITY_KEYS = (
    'model.model_name',
    'model.blocks',
    'model.width_coefficient',
    'model.depth_coefficient',
    'model.num_classes',
    'data.dataset',
)

# A stage end evaluates the raw and the EMA weights at each size: when the eval split's batches
# fit in this many bytes (a few thousand images at 128 px in float32), the second evaluation
# reuses the first one's batches instead of decoding and resizing the split again.
EVAL_KEEP_BYTES = 256 << 20


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
            different.append(f'{key}: {old!r} in the directory, {new!r} now')
    if different:
        raise TrainingError(
            'model_dir {} holds a run of a different model or dataset ({}). Use another '
            '--model_dir, or remove that directory to start over.'.format(
                model_dir, '; '.join(different)
            )
        )


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
            name = top.name if layer is top else f'{top.name}/{layer.name}'
            for i, generator in enumerate(getattr(layer, '_seed_generators', ())):
                states[f'{name}/{i}' if i else name] = generator.state
    return states


def _loop_variable(name, value, dtype=tf.float32):
    """A non-trainable variable that the train loop updates once per step (first replica)."""
    return tf.Variable(
        value,
        dtype=dtype,
        trainable=False,
        name=name,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
    )


class Trainer:
    """Trains and evaluates one model directory.

    Args:
        config: a resolved run config (`efficientnetv2.experiment.build_config`).
        model_dir: where checkpoints, summaries and config.yaml go (local or gs://).
        strategy: a `tf.distribute.Strategy`; default from `config.runtime.strategy`.
        task: the `ClassificationTask` to train; default built from `config`.
    """

    def __init__(self, config, model_dir, strategy=None, task=None):
        self.config = config
        self.model_dir = model_dir
        # Built in one pass downwards, each part from what comes before it: the runtime, the
        # task and its plan, the model, the schedule and the optimizer, the EMA, the
        # checkpoints.
        self._build_runtime(strategy)
        self._build_task(task)
        with self.strategy.scope():
            self._build_model()
            self._build_optimizer()
            self._build_ema()
            self._build_loop_variables()
        self._build_checkpoints()
        self._summary = {}  # Summary writers by sub-directory name.
        self._eval_step = None
        self._prepared = None  # The next stage's pipeline, being built: `_prepare_pipeline`.
        # The final-size eval batches, kept from one stage end to the next while train() runs
        # with stage-end evaluations (None: not kept); see `_evaluate_weights`.
        self._kept_eval = None
        self._update_norm_fn = None
        self._train_loop = None  # The run-wide train loop (no XLA: one trace for all stages).
        self._stop_requested = False
        self.history = []  # One entry per compiled call: step, stage, loss, lr, throughput.
        # Python-side trace counters: incremented while tracing, never while running.
        self.trace_counts = dict(train=0, eval=0)
        self.stage_timings = []  # Per stage run: stage, image_size, trace/first-call seconds.
        self.stage_results = []  # Per stage end evaluated (traineval): see _evaluate_stage_end.
        self._closers = []  # Threads that release finished stage pipelines (see _run_stage).
        self.close_wait_seconds = 0.0  # What train() waited for them at its end.

    # -- construction, in order -------------------------------------------------------------

    def _build_runtime(self, strategy):
        """Strategy, chief role, seeds, determinism, precision and XLA (`distribute.Runtime`)."""
        self.runtime = distribute.resolve_runtime(
            self.config.runtime, strategy=strategy, seed=self.config.train.seed
        )
        self.strategy = self.runtime.strategy
        self.is_chief = self.runtime.is_chief
        self.precision = self.runtime.precision
        self.jit_compile = self.runtime.jit_compile
        self.num_replicas = self.strategy.num_replicas_in_sync
        # One replica on the host CPU reads plain tf.data pipelines (see `_distribute`).
        self._plain_input = (
            isinstance(self.strategy, tf.distribute.OneDeviceStrategy) and not self.runtime.uses_gpu
        )

    def _build_task(self, task):
        """What is trained (`ClassificationTask`), the batch it splits and its stage plan."""
        self.task = task or task_lib.ClassificationTask(self.config)
        self.info = self.task.info
        self.global_batch = self.task.global_batch
        distribute.batch_plan(self.strategy, self.global_batch, self.config.train.lr_base)
        self.steps_per_epoch = self.task.steps_per_epoch
        self.total_steps = self.task.total_steps
        self.plan = self.task.build_stage_plan()

    def _build_model(self):
        """The network; batch norm syncs across replicas on TPUs (or with `model.sync_bn`)."""
        self.model = self.task.build_model(sync_bn=self.config.model.sync_bn or self.runtime.is_tpu)

    def _build_optimizer(self):
        """The learning-rate schedule over the plan, and the optimizer (loss-scaled under
        mixed_float16), built on the model's variables."""
        config = self.config.train
        schedule = schedules.WarmupDecaySchedule(
            lr_base=config.lr_base,
            global_batch_size=self.global_batch,
            steps_per_epoch=self.steps_per_epoch,
            total_steps=self.total_steps,
            decay_type=config.lr_sched,
            warmup_epochs=config.lr_warmup_epochs,
            lr_min=config.lr_min,
            decay_rate=config.lr_decay_factor,
            decay_epochs=config.lr_decay_epochs,
        )
        # Each stage's rate fits its image size (train.resize_lr_power), and it ramps up
        # again after each size increase (train.resize_warmup).
        ramps = schedules.ramps_for_plan(self.plan, config.resize_warmup)
        scales = schedules.scales_for_plan(self.plan, config.resize_lr_power)
        self.schedule = schedule
        if ramps or scales:
            self.schedule = schedules.ResizeWarmup(schedule, ramps, scales)
        self.optimizer = self.runtime.wrap_optimizer(
            optimizers.build_optimizer(config.optimizer, self.schedule)
        )
        self.optimizer.build(self.model.trainable_variables)

    def _build_ema(self):
        """The moving average of the model's weights (None when `train.ema_decay` is 0)."""
        self.ema = None
        if self.config.train.ema_decay:
            self.ema = ema_lib.ExponentialMovingAverage(
                ema_lib.ema_variables(self.model), decay=self.config.train.ema_decay
            )

    def _build_loop_variables(self):
        """The step counter and the train loop's per-call sums."""
        self.global_step = _loop_variable('global_step', 0, tf.int64)
        self._loss_sum = _loop_variable('loss_sum', 0.0)
        # Gradient norm over a compiled call: sum and max (train/grad_norm*).
        self._grad_norm_sum = _loop_variable('grad_norm_sum', 0.0)
        self._grad_norm_max = _loop_variable('grad_norm_max', 0.0)
        self._bad_step = _loop_variable('bad_step', -1, tf.int64)

    def _build_checkpoints(self):
        """What a checkpoint holds (model, optimizer, step, EMA, random states) and its
        manager (the chief keeps `train.keep_ckpt_max`, other workers one)."""
        tracked = dict(model=self.model, optimizer=self.optimizer, step=self.global_step)
        if self.ema is not None:
            tracked['ema'] = self.ema
        random_states = model_random_states(self.model)
        if random_states:  # Dropout / stochastic-depth draws continue where they stopped.
            tracked['random'] = random_states
        self._tracked = tracked
        self.checkpoint = tf.train.Checkpoint(**tracked)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint,
            self._write_dir(),
            max_to_keep=self.config.train.keep_ckpt_max if self.is_chief else 1,
            step_counter=self.global_step,
        )

    # -- set-up helpers -------------------------------------------------------------------

    def _write_dir(self):
        """Chief writes into model_dir; other multi-worker workers into throw-away dirs."""
        if self.is_chief:
            return self.model_dir
        task_type, task_index = distribute.task_info()
        return os.path.join(self.model_dir, '.worker_tmp', f'{task_type}_{task_index}')

    def _summary_writer(self, name):
        if name not in self._summary:
            self._summary[name] = tf.summary.create_file_writer(
                os.path.join(self._write_dir(), name)
            )
        return self._summary[name]

    def _image_dtype(self):
        return tf.bfloat16 if self.precision == 'mixed_bfloat16' else tf.float32

    def restore(self):
        """Restores the newest checkpoint of model_dir that restores; True if there was one.

        A checkpoint that fails to restore (a truncated or unreadable file, as a disk fault
        leaves) is skipped for the next older one, with a warning saying which and why; the
        chief renames its files to `<name>.corrupt` (kept, not deleted) and rewrites the
        checkpoint list without it, so the next save and restart go on from the one restored.

        Raises:
            TrainingError: checkpoints exist but none restores (names each with its error).
        """
        state = tf.train.get_checkpoint_state(self.model_dir)
        latest = tf.train.latest_checkpoint(self.model_dir)
        if not latest:
            return False
        candidates = list(state.all_model_checkpoint_paths) if state else []
        candidates = [latest] + [p for p in reversed(candidates) if p != latest]
        failed = []
        for path in candidates:
            try:
                self._restore_from(path)
            except (tf.errors.OpError, ValueError, AssertionError, IndexError, OSError) as e:
                reason = f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
                logging.warning('Checkpoint %s does not restore (%s).', path, reason)
                failed.append((path, reason))
                continue
            if failed:
                logging.warning(
                    'Resumed from %s, the newest checkpoint that restores, instead of %s.',
                    path,
                    ', '.join(p for p, _ in failed),
                )
                self._set_aside(failed, [p for p in candidates if p not in dict(failed)])
            logging.info('Restored %s at step %d.', path, int(self.global_step.numpy()))
            return True
        raise TrainingError(
            'No checkpoint in {} restores: {}. Move them aside to train from the start.'.format(
                self.model_dir, '; '.join(f'{os.path.basename(p)} ({r})' for p, r in failed)
            )
        )

    def _restore_from(self, path):
        checkpoint = self.checkpoint
        saved = {name.split('/')[0] for name, _ in tf.train.list_variables(path)}
        if 'random' in self._tracked and 'random' not in saved:
            logging.warning(
                '%s holds no random-generator state (written by an older version): '
                'dropout and stochastic-depth masks restart from their first draw, '
                'so this run does not replay an uninterrupted one exactly.',
                path,
            )
            checkpoint = tf.train.Checkpoint(
                **{key: value for key, value in self._tracked.items() if key != 'random'}
            )
        checkpoint.restore(path).assert_existing_objects_matched().expect_partial()

    def _set_aside(self, failed, remaining):
        """Renames the files of the checkpoints in `failed` to *.corrupt; `remaining` (newest
        first) becomes the checkpoint list. Chief only: other workers only read model_dir."""
        if not self.is_chief:
            return
        for path, _ in failed:
            for name in tf.io.gfile.glob(path + '.*'):
                if not name.endswith('.corrupt'):
                    tf.io.gfile.rename(name, name + '.corrupt', overwrite=True)
                    logging.warning('Set aside %s as %s.', name, name + '.corrupt')
        state = tf.train.get_checkpoint_state(self.model_dir)
        times = dict(zip(state.all_model_checkpoint_paths, state.all_model_checkpoint_timestamps))
        kept = [p for p in state.all_model_checkpoint_paths if p in remaining]
        # Relative names, as the manager writes them; the timestamps let it delete them later.
        tf.compat.v1.train.update_checkpoint_state(
            self.model_dir,
            os.path.basename(remaining[0]),
            all_model_checkpoint_paths=[os.path.basename(p) for p in kept],
            all_model_checkpoint_timestamps=[times[p] for p in kept if p in times] or None,
            last_preserved_timestamp=state.last_preserved_timestamp,
        )
        # A fresh manager reads that list: its next save neither lists nor deletes the others.
        self.manager = tf.train.CheckpointManager(
            self.checkpoint,
            self._write_dir(),
            max_to_keep=self.config.train.keep_ckpt_max,
            step_counter=self.global_step,
        )

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
        loss, grad_norm = self.task.train_step(
            images,
            labels,
            self.model,
            self.optimizer,
            num_replicas=self.num_replicas,
            grad_norm=True,
        )
        if self.ema is not None:
            self.ema.apply(self.global_step + 1)
        return loss, grad_norm

    def _make_train_loop(self):
        """A multi-step train function; with XLA, its step is compiled (one per stage).

        Without XLA one instance serves the whole run (see `_stage_train_loop`).
        """
        strategy = self.strategy
        step_fn = self._step_fn
        if self.jit_compile and not self.runtime.is_tpu:
            # The loop pulls from the iterator (not compilable); the step is compiled.
            step_fn = tf.function(self._step_fn, jit_compile=True)

        @tf.function
        def train_loop(iterator, num_steps):
            self.trace_counts['train'] += 1  # Runs only while tracing.
            for _ in tf.range(num_steps):
                images, labels = next(iterator)
                per_replica_loss, per_replica_norm = strategy.run(step_fn, args=(images, labels))
                loss = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica_loss, axis=None)
                norm = strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica_norm, axis=None)
                self.global_step.assign_add(1)
                self._loss_sum.assign_add(loss)
                self._grad_norm_sum.assign_add(norm)
                self._grad_norm_max.assign(tf.maximum(self._grad_norm_max, norm))
                if tf.logical_and(tf.logical_not(tf.math.is_finite(loss)), self._bad_step < 0):
                    self._bad_step.assign(self.global_step)

        return train_loop

    def _stage_train_loop(self):
        """The run-wide loop without XLA; a fresh one per stage with XLA (static shapes)."""
        if self.jit_compile:
            return self._make_train_loop()
        if self._train_loop is None:
            self._train_loop = self._make_train_loop()
        return self._train_loop

    # -- data -------------------------------------------------------------------------------

    def _train_dataset(self, stage, step):
        """The stage's distributed pipeline from `step`: exactly the batches it still needs.

        Each step takes one batch per replica, so an input pipeline feeding `r` replicas
        passes over `r` batches per step already trained (seeded runs: the same sequence of
        batches in every run; unseeded, a resumed stage draws new ones) and ends after `r`
        batches per remaining step. Ending there matters: an endless pipeline keeps decoding
        ahead, and deleting its iterator at the stage end waits for that work.
        """
        skip_steps = 0
        if step > stage.start_step and self.config.train.seed is not None:
            skip_steps = step - stage.start_step
        remaining = stage.end_step - step

        def dataset_fn(input_context):
            per_step = max(
                1, input_context.num_replicas_in_sync // input_context.num_input_pipelines
            )
            return self.task.build_train_dataset(
                stage,
                input_context=input_context,
                image_dtype=self._image_dtype(),
                skip_batches=skip_steps * per_step,
                num_batches=remaining * per_step,
                relax_shapes=not self.jit_compile,
            )

        return self._distribute(dataset_fn)

    def _distribute(self, dataset_fn):
        """The strategy's dataset from `dataset_fn(input_context)`.

        On one CPU device: the plain `tf.data` pipeline, with tf.data's autotuner off. A
        progressive run deletes a train iterator at every stage end (and an eval iterator per
        evaluation), and deleting an autotuned iterator can wait, idle, for the autotuner's
        thread: `RootDataset::Iterator::~Iterator` joins `Model::OptimizeLoop`, whose timed
        sleep doubles up to 60 s as the pipeline runs and is often not cut short (TF 2.21;
        a third of the deletions after 3 s of life waited the sleep out, 0-60 s a stage in
        progressive runs; docs/progressive.md). A distributed dataset adds an autotuned
        per-device pipeline of its own, so on a CPU it is skipped: its replica is the host,
        and `strategy.run` takes the plain batches. The input pipelines there run at 10-20x
        the train step's images/s, so the autotuner has nothing to win. GPUs and TPUs keep
        the distributed, autotuned pipeline; a stage's iterator is then released in the
        background (`_run_stage`).
        """
        if self._plain_input:
            dataset = dataset_fn(tf.distribute.InputContext())
            options = tf.data.Options()
            options.autotune.enabled = False
            return dataset.with_options(options)
        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def _eval_dataset(self, image_size=None):
        config = self.config

        def dataset_fn(input_context):
            return self.task.build_eval_dataset(
                image_size=image_size,
                input_context=input_context,
                image_dtype=self._image_dtype(),
                drop_remainder=self.runtime.is_tpu,
            )

        if config.eval.batch_size % self.num_replicas:
            raise ValueError(
                f'eval.batch_size ({int(config.eval.batch_size)}) must be divisible by the '
                f'number of replicas ({int(self.num_replicas)}).'
            )
        return self._distribute(dataset_fn)

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
        self._train_start = time.time()
        check_model_dir(self.model_dir, self.config)
        resumed = self.restore()
        if not resumed:
            self._init_from_pretrained()
        self._save_config()
        logging.info(
            'Progressive-learning plan (%s mode, %d steps of %d images, %.1f steps per epoch):\n%s',
            self.plan.mode,
            self.total_steps,
            self.global_batch,
            self.steps_per_epoch,
            self.plan.format_table(),
        )
        self._write_text_summary()
        previous_handler = None
        with contextlib.suppress(ValueError):  # ValueError: not in the main thread.
            previous_handler = signal.signal(signal.SIGTERM, self._request_stop)
        result = None
        if evaluate_each_stage and len(self.plan.stages) > 1 and self._plain_input:
            # Host memory only: on an accelerator the kept batches would hold device memory
            # through the training of the later stages.
            self._kept_eval = {}
        try:
            step = int(self.global_step.numpy())
            stages = list(self.plan.stages)
            for index, stage in enumerate(stages):
                if step >= stage.end_step:
                    continue
                following = stages[index + 1] if index + 1 < len(stages) else None
                self._run_stage(stage, step, following)
                step = int(self.global_step.numpy())
                if self._stop_requested:
                    logging.warning(
                        'Stopped at step %d on request; the run resumes from here.', step
                    )
                    return None
                if evaluate_each_stage:
                    result = self._evaluate_stage_end(stage)
            if evaluate_each_stage and result is None:  # The run had already finished.
                result = self.evaluate()
        finally:
            self._kept_eval = None
            self._discard_prepared()
            self.close_wait_seconds = self._join_closers()
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
        if result is not None:
            self._log_final(result)
        return result

    def _evaluate_stage_end(self, stage):
        """Evaluates at the final eval size and at the stage's own train size, with the EMA
        and (when an EMA is kept) the raw weights, and logs one line that shows a collapse.

        Early stages train on small images and score low at the (large) final size: the
        train-test resolution gap. The number at their own size shows how well they learned.
        Raw weights far below the EMA, a gradient-norm maximum far above its mean, or a top-1
        that falls from one stage end to the next are the signs of an unstable run.

        Returns the EMA (else raw) result at the final size, with `at_train_size` and, when an
        EMA is kept, `raw` (itself with `at_train_size`) attached.
        """
        sizes = [int(self.config.eval.image_size)]
        if stage.image_size != sizes[0]:
            sizes.append(stage.image_size)
        weights = [True, False] if self.ema is not None else [False]
        results = {}
        # The reported result (EMA at the final size) last: it writes eval_results.json.
        for size in reversed(sizes):
            order = list(reversed(weights))
            for use_ema, r in zip(order, self._evaluate_weights(size, order)):
                results[use_ema, size] = r
        result = results[weights[0], sizes[0]]
        if len(sizes) > 1:
            result['at_train_size'] = results[weights[0], sizes[1]]
        if self.ema is not None:
            result['raw'] = dict(results[False, sizes[0]])
            if len(sizes) > 1:
                result['raw']['at_train_size'] = results[False, sizes[1]]
        entries = [h for h in self.history if h['stage'] == stage.index]
        stats = dict(
            loss=float(np.mean([h['loss'] for h in entries])) if entries else float('nan'),
            grad_norm=float(np.mean([h['grad_norm'] for h in entries])) if entries else 0.0,
            grad_norm_max=max((h['grad_norm_max'] for h in entries), default=0.0),
        )
        updates = [h['update_norm'] for h in entries if h.get('update_norm') is not None]
        stats['update_norm'] = float(np.mean(updates)) if updates else None
        result['stage_stats'] = stats
        result['stage'] = stage.index
        result['eval_seconds'] = sum(r['seconds'] for r in results.values())
        # Since this train() call started, this evaluation included (a resumed run counts
        # from its resume).
        result['elapsed_seconds'] = time.time() - self._train_start
        self.stage_results.append(result)
        top1 = ', '.join(
            '{} {:.4f} at {} px'.format(
                'EMA' if use_ema else 'raw', results[use_ema, size]['top_1'], size
            )
            for use_ema in weights
            for size in sizes
        )
        logging.info(
            'Stage %d/%d ended at step %d (%d px): top-1 %s; train loss %.4f, gradient norm '
            '%.3g (max %.3g)%s.',
            stage.index + 1,
            len(self.plan.stages),
            int(self.global_step.numpy()),
            stage.image_size,
            top1,
            stats['loss'],
            stats['grad_norm'],
            stats['grad_norm_max'],
            ''
            if stats['update_norm'] is None
            else ', relative update per step {:.3g}'.format(stats['update_norm']),
        )
        with self._summary_writer('stage_end').as_default(step=int(self.global_step.numpy())):
            for (use_ema, size), r in results.items():
                name = '{}_{}'.format(
                    'ema' if use_ema else 'raw', 'final_size' if size == sizes[0] else 'stage_size'
                )
                tf.summary.scalar('top_1_' + name, r['top_1'])
            for key, value in stats.items():
                if value is not None:
                    tf.summary.scalar(key, value)
        self._summary_writer('stage_end').flush()
        return result

    @staticmethod
    def _log_final(result):
        message = (
            f'Final evaluation at step {int(result["step"])} '
            f'({"EMA" if result["ema"] else "raw"} weights): top-1 {result["top_1"]:.4f}, '
            f'top-5 {result["top_5"]:.4f} at the eval size {int(result["image_size"])} px '
            '(the number to report)'
        )
        other = result.get('at_train_size')
        if other:
            message += (
                f'; top-1 {other["top_1"]:.4f}, top-5 {other["top_5"]:.4f} at the last '
                f"stage's train size {int(other['image_size'])} px"
            )
        logging.info('%s.', message)

    def _run_stage(self, stage, step, following=None):
        """Trains `stage` from `step` to its end (or a stop request) and checkpoints.

        When the stage ends and a `following` stage comes, that stage's input pipeline is
        built in the background during the stage-end evaluations; see `_prepare_pipeline`.
        """
        config = self.config.train
        setup_start = time.time()
        self.task.set_stage(self.model, stage)
        self.task.log_stage(stage, len(self.plan.stages), step)
        iterator = self._take_prepared(stage, step)
        if iterator is None:
            iterator = iter(self._train_dataset(stage, step))
        setup_seconds = time.time() - setup_start
        train_loop = self._stage_train_loop()
        trace_seconds = self._trace(
            train_loop, iterator, min(config.steps_per_loop, stage.end_step - step)
        )
        first_call = True
        progbar = keras.utils.Progbar(
            stage.end_step - stage.start_step,
            unit_name='step',
            stateful_metrics=['loss', 'lr', 'img/s', 'stage'],
        )
        progbar.update(step - stage.start_step)
        last_save = step
        writer = self._summary_writer('train')
        while step < stage.end_step and not self._stop_agreed():
            num = min(config.steps_per_loop, stage.end_step - step)
            self._loss_sum.assign(0.0)
            self._grad_norm_sum.assign(0.0)
            self._grad_norm_max.assign(0.0)
            start = time.time()
            train_loop(iterator, tf.constant(num, tf.int32))
            loss = float(self._loss_sum.numpy()) / num
            grad_norm = float(self._grad_norm_sum.numpy()) / num
            grad_norm_max = float(self._grad_norm_max.numpy())
            update_norm = self._relative_update_norm()
            elapsed = time.time() - start
            if first_call:
                first_call = False
                self._record_stage_timing(stage, step, trace_seconds, elapsed, num)
                self.stage_timings[-1]['setup_seconds'] = setup_seconds
            bad = int(self._bad_step.numpy())
            if bad >= 0 or not math.isfinite(loss):
                raise TrainingError(
                    f'Non-finite loss at step {bad if bad >= 0 else step + num}; stopped. The '
                    f'last good checkpoint in {self.model_dir} is kept '
                    f'(latest: {self.manager.latest_checkpoint}).'
                )
            step = int(self.global_step.numpy())
            lr = float(self.schedule(step))
            images_per_sec = num * self.global_batch / max(elapsed, 1e-9)
            self.history.append(
                dict(
                    step=step,
                    stage=stage.index,
                    loss=loss,
                    lr=lr,
                    grad_norm=grad_norm,
                    grad_norm_max=grad_norm_max,
                    update_norm=update_norm,
                    image_size=stage.image_size,
                    images_per_sec=images_per_sec,
                    seconds=elapsed,
                )
            )
            progbar.update(
                step - stage.start_step,
                values=[
                    ('loss', loss),
                    ('lr', lr),
                    ('img/s', images_per_sec),
                    ('stage', stage.index + 1),
                ],
            )
            with writer.as_default(step=step):
                tf.summary.scalar('loss', loss)
                tf.summary.scalar('learning_rate', lr)
                tf.summary.scalar('grad_norm', grad_norm)
                tf.summary.scalar('grad_norm_max', grad_norm_max)
                if update_norm is not None:
                    tf.summary.scalar('update_norm', update_norm)
                tf.summary.scalar('images_per_second', images_per_sec)
                tf.summary.scalar('image_size', stage.image_size)
                tf.summary.scalar('stage', stage.index)
                tf.summary.scalar('dropout_rate', stage.dropout_rate)
                tf.summary.scalar('randaug_magnitude', stage.ram)
            if step - last_save >= config.ckpt_interval:
                self.manager.save(checkpoint_number=step)
                last_save = step
        start = time.time()
        self.manager.save(checkpoint_number=step)
        writer.flush()
        save_seconds = time.time() - start
        if following is not None and step >= stage.end_step and not self._stop_requested:
            # After the checkpoint: its writing is mostly Python as well, and the two slow
            # each other down (the 4 checkpoints of a 10-epoch run took 4.7 s instead of 2.6).
            self._prepare_pipeline(following, step)
        skipped = data.skipped_images()
        if skipped:
            logging.warning('%d corrupt or undecodable images skipped so far.', skipped)
        start = time.time()
        if step >= stage.end_step:
            # The pipeline holds exactly the stage's batches: reading its end first lets the
            # iterator go sooner.
            with contextlib.suppress(tf.errors.OpError, NotImplementedError, ValueError):
                iterator.get_next_as_optional()
        # Deleting an autotuned iterator can wait idle for tf.data's autotuner thread, up to
        # 60 s (`_distribute`; not on one CPU device, whose pipelines run without it). A
        # background thread drops the last reference, so such a wait overlaps the evaluation
        # and the next stage; train() joins it before it returns.
        holder = [iterator]
        del iterator
        closer = threading.Thread(
            target=holder.clear, name=f'close-pipeline-{stage.index + 1}', daemon=True
        )
        closer.start()
        self._closers.append(closer)
        close_seconds = time.time() - start
        if self.stage_timings and self.stage_timings[-1]['stage'] == stage.index:
            # Around the steps: pipeline start, the stage-end checkpoint, the pipeline's end.
            self.stage_timings[-1].update(save_seconds=save_seconds, close_seconds=close_seconds)

    def _prepare_pipeline(self, stage, step):
        """Starts building `stage`'s train pipeline from `step` in a background thread.

        Building a stage's pipeline traces its augmentation functions (RandAugment: about a
        second on a CPU) and starting it optimizes its graph; done here, that work overlaps the
        stage-end evaluations (which run in TensorFlow's threads) instead of adding to them.
        Only with plain pipelines (one CPU device, `_distribute`): a distributed dataset is
        made in the main thread. The next `_run_stage` takes the iterator (`_take_prepared`);
        the data are those it would have built itself.
        """
        if not self._plain_input:
            return
        box = dict(stage=stage.index, step=step)

        def build():
            try:
                box['iterator'] = iter(self._train_dataset(stage, step))
            except Exception as error:  # Raised in the main thread by _take_prepared.
                box['error'] = error

        thread = threading.Thread(target=build, name=f'prepare-pipeline-{stage.index + 1}')
        thread.start()
        box['thread'] = thread
        self._prepared = box

    def _take_prepared(self, stage, step):
        """The iterator `_prepare_pipeline` built for (`stage`, `step`), else None."""
        box, self._prepared = self._prepared, None
        if box is None:
            return None
        box['thread'].join()
        if (box['stage'], box['step']) != (stage.index, step):
            return None
        if 'error' in box:
            raise box['error']
        return box['iterator']

    def _discard_prepared(self):
        """Waits for and drops a prepared pipeline that no stage took (a stop, an error)."""
        box, self._prepared = self._prepared, None
        if box is not None:
            box['thread'].join()

    def _join_closers(self):
        """Waits for the stage pipelines still winding down (see `_run_stage`); returns the
        seconds waited."""
        start = time.time()
        while self._closers:
            self._closers.pop().join()
        waited = time.time() - start
        if waited > 1.0:
            logging.info('Waited %.1f s for the last input pipeline to close.', waited)
        return waited

    def _relative_update_norm(self):
        """`||last step's update|| / ||weights||` over all trainable weights, or None.

        Read from the momentum slots of the recipe's `RMSPropTF1` (its update is `w -= mom`),
        so it costs no copy of the weights; None for other optimizers.
        """
        optimizer = getattr(self.optimizer, 'inner_optimizer', self.optimizer)
        if not isinstance(optimizer, optimizers.RMSPropTF1):
            return None
        if self._update_norm_fn is None:
            weights = list(self.model.trainable_variables)
            slots = list(optimizer._mom_slots)

            @tf.function
            def update_norm():
                moved = tf.linalg.global_norm([tf.convert_to_tensor(m) for m in slots])
                size = tf.linalg.global_norm([tf.convert_to_tensor(w) for w in weights])
                return moved / tf.maximum(size, 1e-12)

            self._update_norm_fn = update_norm
        return float(self._update_norm_fn().numpy())

    def _trace(self, train_loop, iterator, num_steps):
        """Traces `train_loop` for this stage's iterator (a cache hit when nothing changed).

        Returns the seconds spent; XLA compilation happens later, at the first call.
        """
        concrete = getattr(train_loop, 'get_concrete_function', None)
        if concrete is None:  # A wrapped loop (tests); it traces at its first call.
            return 0.0
        start = time.time()
        concrete(iterator, tf.constant(num_steps, tf.int32))
        return time.time() - start

    def _record_stage_timing(self, stage, step, trace_seconds, first_call_seconds, num_steps):
        timing = dict(
            stage=stage.index,
            image_size=stage.image_size,
            step=step,
            trace_seconds=trace_seconds,
            first_call_seconds=first_call_seconds,
            traces=self.trace_counts['train'],
            jit_compile=self.jit_compile,
        )
        self.stage_timings.append(timing)
        logging.info(
            'Stage %d: train step traced in %.2f s (%d trace(s) so far, %s); first '
            'call of %d step(s) %.2f s%s.',
            stage.index + 1,
            trace_seconds,
            timing['traces'],
            'one per stage: XLA' if self.jit_compile else 'one for all stages',
            num_steps,
            first_call_seconds,
            ' (includes the XLA compile)' if self.jit_compile else '',
        )
        with self._summary_writer('train').as_default(step=step):
            tf.summary.scalar('trace_seconds', trace_seconds)
            tf.summary.scalar('first_call_seconds', first_call_seconds)

    def _write_text_summary(self):
        with self._summary_writer('train').as_default(step=int(self.global_step.numpy())):
            tf.summary.text('config', f'```\n{self.config.to_yaml()}\n```')
            tf.summary.text('stage_plan', f'```\n{self.plan.format_table()}\n```')

    # -- evaluation -------------------------------------------------------------------------

    def _make_eval_step(self):
        """The eval step; without XLA/TPU one trace serves every size and batch."""
        model = self.model
        task = self.task
        signature = None
        if not self.runtime.is_tpu:
            signature = [
                tf.TensorSpec([None, None, None, None], self._image_dtype()),
                tf.TensorSpec([None, None], tf.float32),
            ]

        @tf.function(input_signature=signature)
        def eval_step(images, labels):
            self.trace_counts['eval'] += 1  # Runs only while tracing.
            return task.validation_step(images, labels, model)

        return eval_step

    def evaluate(self, use_ema=True, image_size=None):
        """Top-1 / top-5 on the eval split (EMA weights when kept); writes summaries.

        Args:
            use_ema: evaluate the moving averages when the run keeps them.
            image_size: evaluate at this size instead of `eval.image_size` (e.g. a stage's
                train size). Its results go to the `eval/*_at_train_size` summaries and are
                not written to eval_results.json.
        """
        return self._evaluate_weights(image_size, [use_ema])[0]

    def _eval_fits_in_memory(self, image_size):
        """Whether the eval split's batches at `image_size` fit in `EVAL_KEEP_BYTES`."""
        config = self.config.eval
        try:
            num_images = int(self.task.info.get_split(config.split).num_images)
        except (AttributeError, KeyError, ValueError, TypeError):
            return False
        if config.steps:
            num_images = min(num_images, int(config.steps) * int(config.batch_size))
        itemsize = tf.as_dtype(self._image_dtype()).size
        return 0 < num_images * image_size * image_size * 3 * itemsize <= EVAL_KEEP_BYTES

    def _evaluate_weights(self, image_size, weight_sets):
        """Evaluates each weight set of `weight_sets` (`use_ema` flags) at `image_size`.

        Two or more sets share one pass of the input pipeline when the split's batches fit in
        `EVAL_KEEP_BYTES` (a stage end evaluates the raw and the EMA weights at each size):
        the batches are kept after the first set and reused. In a train() with stage-end
        evaluations on one CPU device, the batches at the final eval size (the same images at
        every stage end) are also kept from one stage end to the next. Returns a result per
        set.
        """
        final_size = int(self.config.eval.image_size)
        image_size = int(image_size or final_size)
        if self._eval_step is None:
            self._eval_step = self._make_eval_step()
        eval_step = self._eval_step
        across = self._kept_eval is not None and image_size == final_size
        keep = (len(weight_sets) > 1 or across) and self._eval_fits_in_memory(image_size)
        kept = self._kept_eval.get(image_size) if (keep and across) else None
        filled = kept is not None
        if not filled:
            kept = []
        results = []
        for index, use_ema in enumerate(weight_sets):
            start = time.time()
            reuse = keep and (filled or index > 0)
            batches = kept if reuse else self._eval_dataset(image_size)
            totals = np.zeros(3)
            context = self.ema.average_weights() if (use_ema and self.ema is not None) else None
            if context is not None:
                context.__enter__()
            try:
                for i, (images, labels) in enumerate(batches):
                    if self.config.eval.steps and i >= self.config.eval.steps:
                        break
                    if keep and not reuse:
                        kept.append((images, labels))
                    per_replica = self.strategy.run(eval_step, args=(images, labels))
                    totals += self.strategy.reduce(
                        tf.distribute.ReduceOp.SUM, per_replica, axis=None
                    ).numpy()
            finally:
                if context is not None:
                    context.__exit__(None, None, None)
            results.append(self._eval_result(totals, use_ema, image_size, time.time() - start))
        if keep and across and not filled:
            self._kept_eval[image_size] = kept
        return results

    def _eval_result(self, totals, use_ema, image_size, seconds):
        """Logs and writes (summaries, eval_results.json) one evaluation; returns its dict."""
        at_final = image_size == int(self.config.eval.image_size)
        count = max(totals[2], 1.0)
        step = int(self.global_step.numpy())
        result = dict(
            step=step,
            top_1=totals[0] / count,
            top_5=totals[1] / count,
            num_images=int(totals[2]),
            ema=bool(use_ema and self.ema is not None),
            image_size=image_size,
            seconds=seconds,
        )
        logging.info(
            'Eval at step %d on %d images at %d px (%s; %s weights): top-1 %.4f, '
            'top-5 %.4f (%.1f s).',
            step,
            result['num_images'],
            image_size,
            'the final eval size' if at_final else 'a train size',
            'EMA' if result['ema'] else 'raw',
            result['top_1'],
            result['top_5'],
            result['seconds'],
        )
        suffix = ('' if at_final else '_at_train_size') + (
            '_raw' if (self.ema is not None and not use_ema) else ''
        )
        with self._summary_writer('eval').as_default(step=step):
            tf.summary.scalar('top_1' + suffix, result['top_1'])
            tf.summary.scalar('top_5' + suffix, result['top_5'])
            if not at_final:
                tf.summary.scalar('image_size' + suffix, image_size)
        self._summary_writer('eval').flush()
        if self.is_chief and at_final and result['ema'] == (self.ema is not None):
            with tf.io.gfile.GFile(os.path.join(self.model_dir, 'eval_results.json'), 'w') as f:
                json.dump(result, f, indent=2)
        return result

    def evaluate_checkpoints(self):
        """`--mode=eval`: evaluates each new checkpoint until the final step's."""
        result = None
        for path in tf.train.checkpoints_iterator(self.model_dir, timeout=self.config.eval.timeout):
            self.checkpoint.restore(path).expect_partial()
            result = self.evaluate()
            if result['step'] >= self.total_steps:
                break
        if result is None:
            raise TrainingError(
                f'No checkpoint appeared in {self.model_dir} within '
                f'{int(self.config.eval.timeout)} s.'
            )
        return result
