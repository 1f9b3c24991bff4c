"""Stage changes: tracing once (or once per stage under XLA), per-stage knobs, stage-end evals.

Tiny model (3 blocks, 12-24 px) on the digits set; a few steps per stage.
"""

import glob
import os
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_train import record_pipelines
from test_train import tiny_config

from efficientnetv2.train import losses
from efficientnetv2.train import task as task_lib
from efficientnetv2.train import trainer as trainer_lib


def _scalars(directory):
    """{tag: {step: value}} from the TensorBoard event files in `directory`."""
    found = {}
    for path in glob.glob(os.path.join(directory, 'events.out.tfevents.*')):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.HasField('tensor'):
                    number = tf.make_ndarray(value.tensor)
                    if number.dtype.kind in 'fi' and number.ndim == 0:
                        found.setdefault(value.tag, {})[event.step] = float(number)
    return found


def test_three_stages_trace_once_and_evaluate_at_both_sizes(tmp_path, monkeypatch):
    # RandAugment magnitude and mixup grow over the stages; dropout too.
    config = tiny_config(
        'train.epochs=1,train.stages=3,train.ema_decay=0,train.min_ram=2,'
        'data.ram=10,train.min_mixup=0.0,data.mixup_alpha=0.4,'
        'train.min_cutmix=0.1,data.cutmix_alpha=0.3'
    )
    trainer = trainer_lib.Trainer(config, str(tmp_path))
    assert not trainer.jit_compile  # CPU default.
    calls = record_pipelines(monkeypatch, trainer)
    result = trainer.train(evaluate_each_stage=True)

    assert trainer.trace_counts['train'] == 1
    assert trainer.trace_counts['eval'] == 1  # Sizes 12, 18, 24, 32 and a partial batch.
    plan = trainer.plan
    train_calls = [c for c in calls if c['is_training']]
    assert [c['image_size'] for c in train_calls] == [s.image_size for s in plan] == [12, 18, 24]
    np.testing.assert_allclose([c['ram'] for c in train_calls], [s.ram for s in plan])
    np.testing.assert_allclose([c['ram'] for c in train_calls], [2.0, 6.0, 10.0])
    np.testing.assert_allclose([c['mixup_alpha'] for c in train_calls], [0.0, 0.2, 0.4])
    np.testing.assert_allclose([c['cutmix_alpha'] for c in train_calls], [0.1, 0.2, 0.3])
    np.testing.assert_allclose([c['dropout'] for c in train_calls], [s.dropout_rate for s in plan])
    # Each stage's pipeline ends at the stage's last step (nothing decoded past it).
    assert [c['num_batches'] for c in train_calls] == [s.end_step - s.start_step for s in plan]
    assert [c['skip_batches'] for c in train_calls] == [0, 0, 0]
    eval_sizes = [c['image_size'] for c in calls if not c['is_training']]
    # Every stage end evaluates at its train size and the final size (32 px); the final-size
    # batches are read once and kept for the later stage ends.
    assert eval_sizes == [12, 32, 18, 24]

    # Trace times: the first stage traces, the others reuse the trace.
    timings = trainer.stage_timings
    assert [t['image_size'] for t in timings] == [12, 18, 24]
    assert all(t['trace_seconds'] < 1.0 for t in timings[1:])
    assert timings[0]['trace_seconds'] > timings[1]['trace_seconds']
    # Around the steps, each stage times its pipeline start, checkpoint and pipeline end.
    for part in ('setup_seconds', 'save_seconds', 'close_seconds'):
        assert all(0.0 <= t[part] < 60.0 for t in timings), part
    # Every stage end says when it happened, after its evaluations.
    elapsed = [r['elapsed_seconds'] for r in trainer.stage_results]
    assert elapsed == sorted(elapsed) and elapsed[0] > 0.0
    assert [r['stage'] for r in trainer.stage_results] == [0, 1, 2]

    # Both evaluations of every stage end are in TensorBoard; the result says which is which.
    ends = [s.end_step for s in plan]
    evals = _scalars(os.path.join(tmp_path, 'eval'))
    assert sorted(evals['top_1']) == ends
    assert sorted(evals['top_1_at_train_size']) == ends
    assert [evals['image_size_at_train_size'][e] for e in ends] == [12, 18, 24]
    assert evals['top_1'][ends[-1]] == pytest.approx(result['top_1'])
    assert result['image_size'] == 32
    assert result['at_train_size']['image_size'] == 24
    assert evals['top_1_at_train_size'][ends[-1]] == pytest.approx(result['at_train_size']['top_1'])
    train = _scalars(os.path.join(tmp_path, 'train'))
    assert sorted(train['trace_seconds']) == [s.start_step for s in plan]


def test_jit_compile_traces_once_per_stage(tmp_path):
    config = tiny_config(
        'train.epochs=0.1,train.stages=2,train.ema_decay=0,'
        'runtime.jit_compile=True,train.steps_per_loop=2'
    )
    trainer = trainer_lib.Trainer(config, str(tmp_path))
    assert trainer.jit_compile
    trainer.train()
    assert trainer.total_steps == 4
    assert trainer.trace_counts['train'] == 2
    assert [t['traces'] for t in trainer.stage_timings] == [1, 2]
    assert np.isfinite([h['loss'] for h in trainer.history]).all()


def test_dropout_rate_change_needs_no_retrace():
    task = task_lib.ClassificationTask(tiny_config('model.dropout_rate=0.1'))
    model = task.build_model()
    features = keras.Model(model.inputs, model.get_layer('top_dropout').output)
    traces = []

    @tf.function
    def dropped(images):
        traces.append(1)
        return features(images, training=True)

    images = tf.random.stateless_uniform([64, 16, 16, 3], seed=[1, 2])
    fractions = []
    for rate in (0.0, 0.5, 0.1):
        model.dropout_rate = rate
        out = dropped(images).numpy()
        fractions.append(float(np.mean(out == 0.0)))
    assert len(traces) == 1
    assert fractions[0] == 0.0
    assert fractions[1] == pytest.approx(0.5, abs=0.05)
    assert fractions[2] == pytest.approx(0.1, abs=0.04)
    # The rate is not a weight: checkpoints and weight files are unchanged by it.
    assert not [w for w in model.weights if 'dropout' in w.path]
    assert model.get_config()['dropout_rate'] == 0.1


def _dense_model(seed):
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(
                10, kernel_initializer=keras.initializers.GlorotUniform(seed), name='predictions'
            ),
        ]
    )
    return model


def test_gradient_clipping_under_loss_scaling_matches_unscaled():
    task = task_lib.ClassificationTask(tiny_config('train.gclip=0.05,train.weight_decay=0'))
    images = tf.random.stateless_normal([8, 6], seed=[3, 4])
    labels = tf.one_hot(tf.range(8) % 10, 10)
    updated = {}
    for name in ('plain', 'scaled', 'unclipped'):
        model = _dense_model(7)
        optimizer = keras.optimizers.SGD(1.0)
        if name == 'scaled':
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=2.0**12)
        optimizer.build(model.trainable_variables)
        if name == 'unclipped':
            task.config.train.gclip = 0.0
        task.train_step(images, labels, model, optimizer)
        task.config.train.gclip = 0.05
        updated[name] = [v.numpy() for v in model.trainable_variables]
    start = [v.numpy() for v in _dense_model(7).trainable_variables]
    for plain, scaled in zip(updated['plain'], updated['scaled']):
        np.testing.assert_allclose(scaled, plain, rtol=1e-5, atol=1e-7)
    # Clipping was active: the clipped step is shorter than the raw one.
    step = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(updated['plain'], start)))
    raw = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(updated['unclipped'], start)))
    assert step == pytest.approx(0.05, rel=1e-3) and raw > 0.1

    # The math alone: scaled gradients come back as scale x the clipped true gradients.
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(1.0), initial_scale=2.0**10
    )
    optimizer.build(_dense_model(1).trainable_variables)
    true = [tf.constant([[3.0, 4.0]]), tf.constant([0.0, 12.0])]
    clipped = task.clip_gradients([g * 2.0**10 for g in true], optimizer)
    expected = losses.clip_gradients(true, 0.05)
    for got, want in zip(clipped, expected):
        np.testing.assert_allclose(got.numpy() / 2.0**10, want.numpy(), rtol=1e-6)


def test_stage_pipelines_are_dropped_at_once(tmp_path):
    # A progressive run drops its train iterator at every stage end. Dropping an autotuned
    # one could wait, idle, for tf.data's autotuner thread to wake from a sleep that doubles
    # as the pipeline runs (up to 60 s); the distributed wrapper adds an autotuned pipeline of
    # its own. On one CPU device the trainer reads plain pipelines without the autotuner.
    # Measured with the distributed pipeline: 6 of 12 drops waited 1.2-1.3 s.
    trainer = trainer_lib.Trainer(tiny_config('train.epochs=30,train.stages=2'), str(tmp_path))
    waits = []
    for _ in range(8):
        iterator = iter(trainer._train_dataset(trainer.plan[0], 0))
        start = time.time()
        while time.time() - start < 1.5:  # The autotuner would then sleep until 2.55 s.
            next(iterator)
            time.sleep(0.05)
        start = time.time()
        del iterator
        waits.append(round(time.time() - start, 2))
    assert max(waits) < 0.5, waits


def test_stage_end_evaluates_raw_and_ema_weights_from_one_input_pass(tmp_path, monkeypatch):
    # At each size a stage end evaluates the raw and the EMA weights; when the eval batches
    # fit in memory the second evaluation reuses the first one's batches, and the final-size
    # batches (32 px) are kept for the next stage end: one eval pipeline per size.
    config = tiny_config('train.epochs=1,train.stages=2,train.ema_decay=0.9')
    trainer = trainer_lib.Trainer(config, str(tmp_path))
    calls = record_pipelines(monkeypatch, trainer)
    trainer.train(evaluate_each_stage=True)
    assert [c['image_size'] for c in calls if not c['is_training']] == [12, 32, 24]
    assert trainer._kept_eval is None  # Dropped when train() returns.
    last = trainer.stage_results[-1]
    assert last['raw']['top_1'] != last['top_1']  # Two different weight sets were evaluated.

    # Each result is what a separate evaluation finds, and so is the two-pass fallback.
    def separate():
        return [
            trainer.evaluate(use_ema=use_ema, image_size=size)
            for use_ema in (True, False)
            for size in (32, 24)
        ]

    expected = separate()
    found = [last, last['at_train_size'], last['raw'], last['raw']['at_train_size']]
    for got, want in zip(found, expected):
        assert (got['ema'], got['image_size']) == (want['ema'], want['image_size'])
        assert (got['top_1'], got['top_5'], got['num_images']) == (
            want['top_1'],
            want['top_5'],
            want['num_images'],
        )
    monkeypatch.setattr(trainer_lib, 'EVAL_KEEP_BYTES', 0)
    del calls[:]
    results = trainer._evaluate_weights(32, [False, True])
    assert [c['image_size'] for c in calls] == [32, 32]
    assert [r['top_1'] for r in results] == [expected[2]['top_1'], expected[0]['top_1']]


def test_next_stage_pipeline_is_built_during_the_stage_end(tmp_path, monkeypatch):
    # The following stage's pipeline is built in the background during the stage-end
    # evaluations; the run trains on the same batches as without it.
    from efficientnetv2 import data

    def run(model_dir, prepare):
        trainer = trainer_lib.Trainer(tiny_config('train.epochs=1,train.stages=3'), model_dir)
        if not prepare:
            monkeypatch.setattr(trainer, '_prepare_pipeline', lambda stage, step: None)
        threads = []
        build = data.build_dataset

        def spy(*args, **kwargs):
            if kwargs['is_training']:
                threads.append(threading.current_thread().name)
            return build(*args, **kwargs)

        monkeypatch.setattr(data, 'build_dataset', spy)
        trainer.train(evaluate_each_stage=True)
        monkeypatch.setattr(data, 'build_dataset', build)
        return trainer, threads

    prepared, threads = run(str(tmp_path / 'prepared'), True)
    assert threads == ['MainThread', 'prepare-pipeline-2', 'prepare-pipeline-3']
    assert prepared._prepared is None
    plain, threads = run(str(tmp_path / 'plain'), False)
    assert threads == ['MainThread'] * 3
    losses = [h['loss'] for h in prepared.history]
    assert len(losses) == len(plain.history) > 3
    np.testing.assert_array_equal(losses, [h['loss'] for h in plain.history])
