"""Training-aware NAS and the Fused-MBConv ablation: space, reward, queue, resume, failures.

Queue, resume and failure tests inject a fake trial function (no training); one test trains a
tiny trial for real on digits at 24 px.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import efficientnetv2
from efficientnetv2 import architectures
from efficientnetv2 import blocks as blocks_lib
from efficientnetv2 import fused_ablation
from efficientnetv2 import summary
from efficientnetv2.nas import search
from efficientnetv2.nas import space as space_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_BACKBONE = (
    'r1_k3_s1_e1_i16_o8_se0.25',
    'r2_k3_s2_e6_i8_o16_se0.25',
    'r1_k5_s2_e6_i16_o24_se0.25',
)


def fake_trial(trial, settings, context):
    """A deterministic stand-in for training: no TensorFlow work at all."""
    arch = trial['arch']
    mode = os.environ.get('NAS_FAKE_MODE', '')
    if mode == 'FAILALL' or ('FAIL' in mode and trial['trial'] == 1):
        raise FloatingPointError('loss is NaN')
    ones = arch.count('c1')
    return dict(
        accuracy=0.5 + 0.01 * ones,
        step_time=1.0 + 0.1 * len(arch) / 10,
        backbone_step_time=1.0,
        params=1000000 + 1000 * trial['trial'],
    )


def _read_json(*parts):
    with open(os.path.join(*parts)) as f:
        return json.load(f)


def settings(tmp_path, **kw):
    kw.setdefault('trials', 6)
    kw.setdefault('settle_s', 0.0)
    return search.Settings(output_dir=str(tmp_path / 'nas'), **kw)


# -- Fused-MBConv ablation ------------------------------------------------------------------


def test_fused_blocks_rule():
    out = fused_ablation.fuse_blocks(architectures.V1_BASE_BLOCKS, 3)
    assert out[:3] == ['r1_k3_s1_e1_i32_o16_c1', 'r2_k3_s2_e6_i16_o24_c1', 'r2_k5_s2_e6_i24_o40_c1']
    assert out[3:] == list(architectures.V1_BASE_BLOCKS[3:])
    with pytest.raises(ValueError, match='num_fused'):
        fused_ablation.fuse_blocks(architectures.V1_BASE_BLOCKS, 8)


@pytest.mark.parametrize(
    'name,trainable,total',
    [
        ('efficientnet-b4-fused1-3', 20945870, 21067086),
        ('efficientnet-b4-fused1-5', 43528144, 43631024),
        ('efficientnet-b4-fused1-7', 132121624, 132191096),
    ],
)
def test_fused_variant_params(name, trainable, total):
    model = efficientnetv2.get_model(name)
    assert summary.count_params(model) == (trainable, total - trainable)
    assert fused_ablation.COMPUTED[name]['trainable'] == trainable
    # Within 0.15M of the paper for the two larger rows; fused1-3 is 0.95M off (documented).
    gap = abs(trainable - fused_ablation.PAPER_TABLE3[name]['params'])
    assert gap < (1.0e6 if name.endswith('1-3') else 0.15e6)


def test_fused_variant_flops_at_small_size():
    # MACs scale with the area for this all-'same' network; 380 px figures are in COMPUTED.
    model = efficientnetv2.get_model('efficientnet-b4-fused1-3')
    flops = summary.count_flops(model, 64)
    assert 0.02 * fused_ablation.COMPUTED['efficientnet-b4-fused1-3']['flops'] < flops


def test_fused_variants_in_config_but_not_listed():
    from efficientnetv2 import experiment

    config = experiment.build_config('efficientnet-b4-fused1-5', 'digits')
    assert config.model.blocks[4] == 'r3_k5_s1_e6_i80_o112_c1'
    assert config.model.width_coefficient == 1.4
    assert 'efficientnet-b4-fused1-5' not in efficientnetv2.list_models()


def test_fused_benchmark_script_runs_interleaved():
    # The two smallest variants at a tiny size, timed in alternating rounds (the default).
    cmd = [
        sys.executable,
        os.path.join(ROOT, 'benchmarks', 'fused_ablation.py'),
        '--variants=efficientnet-b4,efficientnet-b4-fused1-3',
        '--image_size=32',
        '--batch=1',
        '--steps=2',
        '--warmup=1',
        '--no_flops',
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', CUDA_VISIBLE_DEVICES='')
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith('efficientnet')]
    assert [r[0] for r in rows] == ['efficientnet-b4', 'efficientnet-b4-fused1-3']
    assert all(float(r[5]) > 0 for r in rows)  # imgs/s
    assert [r[6:] for r in rows] == [['262', '155'], ['362', '216']]  # Paper TPUv3, V100.


# -- search space -------------------------------------------------------------------------


def test_space_samples_only_valid_models():
    space = space_lib.SearchSpace(architectures.V1_BASE_BLOCKS)
    # Type x kernel x expansion per stage; layers: {1, 2} for the r1 first stage, 3 elsewhere
    # (the last stage is r1 too: {1, 2}).
    assert space.size() == 12**7 * 2 * 3**5 * 2
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(300)]
    archs += [space.mutate(a, rng) for a in archs[:100]]
    for arch in archs:
        assert space.contains(arch)
        strings = space.to_blocks(arch)
        stages = blocks_lib.decode_list(strings)  # Channels chain, options valid.
        for stage, base, choice in zip(stages, space.base, arch):
            assert (stage.strides, stage.input_filters, stage.output_filters) == (
                base.strides,
                base.input_filters,
                base.output_filters,
            )
            assert stage.kernel_size in (3, 5) and stage.expand_ratio in (1, 4, 6)
            assert abs(stage.num_repeat - base.num_repeat) <= 1 and stage.num_repeat >= 1
            assert stage.has_se == (choice.conv_type == 0)
        assert space.from_blocks(strings) == arch
    for arch in archs[:3]:
        model = efficientnetv2.get_model(
            'efficientnet-b0', blocks=space.to_blocks(arch), num_classes=10, input_shape=(16, 16, 3)
        )
        assert model(np.zeros((1, 16, 16, 3), 'float32')).shape == (1, 10)


def test_space_mutation_changes_one_choice_and_rejects_foreign():
    space = space_lib.SearchSpace(TINY_BACKBONE)
    rng = np.random.default_rng(3)
    arch = space.sample(rng)
    child = space.mutate(arch, rng)
    diffs = sum(
        getattr(a, f) != getattr(b, f)
        for a, b in zip(arch, child)
        for f in ('conv_type', 'num_repeat', 'kernel_size', 'expand_ratio')
    )
    assert diffs == 1
    with pytest.raises(ValueError, match='not an architecture'):
        space.from_blocks(['r9_k3_s1_e1_i16_o8', 'r2_k3_s2_e6_i8_o16', 'r1_k5_s2_e6_i16_o24'])


def test_random_archs_reproducible_and_distinct():
    space = space_lib.SearchSpace(TINY_BACKBONE)
    a = space.random_archs(30, seed=7)
    assert a == space.random_archs(30, seed=7)
    assert a[:10] == space.random_archs(10, seed=7)  # Trial i does not depend on the total.
    assert a != space.random_archs(30, seed=8)
    assert len({space_lib.arch_key(x) for x in a}) == 30


# -- reward -------------------------------------------------------------------------------


def test_reward_formula():
    assert search.reward(0.8, 1.0, 1.0) == pytest.approx(0.8)
    assert search.reward(0.8, 2.0, 10.0, -0.07, -0.05) == pytest.approx(
        0.8 * 2.0**-0.07 * 10.0**-0.05
    )
    assert search.reward(0.8, 2.0, 10.0) == pytest.approx(0.6792, abs=1e-4)  # 0.8 x 0.9526 x 0.8913
    # Slower or bigger at equal accuracy scores lower.
    assert search.reward(0.8, 1.5, 5.0) < search.reward(0.8, 1.0, 5.0)
    assert search.reward(0.8, 1.0, 50.0) < search.reward(0.8, 1.0, 5.0)
    with pytest.raises(ValueError):
        search.reward(0.8, 0.0, 5.0)


# -- step-time normalisation ----------------------------------------------------------------


class LoadedMachine:
    """A fake clock and steps: a step costs `work * load`; the load moves with every backbone step.

    (A load that changes slowly compared with one round: both steps of a round see the same.)
    """

    def __init__(self, loads):
        self.now = 0.0
        self.loads = loads  # The load from the n-th backbone step on.
        self.calls = []

    def timer(self):
        return self.now

    def step(self, name, work):
        def run():
            self.calls.append(name)
            n = self.calls.count('b')
            self.now += work * self.loads[min(n, len(self.loads) - 1)]

        return run


def test_interleaved_timing_cancels_a_changing_load():
    # The load goes up and down while the steps run. Interleaved, both steps of a round see
    # the same load, so the ratio of the medians is the true 1.2.
    loads = [1.0, 1.0, 1.0, 3.0, 3.0, 0.4, 0.4, 0.4, 2.0, 2.0, 2.0, 5.0, 1.0]
    machine = LoadedMachine(loads)
    backbone, trial = machine.step('b', 1.0), machine.step('t', 1.2)
    b, t = search.interleaved_step_times([backbone, trial], steps=9, warmup=2, timer=machine.timer)
    assert machine.calls == ['b', 'b', 't', 't'] + ['b', 't'] * 9
    assert t / b == pytest.approx(1.2)
    # Timed one after the other (the old once-per-process backbone), the load change biases it.
    machine = LoadedMachine([1.0] * 4 + [0.4] * 20)
    (b_alone,) = search.interleaved_step_times([machine.step('b', 1.0)], 3, 0, machine.timer)
    (t_alone,) = search.interleaved_step_times([machine.step('t', 1.2)], 3, 0, machine.timer)
    assert t_alone / b_alone == pytest.approx(1.2 * 0.4)


def test_each_trial_is_normalised_by_its_own_backbone_timing(tmp_path):
    # A load that grows trial by trial; every trial times the (cached) backbone step again
    # within its own rounds, and its record keeps that backbone time.
    machine = LoadedMachine([1.0 + i for i in range(100)])
    builds = []

    def trial_fn(trial, st, context):
        context.timer = machine.timer
        work = 1.0 + 0.1 * trial['trial']

        def build():
            builds.append(trial['trial'])
            return machine.step('b', 1.0)

        step, backbone = search.time_against_backbone(
            context, machine.step('t', work), 'cpu-key', build
        )
        return dict(accuracy=0.5, step_time=step, backbone_step_time=backbone, params=10**6)

    s = settings(tmp_path, trials=4, timing_steps=3, timing_warmup=1)
    records = search.run(s, trial_fn)
    assert builds == [0]  # The backbone step is built once per process ...
    assert machine.calls.count('b') == 4 * (1 + 3)  # ... and timed in every trial.
    backbones = [r['backbone_step_time'] for r in records]
    assert backbones == sorted(backbones) and backbones[0] < backbones[-1]  # Load grew.
    for r in records:
        assert r['step_time_ratio'] == pytest.approx(1.0 + 0.1 * r['trial'])
        assert r['step_time_ratio'] == r['step_time'] / r['backbone_step_time']
    table = _read_json(s.output_dir, 'results.json')
    assert [r['backbone_step_time'] for r in table] == backbones
    with open(os.path.join(s.output_dir, 'results.csv')) as f:
        assert 'backbone_step_time' in f.readline()


def test_backbone_step_cache_key():
    context = search.TrialContext(search.Settings(output_dir='unused'), None)
    built = []

    def build():
        built.append(1)
        return object()

    assert context.backbone_step('k', build) is context.backbone_step('k', build)
    context.backbone_step('other', build)
    context.backbone_step(None, build)  # TPU: never cached.
    context.backbone_step(None, build)
    assert len(built) == 4


# -- search hygiene -----------------------------------------------------------------------


def test_search_resume_skips_finished_trials(tmp_path):
    s = settings(tmp_path, backbone='efficientnet-b0')
    first = search.run(s, fake_trial, max_trials=2)  # "Killed" after two trials.
    assert [r['trial'] for r in first] == [0, 1]
    calls = []

    def counting(trial, st, ctx):
        calls.append(trial['trial'])
        return fake_trial(trial, st, ctx)

    rest = search.run(s, counting)
    assert calls == [2, 3, 4, 5]
    assert [r['trial'] for r in rest] == [2, 3, 4, 5]
    table = _read_json(s.output_dir, 'results.json')
    assert [r['trial'] for r in table] == list(range(6))
    # Same seed: the same architectures as an uninterrupted search.
    s2 = settings(tmp_path / 'other', backbone='efficientnet-b0')
    again = search.run(s2, fake_trial)
    assert [r['arch'] for r in again] == [r['arch'] for r in table]
    with open(os.path.join(s.output_dir, 'results.csv')) as f:
        csv_text = f.read()
    assert csv_text.splitlines()[0].startswith('trial,status,reward')
    best = _read_json(s.output_dir, 'best.json')
    assert best[0]['reward'] == max(r['reward'] for r in table)
    model = efficientnetv2.get_model('efficientnet-b0', blocks=best[0]['blocks'])
    assert model.count_params() > 0


def test_dead_local_claim_is_taken_over(tmp_path):
    s = settings(tmp_path, trials=2)
    store = search.TrialStore(s.output_dir, s)
    os.makedirs(store.trial_dir(0), exist_ok=True)
    dead = subprocess.run(
        [sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True
    ).stdout.strip()
    with open(os.path.join(store.trial_dir(0), 'claim'), 'w') as f:
        json.dump(dict(owner='x', host=store.host, pid=int(dead), time=0), f)
    assert store.try_claim(0)
    assert not search.TrialStore(s.output_dir, s).try_claim(0)  # Now ours, alive.


def test_failing_trial_is_recorded_not_fatal(tmp_path, monkeypatch):
    monkeypatch.setenv('NAS_FAKE_MODE', 'FAIL')
    s = settings(tmp_path, trials=3)
    records = search.run(s, fake_trial)
    assert [r['status'] for r in records] == ['ok', 'failed', 'ok']
    assert 'FloatingPointError: loss is NaN' in records[1]['error']
    assert records[1]['reward'] is None
    assert search.run(s, fake_trial) == []  # Failed trials count as finished on resume.
    assert '1 failed' in search.format_best(
        search.TrialStore(s.output_dir, s).results(), s.backbone
    )


def _nas_command(*args, fake_mode=''):
    """Runs `python -m efficientnetv2.nas` with the fake trial; returns the CompletedProcess."""
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, 'tests')]),
        TF_CPP_MIN_LOG_LEVEL='2',
        CUDA_VISIBLE_DEVICES='',
        NAS_FAKE_MODE=fake_mode,
    )
    cmd = [sys.executable, '-m', 'efficientnetv2.nas', '--trial_fn=test_nas:fake_trial']
    cmd += ['--settle_s=0'] + list(args)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    'flag, message',
    [
        ('--dataset_cfg=digitz', 'digitz'),
        ('--hparam_str=train.batch_sise=8', 'train.batch_size'),
        ('--hparam_str=train.batch_size=0', 'train.batch_size must be an integer > 0'),
    ],
)
def test_settings_that_cannot_work_are_refused_before_the_first_trial(flag, message, tmp_path):
    out = tmp_path / 'nas'
    done = _nas_command(f'--output_dir={out}', '--trials=2', flag)
    assert done.returncode == 2, done.stderr[-3000:]
    assert message in done.stderr and 'Traceback' not in done.stderr
    assert not out.exists()  # Nothing written: the corrected command starts clean.
    key, _, value = flag[2:].partition('=')
    with pytest.raises(ValueError, match=message):  # The same check in the Python API.
        search.run(settings(tmp_path / 'api', **{key: value}), fake_trial)
    assert not (tmp_path / 'api').exists()


def test_every_trial_failed_exits_1_and_retry_failed_runs_them_again(tmp_path, monkeypatch):
    out = tmp_path / 'nas'
    args = (f'--output_dir={out}', '--trials=3')
    done = _nas_command(*args, fake_mode='FAILALL')
    assert done.returncode == 1, done.stderr[-3000:]
    assert 'Every trial failed (3)' in done.stderr and '--retry_failed' in done.stderr
    assert '3 trials finished, 3 failed.' in done.stdout
    # The cause is gone, but a plain rerun skips finished trials, failed ones too.
    assert _nas_command(*args).returncode == 1
    done = _nas_command(*args, '--retry_failed')
    assert done.returncode == 0, done.stderr[-3000:]
    table = _read_json(out, 'results.json')
    assert [(r['trial'], r['status']) for r in table] == [(0, 'ok'), (1, 'ok'), (2, 'ok')]
    failed = _read_json(out, 'trials', '000001', 'failed-result.json')
    assert failed['status'] == 'failed' and 'loss is NaN' in failed['error']
    # One failure among successes: a warning in the summary, exit 0; retried once more.
    s = settings(tmp_path / 'api', trials=3)
    monkeypatch.setenv('NAS_FAKE_MODE', 'FAIL')
    assert [r['status'] for r in search.run(s, fake_trial)] == ['ok', 'failed', 'ok']
    monkeypatch.delenv('NAS_FAKE_MODE')
    assert [r['trial'] for r in search.run(s, fake_trial, retry_failed=True)] == [1]
    assert all(r['status'] == 'ok' for r in search.TrialStore(s.output_dir, s).results())


def test_image_size_16_or_less_is_refused(tmp_path):
    # train.image_size <= 16 is a fraction of the eval size: 16 would train at 256 px.
    with pytest.raises(ValueError, match='image_size must be > 16'):
        search.run(settings(tmp_path, trials=1, image_size=16), fake_trial)


def test_resume_with_other_settings_is_refused(tmp_path):
    search.run(settings(tmp_path, trials=1), fake_trial)
    with pytest.raises(ValueError, match='seed'):
        search.run(settings(tmp_path, trials=1, seed=3), fake_trial)


def test_evolution_mutates_good_parents(tmp_path):
    s = settings(tmp_path, trials=8, search='evolution', population=4, tournament=2)
    records = search.run(s, fake_trial)
    assert len(records) == 8 and all(r['status'] == 'ok' for r in records)
    assert len({r['arch'] for r in records}) == 8


def test_two_workers_split_trials_without_overlap(tmp_path):
    out = str(tmp_path / 'nas')
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, 'tests')]),
        TF_CPP_MIN_LOG_LEVEL='2',
        CUDA_VISIBLE_DEVICES='',
    )
    cmd = [
        sys.executable,
        '-m',
        'efficientnetv2.nas',
        '--output_dir=' + out,
        '--trials=12',
        '--trial_fn=test_nas:fake_trial',
        '--workers=2',
        '--settle_s=0',
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = _read_json(out, 'results.json')
    assert [r['trial'] for r in table] == list(range(12))
    owners = {r['owner'] for r in table}
    assert len(owners) == 2, owners  # Both workers ran trials ...
    claims = [_read_json(out, 'trials', f'{i:06d}', 'claim')['owner'] for i in range(12)]
    assert claims == [r['owner'] for r in table]  # ... each trial run by its one claimant.
    assert 'efficientnetv2.get_model(' in proc.stdout


def test_real_trial_on_digits(tmp_path):
    s = settings(
        tmp_path,
        trials=1,
        epochs=0.05,
        image_size=24,
        timing_steps=2,
        timing_warmup=1,
        backbone='efficientnetv2-b0',
        hparam_str='train.batch_size=32,eval.batch_size=120,eval.steps=1,model.feature_size=32',
    )
    (record,) = search.run(s, search.train_trial)
    assert record['status'] == 'ok', record['error']
    assert 0.0 <= record['accuracy'] <= 1.0
    assert record['step_time_ratio'] > 0 and record['params'] > 1000
    assert record['backbone_step_time'] > 0
    assert record['step_time_ratio'] == pytest.approx(
        record['step_time'] / record['backbone_step_time']
    )
    assert record['reward'] == pytest.approx(
        search.reward(record['accuracy'], record['step_time_ratio'], record['params'] / 1e6)
    )
    assert not [
        f
        for f in os.listdir(os.path.join(s.output_dir, 'trials', '000000', 'model'))
        if f.startswith('ckpt-')
    ]


def test_remote_claim_by_rename_has_one_owner(tmp_path, monkeypatch):
    """The claim protocol of a non-local --output_dir (gs://): the claim is written under a
    temporary name, renamed onto `claim` without overwrite through tf.io.gfile, read back after
    `settle_s`, and only its owner runs the trial. Offline, the same gfile calls run on a local
    directory that the store is told is remote (TensorFlow's in-memory ram:// file system
    reports a path as existing when another path starts with it, so it cannot stand in)."""
    monkeypatch.setattr(search, '_is_local', lambda path: False)
    s = settings(tmp_path, trials=2, settle_s=0.01)
    first, second = search.TrialStore(s.output_dir, s), search.TrialStore(s.output_dir, s)
    assert first.owner != second.owner
    assert first.try_claim(0)
    assert not second.try_claim(0)  # The rename finds the claim there and fails.
    assert second.try_claim(1)
    assert _read_json(first.trial_dir(0), 'claim')['owner'] == first.owner
    # No temporary claim file is left behind, by the winner or the loser.
    assert sorted(os.listdir(first.trial_dir(0))) == ['claim']
