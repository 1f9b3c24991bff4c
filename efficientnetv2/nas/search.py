"""Trials, reward, the claim-file work queue, resume and result tables.

Layout of `output_dir` (local or any `tf.io.gfile` path such as gs://):

    settings.json                the search's settings (a resumed search must match them)
    trials/000012/claim          who runs trial 12 (JSON: owner, host, pid, time)
    trials/000012/heartbeat      rewritten while the trial runs (stale-claim detection)
    trials/000012/arch.json      the architecture, written at claim time
    trials/000012/model/         the trainer's model_dir (checkpoints removed after the trial)
    trials/000012/result.json    written last: status 'ok' or 'failed', metrics, error
    results.csv, results.json    every finished trial, rebuilt after each trial
    best.json                    the top trials by reward, with their block strings
    tensorboard/                 reward, accuracy, step-time ratio, params by trial index

A trial is finished when its result.json exists; a resumed search skips those (failed ones
too, so a deterministic failure does not loop; `run(..., retry_failed=True)` runs them again,
keeping the last failure as trials/NNNNNN/failed-result.json). Claims make trials independent
work items: any number of processes on any number of machines run `run()` on the same
output_dir and each trial runs once (see `TrialStore.try_claim` for the race handling).

Reward (paper): `A * S**w * P**v` with top-1 accuracy A (a fraction), S the normalised
train-step time and P the trainable parameters in millions (a unit change multiplies every
reward by the same constant, so the ranking does not depend on it).

Step-time normalisation: S = median train-step time of the trial's model / median train-step
time of the backbone, both measured in the same trial, on the same device, batch and image size,
in alternating rounds (backbone step, trial step, backbone step, trial step, ...; each warmed up
first). Both medians thus cover the same stretch of time and the same machine load, and a load
that changes between trials (other jobs on a shared host) cancels in S instead of biasing it.
Each record keeps its own `backbone_step_time`. The backbone's model and compiled step are built
once per process and reused (not on TPU, whose system each trial re-initialises).
"""

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import socket
import statistics
import threading
import time
import traceback
import uuid

from absl import logging
import numpy as np

from efficientnetv2.nas import space as space_lib

SEARCHES = ('random', 'evolution')
# Settings that define which trials a search runs; a resume with other values is refused.
IDENTITY_KEYS = (
    'backbone',
    'dataset_cfg',
    'search',
    'seed',
    'epochs',
    'image_size',
    'hparam_str',
    'repeat_delta',
    'reward_w',
    'reward_v',
    'space',
)
CSV_COLUMNS = (
    'trial',
    'status',
    'reward',
    'accuracy',
    'step_time',
    'backbone_step_time',
    'step_time_ratio',
    'params',
    'seconds',
    'arch',
    'blocks',
    'owner',
    'error',
)


@dataclasses.dataclass
class Settings:
    """One search. `hparam_str` is applied to every trial's config (e.g. the batch size)."""

    output_dir: str
    backbone: str = 'efficientnet-b0'
    dataset_cfg: str = 'digits'
    data_dir: str = None
    trials: int = 1000
    search: str = 'random'
    epochs: float = 10.0
    image_size: int = 128
    hparam_str: str = ''
    reward_w: float = -0.07
    reward_v: float = -0.05
    seed: int = 0
    repeat_delta: int = 1
    population: int = 20  # Evolution: the most recent finished trials that breed.
    tournament: int = 5  # Evolution: sample size; its best trial is the parent.
    timing_steps: int = 10  # Timed train steps (median), after `timing_warmup`.
    timing_warmup: int = 2
    timing_batch: int = 0  # 0: the trial's train.batch_size.
    claim_timeout: float = 3600.0  # A claim whose heartbeat is older is taken over.
    settle_s: float = 2.0  # Non-local claims: wait before checking who won.
    keep_checkpoints: bool = False
    top_k: int = 5
    # What is searched, in words, when it is not the architecture space around the backbone
    # (e.g. efficientnetv2.scaling's coefficient grid); part of the identity a resume checks.
    space: str = ''

    def validate(self):
        if self.search not in SEARCHES:
            raise ValueError(f'search must be one of {SEARCHES}. Received: {self.search!r}')
        for name in ('trials', 'image_size', 'timing_steps', 'population', 'tournament'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be >= 1. Received: {getattr(self, name)!r}')
        if not self.epochs > 0:
            raise ValueError(f'epochs must be > 0. Received: {self.epochs!r}')
        if self.image_size <= 16:
            # train.image_size <= 16 means a fraction (in 16ths) of the eval size, so 16 would
            # train at 16 x image_size px and evaluate at image_size px.
            raise ValueError(
                'image_size must be > 16 (a train.image_size <= 16 is read as a fraction of '
                f'the eval size). Received: {self.image_size!r}'
            )
        return self

    def identity(self):
        return {k: getattr(self, k) for k in IDENTITY_KEYS}


def reward(accuracy, step_time_ratio, params_millions, w=-0.07, v=-0.05):
    """The paper's multi-objective reward `A * S**w * P**v`."""
    if not (step_time_ratio > 0 and params_millions > 0):
        raise ValueError(
            'step time ratio and parameters must be > 0. Received: '
            f'{step_time_ratio!r}, {params_millions!r}'
        )
    return float(accuracy) * float(step_time_ratio) ** w * float(params_millions) ** v


# -- measuring ----------------------------------------------------------------------------


def make_train_step(model, image_size, batch_size, strategy=None, num_classes=None):
    """A callable running one synchronised training step of `model`; returns the loss.

    The step is forward in training mode, softmax cross-entropy, gradients and an SGD update,
    run by `strategy` (default: the current one) on one fixed random batch, so the input
    pipeline is not measured. The call returns after the step finished (its loss is read).
    """
    import keras
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    num_classes = num_classes or int(model.outputs[0].shape[-1])
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (batch_size, image_size, image_size, 3)).astype('float32')
    labels = np.eye(num_classes, dtype='float32')[rng.integers(num_classes, size=batch_size)]
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    with strategy.scope():
        optimizer = keras.optimizers.SGD(1e-3)
        optimizer.build(model.trainable_variables)

    def step_fn(x, y):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(x, training=True), tf.float32)
            loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(y, logits))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    @tf.function
    def step(it):
        x, y = next(it)
        return strategy.reduce('SUM', strategy.run(step_fn, args=(x, y)), axis=None)

    def run_step():
        return float(step(iterator).numpy())

    return run_step


def interleaved_step_times(step_fns, steps=10, warmup=2, timer=time.perf_counter):
    """Median seconds per step of each callable in `step_fns`, timed in alternating rounds.

    Every callable first runs `warmup` (at least 1) untimed steps (tracing). Then each of
    `steps` rounds times one step of every callable in order (A, B, A, B, ...), so all of them
    see the same machine load over the same stretch of time; a slow-down of the machine moves
    their medians together and cancels in their ratio.
    """
    for fn in step_fns:
        for _ in range(max(1, warmup)):
            fn()
    times = [[] for _ in step_fns]
    for _ in range(steps):
        for fn, out in zip(step_fns, times):
            start = timer()
            fn()
            out.append(timer() - start)
    return [statistics.median(t) for t in times]


def measure_step_time(
    model, image_size, batch_size, steps=10, warmup=2, strategy=None, num_classes=None
):
    """Median seconds of one training step of `model` (warm: tracing and warm-up excluded).

    See `make_train_step` for what a step is; each timed step is synchronised.
    """
    step = make_train_step(model, image_size, batch_size, strategy, num_classes)
    return interleaved_step_times([step], steps, warmup)[0]


def check_trial_config(settings):
    """Builds the config a trial would run (the backbone's blocks) and checks it.

    Catches what would fail every trial alike (an unknown --dataset_cfg or backbone, an
    unknown --hparam_str key or a bad value) before any trial runs or anything is written.

    Raises:
        ValueError: the config's own message (names the key, what it accepts, the value).
    """
    try:
        trial_config(settings, _backbone_blocks(settings.backbone), 0)
    except KeyError as e:  # An unknown key: its message names the closest valid keys.
        raise ValueError(e.args[0] if e.args else str(e)) from None


def trial_config(settings, block_strings, trial_index, overrides=None):
    """The run config of one trial: backbone recipe, dataset, reduced size and length.

    `overrides` (a config mapping; default: `model.blocks` = `block_strings`) is what the
    search space sets for the trial, applied last.
    """
    from efficientnetv2 import experiment

    config = experiment.build_config(
        settings.backbone, settings.dataset_cfg, data_dir=settings.data_dir
    )
    config.override(
        dict(
            train=dict(
                epochs=float(settings.epochs),
                image_size=int(settings.image_size),
                stages=0,
                seed=int(settings.seed) * 100003 + trial_index,
            ),
            eval=dict(image_size=int(settings.image_size)),
        )
    )
    if settings.hparam_str:
        config.override(settings.hparam_str)
    config.override(overrides or dict(model=dict(blocks=list(block_strings))))
    return experiment.validate(config)


class TrialContext:
    """Per-process state shared by the trials of one worker: the backbone's train step.

    The backbone's model and compiled train step are built once per process and reused
    (`backbone_step`), but timed again in every trial, interleaved with the trial's model.
    `timer` is the clock of those timings (tests inject a fake one).
    """

    def __init__(self, settings, space, timer=time.perf_counter):
        self.settings = settings
        self.space = space
        self.backbone_blocks = list(_backbone_blocks(settings.backbone))
        # The `model` hyper-parameters the backbone's step is built with, over the trial's.
        self.backbone_model = dict(blocks=self.backbone_blocks)
        if space is not None and hasattr(space, 'backbone_model'):
            self.backbone_model = dict(space.backbone_model())
        self.timer = timer
        self._backbone_steps = {}

    def backbone_step(self, key, build):
        """The cached train-step callable for `key`, built by `build()` on first use.

        `key` says what the step depends on (strategy devices, batch, size, precision); a key
        of None (TPU: its system is re-initialised by each trial's strategy, which frees what
        an earlier step placed there) builds a fresh step every time.
        """
        if key is None:
            return build()
        if key not in self._backbone_steps:
            self._backbone_steps[key] = build()
        return self._backbone_steps[key]


def _backbone_blocks(backbone):
    from efficientnetv2 import architectures

    return list(architectures.get_variant(backbone).blocks)


def time_against_backbone(context, trial_step, backbone_key, build_backbone_step):
    """(trial, backbone) median step seconds, timed in the same alternating rounds."""
    settings = context.settings
    backbone_step = context.backbone_step(backbone_key, build_backbone_step)
    backbone_seconds, trial_seconds = interleaved_step_times(
        [backbone_step, trial_step], settings.timing_steps, settings.timing_warmup, context.timer
    )
    return trial_seconds, backbone_seconds


def train_trial(trial, settings, context):
    """The real trial: train + evaluate with this project's trainer, time a step, count params.

    The trial's model and the backbone are timed in the same call, in alternating steps
    (`interleaved_step_times`), so the ratio of their medians is not biased by a machine load
    that changes between trials.

    Returns a dict with accuracy, step_time, backbone_step_time, params.
    """
    import keras

    from efficientnetv2 import distribute
    from efficientnetv2 import model as model_lib
    from efficientnetv2 import summary
    from efficientnetv2.train import trainer as trainer_lib

    keras.backend.clear_session()
    config = trial_config(settings, trial['blocks'], trial['trial'], trial.get('overrides'))
    trainer = trainer_lib.Trainer(config, trial['model_dir'])
    result = trainer.train(evaluate_each_stage=True)
    if result is None:  # Stopped on request (SIGTERM): not a result.
        raise InterruptedError('Training stopped on request; the trial resumes next time.')
    batch = settings.timing_batch or int(config.train.batch_size)
    strategy = trainer.strategy
    # The trial's own size when its space sets one (the coefficient grid scales it).
    trial_size = int(trial.get('image_size') or settings.image_size)

    def build(args, image_size):
        with strategy.scope():
            model = model_lib.EfficientNet(**args)
        return model, make_train_step(model, image_size, batch, strategy)

    model, trial_step = build(config.model.as_dict(), trial_size)
    backbone_args = dict(config.model.as_dict(), **context.backbone_model)
    key = None
    if not distribute.is_tpu_strategy(strategy):
        key = (
            type(strategy).__name__,
            tuple(strategy.extended.worker_devices),
            batch,
            int(settings.image_size),
            keras.config.dtype_policy().name,
            repr({k: v for k, v in backbone_args.items() if k != 'blocks'}),
        )
    step_time, backbone_step_time = time_against_backbone(
        context, trial_step, key, lambda: build(backbone_args, int(settings.image_size))[1]
    )
    logging.info(
        'Trial %d: %.4f s per train step (%d px), backbone %s %.4f s (%d px; same rounds, '
        'batch %d).',
        trial['trial'],
        step_time,
        trial_size,
        settings.backbone,
        backbone_step_time,
        settings.image_size,
        batch,
    )
    trainable, _ = summary.count_params(model)
    return dict(
        accuracy=float(result['top_1']),
        step_time=step_time,
        backbone_step_time=backbone_step_time,
        params=int(trainable),
    )


# -- the store ------------------------------------------------------------------------------


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def _is_local(path):
    return '://' not in path


def _write_text(path, text):
    """Writes via a temporary name and a rename, so readers never see half a file."""
    gfile = _gfile()
    tmp = f'{path}.tmp-{uuid.uuid4().hex[:8]}'
    with gfile.GFile(tmp, 'w') as f:
        f.write(text)
    gfile.rename(tmp, path, overwrite=True)


def _read_json(path):
    gfile = _gfile()
    try:
        with gfile.GFile(path, 'r') as f:
            return json.loads(f.read())
    except Exception:  # Missing or being replaced: treated as absent.
        return None


def _pid_alive(pid):
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    return True


class TrialStore:
    """Trial directories, claims and result tables under one output_dir."""

    def __init__(self, output_dir, settings=None):
        self.output_dir = output_dir
        self.settings = settings
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.owner = f'{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}'
        _gfile().makedirs(os.path.join(output_dir, 'trials'))

    def trial_dir(self, index):
        return os.path.join(self.output_dir, 'trials', f'{int(index):06d}')

    def _path(self, index, name):
        return os.path.join(self.trial_dir(index), name)

    def is_finished(self, index):
        return _gfile().exists(self._path(index, 'result.json'))

    def check_settings(self, settings):
        """Writes settings.json, or refuses a resume whose trial-defining settings differ."""
        path = os.path.join(self.output_dir, 'settings.json')
        saved = _read_json(path)
        if saved is not None:
            defaults = Settings(output_dir='').identity()  # Keys older searches lack.
            different = [
                f'{k}: {saved.get(k, defaults[k])!r} saved, {v!r} now'
                for k, v in settings.identity().items()
                if saved.get(k, defaults[k]) != v
            ]
            if different:
                raise ValueError(
                    'output_dir {} holds a search with other settings ({}). Use '
                    'another --output_dir or the same settings.'.format(
                        self.output_dir, '; '.join(different)
                    )
                )
        else:
            _write_text(path, json.dumps(dataclasses.asdict(settings), indent=2))

    def reset_failed(self, trials):
        """Makes the failed trials among the first `trials` claimable again; their indices.

        Each failed `result.json` is kept as `failed-result.json` (the last failure's error)
        and the claim and heartbeat are removed, so the next worker runs the trial again with
        the same architecture (arch.json stays).
        """
        gfile = _gfile()
        reset = []
        for record in self.results():
            index = int(record['trial'])
            if record.get('status') == 'ok' or index >= trials:
                continue
            result = self._path(index, 'result.json')
            gfile.rename(result, self._path(index, 'failed-result.json'), overwrite=True)
            for name in ('claim', 'heartbeat'):
                with contextlib.suppress(Exception):
                    gfile.remove(self._path(index, name))
            reset.append(index)
        return reset

    # Claims.

    def _stale(self, claim, index):
        if claim is None:
            return True
        if (
            claim.get('host') == self.host
            and claim.get('owner') != self.owner
            and not _pid_alive(claim.get('pid'))
        ):
            return True  # Its process on this machine is gone (killed search).
        timeout = self.settings.claim_timeout if self.settings else 3600.0
        if not timeout:
            return False
        gfile = _gfile()
        beat = self._path(index, 'heartbeat')
        path = beat if gfile.exists(beat) else self._path(index, 'claim')
        try:
            mtime = gfile.stat(path).mtime_nsec / 1e9
        except Exception:
            return False
        return time.time() - mtime > timeout

    def try_claim(self, index):
        """Claims trial `index` for this process; True if it is ours to run.

        Local paths: the claim is created with O_CREAT | O_EXCL, atomic on POSIX file systems
        (NFS v3+ included), so exactly one process wins. Other file systems (gs://): the claim
        is written under a unique temporary name and renamed onto `claim` without overwrite;
        the rename's existence check and write are not one atomic step there, so after
        `settle_s` seconds the claim is read back and only the owner it names runs the trial.
        Two processes that both passed the check overwrite each other within that window and
        the last writer wins; a trial runs twice only if a process stalls for longer than
        `settle_s` between its check and its write (then both write the same result files).
        A stale claim (owner process gone on this host, or heartbeat older than claim_timeout)
        is removed, if it is still the same claim, and the race above decides the new owner.
        """
        gfile = _gfile()
        if self.is_finished(index):
            return False
        path = self._path(index, 'claim')
        gfile.makedirs(self.trial_dir(index))
        if gfile.exists(path):
            claim = _read_json(path)
            if not self._stale(claim, index):
                return False
            if _read_json(path) == claim:
                logging.warning(
                    'Trial %d: taking over the stale claim of %s.',
                    index,
                    (claim or {}).get('owner'),
                )
                try:
                    gfile.remove(path)
                except Exception:
                    return False
        content = json.dumps(dict(owner=self.owner, host=self.host, pid=self.pid, time=time.time()))
        if _is_local(path):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, 'w') as f:
                f.write(content)
            return True
        tmp = '{}.{}'.format(path, self.owner.replace(':', '_'))
        with gfile.GFile(tmp, 'w') as f:
            f.write(content)
        try:
            gfile.rename(tmp, path, overwrite=False)
        except Exception:
            gfile.remove(tmp)
            return False
        time.sleep(self.settings.settle_s if self.settings else 2.0)
        return (_read_json(path) or {}).get('owner') == self.owner

    def heartbeat(self, index, interval):
        """A started thread rewriting the trial's heartbeat file; `.set()` the result to stop."""
        stop = threading.Event()
        path = self._path(index, 'heartbeat')

        def beat():
            while True:
                try:
                    _write_text(path, f'{time.time():f}')
                except Exception as e:  # A missed beat only ages the claim.
                    logging.warning('Heartbeat of trial %d failed: %s', index, e)
                if stop.wait(interval):
                    return

        threading.Thread(target=beat, daemon=True).start()
        return stop

    # Architectures and results.

    def read_arch(self, index, space=None):
        items = _read_json(self._path(index, 'arch.json'))
        if items is None:
            return None
        return space.arch_from_json(items) if space is not None else space_lib.arch_from_json(items)

    def write_arch(self, index, arch, space=None):
        items = space.arch_to_json(arch) if space is not None else space_lib.arch_to_json(arch)
        _write_text(self._path(index, 'arch.json'), json.dumps(items))

    def write_result(self, index, record):
        _write_text(self._path(index, 'result.json'), json.dumps(record, indent=2))

    def results(self):
        """Every finished trial's record, by trial index."""
        gfile = _gfile()
        pattern = os.path.join(self.output_dir, 'trials', '*', 'result.json')
        records = [_read_json(p) for p in gfile.glob(pattern)]
        return sorted((r for r in records if r), key=lambda r: r['trial'])

    def write_tables(self, top_k=5):
        records = self.results()
        _write_text(os.path.join(self.output_dir, 'results.json'), json.dumps(records, indent=2))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, CSV_COLUMNS, extrasaction='ignore')
        writer.writeheader()
        for r in records:
            row = dict(r)
            row['blocks'] = ' '.join(r.get('blocks') or [])
            writer.writerow(row)
        _write_text(os.path.join(self.output_dir, 'results.csv'), buffer.getvalue())
        best = best_trials(records, top_k)
        _write_text(os.path.join(self.output_dir, 'best.json'), json.dumps(best, indent=2))
        return records


def best_trials(records, top_k=5):
    ok = [r for r in records if r.get('status') == 'ok' and r.get('reward') is not None]
    return sorted(ok, key=lambda r: (-r['reward'], r['trial']))[:top_k]


# -- proposing architectures --------------------------------------------------------------------


def propose(index, settings, space, store, random_archs):
    """The architecture of trial `index`: random, or a mutation of a tournament winner."""
    if settings.search == 'random':
        return random_archs[index]
    records = [r for r in store.results() if r.get('status') == 'ok']
    if len(records) < min(settings.population, 2) or index < settings.population:
        return random_archs[index]
    # Regularized evolution: the most recently finished `population` trials breed.
    records.sort(key=lambda r: (r.get('finished', 0), r['trial']))
    population = records[-settings.population :]
    rng = np.random.default_rng([int(settings.seed), index, 1])
    picks = rng.choice(
        len(population), size=min(settings.tournament, len(population)), replace=False
    )
    parent = max((population[i] for i in picks), key=lambda r: (r['reward'], -r['trial']))
    seen = {r['arch'] for r in records}
    child = space.mutate(space.arch_from_json(parent['arch_choices']), rng)
    for _ in range(20):
        if space.arch_key(child) not in seen:
            break
        child = space.mutate(child, rng)
    return child


# -- the worker loop --------------------------------------------------------------------------


def _tensorboard_log(settings, record):
    try:
        import tensorflow as tf

        writer = tf.summary.create_file_writer(os.path.join(settings.output_dir, 'tensorboard'))
        with writer.as_default(step=record['trial']):
            for key in ('reward', 'accuracy', 'step_time_ratio', 'step_time', 'backbone_step_time'):
                if record.get(key) is not None:
                    tf.summary.scalar(key, record[key])
            if record.get('params'):
                tf.summary.scalar('params_millions', record['params'] / 1e6)
            tf.summary.text('blocks', ' '.join(record.get('blocks') or []))
        writer.close()
    except Exception as e:  # Summaries never fail a search.
        logging.warning('TensorBoard summary of trial %d failed: %s', record['trial'], e)


def _remove_checkpoints(model_dir):
    gfile = _gfile()
    for pattern in ('ckpt-*', 'checkpoint'):
        for path in gfile.glob(os.path.join(model_dir, pattern)):
            with contextlib.suppress(Exception):
                gfile.remove(path)


def run_trial(index, arch, settings, space, store, context, trial_fn):
    """Runs one claimed trial and writes its result; failures become 'failed' records.

    `space` turns the trial's choices into config overrides (`trial_overrides`: the block
    strings, and for other spaces more, e.g. width, depth and image size).
    """
    overrides = space.trial_overrides(arch)
    blocks = list(overrides['model']['blocks'])
    trial = dict(
        trial=index,
        arch=space.arch_key(arch),
        blocks=blocks,
        overrides=overrides,
        image_size=(overrides.get('train') or {}).get('image_size'),
        model_dir=os.path.join(store.trial_dir(index), 'model'),
    )
    record = dict(
        trial=index,
        arch=trial['arch'],
        arch_choices=space.arch_to_json(arch),
        blocks=blocks,
        owner=store.owner,
        status='failed',
        reward=None,
        accuracy=None,
        step_time=None,
        backbone_step_time=None,
        step_time_ratio=None,
        params=None,
        error='',
    )
    start = time.time()
    stop = store.heartbeat(index, max(1.0, min(60.0, (settings.claim_timeout or 240) / 4)))
    try:
        metrics = trial_fn(trial, settings, context)
        accuracy = float(metrics['accuracy'])
        # Normalised by the backbone timing of this same trial (same rounds, same load).
        ratio = float(metrics['step_time']) / float(metrics['backbone_step_time'])
        params = int(metrics['params'])
        if not all(math.isfinite(x) for x in (accuracy, ratio)):
            raise FloatingPointError(
                f'non-finite accuracy {accuracy!r} or step-time ratio {ratio!r}'
            )
        record.update(
            status='ok',
            accuracy=accuracy,
            step_time=float(metrics['step_time']),
            backbone_step_time=float(metrics['backbone_step_time']),
            step_time_ratio=ratio,
            params=params,
            reward=reward(accuracy, ratio, params / 1e6, settings.reward_w, settings.reward_v),
        )
    except (KeyboardInterrupt, InterruptedError):
        stop.set()
        raise
    except Exception as e:  # NaN (TrainingError), OOM (ResourceExhaustedError), bugs, ...
        record['error'] = f'{type(e).__name__}: {str(e)[:2000]}'
        logging.error(
            'Trial %d (%s) failed: %s\n%s',
            index,
            trial['arch'],
            record['error'],
            traceback.format_exc(limit=5),
        )
    finally:
        stop.set()
    record['seconds'] = time.time() - start
    record['finished'] = time.time()
    store.write_result(index, record)
    if not settings.keep_checkpoints:
        _remove_checkpoints(trial['model_dir'])
    _tensorboard_log(settings, record)
    logging.info(
        'Trial %d %s: %s reward %s.', index, trial['arch'], record['status'], record['reward']
    )
    return record


def run(settings, trial_fn=None, max_trials=None, retry_failed=False, space=None):
    """Runs this process's share of a search (claims trials until none is left).

    Args:
        settings: a `Settings`.
        trial_fn: `fn(trial, settings, context) -> dict(accuracy, step_time,
            backbone_step_time, params)`; default `train_trial` (trains for real).
        max_trials: stop after running this many trials in this process (None: no limit).
        retry_failed: first make the trials recorded as failed claimable again
            (`TrialStore.reset_failed`), so that they run again. Use it in one process only:
            another one running at the same time may re-run a trial this one just failed.
        space: what is searched (default: the `space.SearchSpace` around the backbone). Any
            object with `random_archs(count, seed)`, `arch_key`, `arch_to_json`,
            `arch_from_json` and `trial_overrides(arch)` (and `mutate` for evolution), such as
            `efficientnetv2.scaling.grid.CoefficientGrid`.

    Returns:
        The records of the trials this process ran.

    Raises:
        ValueError: bad settings, or a trial config that cannot work (`check_trial_config`);
            nothing is written then.
    """
    settings.validate()
    from efficientnetv2 import architectures

    architectures.get_variant(settings.backbone)  # Clear error for an unknown backbone.
    check_trial_config(settings)
    if space is None:
        space = space_lib.SearchSpace(_backbone_blocks(settings.backbone), settings.repeat_delta)
    store = TrialStore(settings.output_dir, settings)
    store.check_settings(settings)
    if retry_failed:
        reset = store.reset_failed(settings.trials)
        logging.info(
            'Retrying %d failed trial(s)%s.',
            len(reset),
            ': ' + ', '.join(map(str, reset)) if reset else '',
        )
    context = TrialContext(settings, space)
    random_archs = space.random_archs(settings.trials, settings.seed)
    trial_fn = trial_fn or train_trial
    ran = []
    for index in range(settings.trials):
        if max_trials is not None and len(ran) >= max_trials:
            break
        if not store.try_claim(index):
            continue
        arch = store.read_arch(index, space)
        if arch is None:
            arch = propose(index, settings, space, store, random_archs)
            store.write_arch(index, arch, space)
        ran.append(run_trial(index, arch, settings, space, store, context, trial_fn))
        store.write_tables(settings.top_k)
    store.write_tables(settings.top_k)
    return ran


def launch_workers(module, args, count):
    """Runs `count` copies of `python -m module *args` on this machine (one GPU each when there
    are GPUs) and waits for them; returns their exit codes. Each copy claims trials from the
    shared output directory (`run`), so `args` must make every copy a single worker."""
    import subprocess
    import sys

    gpus = []
    try:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices('GPU')
    except Exception:
        pass
    procs = []
    for i in range(count):
        env = dict(os.environ)
        if gpus and 'CUDA_VISIBLE_DEVICES' not in os.environ:
            env['CUDA_VISIBLE_DEVICES'] = str(i % len(gpus))  # One GPU per worker.
        procs.append(subprocess.Popen([sys.executable, '-m', module] + list(args), env=env))
    return [p.wait() for p in procs]


def format_best(records, backbone, top_k=5):
    """The best trials as text: reward, metrics and block strings ready for get_model."""
    lines = []
    for r in best_trials(records, top_k):
        lines.append(
            f'trial {int(r["trial"])}  reward {r["reward"]:.4f}  top-1 {r["accuracy"]:.4f}  '
            f'step-time x{r["step_time_ratio"]:.3f}  params {r["params"] / 1e6:.2f}M  {r["arch"]}'
        )
        lines.append(
            '    efficientnetv2.get_model({!r}, blocks={!r})'.format(backbone, r['blocks'])
        )
    failed = sum(1 for r in records if r.get('status') != 'ok')
    lines.append(f'{len(records)} trials finished, {failed} failed.')
    return '\n'.join(lines)
