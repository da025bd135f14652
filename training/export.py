"""What a run hands over: ``.keras`` inference models and a TensorFlow SavedModel.

* ``inference_model``: a fresh float32 copy of the trained network (built by the same builder,
  not compiled: no optimizer inside), holding the EMA weights when EMA is on. Loads anywhere
  with ``keras.saving.load_model`` after ``import keras_convnext``, on every backend.
* ``export_saved_model``: a SavedModel with two signatures, ``serving_default`` taking float32
  images and ``serve_uint8`` taking uint8 images, both (batch, height, width, C) in 0-255 (C: the
  model's channels, 3 for RGB),
  resized to the training size when they differ, returning ``{"probabilities": (batch, classes)}``.
  On the TensorFlow backend it is written in-process with ``keras.export.ExportArchive``. On JAX
  and PyTorch the saved ``.keras`` file is exported by a TensorFlow-backend subprocess
  (``python -m training.export MODEL.keras DIR``): the same graph on every backend, and no
  dependency on jax2tf or torch export.

Files are written atomically (to a temporary name, then renamed).
"""

import argparse
import os
import shutil
import subprocess
import sys

import keras

from keras_convnext.weights.files import write_sidecar
from training.checkpoint import atomic_save
from training.recipe import ema_variables


def inference_model(model, build_fn):
    """A float32 copy of ``model`` built by ``build_fn()``, with its EMA weights if any."""
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        clone = build_fn()
    finally:
        keras.config.set_dtype_policy(policy)
    ema = ema_variables(model.optimizer)
    if len(clone.variables) != len(model.variables):
        raise ValueError("cannot export: the rebuilt model's variables differ from the trained one")
    # Same builder, same order (seed-generator state paths are numbered per process, so the
    # variables pair up by position; trainable paths are stable and find their EMA copy).
    for target, source in zip(clone.variables, model.variables):
        value = keras.ops.convert_to_numpy(ema.get(source.path, source).value)
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(f"cannot export: {source.path} has shape {value.shape}, "
                             f"the rebuilt model {target.shape}")
        target.assign(value.astype(target.dtype))
    return clone


def save_keras(model, path):
    """``model.save(path)``, atomically, with its sha256 in ``path.sha256`` (verified by
    ``keras_convnext.weights.files.load_keras_model``)."""
    write_sidecar(path, atomic_save(lambda tmp: model.save(tmp), path))


def _write_saved_model(model, export_dir):
    import tensorflow as tf

    height, width, channels = model.input_shape[1:4]

    def serve(images):
        x = tf.cast(images, tf.float32)
        same = tf.logical_and(tf.shape(x)[1] == height, tf.shape(x)[2] == width)
        x = tf.cond(same, lambda: x,
                    lambda: tf.image.resize(x, (height, width), method="bicubic", antialias=True))
        x = tf.ensure_shape(x, [None, height, width, channels])
        return {"probabilities": model(x, training=False)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, dtype in (("serving_default", tf.float32), ("serve_uint8", tf.uint8)):
        archive.add_endpoint(
            name, tf.function(serve),
            input_signature=[tf.TensorSpec([None, None, None, channels], dtype, name="images")],
        )
    archive.write_out(export_dir, verbose=False)


def export_saved_model(model, keras_path, export_dir):
    """Writes the SavedModel of ``model`` (saved as ``keras_path``) to ``export_dir``."""
    tmp = f"{export_dir.rstrip(os.sep)}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    if keras.backend.backend() == "tensorflow":
        _write_saved_model(model, tmp)
    else:
        env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
        env.pop("XLA_FLAGS", None)
        result = subprocess.run(
            [sys.executable, "-m", "training.export", keras_path, tmp],
            env=env, capture_output=True, text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        if result.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"SavedModel export (tensorflow subprocess) failed: {tail[0]}")
    old = f"{export_dir.rstrip(os.sep)}.old-{os.getpid()}"
    if os.path.exists(export_dir):
        os.replace(export_dir, old)
    os.replace(tmp, export_dir)
    shutil.rmtree(old, ignore_errors=True)


def main(argv=None):
    """``python -m training.export MODEL.keras DIR``: SavedModel from a .keras file (TF)."""
    parser = argparse.ArgumentParser(prog="python -m training.export")
    parser.add_argument("keras_file")
    parser.add_argument("export_dir")
    args = parser.parse_args(argv)
    if keras.backend.backend() != "tensorflow":
        sys.exit("error: python -m training.export needs KERAS_BACKEND=tensorflow")
    import keras_convnext  # noqa: F401 - registers the layers for load_model

    from keras_convnext.weights.files import CheckpointError, load_keras_model

    try:
        model = load_keras_model(args.keras_file, compile=False)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    _write_saved_model(model, args.export_dir)


if __name__ == "__main__":
    main()
