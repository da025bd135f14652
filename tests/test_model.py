"""The builder and the family: architecture, arguments, names, training, precision."""

import keras
import numpy as np
import pytest

import keras_convnext
from keras_convnext import VARIANTS, ConvNeXt, feature_extractor
from keras_convnext.model import drop_path_schedule

from conftest import BACKEND, run_once_across_backends

SMALL = dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _images(rng, n=2, size=32, channels_first=False):
    x = rng.uniform(0, 255, size=(n, size, size, 3)).astype("float32")
    return np.transpose(x, (0, 3, 1, 2)) if channels_first else x


# ---------------------------------------------------------------- the family


def _reference_param_count(depths, dims, classes=1000):
    """Trainable parameters of Hugging Face transformers' PyTorch ConvNext (not our code)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.ConvNextConfig(
        depths=list(depths), hidden_sizes=list(dims), num_labels=classes
    )
    with torch.device("meta"):
        reference = transformers.ConvNextForImageClassification(config)
    return sum(p.numel() for p in reference.parameters())


def _trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


PAPER_COUNTS = {"atto": 3_695_520, "tiny": 28_589_128, "xlarge": 350_196_968}


@run_once_across_backends(reason="parameter counts do not depend on the backend")
@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_has_the_reference_parameter_count(name):
    constructor = getattr(keras_convnext, f"ConvNeXt{name.capitalize().replace('Xl', 'XL')}")
    model = constructor()
    variant = VARIANTS[name]
    expected = _reference_param_count(variant.depths, variant.dims)
    assert _trainable(model) == expected
    assert model.count_params() == expected  # no non-trainable weights at all
    if name in PAPER_COUNTS:
        assert expected == PAPER_COUNTS[name]
    assert model.name == f"convnext_{name}"


def test_variant_lookup_accepts_common_spellings_and_names_the_choices():
    assert keras_convnext.get_variant("ConvNeXtTiny").name == "tiny"
    assert keras_convnext.get_variant("convnext_atto").dims == (40, 80, 160, 320)
    with pytest.raises(ValueError, match="unknown ConvNeXt variant 'huge'.*atto"):
        keras_convnext.get_variant("huge")


def test_a_custom_convnext_has_the_reference_parameter_count():
    model = ConvNeXt(**SMALL, classes=10)
    assert _trainable(model) == _reference_param_count(SMALL["depths"], SMALL["dims"], 10)


# ---------------------------------------------------------------- keras.applications arguments


def test_classifier_outputs_probabilities_or_logits(rng):
    x = _images(rng)
    probs = _np(ConvNeXt(**SMALL, classes=7)(x))
    assert probs.shape == (2, 7)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    logits = _np(ConvNeXt(**SMALL, classes=7, classifier_activation=None)(x))
    assert (logits < 0).any()


@pytest.mark.parametrize(
    "pooling, shape", [(None, (2, 1, 1, 32)), ("avg", (2, 32)), ("max", (2, 32))]
)
def test_headless_model_pooling(pooling, shape, rng):
    model = ConvNeXt(**SMALL, include_top=False, pooling=pooling)
    assert _np(model(_images(rng))).shape == shape
    assert not any(layer.name in ("head_norm", "predictions") for layer in model.layers)


def test_preprocessing_inside_the_model_equals_normalizing_outside_and_adds_no_weights(rng):
    with_pre = ConvNeXt(**SMALL, classifier_activation=None, include_preprocessing=True)
    without = ConvNeXt(**SMALL, classifier_activation=None, include_preprocessing=False)
    assert len(with_pre.weights) == len(without.weights)
    without.set_weights(with_pre.get_weights())
    x = _images(rng)
    normalized = (x / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(
        _np(with_pre(x)), _np(without(normalized.astype("float32"))), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("size", [32, 45, 64])
def test_any_input_size_from_32_pixels(size, rng):
    model = ConvNeXt(**SMALL, include_top=False, input_shape=(size, size, 3))
    assert _np(model(_images(rng, size=size))).shape == (2, size // 32, size // 32, 32)


def test_unspecified_input_size_accepts_several_sizes(rng):
    model = ConvNeXt(**SMALL, classes=3)
    for size in (32, 64):
        assert _np(model(_images(rng, size=size))).shape == (2, 3)


@pytest.mark.parametrize(
    "shape, message",
    [((31, 64, 3), "at least 32x32"), ((64, 16, 3), "at least 32x32"),
     ((64, 64, 0), "at least 1 channel"), ((64, 64), "rank 3")],
)
def test_bad_input_shapes_are_a_clear_value_error(shape, message):
    with pytest.raises(ValueError, match=message):
        ConvNeXt(**SMALL, input_shape=shape)


def test_input_tensor_is_used_as_the_model_input(rng):
    tensor = keras.Input(shape=(48, 48, 3))
    model = ConvNeXt(**SMALL, input_tensor=tensor, classes=5)
    assert model.inputs[0] is tensor
    with pytest.raises(ValueError, match="at least 32x32"):
        ConvNeXt(**SMALL, input_tensor=keras.Input(shape=(16, 16, 3)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"pooling": "mean"}, "pooling"),
        ({"classes": 0}, "classes"),
        ({"drop_path_rate": 1.0}, "drop_path_rate"),
        ({"layer_scale_init_value": -1.0}, "layer_scale_init_value"),
        ({"weights": 3}, "weights"),
        ({"depths": (1, 1, 1)}, "4 entries"),
        ({"remat": "yes"}, "remat must be True or False"),
    ],
)
def test_bad_arguments_are_a_clear_value_error(kwargs, message):
    args = {**SMALL, **kwargs}
    with pytest.raises(ValueError, match=message):
        ConvNeXt(**args)


def test_a_missing_weights_file_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="no_such_file.weights.h5"):
        ConvNeXt(**SMALL, weights="no_such_file.weights.h5")


def test_weights_round_trip_through_a_weights_file(tmp_path, rng):
    model = ConvNeXt(**SMALL)
    path = str(tmp_path / "small.weights.h5")
    model.save_weights(path)
    loaded = ConvNeXt(**SMALL, weights=path)
    x = _images(rng)
    np.testing.assert_array_equal(_np(model(x)), _np(loaded(x)))


def test_channels_first_gives_the_channels_last_result(rng):
    last = ConvNeXt(**SMALL, classifier_activation=None)
    keras.config.set_image_data_format("channels_first")
    first = ConvNeXt(**SMALL, classifier_activation=None)
    keras.config.set_image_data_format("channels_last")
    assert first.input_shape == (None, 3, None, None)
    first.set_weights(last.get_weights())
    x = _images(rng, size=40)
    np.testing.assert_allclose(
        _np(first(np.transpose(x, (0, 3, 1, 2)))), _np(last(x)), rtol=1e-4, atol=1e-4
    )


# ---------------------------------------------------------------- stochastic depth and LayerScale


def test_drop_path_rate_rises_linearly_over_all_blocks():
    model = ConvNeXt(**SMALL, drop_path_rate=0.4)
    blocks = [layer for layer in model.layers if "_block_" in layer.name]
    rates = [block.drop_path_rate for block in blocks]
    np.testing.assert_allclose(rates, np.linspace(0.0, 0.4, 5))
    assert drop_path_schedule((2, 2, 6, 2), 0.0) == [0.0] * 12


@pytest.mark.parametrize("disabled", [None, 0])
def test_layer_scale_can_be_disabled(disabled):
    model = ConvNeXt(**SMALL, layer_scale_init_value=disabled)
    assert _trainable(ConvNeXt(**SMALL)) - _trainable(model) == 8 + 16 + 2 * 24 + 32


def test_layer_scale_init_value_reaches_every_block():
    model = ConvNeXt(**SMALL, layer_scale_init_value=0.25)
    gammas = [v for v in model.weights if v.path.endswith("layer_scale/gamma")]
    assert len(gammas) == 5
    for gamma in gammas:
        np.testing.assert_allclose(_np(gamma), 0.25)


def test_fit_with_stochastic_depth_trains_on_this_backend(rng):
    """A real (compiled, on JAX traced) training step with drop path: the trap in the reference
    Keras code, whose unseeded random numbers fail inside a JAX-traced step."""
    model = ConvNeXt(**SMALL, classes=3, drop_path_rate=0.5, seed=0)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="sparse_categorical_crossentropy")
    x, y = _images(rng, n=8), rng.integers(0, 3, size=(8,))
    before = [_np(v).copy() for v in model.trainable_weights]
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert all(
        not np.array_equal(b, _np(v)) for b, v in zip(before, model.trainable_weights)
    )
    # in training mode the network is stochastic, at inference deterministic
    assert not np.allclose(_np(model(x, training=True)), _np(model(x, training=True)))
    np.testing.assert_array_equal(_np(model(x)), _np(model(x)))


def test_jit_compiled_training_and_inference(rng):
    model = ConvNeXt(**SMALL, classes=3, drop_path_rate=0.1, seed=1)
    model.compile(optimizer="adamw", loss="sparse_categorical_crossentropy", jit_compile=True)
    x = _images(rng, n=4)
    eager = _np(model(x))
    np.testing.assert_allclose(model.predict(x, verbose=0), eager, rtol=1e-4, atol=1e-6)
    if BACKEND == "torch":
        # torch.compile (inductor) of a training step takes minutes on 2 CPU cores: the compiled
        # forward above is what CI checks; the compiled train step is checked by hand.
        pytest.skip("the compiled forward passed; torch.compile of a train step takes minutes")
    loss = model.train_on_batch(x, np.array([0, 1, 2, 0]))
    assert np.isfinite(loss)


def test_mixed_bfloat16_runs_and_the_head_returns_float32(rng):
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = ConvNeXt(**SMALL, classes=4)
    model.compile(optimizer="adamw", loss="sparse_categorical_crossentropy")
    x = _images(rng, n=4)
    out = model(x)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert model.get_layer("stage_0_block_0").compute_dtype == "bfloat16"
    assert all(v.dtype == "float32" for v in model.trainable_weights)
    assert np.isfinite(model.train_on_batch(x, np.array([0, 1, 2, 3])))
    np.testing.assert_allclose(_np(out).sum(-1), 1.0, rtol=1e-3)


# ---------------------------------------------------------------- names and features


def test_layers_have_stable_documented_names():
    model = keras_convnext.ConvNeXtTiny(include_preprocessing=True)
    names = [layer.name for layer in model.layers]
    assert names[:3] == ["pixels", "preprocessing", "stem"]
    assert names[-3:] == ["avg_pool", "head_norm", "predictions"]
    assert [n for n in names if n.endswith("downsample")] == [
        "stage_1_downsample", "stage_2_downsample", "stage_3_downsample"
    ]
    block = model.get_layer("stage_2_block_5")
    assert block.dwconv.kernel.path == "stage_2_block_5/dwconv/kernel"
    assert tuple(block.dwconv.kernel.shape) == (7, 7, 384, 1)
    assert len([n for n in names if n.startswith("stage_2_block_")]) == 9


def test_feature_extractor_returns_the_four_stages_at_strides_4_to_32(rng):
    model = ConvNeXt(**SMALL, include_top=False)
    features = feature_extractor(model)(_images(rng, size=64))
    assert {k: tuple(_np(v).shape) for k, v in features.items()} == {
        "stage_0": (2, 16, 16, 8),
        "stage_1": (2, 8, 8, 16),
        "stage_2": (2, 4, 4, 24),
        "stage_3": (2, 2, 2, 32),
    }
    # they share the model's weights: the last stage is the headless model's own output
    x = _images(rng, size=64)
    np.testing.assert_allclose(
        _np(feature_extractor(model)(x)["stage_3"]), _np(model(x)), rtol=1e-6, atol=1e-6
    )


def test_feature_extractor_refuses_a_model_that_is_not_a_convnext():
    plain = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no ConvNeXt stage 0"):
        feature_extractor(plain)


def test_a_small_image_stem_halves_every_stride_and_round_trips(tmp_path):
    model = keras_convnext.ConvNeXt((1, 1, 1, 1), (8, 16, 24, 32), stem_patch_size=2,
                                    input_shape=(16, 16, 3), classes=4)
    assert [s.stride for s in keras_convnext.stages(model)] == [2, 4, 8, 16]
    assert model.get_layer("stem").output.shape[1:3] == (8, 8)
    path = str(tmp_path / "small_stem.keras")
    model.save(path)
    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)),
                               keras.ops.convert_to_numpy(model(x)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="at least 16x16 pixels"):
        keras_convnext.ConvNeXt((1, 1, 1, 1), (8, 16, 24, 32), stem_patch_size=2,
                                input_shape=(8, 8, 3))
    with pytest.raises(ValueError, match="stem_patch_size must be a positive integer"):
        keras_convnext.ConvNeXt((1, 1, 1, 1), (8, 16, 24, 32), stem_patch_size=0)


def test_remat_trains_to_the_same_weights_and_saves_the_same_model(tmp_path, rng):
    """``remat=True`` recomputes each block in the backward pass: one training step gives the
    weights of the plain model, and the saved model is the same (remat is not a weight)."""
    def make(remat):
        keras.utils.set_random_seed(0)
        model = ConvNeXt((1, 1, 1, 1), (8, 16, 16, 24), input_shape=(32, 32, 3), classes=4,
                         layer_scale_init_value=0.5, remat=remat)
        model.compile(keras.optimizers.SGD(0.5), "sparse_categorical_crossentropy")
        return model

    plain, remat = make(False), make(True)
    assert remat.get_layer("stage_0_block_0").remat and not plain.get_layer("stage_0_block_0").remat
    remat.set_weights(plain.get_weights())
    x = rng.uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    y = np.arange(4) % 4
    plain.train_on_batch(x, y)
    remat.train_on_batch(x, y)
    moved = [np.abs(a - b).max() for a, b in zip(plain.get_weights(), make(False).get_weights())]
    assert max(moved) > 1e-3  # the step changed the weights
    for a, b in zip(plain.get_weights(), remat.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    path = str(tmp_path / "remat.keras")
    remat.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_layer("stage_3_block_0").remat
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)),
                               keras.ops.convert_to_numpy(remat(x)), rtol=1e-5, atol=1e-6)
