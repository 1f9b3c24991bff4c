"""Architecture fidelity: exact parameter counts, stage tables, FLOPs, layers and serialization."""

import inspect
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import efficientnetv2
from efficientnetv2 import architectures
from efficientnetv2 import blocks
from efficientnetv2 import config as config_lib
from efficientnetv2 import convert
from efficientnetv2 import layers
from efficientnetv2 import model as model_lib
from efficientnetv2 import summary

# Trainable counts that keras.applications and timm agree on; totals add BN moving statistics
# (they equal the official code's own count_params() assertions, V1-B3 with the 10% rule).
PARAMS = {
    'efficientnetv2-s': (21458488, 21612360),
    'efficientnetv2-m': (54139356, 54431388),
    'efficientnetv2-l': (118515272, 119027848),
    'efficientnetv2-xl': (208119808, 208896832),
    'efficientnetv2-b0': (7139704, 7200312),
    'efficientnetv2-b1': (8141052, 8212124),
    'efficientnetv2-b2': (10096086, 10178374),
    'efficientnetv2-b3': (14358406, 14467622),
    'efficientnet-b0': (5288548, 5330564),
    'efficientnet-b1': (7794184, 7856232),
    'efficientnet-b2': (9109994, 9177562),
    'efficientnet-b3': (12233232, 12320528),
    'efficientnet-b4': (19341616, 19466816),
    'efficientnet-b5': (30389784, 30562520),
    'efficientnet-b6': (43040704, 43265136),
    'efficientnet-b7': (66347960, 66658680),
    'efficientnet-b8': (87413142, 87793174),
    'efficientnet-l2': (480309308, 481399996),
}

# SPEC §1.5: stem, per-stage (in, out, repeats), head after width/depth rounding.
STAGES = {
    'efficientnetv2-b0': (
        32,
        [(32, 16, 1), (16, 32, 2), (32, 48, 2), (48, 96, 3), (96, 112, 5), (112, 192, 8)],
        1280,
    ),
    'efficientnetv2-b1': (
        32,
        [(32, 16, 2), (16, 32, 3), (32, 48, 3), (48, 96, 4), (96, 112, 6), (112, 192, 9)],
        1280,
    ),
    'efficientnetv2-b2': (
        32,
        [(32, 16, 2), (16, 32, 3), (32, 56, 3), (56, 104, 4), (104, 120, 6), (120, 208, 10)],
        1408,
    ),
    'efficientnetv2-b3': (
        40,
        [(40, 16, 2), (16, 40, 3), (40, 56, 3), (56, 112, 5), (112, 136, 7), (136, 232, 12)],
        1536,
    ),
    'efficientnetv2-s': (
        24,
        [(24, 24, 2), (24, 48, 4), (48, 64, 4), (64, 128, 6), (128, 160, 9), (160, 256, 15)],
        1280,
    ),
    'efficientnetv2-m': (
        24,
        [
            (24, 24, 3),
            (24, 48, 5),
            (48, 80, 5),
            (80, 160, 7),
            (160, 176, 14),
            (176, 304, 18),
            (304, 512, 5),
        ],
        1280,
    ),
    'efficientnetv2-l': (
        32,
        [
            (32, 32, 4),
            (32, 64, 7),
            (64, 96, 7),
            (96, 192, 10),
            (192, 224, 19),
            (224, 384, 25),
            (384, 640, 7),
        ],
        1280,
    ),
    'efficientnetv2-xl': (
        32,
        [
            (32, 32, 4),
            (32, 64, 8),
            (64, 96, 8),
            (96, 192, 16),
            (192, 256, 24),
            (256, 512, 32),
            (512, 640, 8),
        ],
        1280,
    ),
    'efficientnet-b0': (
        32,
        [
            (32, 16, 1),
            (16, 24, 2),
            (24, 40, 2),
            (40, 80, 3),
            (80, 112, 3),
            (112, 192, 4),
            (192, 320, 1),
        ],
        1280,
    ),
    'efficientnet-b3': (
        40,
        [
            (40, 24, 2),
            (24, 32, 3),
            (32, 48, 3),
            (48, 96, 5),
            (96, 136, 5),
            (136, 232, 6),
            (232, 384, 2),
        ],
        1536,
    ),
    'efficientnet-b7': (
        64,
        [
            (64, 32, 4),
            (32, 48, 7),
            (48, 80, 7),
            (80, 160, 10),
            (160, 224, 10),
            (224, 384, 13),
            (384, 640, 4),
        ],
        2560,
    ),
    'efficientnet-l2': (
        136,
        [
            (136, 72, 6),
            (72, 104, 11),
            (104, 176, 11),
            (176, 344, 16),
            (344, 480, 16),
            (480, 824, 22),
            (824, 1376, 6),
        ],
        5504,
    ),
}

TINY_BLOCKS = [
    'r1_k3_s1_e1_i16_o8_c1',
    'r2_k3_s2_e4_i8_o16_c1',
    'r2_k3_s2_e4_i16_o24_se0.25',
    'r1_k3_s2_e6_i24_o32_se0.25',
    'r1_k3_s2_e6_i32_o40_se0.25',
]


def tiny_model(**kwargs):
    args = dict(blocks=TINY_BLOCKS, feature_size=64, num_classes=5, model_name='tiny')
    args.update(kwargs)
    return efficientnetv2.EfficientNet(**args)


@pytest.mark.parametrize('name', list(PARAMS))
def test_parameter_counts_are_exact(name):
    model = efficientnetv2.get_model(name)
    trainable, non_trainable = summary.count_params(model)
    assert (trainable, trainable + non_trainable) == PARAMS[name]
    assert model.output_shape == (None, 1000)
    assert model.name == name


def test_list_models_names_every_variant():
    assert efficientnetv2.list_models() == list(PARAMS)


@pytest.mark.parametrize('name', list(STAGES))
def test_resolved_stage_table(name):
    variant = architectures.get_variant(name)
    stem, expected, head = STAGES[name]
    v1 = variant.is_v1
    stages = blocks.scale_stages(
        blocks.decode_list(variant.blocks),
        variant.width_coefficient,
        variant.depth_coefficient,
        ten_percent_rule=v1,
    )
    assert [(s.input_filters, s.output_filters, s.num_repeat) for s in stages] == expected

    def width(f):
        return blocks.round_filters(f, variant.width_coefficient, ten_percent_rule=v1)

    assert width(variant.blocks and blocks.decode(variant.blocks[0]).input_filters) == stem
    assert width(1280) == head


def test_ten_percent_rule_only_changes_v1_b3():
    # 16 x 1.2 = 19.2 rounds to 16 (< 90%), so the V1 rule bumps it to 24; V2 keeps 16.
    assert blocks.round_filters(16, 1.2, ten_percent_rule=True) == 24
    assert blocks.round_filters(16, 1.2, ten_percent_rule=False) == 16
    without = efficientnetv2.get_model('efficientnet-b3', round_filters_10pct=False)
    assert summary.count_params(without)[0] == 12227212


@pytest.mark.parametrize(
    'name', ['efficientnetv2-b0', 'efficientnetv2-s', 'efficientnet-b0', 'efficientnet-b3']
)
def test_batch_norm_statistics_match_keras_applications(name):
    variant = architectures.get_variant(name)
    source = getattr(keras.applications, variant.keras_name)(weights=None)
    keras_stats = sum(
        int(np.prod(w.shape)) for w in source.non_trainable_weights if 'moving_' in w.path
    )
    keras_trainable = sum(int(np.prod(w.shape)) for w in source.trainable_weights)
    ours = efficientnetv2.get_model(name)
    assert summary.count_params(ours) == (keras_trainable, keras_stats)


# Multiply-adds of the traced inference graph, exact; the papers round them to 8.4B, 0.72B and
# 0.39B (V2 paper Table 7, V1 paper Table 2).
FLOPS = {
    ('efficientnetv2-s', 384): 8365617152,
    ('efficientnetv2-b0', 224): 718086176,
    ('efficientnet-b0', 224): 385814752,
}
PUBLISHED_GFLOPS = {
    'efficientnetv2-s': '8.4',
    'efficientnetv2-b0': '0.72',
    'efficientnet-b0': '0.39',
}


@pytest.mark.parametrize('name,size', list(FLOPS))
def test_flops_are_exact(name, size):
    macs = summary.count_flops(efficientnetv2.get_model(name), size)
    assert macs == FLOPS[name, size]
    published = PUBLISHED_GFLOPS[name]  # Agrees to the digits the paper prints.
    digits = len(published.split('.')[1])
    assert f'{macs / 1e9:.{digits}f}' == published


def test_summary_command_prints_exact_counts():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
    result = subprocess.run(
        [
            sys.executable,
            '-m',
            'efficientnetv2.summary',
            '--model_name=efficientnetv2-b0',
            '--image_size=224',
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [
        line.split() for line in result.stdout.splitlines() if line.startswith('efficientnetv2-b0')
    ]
    assert rows == [['efficientnetv2-b0', '224', '7,139,704', '7,200,312', '718,086,176']]


def test_softmax_head_is_the_softmax_of_the_logits():
    logits_model = tiny_model(num_classes=7)
    probs_model = tiny_model(num_classes=7, classifier_activation='softmax')
    probs_model.set_weights(logits_model.get_weights())
    x = tf.random.stateless_uniform([3, 40, 40, 3], seed=(1, 2), minval=-1, maxval=1)
    logits = logits_model(x, training=False).numpy()
    probs = probs_model(x, training=False).numpy()
    assert probs.dtype == np.float32 and np.std(logits) > 1e-3
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probs, tf.nn.softmax(logits).numpy(), rtol=1e-5, atol=1e-7)
    named = efficientnetv2.get_model('efficientnetv2-b0', classifier_activation='softmax')
    assert named.get_layer('predictions').get_config()['activation'] == 'softmax'


def test_model_defaults_have_one_source():
    signature = inspect.signature(efficientnetv2.EfficientNet.__init__).parameters
    defaults = model_lib.DEFAULT_MODEL_HPARAMS
    assert defaults['blocks'] == [] and 'include_top' not in defaults
    for key, value in defaults.items():
        if key != 'blocks':
            assert signature[key].default == value, key
    # The run config, get_model and the keras.applications fingerprints read the same values.
    assert defaults.items() <= config_lib.default_config().model.as_dict().items()
    get_model_args = inspect.signature(efficientnetv2.get_model).parameters
    assert get_model_args['num_classes'].default == defaults['num_classes']
    b0 = convert.variant_fingerprint(architectures.get_variant('efficientnetv2-b0'))
    assert b0.head_filters == defaults['feature_size'] == 1280
    # The built model's config holds every default it was not given.
    config = tiny_model().get_config()
    given = ('blocks', 'feature_size', 'num_classes', 'model_name')
    assert {k: config[k] for k in defaults if k not in given} == {
        k: v for k, v in defaults.items() if k not in given
    }


def test_survival_probability_decreases_linearly():
    model = efficientnetv2.get_model('efficientnetv2-b0')
    probs = [layer.survival_prob for layer in model.layers if layer.name.startswith('block')]
    n = len(probs)
    assert n == 21
    assert probs[0] == 1.0
    np.testing.assert_allclose(probs, [1 - 0.2 * i / n for i in range(n)])
    assert probs[-1] == pytest.approx(1 - 0.2 * 20 / 21)
    off = efficientnetv2.get_model('efficientnetv2-b0', survival_prob=None)
    assert all(layer.drop_path is None for layer in off.layers if layer.name.startswith('block'))


def test_feature_extractor_endpoints_have_strides_and_channels():
    extractor = efficientnetv2.get_feature_extractor('efficientnetv2-s')
    outputs = extractor(tf.zeros([2, 64, 64, 3]))
    shapes = {k: tuple(v.shape) for k, v in outputs.items()}
    assert shapes == {
        'reduction_1': (2, 32, 32, 24),
        'reduction_2': (2, 16, 16, 48),
        'reduction_3': (2, 8, 8, 64),
        'reduction_4': (2, 4, 4, 160),
        'reduction_5': (2, 2, 2, 256),
    }
    model = efficientnetv2.get_model('efficientnetv2-s')
    names = model.endpoint_names
    # SPEC §1.12: the reduction blocks of V2-S are global indices 1, 5, 9, 24, 39.
    block_names = [layer.name for layer in model.layers if layer.name.startswith('block')]
    assert [block_names.index(n) for n in names] == [1, 5, 9, 24, 39]


def test_v1_endpoints_end_each_stage_group():
    extractor = efficientnetv2.get_feature_extractor('efficientnet-b0')
    outputs = extractor(tf.zeros([1, 64, 64, 3]))
    assert [outputs[f'reduction_{k}'].shape[-1] for k in range(1, 6)] == [16, 24, 40, 112, 320]


def test_any_input_size_runs_the_same_weights():
    model = tiny_model()
    for size in (32, 48, 67):
        assert model(tf.zeros([1, size, size, 3])).shape == (1, 5)


def test_include_top_false_and_pooling():
    model = efficientnetv2.get_model('efficientnetv2-b0', include_top=False)
    assert model(tf.zeros([1, 64, 64, 3])).shape == (1, 2, 2, 1280)
    pooled = efficientnetv2.get_model('efficientnetv2-b0', include_top=False, pooling='avg')
    assert pooled.output_shape == (None, 1280)
    with pytest.raises(ValueError, match='pooling'):
        efficientnetv2.get_model('efficientnetv2-b0', include_top=False, pooling='mean')


def test_constructors_and_overrides():
    model = efficientnetv2.EfficientNetV2B0(
        num_classes=10, dropout_rate=0.5, act_fn='relu', bn_momentum=0.99
    )
    assert model.output_shape == (None, 10)
    assert model.dropout_rate == 0.5
    assert model.get_layer('stem').act_fn == 'relu'
    assert model.get_layer('stem').bn.momentum == 0.99
    assert efficientnetv2.EfficientNetB0.__name__ == 'EfficientNetB0'
    # keras' `classes=` is an alias of `num_classes`.
    assert efficientnetv2.EfficientNetV2B0(classes=3).output_shape == (None, 3)
    with pytest.raises(ValueError, match='num_classes or its alias classes'):
        efficientnetv2.EfficientNetV2B0(classes=3, num_classes=4)


def test_constructor_docstrings_state_the_differences_from_keras():
    doc = efficientnetv2.EfficientNetV2S.__doc__
    assert 'keras.applications.EfficientNetV2S' in doc
    for fragment in (
        "defaults to None (random initialisation), not 'imagenet'",
        'The output is logits',
        'no input scaling inside the model',
        '(x - 128) / 128',
        '`classes=`',
    ):
        assert fragment in doc, fragment
    assert 'ImageNet mean' in efficientnetv2.EfficientNetB0.__doc__
    assert 'not available for this variant' in efficientnetv2.EfficientNetL2.__doc__


def test_dropout_rate_can_change_between_traces():
    model = tiny_model(dropout_rate=0.0)
    head = keras.Model(model.inputs, model.get_layer('top_dropout').output)
    x = tf.random.uniform([32, 32, 32, 3])

    def zero_fraction():  # A fresh trace, as each progressive stage makes.
        return float(
            tf.reduce_mean(tf.cast(tf.function(lambda: head(x, training=True))() == 0, tf.float32))
        )

    assert zero_fraction() < 0.05
    model.dropout_rate = 0.5
    assert model.get_config()['dropout_rate'] == 0.5
    assert 0.35 < zero_fraction() < 0.65


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(ValueError, match='efficientnetv2-s.*efficientnet-l2'):
        efficientnetv2.get_model('efficientnetv2-q')


def test_unknown_override_names_close_keys():
    with pytest.raises(KeyError, match='dropout_rate'):
        efficientnetv2.get_model('efficientnetv2-b0', droput_rate=0.1)


def test_unknown_activation_is_named():
    with pytest.raises(ValueError, match="act_fn='swishy'"):
        efficientnetv2.get_model('efficientnetv2-b0', act_fn='swishy')


@pytest.mark.parametrize('name', architectures.list_models())
def test_block_strings_round_trip(name):
    for text in architectures.get_variant(name).blocks:
        assert blocks.encode(blocks.decode(text)) == text


@pytest.mark.parametrize(
    'bad,fragment',
    [
        ('r2_k3_s1_e1_i24', 'missing option'),
        ('r2_k3_s1_e1_i24_o24_x5', 'unknown option'),
        ('r2_k3_s1_e1_i24_o24_c7', 'block type c7'),
        ('r2_k3_sx_e1_i24_o24', 'malformed option'),
        ('r2_k3_s1_e1_i24_o24_se1.5', 'se ratio'),
        ('r2_k3_s1_r3_e1_i24_o24', 'given twice'),
        ('r0_k3_s1_e1_i24_o24', 'num_repeat must be >= 1'),
    ],
)
def test_malformed_block_strings_are_quoted(bad, fragment):
    with pytest.raises(ValueError, match=fragment) as info:
        blocks.decode(bad)
    assert repr(bad) in str(info.value)


def test_stage_channel_mismatch_is_reported():
    with pytest.raises(ValueError, match='do not match'):
        blocks.decode_list(['r1_k3_s1_e1_i32_o16', 'r1_k3_s2_e6_i24_o24'])
    with pytest.raises(ValueError, match='Block string'):
        efficientnetv2.EfficientNet(blocks=['r1_k3_s1_e1_i32'])


def test_v1_two_digit_strides_are_read():
    assert blocks.decode('r2_k3_s22_e6_i16_o24_se0.25').strides == 2


def test_fused_batch_norm_matches_keras_batch_norm():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(2.0, 3.0, size=(8, 5, 5, 6)), tf.float32)
    ours = layers.BatchNorm(momentum=0.9, epsilon=1e-3)
    ref = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3)
    ours.build(x.shape)
    ref.build(x.shape)
    values = [
        rng.uniform(0.5, 1.5, 6),
        rng.normal(size=6),
        rng.normal(size=6),
        rng.uniform(0.5, 2.0, 6),
    ]
    for layer in (ours, ref):
        for variable, value in zip(
            (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance), values
        ):
            variable.assign(value)
    np.testing.assert_allclose(ours(x, training=False), ref(x, training=False), atol=1e-5)

    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y_ours = ours(x, training=True)
        y_ref = ref(x, training=True)
        loss_ours = tf.reduce_sum(y_ours * tf.range(6, dtype=tf.float32))
        loss_ref = tf.reduce_sum(y_ref * tf.range(6, dtype=tf.float32))
    np.testing.assert_allclose(y_ours, y_ref, atol=1e-4)
    np.testing.assert_allclose(tape.gradient(loss_ours, x), tape.gradient(loss_ref, x), atol=1e-4)
    np.testing.assert_allclose(
        tape.gradient(loss_ours, ours.gamma), tape.gradient(loss_ref, ref.gamma), atol=1e-3
    )
    np.testing.assert_allclose(ours.moving_mean, ref.moving_mean, atol=1e-5)
    # Moving variance takes the unbiased batch variance (TF1 fused BN), keras the biased one.
    n = 8 * 5 * 5
    batch_var = np.var(x.numpy(), axis=(0, 1, 2))
    prior = (ref.moving_variance.numpy() - 0.1 * batch_var) / 0.9
    np.testing.assert_allclose(
        ours.moving_variance, 0.9 * prior + 0.1 * batch_var * n / (n - 1), rtol=1e-5
    )


def test_stochastic_depth_drops_whole_examples_in_training_only():
    layer = layers.StochasticDepth(0.5, seed=1)
    x = tf.ones([400, 2, 2, 3])
    np.testing.assert_array_equal(layer(x, training=False), x)
    y = layer(x, training=True).numpy()
    per_example = y.reshape(400, -1)
    assert set(np.unique(per_example)) <= {0.0, 2.0}
    assert (per_example.min(axis=1) == per_example.max(axis=1)).all()
    assert 0.4 < (per_example[:, 0] == 0).mean() < 0.6
    with pytest.raises(ValueError, match='survival_prob'):
        layers.StochasticDepth(0.0)


def test_keras_file_round_trip(tmp_path):
    model = tiny_model(survival_prob=0.8, headbias=-1.0)
    x = tf.random.uniform([2, 40, 40, 3])
    expected = model(x, training=False)
    path = os.path.join(tmp_path, 'm.keras')
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, efficientnetv2.EfficientNet)
    np.testing.assert_array_equal(loaded(x, training=False), expected)
    assert loaded.get_config() == model.get_config()
    features = model.feature_extractor()
    features.save(os.path.join(tmp_path, 'f.keras'))
    reloaded = keras.models.load_model(os.path.join(tmp_path, 'f.keras'))
    np.testing.assert_array_equal(reloaded(x)['reduction_5'], features(x)['reduction_5'])


def test_layers_serialize_with_their_arguments():
    block = layers.MBConvBlock(
        16,
        16,
        kernel_size=5,
        strides=1,
        expand_ratio=6,
        se_ratio=0.25,
        survival_prob=0.9,
        act_fn='relu',
        bn_momentum=0.99,
        bn_epsilon=1e-4,
        sync_bn=True,
        fused_bn=False,
        conv_dropout=0.1,
        name='b',
    )
    clone = layers.MBConvBlock.from_config(block.get_config())
    assert clone.get_config() == block.get_config()
    serialized = keras.saving.serialize_keras_object(block)
    assert serialized['registered_name'] == 'efficientnetv2>MBConvBlock'
