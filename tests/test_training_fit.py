"""training.train.run end to end on every backend: fit, resume, the files written, EMA
evaluation and export, and the SavedModel against the .keras model; atomic checkpoints."""

import csv
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_convnext
from training import data, recipe
from training.checkpoint import CheckpointManager
from training.config import make_config
from training.train import CSV_COLUMNS, run

TINY = {"dataset": "digits", "depths": (1, 1, 1, 1), "dims": (8, 16, 32, 64), "image_size": 32,
        "batch_size": 8, "steps_per_epoch": 2, "warmup_epochs": 1, "rand_augment_ops": 0,
        "verbose": 0}


def tiny_config(output, **values):
    return make_config({}, {**TINY, "output": str(output), **values})


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _eval_batch(config, n=8):
    source = data.load(config)
    images, _ = next(iter(data.eval_pipeline(source, config, n)))
    return images.numpy()


def test_fit_resume_and_every_output(tmp_path):
    out = tmp_path / "run"
    first = run(tiny_config(out, epochs=1, export=False), log=lambda m: None)
    assert first.resumed_from == 0 and [r["epoch"] for r in first.rows] == [1]
    assert not (out / "model.keras").exists()

    messages = []
    config = tiny_config(out, epochs=2, restart_schedule=True)  # a longer run: a new schedule
    result = run(config, log=messages.append)
    assert result.resumed_from == 1 and any(m.startswith("Resuming from") for m in messages)
    assert any(m.startswith("Restarting the schedule") for m in messages)
    optimizer = recipe.base_optimizer(result.model.optimizer)
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == 4  # 2 epochs x 2 steps

    rows = _rows(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"] and tuple(rows[0]) == CSV_COLUMNS
    assert all(float(r[k]) >= 0 for r in rows for k in CSV_COLUMNS)
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["epoch"] == 2
    assert os.listdir(out / "logs") and (out / "best_model.keras").is_file()
    assert json.loads((out / "config.json").read_text())["epochs"] == 2
    assert json.loads((out / "classes.json").read_text()) == [str(d) for d in range(10)]

    # The exported model holds the EMA weights and is a plain (uncompiled) inference model.
    model = keras.saving.load_model(out / "model.keras")
    assert getattr(model, "optimizer", None) is None
    ema = recipe.ema_variables(result.model.optimizer)
    assert ema
    for v in model.trainable_variables:
        np.testing.assert_allclose(keras.ops.convert_to_numpy(v.value),
                                   keras.ops.convert_to_numpy(ema[v.path].value), atol=1e-7)

    # fit validated on the EMA weights: the exported model reproduces the last val_loss.
    model.compile(loss=recipe.make_loss(config), metrics=["accuracy"])
    val = data.eval_pipeline(data.load(config), config, 8)
    scores = model.evaluate(val, verbose=0, return_dict=True)
    assert scores["loss"] == pytest.approx(float(rows[-1]["val_loss"]), rel=1e-4)
    assert scores["accuracy"] == pytest.approx(float(rows[-1]["val_accuracy"]), abs=1e-6)

    # The SavedModel gives the .keras model's probabilities, from float or uint8 images.
    images = np.round(_eval_batch(config))
    expected = keras.ops.convert_to_numpy(model(images))
    saved = tf.saved_model.load(str(out / "saved_model"))
    probs = saved.signatures["serving_default"](images=tf.constant(images))["probabilities"]
    np.testing.assert_allclose(probs.numpy(), expected, rtol=1e-5, atol=1e-6)
    probs = saved.signatures["serve_uint8"](images=tf.constant(images.astype(np.uint8)))
    np.testing.assert_allclose(probs["probabilities"].numpy(), expected, rtol=1e-5, atol=1e-6)
    bigger = tf.image.resize(images, (48, 40))  # other sizes are resized to the model's
    probs = saved.signatures["serving_default"](images=bigger)["probabilities"].numpy()
    assert probs.shape == (8, 10) and np.allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_checkpoint_save_is_atomic(tmp_path):
    model = keras_convnext.ConvNeXt((1, 1, 1, 1), (8, 16, 32, 64), input_shape=(32, 32, 3),
                                    classes=3)
    model.compile(optimizer="adamw", loss="categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    manager = CheckpointManager(str(tmp_path), keep=2)
    manager.save(model, 1, {"rows": [{"epoch": 1}]})
    saved = [keras.ops.convert_to_numpy(v.value) for v in model.weights]

    class Killed(Exception):
        pass

    def dying_save(path):  # writes part of the file, then the process "dies"
        with open(path, "wb") as f:
            f.write(b"\x89HDF\r\n partial")
        raise Killed

    original = model.save_weights
    model.save_weights = dying_save
    with pytest.raises(Killed):
        manager.save(model, 2, {"rows": []})
    model.save_weights = original
    (tmp_path / ".ckpt-0002.tmp-999.weights.h5").write_bytes(b"left by a SIGKILL")
    assert manager.latest()["epoch"] == 1 and not (tmp_path / "ckpt-0002.weights.h5").exists()

    for v in model.trainable_variables:
        v.assign(keras.ops.zeros(v.shape))
    assert manager.restore(model)["state"]["rows"] == [{"epoch": 1}]
    for v, value in zip(model.weights, saved):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v.value), value)

    for epoch in (2, 3, 4):
        manager.save(model, epoch, {})
    names = sorted(os.listdir(tmp_path))
    assert names == ["ckpt-0003.weights.h5", "ckpt-0004.weights.h5", "latest.json"]


def test_fine_tune_weights_load_the_trunk_and_replace_a_new_head(tmp_path):
    from training.config import ConfigError
    from training.train import load_pretrained, model_builder, read_pretrained

    source = keras_convnext.ConvNeXt((1, 1, 1, 1), (8, 16, 32, 64), input_shape=(32, 32, 3),
                                     classes=3)
    source.save(tmp_path / "source.keras")
    source.save_weights(tmp_path / "source.weights.h5")
    config = tiny_config(tmp_path / "run")
    model = model_builder(config, 10)()  # digits: 10 classes, so a new head
    messages = []
    load_pretrained(model, read_pretrained(str(tmp_path / "source.keras")), messages.append)
    assert "new head: predictions/kernel, predictions/bias" in messages[0]
    for v, w in zip(model.trainable_variables, source.trainable_variables):
        if not v.path.startswith("predictions/"):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(v.value),
                                          keras.ops.convert_to_numpy(w.value))
    same_classes = model_builder(config, 3)()
    load_pretrained(same_classes, read_pretrained(str(tmp_path / "source.weights.h5")),
                    messages.append)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(same_classes.get_layer("predictions").kernel.value),
        keras.ops.convert_to_numpy(source.get_layer("predictions").kernel.value))
    wider = model_builder(tiny_config(tmp_path / "run", dims=(16, 16, 32, 64)), 10)()
    with pytest.raises(ConfigError, match="weights do not fit this model: stem/conv/kernel"):
        load_pretrained(wider, read_pretrained(str(tmp_path / "source.keras")), messages.append)


def test_a_one_channel_run_trains_and_exports_a_one_channel_model(tmp_path):
    result = run(tiny_config(tmp_path / "gray", epochs=1, channels=1, export=False),
                 log=lambda m: None)
    model = result.model
    assert model.input_shape == (None, 32, 32, 1)
    assert model.get_layer("preprocessing").mean == pytest.approx((np.mean([0.485, 0.456, 0.406]),))
    assert np.isfinite(result.rows[0]["loss"])
