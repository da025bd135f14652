#!/usr/bin/env bash
# The FCMAE experiment of training/TRAINING.md on Fashion-MNIST: pre-train ConvNeXt V2-atto on the
# training images (labels unused), then fine-tune it with 10 % and with 100 % of the labels, and
# train the same model from random initialization on the same budgets; prints the official test
# accuracy of each (through the SavedModel's serve_uint8, as every Fashion-MNIST run reports it).
#
#   bash scripts/fcmae_fashion_mnist.sh [OUTPUT]      # default runs/fcmae_fashion_mnist_experiment
#
# PRETRAIN_EPOCHS, FULL_EPOCHS (100 % of the labels) and TENTH_EPOCHS (10 %: the same number of
# steps as one full epoch per 10) set the budgets. Reruns resume each run where it stopped.
# Fine-tuning keeps the mild crop (area 0.8-1) with which the experiment was measured; the
# classifier preset has none since (it trains 12 epochs on all labels).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/fcmae_fashion_mnist_experiment}
PY=${PYTHON:-.venv/bin/python}
PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-4}
FULL_EPOCHS=${FULL_EPOCHS:-2}
TENTH_EPOCHS=${TENTH_EPOCHS:-10}

"$PY" -m training.pretrain --dataset fashion_mnist --epochs "$PRETRAIN_EPOCHS" \
    --output "$OUT/pretrain" --verbose 2
for fraction in 0.1 1.0; do
    epochs=$FULL_EPOCHS
    [ "$fraction" = 0.1 ] && epochs=$TENTH_EPOCHS
    for init in fcmae random; do
        weights=()
        [ "$init" = fcmae ] && weights=(--weights "$OUT/pretrain/encoder.weights.h5")
        "$PY" -m training.train --dataset fashion_mnist --model v2_atto \
            --train-fraction "$fraction" --epochs "$epochs" --crop-scale 0.8 1 --crop-ratio 0.9 1.1 \
            "${weights[@]}" \
            --output "$OUT/${init}_labels_${fraction}" --verbose 2
    done
done
"$PY" - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
print("| labels | init | epochs | test accuracy (serve_uint8) |\n|---|---|---|---|")
for fraction in ("0.1", "1.0"):
    for init in ("fcmae", "random"):
        run = os.path.join(out, f"{init}_labels_{fraction}")
        config = json.load(open(os.path.join(run, "config.json")))
        test = json.load(open(os.path.join(run, "test_metrics.json")))
        print(f"| {float(fraction):.0%} | {init} | {config['epochs']} | {test['accuracy']:.2%} |")
EOF
