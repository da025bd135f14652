"""Exports a ConvNeXt to every format Keras 3 offers, each file checked through its own runtime.

=============  =========  ===========================  ==============================================
format         file       written from                 checked with
=============  =========  ===========================  ==============================================
saved_model    folder     tensorflow, jax              TensorFlow (``tf.saved_model.load``)
onnx           ``.onnx``  tensorflow, jax, torch       onnxruntime
litert         ``.tflite``  tensorflow (torch: needs   the LiteRT interpreter (``ai-edge-litert``)
                          ``litert-torch``)
openvino       ``.xml``   tensorflow, jax, torch       OpenVINO (CPU, float32 precision)
torch          ``.pt2``   torch                        ``torch.export.load``
=============  =========  ===========================  ==============================================

Every file takes float32 images (batch, H, W, C) in the model's input range (0-255 with the
built-in preprocessing), with a dynamic batch, and a dynamic image size when the model was built
with ``input_shape=(None, None, C)``. SavedModel and LiteRT files also hold a ``serve_uint8``
signature (uint8 images) beside ``serving_default``; the others hold one graph, float32.

Keras' own ``model.export`` writes each file, except where it cannot for our models: OpenVINO
from JAX (``jax2tf`` only writes ``XlaCallModule``, which OpenVINO cannot read) goes through the
ONNX file; SavedModel and LiteRT get the two signatures through ``keras.export.ExportArchive``.
The torch fast paths step aside while torch traces (``dispatch.tracing_for_export``), and
TensorFlow's GELU is written with ``erf`` (``dispatch.gelu_erf``), so the exported graphs have the
Keras model's numbers. Files are written under a temporary name and renamed when complete.

``int8=True`` exports an int8 model: LiteRT full-integer (int8 weights and activations,
calibrated on ``representative`` images); other formats take a model already quantized with
``model.quantize("int8")``.

Command line: ``python -m keras_convnext.export MODEL --format onnx,litert --output DIR``.
"""

import argparse
import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile

import keras
import numpy as np

from keras_convnext import dispatch

TOLERANCE = 1e-4  # max |exported - keras| / max |keras| for a float32 file
INT8_TOLERANCE = 0.1  # a full-integer LiteRT file against the float model (its own rounding)


class ExportError(ValueError):
    """A bad export request (format, backend, runtime, output path): one line, nothing written."""


@dataclasses.dataclass(frozen=True)
class Format:
    name: str
    suffix: str  # the file's suffix; "" for a folder
    backends: tuple  # backends that write it, the preferred one first
    runtime: str  # the module that runs it (for the check and the missing-runtime error)
    writer: str  # the module the writing needs beside the backend
    uint8: bool  # holds a uint8 signature beside the float32 one


FORMATS = {
    "saved_model": Format("saved_model", "", ("tensorflow", "jax"), "tensorflow", "tensorflow",
                          True),
    "onnx": Format("onnx", ".onnx", ("tensorflow", "jax", "torch"), "onnxruntime", "onnx", False),
    "litert": Format("litert", ".tflite", ("tensorflow", "torch"), "ai_edge_litert",
                     "tensorflow", True),
    "openvino": Format("openvino", ".xml", ("tensorflow", "jax", "torch"), "openvino",
                       "openvino", False),
    "torch": Format("torch", ".pt2", ("torch",), "torch", "torch", False),
}
# What writing a format needs beside its runtime, per backend (Keras imports these lazily).
_WRITERS = {("onnx", "tensorflow"): "tf2onnx", ("onnx", "jax"): "jax2onnx",
            ("onnx", "torch"): "onnxscript", ("litert", "torch"): "litert_torch",
            ("saved_model", "jax"): "tensorflow", ("openvino", "jax"): "jax2onnx"}
_INSTALL = "pip install keras_convnext[export]"


def parse_formats(text):
    """``"onnx,litert"`` -> ``["onnx", "litert"]``; ExportError naming an unknown format."""
    names = [name.strip() for name in str(text).split(",") if name.strip()]
    unknown = [name for name in names if name not in FORMATS]
    if unknown or not names:
        raise ExportError(f"unknown export format {', '.join(unknown) or repr(text)}; "
                          f"choose from {', '.join(FORMATS)}")
    return list(dict.fromkeys(names))


def file_name(fmt, stem="model"):
    """The file (or folder) name a format is written to: ``model.onnx``, ``saved_model``."""
    return "saved_model" if fmt == "saved_model" else stem + FORMATS[fmt].suffix


def _modules(fmt, backend):
    """The modules writing ``fmt`` from ``backend`` and checking it need."""
    spec = FORMATS[fmt]
    return (_BACKEND_MODULES[backend], _WRITERS.get((fmt, backend), spec.writer), spec.runtime)


_BACKEND_MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def writable(fmt, backend=None):
    """Whether the running backend (or ``backend``) can write ``fmt`` here."""
    backend = backend or keras.backend.backend()
    return backend in FORMATS[fmt].backends and all(map(_importable, _modules(fmt, backend)))


def writer_backend(fmt):
    """The backend that writes ``fmt``: the running one where it can, else another that can
    (by a subprocess); ExportError (wrong backend, missing runtime) where none can."""
    backend = keras.backend.backend()
    if writable(fmt, backend):
        return backend
    for other in FORMATS[fmt].backends:
        if other != backend and writable(fmt, other):
            return other
    require(fmt, backend if backend in FORMATS[fmt].backends else FORMATS[fmt].backends[0])
    return backend


def _importable(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None


def require(fmt, backend=None):
    """ExportError unless the running backend can write ``fmt`` and its runtime is installed."""
    backend = backend or keras.backend.backend()
    spec = FORMATS[fmt]
    if backend not in spec.backends:
        raise ExportError(f"{fmt} cannot be written from the {backend} backend; "
                          f"use KERAS_BACKEND={' or '.join(spec.backends)}")
    for module in _modules(fmt, backend):
        if not _importable(module):
            if module == "litert_torch":
                raise ExportError("litert from the torch backend needs litert-torch (pip install "
                                  "litert-torch), which the [export] extra leaves out: it pins "
                                  "older typing-extensions; use KERAS_BACKEND=tensorflow")
            raise ExportError(f"{fmt} export needs the {module} module: {_INSTALL}")


def input_spec(model, dtype="float32"):
    """The exported input: the model's (H, W, C) with a dynamic batch."""
    return keras.InputSpec(shape=(None,) + tuple(model.input_shape[1:]), dtype=dtype)


def _uint8_model(model):
    """``model`` behind a uint8 input (cast to float32 inside): the serve_uint8 signature."""
    inputs = keras.Input(shape=tuple(model.input_shape[1:]), dtype="uint8", name="images")
    outputs = model(keras.ops.cast(inputs, "float32"), training=False)
    return keras.Model(inputs, outputs, name=f"{model.name}_uint8")


def _write_saved_model(model, path, signatures=("serving_default", "serve_uint8")):
    archive = keras.export.ExportArchive()
    archive.track(model)
    models = {"serving_default": (model, "float32"), "serve_uint8": (None, "uint8")}
    for name in signatures:
        target, dtype = models[name]
        target = target or _uint8_model(model)  # the same variables: tracked once, as model's
        archive.add_endpoint(name, target, input_signature=[input_spec(model, dtype)])
    archive.write_out(path, verbose=False)


def _write_litert(model, path, int8=False, representative=None):
    import tensorflow as tf

    signatures = ("serving_default",) if int8 else ("serving_default", "serve_uint8")
    with tempfile.TemporaryDirectory() as saved:
        _write_saved_model(model, saved, signatures)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=list(signatures))
        if int8:
            if representative is None:
                raise ExportError("int8 litert export needs representative images "
                                  "(representative=...)")
            images = np.asarray(representative, dtype="float32")
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([image[None]] for image in images)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        with open(path, "wb") as f:
            f.write(converter.convert())


def _write_openvino(model, path):
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        if keras.backend.backend() == "jax":
            # jax2tf writes XlaCallModule ops, which OpenVINO cannot convert: read the ONNX file.
            source = os.path.join(tmp, "model.onnx")
            model.export(source, format="onnx", verbose=False,
                         input_signature=[input_spec(model)])
        else:
            source = os.path.join(tmp, "model.xml")
            model.export(source, format="openvino", verbose=False,
                         input_signature=[input_spec(model)])
        ov_model = ov.Core().read_model(source)
        _finish_openvino(ov_model, model, path)


def _finish_openvino(ov_model, model, path):
    import openvino as ov

    if keras.backend.backend() == "torch":  # traced at batch 1: free the batch again
        ov_model.reshape({ov_model.inputs[0]: ov.PartialShape(
            [-1] + [d if d is not None else -1 for d in model.input_shape[1:]])})
    # The CPU plugin runs bf16 by default on CPUs with AVX-512 BF16 / AMX: keep float32.
    ov_model.set_rt_info("f32", ["runtime_options", "INFERENCE_PRECISION_HINT"])
    ov.save_model(ov_model, path, compress_to_fp16=False)


def _torch_program(model):
    """``torch.export`` of the model (non-strict, as Keras does) with a dynamic batch."""
    import torch

    model.eval()
    sample = torch.from_numpy(sample_images(model, count=2))  # 2: a batch of 1 is specialized
    batch = torch.export.Dim("batch", min=1, max=4096)
    return torch.export.export(model, (sample,), dynamic_shapes=(({0: batch},),),
                               strict=False)  # forward(*args): one tuple of args


def _write_torch(model, path):
    import torch

    torch.export.save(_torch_program(model), path)


def _write_onnx(model, path):
    if keras.backend.backend() != "torch":
        model.export(path, format="onnx", verbose=False, input_signature=[input_spec(model)])
        return
    # Keras takes TorchScript's exporter for a dynamic batch, which cannot export the shapes
    # LayerNormalization computes; torch.export's (dynamo) exporter takes the batch as a Dim.
    import torch

    program = torch.onnx.export(_torch_program(model), dynamo=True, input_names=["images"],
                                verbose=False)
    program.optimize()
    program.save(path)


_WRITE = {"saved_model": _write_saved_model, "onnx": _write_onnx, "litert": _write_litert,
          "openvino": _write_openvino, "torch": _write_torch}


def _keras_quantized(model):
    return any(getattr(layer, "quantization_mode", None) for layer in model._flatten_layers())


def export_model(model, fmt, path, *, int8=False, representative=None):
    """Writes ``model`` as ``fmt`` to ``path`` (atomically: a temporary name, then renamed).

    ``int8``: LiteRT full-integer quantization calibrated on ``representative`` (float images,
    (N, H, W, C)); for the other formats quantize the model first (``model.quantize("int8")``).
    """
    require(fmt)
    if fmt in ("litert", "openvino") and _keras_quantized(model):
        raise ExportError(f"{fmt} cannot take a model quantized with model.quantize (LiteRT has "
                          "no int8 BatchMatMul, OpenVINO misreads it); export it as onnx, "
                          "saved_model or torch, or litert with int8=True from the float model")
    if os.path.exists(path):
        raise ExportError(f"{path} exists; remove it or choose another output")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmpdir = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        tmp = os.path.join(tmpdir, os.path.basename(path))
        if fmt == "litert":
            _write_litert(model, tmp, int8=int8, representative=representative)
        else:
            _WRITE[fmt](model, tmp)
        os.replace(tmp, path)
        if fmt == "openvino":
            os.replace(tmp[:-4] + ".bin", path[:-4] + ".bin")
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path


def load(path, fmt, signature="serving_default", num_threads=None):
    """The exported file as a function of numpy images -> numpy outputs, run by its runtime
    (``num_threads``: the LiteRT interpreter's threads; None: its default)."""
    if fmt == "saved_model":
        import tensorflow as tf

        loaded = tf.saved_model.load(path)
        function = loaded.signatures[signature]

        def run(x):
            outputs = function(tf.constant(x))
            return next(iter(outputs.values())).numpy()

        run.keep = loaded  # the functions need the loaded object alive
        return run
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})[0]
    if fmt == "litert":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=path, num_threads=num_threads)
        runner = interpreter.get_signature_runner(signature)
        name = next(iter(runner.get_input_details()))
        details = runner.get_input_details()[name]

        def run(x):
            scale, zero = details["quantization"]
            if details["dtype"] == np.int8:  # full-integer file: quantize the input
                x = np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)
            outputs = runner(**{name: x})
            out_details = runner.get_output_details()
            key = next(iter(outputs))
            y = outputs[key]
            scale, zero = out_details[key]["quantization"]
            if y.dtype == np.int8:
                y = (y.astype("float32") - zero) * scale
            return y

        run.keep = interpreter
        return run
    if fmt == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return lambda x: compiled(x)[0]
    if fmt == "torch":
        import torch

        module = torch.export.load(path).module()
        return lambda x: module(torch.from_numpy(x)).detach().cpu().numpy()
    raise ExportError(f"unknown export format {fmt}")


def relative_error(outputs, reference):
    """max |outputs - reference| / max |reference|."""
    reference = np.asarray(reference, dtype="float64")
    return float(np.abs(np.asarray(outputs, "float64") - reference).max()
                 / max(np.abs(reference).max(), 1e-30))


def check(model, path, fmt, images, tolerance=TOLERANCE):
    """Runs ``images`` (uint8-valued float32, (N, H, W, C)) through the exported file (each
    signature) and through ``model``; returns {signature: relative max error}, ExportError
    above ``tolerance``."""
    images = np.asarray(images, dtype="float32")
    # A quantized model exports Keras' own int8 arithmetic, not torch's int8 GEMM fast path.
    quantized = _keras_quantized(model)
    with dispatch.fast_paths(False) if quantized else contextlib.nullcontext():
        reference = keras.ops.convert_to_numpy(model(images, training=False))
    errors = {"serving_default": relative_error(load(path, fmt)(images), reference)}
    has_uint8 = FORMATS[fmt].uint8 and (fmt != "litert" or tolerance <= TOLERANCE)
    if has_uint8:
        errors["serve_uint8"] = relative_error(
            load(path, fmt, "serve_uint8")(images.astype("uint8")), reference)
    worst = max(errors.values())
    if not worst <= tolerance:
        raise ExportError(f"{path}: outputs differ from the Keras model's (relative max error "
                          f"{worst:.2e} > {tolerance:g})")
    return errors


def sample_images(model, count=3, seed=0):
    """``count`` random uint8-valued float32 images of the model's input size (64 px where the
    size is dynamic)."""
    height, width, channels = [d or 64 for d in model.input_shape[1:4]]
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, height, width, channels)).astype("float32")


# --- loading a model from what a user has -------------------------------------------------


def load_source(source, weights=None):
    """A Keras model from a ``.keras`` file, a training run folder (its ``model.keras``, else
    ``best.keras``), or a variant name (``convnext_atto``) with optional ``weights``."""
    import keras_convnext

    if os.path.isdir(source):
        for name in ("model.keras", "best.keras"):
            if os.path.isfile(os.path.join(source, name)):
                return keras.saving.load_model(os.path.join(source, name), compile=False)
        raise ExportError(f"{source} is a folder without model.keras or best.keras "
                          "(not a training run folder)")
    if source.endswith(".keras"):
        if not os.path.isfile(source):
            raise ExportError(f"{source}: no such file")
        return keras.saving.load_model(source, compile=False)
    try:
        keras_convnext.get_variant(source)
    except (KeyError, ValueError) as e:
        raise ExportError(f"{source} is not a .keras file, a run folder or a variant name "
                          f"({e})") from None
    return keras_convnext.variants.build(source, weights=weights)


def _subprocess_export(keras_path, fmt, path, backend):
    """``fmt`` written by a ``backend`` subprocess from ``keras_path`` (its backend cannot here)."""
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-m", "keras_convnext.export", keras_path, "--format", fmt,
         "--output", path, "--single"], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ExportError(f"{fmt} export (KERAS_BACKEND={backend} subprocess) failed: {tail[0]}")
    return result.stdout.strip().splitlines()[-1]


def export_all(model, formats, output_dir, *, keras_path=None, log=print, stem="model"):
    """Writes ``model`` in each of ``formats`` into ``output_dir`` (new or empty) and checks
    each file against the model on a few images. Formats the running backend cannot write are
    written by a subprocess on a backend that can (from ``keras_path``, the model saved as a
    ``.keras`` file; saved to a temporary one when None). Returns {format: path}."""
    formats = parse_formats(",".join(formats) if not isinstance(formats, str) else formats)
    if os.path.exists(output_dir) and (not os.path.isdir(output_dir) or os.listdir(output_dir)):
        raise ExportError(f"output {output_dir} exists and is not an empty folder")
    backends = {fmt: writer_backend(fmt) for fmt in formats}  # fail before writing anything
    os.makedirs(output_dir, exist_ok=True)
    images = sample_images(model)
    written = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in formats:
            path = os.path.join(output_dir, file_name(fmt, stem))
            if backends[fmt] == keras.backend.backend():
                export_model(model, fmt, path)
                line = _report(path, check(model, path, fmt, images), len(images))
            else:
                if keras_path is None:
                    keras_path = os.path.join(tmp, "model.keras")
                    model.save(keras_path)
                line = (_subprocess_export(keras_path, fmt, path, backends[fmt])
                        + f" (written by KERAS_BACKEND={backends[fmt]})")
            log(line)
            written[fmt] = path
    return written


def _report(path, errors, count):
    checks = ", ".join(f"{name} {error:.1e}" for name, error in errors.items())
    return f"wrote {path}: matches the Keras model on {count} images (relative max error {checks})"


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_convnext.export",
        description="Export a ConvNeXt to onnx, litert, openvino, saved_model, torch; each file "
                    "is checked against the Keras model.")
    parser.add_argument("model", help="a .keras file, a training run folder, or a variant name")
    parser.add_argument("--weights", default=None, help="with a variant name: imagenet or a "
                        "checkpoint file")
    parser.add_argument("--format", required=True, help=f"comma-separated: {','.join(FORMATS)}")
    parser.add_argument("--output", required=True, help="a new (or empty) folder")
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)  # subprocess
    args = parser.parse_args(argv)
    try:
        if args.single:  # one format to one path, for export_all's subprocess
            (fmt,) = parse_formats(args.format)
            model = load_source(args.model, args.weights)
            export_model(model, fmt, args.output)
            print(_report(args.output, check(model, args.output, fmt, sample_images(model)), 3))
            return 0
        formats = parse_formats(args.format)
        model = load_source(args.model, args.weights)
        keras_path = args.model if args.model.endswith(".keras") else None
        export_all(model, formats, args.output, keras_path=keras_path)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
