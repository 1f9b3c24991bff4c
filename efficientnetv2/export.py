"""Exporting a trained `EfficientNet`: SavedModel (classifier, feature vector), TFLite, `.keras`,
ONNX; and checking every written artifact against the Keras model.

Export the weights you want to serve: for a trained model that is the EMA copy (swap it in
before calling these functions).

- `export_saved_model`: a serving SavedModel with two signatures that run the evaluation
  preprocessing inside the graph, so clients send plain pixels or files:
  - `serving_default(images)`: float32 `[N, H, W, 3]` RGB in 0..255 (one size per batch);
  - `serving_bytes(image_bytes)`: string `[N]` of encoded JPEG / PNG / GIF / BMP files (any
    sizes).
  Both return `logits` `[N, K]`, `probabilities` (softmax), `top_k_indices` int32 `[N, k]`,
  `top_k_probabilities` and, when class names are given, `top_k_names` (k = min(5, K)).
  It loads with plain `tf.saved_model.load` (no need for this package) and in TF Serving.
- `export_feature_vector`: a TF-Hub-style image feature vector (pooled features, no classifier)
  with `serve` / `serve_training` endpoints, a `serving_default` signature and the TF-Hub
  attributes (`variables`, `trainable_variables`, `regularization_losses`, `__call__(images,
  training)`); `keras.layers.TFSMLayer(path, call_endpoint='serve',
  call_training_endpoint='serve_training')` fine-tunes it.
- `export_tflite`: float32 or dynamic-range quantised TFLite flatbuffer at a fixed size.
- `export_keras`: the whole Keras model as a `.keras` file.
- `export_onnx`: the network alone (no preprocessing) as ONNX, input float32 `[N, S, S, 3]`
  already preprocessed (needs the `[onnx]` extra: tf2onnx, onnx, onnxruntime).
- `export_all` writes the formats asked for and, by default, `verify_exports` checks each one
  against the Keras model on a few synthetic images (non-square ones among them) and raises
  `ExportVerificationError` naming any artifact outside its tolerance.

Evaluation preprocessing: the serving signatures and TFLite run
`efficientnetv2.data.preprocessing.preprocess_for_eval`, the same function as the eval input
pipeline and `--mode=infer` (crop rule, resize and pixel scaling of the family 'v2', 'legacy' or
'ft'; `center_crop=False` for models evaluated without a crop, such as digits). The ONNX file
leaves it to the caller: tf2onnx turns the legacy TF1 bicubic resize into an ONNX `Resize` with
another cubic coefficient (-0.5 instead of -0.75), and the bytes signature does not convert.
"""

import importlib
import os
import warnings

from absl import logging
import keras
import numpy as np

from efficientnetv2._tf import tf
from efficientnetv2.data import preprocessing

PREPROCESS = preprocessing.FAMILIES
TOP_K = 5
QUANTIZE = (None, 'dynamic')
# What export_all can write; all but ONNX by default (ONNX needs the optional [onnx] extra).
FORMATS = ('saved_model', 'feature_vector', 'tflite', 'tflite_dynamic', 'keras', 'onnx')
DEFAULT_FORMATS = FORMATS[:-1]
ONNX_OPSET = 17
ONNX_EXTRA = ('tf2onnx', 'onnx', 'onnxruntime')


def _check_preprocess(preprocess, allow_none=False):
    valid = PREPROCESS + ((None,) if allow_none else ())
    if preprocess not in valid:
        raise ValueError(f'preprocess must be one of {valid}. Received: preprocess={preprocess!r}')


def _check_image_size(image_size):
    if not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(
            f'image_size must be a positive integer. Received: image_size={image_size!r}'
        )


# ------------------------------------------------------------------------------------------------
# SavedModel export.


def _export_root(model):
    """A trackable root that holds the model's variables as plain lists.

    The Keras model object itself is deliberately *not* attached: a SavedModel that tracks a
    Keras 3 model restores correctly in Python but not in TF1/C++ loaders (TF Serving, the
    TFLite converter), which report missing variables. Tracking the variables directly (as
    `keras.export.ExportArchive` does) works everywhere.
    """
    root = tf.__internal__.tracking.AutoTrackable()
    root.variables = [v.value for v in model.variables]
    root.trainable_variables = [v.value for v in model.trainable_variables]
    root.non_trainable_variables = [v.value for v in model.non_trainable_variables]
    return root


def _check_classifier(model):
    if not getattr(model, 'include_top', True) or len(model.output.shape) != 2:
        raise ValueError(
            'export_saved_model needs a classifier model (include_top=True) that '
            f'outputs logits [N, classes]. Received a model with output shape {model.output.shape}.'
        )
    activation = getattr(
        getattr(_get_layer(model, 'predictions'), 'activation', None), '__name__', 'linear'
    )
    if activation != 'linear':
        raise ValueError(
            'export_saved_model needs logits; build the model with '
            f'classifier_activation=None. Received classifier activation {activation!r}.'
        )


def _model_input(images, model):
    """NHWC images in the layout the model takes (NCHW for channels_first models)."""
    if model.get_config().get('data_format') == 'channels_first':
        return tf.transpose(images, [0, 3, 1, 2])
    return images


def _get_layer(model, name):
    try:
        return model.get_layer(name)
    except ValueError:
        return None


def export_saved_model(
    model, export_dir, image_size, preprocess='v2', class_names=None, top_k=TOP_K, center_crop=True
):
    """Writes a serving SavedModel with in-graph evaluation preprocessing.

    Args:
        model: a classifier `EfficientNet` returning logits.
        export_dir: output directory (created; an existing SavedModel is overwritten).
        image_size: evaluation size S (e.g. the variant's `eval_size`).
        preprocess: 'v2', 'legacy' or 'ft': the family the model was trained with
            (`preprocessing.resolve_family` of the run config).
        class_names: optional list of K class names; adds the `top_k_names` output.
        top_k: classes in the top-k outputs (capped at K).
        center_crop: False: the eval transform resizes the whole image (as the run's
            eval pipeline does for datasets without an eval crop, e.g. digits).

    Returns:
        `export_dir`.

    Raises:
        ValueError: bad `preprocess`, `image_size`, `class_names` length, or a model without
            a logits classifier.
    """
    _check_preprocess(preprocess)
    _check_image_size(image_size)
    _check_classifier(model)
    num_classes = int(model.output.shape[-1])
    if class_names is not None:
        class_names = [str(n) for n in class_names]
        if len(class_names) != num_classes:
            raise ValueError(
                f'class_names must have one name per class ({num_classes}). '
                f'Received {len(class_names)} names.'
            )
    k = min(int(top_k), num_classes)

    def eval_transform(images):
        return preprocessing.preprocess_for_eval(images, image_size, preprocess, center_crop)

    @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)])
    def classify(images):  # Preprocessed images; traced once for both signatures.
        logits = tf.cast(model(_model_input(images, model), training=False), tf.float32)
        probabilities = tf.nn.softmax(logits, axis=-1)
        top_probabilities, top_indices = tf.math.top_k(probabilities, k=k)
        result = dict(
            logits=logits,
            probabilities=probabilities,
            top_k_indices=top_indices,
            top_k_probabilities=top_probabilities,
        )
        if class_names is not None:
            result['top_k_names'] = tf.gather(tf.constant(class_names), top_indices)
        return result

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name='images')])
    def serve_images(images):
        # The signature's shape is not enforced on a call: a clear error, not one from a conv.
        shape = tf.shape(images)
        check = tf.Assert(
            tf.logical_and(tf.equal(tf.size(shape), 4), tf.equal(shape[-1], 3)),
            ['serving_default takes float images [N, H, W, 3] (RGB, 0-255); received shape', shape],
            summarize=4,
        )
        with tf.control_dependencies([check]):
            images = tf.identity(images)
        return classify(eval_transform(images))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='image_bytes')])
    def serve_bytes(image_bytes):
        return classify(eval_transform(image_bytes))

    root = _export_root(model)
    root.serve_images = serve_images
    root.serve_bytes = serve_bytes
    root.image_size = tf.Variable(image_size, trainable=False, name='image_size')
    root.preprocess = tf.Variable(preprocess, trainable=False, name='preprocess')
    root.center_crop = tf.Variable(bool(center_crop), trainable=False, name='center_crop')
    signatures = {
        'serving_default': serve_images.get_concrete_function(),
        'serving_bytes': serve_bytes.get_concrete_function(),
    }
    tf.saved_model.save(root, os.fspath(export_dir), signatures=signatures)
    logging.info(
        'Wrote SavedModel %s (%d classes, %d px, %s preprocessing, centre crop %s).',
        export_dir,
        num_classes,
        image_size,
        preprocess,
        'on' if center_crop else 'off',
    )
    return export_dir


def export_feature_vector(model, export_dir, preprocess=None):
    """Writes a TF-Hub-style image feature-vector SavedModel (pooled features, no classifier).

    Endpoints: `serve(images)` (inference) and `serve_training(images)` (batch statistics,
    updates the BN moving averages, stochastic depth on) return float32 `[N, C]`; signature
    `serving_default` returns `{'feature_vector': [N, C]}`; `__call__(images, training=False)`
    and `variables` / `trainable_variables` / `regularization_losses` follow TF-Hub.

    Args:
        model: an `EfficientNet` (any head; the features are taken before the classifier).
        export_dir: output directory.
        preprocess: None: inputs are what the model takes (already scaled, any size);
            'v2' / 'legacy' / 'ft': inputs are RGB floats in [0, 1] (the TF-Hub image
            convention) and the family's pixel scaling runs inside (no crop or resize).

    Returns:
        `export_dir`.
    """
    _check_preprocess(preprocess, allow_none=True)
    features = _pooled_features_model(model)

    def run(images, training):
        images = tf.cast(images, tf.float32)
        if preprocess is not None:
            images = preprocessing.normalize(images * 255.0, preprocess)
        return tf.cast(features(_model_input(images, model), training=training), tf.float32)

    spec = tf.TensorSpec([None, None, None, 3], tf.float32, name='images')
    # The model is traced twice (inference, training); the other endpoints call these.
    serve = tf.function(lambda images: run(images, False), input_signature=[spec])
    serve_training = tf.function(lambda images: run(images, True), input_signature=[spec])
    signature = tf.function(
        lambda images: {'feature_vector': serve(images)}, input_signature=[spec]
    )

    @tf.function
    def call(images, training=False):
        return serve_training(images) if training else serve(images)

    call.get_concrete_function(spec, training=False)
    call.get_concrete_function(spec, training=True)

    root = _export_root(features)  # Only the backbone's variables (TF-Hub convention).
    root.serve = serve
    root.serve_training = serve_training
    root.__call__ = call
    root.regularization_losses = []
    tf.saved_model.save(
        root,
        os.fspath(export_dir),
        signatures={'serving_default': signature.get_concrete_function()},
    )
    logging.info(
        'Wrote feature-vector SavedModel %s (%d features).', export_dir, features.output.shape[-1]
    )
    return export_dir


def _pooled_features_model(model):
    """A model on the same layers that returns the pooled head features [N, C]."""
    if _get_layer(model, 'avg_pool') is not None:
        return keras.Model(model.inputs, model.get_layer('avg_pool').output, name='feature_vector')
    if len(model.output.shape) == 2:
        return model  # include_top=False with pooling already.
    data_format = model.get_config().get('data_format', 'channels_last')
    pooled = keras.layers.GlobalAveragePooling2D(data_format=data_format, name='feature_pool')(
        model.output
    )
    return keras.Model(model.inputs, pooled, name='feature_vector')


# ------------------------------------------------------------------------------------------------
# TFLite and .keras.


def export_tflite(
    model,
    path,
    image_size,
    quantize=None,
    preprocess=None,
    batch_size=1,
    center_crop=True,
    input_size=None,
):
    """Converts the model to a TFLite flatbuffer with a fixed input shape.

    Args:
        model: an `EfficientNet` (its output, usually logits, is the TFLite output).
        path: output `.tflite` file.
        image_size: the model's input side S.
        quantize: None (float32) or 'dynamic' (dynamic-range: int8 weights, float
            activations; no calibration data needed).
        preprocess: None: the input is `[batch_size, S, S, 3]`, already preprocessed for the
            model. 'v2' / 'legacy' / 'ft': the input is `[batch_size, H, W, 3]` RGB pixels in
            0..255 and the whole evaluation transform (crop, resize, scaling:
            `preprocessing.preprocess_for_eval`) runs inside, with TFLite builtin ops only.
        batch_size: static batch size of the input.
        center_crop: with `preprocess`: False resizes the whole image (no eval crop).
        input_size: with `preprocess`: the input's (H, W); default (S, S).

    Returns:
        The flatbuffer size in bytes.
    """
    _check_image_size(image_size)
    _check_preprocess(preprocess, allow_none=True)
    if quantize not in QUANTIZE:
        raise ValueError(f'quantize must be one of {QUANTIZE}. Received: quantize={quantize!r}')
    if preprocess is None and input_size is not None:
        raise ValueError(
            'input_size needs preprocess (the input is then resized inside). '
            f'Received: input_size={input_size!r}, preprocess=None'
        )
    height, width = (image_size, image_size) if input_size is None else input_size
    for side in (height, width):
        _check_image_size(side)

    def forward(images):
        if preprocess is not None:
            images = preprocessing.preprocess_for_eval(
                images, image_size, preprocess, center_crop, builtin_ops_only=True
            )
        return tf.cast(model(_model_input(images, model), training=False), tf.float32)

    spec = tf.TensorSpec([batch_size, height, width, 3], tf.float32, name='images')
    function = tf.function(forward, input_signature=[spec])
    root = _export_root(model)
    root.forward = function
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], root
    )
    if quantize == 'dynamic':
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    flatbuffer = converter.convert()
    with open(path, 'wb') as f:
        f.write(flatbuffer)
    logging.info(
        'Wrote TFLite model %s (%s, %.1f MB).', path, quantize or 'float32', len(flatbuffer) / 2**20
    )
    return len(flatbuffer)


def tflite_predict(path, images):
    """Runs a TFLite model exported by `export_tflite` on a batch (any N; runs in chunks).

    Args:
        path: the `.tflite` file.
        images: float32 array [N, ...] of the model's input shape and range.

    Returns:
        float32 array [N, ...] of outputs.
    """
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # tf.lite.Interpreter's deprecation notice.
        interpreter = tf.lite.Interpreter(model_path=os.fspath(path))
    interpreter.allocate_tensors()
    (input_detail,) = interpreter.get_input_details()
    (output_detail,) = interpreter.get_output_details()
    batch = int(input_detail['shape'][0])
    images = np.asarray(images, np.float32)
    outputs = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        padded = (
            np.concatenate([chunk, np.zeros((batch - len(chunk),) + chunk.shape[1:], np.float32)])
            if len(chunk) < batch
            else chunk
        )
        interpreter.set_tensor(input_detail['index'], padded)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(output_detail['index'])[: len(chunk)].copy())
    return np.concatenate(outputs)


def export_keras(model, path):
    """Saves the whole model (architecture + weights) as a `.keras` file.

    Raises:
        ValueError: `path` does not end in '.keras'.
    """
    path = os.fspath(path)
    if not path.endswith('.keras'):
        raise ValueError(f"path must end in '.keras'. Received: path={path!r}")
    model.save(path)
    logging.info('Wrote %s.', path)
    return path


# ------------------------------------------------------------------------------------------------
# ONNX.


def _import_onnx_extra(names=ONNX_EXTRA):
    """Imports the optional ONNX packages; a clear error naming the extra when one is missing."""
    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except ImportError as e:
            raise ImportError(
                'ONNX export needs the optional packages {} ({} is missing): '
                "pip install 'efficientnetv2[onnx]'".format(', '.join(ONNX_EXTRA), name)
            ) from e
    return modules


def export_onnx(model, path, image_size, opset=ONNX_OPSET, preprocess=None, center_crop=True):
    """Converts the network (logits, no preprocessing) to ONNX with tf2onnx.

    The ONNX input `images` is float32 `[N, S, S, 3]` (NHWC, any N) already preprocessed:
    `preprocessing.preprocess_for_eval(pixels, S, preprocess, center_crop)`, i.e. the eval crop,
    the resize to S x S and the family's pixel scaling; the output `logits` is `[N, K]`. The
    preprocessing is not put in the ONNX graph on purpose: tf2onnx converts the legacy TF1
    bicubic resize to an ONNX `Resize` with cubic coefficient -0.5 instead of -0.75 (logits off
    by ~10% on a 300x260 input), and the encoded-bytes signature does not convert at all.

    Args:
        model: an `EfficientNet` (its output, usually logits, is the ONNX output).
        path: output `.onnx` file.
        image_size: the model's input side S.
        opset: ONNX opset (tf2onnx 1.17 supports up to 18).
        preprocess, center_crop: recorded in the file's metadata (`metadata_props`) so that a
            user can see which eval transform to apply; None: not recorded.

    Returns:
        The file size in bytes.

    Raises:
        ImportError: tf2onnx / onnx are not installed (`pip install 'efficientnetv2[onnx]'`).
    """
    _check_image_size(image_size)
    _check_preprocess(preprocess, allow_none=True)
    tf2onnx, onnx = _import_onnx_extra(('tf2onnx', 'onnx'))
    spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name='images')

    def forward(images):
        return tf.cast(model(_model_input(images, model), training=False), tf.float32)

    function = tf.function(forward, input_signature=[spec])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model_proto, _ = tf2onnx.convert.from_function(
            function, input_signature=[spec], opset=opset
        )
    # A stable output name: rename the graph output (tf2onnx names it after the TF tensor).
    old_name = model_proto.graph.output[0].name
    for node in model_proto.graph.node:
        node.output[:] = ['logits' if o == old_name else o for o in node.output]
    model_proto.graph.output[0].name = 'logits'
    metadata = {
        'input': (
            f'images: float32 [N, {image_size}, {image_size}, 3] RGB, NHWC, already preprocessed'
        ),
        'output': f'logits: float32 [N, {int(model.output.shape[-1])}]',
        'image_size': str(image_size),
    }
    if preprocess is not None:
        metadata.update(
            preprocess=preprocess,
            center_crop=str(bool(center_crop)),
            preprocessing='efficientnetv2.data.preprocessing.preprocess_for_eval('
            f'pixels, {image_size}, {preprocess!r}, center_crop={bool(center_crop)})',
        )
    for key, value in metadata.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model_proto)
    data = model_proto.SerializeToString()
    with open(path, 'wb') as f:
        f.write(data)
    logging.info('Wrote ONNX model %s (opset %d, %.1f MB).', path, opset, len(data) / 2**20)
    return len(data)


def onnx_predict(path, images):
    """Runs an ONNX file of `export_onnx` with onnxruntime (CPU) on preprocessed images."""
    (onnxruntime,) = _import_onnx_extra(('onnxruntime',))
    session = onnxruntime.InferenceSession(os.fspath(path), providers=['CPUExecutionProvider'])
    (feed,) = session.get_inputs()
    return session.run(None, {feed.name: np.asarray(images, np.float32)})[0]


# ------------------------------------------------------------------------------------------------
# Checks of the exported artifacts.

# Op types that only a training graph holds: random numbers (dropout, stochastic depth) and
# variable updates (batch-norm moving averages). FusedBatchNorm* is checked for is_training.
_RANDOM_OP_PREFIXES = (
    'Random',
    'StatelessRandom',
    'TruncatedNormal',
    'StatelessTruncated',
    'Multinomial',
)
_ASSIGN_OPS = (
    'AssignVariableOp',
    'AssignAddVariableOp',
    'AssignSubVariableOp',
    'Assign',
    'AssignAdd',
    'AssignSub',
)


def training_ops(graph_def):
    """Training-only ops of a `GraphDef` and the functions of its library.

    Returns:
        A sorted list of 'op_type' strings ('FusedBatchNormV3(is_training)' for a batch norm in
        training mode); empty for an inference-only graph.
    """
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes.extend(function.node_def)
    found = set()
    for node in nodes:
        if node.op.startswith(_RANDOM_OP_PREFIXES) or node.op in _ASSIGN_OPS:
            found.add(node.op)
        elif (
            node.op.startswith('FusedBatchNorm')
            and 'is_training' in node.attr
            and node.attr['is_training'].b
        ):
            found.add(f'{node.op}(is_training)')
    return sorted(found)


def signature_training_ops(loaded, names=None):
    """{signature: training-only ops} of a loaded SavedModel's signatures (all by default)."""
    names = list(loaded.signatures) if names is None else names
    return {name: training_ops(loaded.signatures[name].graph.as_graph_def()) for name in names}


def onnx_training_ops(path):
    """Training-only ONNX ops (Dropout, random generators, training-mode BatchNormalization)."""
    (onnx,) = _import_onnx_extra(('onnx',))
    found = set()
    for node in onnx.load(os.fspath(path)).graph.node:
        if node.op_type == 'Dropout' or node.op_type.startswith('Random'):
            found.add(node.op_type)
        elif node.op_type == 'BatchNormalization' and any(
            a.name == 'training_mode' and a.i for a in node.attribute
        ):
            found.add('BatchNormalization(training_mode)')
    return sorted(found)


class ExportVerificationError(ValueError):
    """An exported artifact does not reproduce the Keras model; `rows` is the parity table."""

    def __init__(self, message, rows):
        super().__init__(message)
        self.rows = rows


# Tolerances of `verify_exports`, on the max difference relative to the reference's scale
# (max |difference| / max |reference|). Float32 artifacts run the same network and differ only
# by float rounding (kernels, op order): 1e-4 (TF) and 1e-3 (TFLite, ONNX Runtime); a row above
# its tolerance fails the export. Dynamic-range TFLite stores int8 weights and quantises
# activations on the fly; its error does not shrink with the logits, so a lightly trained model
# (small logits) shows a large relative difference. Its bound, 0.35, is above what real runs
# measured: digits, 8 sets of check images each, a tiny 16 px model after 1 epoch 0.012, 32 px
# after 2 epochs 0.007, V1-B0 32 px 1 epoch 0.027, V2-B0 48 px 1 epoch 0.17, 3 epochs 0.24;
# a 48 px photo-folder V2-B0 after 1 epoch 0.017 and 0.207. Top-1 agreement is reported but not
# judged: on the synthetic check images a barely trained model's top-1 margins are below int8
# noise (the V1-B0 run agreed on 0-100% of the pairs at 0.027). A quantized row above its bound
# is NOISY, a warning that does not fail the export, when its float twin (`QUANTIZED`: the same
# graph and in-graph preprocessing, checked at 1e-3) passed in the same check; without a passing
# twin nothing else checks that conversion and it fails like a float artifact.
TOLERANCES = {
    'saved_model:serving_default': 1e-4,
    'saved_model:serving_bytes': 1e-4,
    'feature_vector': 1e-4,
    'tflite': 1e-3,
    'tflite_dynamic': 0.35,
    'keras': 1e-5,
    'onnx': 1e-3,
}
QUANTIZED = {'tflite_dynamic': 'tflite'}  # Quantized artifact: its float twin.
CHECK_SHAPES = ((260, 300), (300, 200))  # Non-square (H, W) pixels, resized to S inside.


def check_images(image_size, seed=0):
    """The verification images: {name: uint8 [n, h, w, 3]}, smooth synthetic scenes with noise.

    Two 260 x 300 images (wider than tall; resized to S), two S x S and one 300 x 200.
    """
    rng = np.random.RandomState(seed)
    shapes = [
        ('{}x{}'.format(*CHECK_SHAPES[0]), CHECK_SHAPES[0], 2),
        (f'{int(image_size)}x{int(image_size)}', (image_size, image_size), 2),
        ('{}x{}'.format(*CHECK_SHAPES[1]), CHECK_SHAPES[1], 1),
    ]
    images = {}
    for name, (height, width), count in shapes:
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        batch = []
        for _ in range(count):
            frequency = rng.uniform(0.5, 4.0, (3, 2)) * 2 * np.pi
            phase = rng.uniform(0, 2 * np.pi, 3)
            image = (
                np.stack(
                    [
                        np.sin(
                            frequency[c, 0] * y / height + frequency[c, 1] * x / width + phase[c]
                        )
                        for c in range(3)
                    ],
                    axis=-1,
                )
                * 90
                + 128
            )
            top, left = rng.randint(0, height // 2), rng.randint(0, width // 2)
            image[top : top + height // 3, left : left + width // 3] = rng.uniform(0, 255, 3)
            image += rng.normal(0, 12, image.shape)
            batch.append(np.clip(np.round(image), 0, 255).astype(np.uint8))
        images[name] = np.stack(batch)
    return images


def _compare(name, inputs, output, reference, logits=True):
    # .numpy() first: numpy 2 warns on np.asarray(EagerTensor) (its __array__ takes no copy=).
    output, reference = (
        np.asarray(x.numpy() if tf.is_tensor(x) else x, np.float64) for x in (output, reference)
    )
    if output.shape != reference.shape:
        raise ExportVerificationError(
            f'{name}: output shape {output.shape}, expected {reference.shape}.', []
        )
    abs_diff = float(np.max(np.abs(output - reference)))
    rel_diff = abs_diff / max(float(np.max(np.abs(reference))), 1e-12)
    return dict(
        artifact=name,
        inputs=inputs,
        compared='logits' if logits else 'features',
        max_abs=abs_diff,
        max_rel=rel_diff,
        tolerance=TOLERANCES[name],
        top1=float(np.mean(output.argmax(-1) == reference.argmax(-1))) if logits else None,
        training_ops=[],
        ok=bool(rel_diff <= TOLERANCES[name]),
        noisy=False,
    )


def verify_exports(model, paths, image_size, preprocess='v2', center_crop=True):
    """Runs every artifact in `paths` (as `export_all` lays them out) against the Keras model.

    The check images (`check_images`) go through each artifact's own input path: pixels of each
    size to `serving_default`, PNG files of mixed sizes to `serving_bytes`, S x S pixels to the
    TFLite files (their input is fixed); preprocessed images (`preprocess_for_eval`) to the
    feature vector, the `.keras` file and ONNX. The reference is `model(preprocess_for_eval(
    pixels, image_size, preprocess, center_crop), training=False)`. The SavedModel signatures
    and the ONNX graph are also searched for training-only ops (`training_ops`).

    Returns:
        The parity table: one dict per artifact (artifact, inputs, compared, max_abs, max_rel,
        tolerance, top1, training_ops, ok, noisy). A quantized artifact above its bound whose
        float twin passed (see `TOLERANCES`) has `noisy` set and `ok` still true: a logged
        warning.

    Raises:
        ExportVerificationError: an artifact exceeds its tolerance (see `TOLERANCES`) or holds
            training-only ops; the message names it and the ones that passed, and carries the
            table.
    """
    images = check_images(image_size)
    names = list(images)
    prepped = {
        k: preprocessing.preprocess_for_eval(v, image_size, preprocess, center_crop).numpy()
        for k, v in images.items()
    }
    every = np.concatenate([prepped[k] for k in names])
    logits = tf.cast(model(_model_input(every, model), training=False), tf.float32).numpy()
    split = np.cumsum([len(images[k]) for k in names])[:-1]
    by_name = dict(zip(names, np.split(logits, split)))
    square = names[1]
    all_label = ' + '.join(f'{len(images[k])}x{k} px' for k in names)
    rows = []

    if 'saved_model' in paths:
        loaded = tf.saved_model.load(os.fspath(paths['saved_model']))
        served = np.concatenate(
            [
                loaded.signatures['serving_default'](images=tf.constant(images[k], tf.float32))[
                    'logits'
                ].numpy()
                for k in names
            ]
        )
        rows.append(_compare('saved_model:serving_default', all_label, served, logits))
        files = [tf.io.encode_png(image).numpy() for k in names for image in images[k]]
        served = loaded.signatures['serving_bytes'](image_bytes=tf.constant(files))['logits']
        rows.append(
            _compare(
                'saved_model:serving_bytes',
                all_label.replace(' px', ' PNG'),
                served.numpy(),
                logits,
            )
        )
        found = signature_training_ops(loaded)
        for row in rows[-2:]:
            row['training_ops'] = found[row['artifact'].split(':')[1]]
    if 'feature_vector' in paths:
        loaded = tf.saved_model.load(os.fspath(paths['feature_vector']))
        features = loaded.signatures['serving_default'](images=tf.constant(every))
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # Keras: a tensor for the ['images'] input list.
            reference = _pooled_features_model(model)(_model_input(every, model), training=False)
        rows.append(
            _compare(
                'feature_vector',
                all_label + ', preprocessed',
                features['feature_vector'].numpy(),
                reference,
                logits=False,
            )
        )
        rows[-1]['training_ops'] = sorted(set().union(*signature_training_ops(loaded).values()))
    for key in ('tflite', 'tflite_dynamic'):
        if key in paths:
            out = tflite_predict(paths[key], images[square].astype(np.float32))
            rows.append(_compare(key, f'{len(images[square])}x{square} px', out, by_name[square]))
    if 'keras' in paths:
        restored = keras.saving.load_model(os.fspath(paths['keras']))
        out = restored(_model_input(every, restored), training=False)
        rows.append(
            _compare(
                'keras', all_label + ', preprocessed', tf.cast(out, tf.float32).numpy(), logits
            )
        )
    if 'onnx' in paths:
        rows.append(
            _compare(
                'onnx', all_label + ', preprocessed', onnx_predict(paths['onnx'], every), logits
            )
        )
        rows[-1]['training_ops'] = onnx_training_ops(paths['onnx'])
    passed = {row['artifact'] for row in rows if row['ok'] and not row['training_ops']}
    for row in rows:
        if row['training_ops']:
            row['ok'] = False
        elif not row['ok'] and QUANTIZED.get(row['artifact']) in passed:
            row['ok'], row['noisy'] = True, True  # See TOLERANCES: a warning, not a failure.
    failed = [row['artifact'] for row in rows if not row['ok']]
    if failed:
        passed = [row['artifact'] for row in rows if row['ok']]
        raise ExportVerificationError(
            'Exported artifact(s) {} do not reproduce the Keras model (or hold training-only '
            'ops); passed: {}.\n{}'.format(
                ', '.join(failed), ', '.join(passed) or 'none', format_table(rows)
            ),
            rows,
        )
    for row in rows:
        if row['noisy']:
            logging.warning(
                '%s is noisier than its bound (max rel diff %.3g > %g, top-1 agrees on %.0f%% '
                'of the check images): expected of int8 quantisation on a model with small '
                'logits (e.g. after little training); kept: its float twin and every other '
                'artifact passed.',
                row['artifact'],
                row['max_rel'],
                row['tolerance'],
                100 * row['top1'],
            )
    return rows


def format_table(rows):
    """The parity table of `verify_exports` as text."""
    header = (
        'artifact',
        'inputs',
        'compared',
        'max abs diff',
        'max rel diff',
        'tolerance',
        'top-1 agree',
        'result',
    )
    lines = [header]
    for row in rows:
        result = 'NOISY (warning)' if row.get('noisy') else 'ok' if row['ok'] else 'FAIL'
        if row['training_ops']:
            result += ' (training ops: {})'.format(', '.join(row['training_ops']))
        lines.append(
            (
                row['artifact'],
                row['inputs'],
                row['compared'],
                '{:.2e}'.format(row['max_abs']),
                '{:.2e}'.format(row['max_rel']),
                'rel <= {:.2g}'.format(row['tolerance']),
                '-' if row['top1'] is None else '%.0f%%' % (100 * row['top1']),
                result,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return '\n'.join(
        '  '.join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines
    )


def check_formats(formats):
    """The export formats as a tuple; a clear error for unknown names or a missing extra."""
    formats = tuple(DEFAULT_FORMATS if formats is None else formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(
            'export formats must be among {}. Received: {}'.format(
                ', '.join(FORMATS), ', '.join(unknown) or 'none'
            )
        )
    if 'onnx' in formats:
        _import_onnx_extra()
    return formats


def export_all(
    model,
    export_dir,
    image_size,
    preprocess='v2',
    class_names=None,
    center_crop=True,
    formats=None,
    verify=True,
):
    """Writes the formats asked for under `export_dir`, as `main.py --mode=export` does.

    Layout: `saved_model/`, `feature_vector/`, `model.tflite` (float32),
    `model_dynamic.tflite` (dynamic-range quantised), `model.keras`, `model.onnx`. The
    SavedModel and both TFLite files run the evaluation transform (`preprocess`, `center_crop`)
    inside; the TFLite input is `[1, S, S, 3]` pixels in 0..255; the ONNX input is
    `[N, S, S, 3]` already preprocessed (see `export_onnx`).

    Args:
        formats: names from `FORMATS`; default `DEFAULT_FORMATS` (all but 'onnx').
        verify: check every written artifact with `verify_exports` (logs the parity table).

    Returns:
        A dict from format name to path.

    Raises:
        ValueError: an unknown format.
        ImportError: 'onnx' without the `[onnx]` extra installed.
        ExportVerificationError: an artifact does not reproduce the Keras model.
    """
    formats = check_formats(formats)
    os.makedirs(export_dir, exist_ok=True)
    names = dict(
        saved_model='saved_model',
        feature_vector='feature_vector',
        tflite='model.tflite',
        tflite_dynamic='model_dynamic.tflite',
        keras='model.keras',
        onnx='model.onnx',
    )
    paths = {f: os.path.join(export_dir, names[f]) for f in FORMATS if f in formats}
    if 'saved_model' in paths:
        export_saved_model(
            model,
            paths['saved_model'],
            image_size,
            preprocess,
            class_names,
            center_crop=center_crop,
        )
    if 'feature_vector' in paths:
        export_feature_vector(model, paths['feature_vector'])
    for key, quantize in (('tflite', None), ('tflite_dynamic', 'dynamic')):
        if key in paths:
            export_tflite(
                model,
                paths[key],
                image_size,
                quantize=quantize,
                preprocess=preprocess,
                center_crop=center_crop,
            )
    if 'keras' in paths:
        export_keras(model, paths['keras'])
    if 'onnx' in paths:
        export_onnx(
            model, paths['onnx'], image_size, preprocess=preprocess, center_crop=center_crop
        )
    if verify:
        try:
            rows = verify_exports(model, paths, image_size, preprocess, center_crop)
        except ExportVerificationError as e:
            logging.error('%s', e)
            raise
        logging.info('Export parity against the Keras model:\n%s', format_table(rows))
    return paths
