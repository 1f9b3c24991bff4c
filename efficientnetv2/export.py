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

Evaluation preprocessing (`preprocess_eval`, SPEC §5.3-§5.5):
- 'v2' (V2-S/M/L/XL): below 320 px a centre crop of side `int(S / (S + 32) * min(h, w))` at
  offset `((h - c) // 2, (w - c) // 2)`, then a bilinear resize to S x S; from 320 px on the
  whole image is resized (no crop). Pixels `(x - 128) / 128`.
- 'legacy' (V1, V2-B0..B3): always the same centre crop, offset `((h - c + 1) // 2, ...)`,
  TF1 bicubic resize (`ResizeBicubic`, no half-pixel centres), ImageNet mean / std. Encoded
  JPEGs are cropped while decoding (`decode_and_crop_jpeg`, as the official code), which can
  differ from feeding the fully decoded pixels by a few levels at the crop border.
- 'ft': whole-image bilinear resize, `(x / 255 - 0.5) / 0.5`.
"""

import os
import warnings

from absl import logging
import keras
import numpy as np
import tensorflow as tf

PREPROCESS = ('v2', 'legacy', 'ft')
CROP_PADDING = 32
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
TOP_K = 5
QUANTIZE = (None, 'dynamic')


# ------------------------------------------------------------------------------------------------
# In-graph preprocessing.


def _check_preprocess(preprocess, allow_none=False):
    valid = PREPROCESS + ((None,) if allow_none else ())
    if preprocess not in valid:
        raise ValueError('preprocess must be one of %s. Received: preprocess=%r'
                         % (valid, preprocess))


def _check_image_size(image_size):
    if not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError('image_size must be a positive integer. Received: image_size=%r'
                         % (image_size,))


def scale_pixels(images, preprocess):
    """Maps 0..255 RGB pixels to the model's input range for a preprocessing family.

    Args:
        images: float tensor [..., 3] in 0..255.
        preprocess: 'v2' ((x - 128) / 128), 'legacy' (ImageNet mean / std) or 'ft'
            ((x / 255 - 0.5) / 0.5).

    Returns:
        A float32 tensor of the same shape.
    """
    _check_preprocess(preprocess)
    images = tf.cast(images, tf.float32)
    if preprocess == 'v2':
        return (images - 128.0) / 128.0
    if preprocess == 'legacy':
        return (images - tf.constant(MEAN_RGB)) / tf.constant(STDDEV_RGB)
    return (images / 255.0 - 0.5) / 0.5


def _center_window(height, width, image_size, round_up):
    """(top, left, side) of the eval centre crop: side int(S / (S + 32) * min(h, w))."""
    # As the official code: the ratio is a Python float, the product is float32.
    side = tf.cast(image_size / (image_size + CROP_PADDING)
                   * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
    extra = 1 if round_up else 0
    return (height - side + extra) // 2, (width - side + extra) // 2, side


def _center_crop(images, image_size, round_up):
    """The eval centre crop of a [N, H, W, C] batch."""
    shape = tf.shape(images)
    top, left, side = _center_window(shape[1], shape[2], image_size, round_up)
    return images[:, top:top + side, left:left + side, :]


def crop_and_resize(images, image_size, preprocess):
    """The evaluation crop and resize (no pixel scaling) of a batch of same-sized images.

    Args:
        images: float [N, H, W, 3] in 0..255 (any H, W).
        image_size: output side S.
        preprocess: 'v2', 'legacy' or 'ft' (see the module docstring).

    Returns:
        float32 [N, S, S, 3] in about 0..255 (bicubic may overshoot slightly).
    """
    _check_preprocess(preprocess)
    images = tf.cast(images, tf.float32)
    size = [image_size, image_size]
    if preprocess == 'legacy':
        images = _center_crop(images, image_size, round_up=True)
        return tf.raw_ops.ResizeBicubic(images=images, size=size, align_corners=False,
                                        half_pixel_centers=False)
    if preprocess == 'v2' and image_size < 320:
        images = _center_crop(images, image_size, round_up=False)
    return tf.image.resize(images, size, method='bilinear')


def preprocess_eval(images, image_size, preprocess):
    """Crop, resize and scale a batch of 0..255 images exactly as the exported signatures do."""
    return scale_pixels(crop_and_resize(images, image_size, preprocess), preprocess)


def _decode_legacy_crop(data, image_size):
    """Legacy eval crop of one encoded image; JPEGs are cropped while decoding.

    The official legacy pipeline uses `decode_and_crop_jpeg`, whose chroma upsampling at the
    window border differs slightly from decoding the whole JPEG and slicing it.
    """
    def jpeg():
        shape = tf.image.extract_jpeg_shape(data)
        top, left, side = _center_window(shape[0], shape[1], image_size, round_up=True)
        return tf.image.decode_and_crop_jpeg(data, tf.stack([top, left, side, side]),
                                             channels=3)

    def other():
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        return _center_crop(image[tf.newaxis], image_size, round_up=True)[0]

    return tf.cond(tf.io.is_jpeg(data), jpeg, other)


def decode_images(image_bytes, image_size, preprocess):
    """Decodes a [N] string batch of encoded images and applies the eval crop and resize.

    Equals `crop_and_resize` on the decoded pixels, except that legacy JPEGs are cropped while
    decoding, as the official legacy pipeline does.

    Returns:
        float32 [N, S, S, 3], 0..255 range (not yet scaled).
    """
    _check_preprocess(preprocess)

    def one(data):
        if preprocess == 'legacy':
            crop = tf.cast(_decode_legacy_crop(data, image_size), tf.float32)[tf.newaxis]
            return tf.raw_ops.ResizeBicubic(images=crop, size=[image_size, image_size],
                                            align_corners=False, half_pixel_centers=False)[0]
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        image = tf.cast(image, tf.float32)[tf.newaxis]
        return crop_and_resize(image, image_size, preprocess)[0]

    return tf.map_fn(one, image_bytes,
                     fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32))


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
                       top_k=TOP_K):
    """Writes a serving SavedModel with in-graph evaluation preprocessing.

    Args:
        model: a classifier `EfficientNet` returning logits.
        export_dir: output directory (created; an existing SavedModel is overwritten).
        image_size: evaluation size S (e.g. the variant's `eval_size`).
        preprocess: 'v2', 'legacy' or 'ft': the family the model was trained with
            (`architectures.get_variant(name).preprocess`; 'ft' for models fine-tuned
            with the official fine-tune transform).
        class_names: optional list of K class names; adds the `top_k_names` output.
        top_k: classes in the top-k outputs (capped at K).

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

    @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)])
    def classify(images):  # 0..255 images, already cropped and resized; traced once.
        images = _model_input(scale_pixels(images, preprocess), model)
        logits = tf.cast(model(images, training=False), tf.float32)
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
        return classify(crop_and_resize(images, image_size, preprocess))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='image_bytes')])
    def serve_bytes(image_bytes):
        return classify(decode_images(image_bytes, image_size, preprocess))

    root = _export_root(model)
    root.serve_images = serve_images
    root.serve_bytes = serve_bytes
    root.image_size = tf.Variable(image_size, trainable=False, name='image_size')
    root.preprocess = tf.Variable(preprocess, trainable=False, name='preprocess')
    signatures = {'serving_default': serve_images.get_concrete_function(),
                  'serving_bytes': serve_bytes.get_concrete_function()}
    tf.saved_model.save(root, os.fspath(export_dir), signatures=signatures)
    logging.info('Wrote SavedModel %s (%d classes, %d px, %s preprocessing).', export_dir,
                 num_classes, image_size, preprocess)
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
            images = scale_pixels(images * 255.0, preprocess)
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


def export_tflite(model, path, image_size, quantize=None, preprocess=None, batch_size=1):
    """Converts the model to a TFLite flatbuffer with a fixed input shape.

    Args:
        model: an `EfficientNet` (its output, usually logits, is the TFLite output).
        path: output `.tflite` file.
        image_size: input side S; the input is `[batch_size, S, S, 3]` float32.
        quantize: None (float32) or 'dynamic' (dynamic-range: int8 weights, float
            activations; no calibration data needed).
        preprocess: None: the input is already scaled for the model; 'v2' / 'legacy' /
            'ft': the input is 0..255 RGB (already cropped / resized) and the pixel
            scaling runs inside.
        batch_size: static batch size of the input.

    Returns:
        The flatbuffer size in bytes.
    """
    _check_image_size(image_size)
    _check_preprocess(preprocess, allow_none=True)
    if quantize not in QUANTIZE:
        raise ValueError('quantize must be one of %s. Received: quantize=%r'
                         % (QUANTIZE, quantize))

    def forward(images):
        if preprocess is not None:
            images = scale_pixels(images, preprocess)
        return tf.cast(model(_model_input(images, model), training=False), tf.float32)

    spec = tf.TensorSpec([batch_size, image_size, image_size, 3], tf.float32, name='images')
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
        images: float32 array [N, S, S, 3] in the model's input range.

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


def export_all(model, export_dir, image_size, preprocess='v2', class_names=None):
    """Writes every format under `export_dir`, as `main.py --mode=export` does.

    Layout: `saved_model/`, `feature_vector/`, `model.tflite` (float32),
    `model_dynamic.tflite` (dynamic-range quantised), `model.keras`.

    Returns:
        A dict from format name to path.
    """
    os.makedirs(export_dir, exist_ok=True)
    paths = dict(saved_model=os.path.join(export_dir, 'saved_model'),
                 feature_vector=os.path.join(export_dir, 'feature_vector'),
                 tflite=os.path.join(export_dir, 'model.tflite'),
                 tflite_dynamic=os.path.join(export_dir, 'model_dynamic.tflite'),
                 keras=os.path.join(export_dir, 'model.keras'))
    export_saved_model(model, paths['saved_model'], image_size, preprocess, class_names)
    export_feature_vector(model, paths['feature_vector'])
    export_tflite(model, paths['tflite'], image_size)
    export_tflite(model, paths['tflite_dynamic'], image_size, quantize='dynamic')
    export_keras(model, paths['keras'])
    return paths
