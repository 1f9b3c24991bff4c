#!/usr/bin/env bash
# UNTESTED on a real TPU. Runs tpu/jax_train.py on every host of the TPU (JAX runs one
# program per host; keras.distribution.initialize() connects them), logging to
# ~/jax-train.log on each. Flags go to jax_train.py, e.g.
#   tpu/jax_train.sh --model_name=efficientnetv2-s --epochs=4 --global_batch=1024
set -euo pipefail
HERE="$(dirname "$0")"
source "$HERE/env.sh"
ARGS="$*"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_TPU[@]}" --worker=all --command="
  cd ~/efficientnetv2 && KERAS_BACKEND=jax nohup python3 tpu/jax_train.py $ARGS \
    > ~/jax-train.log 2>&1 &"
echo "Started on every host; watch with: gcloud compute tpus tpu-vm ssh $TPU_NAME ${GCLOUD_TPU[*]} --worker=0 --command='tail -f ~/jax-train.log'"
