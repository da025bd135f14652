"""keras.distribution on JAX over two host devices (``XLA_FLAGS=
--xla_force_host_platform_device_count=2``, in a subprocess): the training program's
DataParallel and ModelParallel (``keras_convnext.distribution``, the pointwise layers sharded)
train a tiny ConvNeXt to the weights one device reaches with the same global batch. The
two-process TF MultiWorkerMirroredStrategy run is in test_training_cli.py."""

import types

import numpy as np
import pytest

from conftest import BACKEND, run_python

pytestmark = pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution runs on JAX")

TWO_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}

SCRIPT = """
import sys, jax, keras, numpy as np
from training import data, strategy
from training.config import make_config
from training.session import TrainingSession
from training.train import model_builder
assert len(jax.devices()) == 2, jax.devices()
tiny = dict(dataset="digits", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), image_size=32,
            rand_augment_ops=0, mixup=0.0, drop_path=0.0, warmup_epochs=0, epochs=1, ema=False,
            steps_per_epoch=2, lr=2e-3)
source = data.load(make_config({}, tiny))
# two fixed batches of 8 (the center-cropped held-out images: no augmentation randomness)
x, y = (np.concatenate(parts) for parts in zip(*data.eval_pipeline(
    source, make_config({}, tiny), 8).take(2).as_numpy_iterator()))

def train(**values):
    # what training.train.run does, without validation and files: the runtime of the
    # config, one TrainingSession (global batch, lr scaling, optimizer), two steps of fit
    # at the same global batch
    config = make_config({}, {**tiny, **values})
    runtime = strategy.select(config.strategy, None, config.model_parallel)
    keras.utils.set_random_seed(config.seed)
    session = TrainingSession(config, runtime, source)
    model = session.compile(model_builder(config, source.num_classes))
    model.fit(x, y, batch_size=session.schedule.global_batch, epochs=1, verbose=0,
              shuffle=False)
    print(session.describe())
    kernel = next(v for v in model.weights if v.path.endswith("pwconv1/kernel"))
    shards = sorted({tuple(s.data.shape) for s in kernel.value.addressable_shards})
    return {v.path: keras.ops.convert_to_numpy(v.value) for v in model.weights}, shards

one, one_kernel = train(strategy="default", batch_size=8)
parallel, data_kernel = train(strategy="mirrored", batch_size=4, lr=1e-3)  # 2 replicas
sharded, model_kernel = train(model_parallel=2, batch_size=8)
np.savez(sys.argv[1], **{f"{name}|{path}": array for name, weights in
                         (("one", one), ("data", parallel), ("model", sharded))
                         for path, array in weights.items()})
print("kernels", one_kernel, data_kernel, model_kernel)
"""


def test_data_and_model_parallel_train_to_the_weights_of_one_device(tmp_path):
    out = run_python(SCRIPT, "jax", tmp_path / "weights.npz", env=TWO_DEVICES, timeout=900)
    assert "jax-data-parallel (2 devices) x2: global batch 8" in out
    assert "jax-model-parallel (1 x 2 devices) x1: global batch 8" in out
    # stage 0's pwconv1 kernel (8, 32): whole on each device under DataParallel, split along
    # its hidden axis under ModelParallel
    assert "kernels [(8, 32)] [(8, 32)] [(8, 16)]" in out
    saved = np.load(tmp_path / "weights.npz")
    runs = {}
    for key in saved.files:
        name, path = key.split("|", 1)
        runs.setdefault(name, {})[path] = saved[key]
    assert len(runs["one"]) > 20 and set(runs["one"]) == set(runs["data"]) == set(runs["model"])
    for path, expected in runs["one"].items():  # measured: within 5e-7
        for name in ("data", "model"):
            np.testing.assert_allclose(runs[name][path], expected, rtol=1e-4, atol=1e-5,
                                       err_msg=f"{name}-parallel {path}")


def test_the_layout_map_shards_every_pointwise_layer_and_checks_widths():
    import keras

    import keras_convnext
    from keras_convnext import distribution

    mesh = keras.distribution.DeviceMesh((1, 1), ("batch", "model"),
                                         keras.distribution.list_devices()[:1])
    layouts = distribution.layout_map(mesh, "v2_atto")
    model = keras_convnext.ConvNeXtV2((1, 1, 1, 1), (8, 16, 32, 64), classes=3,
                                      input_shape=(32, 32, 3))
    sharded = {v.path: layouts[v.path].axes for v in model.weights if layouts[v.path] is not None}
    expected = {f"stage_{i}_block_0/{name}" for i in range(4)
                for name in ("pwconv1/kernel", "pwconv1/bias", "grn/gamma", "grn/beta",
                             "pwconv2/kernel")}
    assert set(sharded) == expected
    assert sharded["stage_0_block_0/pwconv1/kernel"] == (None, "model")
    assert sharded["stage_0_block_0/pwconv2/kernel"] == ("model", None)
    three = types.SimpleNamespace(axis_names=("batch", "model"), shape=(1, 3))
    with pytest.raises(ValueError, match=r"pointwise widths \[160, 320, 640, 1280\] do not "
                                         r"divide over 3 devices"):
        distribution.layout_map(three, "v2_atto")
    with pytest.raises(ValueError, match="no 'model' axis"):
        distribution.layout_map(keras.distribution.DeviceMesh(
            (1,), ("batch",), keras.distribution.list_devices()[:1]))


PRETRAIN = """
import sys, jax, keras, numpy as np
from training import pretrain
assert len(jax.devices()) == 2, jax.devices()
tiny = dict(dataset="digits", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), image_size=32,
            patch_size=8, decoder_dim=16, warmup_epochs=0, epochs=1, steps_per_epoch=3,
            lr=1e-3, strategy="mirrored", batch_size=4, verbose=0)  # 2 replicas x 4
result = pretrain.run(pretrain.make_config({}, {**tiny, "output": sys.argv[1]}), log=print)
print("loss", result.rows[-1]["loss"])
np.savez(sys.argv[1] + "/weights.npz", **{v.path: keras.ops.convert_to_numpy(v.value)
                                          for v in result.model.weights})
"""


def test_fcmae_pretraining_runs_data_parallel_on_two_devices(tmp_path):
    """training.pretrain under JAX DataParallel over two devices: batches split over both,
    every weight (encoder, decoder, mask token) finite, a loss in the range of a start (about
    1: ``norm_pix_loss`` targets have unit variance per patch), the V2 encoder file written."""
    out = run_python(PRETRAIN, "jax", tmp_path, env=TWO_DEVICES, timeout=900)
    assert "jax-data-parallel (2 devices) x2: global batch 8" in out
    loss = float(out.split("loss ")[-1].split()[0])
    assert 0.2 < loss < 3.0, loss
    weights = np.load(tmp_path / "weights.npz")
    assert len(weights.files) > 20 and any("mask_token" in path for path in weights.files)
    for path in weights.files:
        assert np.isfinite(weights[path]).all(), path
    assert (tmp_path / "encoder.weights.h5").is_file()
