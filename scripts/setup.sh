#!/usr/bin/env bash
# Creates .venv (once) and installs keras_convnext with every backend, training and test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[all]"
# timm serves the tests as a reference implementation of the official and timm checkpoint formats.
# --no-deps: its torchvision requirement does not install beside the CPU torch 2.13.0, and the
# ConvNeXt model code does not need it (tests/weights_references.py stubs it while importing timm).
.venv/bin/python -m pip install -q --no-deps "timm==1.0.31"
