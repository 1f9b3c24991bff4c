#!/usr/bin/env bash
# CI: the backend-neutral tests (tests/test_backends.py) on JAX or PyTorch, on the CPU, in a
# fresh virtual environment WITHOUT TensorFlow: requirements-<backend>.txt, then the package
# with --no-deps (its install_requires has TensorFlow). Fails if TensorFlow got installed.
# Usage: .ci/backend_tests.sh jax|torch. With EFFNETV2_XBACKEND_DIR set, the tests also load
# the .keras / .weights.h5 files and logits the earlier backends wrote there.
set -euo pipefail
BACKEND="$1"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$(mktemp -d)/venv-$BACKEND"
python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip
case "$BACKEND" in
  jax) pins=() ;;
  # The CPU build (about 190 MB) that lies on this kind of machine; PyPI's is a CUDA build.
  torch) pins=('torch==2.13.0') ;;
  *) echo "unknown backend: $BACKEND (jax or torch)" >&2; exit 2 ;;
esac
"$PY" -m pip install --quiet "${pins[@]}" -r "$ROOT/requirements-$BACKEND.txt" 'pytest>=7'
"$PY" -m pip install --quiet --no-deps -e "$ROOT"
if "$PY" -c 'import tensorflow' 2>/dev/null; then
  echo "TensorFlow is installed in the $BACKEND environment: the test would prove nothing." >&2
  exit 1
fi
export KERAS_BACKEND="$BACKEND"  # Keras defaults to TensorFlow without it.
"$PY" -c "import keras, $BACKEND; print('Keras', keras.__version__, '$BACKEND', $BACKEND.__version__)"
cd "$ROOT"
"$PY" -m pytest -q -W ignore::DeprecationWarning tests/test_backends.py
