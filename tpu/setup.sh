#!/usr/bin/env bash
# Copies this repository to every host of the TPU and installs it there next to the TPU build
# of TensorFlow that the runtime image ships (2.16-2.18): the project with --no-deps (pip would
# otherwise pull the CPU wheel of tensorflow), then its other dependencies at the versions in
# tpu/versions.sh, which .ci/old_tf_smoke.sh tests with the oldest supported TensorFlow.
# Fails if pip changed the image's TensorFlow.
set -euo pipefail
HERE="$(dirname "$0")"
source "$HERE/env.sh"
source "$HERE/versions.sh"
ROOT="$(cd "$HERE/.." && pwd)"
ARCHIVE="$(mktemp -d)/efficientnetv2.tar.gz"
tar -czf "$ARCHIVE" -C "$ROOT" efficientnetv2 configs main.py setup.py README.md
gcloud compute tpus tpu-vm scp "$ARCHIVE" "$TPU_NAME": "${GCLOUD_TPU[@]}" --worker=all
# A slice's client finds its hosts through the Cloud TPU API: that needs the API client.
EXTRA="${POD:+cloud-tpu-client}"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_TPU[@]}" --worker=all --command="
  set -e
  mkdir -p ~/efficientnetv2 && tar -xzf ~/efficientnetv2.tar.gz -C ~/efficientnetv2
  cd ~/efficientnetv2
  TF_BEFORE=\$(python3 -c 'import tensorflow as tf; print(tf.__version__)' 2>/dev/null)
  pip install --no-deps .
  pip install 'keras==$KERAS_VERSION' 'tensorflow-datasets==$TFDS_VERSION' 'absl-py>=1.0' \
    'PyYAML>=5.4' 'scikit-learn>=1.0' $EXTRA
  TF_AFTER=\$(python3 -c 'import tensorflow as tf; print(tf.__version__)' 2>/dev/null)
  if [ \"\$TF_BEFORE\" != \"\$TF_AFTER\" ]; then
    echo \"pip changed TensorFlow \$TF_BEFORE -> \$TF_AFTER; recreate the TPU.\" >&2; exit 1
  fi
  python3 -c 'import sys, tensorflow as tf, keras, tensorflow_datasets as tfds
print(\"Python\", sys.version.split()[0], \"TensorFlow\", tf.__version__, \"Keras\",
      keras.__version__, \"TFDS\", tfds.__version__)'"
