"""Weight loading: official TF1 checkpoints, project checkpoints, .keras and .weights.h5 files.

The official checkpoints are written here from the naming rules of the official code (SPEC
§8.1), generated from block strings independently of this package's layer names, and checked
against a forward pass rebuilt directly from the checkpoint tensors.
"""

import logging
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import efficientnetv2
from efficientnetv2 import _copier
from efficientnetv2 import weights as weights_lib

SIZE = 32
# SPEC §1.2 base block lists.
V2_BASE = [
    'r1_k3_s1_e1_i32_o16_c1',
    'r2_k3_s2_e4_i16_o32_c1',
    'r2_k3_s2_e4_i32_o48_c1',
    'r3_k3_s2_e4_i48_o96_se0.25',
    'r5_k3_s1_e6_i96_o112_se0.25',
    'r8_k3_s2_e6_i112_o192_se0.25',
]
V1_BASE = [
    'r1_k3_s11_e1_i32_o16_se0.25',
    'r2_k3_s22_e6_i16_o24_se0.25',
    'r2_k5_s22_e6_i24_o40_se0.25',
    'r3_k3_s22_e6_i40_o80_se0.25',
    'r3_k5_s11_e6_i80_o112_se0.25',
    'r4_k5_s22_e6_i112_o192_se0.25',
    'r1_k3_s11_e6_i192_o320_se0.25',
]
# name: (blocks, width, depth, 10% rounding rule)
ARCHS = {
    'efficientnetv2-b0': (V2_BASE, 1.0, 1.0, False),
    'efficientnet-b0': (V1_BASE, 1.0, 1.0, True),
}
# A two-block network (a Fused-MBConv and an MBConv with SE) for fast official-format tests.
TINY_OFFICIAL = ['r1_k3_s1_e1_i16_o8_c1', 'r1_k3_s2_e4_i8_o16_se0.25']
ALL_ARCHS = dict(ARCHS, **{'tiny-official': (TINY_OFFICIAL, 1.0, 1.0, False)})


# ------------------------------------------------------------------------------------------------
# An independent writer of official checkpoints (SPEC §1.1-1.4, §8.1).


def parse_block(text):
    options = {}
    for token in text.split('_'):
        key = ''.join(ch for ch in token if ch.isalpha())
        options[key] = token[len(key) :]
    stride = options['s'][0]  # 's22' (V1) and 's2' (V2) both mean 2.
    return dict(
        r=int(options['r']),
        k=int(options['k']),
        s=int(stride),
        e=int(options['e']),
        i=int(options['i']),
        o=int(options['o']),
        c=int(options.get('c', 0)),
        se=float(options['se']) if 'se' in options else None,
    )


def round_filters(filters, width, ten_percent):
    scaled = filters * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    if ten_percent and rounded < 0.9 * scaled:
        rounded += 8
    return int(rounded)


def official_blocks(name):
    """Per-block specs of a variant in global order: (kind, k, s, e, in, out, se_channels)."""
    blocks, width, depth, ten_percent = ALL_ARCHS[name]
    specs = []
    for text in blocks:
        b = parse_block(text)
        c_in, c_out = (round_filters(b[key], width, ten_percent) for key in ('i', 'o'))
        for j in range(int(math.ceil(b['r'] * depth))):
            block_in = c_in if j == 0 else c_out
            se = max(1, int(block_in * b['se'])) if b['se'] else None
            specs.append(
                (
                    'fused' if b['c'] else 'mbconv',
                    b['k'],
                    b['s'] if j == 0 else 1,
                    b['e'],
                    block_in,
                    c_out,
                    se,
                )
            )
    stem = round_filters(parse_block(blocks[0])['i'], width, ten_percent)
    return stem, specs, round_filters(1280, width, ten_percent)


def bn(prefix, channels):
    return [
        (f'{prefix}/{v}', [channels]) for v in ('gamma', 'beta', 'moving_mean', 'moving_variance')
    ]


def block_tensors(scope, spec):
    """SPEC §8.1 table: names in creation order, with shapes."""
    kind, k, _, e, c_in, c_out, se = spec
    mid = c_in * e
    out = []
    se_names = (
        [
            (scope + '/se/conv2d/kernel', [1, 1, mid, se]),
            (scope + '/se/conv2d/bias', [se]),
            (scope + '/se/conv2d_1/kernel', [1, 1, se, mid]),
            (scope + '/se/conv2d_1/bias', [mid]),
        ]
        if se
        else []
    )
    if kind == 'mbconv' and e != 1:
        out += [(scope + '/conv2d/kernel', [1, 1, c_in, mid])]
        out += bn(scope + '/tpu_batch_normalization', mid)
        out += [(scope + '/depthwise_conv2d/depthwise_kernel', [k, k, mid, 1])]
        out += bn(scope + '/tpu_batch_normalization_1', mid) + se_names
        out += [(scope + '/conv2d_1/kernel', [1, 1, mid, c_out])]
        out += bn(scope + '/tpu_batch_normalization_2', c_out)
    elif kind == 'mbconv':  # e = 1: the counters start at the depthwise BN.
        out += [(scope + '/depthwise_conv2d/depthwise_kernel', [k, k, c_in, 1])]
        out += bn(scope + '/tpu_batch_normalization', c_in) + se_names
        out += [(scope + '/conv2d/kernel', [1, 1, c_in, c_out])]
        out += bn(scope + '/tpu_batch_normalization_1', c_out)
    elif e != 1:
        out += [(scope + '/conv2d/kernel', [k, k, c_in, mid])]
        out += bn(scope + '/tpu_batch_normalization', mid)
        out += se_names + [(scope + '/conv2d_1/kernel', [1, 1, mid, c_out])]
        out += bn(scope + '/tpu_batch_normalization_1', c_out)
    else:
        out += [(scope + '/conv2d/kernel', [k, k, c_in, c_out])]
        out += bn(scope + '/tpu_batch_normalization', c_out)
    return out


def official_tensors(name, num_classes=1000):
    stem, specs, head = official_blocks(name)
    out = [(name + '/stem/conv2d/kernel', [3, 3, 3, stem])]
    out += bn(name + '/stem/tpu_batch_normalization', stem)
    for n, spec in enumerate(specs):
        out += block_tensors(f'{name}/blocks_{n}', spec)
    out += [(name + '/head/conv2d/kernel', [1, 1, specs[-1][5], head])]
    out += bn(name + '/head/tpu_batch_normalization', head)
    out += [
        (name + '/head/dense/kernel', [head, num_classes]),
        (name + '/head/dense/bias', [num_classes]),
    ]
    return out


def random_value(rng, name, shape):
    if name.endswith('moving_variance'):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if name.endswith('gamma'):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if name.endswith(('beta', 'moving_mean', 'bias')):
        return rng.normal(0.0, 0.1, shape).astype(np.float32)
    fan_in = int(np.prod(shape[:-1])) if 'depthwise' not in name else shape[0] * shape[1]
    return rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape).astype(np.float32)


def write_official_checkpoint(prefix, name, num_classes=1000, ema=True, seed=0, edit=None):
    """Writes raw TF1 names with SaveV2; returns {name: plain value} and {name: EMA value}."""
    rng = np.random.RandomState(seed)
    plain, shadow, tensors = {}, {}, {}
    for tensor_name, shape in official_tensors(name, num_classes):
        plain[tensor_name] = tensors[tensor_name] = random_value(rng, tensor_name, shape)
        if ema:
            shadow[tensor_name] = random_value(rng, tensor_name, shape)
            tensors[tensor_name + '/ExponentialMovingAverage'] = shadow[tensor_name]
        if not tensor_name.endswith(('moving_mean', 'moving_variance')):
            tensors[tensor_name + '/RMSProp'] = np.ones(shape, np.float32)
            tensors[tensor_name + '/RMSProp_1'] = np.zeros(shape, np.float32)
    tensors['global_step'] = np.array(1234, np.int64)
    if edit:
        edit(tensors)
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    names = sorted(tensors)
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=names,
        shape_and_slices=[''] * len(names),
        tensors=[tf.constant(tensors[n]) for n in names],
    )
    return plain, shadow


# ------------------------------------------------------------------------------------------------
# A forward pass straight from the checkpoint tensors (inference mode).


def reference_logits(t, name, images):
    stem_channels, specs, _ = official_blocks(name)
    del stem_channels

    def norm(prefix, x):
        return (x - t[prefix + '/moving_mean']) / np.sqrt(
            t[prefix + '/moving_variance'] + 1e-3
        ) * t[prefix + '/gamma'] + t[prefix + '/beta']

    def conv(kernel, x, stride=1):
        return tf.nn.conv2d(x, t[kernel], stride, 'SAME')

    x = tf.nn.silu(
        norm(name + '/stem/tpu_batch_normalization', conv(name + '/stem/conv2d/kernel', images, 2))
    )
    for n, (kind, _, s, e, c_in, c_out, se) in enumerate(specs):
        p = f'{name}/blocks_{n}/'
        h = x
        if kind == 'mbconv':
            bns = iter(
                [
                    'tpu_batch_normalization',
                    'tpu_batch_normalization_1',
                    'tpu_batch_normalization_2',
                ]
            )
            convs = iter(['conv2d', 'conv2d_1'])
            if e != 1:
                h = tf.nn.silu(norm(p + next(bns), conv(p + next(convs) + '/kernel', h)))
            h = tf.nn.depthwise_conv2d(
                h, t[p + 'depthwise_conv2d/depthwise_kernel'], [1, s, s, 1], 'SAME'
            )
            h = tf.nn.silu(norm(p + next(bns), h))
            if se:
                g = tf.reduce_mean(h, [1, 2], keepdims=True)
                g = tf.nn.silu(conv(p + 'se/conv2d/kernel', g) + t[p + 'se/conv2d/bias'])
                g = conv(p + 'se/conv2d_1/kernel', g) + t[p + 'se/conv2d_1/bias']
                h = h * tf.sigmoid(g)
            h = norm(p + next(bns), conv(p + next(convs) + '/kernel', h))
        elif e != 1:
            h = tf.nn.silu(norm(p + 'tpu_batch_normalization', conv(p + 'conv2d/kernel', h, s)))
            h = norm(p + 'tpu_batch_normalization_1', conv(p + 'conv2d_1/kernel', h))
        else:
            h = tf.nn.silu(norm(p + 'tpu_batch_normalization', conv(p + 'conv2d/kernel', h, s)))
        x = h + x if (s == 1 and c_in == c_out) else h
    x = tf.nn.silu(
        norm(name + '/head/tpu_batch_normalization', conv(name + '/head/conv2d/kernel', x))
    )
    x = tf.reduce_mean(x, [1, 2])
    return (tf.matmul(x, t[name + '/head/dense/kernel']) + t[name + '/head/dense/bias']).numpy()


def images(n=2, seed=1):
    return np.random.RandomState(seed).uniform(-1, 1, (n, SIZE, SIZE, 3)).astype(np.float32)


def weights_snapshot(model):
    return [v.numpy() for v in model.weights]


def assert_unchanged(model, snapshot):
    for v, before in zip(model.weights, snapshot):
        np.testing.assert_array_equal(v.numpy(), before, err_msg=v.path)


@pytest.fixture(scope='module')
def ckpt_dir(tmp_path_factory):
    return tmp_path_factory.mktemp('official')


@pytest.fixture(scope='module')
def official(ckpt_dir):
    """{name: (prefix, plain, ema)} for both architectures, EMA copies included."""
    out = {}
    for i, name in enumerate(ARCHS):
        prefix = str(ckpt_dir / name / 'model.ckpt')
        plain, shadow = write_official_checkpoint(prefix, name, seed=i)
        out[name] = (prefix, plain, shadow)
    return out


# ------------------------------------------------------------------------------------------------
# Official checkpoints.


@pytest.mark.parametrize('name', list(ARCHS))
def test_official_checkpoint_prefers_ema_and_reproduces_the_network(name, official):
    prefix, plain, shadow = official[name]
    model = efficientnetv2.get_model(name, input_shape=(SIZE, SIZE, 3))
    report = weights_lib.load_official_checkpoint(model, os.path.dirname(prefix))
    # Every model tensor of the checkpoint was used, each from its EMA copy.
    assert report['loaded'] == len(plain) == len(model.weights)
    assert report['from_ema'] == len(plain)
    assert report['skipped'] == [] and report['head_loaded']
    x = images()
    np.testing.assert_allclose(
        model(x).numpy(), reference_logits(shadow, name, x), rtol=1e-4, atol=1e-4
    )
    # Plain and EMA values differ, so the EMA preference is visible in the outputs.
    assert not np.allclose(
        reference_logits(plain, name, x), reference_logits(shadow, name, x), atol=1e-3
    )


def test_plain_variables_load_when_there_is_no_ema(ckpt_dir):
    name = 'efficientnet-b0'
    prefix = str(ckpt_dir / 'plain' / 'model.ckpt')
    plain, _ = write_official_checkpoint(prefix, name, ema=False, seed=5)
    model = efficientnetv2.get_model(name, weights=prefix, input_shape=(SIZE, SIZE, 3))
    x = images()
    np.testing.assert_allclose(
        model(x).numpy(), reference_logits(plain, name, x), rtol=1e-4, atol=1e-4
    )


def tiny_official(tmp_path, seed=6):
    """A tiny official-format checkpoint whose raw and EMA values differ, and its model."""
    name = 'tiny-official'
    prefix = str(tmp_path / name / 'model.ckpt')
    plain, shadow = write_official_checkpoint(prefix, name, num_classes=10, seed=seed)
    model = efficientnetv2.EfficientNet(
        blocks=TINY_OFFICIAL, num_classes=10, model_name=name, input_shape=(SIZE, SIZE, 3)
    )
    return prefix, plain, shadow, model


def test_official_checkpoint_raw_weights_when_ema_is_not_preferred(tmp_path):
    prefix, plain, shadow, model = tiny_official(tmp_path)
    x = images()
    raw, averaged = (
        reference_logits(plain, 'tiny-official', x),
        reference_logits(shadow, 'tiny-official', x),
    )
    assert not np.allclose(raw, averaged, atol=1e-3)
    report = weights_lib.load_official_checkpoint(model, prefix, prefer_ema=False)
    assert report['from_ema'] == 0 and report['loaded'] == len(model.weights)
    np.testing.assert_allclose(model(x).numpy(), raw, rtol=1e-4, atol=1e-4)
    weights_lib.load_weights(model, prefix)  # Default: the EMA copies.
    np.testing.assert_allclose(model(x).numpy(), averaged, rtol=1e-4, atol=1e-4)
    weights_lib.load_weights(model, prefix, prefer_ema=False)
    np.testing.assert_array_equal(
        model.get_layer('predictions').bias.numpy(), plain['tiny-official/head/dense/bias']
    )


def test_trainer_ft_init_ema_false_loads_raw_official_weights(tmp_path):
    """`train.ft_init_ema=False` reaches the official loader (the trainer's fine-tune start)."""
    import types

    from efficientnetv2.train import trainer

    prefix, plain, shadow, model = tiny_official(tmp_path, seed=7)
    for ft_init_ema, expected in ((False, plain), (True, shadow)):
        fake = types.SimpleNamespace(
            model=model,
            ema=None,
            config=types.SimpleNamespace(
                train=types.SimpleNamespace(ft_init_ckpt=prefix, ft_init_ema=ft_init_ema)
            ),
        )
        trainer.Trainer._init_from_pretrained(fake)
        np.testing.assert_array_equal(
            model.get_layer('stem').conv.kernel.numpy(),
            expected['tiny-official/stem/conv2d/kernel'],
        )


def test_copier_checks_every_shape_first_and_rolls_back(tmp_path):
    model = tiny(seed=8)
    before = weights_snapshot(model)
    variables = model.weights
    good = [
        _copier.Entry(v.path, v, v.shape, np.full(v.shape, 7.0, np.float32)) for v in variables[:-1]
    ]
    last = variables[-1]
    bad = _copier.Entry('bad', last, (3,) + tuple(last.shape), np.zeros((3,) + tuple(last.shape)))
    with pytest.raises(ValueError, match="'bad' has shape"):
        _copier.copy_entries(good + [bad], model, 'test source')
    assert_unchanged(model, before)

    def fail():
        raise OSError('read error')

    with pytest.raises(OSError, match='read error'):  # A failure while assigning: rolled back.
        _copier.copy_entries(
            good + [_copier.Entry('late', last, last.shape, fail)], model, 'test source'
        )
    assert_unchanged(model, before)
    loaded, problems = _copier.copy_entries(good + [bad], model, 'test source', skip_mismatch=True)
    assert len(loaded) == len(good) and len(problems) == 1
    assert (variables[0].numpy() == 7.0).all()
    np.testing.assert_array_equal(last.numpy(), before[-1])


def test_other_num_classes_and_no_top_skip_only_the_head(official):
    name = 'efficientnetv2-b0'
    prefix, _, shadow = official[name]
    full = efficientnetv2.get_model(name, weights=prefix, input_shape=(SIZE, SIZE, 3))
    other = efficientnetv2.get_model(name, num_classes=7, input_shape=(SIZE, SIZE, 3))
    head_before = other.get_layer('predictions').kernel.numpy()
    report = weights_lib.load_official_checkpoint(other, prefix)
    assert not report['head_loaded'] and report['loaded'] == len(other.weights) - 2
    np.testing.assert_array_equal(other.get_layer('predictions').kernel.numpy(), head_before)
    notop = efficientnetv2.get_model(
        name, include_top=False, pooling='avg', weights=prefix, input_shape=(SIZE, SIZE, 3)
    )
    features = keras.Model(full.input, full.get_layer('avg_pool').output)
    x = images()
    np.testing.assert_allclose(notop(x).numpy(), features(x).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(
        full.get_layer('predictions').kernel.numpy(), shadow[name + '/head/dense/kernel']
    )


def test_checkpoint_of_another_model_is_refused(official):
    prefix = official['efficientnet-b0'][0]
    model = efficientnetv2.get_model('efficientnetv2-b0', input_shape=(SIZE, SIZE, 3))
    before = weights_snapshot(model)
    with pytest.raises(ValueError, match=r"model\.ckpt.*'efficientnet-b0'.*'efficientnetv2-b0'"):
        weights_lib.load_weights(model, prefix)
    assert_unchanged(model, before)


def test_wrong_shape_names_file_and_tensor_and_loads_nothing(ckpt_dir, caplog):
    name = 'efficientnetv2-b0'
    bad = name + '/blocks_4/tpu_batch_normalization/gamma'

    def edit(tensors):
        tensors[bad + '/ExponentialMovingAverage'] = np.ones([5], np.float32)

    prefix = str(ckpt_dir / 'bad_shape' / 'model.ckpt')
    _, shadow = write_official_checkpoint(prefix, name, seed=3, edit=edit)
    model = efficientnetv2.get_model(name, input_shape=(SIZE, SIZE, 3))
    before = weights_snapshot(model)
    with pytest.raises(ValueError) as error:
        weights_lib.load_weights(model, prefix)
    assert 'bad_shape/model.ckpt' in str(error.value) and bad in str(error.value)
    assert '[5]' in str(error.value)
    assert_unchanged(model, before)
    # skip_mismatch loads everything else and logs the skipped tensor.
    with caplog.at_level(logging.WARNING):
        weights_lib.load_weights(model, prefix, skip_mismatch=True)
    assert bad in caplog.text
    np.testing.assert_array_equal(
        model.get_layer('stem').conv.kernel.numpy(), shadow[name + '/stem/conv2d/kernel']
    )
    # blocks_4 is the second block of stage 3 (block3b); its first BN kept its old values.
    np.testing.assert_array_equal(
        model.get_layer('block3b').expand_bn.gamma.numpy(),
        before[[v.path for v in model.weights].index('block3b/expand_bn/gamma')],
    )


@pytest.mark.parametrize('case', ['missing', 'unused'])
def test_missing_or_unused_tensors_are_reported(ckpt_dir, case):
    name = 'efficientnet-b0'
    target = name + '/blocks_2/se/conv2d_1/bias'

    def edit(tensors):
        if case == 'missing':
            del tensors[target], tensors[target + '/ExponentialMovingAverage']
        else:
            tensors[name + '/blocks_16/conv2d/kernel'] = np.zeros([1, 1, 320, 8], np.float32)

    prefix = str(ckpt_dir / case / 'model.ckpt')
    write_official_checkpoint(prefix, name, seed=4, edit=edit)
    model = efficientnetv2.get_model(name, input_shape=(SIZE, SIZE, 3))
    before = weights_snapshot(model)
    expected = target + "' is missing" if case == 'missing' else 'blocks_16/conv2d/kernel'
    with pytest.raises(ValueError, match=expected):
        weights_lib.load_weights(model, prefix)
    assert_unchanged(model, before)


def test_missing_files_are_named():
    model = efficientnetv2.EfficientNet(
        blocks=['r1_k3_s1_e1_i8_o8_c1'], feature_size=16, num_classes=3
    )
    for path in (
        '/nonexistent/model.ckpt',
        '/nonexistent/model.keras',
        '/nonexistent/x.weights.h5',
    ):
        with pytest.raises(ValueError, match=path):
            weights_lib.load_weights(model, path)
    with pytest.raises(ValueError, match='weights must be'):
        weights_lib.load_weights(model, 3.5)


def test_corrupt_checkpoint_is_named(tmp_path):
    prefix = str(tmp_path / 'model.ckpt')
    for suffix in ('.index', '.data-00000-of-00001'):
        with open(prefix + suffix, 'wb') as f:
            f.write(b'not a checkpoint')
    model = efficientnetv2.EfficientNet(
        blocks=['r1_k3_s1_e1_i8_o8_c1'], feature_size=16, num_classes=3
    )
    with pytest.raises(ValueError, match='Cannot read checkpoint .*model\\.ckpt'):
        weights_lib.load_weights(model, prefix)


# ------------------------------------------------------------------------------------------------
# Keras files and project checkpoints (on a tiny model).

TINY = ['r1_k3_s1_e1_i16_o8_c1', 'r1_k3_s2_e4_i8_o16_c1', 'r2_k3_s2_e4_i16_o24_se0.25']


def tiny(num_classes=5, seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    model = efficientnetv2.EfficientNet(
        blocks=TINY,
        feature_size=32,
        num_classes=num_classes,
        model_name='tiny',
        input_shape=(SIZE, SIZE, 3),
        **kwargs,
    )
    for v in model.weights:  # Non-trivial BN statistics.
        if 'moving' in v.path:
            v.assign(np.random.RandomState(seed).uniform(0.5, 1.5, v.shape))
    return model


@pytest.mark.parametrize('suffix', ['.keras', '.weights.h5'])
def test_keras_files_round_trip_and_skip_other_heads(tmp_path, suffix):
    source = tiny(seed=1)
    path = str(tmp_path / ('model' + suffix))
    if suffix == '.keras':
        source.save(path)
    else:
        source.save_weights(path)
    x = images()
    same = weights_lib.load_weights(tiny(seed=2), path)
    np.testing.assert_allclose(same(x).numpy(), source(x).numpy(), rtol=1e-6, atol=1e-6)

    other = tiny(num_classes=3, seed=2)
    head_before = other.get_layer('predictions').kernel.numpy()
    weights_lib.load_weights(other, path)
    np.testing.assert_array_equal(other.get_layer('predictions').kernel.numpy(), head_before)
    np.testing.assert_array_equal(
        other.get_layer('top').conv.kernel.numpy(), source.get_layer('top').conv.kernel.numpy()
    )
    notop = tiny(include_top=False, pooling='avg')
    weights_lib.load_weights(notop, path)
    features = keras.Model(source.input, source.get_layer('avg_pool').output)
    np.testing.assert_allclose(notop(x).numpy(), features(x).numpy(), rtol=1e-6, atol=1e-6)

    wider = efficientnetv2.EfficientNet(
        blocks=TINY, feature_size=48, num_classes=5, input_shape=(SIZE, SIZE, 3)
    )
    before = weights_snapshot(wider)
    with pytest.raises(ValueError, match='model{}'.format(suffix.replace('.', r'\.'))):
        weights_lib.load_weights(wider, path)
    assert_unchanged(wider, before)


def test_keras_applications_file_is_converted(tmp_path):
    from efficientnetv2 import convert

    keras.utils.set_random_seed(0)
    source = keras.applications.EfficientNetV2B0(
        weights=None, input_shape=(SIZE, SIZE, 3), classes=4, classifier_activation=None
    )
    path = str(tmp_path / 'keras_b0.keras')
    source.save(path)
    model = efficientnetv2.get_model(
        'efficientnetv2-b0', num_classes=4, weights=path, input_shape=(SIZE, SIZE, 3)
    )
    x = np.random.RandomState(2).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    scaled = convert.keras_preprocessing(source)(x)
    np.testing.assert_allclose(model(scaled).numpy(), source(x).numpy(), rtol=1e-4, atol=1e-4)


def test_project_checkpoint_directory_and_prefix(tmp_path):
    source = tiny(seed=3)
    prefix = tf.train.Checkpoint(model=source).save(str(tmp_path / 'ckpt'))
    x = images()
    for weights in (str(tmp_path), prefix):
        loaded = weights_lib.load_weights(tiny(seed=4), weights)
        np.testing.assert_allclose(loaded(x).numpy(), source(x).numpy(), rtol=1e-6, atol=1e-6)
    deeper = efficientnetv2.EfficientNet(
        blocks=TINY + ['r1_k3_s1_e6_i24_o32_se0.25'],
        feature_size=32,
        num_classes=5,
        input_shape=(SIZE, SIZE, 3),
    )
    before = weights_snapshot(deeper)
    with pytest.raises(ValueError, match='ckpt-1'):
        weights_lib.load_weights(deeper, prefix)
    assert_unchanged(deeper, before)
