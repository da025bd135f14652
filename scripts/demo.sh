#!/usr/bin/env bash
# The main job on a fresh machine: install into .venv, train a small ConvNeXt on the bundled digits
# (scikit-learn's 1,797 real scans, shipped in the package) and export it (.keras + SavedModel).
# Extra arguments go to the training program, e.g. `bash scripts/demo.sh --epochs 30`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUTPUT=${OUTPUT:-runs/demo}
KERAS_BACKEND=${KERAS_BACKEND:-tensorflow} .venv/bin/python -m training.train \
    --dataset digits --output "$OUTPUT" --epochs 3 "$@"
echo "Exported: $OUTPUT/model.keras and $OUTPUT/saved_model/"
