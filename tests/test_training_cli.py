"""``python -m training.train`` as people run it (TensorFlow pass only: these start processes or
need TF's distribution): one-line errors, NaN, SIGKILL + resume, MirroredStrategy over two
logical CPUs, and a two-process MultiWorkerMirroredStrategy run on 127.0.0.1."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run_once_across_backends
from training.train import main

pytestmark = run_once_across_backends()

TINY_FLAGS = ["--dataset", "digits", "--depths", "1", "1", "1", "1", "--dims", "8", "16", "32",
              "64", "--image-size", "32", "--batch-size", "8", "--rand-augment-ops", "0",
              "--warmup-epochs", "1", "--verbose", "0"]


def _env(**extra):
    return {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONPATH": REPO, **extra}


def _cli(args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "training.train", *args], cwd=REPO,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


def _epochs(path):
    with open(path, newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def _error_line(capsys, argv, status=2):
    assert main(argv) == status
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_input_gives_one_line_errors(tmp_path, capsys):
    out = ["--output", str(tmp_path / "run")]
    assert "unknown model 'resnet'" in _error_line(capsys, ["--model", "resnet", *out])
    assert "lr=-0.1" in _error_line(capsys, ["--lr", "-0.1", *out])
    (tmp_path / "bad.yaml").write_text("mixup: lots\n")
    assert "mixup='lots'" in _error_line(capsys, ["--config", str(tmp_path / "bad.yaml"), *out])
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    (tmp_path / "empty" / "dogs").mkdir()
    line = _error_line(capsys, ["--dataset", f"folder:{tmp_path / 'empty'}", *out])
    assert "no images found" in line
    assert "dataset folder not found" in _error_line(
        capsys, ["--dataset", f"folder:{tmp_path / 'missing'}", *out])

    # A corrupt image is found before anything is written, and named.
    rng = np.random.default_rng(0)
    for name in ("cats", "dogs"):
        folder = tmp_path / "images" / name
        folder.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(
                folder / f"{i}.png")
    bad = tmp_path / "images" / "dogs" / "2.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    line = _error_line(capsys, [*TINY_FLAGS, "--dataset", f"folder:{tmp_path / 'images'}",
                                "--val-split", "0.34", "--epochs", "1", "--steps-per-epoch",
                                "2", *out])
    assert line.startswith(f"error: 1 of 6 images in {tmp_path / 'images'} cannot be decoded: "
                           f"{bad} (remove them or pass --skip-bad-images)"), line
    assert not (tmp_path / "run").exists()


def test_nan_loss_stops_with_a_clear_message(tmp_path, capsys):
    line = _error_line(capsys, [*TINY_FLAGS, "--lr", "1e30", "--min-lr", "0", "--epochs", "2",
                                "--steps-per-epoch", "4", "--output", str(tmp_path / "run")],
                       status=1)
    assert "loss became NaN at epoch 1" in line
    assert not os.path.exists(tmp_path / "run" / "checkpoints" / "latest.json")


def test_sigkill_mid_epoch_then_rerun_resumes_each_epoch_once(tmp_path):
    out = tmp_path / "run"
    args = [*TINY_FLAGS, "--epochs", "3", "--steps-per-epoch", "12", "--validation-steps", "2",
            "--no-export", "--output", str(out)]
    latest = out / "checkpoints" / "latest.json"
    process = _cli([*args, "--verbose", "2"])  # Keras logs "Epoch 2/3" as epoch 2 begins
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith("Epoch 2/3"):
            break
    assert process.poll() is None, "".join(seen) + process.communicate()[1][-3000:]
    assert latest.exists(), "epoch 2 began before epoch 1 was checkpointed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = json.loads(latest.read_text())["epoch"]
    assert 1 <= killed_at < 3
    # The CSV row of an epoch is written just before its checkpoint, so a kill in between
    # leaves one row more than the checkpoint; the rerun rewrites the CSV from the checkpoint.
    assert _epochs(out / "metrics.csv") in (list(range(1, killed_at + 1)),
                                             list(range(1, killed_at + 2)))

    process = _cli(args)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    assert f"({killed_at} of 3 epochs done)" in stdout
    assert _epochs(out / "metrics.csv") == [1, 2, 3]
    assert "Best val accuracy" in stdout and f"Files in {out}" in stdout


def test_mirrored_strategy_on_two_logical_cpus_in_bf16(tmp_path):
    out = tmp_path / "run"
    process = _cli([*TINY_FLAGS, "--strategy", "mirrored", "--cpu-devices", "2", "--epochs", "1",
                    "--steps-per-epoch", "2", "--validation-steps", "2", "--mixed-precision",
                    "bf16", "--output", str(out)])
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    assert "mirrored x2: global batch 16, 2 steps/epoch, peak lr 0.006" in stdout  # 2 x 3e-3
    assert "precision mixed_bfloat16" in stdout
    assert _epochs(out / "metrics.csv") == [1]
    check = ("import keras, keras_convnext, sys; m = keras.saving.load_model(sys.argv[1]); "
             "print(sorted({l.dtype_policy.name for l in m.layers}))")
    policies = subprocess.run([sys.executable, "-c", check, str(out / "model.keras")], cwd=REPO,
                              env=_env(), capture_output=True, text=True, check=True).stdout
    assert policies.strip() == "['float32']"  # exports are float32
    assert (out / "saved_model" / "saved_model.pb").is_file()


WORKER = """
import sys, numpy as np, keras, importlib
program = importlib.import_module(sys.argv[3])  # training.train or training.pretrain
values = dict(dataset="digits", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), image_size=32,
              batch_size=8, rand_augment_ops=0, warmup_epochs=1, verbose=0, epochs=2,
              steps_per_epoch=2, export=False, strategy="multiworker", output=sys.argv[1])
if sys.argv[3] == "training.train":
    values["validation_steps"] = 2
else:
    values.update(patch_size=8, decoder_dim=16)
make_config = getattr(program, "make_config", None) or importlib.import_module(
    "training.config").make_config
result = program.run(make_config({}, values), log=print)
np.savez(sys.argv[2], *[keras.ops.convert_to_numpy(v.value) for v in result.model.weights])
"""


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.parametrize("program", ["training.train", "training.pretrain"])
def test_multiworker_two_processes_end_with_identical_weights(tmp_path, program):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path / "run"), str(tmp_path / f"w{index}.npz"),
             program],
            cwd=REPO, env=_env(TF_CONFIG=json.dumps(tf_config)), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    try:
        outputs = [p.communicate(timeout=500) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    for p, (stdout, stderr) in zip(processes, outputs):
        assert p.returncode == 0, stderr[-3000:]
    assert "multiworker x2: global batch 16" in outputs[0][0]
    first, second = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    assert len(first.files) > 0
    for key in first.files:
        np.testing.assert_array_equal(first[key], second[key])
    assert _epochs(tmp_path / "run" / "metrics.csv") == [1, 2]  # written by the chief only
