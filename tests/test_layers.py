"""The building blocks behave as the paper and the reference implementation define them."""

import keras
import numpy as np
import pytest
from scipy.special import erf

from keras_convnext import (
    ConvNeXtBlock,
    Downsample,
    ImageNormalization,
    LayerScale,
    Stem,
    StochasticDepth,
)


def _np(x):
    return keras.ops.convert_to_numpy(x)


# ---------------------------------------------------------------- LayerScale


def test_layer_scale_multiplies_each_channel_by_its_gamma():
    layer = LayerScale()
    x = np.ones((2, 3, 3, 4), "float32")
    np.testing.assert_allclose(_np(layer(x)), np.full_like(x, 1e-6), rtol=1e-6)
    layer.gamma.assign(np.array([1.0, 2.0, 3.0, 4.0], "float32"))
    np.testing.assert_allclose(_np(layer(x))[0, 0, 0], [1, 2, 3, 4])


def test_layer_scale_init_value_is_configurable():
    layer = LayerScale(init_value=0.5)
    layer.build((None, 8))
    np.testing.assert_allclose(_np(layer.gamma), np.full(8, 0.5))


@pytest.mark.parametrize("bad", [0, 0.0, -1.0, None])
def test_layer_scale_refuses_a_value_that_would_zero_or_flip_the_branch(bad):
    with pytest.raises(ValueError, match="layer_scale_init_value=None"):
        LayerScale(init_value=bad)


# ---------------------------------------------------------------- StochasticDepth


def test_stochastic_depth_is_identity_at_inference():
    x = np.random.default_rng(0).normal(size=(16, 4, 4, 8)).astype("float32")
    layer = StochasticDepth(0.5, seed=1)
    np.testing.assert_array_equal(_np(layer(x)), x)
    np.testing.assert_array_equal(_np(layer(x, training=False)), x)


def test_stochastic_depth_drops_whole_samples_at_the_rate_and_scales_the_rest():
    rate, n = 0.3, 4000
    x = np.random.default_rng(0).uniform(1.0, 2.0, size=(n, 2, 2, 3)).astype("float32")
    y = _np(StochasticDepth(rate, seed=7)(x, training=True))
    dropped = np.all(y == 0.0, axis=(1, 2, 3))
    kept = ~dropped
    # each sample is either entirely zero or entirely scaled by 1 / (1 - rate)
    np.testing.assert_allclose(y[kept], x[kept] / (1.0 - rate), rtol=1e-6)
    assert not np.any(y[dropped] != 0)
    # binomial(4000, 0.3): std ~0.0072, so 0.03 is > 4 sigma
    assert abs(dropped.mean() - rate) < 0.03, dropped.mean()


def test_stochastic_depth_draws_new_masks_each_call_and_is_reproducible_by_seed():
    x = np.ones((64, 1, 1, 1), "float32")
    a = StochasticDepth(0.5, seed=3)
    first, second = _np(a(x, training=True)), _np(a(x, training=True))
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(first, _np(StochasticDepth(0.5, seed=3)(x, training=True)))


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_stochastic_depth_rejects_rates_outside_0_1(bad):
    with pytest.raises(ValueError, match="rate"):
        StochasticDepth(bad)


# ---------------------------------------------------------------- ConvNeXtBlock


def _gelu(x):
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def _layer_norm(x, gamma, beta, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _reference_block(x, w):
    """The reference block in numpy (NHWC): dwconv 7x7 'same' -> LN -> Linear -> GELU -> Linear
    -> gamma -> + x."""
    n, h, wd, c = x.shape
    k = w["dw_kernel"].shape[0]
    pad = k // 2
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    y = np.zeros_like(x, dtype="float64")
    for i in range(k):
        for j in range(k):
            y += xp[:, i : i + h, j : j + wd, :] * w["dw_kernel"][i, j, :, 0]
    y += w["dw_bias"]
    y = _layer_norm(y, w["ln_gamma"], w["ln_beta"])
    y = _gelu(y @ w["fc1"] + w["b1"])
    y = (y @ w["fc2"] + w["b2"]) * w["gamma"]
    return x + y


def _randomize(layer, rng):
    for v in layer.weights:
        v.assign(rng.normal(size=v.shape).astype("float32") * 0.5)


def test_block_computes_the_reference_block(rng):
    dim = 8
    block = ConvNeXtBlock(dim, layer_scale_init_value=1e-6)
    x = rng.normal(size=(2, 9, 9, dim)).astype("float32")
    block(x)
    _randomize(block, rng)
    w = {
        "dw_kernel": _np(block.dwconv.kernel), "dw_bias": _np(block.dwconv.bias),
        "ln_gamma": _np(block.norm.gamma), "ln_beta": _np(block.norm.beta),
        "fc1": _np(block.pwconv1.kernel), "b1": _np(block.pwconv1.bias),
        "fc2": _np(block.pwconv2.kernel), "b2": _np(block.pwconv2.bias),
        "gamma": _np(block.layer_scale.gamma),
    }
    np.testing.assert_allclose(_np(block(x)), _reference_block(x, w), rtol=1e-4, atol=1e-4)


def test_block_weights_have_the_reference_shapes():
    block = ConvNeXtBlock(16)
    block.build((None, 8, 8, 16))
    shapes = {v.path.split("/", 1)[1]: tuple(v.shape) for v in block.weights}
    assert shapes == {
        "dwconv/kernel": (7, 7, 16, 1),
        "dwconv/bias": (16,),
        "norm/gamma": (16,),
        "norm/beta": (16,),
        "pwconv1/kernel": (16, 64),
        "pwconv1/bias": (64,),
        "pwconv2/kernel": (64, 16),
        "pwconv2/bias": (16,),
        "layer_scale/gamma": (16,),
    }


@pytest.mark.parametrize("disabled", [None, 0, 0.0])
def test_block_without_layer_scale_has_no_gamma_and_a_live_residual_branch(disabled, rng):
    block = ConvNeXtBlock(8, layer_scale_init_value=disabled)
    x = rng.normal(size=(1, 8, 8, 8)).astype("float32")
    y = _np(block(x))
    assert block.layer_scale is None
    assert not any("layer_scale" in v.path for v in block.weights)
    # the branch is not silently zeroed: output differs from the input
    # (with a 1e-6 LayerScale the difference would be ~1e-8)
    assert np.abs(y - x).max() > 1e-4


def test_block_rejects_a_wrong_channel_count():
    with pytest.raises(ValueError, match="expected 8 input channels"):
        ConvNeXtBlock(8)(np.zeros((1, 8, 8, 4), "float32"))


def test_block_drop_path_only_in_training(rng):
    block = ConvNeXtBlock(4, layer_scale_init_value=1.0, drop_path_rate=0.5, seed=0)
    x = rng.normal(size=(32, 8, 8, 4)).astype("float32")
    np.testing.assert_array_equal(_np(block(x)), _np(block(x)))
    trained = _np(block(x, training=True))
    identity = np.all(np.isclose(trained, x), axis=(1, 2, 3))
    assert 0 < identity.sum() < 32  # some samples took the identity path, some did not


# ---------------------------------------------------------------- stem, downsampling, preprocessing


def test_stem_patchifies_by_4_and_normalizes():
    stem = Stem(24)
    y = _np(stem(np.random.default_rng(0).normal(size=(2, 32, 40, 3)).astype("float32")))
    assert y.shape == (2, 8, 10, 24)
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-4)  # LayerNorm over channels, gamma=1
    assert tuple(stem.conv.kernel.shape) == (4, 4, 3, 24)


def test_downsample_normalizes_then_halves_with_a_2x2_conv():
    down = Downsample(16)
    y = down(np.ones((1, 8, 8, 8), "float32"))
    assert tuple(y.shape) == (1, 4, 4, 16)
    assert tuple(down.conv.kernel.shape) == (2, 2, 8, 16)
    assert [v.path.split("/", 1)[1] for v in down.weights][:2] == ["norm/gamma", "norm/beta"]


def test_image_normalization_maps_0_255_rgb_to_imagenet_statistics():
    layer = ImageNormalization()
    mean = np.array([0.485, 0.456, 0.406]) * 255
    std = np.array([0.229, 0.224, 0.225]) * 255
    x = np.stack([mean, mean + std]).reshape(1, 2, 1, 3).astype("float32")
    np.testing.assert_allclose(_np(layer(x)).reshape(2, 3), [[0, 0, 0], [1, 1, 1]], atol=1e-5)
    assert layer.weights == []


# ---------------------------------------------------------------- serialization


@pytest.mark.parametrize(
    "layer",
    [
        LayerScale(0.1),
        StochasticDepth(0.2, seed=4),
        ConvNeXtBlock(8, kernel_size=5, layer_scale_init_value=None, drop_path_rate=0.1, seed=2),
        Stem(8),
        Downsample(8),
        ImageNormalization(),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_every_layer_round_trips_through_keras_serialization(layer):
    config = keras.saving.serialize_keras_object(layer)
    assert config["module"] == "keras_convnext.layers" or "keras_convnext" in config.get(
        "registered_name", ""
    )
    clone = keras.saving.deserialize_keras_object(config)
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()
