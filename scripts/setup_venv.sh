#!/usr/bin/env bash
# Creates .venv with plmdiff and its pinned dependencies, if it is missing or stale.
# Where no NVIDIA GPU is visible, torch is the CPU build (a few hundred MB), never the
# multi-GB CUDA build that a plain "pip install torch" pulls from PyPI on Linux.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0
stamp="$VENV/.plmdiff-installed"

if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
    exit 0
fi

"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"plmdiff needs Python 3.11 or newer; {sys.executable} is {sys.version.split()[0]}. "
             "Set PYTHON=/path/to/python3.11 and run again.")
PY

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
pip install --quiet --upgrade pip

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found, installing the CUDA build of torch $TORCH_VERSION"
    pip install --quiet "torch==$TORCH_VERSION"
else
    echo "setup: no GPU found, installing the CPU build of torch $TORCH_VERSION"
    # torch alone first (its dependencies come from PyPI with the project): a wheel cache or
    # mirror that already has the CPU build is used as is; else PyTorch's CPU index.
    pip install --quiet --no-deps "torch==$TORCH_VERSION+cpu" 2>/dev/null ||
        pip install --quiet --no-deps --retries 2 "torch==$TORCH_VERSION+cpu" \
            --index-url https://download.pytorch.org/whl/cpu
fi
pip install --quiet -e ".[dev]"
touch "$stamp"
echo "setup: $VENV is ready ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
