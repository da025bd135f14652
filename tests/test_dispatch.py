"""The backend fast paths of keras_convnext.dispatch give the plain Keras layer's numbers.

Runs on every backend (scripts/test.sh): forward and gradients of the dispatched depthwise conv
against ``keras.layers.DepthwiseConv2D`` with the same weights, the layer's serialized form and
weights, and a whole block with fast paths on and off. Speed is measured by benchmarks/bench.py,
never here.
"""

import contextlib

import keras
import numpy as np
import pytest

from keras_convnext import dispatch
from keras_convnext.layers import ConvNeXtBlock

from conftest import BACKEND

# (kernel_size, padding, data_format): ConvNeXt's case, an even kernel ("same" pads unevenly),
# "valid", and channels_first.
CASES = [
    (7, "same", "channels_last"),
    (4, "same", "channels_last"),
    (3, "valid", "channels_last"),
    (7, "same", "channels_first"),
]


def _layers(kernel_size, padding, data_format, channels, rng, dtype=None):
    """Ours and keras.layers.DepthwiseConv2D with identical random weights."""
    # Constant initializers: the weights are set below, and on JAX every random initializer
    # shape costs a compilation.
    kwargs = dict(kernel_size=kernel_size, padding=padding, data_format=data_format,
                  depthwise_initializer="zeros", dtype=dtype)
    ours = dispatch.depthwise_conv_layer(**kwargs)
    plain = keras.layers.DepthwiseConv2D(**kwargs)
    shape = (None, channels, 9, 10) if data_format == "channels_first" else (None, 9, 10, channels)
    ours.build(shape)
    plain.build(shape)
    weights = [rng.standard_normal(w.shape).astype("float32") * 0.3 for w in ours.weights]
    ours.set_weights(weights)
    plain.set_weights(weights)
    return ours, plain


def _input(data_format, channels, rng, batch=2):
    if data_format == "channels_first":
        return rng.standard_normal((batch, channels, 9, 10)).astype("float32")
    shape = (batch, 9, 10, channels)
    return rng.standard_normal(shape).astype("float32")


def _value_and_grads(layer, x, upstream):
    """(output, d<output, upstream>/d(input), [d/d(variable)]) as numpy, with the backend's
    own autodiff."""
    variables = layer.trainable_variables
    if BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        def loss(values, inputs):
            y, _ = layer.stateless_call(values, [], inputs)
            return jnp.sum(y * upstream), y

        # One compiled program per call (eager JAX would compile every op on its own); the
        # fast-path switch is read while tracing it.
        grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
        (_, y), (dv, dx) = grad([v.value for v in variables], jnp.asarray(x))
    elif BACKEND == "torch":
        import torch

        xt = torch.tensor(x, requires_grad=True)
        y = layer(xt)
        grads = torch.autograd.grad(
            (y * torch.as_tensor(upstream)).sum(), [xt] + [v.value for v in variables])
        dx, dv = grads[0], grads[1:]
    else:
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = layer(xt)
            loss = tf.reduce_sum(y * upstream)
        grads = tape.gradient(loss, [xt] + [v.value for v in variables])
        dx, dv = grads[0], grads[1:]
    to_np = keras.ops.convert_to_numpy
    return to_np(y), to_np(dx), [to_np(g) for g in dv]


def _assert_same_values_and_grads(fast, plain, weight_rtol=1e-5):
    """``fast`` and ``plain`` are ``_value_and_grads`` results: outputs, input gradients and
    weight gradients agree to float32 rounding."""
    (y_fast, dx_fast, dv_fast), (y_plain, dx_plain, dv_plain) = fast, plain
    np.testing.assert_allclose(y_fast, y_plain, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx_fast, dx_plain, rtol=1e-5, atol=1e-5)
    assert len(dv_fast) == len(dv_plain)
    for grad_fast, grad_plain in zip(dv_fast, dv_plain):
        np.testing.assert_allclose(grad_fast, grad_plain, rtol=weight_rtol, atol=1e-4)


def _assert_fast_path_matches_plain(layer, x, rng, weight_rtol=1e-5):
    """``layer``'s outputs and gradients (for a random upstream gradient) agree with fast paths
    on and off."""
    upstream = rng.standard_normal(x.shape).astype("float32")
    with dispatch.fast_paths(False):
        plain_results = _value_and_grads(layer, x, upstream)
    with dispatch.fast_paths(True):
        fast_results = _value_and_grads(layer, x, upstream)
    _assert_same_values_and_grads(fast_results, plain_results, weight_rtol=weight_rtol)


def _inference():
    """Autograd off, as in ``predict``: torch's inference-only fusions apply."""
    if BACKEND == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


@pytest.mark.parametrize("kernel_size,padding,data_format", CASES)
def test_fast_depthwise_matches_keras_forward_and_gradients(kernel_size, padding, data_format, rng):
    channels = 6
    ours, plain = _layers(kernel_size, padding, data_format, channels, rng)
    x = _input(data_format, channels, rng)
    upstream = rng.standard_normal(plain.compute_output_shape(x.shape)).astype("float32")
    plain_results = _value_and_grads(plain, x, upstream)
    with dispatch.fast_paths(True):
        fast_results = _value_and_grads(ours, x, upstream)
    _assert_same_values_and_grads(fast_results, plain_results)
    assert len(fast_results[2]) == 2  # kernel, bias


def test_fast_depthwise_bfloat16_is_close_to_keras(rng):
    ours, plain = _layers(7, "same", "channels_last", 8, rng, dtype="bfloat16")
    x = keras.ops.cast(_input("channels_last", 8, rng), "bfloat16")
    with dispatch.fast_paths(True):
        y_fast = ours(x)
    y_plain = plain(x)
    assert keras.backend.standardize_dtype(y_fast.dtype) == "bfloat16"
    fast = keras.ops.convert_to_numpy(keras.ops.cast(y_fast, "float32"))
    ref = keras.ops.convert_to_numpy(keras.ops.cast(y_plain, "float32"))
    # Both round to bfloat16 (8 bits of mantissa): a few ulps at the outputs' scale.
    np.testing.assert_allclose(fast, ref, atol=0.02 * np.abs(ref).max())


@pytest.mark.parametrize(
    "kind", ["dense", "dense_gelu", "stem_conv", "downsample_conv", "same_conv"])
def test_fast_dense_and_conv_match_keras(kind, rng):
    if kind.startswith("dense"):
        activation = "gelu" if kind == "dense_gelu" else None
        make = lambda cls: cls(12, activation=activation, kernel_initializer="zeros")  # noqa: E731
        x = rng.standard_normal((2, 5, 5, 6)).astype("float32")
        ours, plain = make(dispatch.Dense), make(keras.layers.Dense)
    else:
        kernel, strides, padding = {
            "stem_conv": (4, 4, "valid"), "downsample_conv": (2, 2, "valid"),
            "same_conv": (3, 1, "same")}[kind]
        make = lambda cls: cls(5, kernel, strides=strides, padding=padding,  # noqa: E731
                               kernel_initializer="zeros")
        x = rng.standard_normal((2, 8, 8, 6)).astype("float32")
        ours, plain = make(dispatch.Conv2D), make(keras.layers.Conv2D)
    ours.build(x.shape)
    plain.build(x.shape)
    weights = [rng.standard_normal(w.shape).astype("float32") * 0.3 for w in ours.weights]
    ours.set_weights(weights)
    plain.set_weights(weights)
    assert [(w.path.split("/")[-1], tuple(w.shape)) for w in ours.weights] == [
        (w.path.split("/")[-1], tuple(w.shape)) for w in plain.weights]
    upstream = rng.standard_normal(plain.compute_output_shape(x.shape)).astype("float32")
    plain_results = _value_and_grads(plain, x, upstream)
    with dispatch.fast_paths(True):
        fast_results = _value_and_grads(ours, x, upstream)
    _assert_same_values_and_grads(fast_results, plain_results)
    y_plain = plain_results[0]
    with dispatch.fast_paths(True), _inference():  # torch fuses GELU into the GEMM here
        y_infer = keras.ops.convert_to_numpy(ours(x))
    np.testing.assert_allclose(y_infer, y_plain, rtol=1e-5, atol=1e-5)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(ours))
    assert type(restored) is type(ours) and restored.get_config() == ours.get_config()


def test_unsupported_configurations_take_the_keras_op(rng):
    x = _input("channels_last", 4, rng)
    for kwargs in ({"strides": 2}, {"dilation_rate": 2}, {"depth_multiplier": 2}):
        kwargs.update(kernel_size=3, padding="same", depthwise_initializer="ones")
        ours = dispatch.depthwise_conv_layer(**kwargs)
        plain = keras.layers.DepthwiseConv2D(**kwargs)
        ours.build(x.shape)
        plain.build(x.shape)
        plain.set_weights(ours.get_weights())
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(ours(x)), keras.ops.convert_to_numpy(plain(x)),
            rtol=1e-6, atol=1e-6)


def test_layer_keeps_keras_variables_and_config(rng):
    ours, plain = _layers(7, "same", "channels_last", 6, rng)
    assert isinstance(ours, keras.layers.DepthwiseConv2D)
    assert [(w.name, tuple(w.shape)) for w in ours.weights] == [
        ("kernel", (7, 7, 6, 1)), ("bias", (6,))]
    assert [w.name for w in ours.weights] == [w.name for w in plain.weights]
    assert ours.get_config() == plain.get_config() | {"name": ours.name}


def test_layer_serialization_round_trip(rng, tmp_path):
    ours, _ = _layers(7, "same", "channels_last", 6, rng)
    config = keras.saving.serialize_keras_object(ours)
    assert config["registered_name"] == "keras_convnext>DepthwiseConv2D"
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is dispatch.DepthwiseConv2D
    assert restored.get_config() == ours.get_config()

    inputs = keras.Input((9, 10, 6))
    model = keras.Model(inputs, ours(inputs))
    path = str(tmp_path / "dw.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    x = _input("channels_last", 6, rng)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-6)
    assert type(loaded.layers[-1]) is dispatch.DepthwiseConv2D


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_block_fast_paths_on_and_off_agree(data_format, rng):
    if BACKEND == "jax" and data_format == "channels_first":
        pytest.skip("the layer tests cover JAX's channels_first path; saves a compilation")
    block = ConvNeXtBlock(8, layer_scale_init_value=0.5, data_format=data_format)
    x = _input(data_format, 8, rng)
    block.build(x.shape)
    _assert_fast_path_matches_plain(block, x, rng, weight_rtol=1e-4)


@pytest.mark.parametrize("layer_scale", [0.5, None])
def test_block_inference_fusion_matches_the_layers(layer_scale, rng, monkeypatch):
    """At inference (torch: pwconv2, LayerScale and the shortcut as one fused GEMM) a block
    gives the plain layers' outputs, with and without LayerScale and with stochastic depth
    present but inactive."""
    block = ConvNeXtBlock(8, layer_scale_init_value=layer_scale, drop_path_rate=0.3)
    x = _input("channels_last", 8, rng)
    block.build(x.shape)
    block.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.3
                       for w in block.weights])
    fused = []
    if BACKEND == "torch":
        from keras_convnext.fast import torch_ops

        real = torch_ops.dense_scale_add
        monkeypatch.setattr(torch_ops, "dense_scale_add",
                            lambda *a: fused.append(real(*a)) or fused[-1])
    with _inference():
        with dispatch.fast_paths(False):
            y_plain = keras.ops.convert_to_numpy(block(x, training=False))
        y_fast = keras.ops.convert_to_numpy(block(x, training=False))
    np.testing.assert_allclose(y_fast, y_plain, rtol=1e-5, atol=1e-5)
    if BACKEND == "torch" and torch_ops._has_linear_pointwise(torch_ops.torch.float32):
        assert len(fused) == 1 and fused[0] is not None  # the fused op ran


def test_fast_path_switch():
    initial = dispatch.fast_paths_enabled()
    with dispatch.fast_paths(False):
        assert not dispatch.fast_paths_enabled()
        with dispatch.fast_paths(True):
            assert dispatch.fast_paths_enabled()
        assert not dispatch.fast_paths_enabled()
    assert dispatch.fast_paths_enabled() == initial
    assert dispatch.set_fast_paths(initial) == initial


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_grn_fast_path_gives_the_plain_values_and_gradients(data_format, rng):
    """GRN (torch: vector_norm + addcmul) equals the plain Keras ops, outputs and gradients,
    with nonzero gamma and beta."""
    from keras_convnext.layers import GRN

    layer = GRN(data_format=data_format)
    x = _input(data_format, 6, rng)
    layer.build(x.shape)
    layer.set_weights([rng.standard_normal(6).astype("float32") for _ in range(2)])
    _assert_fast_path_matches_plain(layer, x, rng)


def test_v2_block_fast_paths_give_the_plain_values_and_gradients(rng):
    block = ConvNeXtBlock(8, layer_scale_init_value=None, use_grn=True)
    x = _input("channels_last", 8, rng)
    block.build(x.shape)
    block.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.3
                       for w in block.weights])
    _assert_fast_path_matches_plain(block, x, rng, weight_rtol=1e-4)
    with _inference():
        with dispatch.fast_paths(False):
            y_plain = keras.ops.convert_to_numpy(block(x, training=False))
        y_fast = keras.ops.convert_to_numpy(block(x, training=False))
    np.testing.assert_allclose(y_fast, y_plain, rtol=1e-5, atol=1e-5)
