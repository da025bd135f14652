"""``python -m keras_convnext.convert``: any checkpoint -> a keras_convnext .weights.h5 that
loads with no torch, with logits equal to the reference implementation's."""

import os

import keras
import numpy as np
import pytest

import keras_convnext
import weights_references as R
from conftest import run_once_across_backends, run_python
from keras_convnext import convert
from keras_convnext.variants import VARIANTS, Variant

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def refs():
    return R.references()


@pytest.fixture
def custom_variant(monkeypatch):
    """A named variant with the reference models' sizes, so --variant can be exercised."""
    monkeypatch.setitem(VARIANTS, "custom", Variant("custom", R.DEPTHS, R.DIMS))


def _source(refs):
    """An official-format file when timm (its certifier) is there, else the HF file."""
    file_id = "official-linear-mlp" if refs.timm is not None else "hf-safetensors"
    return file_id, refs.files[file_id]


def _logits(path, images):
    model = keras_convnext.ConvNeXt(
        R.DEPTHS, R.DIMS, classes=R.CLASSES, include_preprocessing=False,
        classifier_activation=None, weights=path,
    )
    return keras.ops.convert_to_numpy(model(images))


def test_cli_converts_and_prints_what_it_matched(refs, custom_variant, tmp_path, capsys):
    file_id, src = _source(refs)
    dst = str(tmp_path / "custom.weights.h5")
    assert convert.main([src, dst, "--variant", "custom", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "matched all 65 tensors, one to each variable of convnext_custom" in out
    if file_id.startswith("official"):
        assert "facebookresearch/ConvNeXt PyTorch checkpoint" in out
        assert "downsample_layers.0.0.weight -> stem/conv/kernel (4, 4, 3, 16)" in out
        assert "stages.2.1.gamma -> stage_2_block_1/layer_scale/gamma (32,)" in out
    assert f"wrote {dst}" in out
    error = R.relative_error(_logits(dst, refs.images), refs.logits[file_id])
    assert error < TOLERANCE


@pytest.mark.parametrize("file_id", ["hf-safetensors", "keras-applications-h5"])
def test_cli_reads_other_formats(refs, tmp_path, capsys, file_id):
    dst = str(tmp_path / "out.weights.h5")
    assert convert.main([refs.files[file_id], dst]) == 0
    assert "a custom ConvNeXt (depths (1, 1, 2, 1)" in capsys.readouterr().out
    assert os.path.isfile(dst)


def test_cli_refuses_the_wrong_variant(refs, tmp_path, capsys):
    _, src = _source(refs)
    dst = tmp_path / "tiny.weights.h5"
    assert convert.main([src, str(dst), "--variant", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "is not convnext_tiny (depths (3, 3, 9, 3)" in err
    assert "it looks like a custom ConvNeXt (depths (1, 1, 2, 1), dims (16, 24, 32, 40)" in err
    assert not dst.exists()


def test_cli_wants_a_keras_weights_file_name(refs, tmp_path):
    with pytest.raises(SystemExit) as info:
        convert.main([refs.files["hf-safetensors"], str(tmp_path / "out.h5")])
    assert info.value.code == 2


def test_cli_reports_a_bad_source(tmp_path, capsys):
    src = tmp_path / "garbage.pth"
    src.write_bytes(b"garbage" * 10)
    assert convert.main([str(src), str(tmp_path / "out.weights.h5")]) == 2
    assert "unknown or corrupt checkpoint file" in capsys.readouterr().err


@run_once_across_backends()
def test_converted_files_load_without_torch(refs, tmp_path):
    """Converted once where torch is (a .pth needs it), then, in a process where torch cannot be
    imported: the command converts a safetensors file, and both converted files load with
    the reference logits."""
    file_id, src = _source(refs)
    dst = str(tmp_path / "converted.weights.h5")
    assert convert.main([src, dst]) == 0
    np.save(tmp_path / "images.npy", refs.images)
    np.save(tmp_path / "expected.npy", refs.logits[file_id])
    np.save(tmp_path / "expected_hf.npy", refs.logits["hf-safetensors"])
    code = """
import importlib.abc, runpy, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, NoTorch())
import numpy as np, keras, keras_convnext
tmp, dst, hf = sys.argv[1:]
sys.argv = ["convert", hf, tmp + "/hf.weights.h5"]
try:
    runpy.run_module("keras_convnext.convert", run_name="__main__")
except SystemExit as e:
    assert e.code == 0, e.code
images = np.load(tmp + "/images.npy")
for path, expected in ((dst, "expected"), (tmp + "/hf.weights.h5", "expected_hf")):
    model = keras_convnext.ConvNeXt((1, 1, 2, 1), (16, 24, 32, 40), classes=5,
        include_preprocessing=False, classifier_activation=None, weights=path)
    logits = keras.ops.convert_to_numpy(model(images))
    reference = np.load(f"{tmp}/{expected}.npy")
    print("error", float(np.max(np.abs(logits - reference)) / np.max(np.abs(reference))))
assert "torch" not in sys.modules
"""
    out = run_python(code, "tensorflow", tmp_path, dst, refs.files["hf-safetensors"])
    assert "matched all 65 tensors" in out
    errors = [float(line.split()[1]) for line in out.splitlines() if line.startswith("error ")]
    assert len(errors) == 2 and max(errors) < TOLERANCE, out
