r"""Command line of the training-aware architecture search.

    python -m efficientnetv2.nas --dataset_cfg=digits --trials=4 --epochs=1 --image_size=24 \
        --hparam_str="train.batch_size=32" --output_dir=/tmp/nas
    python -m efficientnetv2.nas --workers=4 ...     # 4 worker processes on this machine
    # Several machines: run the same command on each with the same gs:// --output_dir.

Rerunning the same command resumes: finished trials are skipped, a trial whose process died
is taken over; with --retry_failed the trials recorded as failed run again. The settings are
checked before the first trial (a bad --dataset_cfg or --hparam_str key or value is a usage
error, exit 2); the command exits 1 when every finished trial failed.
"""

import importlib
import sys

from absl import app
from absl import flags
from absl import logging

from efficientnetv2 import console
from efficientnetv2.nas import search

flags.DEFINE_string(
    'output_dir',
    'runs/nas',
    'Trials, results.csv/json, best.json and '
    'TensorBoard summaries (local or gs://); shared by all workers.',
)
flags.DEFINE_string(
    'backbone',
    'efficientnet-b0',
    'Model whose stages, channels, strides, '
    'scaling and training recipe the search space is built on.',
)
flags.DEFINE_string('dataset_cfg', 'digits', 'Dataset config, as for main.py.')
flags.DEFINE_string('data_dir', None, 'Dataset directory, as for main.py.')
flags.DEFINE_integer('trials', 1000, 'Number of sampled architectures.')
flags.DEFINE_enum(
    'search', 'random', list(search.SEARCHES), 'Random search or regularized evolution.'
)
flags.DEFINE_float('epochs', 10.0, 'Training epochs per trial.')
flags.DEFINE_integer('image_size', 128, 'Reduced train and eval image size of the trials.')
flags.DEFINE_string(
    'hparam_str',
    '',
    'Config overrides for every trial, as for main.py (e.g. "train.batch_size=256").',
)
flags.DEFINE_float('reward_w', -0.07, 'Exponent of the normalized train-step time.')
flags.DEFINE_float('reward_v', -0.05, 'Exponent of the parameter count.')
flags.DEFINE_integer('seed', 0, 'Seed of the architecture sampling (and trial seeds).')
flags.DEFINE_integer('repeat_delta', 1, 'Layers per stage range over backbone +- this.')
flags.DEFINE_integer('population', 20, 'Evolution: population size.')
flags.DEFINE_integer('tournament', 5, 'Evolution: tournament size.')
flags.DEFINE_integer('timing_steps', 10, 'Timed train steps per model (median).')
flags.DEFINE_integer('timing_warmup', 2, 'Untimed train steps before timing (tracing).')
flags.DEFINE_integer('timing_batch', 0, 'Batch of the timed steps; 0: train.batch_size.')
flags.DEFINE_float(
    'claim_timeout',
    3600.0,
    'Seconds without heartbeat before a claimed trial of another machine is taken over; 0: never.',
)
flags.DEFINE_float('settle_s', 2.0, 'Non-local output_dir: wait before a claim is checked.')
flags.DEFINE_bool('keep_checkpoints', False, "Keep each trial's checkpoints.")
flags.DEFINE_integer('top_k', 5, 'How many best architectures to print.')
flags.DEFINE_integer(
    'workers', 1, 'Worker processes on this machine (each claims trials).', lower_bound=1
)
flags.DEFINE_bool(
    'retry_failed',
    False,
    'Run the trials recorded as failed again (their last error is kept in '
    'failed-result.json). Same settings as the search in --output_dir.',
)
flags.DEFINE_integer('max_trials', None, 'Stop this process after running this many trials.')
flags.DEFINE_string(
    'trial_fn',
    None,
    'Replace training by "module:function" (tests, custom '
    'objectives): fn(trial, settings, context) -> dict(accuracy, step_time, '
    'backbone_step_time, params).',
)

FLAGS = flags.FLAGS


def settings_from_flags():
    # Settings without a flag (`space`: set by efficientnetv2.scaling's grid) keep defaults.
    names = [f.name for f in search.dataclasses.fields(search.Settings) if f.name in FLAGS]
    return search.Settings(**{n: FLAGS[n].value for n in names})


def load_trial_fn(spec):
    if not spec:
        return None
    module_name, sep, attr = spec.partition(':')
    if not sep or not module_name or not attr:
        raise app.UsageError(f'--trial_fn must be "module:function". Received: {spec!r}')
    return getattr(importlib.import_module(module_name), attr)


def launch_workers(count):
    """Starts `count` copies of this command (as --workers=1) and waits for them."""
    args = [
        a
        for a in sys.argv[1:]
        if not a.startswith(('--workers', '--retry_failed', '--noretry_failed'))
    ]
    return search.launch_workers('efficientnetv2.nas', args + ['--workers=1'], count)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError('Unexpected arguments: {}'.format(' '.join(argv[1:])))
    try:
        settings = settings_from_flags().validate()
        # What would fail every trial alike (dataset, --hparam_str keys and values) is a usage
        # error before the first trial, with nothing written.
        search.check_trial_config(settings)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    trial_fn = load_trial_fn(FLAGS.trial_fn)
    if FLAGS.workers > 1:
        store = search.TrialStore(settings.output_dir, settings)
        try:
            store.check_settings(settings)
        except ValueError as e:
            raise app.UsageError(str(e)) from e
        if FLAGS.retry_failed:  # Once, here: the workers only claim what is left.
            logging.info('Retrying failed trial(s): %s.', store.reset_failed(settings.trials))
        code = max(launch_workers(FLAGS.workers))
        records = store.write_tables(settings.top_k)
    else:
        try:
            search.run(settings, trial_fn, FLAGS.max_trials, FLAGS.retry_failed)
        except ValueError as e:  # Settings that differ from the output_dir's search.
            raise app.UsageError(str(e)) from e
        code = 0
        records = search.TrialStore(settings.output_dir, settings).results()
    print(search.format_best(records, settings.backbone, settings.top_k), flush=True)
    if records and not any(r.get('status') == 'ok' for r in records):
        logging.error(
            'Every trial failed (%d); trial %d: %s. Fix the cause, then rerun the command with '
            '--retry_failed to run the failed trials again.',
            len(records),
            records[0]['trial'],
            records[0].get('error'),
        )
        return 1
    return code


def console_main():
    """Console script `efficientnetv2-nas` (setup.py) = `python -m efficientnetv2.nas`."""
    console.run(main, sys.modules[__name__])


if __name__ == '__main__':
    console_main()
