"""`--mode=export` and `--mode=infer`: a trained model directory to serving files or predictions.

Both rebuild the network from the run config (main.py reads it from `<model_dir>/config.yaml`),
load the latest checkpoint of the model directory with its EMA weights, and use the run's eval
preprocessing (image size, crop or not, family), through the one implementation that the eval
pipeline also uses: `data.preprocessing.preprocess_for_eval`.
"""

import os

from absl import logging
import numpy as np
import tensorflow as tf

from efficientnetv2 import data
from efficientnetv2 import export as export_lib
from efficientnetv2 import model as model_lib
from efficientnetv2 import weights as weights_lib


def imagenet_class_names():
    """ImageNet-1k WordNet ids in label order, from the list tensorflow-datasets ships offline.

    tensorflow-datasets carries the synset ids but no human-readable names (keras downloads
    those at run time), so ids such as 'n01440764' are what an offline install can print.
    """
    import tensorflow_datasets

    path = os.path.join(
        os.path.dirname(tensorflow_datasets.__file__), 'datasets', 'imagenet2012', 'labels.txt'
    )
    if not os.path.exists(path):
        return None
    with open(path) as f:
        names = [line.strip() for line in f if line.strip()]
    return names if len(names) == 1000 else None


def class_names(info):
    """Class names for a dataset: its own, ImageNet's synset ids, or None."""
    if info.class_names:
        return list(info.class_names)
    if info.num_classes == 1000 and 'imagenet' in info.name.lower():
        return imagenet_class_names()
    return None


def preprocess_family(config, info):
    """The run's transform family, resolved as its input pipeline resolves it."""
    return data.resolve_family(config.data.preprocess, config.data.augname, info.preprocess)


def eval_transform(config, info):
    """Keyword arguments of `preprocess_for_eval` for the run's eval pipeline."""
    return dict(
        image_size=int(config.eval.image_size),
        family=preprocess_family(config, info),
        center_crop=bool(info.eval_center_crop),
    )


def load_trained_model(config, model_dir):
    """The run's network with the latest checkpoint of `model_dir` (EMA weights preferred)."""
    if not tf.train.latest_checkpoint(model_dir):
        raise FileNotFoundError(
            f'No checkpoint in model_dir {model_dir}: train first '
            f'(python main.py --mode=train --model_dir={model_dir}).'
        )
    args = config.model.as_dict()
    args['sync_bn'] = False
    model = model_lib.EfficientNet(**args)
    weights_lib.load_weights(model, model_dir)
    return model


def export(config, model_dir, export_dir=None, formats=None):
    """Writes the export formats (default `export.DEFAULT_FORMATS`) and checks each one.

    Every written artifact is run against the Keras model on a few images
    (`export.verify_exports`); the parity table is printed (once, on stdout). A quantized
    artifact noisier than its bound is a logged warning, not an error.

    Returns:
        (paths, rows): format name to path, and the parity table.

    Raises:
        ValueError: unknown format names; `export.ExportVerificationError` (a ValueError) when
            an artifact does not reproduce the Keras model.
        ImportError: 'onnx' asked for without the `[onnx]` extra.
    """
    formats = export_lib.check_formats(formats)  # Before loading anything.
    info = data.get_dataset_info(config.data.dataset, data_dir=config.data.data_dir)
    model = load_trained_model(config, model_dir)
    export_dir = export_dir or os.path.join(model_dir, 'export')
    transform = eval_transform(config, info)
    logging.info(
        'Export: %s, %d px, %s preprocessing, centre crop %s, formats %s.',
        config.model.model_name,
        transform['image_size'],
        transform['family'],
        'on' if transform['center_crop'] else 'off',
        ', '.join(formats),
    )
    paths = export_lib.export_all(
        model,
        export_dir,
        image_size=transform['image_size'],
        preprocess=transform['family'],
        class_names=class_names(info),
        center_crop=transform['center_crop'],
        formats=formats,
        verify=False,
    )
    for kind, path in paths.items():
        logging.info('Exported %s: %s', kind, path)
    rows = export_lib.verify_exports(
        model, paths, transform['image_size'], transform['family'], transform['center_crop']
    )
    print(export_lib.format_table(rows), flush=True)  # Once, on stdout (the command's output).
    noisy = [row['artifact'] for row in rows if row.get('noisy')]
    logging.info(
        'Export parity against the Keras model (table above): %d artifact(s) passed%s.',
        len(rows),
        f'; {", ".join(noisy)} noisier than its bound (a warning)' if noisy else '',
    )
    return paths, rows


def infer(config, model_dir, image_paths, top_k=5):
    """Top-k classes per image, printed and returned as [(path, [(name, prob), ...])]."""
    if not image_paths:
        raise ValueError('--mode=infer needs --images=a.jpg,b.png.')
    missing = [p for p in image_paths if not tf.io.gfile.exists(p)]
    if missing:
        raise FileNotFoundError('Image file(s) not found: {}'.format(', '.join(missing)))
    info = data.get_dataset_info(config.data.dataset, data_dir=config.data.data_dir)
    names = class_names(info)
    transform = eval_transform(config, info)
    images = load_images(image_paths, transform)
    model = load_trained_model(config, model_dir)
    results = []
    for path, image in zip(image_paths, images):
        logits = model(image[tf.newaxis], training=False)
        probs = tf.nn.softmax(tf.cast(logits, tf.float32))[0].numpy()
        top = np.argsort(-probs)[: min(top_k, len(probs))]
        row = [(names[i] if names else str(i), float(probs[i])) for i in top]
        results.append((path, row))
        print('{}: {}'.format(path, ', '.join('{} ({:.3f})'.format(*item) for item in row)))
    return results


def load_images(image_paths, transform):
    """Reads image files and applies the eval transform (`eval_transform`'s arguments).

    Returns:
        A list of float32 `[S, S, 3]` tensors.
    """
    images = []
    for path in image_paths:
        with tf.io.gfile.GFile(path, 'rb') as f:
            encoded = tf.constant(f.read())
        try:
            images.append(data.preprocessing.preprocess_for_eval(encoded, **transform))
        except tf.errors.InvalidArgumentError as e:
            raise ValueError(f'Cannot decode image {path}: {e.message}') from None
    return images
