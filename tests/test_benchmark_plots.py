"""benchmarks/plot_progressive.py: reads progressive.py's JSON and draws its two pictures."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / 'benchmarks' / 'plot_progressive.py'


def _load():
    spec = importlib.util.spec_from_file_location('plot_progressive', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(sizes, tops, seconds, rate=40.0):
    return dict(
        top_1=tops[-1],
        train_seconds=seconds[-1],
        stages=[
            dict(stage=i, image_size=s, steps=10, images_per_sec=rate * 128 / s)
            for i, s in enumerate(sizes)
        ],
        stage_ends=[
            dict(stage=i, step=10 * (i + 1), seconds=t, ema=top, raw=top)
            for i, (top, t) in enumerate(zip(tops, seconds, strict=True))
        ],
    )


def _summary(seed):
    run = dict(
        seed=seed,
        progressive=_record([64, 128], [0.4, 0.8], [30.0, 90.0]),
        fixed=_record([128], [0.75], [120.0]),
    )
    return dict(command='progressive.py', hparams='', modes=dict(paper=dict(runs=[run])))


def test_load_runs_merges_files(tmp_path):
    paths = []
    for seed in (0, 1):
        path = tmp_path / f's{seed}.json'
        path.write_text(json.dumps(_summary(seed)))
        paths.append(str(path))
    runs = _load().load_runs(paths)
    assert [r['seed'] for r in runs['paper']] == [0, 1]
    assert runs['paper'][1]['progressive']['stage_ends'][1]['ema'] == 0.8


def test_old_json_is_a_clear_error(tmp_path):
    path = tmp_path / 'old.json'
    path.write_text(json.dumps(dict(modes=dict(paper=dict(top_1={})))))
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(path), '--out', str(tmp_path / 'p')],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert 'no per-run figures' in result.stderr


def test_plot_writes_both_pictures(tmp_path):
    pytest.importorskip('matplotlib')
    path = tmp_path / 's0.json'
    path.write_text(json.dumps(_summary(0)))
    module = _load()
    written = module.plot(module.load_runs([str(path)]), str(tmp_path / 'p'))
    for name in written:
        data = pathlib.Path(name).read_bytes()
        assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 5000
