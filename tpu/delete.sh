#!/usr/bin/env bash
# Deletes the TPU of tpu/env.sh (and its queued-resource request). The bucket is kept: the
# checkpoints in it let a re-created TPU resume. A preempted TPU stays PREEMPTED until deleted.
set -euo pipefail
source "$(dirname "$0")/env.sh"
if [[ "$CREATE_MODE" == queued ]]; then
  # --force also deletes the TPU VM the request created.
  gcloud compute tpus queued-resources delete "$QUEUED_RESOURCE" "${GCLOUD_TPU[@]}" \
    --force --quiet
else
  gcloud compute tpus tpu-vm delete "$TPU_NAME" "${GCLOUD_TPU[@]}" --quiet
fi
