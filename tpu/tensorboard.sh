#!/usr/bin/env bash
# Serves TensorBoard on worker 0 for LOGDIR (default: all runs in the bucket) and forwards it
# to http://localhost:6006 on this machine. Ctrl-C stops both. `python3 -m tensorboard.main`
# does not need the `tensorboard` script on PATH (a user install puts it in ~/.local/bin).
set -euo pipefail
source "$(dirname "$0")/env.sh"
LOGDIR="${1:-$BUCKET/runs}"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_TPU[@]}" --worker=0 \
  --command="python3 -m tensorboard.main --logdir=$LOGDIR --port=6006" -- -L 6006:localhost:6006
