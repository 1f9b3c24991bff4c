#!/usr/bin/env bash
# Creates the GCS bucket (if missing) and the TPU VM or pod slice described in tpu/env.sh.
# Set SPOT=1 for a Spot TPU (cheaper, preemptible: training resumes from the last checkpoint).
set -euo pipefail
source "$(dirname "$0")/env.sh"
gcloud services enable tpu.googleapis.com --project="$PROJECT"
gcloud storage buckets describe "$BUCKET" --project="$PROJECT" >/dev/null 2>&1 ||
  gcloud storage buckets create "$BUCKET" --project="$PROJECT" --location="${ZONE%-*}"
gcloud compute tpus tpu-vm create "$TPU_NAME" "${GCLOUD_TPU[@]}" \
  --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" ${SPOT:+--spot}
