"""Exporting a trained `EfficientNet`: SavedModel (classifier, feature vector), TFLite, `.keras`.

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

Evaluation preprocessing: the serving signatures and TFLite run
`efficientnetv2.data.preprocessing.preprocess_for_eval`, the same function as the eval input
pipeline and `--mode=infer` (crop rule, resize and pixel scaling of the family 'v2', 'legacy' or
'ft'; `center_crop=False` for models evaluated without a crop, such as digits).
"""

import os
import warnings

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from efficientnetv2.data import preprocessing

PREPROCESS = preprocessing.FAMILIES
TOP_K = 5
QUANTIZE = (None, 'dynamic')


def _check_preprocess(preprocess, allow_none=False):
    valid = PREPROCESS + ((None,) if allow_none else ())
    if preprocess not in valid:
        raise ValueError('preprocess must be one of %s. Received: preprocess=%r'
                         % (valid, preprocess))


def _check_image_size(image_size):
    if not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError('image_size must be a positive integer. Received: image_size=%r'
                         % (image_size,))


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
        raise ValueError('export_saved_model needs a classifier model (include_top=True) that '
                         'outputs logits [N, classes]. Received a model with output shape %s.'
                         % (model.output.shape,))
    activation = getattr(getattr(_get_layer(model, 'predictions'), 'activation', None),
                         '__name__', 'linear')
    if activation != 'linear':
        raise ValueError('export_saved_model needs logits; build the model with '
                         'classifier_activation=None. Received classifier activation %r.'
                         % (activation,))


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


def export_saved_model(model, export_dir, image_size, preprocess='v2', class_names=None,
                       top_k=TOP_K, center_crop=True):
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
            raise ValueError('class_names must have one name per class (%d). Received %d names.'
                             % (num_classes, len(class_names)))
    k = min(int(top_k), num_classes)

    def eval_transform(images):
        return preprocessing.preprocess_for_eval(images, image_size, preprocess, center_crop)

    @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)])
    def classify(images):  # Preprocessed images; traced once for both signatures.
        logits = tf.cast(model(_model_input(images, model), training=False), tf.float32)
        probabilities = tf.nn.softmax(logits, axis=-1)
        top_probabilities, top_indices = tf.math.top_k(probabilities, k=k)
        result = dict(logits=logits, probabilities=probabilities, top_k_indices=top_indices,
                      top_k_probabilities=top_probabilities)
        if class_names is not None:
            result['top_k_names'] = tf.gather(tf.constant(class_names), top_indices)
        return result

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32,
                                                name='images')])
    def serve_images(images):
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
    signatures = {'serving_default': serve_images.get_concrete_function(),
                  'serving_bytes': serve_bytes.get_concrete_function()}
    tf.saved_model.save(root, os.fspath(export_dir), signatures=signatures)
    logging.info('Wrote SavedModel %s (%d classes, %d px, %s preprocessing, centre crop %s).',
                 export_dir, num_classes, image_size, preprocess,
                 'on' if center_crop else 'off')
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
    signature = tf.function(lambda images: {'feature_vector': serve(images)},
                            input_signature=[spec])

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
    tf.saved_model.save(root, os.fspath(export_dir),
                        signatures={'serving_default': signature.get_concrete_function()})
    logging.info('Wrote feature-vector SavedModel %s (%d features).', export_dir,
                 features.output.shape[-1])
    return export_dir


def _pooled_features_model(model):
    """A model on the same layers that returns the pooled head features [N, C]."""
    if _get_layer(model, 'avg_pool') is not None:
        return keras.Model(model.inputs, model.get_layer('avg_pool').output,
                           name='feature_vector')
    if len(model.output.shape) == 2:
        return model  # include_top=False with pooling already.
    data_format = model.get_config().get('data_format', 'channels_last')
    pooled = keras.layers.GlobalAveragePooling2D(data_format=data_format,
                                                 name='feature_pool')(model.output)
    return keras.Model(model.inputs, pooled, name='feature_vector')


# ------------------------------------------------------------------------------------------------
# TFLite and .keras.


def export_tflite(model, path, image_size, quantize=None, preprocess=None, batch_size=1,
                  center_crop=True, input_size=None):
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
        raise ValueError('quantize must be one of %s. Received: quantize=%r'
                         % (QUANTIZE, quantize))
    if preprocess is None and input_size is not None:
        raise ValueError('input_size needs preprocess (the input is then resized inside). '
                         'Received: input_size=%r, preprocess=None' % (input_size,))
    height, width = (image_size, image_size) if input_size is None else input_size
    for side in (height, width):
        _check_image_size(side)

    def forward(images):
        if preprocess is not None:
            images = preprocessing.preprocess_for_eval(
                images, image_size, preprocess, center_crop, builtin_ops_only=True)
        return tf.cast(model(_model_input(images, model), training=False), tf.float32)

    spec = tf.TensorSpec([batch_size, height, width, 3], tf.float32, name='images')
    function = tf.function(forward, input_signature=[spec])
    root = _export_root(model)
    root.forward = function
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], root)
    if quantize == 'dynamic':
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    flatbuffer = converter.convert()
    with open(path, 'wb') as f:
        f.write(flatbuffer)
    logging.info('Wrote TFLite model %s (%s, %.1f MB).', path, quantize or 'float32',
                 len(flatbuffer) / 2**20)
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
        chunk = images[start:start + batch]
        padded = np.concatenate([chunk, np.zeros((batch - len(chunk),) + chunk.shape[1:],
                                                 np.float32)]) if len(chunk) < batch else chunk
        interpreter.set_tensor(input_detail['index'], padded)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(output_detail['index'])[:len(chunk)].copy())
    return np.concatenate(outputs)


def export_keras(model, path):
    """Saves the whole model (architecture + weights) as a `.keras` file.

    Raises:
        ValueError: `path` does not end in '.keras'.
    """
    path = os.fspath(path)
    if not path.endswith('.keras'):
        raise ValueError("path must end in '.keras'. Received: path=%r" % (path,))
    model.save(path)
    logging.info('Wrote %s.', path)
    return path


def export_all(model, export_dir, image_size, preprocess='v2', class_names=None,
               center_crop=True):
    """Writes every format under `export_dir`, as `main.py --mode=export` does.

    Layout: `saved_model/`, `feature_vector/`, `model.tflite` (float32),
    `model_dynamic.tflite` (dynamic-range quantised), `model.keras`. The SavedModel and both
    TFLite files run the evaluation transform (`preprocess`, `center_crop`) inside; the TFLite
    input is `[1, S, S, 3]` pixels in 0..255.

    Returns:
        A dict from format name to path.
    """
    os.makedirs(export_dir, exist_ok=True)
    paths = dict(saved_model=os.path.join(export_dir, 'saved_model'),
                 feature_vector=os.path.join(export_dir, 'feature_vector'),
                 tflite=os.path.join(export_dir, 'model.tflite'),
                 tflite_dynamic=os.path.join(export_dir, 'model_dynamic.tflite'),
                 keras=os.path.join(export_dir, 'model.keras'))
    export_saved_model(model, paths['saved_model'], image_size, preprocess, class_names,
                       center_crop=center_crop)
    export_feature_vector(model, paths['feature_vector'])
    for key, quantize in (('tflite', None), ('tflite_dynamic', 'dynamic')):
        export_tflite(model, paths[key], image_size, quantize=quantize, preprocess=preprocess,
                      center_crop=center_crop)
    export_keras(model, paths['keras'])
    return paths
