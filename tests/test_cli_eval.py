"""`--mode=eval` as users run it: started before the trainer, in its own process."""

import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = (
    "model.blocks=['r1_k3_s1_e1_i16_o8_c1','r1_k3_s2_e4_i8_o16_c1',"
    "'r1_k3_s2_e4_i16_o24_se0.25'],model.feature_size=32"
)
# 1 epoch of 1,437 digits at batch 64 = 22 steps; a checkpoint every 8 steps: 8, 16, 22.
HPARAMS = (
    f'--hparam_str={TINY},train.epochs=1,train.stages=0,train.image_size=16,'
    'eval.image_size=16,train.steps_per_loop=8,train.ckpt_interval=8,'
    'eval.timeout=120'
)


def _start(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONUNBUFFERED='1')
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, 'main.py')] + list(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def test_eval_started_before_the_trainer_follows_its_checkpoints(tmp_path):
    model_dir = str(tmp_path / 'run')
    evaluator = _start('--mode=eval', f'--model_dir={model_dir}', HPARAMS)
    trainer = _start('--mode=train', f'--model_dir={model_dir}', HPARAMS)
    _, train_err = trainer.communicate(timeout=600)
    assert trainer.returncode == 0, train_err[-3000:]
    _, eval_err = evaluator.communicate(timeout=600)
    assert evaluator.returncode == 0, eval_err[-3000:]

    steps = [int(s) for s in re.findall(r'Eval at step (\d+)', eval_err)]
    # It waited for the first checkpoint, evaluated what appeared and stopped at the last.
    assert steps, eval_err[-3000:]
    assert steps[-1] == 22
    assert steps == sorted(set(steps))
    with open(os.path.join(model_dir, 'eval_results.json')) as f:
        result = json.load(f)
    assert result['step'] == 22
    assert 0.0 <= result['top_1'] <= 1.0
