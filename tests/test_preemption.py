"""Preemption: `main.py` stopped by SIGTERM or killed by SIGKILL mid-run resumes to the end.

Each run is a `main.py --mode=train` subprocess on the tiny digits config with deterministic
ops, so a resumed run must end at the same step with the same weights as an uninterrupted one.
A run stopped by SIGTERM before its last step exits with 143 (128 + SIGTERM), the code that
schedulers treat as "killed, retry"; a finished run exits 0.
"""

import re
import signal
import time

import numpy as np
import pytest
import script_runner
import tensorflow as tf

TOTAL_STEPS = 160
HPARAMS = (
    "model.blocks=['r1_k3_s1_e1_i16_o8_c1','r1_k3_s2_e4_i8_o16_c1',"
    "'r1_k3_s2_e4_i16_o24_se0.25'],model.feature_size=32,"
    'train.batch_size=32,train.steps_per_loop=4,train.ckpt_interval=8,train.seed=1,'
    'train.image_size=24,train.min_image_size=12,train.stages=2,train.epochs=0.1,'
    f'train.min_steps={TOTAL_STEPS},runtime.deterministic=True,model.survival_prob=None,'
    'model.dropout_rate=0.0,train.min_dropout=0.0'
)
RUN_TIMEOUT_S = 150


def _start(model_dir):
    return script_runner.start_training(model_dir, HPARAMS)


def _wait(process, timeout=RUN_TIMEOUT_S):
    return script_runner.finish(process, timeout)


def _latest_step(model_dir):
    latest = tf.train.latest_checkpoint(str(model_dir))
    return int(re.search(r'ckpt-(\d+)$', latest).group(1)) if latest else None


def _interrupt_after_first_checkpoint(model_dir, sig):
    """Starts a run, sends `sig` once a checkpoint exists; returns (returncode, output)."""
    process = _start(model_dir)
    try:
        deadline = time.time() + RUN_TIMEOUT_S
        while _latest_step(model_dir) is None:
            assert process.poll() is None, 'the run ended before its first checkpoint'
            assert time.time() < deadline, f'no checkpoint within {RUN_TIMEOUT_S} s'
            time.sleep(0.05)
        process.send_signal(sig)
        return _wait(process, timeout=60)
    finally:
        script_runner.stop(process)


def _weights(model_dir):
    reader = tf.train.load_checkpoint(str(model_dir))
    # save_counter is left out: a SIGTERM stop adds a save whenever it lands on a step that
    # already had one, which is bookkeeping, not training state.
    return {
        name: reader.get_tensor(name)
        for name in reader.get_variable_to_shape_map()
        if not name.startswith(('_CHECKPOINTABLE', 'save_counter'))
    }


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    """An uninterrupted run, started at once and awaited when first needed."""
    model_dir = tmp_path_factory.mktemp('reference')
    process = _start(model_dir)
    result = {}

    def get():
        if not result:
            code, out = _wait(process)
            assert code == 0, out[-3000:]
            result.update(step=_latest_step(model_dir), weights=_weights(model_dir))
        return result

    yield get
    script_runner.stop(process)


def _assert_same_weights(model_dir, expected):
    weights = _weights(model_dir)
    assert sorted(weights) == sorted(expected)
    assert any(name.startswith('ema/') for name in weights)
    for name, value in expected.items():
        np.testing.assert_allclose(weights[name], value, atol=1e-6, err_msg=name)


def test_sigterm_saves_and_a_restart_finishes_the_run(tmp_path, reference):
    code, out = _interrupt_after_first_checkpoint(tmp_path, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM == 143, out[-3000:]
    stopped = _latest_step(tmp_path)
    assert f'Signal {signal.SIGTERM:d} received' in out
    assert f'Stopped at step {stopped} on request' in out
    assert 8 <= stopped < TOTAL_STEPS

    code, out = _wait(_start(tmp_path))
    assert code == 0, out[-3000:]
    assert re.search(rf'Restored \S+ckpt-{stopped} at step {stopped}', out)
    assert _latest_step(tmp_path) == TOTAL_STEPS == reference()['step']
    _assert_same_weights(tmp_path, reference()['weights'])


def test_sigkill_mid_run_then_restart_reaches_the_same_final_step(tmp_path, reference):
    code, out = _interrupt_after_first_checkpoint(tmp_path, signal.SIGKILL)
    assert code == -signal.SIGKILL
    killed_at = _latest_step(tmp_path)
    assert 8 <= killed_at < TOTAL_STEPS

    code, out = _wait(_start(tmp_path))
    assert code == 0, out[-3000:]
    assert re.search(rf'Restored \S+ckpt-{killed_at} at step {killed_at}', out)
    assert _latest_step(tmp_path) == TOTAL_STEPS == reference()['step']
    _assert_same_weights(tmp_path, reference()['weights'])


def test_exit_code_tells_a_stopped_run_from_a_finished_one():
    import types

    from efficientnetv2 import cli as main  # What main.py runs.

    assert main.EXIT_PREEMPTED == 143

    def trainer(stop, step):
        return types.SimpleNamespace(
            _stop_requested=stop,
            global_step=tf.Variable(step),
            plan=types.SimpleNamespace(total_steps=TOTAL_STEPS),
        )

    assert main._stopped_early(trainer(True, 8))
    assert not main._stopped_early(trainer(True, TOTAL_STEPS))  # Already finished: success.
    assert not main._stopped_early(trainer(False, 8))
