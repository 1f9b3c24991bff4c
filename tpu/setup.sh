#!/usr/bin/env bash
# Copies this repository to every host of the TPU and installs it there, keeping the TPU build
# of TensorFlow that the runtime image ships (pip would otherwise pull the CPU wheel).
set -euo pipefail
source "$(dirname "$0")/env.sh"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ARCHIVE="$(mktemp -d)/efficientnetv2.tar.gz"
tar -czf "$ARCHIVE" -C "$ROOT" efficientnetv2 configs main.py setup.py README.md
gcloud compute tpus tpu-vm scp "$ARCHIVE" "$TPU_NAME": "${GCLOUD_TPU[@]}" --worker=all
# A slice's client finds its hosts through the Cloud TPU API: that needs the API client.
EXTRA="${POD:+cloud-tpu-client}"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_TPU[@]}" --worker=all --command="
  set -e
  mkdir -p ~/efficientnetv2 && tar -xzf ~/efficientnetv2.tar.gz -C ~/efficientnetv2
  cd ~/efficientnetv2
  pip install --no-deps .
  pip install 'keras>=3.3' 'tensorflow-datasets>=4.9' 'absl-py>=1.0' 'PyYAML>=5.4' \
    tensorboard numpy 'scikit-learn>=1.0' $EXTRA
  python3 -c 'import tensorflow as tf, keras; print(tf.__version__, keras.__version__)'"
