"""Loading published checkpoint formats: logits equal to independent reference implementations
(tests/weights_references.py) for every format, strict checking, heads, presets and cache."""

import os
import sys

import keras
import numpy as np
import pytest

import keras_convnext
import weights_references as R
from conftest import run_once_across_backends, run_python
from keras_convnext.variants import ALL_VARIANTS, VARIANTS, Variant
from keras_convnext.weights import CheckpointError, load_weights, presets, read_checkpoint
from keras_convnext.weights.assign import architecture, plan
from keras_convnext.weights.converted import Converted
from keras_convnext.weights import files
from keras_convnext.weights.files import read_safetensors

TOLERANCE = 1e-4
# "linear-mlp": the MLP as nn.Linear (as in official checkpoints); "conv-mlp": as 1x1 convs
# (timm's atto ... nano checkpoints).
TIMM_IDS = [
    name.format(mlp)
    for mlp in ("linear-mlp", "conv-mlp")
    for name in ("timm-{}-safetensors", "timm-{}-pth", "official-{}")
]


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _ours(**kwargs):
    kwargs.setdefault("classes", R.CLASSES)
    kwargs.setdefault("include_preprocessing", False)
    return keras_convnext.ConvNeXt(R.DEPTHS, R.DIMS, classifier_activation=None, **kwargs)


@pytest.fixture(scope="module")
def refs():
    return R.references()


@pytest.fixture(scope="module")
def model():
    """One model reloaded by every test: each load must set every variable."""
    return _ours()


def _needs_timm(refs):
    if refs.timm is None:
        pytest.skip(
            "timm is not installed (pip install --no-deps timm): it is the reference for the "
            "timm and facebookresearch formats"
        )


def _check(model, refs, file_id, **kwargs):
    load_weights(model, refs.files[file_id], **kwargs)
    inputs = refs.pixels if file_id in refs.uses_pixels else refs.images
    error = R.relative_error(_np(model(inputs)), refs.logits[file_id])
    assert error < TOLERANCE, f"{file_id}: relative error {error}"


# ------------------------------------------------------------- logits equal to the references


@pytest.mark.parametrize("file_id", ["hf-safetensors", "hf-bin"])
def test_hugging_face_files_give_transformers_logits(refs, model, file_id):
    _check(model, refs, file_id)
    # The same tensors at another resolution (fine-tuning at 384 px works the same way).
    error = R.relative_error(_np(model(refs.images_96)), refs.hf_logits_96)
    assert error < TOLERANCE


@pytest.mark.parametrize("file_id", TIMM_IDS)
def test_timm_and_official_files_give_timm_logits(refs, model, file_id):
    _needs_timm(refs)
    _check(model, refs, file_id)


def test_official_training_checkpoint_loads_its_ema_on_request(refs, model):
    _needs_timm(refs)
    _check(model, refs, "official-training", ema=True)
    load_weights(model, refs.files["official-training"])  # "model": other weights
    assert R.relative_error(_np(model(refs.images)), refs.logits["official-training"]) > 0.01
    with pytest.raises(CheckpointError, match="no EMA weights"):
        load_weights(model, refs.files["hf-safetensors"], ema=True)


@pytest.mark.parametrize("file_id", ["keras-applications-h5", "keras-applications-weights-h5"])
def test_keras_applications_files_give_keras_applications_logits(refs, file_id):
    _check(_ours(include_preprocessing=True), refs, file_id)


def test_keras_applications_notop_file_loads_without_top(refs):
    ours = _ours(include_top=False, include_preprocessing=True)
    load_weights(ours, refs.files["keras-applications-notop-h5"])
    assert R.relative_error(_np(ours(refs.pixels)), refs.ka_notop_features) < TOLERANCE


def test_native_weights_round_trip(refs, model, tmp_path):
    load_weights(model, refs.files["hf-safetensors"])
    path = str(tmp_path / "ours.weights.h5")
    model.save_weights(path)
    assert read_checkpoint(path).format == "native"
    fresh = _ours(input_shape=(96, 96, 3))
    load_weights(fresh, path)
    assert R.relative_error(_np(fresh(refs.images_96)), refs.hf_logits_96) < TOLERANCE
    # The builder's weights= argument takes the same files.
    built = _ours(weights=path)
    assert R.relative_error(_np(built(refs.images)), refs.logits["hf-safetensors"]) < TOLERANCE


def test_reference_files_randomize_every_tensor(refs):
    tensors = read_safetensors(refs.files["hf-safetensors"])
    flat = [name for name, array in tensors.items() if np.std(array) < 0.05]
    assert not flat, f"left near-constant, a wrong mapping could hide there: {flat}"
    gammas = [a for n, a in tensors.items() if n.endswith("layer_scale_parameter")]
    assert gammas and all(np.abs(g).mean() > 0.5 for g in gammas)


# ------------------------------------------------------------- heads


def test_include_top_false_drops_the_head(refs):
    ours = _ours(include_top=False)
    load_weights(ours, refs.files["hf-safetensors"])
    assert R.relative_error(_np(ours(refs.images)), refs.hf_features) < TOLERANCE


def test_other_classes_fail_unless_a_fresh_head_is_asked_for(refs):
    ours = _ours(classes=7)
    with pytest.raises(CheckpointError, match=r"classifier for 5 classes.*classes=5.*skip_mism"):
        load_weights(ours, refs.files["hf-safetensors"])
    head = _np(ours.get_layer("predictions").kernel).copy()
    with pytest.warns(UserWarning, match="freshly initialized predictions/kernel"):
        load_weights(ours, refs.files["hf-safetensors"], skip_mismatched_head=True)
    np.testing.assert_array_equal(_np(ours.get_layer("predictions").kernel), head)
    reference = read_checkpoint(refs.files["hf-safetensors"]).arrays
    np.testing.assert_array_equal(
        _np(ours.get_layer("head_norm").gamma), reference["head_norm/gamma"]
    )
    features = keras_convnext.feature_extractor(ours)(refs.images)["stage_3"]
    assert R.relative_error(_np(features), refs.hf_features) < TOLERANCE


def test_the_builder_fine_tuning_path_takes_a_fresh_head(refs):
    with pytest.raises(CheckpointError, match="skip_mism"):
        _ours(classes=7, weights=refs.files["hf-safetensors"])
    with pytest.warns(UserWarning, match="freshly initialized predictions/kernel"):
        ours = _ours(classes=7, weights=refs.files["hf-safetensors"], skip_mismatched_head=True)
    features = keras_convnext.feature_extractor(ours)(refs.images)["stage_3"]
    assert R.relative_error(_np(features), refs.hf_features) < TOLERANCE


def test_headless_file_into_model_with_head(refs):
    ours = _ours(include_preprocessing=True)
    with pytest.raises(CheckpointError, match="no classifier head"):
        load_weights(ours, refs.files["keras-applications-notop-h5"])
    with pytest.warns(UserWarning, match="freshly initialized predictions"):
        load_weights(ours, refs.files["keras-applications-notop-h5"], skip_mismatched_head=True)


def test_imagenet_22k_classes_are_named():
    shapes = {"predictions/kernel": (768, 21841), "predictions/bias": (21841,)}
    converted = Converted(
        "official", origin="x.pth", arrays={k: np.zeros(s, "float32") for k, s in shapes.items()}
    )
    model_shapes = {"predictions/kernel": (768, 10), "predictions/bias": (10,)}
    with pytest.raises(CheckpointError, match=r"21841 classes \(ImageNet-22k\).*classes=21841"):
        plan(model_shapes, converted)


# ------------------------------------------------------------- strictness


def _official_zeros(depths, dims, classes=1000):
    """An official-layout state dict of zeros (shapes only, no memory) for error messages."""
    zeros = lambda *shape: np.broadcast_to(np.float32(0), shape)  # noqa: E731
    state = {
        "downsample_layers.0.0.weight": zeros(dims[0], 3, 4, 4),
        "downsample_layers.0.0.bias": zeros(dims[0]),
        "downsample_layers.0.1.weight": zeros(dims[0]),
        "downsample_layers.0.1.bias": zeros(dims[0]),
        "norm.weight": zeros(dims[-1]), "norm.bias": zeros(dims[-1]),
        "head.weight": zeros(classes, dims[-1]), "head.bias": zeros(classes),
    }
    for i, (depth, dim) in enumerate(zip(depths, dims)):
        if i:
            state.update({
                f"downsample_layers.{i}.0.weight": zeros(dims[i - 1]),
                f"downsample_layers.{i}.0.bias": zeros(dims[i - 1]),
                f"downsample_layers.{i}.1.weight": zeros(dim, dims[i - 1], 2, 2),
                f"downsample_layers.{i}.1.bias": zeros(dim),
            })
        for j in range(depth):
            p = f"stages.{i}.{j}."
            state.update({
                p + "dwconv.weight": zeros(dim, 1, 7, 7), p + "dwconv.bias": zeros(dim),
                p + "norm.weight": zeros(dim), p + "norm.bias": zeros(dim),
                p + "pwconv1.weight": zeros(4 * dim, dim), p + "pwconv1.bias": zeros(4 * dim),
                p + "pwconv2.weight": zeros(dim, 4 * dim), p + "pwconv2.bias": zeros(dim),
                p + "gamma": zeros(dim),
            })
    return state


def test_small_checkpoint_into_tiny_names_both_variants():
    from keras_convnext.weights import official

    small, tiny = VARIANTS["small"], VARIANTS["tiny"]
    converted = official.convert(_official_zeros(small.depths, small.dims))
    tiny_shapes = {
        path: array.shape
        for path, array in official.convert(_official_zeros(tiny.depths, tiny.dims)).arrays.items()
    }
    assert architecture(tiny_shapes).variant == "tiny"
    with pytest.raises(CheckpointError) as info:
        plan(tiny_shapes, converted)
    message = str(info.value)
    assert "looks like convnext_small" in message and "the model is convnext_tiny" in message
    assert "stages.2.9.dwconv.weight (as stage_2_block_9/dwconv/kernel)" in message
    assert "... and" in message  # 18 surplus blocks: the listing is cut, with a count


def _write_safetensors(path, state):
    import safetensors.numpy

    safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, path)
    return path


def _hf_state(refs):
    return read_safetensors(refs.files["hf-safetensors"])


def test_deeper_checkpoint_fails_and_leaves_the_model_alone(refs, model, tmp_path):
    deeper = R.hf_model(seed=5, depths=(1, 1, 3, 1))
    path = _write_safetensors(
        str(tmp_path / "deeper.safetensors"), {k: v.numpy() for k, v in deeper.state_dict().items()}
    )
    before = [_np(v).copy() for v in model.weights]
    with pytest.raises(CheckpointError) as info:
        load_weights(model, path)
    message = str(info.value)
    assert "looks like a custom ConvNeXt (depths (1, 1, 3, 1)" in message
    assert "convnext.encoder.stages.2.layers.2.dwconv.weight" in message
    for variable, value in zip(model.weights, before):
        np.testing.assert_array_equal(_np(variable), value)


def test_missing_unexpected_and_misshapen_tensors_are_listed(refs, model, tmp_path):
    state = _hf_state(refs)
    del state["convnext.encoder.stages.1.layers.0.pwconv2.bias"]
    state["convnext.encoder.stages.0.layers.0.extra.weight"] = np.zeros(3, "float32")
    state["convnext.encoder.stages.3.layers.0.dwconv.bias"] = np.zeros(7, "float32")
    path = _write_safetensors(str(tmp_path / "broken.safetensors"), state)
    with pytest.raises(CheckpointError) as info:
        load_weights(model, path)
    message = str(info.value)
    assert "1 missing, 1 unexpected, 1 of the wrong shape" in message
    assert "stage_1_block_0/pwconv2/bias" in message
    assert "convnext.encoder.stages.0.layers.0.extra.weight" in message
    assert "stage_3_block_0/dwconv/bias: file (7,) vs model (40,)" in message


def test_wrong_rank_is_reported(refs, model, tmp_path):
    state = _hf_state(refs)
    state["convnext.embeddings.patch_embeddings.weight"] = np.zeros((16, 48), "float32")
    path = _write_safetensors(str(tmp_path / "rank.safetensors"), state)
    with pytest.raises(CheckpointError, match=r"patch_embeddings.weight: expected a conv weight"):
        load_weights(model, path)


@pytest.mark.parametrize(
    "file_id, message",
    [
        ("hf-safetensors", "truncated or corrupt"),
        ("hf-bin", "cannot read this PyTorch file"),
        ("keras-applications-h5", "cannot read this HDF5 file"),
    ],
)
def test_truncated_files_are_reported(refs, model, tmp_path, file_id, message):
    data = open(refs.files[file_id], "rb").read()
    path = tmp_path / os.path.basename(refs.files[file_id])
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=message):
        load_weights(model, str(path))


def test_unknown_files(refs, model, tmp_path):
    noise = tmp_path / "noise.bin"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="unknown or corrupt checkpoint file; supported"):
        load_weights(model, str(noise))
    text = tmp_path / "weights.txt"
    text.write_text("not weights")
    with pytest.raises(CheckpointError, match="unknown or corrupt"):
        load_weights(model, str(text))
    other = _write_safetensors(str(tmp_path / "other.safetensors"), {"encoder.w": np.ones(2)})
    with pytest.raises(CheckpointError, match="none of the known ConvNeXt layouts"):
        load_weights(model, other)
    with pytest.raises(FileNotFoundError):
        load_weights(model, str(tmp_path / "absent.pth"))


def test_pickled_python_objects_are_not_unpickled(refs, model, tmp_path):
    import argparse

    import torch

    state = {k: torch.from_numpy(v) for k, v in _hf_state(refs).items()}
    path = str(tmp_path / "training.pth")
    torch.save({"model": state, "args": argparse.Namespace(lr=4e-3)}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_weights(model, path)


def test_torch_checkpoint_without_torch_says_what_to_install(refs, model, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r'pip install "keras_convnext\[torch\]"'):
        load_weights(model, refs.files["hf-bin"])


def test_bfloat16_safetensors_read_without_torch(refs, tmp_path):
    import torch
    import safetensors.torch

    state = {k: v.to(torch.bfloat16) for k, v in R.hf_model(seed=0).state_dict().items()}
    path = str(tmp_path / "bf16.safetensors")
    safetensors.torch.save_file(state, path)
    for name, array in read_safetensors(path).items():
        assert array.dtype == np.float32
        np.testing.assert_array_equal(array, state[name].float().numpy())


@run_once_across_backends()
def test_safetensors_and_keras_files_load_without_torch(refs):
    code = f"""
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {{name!r}}")
sys.meta_path.insert(0, NoTorch())
import numpy as np, keras, keras_convnext
sys.path.insert(0, "tests")
import weights_references as R
files = {dict((k, refs.files[k]) for k in refs.files if "safetensors" in k or "keras" in k)!r}
for file_id, path in sorted(files.items()):
    pixels = "keras-applications" in file_id
    builder = keras_convnext.ConvNeXtV2 if file_id.startswith(("v2-", "timm-v2-")) else (
        keras_convnext.ConvNeXt)  # V2 files are there once the V2 tests have written them
    model = builder(R.DEPTHS, R.DIMS, classes=R.CLASSES,
        include_top="notop" not in file_id, include_preprocessing=pixels,
        classifier_activation=None)
    keras_convnext.load_weights(model, path)
    print(file_id, "ok")
assert "torch" not in sys.modules
"""
    out = run_python(code, "tensorflow")
    expected = [k for k in refs.files if "safetensors" in k or "keras" in k]
    for file_id in expected:
        assert f"{file_id} ok" in out


# ------------------------------------------------------------- published checkpoints


@pytest.fixture
def custom_preset(monkeypatch, tmp_path):
    """A variant with the test's sizes and a published checkpoint for it, cached in tmp_path."""
    monkeypatch.setitem(VARIANTS, "custom", Variant("custom", R.DEPTHS, R.DIMS))
    preset = presets.Preset(
        "custom", "imagenet", "https://example.org/convnext/convnext_custom_1k.pth", R.CLASSES
    )
    monkeypatch.setitem(presets.PRESETS, ("custom", "imagenet"), preset)
    monkeypatch.setenv("KERAS_CONVNEXT_CACHE", str(tmp_path / "cache"))
    return preset


def _offline(**kwargs):
    raise OSError("no network")


def test_imagenet_offline_error_says_what_to_download_and_where(custom_preset, model, monkeypatch):
    monkeypatch.setattr(keras.utils, "get_file", _offline)
    with pytest.raises(OSError) as info:
        load_weights(model, "imagenet")
    message = str(info.value)
    assert custom_preset.url in message
    assert os.path.join(presets.cache_dir(), "convnext_custom_1k.pth") in message


def test_imagenet_downloads_converts_and_caches(refs, custom_preset, monkeypatch):
    _needs_timm(refs)
    import shutil

    calls = []

    def fake_get_file(fname, origin, file_hash, cache_subdir):
        calls.append(origin)
        assert origin == custom_preset.url and file_hash is None
        target = os.path.join(cache_subdir, fname)
        os.makedirs(cache_subdir, exist_ok=True)
        shutil.copy(refs.files["official-linear-mlp"], target)
        return target

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    built = _ours(weights="imagenet")
    expected = refs.logits["official-linear-mlp"]
    assert R.relative_error(_np(built(refs.images)), expected) < TOLERANCE
    cached = os.path.join(presets.cache_dir(), "convnext_custom_1k.keras_convnext.weights.h5")
    assert calls == [custom_preset.url] and os.path.isfile(cached)
    # Later loads read the converted file: no download, no torch.
    monkeypatch.setattr(keras.utils, "get_file", _offline)
    monkeypatch.setattr(files, "import_torch", _offline)
    again = _ours(include_top=False)
    load_weights(again, "imagenet")


def test_imagenet_file_put_in_the_cache_by_hand(refs, custom_preset, model):
    import shutil

    os.makedirs(presets.cache_dir())
    # The format is told from the bytes, whatever the name says.
    target = os.path.join(presets.cache_dir(), "convnext_custom_1k.pth")
    shutil.copy(refs.files["hf-safetensors"], target)
    load_weights(model, "imagenet")  # keras.utils.get_file finds it: no download
    assert R.relative_error(_np(model(refs.images)), refs.logits["hf-safetensors"]) < TOLERANCE


def test_hugging_face_folder(refs, model):
    load_weights(model, os.path.dirname(refs.files["hf-bin"]))
    assert R.relative_error(_np(model(refs.images)), refs.logits["hf-bin"]) < TOLERANCE


def test_download_with_a_wrong_hash_prefix_is_refused(refs, custom_preset, monkeypatch):
    import dataclasses

    wrong = dataclasses.replace(custom_preset, sha256_prefix="0000")
    monkeypatch.setitem(presets.PRESETS, ("custom", "imagenet"), wrong)
    path = refs.files["hf-safetensors"]
    monkeypatch.setattr(keras.utils, "get_file", lambda **kwargs: path)
    with pytest.raises(CheckpointError, match="does not start with 0000"):
        load_weights(_ours(), "imagenet")


def test_registry_names_the_official_files():
    tiny = presets.PRESETS[("tiny", "imagenet")]
    assert tiny.url == "https://dl.fbaipublicfiles.com/convnext/convnext_tiny_1k_224_ema.pth"
    assert presets.PRESETS[("xlarge", "imagenet22k")].classes == 21841
    assert presets.PRESETS[("atto", "imagenet")].sha256_prefix == "01bb0f51"
    assert {v for v, _ in presets.PRESETS} == set(ALL_VARIANTS)  # every family, every size


def test_imagenet_for_a_variant_without_checkpoint(model):
    with pytest.raises(ValueError, match="no published checkpoint for a custom ConvNeXt"):
        load_weights(model, "imagenet22k")
