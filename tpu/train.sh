#!/usr/bin/env bash
# Starts training in the background on worker 0 of the TPU (the only client, also on a slice).
#   tpu/train.sh RECIPE [main.py flags...]      later flags win, e.g. --mode=traineval
# RECIPE: s, m, l (paper, configs/imagenet-efficientnetv2-*.yaml), s-official, m-official,
#         l-official (the released code's variant), digits (offline smoke test, one host), or
#         custom (nothing preset: give --model_name, --dataset_cfg, ... yourself).
# MODEL_DIR defaults to $BUCKET/runs/efficientnetv2-RECIPE; re-running resumes from it.
set -euo pipefail
source "$(dirname "$0")/env.sh"
RECIPE="${1:?usage: tpu/train.sh s|m|l|s-official|m-official|l-official|digits|custom [flags]}"
shift
case "$RECIPE" in
  s|m|l|s-official|m-official|l-official)
    ARGS="--model_name=efficientnetv2-${RECIPE%%-*} --dataset_cfg=imagenet --data_dir=$DATA_DIR"
    ARGS+=" --config_file=configs/imagenet-efficientnetv2-$RECIPE.yaml" ;;
  digits) ARGS="--model_name=efficientnetv2-b0 --dataset_cfg=digits --config_file=configs/digits.yaml" ;;
  custom) ARGS="" ;;
  *) echo "Unknown recipe '$RECIPE'." >&2; exit 2 ;;
esac
MODEL_DIR="${MODEL_DIR:-$BUCKET/runs/efficientnetv2-$RECIPE}"
if [[ -n "$POD" ]]; then  # Reach all hosts through the TPU name; leave the local chips alone.
  LAUNCH="TPU_LOAD_LIBRARY=0 python3 main.py --tpu=$TPU_NAME --tpu_zone=$ZONE --gcp_project=$PROJECT"
else  # One host: TensorFlow drives the local chips through the PJRT plugin in libtpu.
  LAUNCH="NEXT_PLUGGABLE_DEVICE_USE_C_API=true TF_PLUGGABLE_DEVICE_LIBRARY_PATH=/lib/libtpu.so"
  LAUNCH+=" python3 main.py --tpu=local"
fi
LOG="train-$RECIPE.log"
USER_FLAGS="$(printf ' %q' "$@")"  # Quoted, so that they reach main.py as given.
[[ $# -gt 0 ]] || USER_FLAGS=""
# The log ends with main.py's exit status: 0 done, 143 stopped by SIGTERM after a checkpoint
# (preemption: re-create the TPU and re-run this command to resume), anything else a failure.
gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_TPU[@]}" --worker=0 --command="
cat > ~/train-$RECIPE.sh <<'EOS'
cd ~/efficientnetv2
$LAUNCH --strategy=tpu --mode=train $ARGS --model_dir=$MODEL_DIR$USER_FLAGS
echo \"main.py exit status: \$?\"
EOS
nohup bash ~/train-$RECIPE.sh > ~/$LOG 2>&1 < /dev/null &"
echo "Started. Log: ~/$LOG on worker 0 (tpu-vm ssh ... --command='tail -f ~/$LOG');"
echo "checkpoints and TensorBoard summaries: $MODEL_DIR"
