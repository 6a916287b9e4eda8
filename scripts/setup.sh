#!/usr/bin/env bash
# Make (or refresh) the virtual environment .venv with torch and picnn_ext built in place, tests included.
#
#   bash scripts/setup.sh                 # CPU torch 2.13.0 (the build these machines carry)
#   TORCH_SPEC="torch==2.11.0" bash scripts/setup.sh   # any other torch, e.g. a CUDA build
#   VENV=.venv-other bash scripts/setup.sh
#
# The extension is compiled against the torch of the environment (--no-build-isolation); MAX_JOBS caps the
# parallel compile jobs.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip setuptools wheel ninja
"$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC"
# Editable, so that the compiled library sits next to the sources that tests import from the checkout.
MAX_JOBS=${MAX_JOBS:-2} "$VENV/bin/python" -m pip install --quiet --no-build-isolation -e ".[test,report,images]"
"$VENV/bin/python" -m picnn_ext.info
