#!/usr/bin/env bash
# UNTESTED on a real TPU. The JAX path for TPU images without TensorFlow (v5e, v5p, v6e):
# copies this repository to every host and installs JAX for TPU, Keras and the package
# without TensorFlow (--no-deps; requirements-jax.txt's other dependencies). Create the TPU
# with a framework-neutral image first, e.g.
#   ACCELERATOR_TYPE=v6e-8 RUNTIME_VERSION=v2-alpha-tpuv6e tpu/create.sh
# (v5e: v2-alpha-tpuv5-lite, v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e). See tpu/README.md.
set -euo pipefail
HERE="$(dirname "$0")"
source "$HERE/env.sh"
ROOT="$(cd "$HERE/.." && pwd)"
ARCHIVE="$(mktemp -d)/efficientnetv2.tar.gz"
tar -czf "$ARCHIVE" -C "$ROOT" efficientnetv2 tpu setup.py README.md requirements-jax.txt
gcloud compute tpus tpu-vm scp "$ARCHIVE" "$TPU_NAME": "${GCLOUD_TPU[@]}" --worker=all
gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_TPU[@]}" --worker=all --command="
  set -e
  mkdir -p ~/efficientnetv2 && tar -xzf ~/efficientnetv2.tar.gz -C ~/efficientnetv2
  cd ~/efficientnetv2
  pip install -U 'jax[tpu]' 'keras>=3.12' 'absl-py>=1.0' 'PyYAML>=5.4' numpy h5py
  pip install --no-deps .
  KERAS_BACKEND=jax python3 -c 'import jax, keras, efficientnetv2
print(\"JAX\", jax.__version__, \"Keras\", keras.__version__, \"devices\", jax.device_count(),
      \"local\", jax.local_device_count())'"
