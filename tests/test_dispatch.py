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


def _same_random_weights(ours, plain, shape, rng, scale=1.0):
    """Builds both layers for ``shape`` and gives them the same random weights."""
    for layer in (ours, plain):
        layer.build(shape)
    weights = [rng.standard_normal(w.shape).astype("float32") * scale for w in ours.weights]
    ours.set_weights(weights)
    plain.set_weights(weights)
    return ours, plain


def _layers(kernel_size, padding, data_format, channels, rng, dtype=None):
    """Ours and keras.layers.DepthwiseConv2D with identical random weights."""
    # Constant initializers: the weights are set below, and on JAX every random initializer
    # shape costs a compilation.
    kwargs = dict(kernel_size=kernel_size, padding=padding, data_format=data_format,
                  depthwise_initializer="zeros", dtype=dtype)
    ours = dispatch.depthwise_conv_layer(**kwargs)
    plain = keras.layers.DepthwiseConv2D(**kwargs)
    shape = (None, channels, 9, 10) if data_format == "channels_first" else (None, 9, 10, channels)
    return _same_random_weights(ours, plain, shape, rng, scale=0.3)


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


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("height,width", [(1, 1), (2, 3), (4, 4)])
def test_depthwise_on_maps_smaller_than_its_kernel_matches_keras(height, width, data_format, rng):
    """ConvNeXt's last stages at small inputs: a 7x7 kernel on a 2x2 map. The taps that can
    only reach zero padding are skipped on every backend; values and all gradients (zero for
    the skipped taps) stay the plain layer's."""
    channels = 4
    kwargs = dict(kernel_size=7, padding="same", data_format=data_format,
                  depthwise_initializer="zeros")
    ours, plain = dispatch.depthwise_conv_layer(**kwargs), keras.layers.DepthwiseConv2D(**kwargs)
    shape = ((2, channels, height, width) if data_format == "channels_first"
             else (2, height, width, channels))
    _same_random_weights(ours, plain, shape, rng)
    x = rng.standard_normal(shape).astype("float32")
    upstream = rng.standard_normal(shape).astype("float32")
    with dispatch.fast_paths(True):
        fast_results = _value_and_grads(ours, x, upstream)
    _assert_same_values_and_grads(fast_results, _value_and_grads(plain, x, upstream))
    kernel_grad = fast_results[2][0]
    rows, cols = min(7, 2 * height - 1), min(7, 2 * width - 1)
    r0, c0 = (7 - rows) // 2, (7 - cols) // 2
    outside = np.ones(kernel_grad.shape, bool)
    outside[r0:r0 + rows, c0:c0 + cols] = False
    assert np.all(kernel_grad[outside] == 0)


def test_taps_in_reach_crops_only_static_small_maps():
    layer = dispatch.depthwise_conv_layer(kernel_size=7, padding="same")
    layer.build((None, 8, 8, 3))
    reach = dispatch._taps_in_reach
    assert reach(layer, keras.KerasTensor((None, 2, 1, 3))) == (slice(2, 5), slice(3, 4))
    assert reach(layer, keras.KerasTensor((None, 4, 4, 3))) is None  # every tap reaches
    assert reach(layer, keras.KerasTensor((None, None, None, 3))) is None  # size not static
    valid = dispatch.depthwise_conv_layer(kernel_size=7, padding="valid")
    valid.build((None, 8, 8, 3))
    assert reach(valid, keras.KerasTensor((None, 8, 8, 3))) is None


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
    _same_random_weights(ours, plain, x.shape, rng, scale=0.3)
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


def _count_calls(monkeypatch, owner, name):
    """Counts the calls of ``owner.name`` (still calling it); the list fills as they happen."""
    calls, original = [], getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.mark.parametrize("height,width,small", [(8, 8, True), (4, 4, True), (2, 3, True),
                                                (9, 10, False)])
def test_small_map_depthwise_training_matches_keras(height, width, small, rng, monkeypatch):
    """In training, a depthwise conv on a map of at most ``SMALL_MAP`` positions takes its
    weight gradient as a batched GEMM on torch (``_SmallMapDepthwise``); values and every
    gradient stay the plain layer's, and larger maps keep oneDNN's backward."""
    channels, batch = 5, 3
    kwargs = dict(kernel_size=7, padding="same", depthwise_initializer="zeros")
    ours, plain = dispatch.depthwise_conv_layer(**kwargs), keras.layers.DepthwiseConv2D(**kwargs)
    shape = (batch, height, width, channels)
    _same_random_weights(ours, plain, shape, rng)
    x = rng.standard_normal(shape).astype("float32")
    upstream = rng.standard_normal(shape).astype("float32")
    calls = []
    if BACKEND == "torch":
        from keras_convnext.fast import torch_ops

        calls = _count_calls(monkeypatch, torch_ops._SmallMapDepthwise, "apply")
    with dispatch.fast_paths(True):
        fast_results = _value_and_grads(ours, x, upstream)
    _assert_same_values_and_grads(fast_results, _value_and_grads(plain, x, upstream))
    if BACKEND == "torch":
        assert len(calls) == (1 if small else 0)
        with _inference():  # no autograd: the plain forward conv
            ours(x)
        assert len(calls) == (1 if small else 0)


@pytest.mark.parametrize("kernel,shape", [(4, (3, 9, 10, 3)), (2, (3, 8, 8, 6))])
def test_patchify_conv_training_matches_keras(kernel, shape, rng, monkeypatch):
    """In training, a conv whose stride is its kernel (stem, downsampling) runs on torch as one
    GEMM on the flattened patches (``torch_ops.patchify``; rows and columns past the last whole
    patch dropped, as "valid" does); values and gradients stay Keras'."""
    make = lambda cls: cls(7, kernel, strides=kernel, padding="valid",  # noqa: E731
                           kernel_initializer="zeros")
    ours, plain = _same_random_weights(
        make(dispatch.Conv2D), make(keras.layers.Conv2D), shape, rng, scale=0.3)
    x = rng.standard_normal(shape).astype("float32")
    upstream = rng.standard_normal(plain.compute_output_shape(shape)).astype("float32")
    calls = []
    if BACKEND == "torch":
        from keras_convnext.fast import torch_ops

        calls = _count_calls(monkeypatch, torch_ops, "patchify")
    with dispatch.fast_paths(True):
        fast_results = _value_and_grads(ours, x, upstream)
    _assert_same_values_and_grads(fast_results, _value_and_grads(plain, x, upstream))
    if BACKEND == "torch":
        assert calls == ["patchify"]


@pytest.mark.skipif(BACKEND != "torch", reason="torch's training GEMM choice")
@pytest.mark.parametrize("features, dtype, expected", [
    ({"amx_tile": True, "avx512_f": True}, "float32", "onednn"),
    ({"avx512_f": True}, "float32", "onednn"),
    ({"avx2": True}, "float32", "aten"),
    ({"avx2": True}, "bfloat16", "onednn"),
])
def test_training_gemm_is_chosen_by_cpu_feature(features, dtype, expected, monkeypatch):
    """oneDNN's GEMMs in training where the CPU has AVX-512 (or AMX) and for half precision,
    torch's own (MKL) for float32 on AVX2 alone."""
    import torch

    from keras_convnext.fast import torch_ops

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: features)
    monkeypatch.setattr(torch_ops, "_AVX512", [])
    assert torch_ops.training_gemm(getattr(torch, dtype)) == expected


@pytest.mark.skipif(BACKEND != "torch", reason="torch's training GEMMs")
@pytest.mark.parametrize("gemm, copy_rows", [("aten", 1), ("aten", 10**9), ("onednn", 1)])
def test_dense_training_gemms_match_keras(gemm, copy_rows, rng, monkeypatch):
    """Both training GEMM paths (``_AtenLinear`` with and without the weight's transposed copy,
    ``_OneDNNLinear``) give ``keras.layers.Dense``'s values and every gradient."""
    from keras_convnext.fast import torch_ops

    monkeypatch.setattr(torch_ops, "_AVX512", [gemm == "onednn"])
    monkeypatch.setattr(torch_ops, "COPY_WEIGHT_ROWS", copy_rows)
    function = torch_ops._AtenLinear if gemm == "aten" else torch_ops._OneDNNLinear
    calls = _count_calls(monkeypatch, function, "apply")
    make = lambda cls: cls(12, kernel_initializer="zeros")  # noqa: E731
    x = rng.standard_normal((2, 5, 5, 6)).astype("float32")
    ours, plain = _same_random_weights(make(dispatch.Dense), make(keras.layers.Dense), x.shape,
                                       rng, scale=0.3)
    upstream = rng.standard_normal((2, 5, 5, 12)).astype("float32")
    with dispatch.fast_paths(True):
        fast_results = _value_and_grads(ours, x, upstream)
    _assert_same_values_and_grads(fast_results, _value_and_grads(plain, x, upstream))
    assert len(calls) == 1


@pytest.mark.parametrize("case", ["pieces", "one piece", "below the threshold", "avx512"])
def test_block_mlp_in_pieces_matches_the_layers(case, rng, monkeypatch):
    """A block's pwconv1, GELU and pwconv2 as ``torch_ops._ChunkedMLP`` (torch, float32 on
    AVX2, a hidden activation of at least ``MLP_CHUNK_FROM_BYTES``): over pieces of rows with a
    ragged last one, or one piece, the block's values and every gradient are the layers'. It
    steps aside below the threshold, where the training GEMMs are oneDNN's, at inference, and
    on the other backends."""
    block = ConvNeXtBlock(8, layer_scale_init_value=0.5)
    x = _input("channels_last", 8, rng, batch=3)  # 3 x 9 x 10 = 270 rows
    block.build(x.shape)
    calls = []
    if BACKEND == "torch":
        from keras_convnext.fast import torch_ops

        monkeypatch.setattr(torch_ops, "_AVX512", [case == "avx512"])
        monkeypatch.setattr(torch_ops, "MLP_CHUNK_ROWS", 64 if case == "pieces" else 2048)
        hidden_bytes = 270 * 32 * 4
        monkeypatch.setattr(torch_ops, "MLP_CHUNK_FROM_BYTES",
                            hidden_bytes + (1 if case == "below the threshold" else 0))
        calls = _count_calls(monkeypatch, torch_ops._ChunkedMLP, "apply")
    _assert_fast_path_matches_plain(block, x, rng, weight_rtol=1e-4)
    if BACKEND != "torch":
        assert dispatch.block_mlp(block.pwconv1, block.pwconv2, x) is None
        return
    taken = case in ("pieces", "one piece")
    assert len(calls) == (1 if taken else 0)
    with _inference():
        block(x)
    assert len(calls) == (1 if taken else 0)


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
                            lambda *a, **k: fused.append(real(*a, **k)) or fused[-1])
    with _inference():
        with dispatch.fast_paths(False):
            y_plain = keras.ops.convert_to_numpy(block(x, training=False))
        y_fast = keras.ops.convert_to_numpy(block(x, training=False))
    np.testing.assert_allclose(y_fast, y_plain, rtol=1e-5, atol=1e-5)
    if BACKEND == "torch" and torch_ops._has_linear_pointwise(torch_ops.torch.float32):
        assert len(fused) == 1 and fused[0] is not None  # the fused op ran


@pytest.mark.parametrize("fast", [True, False])
def test_kernel_initializer_draws_the_truncated_normal_and_follows_the_seed(fast, monkeypatch):
    """Every conv and linear kernel starts from ``dispatch.TruncatedNormal(stddev=0.02)``: on
    torch drawn in place (``torch_ops.truncated_normal``), elsewhere and with the fast paths off
    Keras' own draw. Either way: values within 2 stddev with the truncated normal's spread
    (std 0.8796 stddev, 71.5 % within one), the same values for the same seed, new ones for
    another, and Keras' config."""
    calls = []
    if BACKEND == "torch":
        from keras_convnext.fast import torch_ops

        calls = _count_calls(monkeypatch, torch_ops, "truncated_normal")
    draw = lambda seed, dtype=None: keras.ops.convert_to_numpy(  # noqa: E731
        dispatch.TruncatedNormal(stddev=0.02, seed=seed)((300, 200), dtype=dtype))
    with dispatch.fast_paths(fast):
        a, again, other = draw(3), draw(3), draw(4)
        half = draw(3, "bfloat16").astype("float32")
    assert a.shape == (300, 200) and a.dtype == np.float32
    assert np.abs(a).max() <= 0.04 and np.abs(half).max() <= 0.0401
    assert abs(a.mean()) < 5e-4 and a.std() == pytest.approx(0.8796 * 0.02, rel=0.02)
    assert np.mean(np.abs(a) < 0.02) == pytest.approx(0.7152, abs=0.01)
    np.testing.assert_array_equal(a, again)
    assert not np.allclose(a, other)
    assert half.std() == pytest.approx(0.8796 * 0.02, rel=0.03)
    assert len(calls) == (4 if fast and BACKEND == "torch" else 0)
    if not calls:  # Keras' draw, value for value
        keras_draw = keras.initializers.TruncatedNormal(stddev=0.02, seed=3)((300, 200))
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(keras_draw))
    init = dispatch.TruncatedNormal(stddev=0.02, seed=3)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(init))
    assert type(restored) is dispatch.TruncatedNormal
    keras_config = keras.initializers.TruncatedNormal(stddev=0.02, seed=3).get_config()
    assert restored.get_config() == keras_config


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


def _quantized_pair(activation, rng, inputs=24, units=16):
    """Ours and keras.layers.Dense with identical random weights, both ``quantize("int8")``."""
    layers = []
    for cls in (dispatch.Dense, keras.layers.Dense):
        layer = cls(units, activation=activation, kernel_initializer="zeros")
        layer.build((None, inputs))
        layers.append(layer)
    weights = [rng.standard_normal(w.shape).astype("float32") for w in layers[0].weights]
    for layer in layers:
        layer.set_weights(weights)
        layer.quantize("int8")
    return layers


def _int8_gemms():
    """The torch int8 GEMMs this machine can run (the chosen one first); one None elsewhere."""
    if BACKEND != "torch":
        return [None]
    from keras_convnext.fast import torch_ops

    chosen = torch_ops.int8_gemm()
    runnable = [chosen] + [k for k in ("onednn", "fbgemm") if k != chosen and (
        torch_ops.onednn_int8_supported() if k == "onednn" else torch_ops._fbgemm_runs())]
    return [k for k in runnable if k is not None]


@contextlib.contextmanager
def _int8_gemm(kernel):
    """Run torch's int8 fast path on ``kernel`` ("onednn" / "fbgemm"), not the CPU's choice."""
    if kernel is None:
        yield
        return
    from keras_convnext.fast import torch_ops

    saved = list(torch_ops._INT8_GEMM)
    torch_ops._INT8_GEMM[:] = [kernel]
    try:
        yield
    finally:
        torch_ops._INT8_GEMM[:] = saved


@pytest.mark.parametrize("kernel", _int8_gemms())
@pytest.mark.parametrize("activation", [None, "gelu"])
def test_int8_dense_is_keras_int8_and_close_to_float(activation, kernel, rng):
    """``quantize("int8")`` reaches our Dense (Keras skips subclasses unless told), and the
    quantized layer gives Keras' int8 numbers: exactly where Keras' own int8 matmul runs, and
    to int8 rounding where a torch CPU int8 GEMM does (it quantizes inputs per tensor)."""
    ours, plain = _quantized_pair(activation, rng)
    assert ours.quantization_mode == "int8" and ours._kernel.dtype == "int8"
    x = rng.standard_normal((3, 5, 24)).astype("float32")
    with _inference(), _int8_gemm(kernel):
        with dispatch.fast_paths(False):
            keras_int8 = keras.ops.convert_to_numpy(ours(x))
        fast = keras.ops.convert_to_numpy(ours(x))
        reference = keras.ops.convert_to_numpy(plain(x))
    scale = np.abs(reference).max()
    # TensorFlow: our GELU is erf's, Keras' erfc's (float32 rounding apart).
    np.testing.assert_allclose(keras_int8, reference, rtol=1e-5, atol=1e-6 * scale)
    if BACKEND == "torch":
        assert 0 < np.abs(fast - reference).max() < 0.03 * scale  # a different int8 product
    else:
        np.testing.assert_array_equal(fast, keras_int8)


@pytest.mark.skipif(BACKEND != "torch", reason="torch's int8 GEMM choice")
@pytest.mark.parametrize("features, expected", [
    ({"amx_int8": True, "avx512_vnni": True}, "onednn"),
    ({"avx512_vnni": True}, "onednn"),
    ({"avx2": True}, "fbgemm"),
])
def test_int8_gemm_is_chosen_by_cpu_feature(features, expected, monkeypatch):
    """oneDNN's int8 GEMM where the CPU has int8 dot products (AMX, AVX-512 VNNI), fbgemm's on
    AVX2 alone; oneDNN only where its op actually runs."""
    import torch

    from keras_convnext.fast import torch_ops

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: features)
    monkeypatch.setattr(torch_ops, "_INT8_GEMM", [])
    monkeypatch.setattr(torch_ops, "_onednn_int8_runs", lambda: True)
    assert torch_ops.int8_gemm() == expected
    monkeypatch.setattr(torch_ops, "_INT8_GEMM", [])
    monkeypatch.setattr(torch_ops, "_onednn_int8_runs", lambda: False)
    assert torch_ops.int8_gemm() == "fbgemm"


@pytest.mark.parametrize("kernel", _int8_gemms())
def test_int8_dense_block_end_and_new_weights(kernel, rng):
    """The quantized block end (``residual + scale * dense(x)``; oneDNN fuses LayerScale and the
    shortcut into its GEMM) and a quantized layer whose weights are then replaced
    (``load_weights``): the int8 GEMM's packed weights follow."""
    ours, plain = _quantized_pair(None, rng)
    x = rng.standard_normal((2, 2, 24)).astype("float32")
    residual = rng.standard_normal((2, 2, 16)).astype("float32")
    scale = rng.standard_normal(16).astype("float32")
    with _inference(), _int8_gemm(kernel):
        ours(x)  # packs the first weights
        new = [rng.standard_normal(w.shape).astype(w.dtype) for w in plain.weights]
        new = [np.clip(w, -127, 127).round().astype(w.dtype) if w.dtype == "int8" else w
               for w in new]
        ours.set_weights(new)
        plain.set_weights(new)
        expected = residual + scale * keras.ops.convert_to_numpy(plain(x))
        got = keras.ops.convert_to_numpy(ours(x, residual=residual, scale=scale))
    np.testing.assert_allclose(got, expected, atol=0.03 * np.abs(expected).max())
    if BACKEND != "torch":
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_inference_weight_cache_follows_new_weights(policy, rng):
    """At inference the torch fast paths keep each layer's weights in compute form (cast to
    bf16, LayerScale folded in) between calls; replacing the weights (``set_weights``, as
    ``load_weights`` and an optimizer step do) must be seen by the next call, on every path of
    a block: the depthwise conv, pwconv1 + GELU and the fused block end."""
    keras.config.set_dtype_policy(policy)
    try:
        block = ConvNeXtBlock(8, layer_scale_init_value=0.5)
        x = _input("channels_last", 8, rng)
        block.build(x.shape)
    finally:
        keras.config.set_dtype_policy("float32")
    tolerance = 1e-5 if policy == "float32" else 5e-2
    for _ in range(2):  # the first weights, then new ones, after the first have been cached
        block.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.3
                           for w in block.weights])
        with _inference():
            y_fast = keras.ops.convert_to_numpy(block(x, training=False)).astype("float32")
            with dispatch.fast_paths(False):
                y_plain = keras.ops.convert_to_numpy(block(x, training=False)).astype("float32")
        np.testing.assert_allclose(y_fast, y_plain, rtol=tolerance, atol=tolerance)
    if BACKEND == "torch":
        from keras_convnext.fast import torch_ops

        cached = {layer: dict(torch_ops._INFERENCE_WEIGHTS[layer])
                  for layer in (block.dwconv, block.pwconv1, block.pwconv2)}
        # The fused block end needs oneDNN's GEMM with a binary post-op in the compute dtype
        # (bf16: an AVX-512 CPU); elsewhere pwconv2 runs (and caches) as a plain dense.
        import torch

        fused = torch_ops._has_linear_pointwise(
            torch.bfloat16 if policy == "mixed_bfloat16" else torch.float32)
        assert {tag[0] for tag in cached[block.pwconv2]} == {"block end" if fused else "dense"}
        with _inference():
            block(x, training=False)  # the same weights: every layer reuses its entry
        for layer, entries in cached.items():
            assert all(torch_ops._INFERENCE_WEIGHTS[layer][tag][1] is made[1]
                       for tag, made in entries.items()), layer.name


@pytest.mark.skipif(BACKEND != "torch", reason="torch's weight cache")
def test_inference_weights_remakes_on_change_and_never_caches_inference_mode_tensors():
    """The cache's rule, directly: an unchanged source is a hit; an in-place update (an
    optimizer step) or a new value of a small source is a miss; a tensor made under
    ``torch.inference_mode()`` (no version counter) is never cached, and still computed."""
    import torch

    from keras_convnext.fast import torch_ops

    owner, calls = ConvNeXtBlock(8), []

    def make(a, b):
        calls.append(1)
        return a * 2 + b.sum()

    big, small = torch.ones(64, 100), torch.ones(8)
    with torch.no_grad():
        first = torch_ops.inference_weights(owner, "t", make, big, small)
        assert torch_ops.inference_weights(owner, "t", make, big, small) is first
        big.add_(1)  # in place: same storage, new version
        assert torch.equal(torch_ops.inference_weights(owner, "t", make, big, small), big * 2 + 8)
        torch_ops.inference_weights(owner, "t", make, big, small.clone())  # same values: hit
        torch_ops.inference_weights(owner, "t", make, big, small * 3)  # new values: miss
    assert len(calls) == 3
    with torch.inference_mode():
        made_here = torch.ones(64, 100)
        for _ in range(2):
            out = torch_ops.inference_weights(owner, "u", make, made_here, small)
            assert torch.equal(out, made_here * 2 + 8)
    assert len(calls) == 5


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_layer_norm_gives_keras_numbers_and_gradients(dtype, rng, monkeypatch):
    """A LayerNorm of a mixed policy: half precision in and out, float32 inside, as Keras
    computes it, and Keras' float32 gradients (torch runs its mixed-dtype kernel, saving the
    half-precision map, with a float32 backward)."""
    policy = {"bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}[dtype]
    ours = dispatch.norm_layer(epsilon=1e-6, dtype=policy)
    plain = keras.layers.LayerNormalization(epsilon=1e-6, dtype=policy)
    x_float = rng.standard_normal((2, 5, 5, 16)).astype("float32") * 3 + 1
    for layer in (ours, plain):
        layer.build(x_float.shape)
    weights = [rng.standard_normal((16,)).astype("float32") * 0.5 + 1 for _ in ours.weights]
    ours.set_weights(weights)
    plain.set_weights(weights)
    assert [v.dtype for v in ours.weights] == ["float32", "float32"]
    x = keras.ops.cast(x_float, dtype)
    calls = []
    if BACKEND == "torch":
        from keras_convnext.fast import torch_ops

        kernel = torch_ops.layer_norm
        monkeypatch.setattr(torch_ops, "layer_norm", lambda *a: calls.append(1) or kernel(*a))
    with dispatch.fast_paths(True), _inference():
        y = ours(x)
    assert keras.backend.standardize_dtype(y.dtype) == dtype
    as_float = lambda t: np.asarray(  # noqa: E731
        keras.ops.convert_to_numpy(keras.ops.cast(t, "float32")), "float32")
    ref = as_float(plain(x))
    # Both normalize in float32 and round once: equal, but for an ulp where the float32
    # values land near a rounding boundary.
    np.testing.assert_allclose(as_float(y), ref, rtol=2 ** -7, atol=2 ** -7)
    assert np.mean(as_float(y) == ref) > 0.95
    upstream = as_float(keras.ops.cast(rng.standard_normal(x_float.shape).astype("float32"),
                                       dtype))  # half-precision values, float32 array
    with dispatch.fast_paths(True):
        fast = _value_and_grads(ours, x, upstream)
    slow = _value_and_grads(plain, x, upstream)
    assert calls == ([1, 1] if BACKEND == "torch" else [])
    np.testing.assert_allclose(as_float(fast[0]), as_float(slow[0]), rtol=2 ** -7, atol=2 ** -7)
    # d/d(input) rounds to half precision in both; gamma's and beta's are float32 sums.
    scale = np.abs(as_float(slow[1])).max()
    np.testing.assert_allclose(as_float(fast[1]), as_float(slow[1]), atol=2 ** -7 * scale)
    for got, want in zip(fast[2], slow[2]):
        assert np.asarray(got).dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert keras.saving.serialize_keras_object(ours)["registered_name"] == (
        "keras_convnext>LayerNormalization")
