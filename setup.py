"""Packaging for efficientnetv2: EfficientNet (V1) and EfficientNetV2 on TensorFlow 2 / Keras 3."""

import os
import re

from setuptools import find_packages
from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _version():
    with open(os.path.join(HERE, 'efficientnetv2', '__init__.py')) as f:
        return re.search(r"^__version__ = '([^']+)'", f.read(), re.M).group(1)


def _readme():
    with open(os.path.join(HERE, 'README.md'), encoding='utf-8') as f:
        return f.read()


setup(
    name='efficientnetv2',
    version=_version(),
    description='EfficientNet (V1) and EfficientNetV2 for TensorFlow 2 / Keras 3: models, '
    'progressive training, export.',
    long_description=_readme(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.10',
    packages=find_packages(include=['efficientnetv2', 'efficientnetv2.*']),
    install_requires=[
        # Keras 3. Developed and tested on TF 2.21 with Keras 3.15; the oldest pair, TF 2.16.1
        # with Keras 3.12.4 (what tpu/setup.sh installs on Cloud TPU VM images, whose TF is
        # 2.16-2.18 on Python 3.10), is smoke-tested by .ci/old_tf_smoke.sh.
        'tensorflow>=2.16,<2.22',
        'keras>=3.12',
        'tensorflow-datasets>=4.9',
        'absl-py>=1.0',
        'PyYAML>=5.4',
        'tensorboard',  # tf.summary needs it; TF 2.21 no longer installs it.
        'numpy',
        'scikit-learn>=1.0',  # Only for its bundled 'digits' images (the offline default data).
    ],
    extras_require={
        # ruff: the one code style (pyproject.toml), checked by .ci/run before the tests.
        'test': ['pytest>=7', 'ruff>=0.17,<0.18'],
        'onnx': ['tf2onnx>=1.17', 'onnx>=1.16', 'onnxruntime>=1.18'],
        # benchmarks/: the photo set (progressive.py) and the pictures (plot_progressive.py).
        'bench': ['scikit-image>=0.22', 'matplotlib>=3.8'],
    },
    entry_points={
        'console_scripts': [
            'efficientnetv2-train=efficientnetv2.cli:run',  # = python main.py (same flags)
            # The same as efficientnetv2-train, with --mode=export as the default.
            'efficientnetv2-export=efficientnetv2.cli:run_export',
            # = python -m efficientnetv2.nas
            'efficientnetv2-nas=efficientnetv2.nas.__main__:console_main',
            'efficientnetv2-summary=efficientnetv2.summary:main',
            # = python -m efficientnetv2.scaling (compound scaling, budgets, the grid search).
            'efficientnetv2-scale=efficientnetv2.scaling.__main__:main',
        ]
    },
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
