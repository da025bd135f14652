"""Saving, loading and exporting: the same model and numbers on every backend."""

import os

import keras
import numpy as np
import pytest

import keras_convnext
from keras_convnext import ConvNeXt

from conftest import BACKEND, run_once_across_backends, run_python

SMALL = dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), classes=5, drop_path_rate=0.1, seed=3)
BACKENDS = ("tensorflow", "jax", "torch")


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _inputs(n=2, size=40):
    return np.random.default_rng(1).uniform(0, 255, size=(n, size, size, 3)).astype("float32")


def _randomize(model, seed=0):
    """Random values in every tensor (norms and LayerScale too) so no part can hide."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.normal(scale=0.3, size=v.shape).astype("float32"))


def test_keras_file_round_trips_with_equal_outputs_and_no_custom_objects(tmp_path):
    model = ConvNeXt(**SMALL, classifier_activation=None)
    _randomize(model)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    x = _inputs()
    np.testing.assert_allclose(_np(loaded(x)), _np(model(x)), rtol=1e-5, atol=1e-5)
    block = loaded.get_layer("stage_3_block_0")  # the last block has the full rate
    assert isinstance(block, keras_convnext.ConvNeXtBlock)
    assert block.drop_path_rate == pytest.approx(0.1)
    assert block.get_config() == model.get_layer("stage_3_block_0").get_config()


def test_a_trained_model_keeps_training_after_reload(tmp_path):
    model = ConvNeXt(**SMALL)
    model.compile(optimizer="adamw", loss="sparse_categorical_crossentropy")
    x, y = _inputs(4, 32), np.array([0, 1, 2, 3])
    model.train_on_batch(x, y)
    path = str(tmp_path / "trained.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert int(_np(loaded.optimizer.iterations)) == 1
    assert np.isfinite(loaded.train_on_batch(x, y))


_SAVE_AND_LOAD = """
import os, sys, numpy as np, keras, keras_convnext
root, me = sys.argv[1], keras.backend.backend()
for name in ("ConvNeXt", "ConvNeXtV2"):  # save mine (once), with random values everywhere
    out = os.path.join(root, f"{name}_saved_by_{me}")
    if os.path.isdir(out):
        continue
    os.makedirs(out)
    model = getattr(keras_convnext, name)(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), classes=5,
                                          classifier_activation=None, drop_path_rate=0.1, seed=3)
    rng = np.random.default_rng(0)
    for v in model.weights:
        v.assign(rng.normal(scale=0.3, size=v.shape).astype("float32"))
    model.save(f"{out}/model.keras")
    x = np.random.default_rng(1).uniform(0, 255, size=(2, 40, 40, 3)).astype("float32")
    np.save(f"{out}/x.npy", x)
    np.save(f"{out}/y.npy", keras.ops.convert_to_numpy(model(x)))
for src in sorted(os.listdir(root)):  # load every other backend's file not loaded here yet
    result = os.path.join(root, src, f"loaded_by_{me}.npy")
    if src.endswith(f"_by_{me}") or os.path.exists(result):
        continue
    model = keras.models.load_model(os.path.join(root, src, "model.keras"))
    x = np.load(os.path.join(root, src, "x.npy"))
    np.save(result, keras.ops.convert_to_numpy(model(x)))
"""


@run_once_across_backends()
def test_saved_on_one_backend_loaded_on_every_other_gives_the_same_outputs(tmp_path):
    """Same weights -> same outputs on TensorFlow, JAX and PyTorch (within float32 noise),
    and a .keras file from any backend loads on any other (V1, and V2 with GRN randomized).
    Five processes: each backend saves its files and loads those saved before it; then
    TensorFlow and JAX load the ones saved after them."""
    for backend in BACKENDS + BACKENDS[:2]:
        run_python(_SAVE_AND_LOAD, backend, tmp_path)
    for name in ("ConvNeXt", "ConvNeXtV2"):
        for saver in BACKENDS:
            src = tmp_path / f"{name}_saved_by_{saver}"
            expected = np.load(src / "y.npy")
            for loader in BACKENDS:
                if loader == saver:
                    continue
                np.testing.assert_allclose(
                    np.load(src / f"loaded_by_{loader}.npy"), expected, rtol=1e-4, atol=1e-4,
                    err_msg=f"{name} saved on {saver}, loaded on {loader}",
                )


@pytest.mark.skipif(BACKEND != "tensorflow", reason="SavedModel export needs the TensorFlow backend")
def test_tensorflow_savedmodel_export_serves_the_same_outputs(tmp_path):
    import tensorflow as tf

    model = ConvNeXt(**SMALL, input_shape=(40, 40, 3))
    _randomize(model)
    export_dir = str(tmp_path / "saved_model")
    model.export(export_dir, verbose=False)
    served = tf.saved_model.load(export_dir)
    x = _inputs()
    np.testing.assert_allclose(served.serve(x).numpy(), _np(model(x)), rtol=1e-5, atol=1e-6)
    signature = served.signatures["serving_default"]
    (output,) = signature(tf.constant(x)).values()
    np.testing.assert_allclose(output.numpy(), _np(model(x)), rtol=1e-5, atol=1e-6)
    assert os.path.exists(os.path.join(export_dir, "saved_model.pb"))
