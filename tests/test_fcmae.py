"""FCMAE (keras_convnext.fcmae, training.pretrain): the masked dense encoder keeps the sparse
semantics on every backend, the loss sees masked patches only, the masks, ``python -m
training.pretrain`` end to end with resumption, the encoder file loading strictly into the V2
family and into training.train, and one-line errors for bad settings."""

import csv
import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_convnext
from conftest import REPO, run_once_across_backends
from keras_convnext import fcmae
from keras_convnext.weights import CheckpointError

TINY = ((1, 1, 1, 1), (8, 16, 32, 64))
TINY_FLAGS = ["--dataset", "digits", "--depths", "1", "1", "1", "1", "--dims", "8", "16", "32",
              "64", "--image-size", "32", "--patch-size", "8", "--decoder-dim", "16",
              "--batch-size", "8", "--warmup-epochs", "1", "--verbose", "0"]


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _tiny(image_size=64, patch_size=8, **options):
    return fcmae.FCMAE(*TINY, image_size=image_size, patch_size=patch_size, decoder_dim=16,
                       seed=0, **options)


def _randomize_gamma(model, rng):
    """GRN's gamma/beta start at zero (GRN = identity): set them so GRN's norms matter."""
    for v in model.encoder.weights:
        if "/grn/" in v.path:
            v.assign(rng.normal(0, 1, v.shape).astype("float32"))


def _pixel_mask(mask, patch_size):
    return np.repeat(np.repeat(_np(mask), patch_size, 1), patch_size, 2)[..., None]


# ------------------------------------------------------------------- masked dense encoder


@pytest.mark.parametrize("patch_size", [8, 32])
def test_visible_outputs_ignore_the_pixels_under_masked_patches(patch_size, rng):
    model = _tiny(patch_size=patch_size)
    _randomize_gamma(model, rng)
    images = rng.uniform(0, 255, (3, 64, 64, 3)).astype("float32")
    mask = model.sample_mask(3)
    under = _pixel_mask(mask, patch_size) > 0
    other = np.where(under, rng.uniform(0, 255, images.shape), images).astype("float32")
    assert (other != images).mean() > 0.4
    both = keras.ops.concatenate([mask, mask])  # one call for both batches (eager JAX is slow)
    features = model.encode(np.concatenate([images, other]), both)
    a, b = np.split(_np(features), 2)
    visible = _np(fcmae.visibility(mask, patch_size / fcmae.TOTAL_STRIDE))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a * visible).max() > 0 and np.abs(a * (1 - visible)).max() == 0
    # the decoder's predictions ignore them too (the mask token stands in for masked patches)
    pa, pb = np.split(_np(model.decode(features, both)), 2)
    np.testing.assert_allclose(pa, pb, atol=1e-5)


def test_masked_positions_count_as_absent_like_the_sparse_encoder(rng):
    # With the right half masked, the visible half's features are those of the plain encoder
    # on the left half alone: zeros at masked positions act as absent sites in every conv
    # (and as the plain model's zero padding), and GRN's norms sum over the visible half only.
    model = _tiny(patch_size=32)
    _randomize_gamma(model, rng)
    images = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    mask = np.zeros((2, 2, 2), "float32")
    mask[:, :, 1] = 1.0
    masked = _np(model.encode(images, keras.ops.convert_to_tensor(mask)))
    plain = keras_convnext.ConvNeXtV2(*TINY, include_top=False, input_shape=(None, None, 3))
    plain.set_weights(model.encoder.get_weights())
    alone = _np(plain(images[:, :, :32]))
    np.testing.assert_allclose(masked[:, :, :1], alone, rtol=1e-4, atol=1e-4)
    # without the mask the right half would have changed the left half's features
    full = _np(plain(images))
    assert np.abs(full[:, :, :1] - alone).max() > 1e-3


def test_random_mask_keeps_an_exact_count_per_sample():
    mask = _np(fcmae.random_mask(16, 8, 0.6, seed=keras.random.SeedGenerator(1)))
    assert mask.shape == (16, 8, 8) and set(np.unique(mask)) == {0.0, 1.0}
    np.testing.assert_array_equal((1 - mask).reshape(16, -1).sum(-1), int(64 * 0.4))
    assert len({m.tobytes() for m in mask}) == 16  # drawn per sample
    coarse = _np(fcmae.visibility(keras.ops.convert_to_tensor(mask), 0.25))  # 8x8 -> 2x2
    expected = (1 - mask).reshape(16, 2, 4, 2, 4).max(axis=(2, 4))[..., None]
    np.testing.assert_array_equal(coarse, expected)


def test_the_loss_sees_masked_patches_only(rng):
    target = rng.normal(size=(2, 4, 4, 12)).astype("float32")
    pred = rng.normal(size=(2, 4, 4, 12)).astype("float32")
    mask = (rng.uniform(size=(2, 4, 4)) < 0.6).astype("float32")
    base = float(_np(fcmae.reconstruction_loss(target, pred, mask)))
    visible = (mask == 0)[..., None]
    changed = np.where(visible, pred + 100.0, pred)
    assert float(_np(fcmae.reconstruction_loss(target, changed, mask))) == pytest.approx(base)
    changed = np.where(visible, pred, pred + 1.0)
    assert float(_np(fcmae.reconstruction_loss(target, changed, mask))) > base + 0.5
    # the official formula, in numpy
    t = target - target.mean(-1, keepdims=True)
    t = t / np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6)
    expected = (((pred - t) ** 2).mean(-1) * mask).sum() / mask.sum()
    assert base == pytest.approx(float(expected), rel=1e-5)
    raw = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
    assert float(_np(fcmae.reconstruction_loss(target, pred, mask, norm_pix_loss=False))) == (
        pytest.approx(float(raw), rel=1e-5))


def test_patchify_round_trips_and_reconstruct_keeps_visible_patches(rng):
    images = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    patches = _np(fcmae.patchify(images, 8))
    np.testing.assert_array_equal(patches[0, 1, 2].reshape(8, 8, 3), images[0, 8:16, 16:24])
    np.testing.assert_array_equal(_np(fcmae.unpatchify(patches, 8, 3)), images)
    model = _tiny(image_size=32)
    pixels = rng.uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    mask = model.sample_mask(2)
    recon, _ = model.reconstruct(pixels, mask)
    normalized = _np(model.preprocess(pixels))
    keep = _pixel_mask(mask, 8) == 0
    np.testing.assert_allclose(np.where(keep, _np(recon), 0), np.where(keep, normalized, 0),
                               atol=1e-5)


def test_fcmae_round_trips_through_a_keras_file(tmp_path, rng):
    model = _tiny(image_size=32, mask_ratio=0.5, norm_pix_loss=False)
    model.save(tmp_path / "fcmae.keras")
    loaded = keras.saving.load_model(tmp_path / "fcmae.keras")
    assert isinstance(loaded, fcmae.FCMAE) and loaded.mask_ratio == 0.5
    assert not loaded.norm_pix_loss and loaded.patch_size == 8
    images = rng.uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    mask = model.sample_mask(2)
    np.testing.assert_allclose(_np(loaded(images, patch_mask=mask)["pred"]),
                               _np(model(images, patch_mask=mask)["pred"]), atol=1e-6)


# ---------------------------------------------------------------- the pretrain program


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@run_once_across_backends("the program's files and resume; the masking is tested per backend above")
def test_pretrain_writes_metrics_and_an_encoder_and_resumes(tmp_path, capsys):
    from training.pretrain import main
    from training.train import load_pretrained, read_pretrained

    out = tmp_path / "run"
    args = [*TINY_FLAGS, "--steps-per-epoch", "2", "--output", str(out)]
    assert main([*args, "--epochs", "1", "--no-export"]) == 0
    assert not (out / "encoder.weights.h5").exists()
    # a longer run on the same folder: the schedule changes, which the program refuses unless asked
    assert main([*args, "--epochs", "2"]) == 2
    assert "--restart-schedule" in capsys.readouterr().err
    assert main([*args, "--epochs", "2", "--restart-schedule"]) == 0
    stdout = capsys.readouterr().out
    assert "(1 of 2 epochs done)" in stdout and "encoder.weights.h5" in stdout
    rows = _rows(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert tuple(rows[0]) == ("epoch", "loss", "learning_rate")
    assert all(0 < float(r["loss"]) < 10 for r in rows)
    record = json.loads((out / "checkpoints" / "latest.json").read_text())
    assert record["epoch"] == 2 and record["state"]["config"]["patch_size"] == 8

    # the encoder file: strictly a V2 encoder without head, and with a fresh head
    path = str(out / "encoder.weights.h5")
    encoder = keras_convnext.ConvNeXtV2(*TINY, include_top=False, weights=path)
    reference = keras_convnext.ConvNeXtV2(*TINY, include_top=False)
    reference.load_weights(out / "encoder.weights.h5")  # Keras' own reader agrees
    for a, b in zip(encoder.weights, reference.weights):
        np.testing.assert_array_equal(_np(a.value), _np(b.value))
    classifier = keras_convnext.ConvNeXtV2(*TINY, classes=10, input_shape=(32, 32, 3))
    head = _np(classifier.get_layer("predictions").kernel.value)
    with pytest.warns(UserWarning, match="freshly initialized"):
        load_pretrained(classifier, read_pretrained(path), print)  # training.train --weights
    np.testing.assert_array_equal(_np(classifier.get_layer("predictions").kernel.value), head)
    np.testing.assert_array_equal(_np(classifier.get_layer("stem").conv.kernel.value),
                                  _np(encoder.get_layer("stem").conv.kernel.value))


@run_once_across_backends("weight files are read with h5py and numpy alone")
def test_encoder_file_of_a_variant_loads_strictly_and_only_into_it(tmp_path, rng):
    from training.config import ConfigError, make_config
    from training.train import load_pretrained, model_builder, read_pretrained

    model = fcmae.for_variant("ConvNeXtV2Atto", image_size=32, patch_size=8, decoder_dim=8)
    for v in model.encoder.weights:
        v.assign(rng.normal(0, 0.02, v.shape).astype("float32"))
    path = str(tmp_path / "encoder.weights.h5")
    model.encoder.save_weights(path)
    encoder = keras_convnext.ConvNeXtV2Atto(weights=path, include_top=False)
    for a, b in zip(encoder.weights, model.encoder.weights):
        np.testing.assert_array_equal(_np(a.value), _np(b.value))
    with pytest.raises(CheckpointError, match="no classifier head"):
        keras_convnext.ConvNeXtV2Atto(weights=path, classes=5)
    with pytest.warns(UserWarning, match="freshly initialized"):
        fine = keras_convnext.ConvNeXtV2Atto(weights=path, classes=5, skip_mismatched_head=True)
    np.testing.assert_array_equal(_np(fine.get_layer("stage_3_block_1").grn.gamma.value),
                                  _np(model.encoder.get_layer("stage_3_block_1").grn.gamma.value))
    with pytest.raises(CheckpointError) as error:
        keras_convnext.ConvNeXtV2Femto(weights=path, include_top=False)
    first = str(error.value).splitlines()[0]
    assert "does not fit the model" in first and "of the wrong shape" in first
    with pytest.raises(CheckpointError, match="V1/V2 mismatch"):
        keras_convnext.ConvNeXtAtto(weights=path, include_top=False)
    # training.train --model v2_atto --weights FILE: a new head; --model v2_femto: one line
    config = make_config({}, {"model": "v2_atto", "image_size": 32})
    target = model_builder(config, 10)()
    with pytest.warns(UserWarning, match="freshly initialized"):
        load_pretrained(target, read_pretrained(path), lambda m: None)
    femto = model_builder(make_config({}, {"model": "v2_femto", "image_size": 32}), 10)()
    with pytest.raises(ConfigError, match=r"^cannot load weights .*does not fit the model[^\n]*$"):
        load_pretrained(femto, read_pretrained(path), lambda m: None)


def _error_line(capsys, argv):
    from training.pretrain import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@run_once_across_backends("the checks precede any backend work")
def test_bad_settings_give_one_line_errors_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--output", str(out)]
    line = _error_line(capsys, ["--mask-ratio", "1.0", *flags])
    assert "mask_ratio=1.0 (must be in (0, 1))" in line
    assert "mask_ratio=0.0" in _error_line(capsys, ["--mask-ratio", "0", *flags])
    line = _error_line(capsys, ["--patch-size", "12", *flags])
    assert "patch_size=12 at image_size=64" in line and "4, 8, 16, 32" in line
    line = _error_line(capsys, ["--image-size", "48", "--patch-size", "16", *flags])
    assert "image_size=48: FCMAE needs a multiple of 32" in line
    line = _error_line(capsys, ["--image-size", "32", "--patch-size", "32", *flags])
    assert "keeps 0 of 1 patches" in line
    line = _error_line(capsys, ["--model", "atto", *flags])
    assert "FCMAE needs a ConvNeXt V2 encoder (GRN blocks)" in line and "v2_atto" in line
    assert "unknown model 'resnet'" in _error_line(capsys, ["--model", "resnet", *flags])
    assert "layer_decay=0.8" in _error_line(capsys, ["--layer-decay", "0.8", *flags])
    assert "decoder_dim=0" in _error_line(capsys, ["--decoder-dim", "0", *flags])
    assert "mixup/cutmix" in _error_line(capsys, ["--mixup", "0.8", *flags])
    (tmp_path / "bad.yaml").write_text("mask_ratio: most\n")
    assert "mask_ratio='most'" in _error_line(capsys, ["--config", str(tmp_path / "bad.yaml"),
                                                       *flags])
    assert not out.exists()


def _env(**extra):
    return {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONPATH": REPO, **extra}


@run_once_across_backends()
def test_sigkill_mid_run_then_rerun_resumes_each_epoch_once(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "training.pretrain", *TINY_FLAGS, "--epochs", "2",
            "--steps-per-epoch", "8", "--output", str(out)]
    latest = out / "checkpoints" / "latest.json"
    process = subprocess.Popen([*args, "--verbose", "2"], cwd=REPO, env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith("Epoch 2/2"):
            break
    assert process.poll() is None, "".join(seen) + process.communicate()[1][-3000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = json.loads(latest.read_text())["epoch"]
    assert killed_at == 1 and not (out / "encoder.weights.h5").exists()
    done = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(1 of 2 epochs done)" in done.stdout
    assert [r["epoch"] for r in _rows(out / "metrics.csv")] == ["1", "2"]
    assert (out / "encoder.weights.h5").is_file()


@run_once_across_backends("the data sources are tf.data on every backend")
def test_pretrain_reads_a_folder_dataset_and_a_config_file_labels_unused(tmp_path, capsys):
    from PIL import Image

    from training.pretrain import main

    rng = np.random.default_rng(0)
    for name in ("cats", "dogs"):  # class folders: their labels are read and ignored
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(
                tmp_path / "images" / name / f"{i}.png")
    (tmp_path / "fcmae.yaml").write_text(
        "depths: [1, 1, 1, 1]\ndims: [8, 16, 32, 64]\nimage_size: 32\npatch_size: 8\n"
        "decoder_dim: 16\nbatch_size: 4\nepochs: 1\nsteps_per_epoch: 2\nwarmup_epochs: 0\n"
        "verbose: 0\n")
    out = tmp_path / "run"
    assert main(["--config", str(tmp_path / "fcmae.yaml"), "--dataset",
                 f"folder:{tmp_path / 'images'}", "--output", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "(labels not used)" in stdout and "32 px, 8 px patches (4x4)" in stdout
    assert [r["epoch"] for r in _rows(out / "metrics.csv")] == ["1"]
    assert json.loads((out / "config.json").read_text())["decoder_dim"] == 16  # from the file
    keras_convnext.ConvNeXtV2(*TINY, include_top=False, weights=str(out / "encoder.weights.h5"))


@run_once_across_backends("tf.distribute's MirroredStrategy is TensorFlow's")
def test_pretrain_under_mirrored_strategy_on_two_logical_cpus(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "training.pretrain", *TINY_FLAGS, "--strategy", "mirrored",
         "--cpu-devices", "2", "--epochs", "1", "--steps-per-epoch", "2", "--output", str(out)],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mirrored x2: global batch 16" in done.stdout  # 2 replicas x batch 8
    assert [r["epoch"] for r in _rows(out / "metrics.csv")] == ["1"]
    keras_convnext.ConvNeXtV2(*TINY, include_top=False, weights=str(out / "encoder.weights.h5"))
