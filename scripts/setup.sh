#!/usr/bin/env bash
# Set up everything debiascl needs on a fresh machine: the built-in data, a virtual environment,
# PyTorch and the package with its test extras. Safe to run again (it skips what is done).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

# Fashion-MNIST for the demo comes from Debian's dataset-fashion-mnist package.
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian's dataset-fashion-mnist" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: warning: Fashion-MNIST not found; install Debian's dataset-fashion-mnist" \
         "(sudo apt-get install dataset-fashion-mnist) or set data.root" >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

# Keep a working torch; otherwise install the build cached on these machines, else any release
# within pyproject's range.
if ! "$VENV/bin/python" -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "setup: installing PyTorch (a few minutes)" >&2
  "${PIP[@]}" install "torch==2.14.1" "torchvision==0.29.1" 2>/dev/null \
    || "${PIP[@]}" install "torch>=2.3,<3" "torchvision>=0.18"
fi

if ! "$VENV/bin/python" -c "import debiascl, lightly, fairlearn, transformers" >/dev/null 2>&1 \
   || [ pyproject.toml -nt "$VENV/.debiascl-installed" ]; then
  echo "setup: installing debiascl and its test extras" >&2
  "${PIP[@]}" install -e ".[test]"
  touch "$VENV/.debiascl-installed"
fi
