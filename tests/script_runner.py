"""Runs a Python snippet in a fresh interpreter (e.g. to set up logical devices before TF
starts) and returns the JSON it prints on a line starting with RESULT."""

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
