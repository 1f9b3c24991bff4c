"""Subprocess helpers for tests that need a fresh interpreter.

`run_script` runs a Python snippet (e.g. to set up logical devices before TF starts) and returns
the JSON it prints on a line starting with RESULT. `run_main` runs `main.py` with the given
flags to completion, as a user would. `start_training` and `finish` run `main.py --mode=train`
as a child process that a test may signal or kill (resume and preemption tests).
"""

import json
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(script, timeout=300):
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([REPO_ROOT, env.get('PYTHONPATH', '')])
    env['TF_CPP_MIN_LOG_LEVEL'] = '2'
    completed = subprocess.run(
        [sys.executable, '-c', script],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(text for text in completed.stdout.splitlines() if text.startswith('RESULT'))
    return json.loads(line[len('RESULT') :])


def run_main(*args, cwd=None, timeout=600):
    """Runs `python main.py *args` to the end; returns the CompletedProcess (text output)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    return subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, 'main.py')] + list(args),
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or REPO_ROOT,
        timeout=timeout,
    )


def start_training(model_dir, hparam_str):
    """Starts `main.py --mode=train --strategy=cpu` in the background; stderr goes to stdout."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    env.pop('TF_CONFIG', None)
    return subprocess.Popen(
        [
            sys.executable,
            os.path.join(REPO_ROOT, 'main.py'),
            '--mode=train',
            '--strategy=cpu',
            f'--model_dir={model_dir}',
            f'--hparam_str={hparam_str}',
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop(process):
    """Kills `process` if it still runs and reaps it."""
    if process.poll() is None:
        process.kill()
        process.communicate()


def finish(process, timeout):
    """Waits for `process` (killed after `timeout` s); returns (returncode, output)."""
    try:
        out, _ = process.communicate(timeout=timeout)
    finally:
        stop(process)
    return process.returncode, out
