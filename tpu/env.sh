# Settings shared by the tpu/*.sh scripts (sourced). Override any of them in the environment:
#   ACCELERATOR_TYPE=v3-32 ZONE=europe-west4-a BUCKET=gs://my-bucket tpu/create.sh
: "${PROJECT:=$(gcloud config get-value project 2>/dev/null)}"
: "${ZONE:=europe-west4-a}"            # A zone that offers ACCELERATOR_TYPE (see tpu/README.md).
: "${TPU_NAME:=effnetv2}"              # The TPU VM (node) name.
: "${QUEUED_RESOURCE:=${TPU_NAME}-qr}" # The queued-resource request that creates it.
: "${CREATE_MODE:=queued}"             # queued (queued-resources create) or direct (tpu-vm create).
: "${ACCELERATOR_TYPE:=v3-8}"          # v3-8, v4-8, v5litepod-8, v6e-8: one host; larger: a slice.
: "${TF_VERSION:=2.16.1}"              # The image's TensorFlow: 2.16.1, 2.17.x or 2.18.x.
: "${BUCKET:=gs://${PROJECT}-effnetv2}"
: "${DATA_DIR:=${BUCKET}/imagenet}"    # ImageNet TFRecords: train-*, validation-*.
# More than 8 cores/chips means several hosts: a pod slice, which needs the '-pod' runtime and
# is driven by one client on worker 0 that reaches the other hosts through the TPU name.
POD=""
if (( ${ACCELERATOR_TYPE##*-} > 8 )); then POD=1; fi
: "${RUNTIME_VERSION:=tpu-vm-tf-${TF_VERSION}${POD:+-pod}-pjrt}"
GCLOUD_TPU=(--project="$PROJECT" --zone="$ZONE")
