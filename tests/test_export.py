"""keras_convnext.export: every format the running backend writes, checked through its runtime
(onnxruntime, LiteRT, OpenVINO, TensorFlow, torch.export) against the Keras model; the
tracing predicate behind the torch fast paths; the CLI's one-line errors."""

import os

import keras
import numpy as np
import pytest

import keras_convnext
from keras_convnext import dispatch
from keras_convnext import export as ex
from tests.conftest import BACKEND, run_once_across_backends

WRITABLE = [fmt for fmt in ex.FORMATS if ex.writable(fmt)]


def tiny_model(**kwargs):
    """V1 blocks with GRN and LayerScale (every block op of the family), 32 px, 10 classes."""
    return keras_convnext.ConvNeXt((1, 1, 1, 1), (8, 16, 16, 24), input_shape=(32, 32, 3),
                                   classes=10, use_grn=True, layer_scale_init_value=0.5,
                                   seed=0, **kwargs)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.mark.parametrize("fmt", WRITABLE)
def test_each_format_matches_the_keras_model_with_a_dynamic_batch(model, fmt, tmp_path):
    path = str(tmp_path / ex.file_name(fmt))
    ex.export_model(model, fmt, path)
    images = ex.sample_images(model, count=3)  # torch traces at batch 2: 3 is dynamic
    errors = ex.check(model, path, fmt, images)
    assert max(errors.values()) < ex.TOLERANCE
    assert set(errors) == ({"serving_default", "serve_uint8"} if ex.FORMATS[fmt].uint8
                           else {"serving_default"})
    single = ex.load(path, fmt)(images[:1])
    np.testing.assert_allclose(single, keras.ops.convert_to_numpy(model(images[:1])),
                               rtol=1e-4, atol=1e-5)
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".export-")]


def test_the_formats_each_backend_writes():
    expected = {"tensorflow": {"saved_model", "onnx", "litert", "openvino"},
                "jax": {"saved_model", "onnx", "openvino"},
                "torch": {"onnx", "openvino", "torch"}}[BACKEND]
    assert set(WRITABLE) <= expected | {"litert"}
    missing = expected - set(WRITABLE)
    assert not missing, f"runtimes missing ({ex._INSTALL}): {missing}"


def test_tracing_for_export_is_true_only_while_torch_records_a_graph():
    assert not dispatch.tracing_for_export()
    if BACKEND != "torch":
        return
    import torch

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(dispatch.tracing_for_export())
            return x + 1

    x = torch.ones(2, 3)
    torch.jit.trace(Probe(), (x,), check_trace=False)
    torch.export.export(Probe(), (x,), strict=False)
    Probe()(x)
    assert seen == [True, True, False]


def test_tensorflow_gelu_is_written_with_erf():
    x = keras.ops.convert_to_tensor(np.linspace(-6, 6, 101).astype("float32"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(dispatch.gelu_erf(x)),
                               keras.ops.convert_to_numpy(keras.activations.gelu(x)),
                               rtol=1e-6, atol=1e-6)  # erf loses digits only where GELU ~ 0
    if BACKEND != "tensorflow":
        return
    import tensorflow as tf

    layer = dispatch.Dense(4, activation="gelu")
    graph = tf.function(layer).get_concrete_function(tf.TensorSpec([2, 3])).graph
    ops = {op.type for op in graph.get_operations()}
    assert "Erf" in ops and "Erfc" not in ops


@pytest.mark.skipif(BACKEND != "torch", reason="the torch fast paths")
def test_torch_fast_paths_give_the_traced_numbers(model):
    images = ex.sample_images(model, count=2)
    with dispatch.fast_paths(True):
        fast = keras.ops.convert_to_numpy(model(images, training=False))
    with dispatch.fast_paths(False):
        plain = keras.ops.convert_to_numpy(model(images, training=False))
    assert ex.relative_error(fast, plain) < 1e-5


# --- the command line (its errors do not depend on the backend) ----------------------------


def _error(capsys, argv):
    assert ex.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@run_once_across_backends("argument checks")
def test_cli_bad_input_gives_one_line_errors(tmp_path, capsys, monkeypatch):
    keras_file = str(tmp_path / "m.keras")
    tiny_model().save(keras_file)
    out = str(tmp_path / "out")
    assert "unknown export format tflite" in _error(
        capsys, [keras_file, "--format", "onnx,tflite", "--output", out])
    os.makedirs(out)
    open(os.path.join(out, "x"), "w").close()
    assert "not an empty folder" in _error(capsys, [keras_file, "--format", "onnx",
                                                    "--output", out])
    assert "no such file" in _error(capsys, [str(tmp_path / "nope.keras"), "--format", "onnx",
                                             "--output", str(tmp_path / "o2")])
    assert "not a .keras file, a run folder or a variant name" in _error(
        capsys, ["convnext_gigantic", "--format", "onnx", "--output", str(tmp_path / "o3")])
    real = ex._importable
    monkeypatch.setattr(ex, "_importable", lambda m: m != "onnxruntime" and real(m))
    assert "pip install keras_convnext[export]" in _error(
        capsys, [keras_file, "--format", "onnx", "--output", str(tmp_path / "o4")])
    assert not os.path.exists(tmp_path / "o2") and not os.path.exists(tmp_path / "o4")


def test_a_format_this_backend_cannot_write_names_the_backend_that_can(model, tmp_path):
    fmt = {"tensorflow": "torch", "jax": "torch", "torch": "saved_model"}[BACKEND]
    with pytest.raises(ex.ExportError, match=f"{fmt} cannot be written from the {BACKEND} "
                                             "backend; use KERAS_BACKEND="):
        ex.export_model(model, fmt, str(tmp_path / ex.file_name(fmt)))
    assert os.listdir(tmp_path) == []


@run_once_across_backends("the command line's output")
def test_cli_writes_and_checks_each_file(tmp_path, capsys):
    keras_file = str(tmp_path / "m.keras")
    tiny_model().save(keras_file)
    out = tmp_path / "out"
    assert ex.main([keras_file, "--format", "onnx", "--output", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "model.onnx: matches the Keras model on 3 images" in lines[0]
    assert os.listdir(out) == ["model.onnx"]


@pytest.mark.skipif(BACKEND != "torch", reason="one backend hands a format to another")
def test_a_format_of_another_backend_is_written_by_its_subprocess(model, tmp_path):
    lines = []
    written = ex.export_all(model, "saved_model", str(tmp_path / "out"), log=lines.append)
    assert list(written) == ["saved_model"] and os.path.isdir(written["saved_model"])
    assert "written by KERAS_BACKEND=tensorflow" in lines[0] and "matches" in lines[0]


def test_int8_quantize_of_a_loaded_model_with_fast_paths_round_trips(tmp_path):
    path = str(tmp_path / "m.keras")
    tiny_model(drop_path_rate=0.1).save(path)
    model = keras.saving.load_model(path)  # a loaded model: every layer must be built
    images = ex.sample_images(model, count=2)
    reference = keras.ops.convert_to_numpy(model(images, training=False))
    model.quantize("int8")
    pointwise = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.Dense)]
    assert len(pointwise) == 9 and all(layer.quantization_mode == "int8" for layer in pointwise)
    quantized = keras.ops.convert_to_numpy(model(images, training=False))
    assert 0 < ex.relative_error(quantized, reference) < 0.05
    model.save(str(tmp_path / "q.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "q.keras"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(images, training=False)),
                               quantized, rtol=1e-5, atol=1e-6)
    with pytest.raises(ex.ExportError, match="cannot take a model quantized"):
        ex.export_model(loaded, "openvino", str(tmp_path / "q.xml"))
    for fmt in ("onnx", "saved_model", "torch"):  # the formats that hold Keras' int8 ops
        if ex.writable(fmt):
            path = str(tmp_path / ex.file_name(fmt))
            ex.export_model(loaded, fmt, path)
            assert max(ex.check(loaded, path, fmt, images).values()) < ex.TOLERANCE
