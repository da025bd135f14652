"""ConvNeXt V2 (GRN) and isotropic ConvNeXt: the GRN layer, the families' parameter counts
against the reference implementations, every checkpoint format against reference logits, strict
V1/V2 mismatch errors, and the V2 model through the same paths as V1 (serialization, features,
FLOPs, jit, bf16, fine-tuning)."""

import keras
import numpy as np
import pytest

import keras_convnext
import weights_references as R
from conftest import BACKEND, run_once_across_backends
from keras_convnext import GRN, architecture
from keras_convnext.weights import CheckpointError, load_weights

TOLERANCE = 1e-4


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _grn_reference(x, gamma, beta, channels_last=True):
    """PAPER.md's GRN in float64 numpy: G = ||X|| over (H, W); N = G / (mean_c G + 1e-6);
    gamma * (X * N) + beta + X."""
    x = np.asarray(x, np.float64)
    spatial, channel = ((1, 2), -1) if channels_last else ((2, 3), 1)
    shape = (1, 1, 1, -1) if channels_last else (1, -1, 1, 1)
    g = np.sqrt((x ** 2).sum(axis=spatial, keepdims=True))
    n = g / (g.mean(axis=channel, keepdims=True) + 1e-6)
    return gamma.reshape(shape) * (x * n) + beta.reshape(shape) + x


# ------------------------------------------------------------------------------------ GRN


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_grn_computes_the_papers_formula(data_format, rng):
    shape = (2, 5, 6, 7) if data_format == "channels_last" else (2, 7, 5, 6)
    layer = GRN(data_format=data_format)
    layer.build(shape)
    gamma, beta = rng.normal(size=7).astype("float32"), rng.normal(size=7).astype("float32")
    layer.set_weights([gamma, beta])
    x = rng.normal(size=shape).astype("float32")
    expected = _grn_reference(x, gamma, beta, data_format == "channels_last")
    np.testing.assert_allclose(_np(layer(x)), expected, rtol=1e-5, atol=1e-5)


def test_grn_starts_as_the_identity(rng):
    layer = GRN()
    x = rng.normal(size=(2, 4, 4, 3)).astype("float32")
    np.testing.assert_array_equal(_np(layer(x)), x)
    assert [w.path.split("/")[-1] for w in layer.weights] == ["gamma", "beta"]


def test_grn_refuses_a_tensor_that_is_not_a_feature_map():
    with pytest.raises(ValueError, match="GRN takes 4-D feature maps"):
        GRN()(np.zeros((2, 8), "float32"))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_grn_norm_is_computed_in_float32_under_mixed_precision(policy, rng):
    # 300^2 * 64 positions = 5.8e6: the squared norm overflows float16 (max 65504).
    x = (300.0 * rng.choice([-1.0, 1.0], size=(1, 8, 8, 4))).astype("float32")
    layer = GRN(dtype=policy)
    layer.build(x.shape)
    gamma, beta = np.full(4, 0.5, "float32"), np.full(4, 0.25, "float32")
    layer.set_weights([gamma, beta])
    out = _np(layer(x)).astype("float64")
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, _grn_reference(x, gamma, beta), rtol=1e-2)


def test_grn_round_trips_its_config():
    layer = GRN(epsilon=1e-5, data_format="channels_first", name="g")
    clone = GRN.from_config(layer.get_config())
    assert (clone.epsilon, clone.data_format, clone.name) == (1e-5, "channels_first", "g")


# ----------------------------------------------------------------------- the V2 family


V2_COUNTS = {"v2_atto": 3_708_400, "v2_tiny": 28_635_496, "v2_huge": 660_289_640}  # timm's


def _unbuilt_count(constructor, **kwargs):
    """Parameters of a model built without initializing its weights (fast for Huge)."""
    with keras.StatelessScope(initialize_variables=False):
        model = constructor(**kwargs)
    count = model.count_params()
    name = model.name
    del model
    keras.backend.clear_session()
    return count, name


def _hf_v2_count(depths, dims):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.ConvNextV2Config(depths=list(depths), hidden_sizes=list(dims),
                                           num_labels=1000)
    with torch.device("meta"):
        reference = transformers.ConvNextV2ForImageClassification(config)
    return sum(p.numel() for p in reference.parameters())


@run_once_across_backends("parameter counts do not depend on the backend")
@pytest.mark.parametrize("name", list(architecture.V2_VARIANTS))
def test_every_v2_variant_has_the_reference_parameter_count(name):
    variant = architecture.V2_VARIANTS[name]
    count, model_name = _unbuilt_count(getattr(keras_convnext, variant.constructor_name))
    assert count == _hf_v2_count(variant.depths, variant.dims)
    if name in V2_COUNTS:
        assert count == V2_COUNTS[name]
    assert model_name == variant.model_name == f"convnextv2_{name[3:]}"


def _v2(**kwargs):
    kwargs.setdefault("input_shape", (32, 32, 3))
    return keras_convnext.ConvNeXtV2((1, 1, 2, 1), (8, 16, 24, 32), **kwargs)


def test_the_v2_block_is_v1_with_grn_and_without_layer_scale():
    v2 = _v2()
    block = v2.get_layer("stage_2_block_1")
    assert block.use_grn and block.layer_scale is None and isinstance(block.grn, GRN)
    paths = {w.path for w in block.weights}
    assert "stage_2_block_1/grn/gamma" in paths and not any("layer_scale" in p for p in paths)
    v1 = keras_convnext.ConvNeXt((1, 1, 2, 1), (8, 16, 24, 32), input_shape=(32, 32, 3))
    # per block: + GRN's gamma and beta (2 x the 4x hidden width) - LayerScale's gamma (dim)
    blocks = (8, 16, 24, 24, 32)
    assert v2.count_params() - v1.count_params() == sum(2 * 4 * d - d for d in blocks)


def test_v2_variant_names_and_errors():
    assert architecture.get_variant("ConvNeXtV2Tiny").name == "v2_tiny"
    assert architecture.get_variant("convnextv2_atto").name == "v2_atto"
    assert architecture.get_variant("ConvNeXtIsotropicLarge").name == "isotropic_large"
    with pytest.raises(ValueError, match="unknown ConvNeXt variant 'v2_small2'"):
        architecture.get_variant("v2_small2")


def test_v2_through_the_v1_paths(rng, tmp_path):
    model = _v2(drop_path_rate=0.2, classes=3, seed=1)
    assert model.get_layer("stage_3_block_0").drop_path.rate == pytest.approx(0.2)
    x = rng.uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    path = str(tmp_path / "v2.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(_np(loaded(x)), _np(model(x)), rtol=1e-5, atol=1e-6)
    features = keras_convnext.feature_extractor(keras_convnext.ConvNeXtV2(
        (1, 1, 2, 1), (8, 16, 24, 32), include_top=False))
    assert [(s.stride, s.channels) for s in features.feature_info] == [
        (4, 8), (8, 16), (16, 24), (32, 32)]
    v1 = keras_convnext.ConvNeXt((1, 1, 2, 1), (8, 16, 24, 32), input_shape=(32, 32, 3))
    # GRN adds no multiply-accumulates of a conv or dense layer (the paper's convention)
    assert keras_convnext.count_flops(model) == keras_convnext.count_flops(v1) - 32 * 1000 + 32 * 3


def test_v2_trains_jit_compiled_and_in_bf16(rng):
    model = _v2(classes=3)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=True)
    x = rng.uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    for w in model.weights:  # GRN's zeros would hide it: give it weight
        if "/grn/" in w.path:
            w.assign(np.full(w.shape, 0.3, "float32"))
    if BACKEND != "torch":  # torch.compile of a train step takes minutes on 2 cores
        assert np.isfinite(model.train_on_batch(x, np.array([0, 1, 2, 0])))
    assert np.isfinite(_np(model.predict(x, verbose=0))).all()
    keras.config.set_dtype_policy("mixed_bfloat16")
    bf16 = _v2(classes=3)
    bf16.set_weights(model.get_weights())
    out = _np(bf16(x))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, _np(model(x)), atol=0.05)


# ------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def refs():
    refs = R.references()
    if "v2-hf-safetensors" not in refs.files:
        R.write_v2_references(refs)
    return refs


def _v2_reference_model(**kwargs):
    kwargs.setdefault("classes", R.CLASSES)
    return keras_convnext.ConvNeXtV2(R.DEPTHS, R.DIMS, classifier_activation=None,
                                     include_preprocessing=False, **kwargs)


@pytest.fixture(scope="module")
def v2_model():
    return _v2_reference_model()


def _check(model, refs, file_id):
    load_weights(model, refs.files[file_id])
    error = R.relative_error(_np(model(refs.images)), refs.logits[file_id])
    assert error < TOLERANCE, f"{file_id}: relative error {error}"


@pytest.mark.parametrize("file_id", ["v2-hf-safetensors", "v2-hf-bin", "v2-hf-folder"])
def test_hugging_face_v2_files_give_transformers_logits(refs, v2_model, file_id):
    _check(v2_model, refs, file_id)


V2_TIMM_IDS = [name.format(mlp) for mlp in ("v2-linear-mlp", "v2-conv-mlp")
               for name in ("timm-{}-safetensors", "timm-{}-pth", "official-{}")]


@pytest.mark.parametrize("file_id", V2_TIMM_IDS)
def test_timm_and_official_v2_files_give_timm_logits(refs, v2_model, file_id):
    if file_id not in refs.files:
        pytest.skip("timm is not installed (pip install --no-deps timm)")
    _check(v2_model, refs, file_id)


def _unchanged(model):
    return [_np(w).copy() for w in model.weights]


def test_a_v1_file_into_a_v2_model_is_a_v1_v2_mismatch(refs, v2_model):
    before = _unchanged(v2_model)
    with pytest.raises(CheckpointError, match="V1/V2 mismatch") as error:
        load_weights(v2_model, refs.files["hf-safetensors"])
    assert str(error.value).splitlines()[0].count("V1") >= 1
    for w, value in zip(v2_model.weights, before):
        np.testing.assert_array_equal(_np(w), value)


def test_a_v2_file_into_a_v1_model_is_a_v1_v2_mismatch(refs):
    v1 = keras_convnext.ConvNeXt(R.DEPTHS, R.DIMS, classes=R.CLASSES, include_preprocessing=False)
    with pytest.raises(CheckpointError, match="V1/V2 mismatch"):
        load_weights(v1, refs.files["v2-hf-safetensors"])


def test_a_v2_file_of_another_size_names_the_size_it_looks_like(refs, tmp_path):
    atto = keras_convnext.ConvNeXtV2Atto(classes=R.CLASSES, input_shape=(32, 32, 3))
    with pytest.raises(CheckpointError, match=r"looks like a custom ConvNeXt V2 \(depths "
                                              r"\(1, 1, 2, 1\), dims \(16, 24, 32, 40\)"):
        load_weights(atto, refs.files["v2-hf-safetensors"])
    # and a real variant is named by its name
    path = str(tmp_path / "atto.weights.h5")
    atto.save_weights(path)
    with pytest.raises(CheckpointError, match="looks like convnextv2_atto"):
        load_weights(_v2_reference_model(), path)


def test_native_v2_files_and_the_converter_round_trip(refs, tmp_path):
    from keras_convnext.weights import native, read_checkpoint

    path = str(tmp_path / "v2.weights.h5")
    native.write(read_checkpoint(refs.files["v2-hf-safetensors"]), path)
    _check(_v2_reference_model(), refs, "v2-hf-safetensors")
    model = _v2_reference_model()
    load_weights(model, path)
    error = R.relative_error(_np(model(refs.images)), refs.logits["v2-hf-safetensors"])
    assert error < TOLERANCE


def test_v2_presets_name_the_official_files():
    from keras_convnext.weights import presets

    tiny = presets.PRESETS[("v2_tiny", "imagenet")]
    assert tiny.url.endswith("/convnextv2/im1k/convnextv2_tiny_1k_224_ema.pt")
    assert presets.PRESETS[("v2_huge", "imagenet22k")].url.endswith("convnextv2_huge_22k_384_ema.pt")
    assert presets.PRESETS[("v2_tiny", "imagenet22k")].classes == 1000  # 22k -> 1k fine-tuned
    assert {v for v, t in presets.PRESETS if t == "imagenet"} >= set(architecture.V2_VARIANTS)
    assert {v for v, t in presets.PRESETS} >= set(architecture.ISOTROPIC_VARIANTS)


def test_v2_imagenet_offline_says_what_to_fetch(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_CONVNEXT_CACHE", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(OSError, match="convnextv2_atto_1k_224_ema.pt"):
        keras_convnext.ConvNeXtV2Atto(weights="imagenet", input_shape=(32, 32, 3))


# ------------------------------------------------------------------------------ isotropic


ISO_TIMM_BLOCKS = {"isotropic_small": (18, 384, None), "isotropic_base": (18, 768, None),
                   "isotropic_large": (36, 1024, 1e-6)}


@run_once_across_backends("parameter counts do not depend on the backend")
@pytest.mark.parametrize("name", list(architecture.ISOTROPIC_VARIANTS))
def test_isotropic_variants_have_the_official_parameter_count(name):
    torch = pytest.importorskip("torch")
    convnext = R.import_timm()
    if convnext is None:
        pytest.skip("timm is not installed")
    depth, dim, layer_scale = ISO_TIMM_BLOCKS[name]
    with torch.device("meta"):
        reference = R.isotropic_module(convnext, depth, dim, 1000, layer_scale)
    expected = sum(p.numel() for p in reference.parameters())
    variant = architecture.ISOTROPIC_VARIANTS[name]
    count, model_name = _unbuilt_count(getattr(keras_convnext, variant.constructor_name))
    assert count == expected
    assert model_name == f"convnext_{name}"
    assert round(count / 1e6) == {"isotropic_small": 22, "isotropic_base": 87,
                                  "isotropic_large": 306}[name]  # the paper's table


def test_the_isotropic_model_is_one_stage_at_stride_16(rng):
    model = keras_convnext.ConvNeXtIsotropic(2, 32, input_shape=(64, 64, 3), classes=R.CLASSES)
    stages = keras_convnext.stages(model)
    assert [(s.index, s.stride, s.channels, s.depth) for s in stages] == [(0, 16, 32, 2)]
    assert "stem/norm/gamma" not in {w.path for w in model.weights}  # the official stem
    assert keras_convnext.ConvNeXtIsotropicSmall(input_shape=(16, 16, 3)).output.shape[-1] == 1000
    with pytest.raises(ValueError, match="at least 16x16"):
        keras_convnext.ConvNeXtIsotropic(2, 32, input_shape=(8, 8, 3))


@pytest.mark.parametrize("file_id, layer_scale", [("official-iso", None),
                                                  ("official-iso-ls", 1e-6)])
def test_official_isotropic_files_give_the_official_models_logits(refs, file_id, layer_scale):
    if file_id not in refs.files:
        pytest.skip("timm is not installed (its block is the reference's)")
    model = keras_convnext.ConvNeXtIsotropic(
        2, 32, classes=R.CLASSES, classifier_activation=None, include_preprocessing=False,
        layer_scale_init_value=layer_scale)
    _check(model, refs, file_id)
    if layer_scale is None:  # LayerScale in the file, none in the model: strict
        with pytest.raises(CheckpointError, match="unexpected"):
            load_weights(model, refs.files["official-iso-ls"])


def test_isotropic_model_round_trips_and_trains(rng, tmp_path):
    model = keras_convnext.ConvNeXtIsotropic(2, 16, input_shape=(32, 32, 3), classes=3)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = rng.uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    assert np.isfinite(model.train_on_batch(x, np.array([0, 1, 2, 0])))
    path = str(tmp_path / "iso.keras")
    model.save(path)
    np.testing.assert_allclose(_np(keras.models.load_model(path)(x)), _np(model(x)),
                               rtol=1e-5, atol=1e-6)
    # stem 2x2 positions x 16x16x3x16; per block 4 positions x (7x7 dw + 2 x 16x64 pointwise)
    stem, block = 4 * 16 * 16 * 3 * 16, 4 * (49 * 16 + 2 * 16 * 64)
    assert keras_convnext.count_flops(model) == stem + 2 * block + 16 * 3


# --------------------------------------------------------------------------- fine-tuning


def test_the_training_program_fine_tunes_a_v2_model_from_a_v2_file(tmp_path, rng):
    from training import recipe
    from training.config import make_config
    from training.train import run

    source = keras_convnext.ConvNeXtV2Atto(classes=7, input_shape=(32, 32, 3))
    for w in source.weights:
        w.assign(rng.normal(0, 0.05, w.shape).astype("float32"))
    path = str(tmp_path / "v2_atto.weights.h5")
    source.save_weights(path)
    config = make_config({}, {
        "dataset": "digits", "model": "v2_atto", "weights": path, "epochs": 1,
        "steps_per_epoch": 2, "validation_steps": 1, "batch_size": 8, "lr": 1e-12, "min_lr": 0,
        "layer_decay": 0.8, "output": str(tmp_path / "run"), "export": False, "verbose": 0})
    lines = []
    model = run(config, log=lines.append).model
    assert model.name == "convnextv2_atto" and model.output.shape[-1] == 10  # a fresh head
    assert any(line.startswith(f"Fine-tuning from {path}") for line in lines), lines
    kernel = "stage_2_block_3/grn/gamma"
    loaded = {w.path: _np(w) for w in model.weights}
    np.testing.assert_allclose(loaded[kernel], _np(source.get_layer(
        "stage_2_block_3").grn.gamma), atol=1e-6)
    assert not any("layer_scale" in p for p in loaded)
    multipliers = recipe.base_optimizer(model.optimizer).lr_multipliers
    top = recipe.num_layer_groups((2, 2, 6, 2)) + 1
    assert multipliers["stem/conv/kernel"] == pytest.approx(0.8 ** top)
    assert multipliers[kernel] == pytest.approx(0.8 ** (top - 4))  # stage 2, block 3: group 4
    assert multipliers["predictions/kernel"] == 1.0
