#!/usr/bin/env bash
# CI: the lower bound of the supported range. In a fresh virtual environment with the oldest
# TensorFlow that setup.py admits (CPU) and the Keras and tensorflow-datasets versions that
# tpu/setup.sh installs on a Cloud TPU VM (tpu/versions.sh), installs this project as a user
# would (`pip install .`, not editable), runs tests/test_smoke.py against that install, then its
# console scripts (efficientnetv2-train, -summary, -export) from an empty directory.
# Uses Python 3.10 (as on the TPU VM images) when one is found; OLD_TF_PYTHON overrides.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=../tpu/versions.sh
source "$ROOT/tpu/versions.sh"

find_python() {
  if [ -n "${OLD_TF_PYTHON:-}" ]; then echo "$OLD_TF_PYTHON"; return; fi
  if python3.10 -c '' 2>/dev/null; then command -v python3.10; return; fi
  if command -v pyenv >/dev/null 2>&1; then  # pyenv's 3.10, when it is not the selected one.
    local candidate
    for candidate in "$(pyenv root)"/versions/3.10*/bin/python3.10; do
      if [ -x "$candidate" ]; then echo "$candidate"; return; fi
    done
  fi
  echo python3
}

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# OLD_TF_VENV: keep the environment there and reuse it on the next run (only the project is
# reinstalled); by default a fresh one is made and removed.
VENV="${OLD_TF_VENV:-$WORK/venv}"
PIP=("$VENV/bin/python" -m pip --quiet --disable-pip-version-check)
if [ ! -x "$VENV/bin/python" ]; then
  "$(find_python)" -m venv "$VENV"
  "${PIP[@]}" install --upgrade pip
  # The TensorFlow wheel is the CPU build here (no GPU); setup.py names 'tensorflow', so this
  # is the distribution that satisfies it (tensorflow-cpu would not: pip would add 2.21).
  "${PIP[@]}" install "tensorflow==$OLDEST_TF_VERSION" "keras==$KERAS_VERSION" \
    "tensorflow-datasets==$TFDS_VERSION"
fi
"${PIP[@]}" install --force-reinstall --no-deps "$ROOT"
"${PIP[@]}" install "$ROOT[test]"

export TF_CPP_MIN_LOG_LEVEL=2
cd "$WORK"  # Away from the checkout: the import below must find the installed package.
"$VENV/bin/python" - "$OLDEST_TF_VERSION" "$KERAS_VERSION" <<'PY'
import sys
import efficientnetv2, keras, tensorflow as tf
print('Python %s, TensorFlow %s, Keras %s, efficientnetv2 from %s' % (
    sys.version.split()[0], tf.__version__, keras.__version__, efficientnetv2.__file__))
assert (tf.__version__, keras.__version__) == tuple(sys.argv[1:3]), 'pip changed the pins'
assert 'site-packages' in efficientnetv2.__file__, efficientnetv2.__file__
PY

# The pytest script, not `python -m pytest`: the checkout's root stays off sys.path, so the
# tests import the installed package (tests/ itself is added, for test_model's table).
cd "$ROOT"
set +e
EFFICIENTNETV2_SMOKE_ALL_MODELS=1 "$VENV/bin/pytest" -q -p no:cacheprovider tests/test_smoke.py
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
if [ "$status" -ne 0 ]; then
  exit "$status"
fi

# The installed commands (setup.py's console scripts), run from an empty directory: they must
# need nothing of the checkout, and write nothing where they run unless told to.
BIN="$VENV/bin"
RUN="$WORK/run"
mkdir "$WORK/empty"
cd "$WORK/empty"
set +e
"$BIN/efficientnetv2-train" --helpshort >"$WORK/help.txt"
status=$?
set -e
# Help asked for exits 0 (efficientnetv2.console); a missing script or a crash fails below.
if [ "$status" -ne 0 ] || ! grep -q -- '--model_dir:' "$WORK/help.txt"; then
  echo "efficientnetv2-train --helpshort: exit $status, flags not listed" >&2
  exit 1
fi
"$BIN/efficientnetv2-summary" --model_name=efficientnetv2-b0 --image_size=224 \
  | tee "$WORK/summary.txt"
grep -Eq '^efficientnetv2-b0 +224 +7,139,704 +7,200,312 ' "$WORK/summary.txt"
# A tiny real run: two blocks, one epoch of digits at 16 px, then its export (default formats,
# each checked against the Keras model by the exporter).
TINY="model.blocks=['r1_k3_s1_e1_i16_o8_c1','r1_k3_s2_e4_i8_o16_c1'],model.feature_size=32"
TINY+=",train.epochs=1,train.stages=0,train.image_size=16,train.min_image_size=16"
TINY+=",eval.image_size=16,train.batch_size=128"
"$BIN/efficientnetv2-train" --mode=train --strategy=cpu --model_dir="$RUN" --hparam_str="$TINY"
"$BIN/efficientnetv2-export" --model_dir="$RUN"
for file in config.yaml export/saved_model/saved_model.pb export/model.keras export/model.tflite; do
  if [ ! -s "$RUN/$file" ]; then
    echo "efficientnetv2-export: $RUN/$file is missing" >&2
    exit 1
  fi
done
if [ -n "$(ls -A "$WORK/empty")" ]; then
  echo "the commands wrote into the current directory: $(ls -A "$WORK/empty")" >&2
  exit 1
fi
echo "installed commands: ok"
