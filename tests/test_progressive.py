"""Tests for efficientnetv2.train.progressive (Table 6 and SPEC §4.2)."""

import pytest

from efficientnetv2.train.progressive import Stage
from efficientnetv2.train.progressive import StagePlan
from efficientnetv2.train.progressive import build_stage_plan
from efficientnetv2.train.progressive import default_min_image_size

IMAGENET_STEPS = 107_336

# Paper Table 6: (final size, final RandAugment, final mixup, final dropout).
PAPER_TARGETS = {
    's': (300, 15, 0.0, 0.3),
    'm': (380, 20, 0.2, 0.4),
    'l': (380, 25, 0.4, 0.5),
}

# Official code settings: (train size, RandAugment, mixup = cutmix, dropout).
OFFICIAL_TARGETS = {
    's': (300, 10, 0.0, 0.2),
    'm': (384, 15, 0.2, 0.3),
    'l': (384, 20, 0.5, 0.4),
}


def _paper(model, **kwargs):
    size, ram, mixup, dropout = PAPER_TARGETS[model]
    settings = dict(
        num_stages=4,
        total_steps=IMAGENET_STEPS,
        final_image_size=size,
        final_ram=ram,
        final_mixup=mixup,
        final_cutmix=0.0,
        final_dropout=dropout,
    )
    settings.update(kwargs)
    return build_stage_plan(**settings)


def _official(model, **kwargs):
    size, ram, mix, dropout = OFFICIAL_TARGETS[model]
    settings = dict(
        num_stages=4,
        total_steps=IMAGENET_STEPS,
        final_image_size=size,
        final_ram=ram,
        final_mixup=mix,
        final_cutmix=mix,
        final_dropout=dropout,
        mode='official',
    )
    settings.update(kwargs)
    return build_stage_plan(**settings)


def _column(plan, field):
    return [getattr(stage, field) for stage in plan]


@pytest.mark.parametrize(
    'model, sizes, ram, mixup, dropout',
    [
        (
            's',
            [128, 185, 243, 300],
            [5, 25 / 3, 35 / 3, 15],
            [0, 0, 0, 0],
            [0.1, 0.1 + 0.2 / 3, 0.1 + 0.4 / 3, 0.3],
        ),
        (
            'm',
            [128, 212, 296, 380],
            [5, 10, 15, 20],
            [0, 0.2 / 3, 0.4 / 3, 0.2],
            [0.1, 0.2, 0.3, 0.4],
        ),
        (
            'l',
            [128, 212, 296, 380],
            [5, 35 / 3, 55 / 3, 25],
            [0, 0.4 / 3, 0.8 / 3, 0.4],
            [0.1, 0.1 + 0.4 / 3, 0.1 + 0.8 / 3, 0.5],
        ),
    ],
)
def test_paper_mode_matches_table6(model, sizes, ram, mixup, dropout):
    plan = _paper(model)
    assert _column(plan, 'image_size') == sizes
    assert _column(plan, 'ram') == pytest.approx(ram)
    assert _column(plan, 'mixup_alpha') == pytest.approx(mixup)
    assert _column(plan, 'dropout_rate') == pytest.approx(dropout)
    # Table 6 min and max columns are the first and last stage.
    first, last = plan[0], plan[-1]
    assert (first.image_size, first.ram, first.mixup_alpha, first.dropout_rate) == (128, 5, 0, 0.1)
    assert (last.image_size, last.ram, last.mixup_alpha, last.dropout_rate) == pytest.approx(
        PAPER_TARGETS[model]
    )


def test_paper_mode_size_divisor():
    plan = _paper('s', size_divisor=32)
    # 185.3 -> 192, 242.7 -> 256; the last stage stays at the target.
    assert _column(plan, 'image_size') == [128, 192, 256, 300]


@pytest.mark.parametrize(
    'model, sizes, ram, mix',
    [
        ('s', [171, 214, 257, 300], [5, 6.667, 8.333, 10], [0, 0, 0, 0]),
        ('m', [192, 256, 320, 384], [5, 8.333, 11.667, 15], [0, 0.0667, 0.1333, 0.2]),
        ('l', [192, 256, 320, 384], [5, 10, 15, 20], [0, 0.1667, 0.3333, 0.5]),
    ],
)
def test_official_mode_matches_code_table(model, sizes, ram, mix):
    plan = _official(model)
    assert _column(plan, 'image_size') == sizes
    assert _column(plan, 'ram') == pytest.approx(ram, abs=1e-3)
    assert _column(plan, 'mixup_alpha') == pytest.approx(mix, abs=1e-4)
    assert _column(plan, 'cutmix_alpha') == pytest.approx(mix, abs=1e-4)
    # Dropout is not adapted by the official code.
    assert _column(plan, 'dropout_rate') == [OFFICIAL_TARGETS[model][3]] * 4


@pytest.mark.parametrize(
    'train_size, sizes',
    [
        (192, [144, 160, 176, 192]),  # b0, b1
        (208, [148, 168, 188, 208]),  # b2
        (240, [156, 184, 212, 240]),  # b3
    ],
)
def test_official_mode_small_models(train_size, sizes):
    plan = build_stage_plan(4, 1000, train_size, 0, 0, 0, 0.2, mode='official')
    assert _column(plan, 'image_size') == sizes


def test_official_mode_ibase_zero_is_half_the_size():
    plan = build_stage_plan(4, 100, 300, 10, 0, 0, 0.2, min_image_size=0, mode='official')
    assert _column(plan, 'image_size') == [187, 225, 262, 300]


@pytest.mark.parametrize(
    'final, expected',
    [
        (300, 128),
        (192, 128),
        (129, 128),
        (128, 64),
        (64, 32),
        (48, 24),
        (33, 16.5),
    ],
)
def test_default_min_image_size(final, expected):
    assert default_min_image_size(final) == expected
    assert default_min_image_size(final) < final


@pytest.mark.parametrize(
    'final, mode, sizes',
    [
        (300, 'official', [171, 214, 257, 300]),  # 128 when unset.
        (300, 'paper', [128, 185, 243, 300]),
        (64, 'official', [40, 48, 56, 64]),  # Half of 64: int(32 + 32 (i + 1) / 4).
        (64, 'paper', [32, 43, 53, 64]),  # 32 + 32 i / 3, rounded.
        (48, 'paper', [24, 32, 40, 48]),
    ],
)
def test_unset_min_image_size_is_derived(final, mode, sizes):
    plan = build_stage_plan(4, 100, final, 10, 0, 0, 0.2, mode=mode)
    assert _column(plan, 'image_size') == sizes


@pytest.mark.parametrize('num_stages', [0, 1])
def test_min_image_size_is_ignored_without_stages(num_stages):
    plan = build_stage_plan(num_stages, 100, 48, 10, 0, 0, 0.2, min_image_size=128)
    assert _column(plan, 'image_size') == [48]


def test_stage_boundaries_match_tf1_max_steps():
    plan = _official('s')
    assert _column(plan, 'end_step') == [26_834, 53_668, 80_502, 107_336]
    assert _column(plan, 'start_step') == [0, 26_834, 53_668, 80_502]
    assert plan.total_steps == IMAGENET_STEPS


def test_uneven_split_uses_floor_boundaries():
    plan = _paper('s', total_steps=10)
    assert [stage.num_steps for stage in plan] == [2, 3, 2, 3]
    plan = _paper('s', total_steps=7)
    assert [stage.num_steps for stage in plan] == [1, 2, 2, 2]
    assert plan.total_steps == 7


@pytest.mark.parametrize('num_stages', [0, 1])
def test_zero_or_one_stage_is_plain_training(num_stages):
    plan = _paper('m', num_stages=num_stages, total_steps=500)
    assert len(plan) == 1
    (stage,) = plan
    assert stage == Stage(
        index=0,
        start_step=0,
        end_step=500,
        image_size=380,
        ram=20.0,
        mixup_alpha=0.2,
        cutmix_alpha=0.0,
        dropout_rate=0.4,
    )


def test_stage_at_step():
    plan = _paper('s', total_steps=100)
    assert plan.stage_at_step(0).index == 0
    assert plan.stage_at_step(24).index == 0
    assert plan.stage_at_step(25).index == 1
    assert plan.stage_at_step(74).index == 2
    assert plan.stage_at_step(99).index == 3
    assert plan.stage_at_step(100).index == 3  # finished run
    with pytest.raises(ValueError, match='`step`'):
        plan.stage_at_step(-1)


def test_format_table():
    table = _official('m', total_steps=400).format_table()
    lines = table.splitlines()
    assert 'official mode, 4 stages, 400 steps' in lines[0]
    assert lines[1].split() == ['stage', 'steps', 'image', 'randaug', 'mixup', 'cutmix', 'dropout']
    assert lines[3].split() == ['0', '0-100', '192', '5.000', '0.0000', '0.0000', '0.300']
    assert lines[-1].split() == ['3', '300-400', '384', '15.000', '0.2000', '0.2000', '0.300']
    assert len(lines) == 7


def test_plan_is_a_sequence_and_stage_as_dict():
    plan = _paper('s', total_steps=8)
    assert isinstance(plan, StagePlan)
    assert [stage.index for stage in plan] == [0, 1, 2, 3]
    assert plan[1].as_dict()['image_size'] == 185
    assert plan.stages[-1] is plan[-1]


@pytest.mark.parametrize(
    'kwargs, argument',
    [
        ({'mode': 'timm'}, 'mode'),
        ({'num_stages': -1}, 'num_stages'),
        ({'num_stages': 2.5}, 'num_stages'),
        ({'total_steps': 3}, 'total_steps'),
        ({'final_image_size': 0}, 'final_image_size'),
        ({'min_image_size': 400}, 'min_image_size'),
        ({'final_dropout': 1.0}, 'final_dropout'),
        ({'min_ram': -1}, 'min_ram'),
        ({'size_divisor': 0}, 'size_divisor'),
    ],
)
def test_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=f'`{argument}`'):
        _paper('s', **kwargs)


def test_bad_mode_lists_choices():
    with pytest.raises(ValueError, match='paper.*official'):
        _paper('s', mode='fast')


def test_plan_rejects_gaps():
    stage = Stage(0, 5, 10, 128, 5.0, 0.0, 0.0, 0.1)
    with pytest.raises(ValueError, match='contiguous'):
        StagePlan([stage])


def test_augment_pixel_scale_follows_the_plan_mode_and_the_recipe():
    from efficientnetv2 import experiment
    from efficientnetv2.train.progressive import config_augment_pixel_scale

    def scale(dataset, overrides, size):
        config = experiment.build_config('efficientnetv2-b0', dataset, hparam_str=overrides)
        return config_augment_pixel_scale(config, size)

    # Digits recipe (final 32 px): the paper plan scales by stage / final size, the official
    # plan keeps the released constants unless asked, the final size is always 1.
    assert scale('digits', 'train.progressive=paper', 24) == 0.75
    assert scale('digits', 'train.progressive=paper', 32) == 1.0
    assert scale('digits', 'train.progressive=official', 24) == 1.0
    forced = 'train.progressive=official,train.resize_augment_pixels=true'
    assert scale('digits', forced, 24) == 0.75
    assert scale('digits', 'train.progressive=paper,train.resize_augment_pixels=false', 24) == 1.0
    # The released ImageNet recipe keeps them in either mode.
    assert scale('imagenet', 'train.progressive=paper', 128) == 1.0
