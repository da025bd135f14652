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
# Fashion-MNIST (training.train --dataset fashion_mnist, its tests and notebook) comes from Debian's
# dataset-fashion-mnist package (the four official IDX files, about 30 MB, no download at run time).
FASHION_MNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FASHION_MNIST" ] && [ "${SKIP_APT:-0}" != 1 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "note: no apt-get here; for Fashion-MNIST put its IDX files in a folder and pass" \
             "--dataset fashion_mnist:DIR (its tests skip)"
    else
        if [ "$(id -u)" = 0 ]; then SUDO=(); elif sudo -n true 2>/dev/null; then SUDO=(sudo -n);
        else SUDO=(none); fi
        if [ "${SUDO[0]:-}" = none ]; then
            echo "note: Fashion-MNIST is not installed; as root run:" \
                 "apt-get install dataset-fashion-mnist (its tests skip until then)"
        else
            export DEBIAN_FRONTEND=noninteractive
            "${SUDO[@]}" apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || {
                "${SUDO[@]}" apt-get update -qq >/dev/null 2>&1
                "${SUDO[@]}" apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1
            } || echo "warning: apt-get could not install dataset-fashion-mnist"
        fi
    fi
fi
