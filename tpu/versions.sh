# Package versions this project is tested with, shared by tpu/setup.sh (installed next to the
# TPU image's TensorFlow) and .ci/old_tf_smoke.sh (the oldest supported TensorFlow, tested on
# CPU with exactly these). Sourced; override any of them in the environment.
#
# Cloud TPU VM images ship TensorFlow 2.16-2.18 (runtime tpu-vm-tf-2.16.1-pjrt, ...) on Python
# 3.10: Keras 3.12.4 is the newest Keras 3 release that still installs on Python 3.10.
: "${OLDEST_TF_VERSION:=2.16.1}"          # The oldest TensorFlow setup.py admits (the image's).
: "${KERAS_VERSION:=3.12.4}"
: "${TFDS_VERSION:=4.9.10}"               # tensorflow-datasets
