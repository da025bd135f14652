"""benchmarks/bench.py and benchmarks/gemm_floor.py: their machinery, on tiny inputs.

Timings live in the benchmarks and are never checked here; these tests check that the benchmark
measures what it says (the models it names, the GEMMs the model really runs) and writes its
report.
"""

import json
import os
import sys

import pytest
from conftest import BACKEND, REPO

from keras_convnext import build
from keras_convnext.flops import count_flops
from keras_convnext.variants import get_variant

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import bench  # noqa: E402
import gemm_floor  # noqa: E402


@pytest.mark.parametrize("variant,size", [("tiny", 224), ("atto", 64)])
def test_gemm_floor_covers_all_of_the_models_arithmetic_but_the_depthwise_convs(variant, size):
    spec = get_variant(variant)
    shapes, stem = gemm_floor.gemm_shapes(spec.depths, spec.dims, batch=1, size=size)
    gemm_macs = sum(count * m * k * n for (m, k, n), count in shapes.items())
    side = size // 4
    depthwise_macs = 0
    for i, (depth, dim) in enumerate(zip(spec.depths, spec.dims)):
        depthwise_macs += depth * (side >> i) ** 2 * dim * 49
    model = build(variant, input_shape=(size, size, 3), weights=None)
    assert gemm_macs + depthwise_macs == count_flops(model)


def test_a_training_step_runs_every_gemm_three_times_but_the_stems_input_gradient():
    spec = get_variant("atto")
    shapes, stem = gemm_floor.gemm_shapes(spec.depths, spec.dims, batch=2, size=32)
    train = gemm_floor.training_gemms(shapes, stem)
    macs = lambda gemms: sum(c * m * k * n for (m, k, n), c in gemms.items())  # noqa: E731
    assert macs(train) == 3 * macs(shapes) - stem[0] * stem[1] * stem[2]


def test_gemm_floor_reports_positive_times():
    floor = gemm_floor.gemm_floor("atto", batch=1, size=32)
    assert 0 < floor["inference_s"] < floor["train_s"]
    assert floor["train_img_s_max"] < floor["inference_img_s_max"]


def test_bench_times_the_models_it_names_and_writes_json(tmp_path):
    out = tmp_path / "report.json"
    code = bench.main(["--variant", "atto", "--size", "32", "--batch", "2",
                       "--models", "ours_plain,ours", "--steps", "1", "--warmup", "0",
                       "--train-steps", "1", "--train-warmup", "0", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    for what in ("inference", "train"):
        results = report[what]["results"]
        assert list(results) == ["ours_plain", "ours"]  # first calls in the order asked for
        assert all(r["img_s"] > 0 and len(r["times_s"]) == 1 for r in results.values())
        assert "ours/ours_plain" in report[what]["ratios"]


def test_ours_jit_is_our_model_compiled_with_jit_compile_true():
    args = bench.parse_args(["--variant", "atto", "--size", "32", "--models", "ours,ours_jit"])
    entries = {e.name: e for e in bench.keras_entries(args, ["ours", "ours_jit"])}
    models = {name: e.infer.__self__ for name, e in entries.items()}
    assert models["ours_jit"].jit_compile is True  # torch.compile on torch, XLA on TF and JAX
    assert models["ours_jit"].count_params() == models["ours"].count_params()
    assert bench.ratios({"ours": {"img_s": 2.0}, "ours_jit": {"img_s": 3.0}})["ours_jit/ours"] == 1.5


@pytest.mark.skipif(BACKEND != "tensorflow", reason="LiteRT files are written from TensorFlow")
def test_bench_times_our_litert_files_fp32_and_full_integer(tmp_path):
    pytest.importorskip("ai_edge_litert")
    out = tmp_path / "report.json"
    assert bench.main(["--variant", "atto", "--size", "32", "--batch", "2", "--what",
                       "inference", "--models", "ours,litert,litert_int8", "--steps", "1",
                       "--warmup", "0", "--json", str(out)]) == 0
    report = json.loads(out.read_text())["inference"]
    assert list(report["results"]) == ["ours", "litert", "litert_int8"]
    assert all(r["img_s"] > 0 for r in report["results"].values())
    assert {"litert/ours", "litert_int8/ours", "litert_int8/litert"} <= set(report["ratios"])


@pytest.mark.parametrize("choice, expected", [("keras", "AdamW"), ("recipe", "ConvNeXtAdamW")])
def test_bench_trains_ours_with_the_optimizer_asked_for(choice, expected):
    args = bench.parse_args(["--variant", "atto", "--size", "32", "--optimizer", choice])
    (entry,) = bench.keras_entries(args, ["ours"])
    assert type(entry.infer.__self__.optimizer).__name__ == expected


@pytest.mark.skipif(BACKEND != "torch", reason="timm is a PyTorch library")
def test_bench_times_timm_in_fp32_and_under_bf16_autocast(tmp_path):
    out = tmp_path / "report.json"
    assert bench.main(["--variant", "atto", "--size", "32", "--batch", "2",
                       "--models", "timm,timm_bf16", "--steps", "1", "--warmup", "0",
                       "--train-steps", "1", "--train-warmup", "0", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["timm"] and report["timm_bf16"]
    for what in ("inference", "train"):
        assert set(report[what]["results"]) == {"timm", "timm_bf16"}
        assert "timm_bf16/timm" in report[what]["ratios"]


@pytest.mark.skipif(BACKEND != "torch", reason="the harness is the same on every backend (the "
                    "benchmark runs each); runs in the torch pass, where tracing is cheapest")
def test_fcmae_speed_times_pretraining_and_both_encoders(tmp_path):
    import fcmae_speed

    out = tmp_path / "fcmae.json"
    (row,) = fcmae_speed.main(["--size", "32", "--batch", "2", "--steps", "1", "--warmup", "0",
                               "--json", str(out)])
    assert set(row["results"]) == {"fcmae", "masked_encoder", "plain_encoder"}
    assert all(r["img_s"] > 0 and len(r["times_s"]) == 1 for r in row["results"].values())
    assert row["masked_over_plain_encoder"] > 0 and json.loads(out.read_text()) == row


@pytest.mark.skipif(BACKEND != "torch", reason="torch's training GEMMs")
def test_training_gemms_times_each_gemm_and_each_step_setting(tmp_path):
    """benchmarks/training_gemms.py: every training GEMM variant per pointwise shape, and whole
    steps per setting beside timm's, leaving the process's own GEMM choice as it found it."""
    import training_gemms

    from keras_convnext.fast import torch_ops

    before = (list(torch_ops._AVX512), torch_ops.MLP_CHUNK_FROM_BYTES)
    report = training_gemms.main(["--what", "gemms", "--variant", "atto", "--batch", "1",
                                  "--size", "32"])
    assert report["rows"] and all(len(row) == 9 and all(v > 0 for k, v in row.items()
                                                         if k != "shape")
                                  for row in report["rows"])
    out = tmp_path / "step.json"
    report = training_gemms.main(["--what", "step", "--variant", "atto", "--batch", "2",
                                  "--size", "32", "--rounds", "1", "--json", str(out)])
    expected = set(training_gemms.SETTINGS) | ({"timm"} if bench.import_timm() else set())
    assert set(report["results"]) == expected
    assert all(r["img_s"] > 0 for r in report["results"].values())
    assert json.loads(out.read_text())["results"].keys() == report["results"].keys()
    assert (list(torch_ops._AVX512), torch_ops.MLP_CHUNK_FROM_BYTES) == before


@pytest.mark.skipif(BACKEND != "tensorflow",
                    reason="trains and exports with the TensorFlow backend (LiteRT)")
def test_int8_accuracy_evaluates_every_variant_of_a_trained_run(tmp_path):
    import int8_accuracy

    from training.config import make_config
    from training.train import run

    out = tmp_path / "run"
    run(make_config({}, {"dataset": "digits", "depths": (1, 1, 1, 1), "dims": (8, 16, 32, 64),
                         "image_size": 32, "batch_size": 8, "epochs": 1, "steps_per_epoch": 2,
                         "validation_steps": 2, "rand_augment_ops": 0, "verbose": 0,
                         "output": str(out)}), log=lambda m: None)
    report = int8_accuracy.main([str(out), "--limit", "24", "--calibration", "8"])
    assert report["images"] == 24 and report["split"] == "held-out"
    assert report["int8_dense_layers"] == 9  # 4 blocks x 2 pointwise convs + the head
    names = {"keras fp32", "keras int8", "litert fp32", "litert int8"}
    assert set(report["results"]) == names
    assert report["results"]["keras fp32"]["agreement_with_fp32"] == 1.0
    assert report["results"]["litert fp32"]["agreement_with_fp32"] == 1.0  # same float model
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in report["results"].values())


@pytest.mark.skipif(BACKEND != "torch", reason="one process per point on the current backend; "
                    "runs in the torch pass, with timm beside ours")
def test_scaling_measures_each_point_in_its_own_process_and_plots(tmp_path):
    import scaling

    out, png = tmp_path / "scaling.json", tmp_path / "scaling.png"
    assert scaling.main(["--backends", "torch", "--variant", "atto", "--batches", "1,2",
                         "--sizes", "32", "--steps", "1", "--gemm-repeats", "1",
                         "--json", str(out), "--plot", str(png)]) == 0
    points = json.loads(out.read_text())["points"]
    assert sorted((p["model"], p["batch"]) for p in points) == [
        ("ours", 1), ("ours", 2), ("timm", 1), ("timm", 2)]
    for p in points:
        assert p["backend"] == "torch" and p["size"] == 32 and p["img_s"] > 0
        # The fraction is the model's img/s over the GEMM floor's; whether it is below 1 is a
        # measurement (one noisy step here, on a shared CPU), not something a test can assert.
        assert p["gemm_floor_img_s"] > 0
        ratio = p["img_s"] / p["gemm_floor_img_s"]  # of two rounded numbers
        assert p["gemm_fraction"] == pytest.approx(ratio, rel=1e-2, abs=1e-3)
        assert p["peak_rss_mib"] > 0 and p["peak_mib_per_image"] >= 0
    assert png.stat().st_size > 10_000


@pytest.mark.skipif(BACKEND != "torch", reason="one process per point on the current backend; "
                    "runs in the torch pass, with timm beside ours")
def test_train_memory_measures_ours_remat_and_timm_each_in_its_own_process(tmp_path):
    import train_memory

    out = tmp_path / "memory.json"
    assert train_memory.main(["--backends", "torch", "--variant", "atto", "--batch", "2",
                              "--size", "32", "--steps", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [p["model"] for p in report["points"]] == ["ours", "ours_remat", "timm"]
    for p in report["points"]:
        assert p["backend"] == "torch" and (p["batch"], p["size"]) == (2, 32) and p["img_s"] > 0
        assert p["peak_rss_mib"] >= p["rss_before_mib"] > 0
        assert abs(p["added_mib"] - max(p["peak_rss_mib"] - p["rss_before_mib"], 0)) <= 1


def test_train_memory_refuses_an_unknown_model():
    import train_memory

    with pytest.raises(SystemExit):
        train_memory.main(["--models", "ours,resnet"])


def test_data_speed_trains_under_the_configured_dtype_policy():
    """The step that data_speed.py times is the run's: ``mixed_precision`` reaches the model
    (it once timed fp32 under ``--set mixed_precision bf16``)."""
    import keras

    import data_speed

    try:
        row = data_speed.measure({"dataset": "digits", "mixed_precision": "bf16", "batch_size": 16,
                                  "epochs": 1}, batches=1, steps=1)
        assert row["dtype_policy"] == "mixed_bfloat16"
        assert row["train_step_images_per_s"] > 0 and row["pipeline_images_per_s"] > 0
        assert data_speed.measure({"dataset": "digits", "batch_size": 16, "epochs": 1},
                                  batches=1, steps=1)["dtype_policy"] == "float32"
    finally:
        keras.config.set_dtype_policy("float32")
