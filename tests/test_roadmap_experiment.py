"""training.roadmap_experiment: roadmap steps trained with the training program's recipe and data.

A tiny run (one step shrunk, 32 px, one epoch of two batches) in the tensorflow pass: the
experiment is glue over the data pipeline, recipe and fit that tests/test_training_*.py run on
every backend, and over roadmap models that tests/test_roadmap.py trains on every backend.
"""

import csv
import json

import pytest
from conftest import BACKEND

from keras_convnext import ConvNeXt
from training.config import ConfigError
from training.roadmap_experiment import RESULT_COLUMNS, main, parse_args

TINY = ["--dataset", "digits", "--epochs", "1", "--steps-per-epoch", "2", "--validation-steps",
        "1", "--batch-size", "8", "--depths", "1", "1", "1", "1", "--width-divisor", "8",
        "--verbose", "0"]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="glue over code tested on every backend")
def test_a_step_trains_with_the_recipe_and_is_reported(tmp_path, capsys):
    # one step keeps the test short; a list is the same loop (and parses: test below)
    out = tmp_path / "roadmap"
    assert main(["--steps", "separate_downsampling", "--output", str(out), *TINY]) == 0
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == RESULT_COLUMNS
    assert [r["step"] for r in rows] == ["separate_downsampling"]
    assert 0.0 <= float(rows[0]["val_accuracy"]) <= 1.0
    # ConvNeXt-T's layout at depths (1, 1, 1, 1) and widths / 8, with 10 classes
    reference = ConvNeXt((1, 1, 1, 1), (12, 24, 48, 96), classes=10)
    assert int(rows[0]["params"]) == reference.count_params()
    assert float(rows[0]["gflops"]) > 0
    history = json.loads((out / "results.json").read_text())[0]["history"]
    assert len(history["loss"]) == 1 and "val_accuracy" in history
    assert (out / "roadmap_experiment.png").read_bytes()[:4] == b"\x89PNG"
    assert "separate_downsampling" in capsys.readouterr().out


def test_steps_and_overrides_are_checked():
    experiment = parse_args(["--steps", "all", "--output", "x", *TINY])
    assert experiment.steps[0] == "resnet50" and len(experiment.steps) == 16
    assert experiment.config.depths == (1, 1, 1, 1) and experiment.width_divisor == 8
    with pytest.raises(ConfigError, match="resnet_50"):
        parse_args(["--steps", "resnet_50"])
    with pytest.raises(ConfigError, match="dims"):
        parse_args(["--steps", "gelu", "--dims", "8", "16", "32", "64"])
