#!/usr/bin/env bash
# Creates the GCS bucket (if missing) and the TPU VM or pod slice described in tpu/env.sh.
#   tpu/create.sh                  a queued resource (waits until the TPU is ACTIVE)
#   CREATE_MODE=direct tpu/create.sh    `gcloud compute tpus tpu-vm create` instead
# Set SPOT=1 for a Spot TPU (cheaper, preemptible: training resumes from the last checkpoint).
set -euo pipefail
source "$(dirname "$0")/env.sh"
gcloud services enable tpu.googleapis.com --project="$PROJECT"
gcloud storage buckets describe "$BUCKET" --project="$PROJECT" >/dev/null 2>&1 ||
  gcloud storage buckets create "$BUCKET" --project="$PROJECT" --location="${ZONE%-*}"

case "$CREATE_MODE" in
  direct)
    gcloud compute tpus tpu-vm create "$TPU_NAME" "${GCLOUD_TPU[@]}" \
      --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" ${SPOT:+--spot}
    ;;
  queued)
    gcloud compute tpus queued-resources create "$QUEUED_RESOURCE" "${GCLOUD_TPU[@]}" \
      --node-id="$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" \
      --runtime-version="$RUNTIME_VERSION" ${SPOT:+--spot}
    # The request waits in a queue until capacity is free: poll its state.
    while true; do
      STATE="$(gcloud compute tpus queued-resources describe "$QUEUED_RESOURCE" \
        "${GCLOUD_TPU[@]}" --format='value(state.state)')"
      echo "$(date +%T) queued resource $QUEUED_RESOURCE: $STATE"
      case "$STATE" in
        ACTIVE) break ;;
        FAILED|SUSPENDED|SUSPENDING)
          gcloud compute tpus queued-resources describe "$QUEUED_RESOURCE" "${GCLOUD_TPU[@]}"
          echo "The request did not get a TPU; delete it with tpu/delete.sh." >&2
          exit 1 ;;
      esac
      sleep 30
    done
    ;;
  *) echo "CREATE_MODE must be queued or direct. Received: '$CREATE_MODE'" >&2; exit 2 ;;
esac
gcloud compute tpus tpu-vm describe "$TPU_NAME" "${GCLOUD_TPU[@]}" \
  --format='value(state,acceleratorType,runtimeVersion)'
