"""Nothing lost, nothing silent: the lock on ``--output``, verified checkpoints (a damaged one is
reported and the previous good one used), every damaged weights file as one ``CheckpointError``,
a changed schedule refused, and runs killed with SIGKILL at random moments ending exactly like
an unbroken run."""

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import h5py
import keras
import numpy as np
import pytest

import keras_convnext
from conftest import REPO, run_once_across_backends
from keras_convnext.weights import CheckpointError
from keras_convnext.weights.files import load_keras_model, read_keras_h5, read_safetensors
from training import lock
from training.checkpoint import CheckpointManager
from training.config import make_config
from training.train import main, run

TINY = {"dataset": "digits", "depths": (1, 1, 1, 1), "dims": (8, 16, 32, 64), "image_size": 32,
        "batch_size": 8, "steps_per_epoch": 2, "warmup_epochs": 1, "rand_augment_ops": 0,
        "verbose": 0, "mixup_prob": 1.0, "drop_path": 0.2}
TINY_FLAGS = ["--dataset", "digits", "--depths", "1", "1", "1", "1", "--dims", "8", "16", "32",
              "64", "--image-size", "32", "--batch-size", "8", "--rand-augment-ops", "0",
              "--warmup-epochs", "1", "--mixup-prob", "1.0", "--drop-path", "0.2",
              "--validation-steps", "2", "--verbose", "2"]
TEMPORARY = (".tmp-", ".old-", lock.LOCK_NAME)


def _env():
    return {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONPATH": REPO}


def _h5_arrays(path):
    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return arrays


def _assert_same_arrays(a, b, atol=1e-6):
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=atol, err_msg=name)


def _epochs(path):
    with open(path, newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def _zero(path, offset, size):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\0" * size)


def _truncate(path, fraction=0.5):
    with open(path, "r+b") as f:
        f.truncate(int(os.path.getsize(path) * fraction))


def _one_error_line(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _small_model(classes=3):
    model = keras_convnext.ConvNeXt((1, 1, 1, 1), (8, 16, 32, 64), input_shape=(32, 32, 3),
                                    classes=classes)
    model.compile(optimizer="adamw", loss="categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    return model


def _values(model):
    return [keras.ops.convert_to_numpy(v.value).copy() for v in model.weights]


# ------------------------------------------------------------------------------- the lock


@run_once_across_backends("the lock is file-system work")
def test_a_busy_output_is_refused_naming_the_pid_and_left_untouched(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    partial = out / "checkpoints" / ".ckpt-0002.tmp-4242.weights.h5"  # the first run saving
    partial.write_bytes(b"being written")
    (out / "config.json").write_text('{"first": "run"}')
    # Another program holding the lock as training.lock takes it (flock + its pid), without
    # the seconds of importing Keras.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "os.write(fd, str(os.getpid()).encode()); print('locked', flush=True); time.sleep(120)",
         str(out / lock.LOCK_NAME)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = sorted(p.name for p in out.rglob("*"))
        line = _one_error_line(capsys, [*TINY_FLAGS, "--epochs", "1", "--output", str(out)])
        assert f"in use by process {holder.pid}" in line and str(out) in line
        assert sorted(p.name for p in out.rglob("*")) == before  # no logs/, nothing cleaned
        assert partial.read_bytes() == b"being written"
        assert (out / "config.json").read_text() == '{"first": "run"}'
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing: its lock file (naming it) is taken over.
    assert (out / lock.LOCK_NAME).read_text().strip() == str(holder.pid)
    handle = lock.acquire(str(out))
    assert (out / lock.LOCK_NAME).read_text().strip() == str(os.getpid())
    with pytest.raises(lock.FolderLocked, match=f"process {os.getpid()}"):
        lock.acquire(str(out))  # one holder at a time, in one process too
    lock.release(handle)
    assert not (out / lock.LOCK_NAME).exists()
    with lock.hold(str(out)):
        assert (out / lock.LOCK_NAME).exists()
    assert not (out / lock.LOCK_NAME).exists()


# ------------------------------------------------------------------- checkpoint integrity


@pytest.mark.parametrize("damage", ["zero_64k", "truncate"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_good_one(tmp_path, damage):
    model = _small_model()
    manager = CheckpointManager(str(tmp_path))
    manager.save(model, 1, {"rows": [{"epoch": 1}]})
    first = _values(model)
    for v in model.trainable_variables:
        v.assign(v + 1.0)
    manager.save(model, 2, {"rows": [{"epoch": 1}, {"epoch": 2}]})
    newest = tmp_path / "ckpt-0002.weights.h5"
    record = json.loads((tmp_path / "latest.json").read_text())
    assert len(record["sha256"]) == 64 and record["earlier"][0]["file"] == "ckpt-0001.weights.h5"
    if damage == "zero_64k":  # lands in the arrays: h5py would load it without a word
        _zero(newest, os.path.getsize(newest) // 2, 64 * 1024)
    else:
        _truncate(newest)

    messages = []
    restored = manager.restore(model, log=messages.append)
    assert restored["epoch"] == 1 and restored["state"]["rows"] == [{"epoch": 1}]
    assert len(messages) == 1 and str(newest) in messages[0] and "ckpt-0001" in messages[0]
    for value, expected in zip(_values(model), first):
        np.testing.assert_array_equal(value, expected)

    _zero(tmp_path / "ckpt-0001.weights.h5", 0, 4096)  # no good checkpoint left
    with pytest.raises(CheckpointError, match="cannot resume: checkpoint .*ckpt-0002") as e:
        manager.restore(model, log=messages.append)
    assert "\n" not in str(e.value)
    (tmp_path / "latest.json").write_text('{"epoch": 2, "fi')
    with pytest.raises(CheckpointError, match="latest.json is damaged"):
        manager.restore(model)


@run_once_across_backends("file reading does not depend on the backend")
def test_every_damaged_weights_file_is_one_checkpoint_error_naming_it(tmp_path):
    # A native .weights.h5 big enough (~5 MB) for "1 MB zeroed in the middle" to hit HDF5's
    # metadata (h5py raises a bare RuntimeError or OSError there).
    model = keras_convnext.ConvNeXt((2, 2, 2, 2), (32, 64, 128, 256), input_shape=(32, 32, 3),
                                    classes=10)
    good = tmp_path / "good.weights.h5"
    model.save_weights(good)
    size = os.path.getsize(good)
    assert size > 3 << 20
    for name, damage in [("zero_1m_middle", lambda p: _zero(p, size // 2 - (1 << 19), 1 << 20)),
                         ("zero_64k_head", lambda p: _zero(p, 0, 64 * 1024)),
                         ("truncated", _truncate)]:
        path = tmp_path / f"{name}.weights.h5"
        shutil.copy(good, path)
        damage(path)
        try:
            keras_convnext.load_weights(model, str(path))
        except CheckpointError as e:
            assert str(path) in str(e) and "\n" not in str(e)
        else:  # only arrays were hit: HDF5 cannot know; a sidecar hash does
            assert name == "zero_1m_middle"
            with open(f"{path}.sha256", "w") as f:
                f.write(f"{'0' * 64}  {path.name}\n")
            with pytest.raises(CheckpointError, match="sha256"):
                read_keras_h5(str(path))

    # .keras archives: truncated, or 64 KiB zeroed (zip CRCs catch it), and a keras
    # .weights.h5 of a non-ConvNeXt model.
    keras_file = tmp_path / "model.keras"
    keras_convnext.ConvNeXt((1, 1, 1, 1), (8, 16, 32, 64), input_shape=(32, 32, 3),
                            classes=3).save(keras_file)
    assert load_keras_model(keras_file, compile=False).count_params() > 0
    for name, damage in [("truncated", _truncate),
                         ("zeroed", lambda p: _zero(p, os.path.getsize(p) // 3, 64 * 1024))]:
        path = tmp_path / f"{name}.keras"
        shutil.copy(keras_file, path)
        damage(path)
        with pytest.raises(CheckpointError) as e:
            load_keras_model(path, compile=False)
        assert str(path) in str(e.value) and "not found" not in str(e.value)
    safetensors = tmp_path / "model.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [256], "data_offsets": [0, 1024]}})
    safetensors.write_bytes(len(header).to_bytes(8, "little") + header.encode() + bytes(1024))
    _truncate(safetensors, 0.6)
    with pytest.raises(CheckpointError, match="safetensors"):
        read_safetensors(str(safetensors))


@run_once_across_backends("the CLI's error path does not depend on the backend")
def test_a_damaged_keras_file_to_fine_tune_from_is_one_line(tmp_path, capsys):
    path = tmp_path / "pretrained.keras"
    keras_convnext.ConvNeXt((1, 1, 1, 1), (8, 16, 32, 64), input_shape=(32, 32, 3),
                            classes=10).save(path)
    _truncate(path)
    line = _one_error_line(capsys, [*TINY_FLAGS, "--weights", str(path), "--epochs", "1",
                                    "--output", str(tmp_path / "run")])
    assert str(path) in line and "not found" not in line.lower()


# --------------------------------------------------------------- schedule, exact resume


def test_resume_is_exact_and_a_damaged_checkpoint_is_redone(tmp_path):
    """An unbroken 2-epoch run, then its newest checkpoint damaged: the rerun says so, resumes
    from epoch 1 and writes epoch 2 again to the same weights (data order, augmentation and
    stochastic depth restored), on every backend."""
    out = tmp_path / "run"
    config = make_config({}, {**TINY, "epochs": 2, "export": False, "output": str(out)})
    run(config, log=lambda m: None)
    ckpt = out / "checkpoints" / "ckpt-0002.weights.h5"
    unbroken = _h5_arrays(ckpt)
    rows = (out / "metrics.csv").read_text()
    _zero(ckpt, os.path.getsize(ckpt) // 2, 64 * 1024)

    messages = []
    result = run(config, log=messages.append)
    assert result.resumed_from == 1
    assert any(m.startswith("warning: checkpoint") and "damaged" in m for m in messages)
    _assert_same_arrays(_h5_arrays(ckpt), unbroken)
    assert (out / "metrics.csv").read_text().splitlines()[1:] == rows.splitlines()[1:] or (
        _epochs(out / "metrics.csv") == [1, 2])


@run_once_across_backends("the refusal happens before any backend work")
def test_a_longer_run_on_a_finished_folder_is_refused_unless_asked(tmp_path, capsys):
    out = tmp_path / "run"
    args = [*TINY_FLAGS, "--steps-per-epoch", "2", "--no-export", "--output", str(out)]
    assert main([*args, "--epochs", "1"]) == 0
    capsys.readouterr()
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    line = _one_error_line(capsys, [*args, "--epochs", "2"])
    assert "total_steps 2 -> 4" in line and "new --output" in line
    assert "--restart-schedule" in line
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    assert main([*args, "--epochs", "2", "--restart-schedule"]) == 0
    assert "Restarting the schedule" in capsys.readouterr().out
    assert _epochs(out / "metrics.csv") == [1, 2]


# --------------------------------------------------------------------- fault injection


class _Watched:
    """A training subprocess whose output lines are collected by a thread."""

    def __init__(self, args):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "training.train", *args], cwd=REPO, env=_env(),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line)

    def kill_when(self, ready, timeout=400):
        """SIGKILLs the process as soon as ``ready()``; returns False if it ended first."""
        deadline = time.time() + timeout
        while self.process.poll() is None and time.time() < deadline:
            if ready():
                self.process.send_signal(signal.SIGKILL)
                self.process.wait()
                return True
            time.sleep(0.002)
        self.process.wait()
        return False


def _names(folder):
    return [n for _, dirs, files in os.walk(folder) for n in dirs + files]


@run_once_across_backends("the run machinery (tf.data, checkpoints, files) is the same on "
                          "every backend; test_resume_is_exact_... checks each backend's resume")
def test_sigkill_at_random_moments_then_rerun_ends_like_an_unbroken_run(tmp_path):
    epochs, steps = 3, 3
    values = {**TINY, "epochs": epochs, "steps_per_epoch": steps, "validation_steps": 2}
    reference = run(make_config({}, {**values, "export": False,
                                     "output": str(tmp_path / "reference")}), log=lambda m: None)
    reference_ckpt = _h5_arrays(tmp_path / "reference" / "checkpoints" / f"ckpt-{epochs:04d}"
                                ".weights.h5")

    out = tmp_path / "run"
    args = [*TINY_FLAGS, "--epochs", str(epochs), "--steps-per-epoch", str(steps),
            "--output", str(out)]
    rng = random.Random(os.getpid())
    kills = []

    def saving():  # a checkpoint or a best model being written
        return any(".tmp-" in n for n in _names(out))

    def exporting():
        return any(n.startswith(("saved_model.tmp-", ".model.tmp-")) for n in _names(out))

    def mid_epoch(watched, delay):
        began = {}

        def ready():
            if any(line.startswith("Epoch 2/") for line in watched.lines):
                began.setdefault("at", time.time())
                return time.time() - began["at"] > delay
            return False
        return ready

    moments = [("mid-epoch", lambda w: mid_epoch(w, rng.uniform(0.0, 0.5))),
               ("mid-save", lambda w: saving), ("export", lambda w: exporting)]
    for name, trigger in moments:
        watched = _Watched(args)
        if watched.kill_when(trigger(watched)):
            kills.append(name)
    final = _Watched(args)
    assert not final.kill_when(lambda: False, timeout=600)
    assert final.process.returncode == 0, "".join(final.lines)[-3000:]
    assert len(kills) >= 2, kills  # the kills came at the moments named (most of them)

    assert _epochs(out / "metrics.csv") == list(range(1, epochs + 1))
    assert not [n for n in _names(out) if any(t in n for t in TEMPORARY)], _names(out)
    _assert_same_arrays(_h5_arrays(out / "checkpoints" / f"ckpt-{epochs:04d}.weights.h5"),
                        reference_ckpt)
    exported = load_keras_model(out / "model.keras", compile=False)
    for v, ref in zip(exported.trainable_variables, reference.model.trainable_variables):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(v.value),
                                   keras.ops.convert_to_numpy(ref.value), rtol=1e-5, atol=1e-6)
