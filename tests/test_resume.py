"""Exact replay: a run killed and restarted ends bit-identical to an uninterrupted one.

Both runs are `main.py --mode=train` subprocesses on digits with a tiny two-stage model that
uses every source of training randomness: classifier dropout, stochastic depth (a residual
block), RandAugment, mixup and CutMix, shuffling. With `runtime.deterministic=True` and
`train.seed`, the interrupted run is SIGKILLed right after a mid-stage checkpoint, SIGKILLed
again right after the stage-boundary checkpoint, stopped by SIGTERM at a step that is no
checkpoint interval, and then run to the end: every tensor of its final checkpoint must equal
the uninterrupted run's exactly.
"""

import os
import re
import signal
import time

import numpy as np
import script_runner
import tensorflow as tf

from efficientnetv2 import experiment
from efficientnetv2.train import trainer as trainer_lib

TOTAL_STEPS = 48  # Two stages: steps 0-24 and 24-48.
BOUNDARY = 24
MID_STAGE = 8
HPARAMS = (
    "model.blocks=['r2_k3_s1_e1_i16_o16_c1','r1_k3_s2_e4_i16_o24_se0.25'],"
    'model.feature_size=32,model.survival_prob=0.5,model.dropout_rate=0.4,'
    'train.min_dropout=0.2,data.augname=randaug,data.ram=10,train.min_ram=5,'
    'data.mixup_alpha=0.4,data.cutmix_alpha=0.4,train.min_mixup=0.1,'
    'train.min_cutmix=0.1,train.batch_size=16,train.steps_per_loop=4,'
    'train.ckpt_interval=8,train.seed=3,train.image_size=20,train.min_image_size=16,'
    f'train.stages=2,train.epochs=0.01,train.min_steps={TOTAL_STEPS},train.keep_ckpt_max=20,'
    'runtime.deterministic=True'
)
RUN_TIMEOUT_S = 300  # Generous: the machine may be shared.


def _start(model_dir):
    return script_runner.start_training(model_dir, HPARAMS)


def _finish(process, timeout=RUN_TIMEOUT_S):
    return script_runner.finish(process, timeout)


def _steps(model_dir):
    """Steps of the complete checkpoints in model_dir (the index file is written last)."""
    state = tf.train.get_checkpoint_state(str(model_dir))
    if state is None:
        return []
    return sorted(
        int(re.search(r'ckpt-(\d+)$', p).group(1)) for p in state.all_model_checkpoint_paths
    )


def _roll_back_to(model_dir, step):
    """Leaves model_dir as if the process had died right after writing checkpoint `step`.

    The killed process may have written a later checkpoint between our poll and the kill; its
    files are removed and the index points at `step` again, so restarts are reproducible.
    """
    keep = [s for s in _steps(model_dir) if s <= step]
    assert keep[-1] == step, keep
    for name in os.listdir(model_dir):
        found = re.match(r'ckpt-(\d+)\.', name)
        if found and int(found.group(1)) > step:
            os.remove(os.path.join(model_dir, name))
    tf.compat.v1.train.update_checkpoint_state(
        str(model_dir),
        os.path.join(str(model_dir), f'ckpt-{step}'),
        all_model_checkpoint_paths=[os.path.join(str(model_dir), f'ckpt-{s}') for s in keep],
    )


def _run_until(model_dir, step, sig):
    """Starts (or resumes) a run and sends `sig` once checkpoint `step` exists."""
    process = _start(model_dir)
    try:
        deadline = time.time() + RUN_TIMEOUT_S
        while step not in _steps(model_dir):
            assert process.poll() is None, (
                f'the run ended before checkpoint {step}:\n{process.communicate()[0][-3000:]}'
            )
            assert time.time() < deadline, f'no checkpoint {step} within {RUN_TIMEOUT_S} s'
            time.sleep(0.01)
        process.send_signal(sig)
        return _finish(process, timeout=120)
    finally:
        script_runner.stop(process)


def _tensors(model_dir):
    reader = tf.train.load_checkpoint(str(model_dir))
    return {
        name: reader.get_tensor(name)
        for name in reader.get_variable_to_shape_map()
        if not name.startswith('_CHECKPOINTABLE')
        and name != 'save_counter/.ATTRIBUTES/VARIABLE_VALUE'
    }  # How many saves a run made is bookkeeping, not training state.


def test_killed_and_restarted_run_ends_bit_identical(tmp_path):
    reference_dir, resumed_dir = tmp_path / 'reference', tmp_path / 'resumed'
    reference = _start(reference_dir)  # Runs alongside the interrupted chain.
    try:
        # 1. SIGKILL right after a mid-stage checkpoint (the restart skips 8 batches).
        code, out = _run_until(resumed_dir, MID_STAGE, signal.SIGKILL)
        assert code == -signal.SIGKILL, out[-3000:]
        _roll_back_to(resumed_dir, MID_STAGE)

        # 2. SIGKILL right after the stage-boundary checkpoint.
        code, out = _run_until(resumed_dir, BOUNDARY, signal.SIGKILL)
        assert code == -signal.SIGKILL, out[-3000:]
        assert re.search(rf'Restored \S+ckpt-{MID_STAGE} at step {MID_STAGE}', out)
        assert f'resuming at step {MID_STAGE}' in out
        _roll_back_to(resumed_dir, BOUNDARY)

        # 3. SIGTERM mid-stage 2: saves at the end of the current compiled call.
        code, out = _run_until(resumed_dir, BOUNDARY + 8, signal.SIGTERM)
        assert code == 143, out[-3000:]  # 128 + SIGTERM: stopped early, retry me.
        assert re.search(rf'Restored \S+ckpt-{BOUNDARY} at step {BOUNDARY}', out)
        stopped = _steps(resumed_dir)[-1]
        assert f'Stopped at step {stopped} on request' in out
        assert BOUNDARY + 8 <= stopped < TOTAL_STEPS, stopped

        # 4. To the end.
        code, out = _finish(_start(resumed_dir))
        assert code == 0, out[-3000:]
        assert re.search(rf'Restored \S+ckpt-{stopped} at step {stopped}', out)

        code, out = _finish(reference)
        assert code == 0, out[-3000:]
    finally:
        script_runner.stop(reference)

    assert _steps(reference_dir)[-1] == _steps(resumed_dir)[-1] == TOTAL_STEPS
    expected, actual = _tensors(reference_dir), _tensors(resumed_dir)
    assert sorted(actual) == sorted(expected)
    assert any(name.startswith('ema/') for name in expected)
    differences = {
        name: float(
            np.max(np.abs(actual[name].astype(np.float64) - expected[name].astype(np.float64)))
        )
        for name in expected
        if actual[name].size
    }
    different = sorted((d, n) for n, d in differences.items() if d != 0)
    assert not different, (
        f'{len(different)} of {len(expected)} tensors differ; largest: {different[-5:]}'
    )


def _tiny_trainer(model_dir):
    config = experiment.build_config('efficientnetv2-b0', 'digits', hparam_str=HPARAMS)
    return trainer_lib.Trainer(config, str(model_dir), strategy=tf.distribute.get_strategy())


def test_generator_states_are_checkpointed_and_old_checkpoints_still_restore(tmp_path):
    first = _tiny_trainer(tmp_path / 'new')
    states = trainer_lib.model_random_states(first.model)
    # The residual block's stochastic depth (its name is not unique) and the head's dropout.
    assert sorted(states) == ['block1b/drop_path', 'top_dropout']
    for i, state in enumerate(states.values()):
        state.assign([1000 + i, 77 + i])
    first.manager.save(checkpoint_number=0)
    second = _tiny_trainer(tmp_path / 'new')
    assert second.restore()
    restored = trainer_lib.model_random_states(second.model)
    assert [list(v.numpy()) for v in restored.values()] == [[1000, 77], [1001, 78]]

    # A checkpoint written before the generator states were saved still restores.
    old = _tiny_trainer(tmp_path / 'old')
    items = {k: v for k, v in old._tracked.items() if k != 'random'}
    tf.train.CheckpointManager(
        tf.train.Checkpoint(**items), str(tmp_path / 'old'), max_to_keep=1
    ).save(checkpoint_number=0)
    assert _tiny_trainer(tmp_path / 'old').restore()


def _truncate(path):
    with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 2)


def test_corrupt_latest_checkpoint_falls_back_to_the_newest_that_restores(tmp_path):
    # A disk fault truncates the newest checkpoint's data file; the same command resumes.
    model_dir = tmp_path / 'run'
    hparams = (
        "model.blocks=['r1_k3_s1_e1_i16_o8_c1','r1_k3_s2_e4_i8_o16_c1'],model.feature_size=32,"
        'train.stages=0,train.epochs=0.01,train.min_steps=6,train.image_size=16,'
        'eval.image_size=16,train.batch_size=32,train.steps_per_loop=2,train.ckpt_interval=2'
    )
    args = ('--mode=train', '--strategy=cpu', f'--model_dir={model_dir}', f'--hparam_str={hparams}')
    done = script_runner.run_main(*args, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    data = 'ckpt-6.data-00000-of-00001'
    _truncate(model_dir / data)
    done = script_runner.run_main(*args, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f'{model_dir}/ckpt-6 does not restore (IndexError: Read less bytes' in done.stderr
    assert f'Resumed from {model_dir}/ckpt-4, the newest checkpoint that restores' in done.stderr
    assert (model_dir / f'{data}.corrupt').exists()  # Set aside, not deleted ...
    assert (model_dir / 'ckpt-6.index.corrupt').exists()
    state = tf.train.get_checkpoint_state(str(model_dir))  # ... and step 6 trained again.
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == [
        'ckpt-2',
        'ckpt-4',
        'ckpt-6',
    ]
    assert tf.train.load_variable(str(model_dir / 'ckpt-6'), 'step/.ATTRIBUTES/VARIABLE_VALUE') == 6
    # None restores: one error line naming each file, no traceback.
    for name in ('ckpt-2', 'ckpt-4', 'ckpt-6'):
        _truncate(model_dir / f'{name}.data-00000-of-00001')
    done = script_runner.run_main(*args, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 1 and 'Traceback' not in done.stderr
    (line,) = [line for line in done.stderr.splitlines() if 'No checkpoint in' in line]
    assert re.search(r'restores: ckpt-6 \(IndexError.*\); ckpt-4 .*; ckpt-2 ', line), line
