"""Fashion-MNIST: the IDX reader against the format's rules, the source and its official test
split, the preset, and a short run on a slice of the real data that learns and evaluates the
exported SavedModel on raw 28x28 uint8 images."""

import csv
import gzip
import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, run_once_across_backends

pytestmark = run_once_across_backends(reason="the reader and tf.data do not depend on the backend")

from training import data, idx  # noqa: E402
from training.config import make_config  # noqa: E402

TYPE_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D,
              np.float64: 0x0E}


def write_idx(path, array, compress=False):
    """An IDX file written from the format's description (not by the reader's code)."""
    array = np.asarray(array)
    header = bytes([0, 0, TYPE_CODES[array.dtype.type], array.ndim])
    header += b"".join(struct.pack(">i", d) for d in array.shape)
    body = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(body)
    return path


def write_fashion_fixture(directory, n_train=40, n_test=20, compress=True, seed=0):
    """A Fashion-MNIST-shaped folder: four IDX files of random images, labels 0..9 cycling."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    suffix = ".gz" if compress else ""
    for split, n in (("train", n_train), ("test", n_test)):
        images_stem, labels_stem = data.FASHION_MNIST_FILES[split]
        write_idx(os.path.join(directory, images_stem + suffix),
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), compress)
        write_idx(os.path.join(directory, labels_stem + suffix),
                  (np.arange(n) % 10).astype(np.uint8), compress)
    return str(directory)


def real_fashion_mnist():
    """The Debian package's folder; skips only where it cannot be installed."""
    path = data.FASHION_MNIST_DIR
    if idx.find_idx(path, data.FASHION_MNIST_FILES["train"][0]) is not None:
        return path
    can_install = shutil.which("apt-get") and (
        os.geteuid() == 0 or subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0)
    if can_install:
        pytest.fail(f"{path} is missing though apt-get can install it here: run scripts/setup.sh "
                    f"(it installs {data.FASHION_MNIST_PACKAGE})")
    pytest.skip(f"Fashion-MNIST is not installed and cannot be here: as root, "
                f"apt-get install {data.FASHION_MNIST_PACKAGE}")


# ------------------------------------------------------------------------------------ reader


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_reader_returns_what_was_written(tmp_path, dtype, compress):
    values = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5)
    values = values.astype(dtype) if dtype not in (np.uint8,) else np.abs(values).astype(dtype)
    path = write_idx(tmp_path / "a.idx", values, compress)
    out = idx.read_idx(str(path))
    assert out.dtype == np.dtype(dtype) and out.shape == (2, 3, 5)
    np.testing.assert_array_equal(out, values)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:3], "too short for an IDX header"),
    (lambda b: b"\x01" + b[1:], "not an IDX file"),
    (lambda b: b[:2] + b"\x07" + b[3:], "unknown IDX type code 0x07"),
    (lambda b: b[:3] + b"\x00" + b[4:], "declares 0 dimensions"),
    (lambda b: b[:8], "truncated header (8 bytes, 3 dimensions need 16)"),
    (lambda b: b[:-1], "truncated: shape (4, 28, 28) of uint8 needs 3152 bytes, the file holds 3151"),
    (lambda b: b + b"\x00", "has trailing bytes"),
])
def test_reader_rejects_files_that_break_the_format(tmp_path, damage, message):
    good = write_idx(tmp_path / "good", np.zeros((4, 28, 28), np.uint8))
    bad = tmp_path / "bad"
    bad.write_bytes(damage(good.read_bytes()))
    with pytest.raises(idx.IdxError, match="^" + str(bad).replace("(", r"\(")) as error:
        idx.read_idx(str(bad))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_reader_reports_a_damaged_gzip_stream(tmp_path):
    path = write_idx(tmp_path / "x.gz", np.zeros((100, 28, 28), np.uint8), compress=True)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # cut inside the deflate stream
    with pytest.raises(idx.IdxError, match="damaged gzip data"):
        idx.read_idx(str(path))


# ------------------------------------------------------------------------------------ source


def test_source_splits_train_holds_out_a_stratified_part_and_keeps_the_official_test(tmp_path):
    folder = write_fashion_fixture(tmp_path / "fm", n_train=100, n_test=30, compress=False)
    config = make_config(flag_values={"dataset": f"fashion_mnist:{folder}", "val_split": 0.2})
    source = data.load(config)
    assert (source.num_train, source.num_val, source.num_test) == (80, 20, 30)
    assert source.num_classes == 10 and source.class_names[0] == "T-shirt/top"
    val_labels = [int(y) for _, y in source.val.as_numpy_iterator()]
    assert sorted(np.bincount(val_labels, minlength=10)) == [2] * 10  # 2 of each class
    image, _ = next(source.test.as_numpy_iterator())
    assert image.shape == (28, 28, 3) and image.dtype == np.uint8
    assert np.array_equal(image[..., 0], image[..., 2])  # gray replicated
    one = data.load(make_config(flag_values={"dataset": f"fashion_mnist:{folder}", "channels": 1}))
    assert next(one.test.as_numpy_iterator())[0].shape == (28, 28, 1)
    assert next(one.train.as_numpy_iterator())[0].shape == (28, 28, 1)


def test_source_errors_name_the_problem(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(data.DataError, match="apt-get install dataset-fashion-mnist"):
        data.load(make_config(flag_values={"dataset": f"fashion_mnist:{empty}"}))
    folder = write_fashion_fixture(tmp_path / "fm")
    labels = os.path.join(folder, data.FASHION_MNIST_FILES["train"][1] + ".gz")
    write_idx(labels, np.arange(39, dtype=np.uint8) % 10, compress=True)
    with pytest.raises(data.DataError, match=r"\(39,\) labels for 40 images"):
        data.load(make_config(flag_values={"dataset": f"fashion_mnist:{folder}"}))
    write_idx(labels, np.full(40, 10, np.uint8), compress=True)
    with pytest.raises(data.DataError, match="label 10 out of range"):
        data.load(make_config(flag_values={"dataset": f"fashion_mnist:{folder}"}))
    with open(labels, "r+b") as f:  # a truncated file: the reader's error, as a DataError
        f.truncate(30)
    with pytest.raises(data.DataError, match="damaged gzip data|truncated"):
        data.load(make_config(flag_values={"dataset": f"fashion_mnist:{folder}"}))


def test_the_preset_applies_with_or_without_a_folder():
    default = make_config(flag_values={"dataset": "fashion_mnist"})
    elsewhere = make_config(flag_values={"dataset": "fashion_mnist:/somewhere"})
    assert default.output == elsewhere.output == "runs/fashion_mnist"
    assert default.model == elsewhere.model and default.image_size == elsewhere.image_size
    assert default.image_size >= 32 and default.epochs < 300


def test_the_debian_files_are_the_official_dataset():
    folder = real_fashion_mnist()
    images, labels = data.load_fashion_mnist(folder, "train")
    test_images, test_labels = data.load_fashion_mnist(folder, "test")
    assert images.shape == (60000, 28, 28) and test_images.shape == (10000, 28, 28)
    assert np.bincount(labels).tolist() == [6000] * 10
    assert np.bincount(test_labels).tolist() == [1000] * 10


# ------------------------------------------------------------------------ training on a slice


def write_real_slice(directory, n_train, n_test):
    """The first images of each real split, written as IDX files (a small, real dataset)."""
    source = real_fashion_mnist()
    os.makedirs(directory, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = data.load_fashion_mnist(source, split)
        for stem, values in zip(data.FASHION_MNIST_FILES[split], (images[:n], labels[:n])):
            write_idx(os.path.join(directory, stem), values)
    return str(directory)


def test_a_short_run_on_real_images_learns_and_the_saved_model_is_evaluated_on_the_test_set(
        tmp_path):
    folder = write_real_slice(tmp_path / "slice", n_train=1200, n_test=300)
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "training.train", "--dataset", f"fashion_mnist:{folder}",
         "--depths", "1", "1", "2", "1", "--dims", "16", "32", "64", "128", "--epochs", "4",
         "--batch-size", "32", "--lr", "4e-3", "--warmup-epochs", "1", "--ema-decay", "0.9",
         "--output", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
        env={**os.environ, "KERAS_BACKEND": "tensorflow"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["val_accuracy"]) > 0.5  # chance: 0.1
    record = json.loads((out / "test_metrics.json").read_text())
    assert record["num_test"] == 300 and record["through"].startswith("saved_model serve_uint8")
    matrix = np.array(record["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 300
    assert record["accuracy"] == pytest.approx(np.trace(matrix) / 300)
    assert record["accuracy"] > 0.5
    # the exported graph (raw 28x28 uint8, resized inside) agrees with the Keras model
    assert abs(record["accuracy"] - record["keras_accuracy"]) < 0.03
    assert "Official test set (300 images): accuracy" in result.stdout
