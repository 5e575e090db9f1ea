#!/usr/bin/env bash
# Creates .venv with plmdiff and its pinned dependencies, if it is missing or stale.
# TORCH_BUILD chooses torch's build:
#   auto (default): the CUDA build where nvidia-smi sees a GPU, else the CPU build (a few
#                   hundred MB, never the multi-GB CUDA build a plain "pip install torch" pulls);
#   cuda:           the CUDA build whatever this machine has: for a cluster whose login node
#                   (where the venv is built) has no GPU but whose GPU nodes run the jobs;
#   cpu:            the CPU build.
# A GPU job whose torch cannot use its GPU fails at once (plmdiff.core.runtime.resolve_device).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0
TORCH_BUILD=${TORCH_BUILD:-auto}
stamp="$VENV/.plmdiff-installed"

case "$TORCH_BUILD" in
    auto | cuda | cpu) ;;
    *)
        echo "setup: TORCH_BUILD=$TORCH_BUILD; accepted: auto, cuda, cpu" >&2
        exit 2
        ;;
esac
requested=$TORCH_BUILD
if [ "$TORCH_BUILD" = auto ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        TORCH_BUILD=cuda
    else
        TORCH_BUILD=cpu
    fi
fi

# Up to date: installed after the last pyproject.toml change, with the build asked for now
# (an empty stamp, from before TORCH_BUILD existed, holds the build that auto chose).
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
    installed=$(cat "$stamp")
    if [ "$installed" = "$TORCH_BUILD" ] || { [ -z "$installed" ] && [ "$requested" = auto ]; }; then
        exit 0
    fi
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

if [ "$TORCH_BUILD" = cuda ]; then
    echo "setup: installing the CUDA build of torch $TORCH_VERSION (PyPI's Linux wheel)"
    # --force-reinstall: a venv that holds the CPU build ("2.13.0+cpu" satisfies "==2.13.0").
    pip install --quiet --force-reinstall --no-deps "torch==$TORCH_VERSION"
    pip install --quiet "torch==$TORCH_VERSION"
else
    echo "setup: installing the CPU build of torch $TORCH_VERSION"
    # torch alone first (its dependencies come from PyPI with the project): a wheel cache or
    # mirror that already has the CPU build is used as is; else PyTorch's CPU index.
    pip install --quiet --no-deps "torch==$TORCH_VERSION+cpu" 2>/dev/null ||
        pip install --quiet --no-deps --retries 2 "torch==$TORCH_VERSION+cpu" \
            --index-url https://download.pytorch.org/whl/cpu
fi
pip install --quiet -e ".[dev]"
echo "$TORCH_BUILD" >"$stamp"
echo "setup: $VENV is ready ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'))"
