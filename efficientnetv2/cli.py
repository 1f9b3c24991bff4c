"""Command line for EfficientNet / EfficientNetV2: train, evaluate, export, infer.

    efficientnetv2-train                              # digits demo: train + eval, offline
    efficientnetv2-train --mode=train --model_name=efficientnetv2-s --dataset_cfg=imagenet \\
        --data_dir=gs://bucket/imagenet --model_dir=gs://bucket/runs/v2s
    efficientnetv2-train --mode=eval --model_dir=...  # evaluates each new checkpoint
    efficientnetv2-export --model_dir=...             # the same command, --mode=export default
    efficientnetv2-train --hparam_str="train.epochs=10,data.ram=12" --config_file=x.yaml

`efficientnetv2-train`, `python main.py` (in a checkout) and `python -m efficientnetv2.cli` are
the same command. The default --model_dir, runs/<model_name>-<dataset_cfg in lower case> (e.g.
runs/efficientnetv2-b0-cifar10ft for --dataset_cfg=cifar10Ft), is relative to the current
directory; --config_file takes a path (the checkout's configs/ folder is not installed).

Config override order: defaults -> model recipe -> dataset recipe -> --config_file ->
--hparam_str. The resolved config is written to <model_dir>/config.yaml; --mode=eval, export
and infer read it back from there (--config_file / --hparam_str override the keys they name).
--mode=eval may start before its trainer: it waits up to eval.timeout seconds (86,400 by
default; --hparam_str=eval.timeout=60 waits a minute) for config.yaml and then for each new
checkpoint, so on a directory that never gets a run its usage error comes after that wait.

Exit codes: 0 done (and after --help); 1 a run error (logged); 2 a usage error (a bad or
unknown flag or config value, an extra argument, no run config: the message, no help dump;
nothing written); 143 (128 + SIGTERM) training stopped by SIGTERM before its last step, checkpoint
saved: rerun the same command to resume.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

from efficientnetv2 import architectures
from efficientnetv2 import console
from efficientnetv2 import distribute
from efficientnetv2 import export as export_lib

MODES = ('train', 'eval', 'traineval', 'export', 'infer')

# The flags are defined here, at import of this module, and nowhere else in the package:
# `import efficientnetv2` defines none. dataset_cfg, data_dir and hparam_str are also flags of
# the architecture search (efficientnetv2.nas), with the same type, default and meaning; they
# allow an override so that one process may import both command lines (tests do) without
# absl's DuplicateFlagError, in either order.
_SHARED_WITH_NAS = dict(allow_override=True)

flags.DEFINE_enum('mode', 'traineval', MODES, 'What to do.')
flags.DEFINE_string(
    'model_name',
    'efficientnetv2-b0',
    'Model: one of {}.'.format(', '.join(architectures.list_models())),
)
flags.DEFINE_string(
    'dataset_cfg',
    'digits',
    'Dataset config (case-insensitive), e.g. digits, imagenet, cifar10Ft, folder.',
    **_SHARED_WITH_NAS,
)
flags.DEFINE_string(
    'data_dir',
    None,
    'Dataset directory (TFRecords, TFDS data or an image folder); not needed for digits.',
    **_SHARED_WITH_NAS,
)
flags.DEFINE_string(
    'model_dir',
    None,
    'Checkpoints, summaries and config.yaml (local or gs://). '
    'Default: runs/<model_name>-<dataset_cfg in lower case> in the current directory.',
)
flags.DEFINE_string(
    'hparam_str', '', 'Overrides, "a.b=1,c.d=x" (applied last).', **_SHARED_WITH_NAS
)
flags.DEFINE_string(
    'config_file', None, 'YAML overrides: a file path, e.g. configs/digits.yaml of a checkout.'
)
flags.DEFINE_enum(
    'strategy',
    None,
    list(distribute.STRATEGIES),
    'Distribution strategy (default: runtime.strategy of the config, auto).',
)
flags.DEFINE_string('tpu', None, "TPU name, or 'local' on a Cloud TPU VM.")
flags.DEFINE_string('tpu_zone', None, 'GCE zone of the TPU.')
flags.DEFINE_string('gcp_project', None, 'GCP project of the TPU.')
flags.DEFINE_string(
    'export_dir', None, '--mode=export: output directory (default <model_dir>/export).'
)
flags.DEFINE_list(
    'export_formats',
    list(export_lib.DEFAULT_FORMATS),
    '--mode=export: formats to write and check, among {} (onnx needs '
    "pip install 'efficientnetv2[onnx]').".format(', '.join(export_lib.FORMATS)),
)
flags.DEFINE_list('images', [], '--mode=infer: image files (JPEG/PNG).')

FLAGS = flags.FLAGS


def _model_name_valid(values):
    try:
        architectures.get_variant(values['model_name'])
    except ValueError as e:
        # A --config_file may define the model (efficientnetv2.scaling --write_config):
        # experiment.build_config registers it from there, or refuses the name as a usage error.
        if not values['config_file']:
            raise flags.ValidationError(str(e)) from e
    return True


flags.register_multi_flags_validator(['model_name', 'config_file'], _model_name_valid)


def _export_formats_valid(formats):
    unknown = [f for f in formats if f not in export_lib.FORMATS]
    if unknown or not formats:
        raise flags.ValidationError(
            'must be among {}. Received: {}'.format(
                ', '.join(export_lib.FORMATS), ', '.join(unknown) or 'none'
            )
        )
    return True


flags.register_validator('export_formats', _export_formats_valid)


def resolve_config(argv_flags=FLAGS):
    """Builds the run config from the flags; errors become usage errors (nothing written)."""
    from efficientnetv2 import experiment

    hparam_str = argv_flags.hparam_str
    try:
        config = experiment.build_config(
            model_name=argv_flags.model_name,
            dataset_cfg=argv_flags.dataset_cfg,
            config_file=argv_flags.config_file,
            hparam_str=hparam_str,
            data_dir=argv_flags.data_dir,
        )
        if argv_flags.strategy:
            config.override({'runtime': {'strategy': argv_flags.strategy}})
    except (KeyError, ValueError, FileNotFoundError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise app.UsageError(message, exitcode=2) from e
    return config


RUN_MODES = ('eval', 'export', 'infer')  # Modes that read an existing run's config.yaml.


def resolve_run_config(model_dir, argv_flags=FLAGS):
    """The config of the run in `model_dir` (its config.yaml) for eval / export / infer.

    The run's saved config decides the model, dataset, eval size and preprocessing; only what
    the command line names explicitly overrides it: keys of --config_file / --hparam_str, and
    --data_dir / --strategy. --model_name or --dataset_cfg that differ from the run's are an
    error. Logs the config file used and the overridden keys.

    Raises:
        app.UsageError: no config.yaml in `model_dir`, or bad overrides.
    """
    import tensorflow as tf

    from efficientnetv2 import config as config_lib
    from efficientnetv2 import experiment
    from efficientnetv2 import hparams

    path = os.path.join(model_dir, 'config.yaml')
    if not tf.io.gfile.exists(path):
        raise app.UsageError(
            f'No run config {path}: --mode={argv_flags.mode} reads the configuration of a '
            'trained run from its model directory. Train first (efficientnetv2-train '
            f'--mode=train --model_dir={model_dir} ..., or python main.py in a checkout) or pass '
            'the --model_dir of a run.'
        )
    overrides = hparams.Config()
    try:
        config = config_lib.default_config().override(hparams.load_yaml(path))
        for flag, key in (('model_name', 'model.model_name'), ('dataset_cfg', 'data.dataset')):
            if argv_flags[flag].present:
                section, name = key.split('.')
                if str(argv_flags[flag].value).lower() != str(config[section][name]).lower():
                    raise ValueError(
                        f'--{flag}={argv_flags[flag].value}, but the run in {model_dir} is '
                        f'{key}={config[section][name]}; drop the flag (the run config decides) '
                        'or pass another --model_dir.'
                    )
        if argv_flags.config_file:
            overrides.override(argv_flags.config_file, allow_new=True)
        if argv_flags.hparam_str:
            overrides.override(argv_flags.hparam_str, allow_new=True)
        if argv_flags['data_dir'].present:
            overrides.override({'data': {'data_dir': argv_flags.data_dir}}, allow_new=True)
        if argv_flags.strategy:
            overrides.override({'runtime': {'strategy': argv_flags.strategy}}, allow_new=True)
        config.override(overrides)
        experiment.validate(config)
    except (KeyError, ValueError, FileNotFoundError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise app.UsageError(message) from e
    logging.info(
        'Using the run config %s (model %s, dataset %s, eval size %s); overridden on '
        'the command line: %s.',
        path,
        config.model.model_name,
        config.data.dataset,
        config.eval.image_size,
        ', '.join(f'{k}={_get(config, k)!r}' for k in overrides.flat_keys()) or 'none',
    )
    return config


def _wait_for_run_config(model_dir, timeout, poll_seconds=1.0):
    import time

    import tensorflow as tf

    path = os.path.join(model_dir, 'config.yaml')
    deadline = time.time() + timeout
    if not tf.io.gfile.exists(path):
        logging.info('Waiting up to %d s for the trainer to write %s.', timeout, path)
    while not tf.io.gfile.exists(path) and time.time() < deadline:
        time.sleep(poll_seconds)


def _get(config, dotted):
    for part in dotted.split('.'):
        config = config[part]
    return config


def default_model_dir(model_name, dataset_cfg):
    return os.path.join('runs', f'{model_name}-{dataset_cfg.lower()}')


def main(argv):
    if len(argv) > 1:
        raise app.UsageError('Unexpected arguments: {}'.format(' '.join(argv[1:])))
    model_dir = FLAGS.model_dir or default_model_dir(FLAGS.model_name, FLAGS.dataset_cfg)
    if FLAGS.mode == 'eval':
        # An evaluator may start before its trainer: wait for the run's config like for its
        # checkpoints (eval.timeout of the command line's config).
        _wait_for_run_config(model_dir, resolve_config().eval.timeout)
    if FLAGS.mode in RUN_MODES:
        config = resolve_run_config(model_dir)
    else:
        config = resolve_config()

    if FLAGS.mode in ('export', 'infer'):
        from efficientnetv2 import predict

        try:
            if FLAGS.mode == 'export':
                predict.export(config, model_dir, FLAGS.export_dir, FLAGS.export_formats)
            else:
                predict.infer(config, model_dir, FLAGS.images)
        except (FileNotFoundError, ValueError, ImportError) as e:
            logging.error('%s', e)
            return 1
        return 0

    from efficientnetv2.train import trainer as trainer_lib

    try:
        strategy = distribute.get_strategy(
            config.runtime.strategy,
            tpu=FLAGS.tpu,
            tpu_zone=FLAGS.tpu_zone,
            gcp_project=FLAGS.gcp_project,
        )
    except (ValueError, distribute.TPUConnectionError) as e:
        logging.error('%s', e)
        return 1
    try:
        trainer = trainer_lib.Trainer(config, model_dir, strategy)
        if FLAGS.mode == 'train':
            trainer.train()
        elif FLAGS.mode == 'eval':
            trainer.evaluate_checkpoints()
        else:
            trainer.train(evaluate_each_stage=True)
    except trainer_lib.TrainingError as e:
        logging.error('%s', e)
        return 1
    if FLAGS.mode != 'eval' and _stopped_early(trainer):
        return EXIT_PREEMPTED
    return 0


# 128 + SIGTERM: what a shell reports for a process ended by SIGTERM; schedulers retry it.
EXIT_PREEMPTED = 128 + 15


def _stopped_early(trainer):
    """Whether a SIGTERM stopped training before the last step (a finished run is a success)."""
    return (
        bool(getattr(trainer, '_stop_requested', False))
        and int(trainer.global_step.numpy()) < trainer.plan.total_steps
    )


def run():
    """Console script `efficientnetv2-train` (and main.py): the command line above."""
    console.run(main, sys.modules[__name__])


def run_export():
    """Console script `efficientnetv2-export`: this command line with --mode=export by default.

    Exports the run in --model_dir (SavedModel, .keras and the --export_formats, each checked
    against the Keras model); the other flags and modes are those of efficientnetv2-train.
    """
    FLAGS.set_default('mode', 'export')
    run()


if __name__ == '__main__':
    run()
