"""The one place where model code may pick a backend-specific implementation.

Layers ask this module for an op or layer instead of testing ``keras.backend.backend()``
themselves. Every fast path registered here must give the same numbers as the plain Keras
layer (tests/test_dispatch.py checks this on every backend) and keep the same weights and
serialized form, so checkpoints and ``.keras`` files do not depend on the backend.

The layers here are Keras' own (same variables, same config; registered under
``keras_convnext>``) whose ``call`` picks, at call time, the fastest op of the running backend:

======================  =============================================================================
layer                   fast path
======================  =============================================================================
``DepthwiseConv2D``     jax: shifted-slice sum with a custom gradient (``fast.jax_ops``); XLA's
                        CPU grouped convolution does ``channels`` times the work.
                        torch: ``conv2d`` on the caller's channels_last memory, bias fused, no layout
                        copies (``fast.torch_ops``). tensorflow: Keras' op
                        (``tf.nn.depthwise_conv2d``), already the fastest there.
                        every backend: on a map smaller than the kernel's reach (7x7 on the 2x2
                        and 1x1 maps of the last stages at 32-64 px) only the taps that can touch
                        the map (``_taps_in_reach``; the others multiply zero padding).
                        torch, training, maps of <= 64 positions (8x8, and ConvNeXt-T's last 7x7
                        stage): the weight gradient as a batched GEMM over channels
                        (``torch_ops._SmallMapDepthwise``), 1.6-27x oneDNN's there.
``Dense``               torch: oneDNN GEMMs, bias inside; with exact GELU as activation, the
                        GELU fused into the GEMM at inference (oneDNN post-op). Training, chosen
                        by CPU feature (``torch_ops.training_gemm``): AVX-512/AMX, forward and
                        input gradient on oneDNN, weight gradient on ``torch.mm``; AVX2 alone,
                        all three on torch's own GEMM (MKL) in its fastest layouts.
``block_mlp``           torch, training, float32 on AVX2, hidden activation >= 32 MiB: a block's
                        pwconv1, GELU and pwconv2 as one autograd function over pieces of 2,048
                        rows (``torch_ops._ChunkedMLP``): heap-reused pieces instead of fresh
                        page-faulted mappings, GELU's output recomputed instead of kept.
``Dense`` (int8)        torch, after ``model.quantize("int8")``, at inference: the CPU's int8 GEMM
                        (``fast.torch_ops.int8_dense``) instead of Keras' int8 ``matmul`` (an int32
                        matmul on CPU), chosen by CPU feature: oneDNN's (AMX / AVX-512 VNNI; GELU,
                        LayerScale and shortcut fused) or fbgemm's (AVX2). Inputs quantized per
                        tensor (Keras: per row): equal to int8 rounding, not bit for bit.
``Dense`` (GELU)        tensorflow: exact GELU through ``erf`` (``gelu_erf``), not ``erfc``: always (not a
                        fast path; tf2onnx has no ``Erfc``).
``Conv2D``              torch: ``conv2d`` on the caller's channels_last memory, bias fused; in
                        training a conv whose stride is its kernel (stem, downsampling) as one
                        GEMM on the flattened patches (``torch_ops.patchify``).
``grn``                 torch: float32 squared norms over slices of the map, the affine part as one
                        ``addcmul`` (in place at inference inside a block), the backward written out.
                        tensorflow: the backward written out (``tf.custom_gradient``). jax: the
                        plain ops (XLA fuses them and their gradient).
(weights)               torch, at inference: each layer's weights in compute form (bf16 casts,
                        LayerScale folded into the block end) kept between calls and remade when a
                        variable changes (``fast.torch_ops.inference_weights``).
``LayerNormalization``  torch, on a bfloat16/float16 input: torch's mixed-dtype kernel (half in
                        and out, float32 inside) instead of Keras' float32 copy and cast back;
                        in training the half map is saved and the backward is float32.
``TruncatedNormal``     torch: the kernels' initial values drawn in place (inverse CDF) instead of
                        Keras' 4-candidate draw, whose ~10x temporaries the heap keeps (~120 MiB
                        for ConvNeXt-T, a floor under every later peak of the process).
``fused_adam_step``     torch: Keras' Adam/AdamW update (training.recipe's AdamW) on torch's fused
                        kernel, one call per group of equal rates; elsewhere Keras' own update.
``fused_ema_step``      torch: the optimizer's EMA of the weights (``use_ema``) as one
                        ``_foreach_lerp_`` over every average; elsewhere Keras' own update.
======================  =============================================================================

``Dense`` also takes ``residual=`` and ``scale=``: ``residual + scale * dense(inputs)``, a block's
last 1x1 conv, LayerScale and shortcut, which torch runs at inference as one GEMM (the add as a
oneDNN post-op, the scale folded into the kernel).

Anything a fast path does not cover (strides, dilations, depth multipliers, other activations,
LoRA, quantization) takes Keras' own op, and so does anything torch records for export
(``tracing_for_export``). Fast paths can be switched off, e.g. to compare numbers,
with ``set_fast_paths(False)``, the ``fast_paths(False)`` context manager, or the environment
variable ``KERAS_CONVNEXT_FAST_PATHS=0``. On JAX and TensorFlow the switch is read when a function
is traced, so it applies to functions traced afterwards.
"""

import contextlib
import os

import keras
from keras import ops

PACKAGE = "keras_convnext"

_enabled = os.environ.get("KERAS_CONVNEXT_FAST_PATHS", "1").strip().lower() not in (
    "0", "false", "no", "off"
)


def fast_paths_enabled():
    """Whether layers from this module use their backend-specific fast paths."""
    return _enabled


def set_fast_paths(enabled):
    """Turns the backend-specific fast paths on or off (process-wide); returns the old value."""
    global _enabled
    old, _enabled = _enabled, bool(enabled)
    return old


@contextlib.contextmanager
def fast_paths(enabled):
    """``with fast_paths(False): ...`` runs (and, on JAX, traces) with plain Keras ops."""
    old = set_fast_paths(enabled)
    try:
        yield
    finally:
        set_fast_paths(old)


def tracing_for_export():
    """True while torch records the model into a graph for export (``torch.jit.trace``, as the
    OpenVINO and TorchScript-ONNX exporters use, and ``torch.export``, as the ``.pt2``, dynamo
    ONNX and LiteRT exporters use). The torch fast paths (oneDNN-only ops, in-place writes,
    loops over slices of the map) give way there to Keras' plain ops, which every converter
    knows and which give the same numbers. On JAX and TensorFlow every call of a compiled
    function is a trace, and their fast paths export as they are: always False there."""
    if keras.backend.backend() != "torch":
        return False
    import torch

    return torch.jit.is_tracing() or torch.compiler.is_exporting()


def _torch_fast():
    """Whether the torch fast paths may run now: switched on, on torch, not traced for export."""
    return _enabled and keras.backend.backend() == "torch" and not tracing_for_export()


def _taps_in_reach(layer, inputs):
    """``(rows, cols)`` of the kernel that can touch the map, or None when all can (or the
    map's size is not static). With "same" padding, stride 1 and dilation 1, a tap ``d`` rows
    from the centre reads only zero padding when ``|d| >= height``: a 7x7 kernel on a 2x2 map
    has 3x3 useful taps, on a 1x1 map one. Dropping the others changes no number (their
    products and gradients are exactly zero) and saves their work."""
    if (layer.padding != "same" or tuple(layer.strides) != (1, 1)
            or tuple(layer.dilation_rate) != (1, 1)):
        return None
    spatial = inputs.shape[2:4] if layer.data_format == "channels_first" else inputs.shape[1:3]
    crops = []
    for size, k in zip(spatial, layer.kernel.shape[:2]):
        if not isinstance(size, int) or k % 2 == 0 or 2 * size - 1 >= k:
            crops.append(slice(None))
        else:
            cut = (k - (2 * size - 1)) // 2
            crops.append(slice(cut, k - cut))
    if all(c == slice(None) for c in crops):
        return None
    return tuple(crops)


def _fast_depthwise(layer, inputs):
    """The backend's fast depthwise conv (with bias), or None when there is none for ``layer``."""
    if not _enabled or layer.activation not in (None, keras.activations.linear):
        return None
    backend = keras.backend.backend()
    if backend == "torch" and tracing_for_export():
        return None
    reach = _taps_in_reach(layer, inputs)
    impl = None  # tensorflow: Keras' own op, on the taps in reach
    if backend == "jax":
        from keras_convnext.fast import jax_ops as impl
    elif backend == "torch":
        from keras_convnext.fast import torch_ops as impl
    elif reach is None:
        return None
    if impl is not None and not impl.supported(
            layer.strides, layer.dilation_rate, layer.depth_multiplier):
        return None
    if backend == "torch":
        owner, (kernel, bias) = _torch_weights(layer, layer.kernel,
                                               layer.bias if layer.use_bias else None)
        if reach is not None:
            kernel = kernel[reach]
        return impl.depthwise_conv2d(inputs, kernel, bias, layer.padding, layer.data_format,
                                     owner=owner)
    kernel = ops.cast(layer.kernel, inputs.dtype)
    if reach is not None:
        kernel = kernel[reach]
    bias = ops.cast(layer.bias, inputs.dtype) if layer.use_bias else None
    if impl is None:  # reach implies "same" padding, stride 1 and dilation 1
        outputs = ops.depthwise_conv(inputs, kernel, 1, "same", layer.data_format, 1)
    else:
        outputs = impl.depthwise_conv2d(inputs, kernel, layer.padding, layer.data_format)
    if bias is not None:
        shape = (1, -1, 1, 1) if layer.data_format == "channels_first" else (-1,)
        outputs = outputs + ops.reshape(bias, shape)
    return outputs


@keras.saving.register_keras_serializable(package=PACKAGE)
class DepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """``keras.layers.DepthwiseConv2D`` that runs the backend's fastest depthwise op.

    Same arguments, variables (``kernel`` (kh, kw, C, depth_multiplier), ``bias``) and config as
    the Keras layer, so weights and ``.keras`` files are interchangeable between backends and
    with the plain layer; only ``call`` differs (see the module docstring).
    """

    def call(self, inputs):
        outputs = _fast_depthwise(self, inputs)
        if outputs is None:
            return super().call(inputs)
        return outputs


_GELU = keras.activations.gelu  # what Dense(activation="gelu") holds; exact (approximate=False)


def _torch_weights(layer, *variables):
    """(owner, tensors) for a torch fast path: the variables' own float32 tensors (not Keras'
    autocast copies, which are new tensors every call) and the layer, which keys the fast
    path's cache of weights in compute form (``torch_ops.inference_weights``). In a stateless
    scope (values substituted) the scope's values and no owner."""
    from keras.src.backend.common.stateless_scope import in_stateless_scope

    if in_stateless_scope():
        return None, [None if v is None else ops.convert_to_tensor(v) for v in variables]
    return layer, [None if v is None else v._value for v in variables]


def _is_exact_gelu(activation):
    return activation is _GELU


def gelu_erf(x):
    """Exact GELU written with ``erf``, ``x / 2 * (1 + erf(x / sqrt 2))``: TensorFlow's own
    (``tf.nn.gelu``) is written with ``erfc``, which tf2onnx cannot convert; this form every
    converter knows, and it agrees with ``erfc``'s to float32 rounding."""
    return 0.5 * x * (1.0 + ops.erf(x * 0.7071067811865476))


def _tensorflow_gelu(layer):
    """True where ``layer``'s exact GELU is computed with ``gelu_erf`` (TensorFlow). Not a fast
    path: it is what makes TensorFlow graphs convertible to ONNX, so the switch leaves it on."""
    return keras.backend.backend() == "tensorflow" and _is_exact_gelu(layer.activation)


def _plain_linear_layer(layer, allow_gelu=False):
    """True when ``layer`` computes exactly ``op(inputs, kernel) + bias`` (no activation, except
    exact GELU where ``allow_gelu``; no LoRA or quantization): all the fast paths implement."""
    return (
        _torch_fast()
        and (layer.activation in (None, keras.activations.linear)
             or (allow_gelu and _is_exact_gelu(layer.activation)))
        and not getattr(layer, "lora_enabled", False)
        and getattr(layer, "quantization_mode", None) is None
    )


def _torch_int8_gemm(layer, inputs, training):
    """True where ``layer``, quantized by Keras' ``quantize("int8")`` (weights and inputs),
    runs on torch's CPU int8 GEMM (``fast.torch_ops.int8_dense``): inference without autograd,
    float32, no LoRA, not traced for export (which takes Keras' own int8 ops)."""
    if (getattr(layer, "quantization_mode", None) != "int8" or training
            or not _torch_fast() or getattr(layer, "lora_enabled", False)
            or getattr(layer, "inputs_quantizer", None) is None
            or keras.backend.standardize_dtype(inputs.dtype) != "float32"):
        return False
    import torch

    from keras_convnext.fast import torch_ops

    return (not torch.is_grad_enabled() and inputs.device.type == "cpu"
            and torch_ops.int8_gemm_available())


def _residual_tensors(residual, scale):
    """``residual=``/``scale=`` as backend tensors (or None), for a fused block end."""
    return {"residual": None if residual is None else ops.convert_to_tensor(residual),
            "scale": None if scale is None else ops.convert_to_tensor(scale)}


def _scaled_residual(outputs, residual, scale):
    """``residual + scale * outputs`` (a block's end), or ``outputs`` without a residual."""
    if residual is None:
        return outputs
    if scale is not None:
        outputs = outputs * ops.cast(scale, outputs.dtype)
    return residual + outputs


@keras.saving.register_keras_serializable(package=PACKAGE)
class Dense(keras.layers.Dense):
    """``keras.layers.Dense`` (same variables and config), with ``residual=``/``scale=`` for a
    block's end. On torch: oneDNN GEMMs with the bias inside (forward and input gradient in
    training), exact GELU fused into the GEMM at inference, and the block end as one GEMM."""

    def quantize(self, mode=None, type_check=True, config=None):
        """Keras' own quantization (``model.quantize("int8")``, int4, float8...). Keras skips
        subclasses of ``Dense`` unless ``type_check`` is off; this one computes exactly what
        ``keras.layers.Dense`` computes (every fast path steps aside for a quantized layer, or
        runs its int8 GEMM), so its quantized forms apply as they are."""
        return super().quantize(mode, type_check=False, config=config)

    def call(self, inputs, training=None, residual=None, scale=None):
        """``dense(inputs)``; with ``residual`` (and a per-channel ``scale``, or None),
        ``residual + scale * dense(inputs)``."""
        if residual is not None:
            fused = self._fused_scaled_residual(inputs, residual, scale)
            if fused is not None:
                return fused
        return _scaled_residual(self._dense(inputs, training), residual, scale)

    def quantized_call(self, inputs, training=None, residual=None, scale=None):
        """What Keras calls instead of ``call`` once the layer is quantized: on torch's CPU the
        int8 GEMM (``_torch_int8_gemm``), elsewhere Keras' own quantized matmul."""
        if _torch_int8_gemm(self, inputs, training):
            from keras_convnext.fast import torch_ops

            gelu = _is_exact_gelu(self.activation)
            fused = gelu or self.activation in (None, keras.activations.linear)
            outputs = torch_ops.int8_dense(
                self, inputs, self._kernel.value, self.kernel_scale.value,
                self.bias.value if self.use_bias else None, gelu=gelu,
                **(_residual_tensors(residual, scale) if fused else {}))
            if fused:
                return outputs
            return _scaled_residual(self.activation(outputs), residual, scale)
        outputs = self._keras_dense(super().quantized_call, inputs, training)
        return _scaled_residual(outputs, residual, scale)

    def _keras_dense(self, keras_call, inputs, training):
        """Keras' own ``call``/``quantized_call``; on TensorFlow with its exact GELU taken out
        and applied as ``gelu_erf``."""
        if not _tensorflow_gelu(self):
            return keras_call(inputs, training=training)
        self.activation = None
        try:
            outputs = keras_call(inputs, training=training)
        finally:
            self.activation = _GELU
        return gelu_erf(outputs)

    def _dense(self, inputs, training):
        if not _plain_linear_layer(self, allow_gelu=True):
            return self._keras_dense(super().call, inputs, training)
        from keras_convnext.fast import torch_ops

        owner, (kernel, bias) = _torch_weights(self, self.kernel,
                                               self.bias if self.use_bias else None)
        return torch_ops.dense(inputs, kernel, bias, gelu=_is_exact_gelu(self.activation),
                               owner=owner)

    def _fused_scaled_residual(self, inputs, residual, scale):
        if not _plain_linear_layer(self):
            return None
        from keras_convnext.fast import torch_ops

        # float32 variables: the scale is folded in before rounding to the compute dtype.
        owner, (kernel, bias) = _torch_weights(self, self.kernel,
                                               self.bias if self.use_bias else None)
        scale = ops.convert_to_tensor(scale) if scale is not None else None
        return torch_ops.dense_scale_add(inputs, kernel, bias, scale, residual, owner=owner)


def block_mlp(pwconv1, pwconv2, inputs):
    """``pwconv2(pwconv1(inputs))`` (a block's MLP, pwconv1's exact GELU included) as one fast
    path, or None where none applies (the block then calls the two layers). torch, training,
    float32 on AVX2: ``torch_ops.block_mlp``, the MLP over pieces of rows."""
    if not (_plain_linear_layer(pwconv1, allow_gelu=True) and _is_exact_gelu(pwconv1.activation)
            and _plain_linear_layer(pwconv2) and pwconv1.use_bias and pwconv2.use_bias):
        return None
    from keras_convnext.fast import torch_ops

    _, (kernel1, bias1) = _torch_weights(pwconv1, pwconv1.kernel, pwconv1.bias)
    _, (kernel2, bias2) = _torch_weights(pwconv2, pwconv2.kernel, pwconv2.bias)
    return torch_ops.block_mlp(ops.convert_to_tensor(inputs), kernel1, bias1, kernel2, bias2)


def _tensorflow_nchw_conv(layer, inputs):
    """TensorFlow's CPU ``Conv2D`` kernel takes NHWC only (its NCHW kernel comes with oneDNN on
    AVX-512 machines, and Keras passes NCHW through): a channels_first conv on TensorFlow runs
    on the NHWC view, the same arithmetic. None where this does not apply. Not a fast path:
    it is how channels_first runs at all there, so the fast-path switch leaves it on."""
    if keras.backend.backend() != "tensorflow" or layer.data_format != "channels_first":
        return None
    if getattr(layer, "quantization_mode", None) is not None or getattr(layer, "lora_enabled", False):
        return None
    x = ops.transpose(inputs, (0, 2, 3, 1))
    y = ops.conv(x, ops.cast(layer.kernel, x.dtype), strides=layer.strides,
                 padding=layer.padding, data_format="channels_last",
                 dilation_rate=layer.dilation_rate)
    if layer.use_bias:
        y = y + ops.cast(layer.bias, y.dtype)
    if layer.activation is not None:
        y = layer.activation(y)
    return ops.transpose(y, (0, 3, 1, 2))


@keras.saving.register_keras_serializable(package=PACKAGE)
class Conv2D(keras.layers.Conv2D):
    """``keras.layers.Conv2D`` (same variables and config); on torch, ``conv2d`` on the caller's
    channels_last memory with the bias fused (no layout copies), as for ``DepthwiseConv2D``;
    on TensorFlow, channels_first on an NHWC view (``_tensorflow_nchw_conv``)."""

    def call(self, inputs):
        outputs = _tensorflow_nchw_conv(self, inputs)
        if outputs is not None:
            return outputs
        if not _plain_linear_layer(self):
            return super().call(inputs)
        from keras_convnext.fast import torch_ops

        if not torch_ops.conv2d_supported(
                self.strides, self.padding, self.dilation_rate, self.groups):
            return super().call(inputs)
        owner, (kernel, bias) = _torch_weights(self, self.kernel,
                                               self.bias if self.use_bias else None)
        return torch_ops.conv2d(
            inputs, kernel, bias, self.strides, self.padding, self.data_format, owner=owner)


def _torch_half_layer_norm(layer, inputs):
    """True where ``layer`` may normalize ``inputs`` with torch's mixed-dtype kernel: on torch's
    CPU, a bfloat16/float16 input in the layer's compute dtype, normalized over its last axis
    only."""
    if not _torch_fast() or layer.rms_scaling:
        return False
    dtype = keras.backend.standardize_dtype(inputs.dtype)
    if dtype not in ("bfloat16", "float16") or dtype != layer.compute_dtype:
        return False
    axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    if [a % len(inputs.shape) for a in axis] != [len(inputs.shape) - 1]:
        return False
    return inputs.device.type == "cpu"


@keras.saving.register_keras_serializable(package=PACKAGE)
class LayerNormalization(keras.layers.LayerNormalization):
    """``keras.layers.LayerNormalization`` (same variables and config). On torch under
    ``mixed_bfloat16``/``mixed_float16``: torch's mixed-dtype kernel, half precision in and out
    with float32 statistics and affine inside (what Keras computes), instead of a float32 copy
    of the map, the norm, and the cast back (three passes and two temporaries); in training
    the half-precision map is saved for the backward pass (half the memory of Keras' float32
    copy) and the backward is torch's float32 one."""

    def call(self, inputs):
        if not _torch_half_layer_norm(self, inputs):
            return super().call(inputs)
        from keras_convnext.fast import torch_ops

        _, (gamma, beta) = _torch_weights(self, self.gamma if self.scale else None,
                                          self.beta if self.center else None)
        return torch_ops.layer_norm(inputs, gamma, beta, self.epsilon)


@keras.saving.register_keras_serializable(package=PACKAGE)
class TruncatedNormal(keras.initializers.TruncatedNormal):
    """Keras' TruncatedNormal (same config, same distribution: within 2 ``stddev``); on torch
    drawn in place (``fast.torch_ops.truncated_normal``) instead of through Keras' 4-candidate
    draw, whose temporaries (~10x each weight) stay in the process's heap after the build."""

    def __call__(self, shape, dtype=None):
        if _torch_fast():
            from keras_convnext.fast import torch_ops

            return torch_ops.truncated_normal(shape, self.mean, self.stddev, dtype, self.seed)
        return super().__call__(shape, dtype=dtype)


def truncated_normal(stddev):
    """The initializer of every conv and linear kernel (the reference's trunc_normal)."""
    return TruncatedNormal(stddev=stddev)


def norm_layer(**kwargs):
    """The LayerNorms of blocks, stems and downsampling layers (weights ``gamma``, ``beta``)."""
    return LayerNormalization(**kwargs)


def dense_layer(units, **kwargs):
    """The 1x1 convs of ConvNeXt blocks (``pwconv1``, ``pwconv2``) and any Dense: weights
    ``kernel`` (in, out), ``bias`` (out,)."""
    return Dense(units, **kwargs)


def conv_layer(filters, kernel_size, **kwargs):
    """The stem and downsampling convs: weights ``kernel`` (k, k, in, out), ``bias`` (out,)."""
    return Conv2D(filters, kernel_size, **kwargs)


def depthwise_conv_layer(**kwargs):
    """The depthwise conv of ConvNeXt blocks (weights ``kernel`` (k, k, C, 1), ``bias`` (C,))."""
    return DepthwiseConv2D(**kwargs)


def grn(inputs, gamma, beta, epsilon, data_format, overwrite_inputs=False):
    """Global Response Normalization, ``inputs * (1 + gamma * N) + beta`` with
    ``N = G / (mean_c G + epsilon)`` and ``G`` the float32 L2 norm over the spatial axes
    (``keras_convnext.layers.GRN``: the same as ``gamma * (x * N) + beta + x``).

    With fast paths on, the backward pass is written out (two passes over the map, where
    autodiff of the forward ops makes about six): ``_grn_gradients`` through
    ``tf.custom_gradient`` on TensorFlow; on torch ``fast.torch_ops.grn`` (the same algebra,
    sliced reductions, no large temporaries, and at inference the output written over
    ``inputs`` when the caller allows it: ``overwrite_inputs``). JAX compiles the whole step
    and fuses the plain ops' gradient by itself."""
    axes = _grn_axes(data_format)
    backend = keras.backend.backend()
    if backend == "torch" and _torch_fast():
        from keras_convnext.fast import torch_ops

        return torch_ops.grn(inputs, ops.convert_to_tensor(gamma), ops.convert_to_tensor(beta),
                             epsilon, data_format != "channels_first", overwrite_inputs)
    if _enabled and backend == "tensorflow":
        import tensorflow as tf

        # read the variables here: tf.custom_gradient must see tensors, not variables, inside
        return _grn_custom_gradient(inputs, tf.identity(ops.convert_to_tensor(gamma)),
                                    tf.identity(ops.convert_to_tensor(beta)), epsilon, axes)
    return _grn_forward(inputs, gamma, beta, epsilon, axes)[0]


def _grn_axes(data_format):
    """(spatial axes, channel axis, per-channel broadcast shape)."""
    if data_format == "channels_first":
        return (2, 3), 1, (1, -1, 1, 1)
    return (1, 2), -1, (1, 1, 1, -1)


def _grn_forward(inputs, gamma, beta, epsilon, axes):
    """(output, norm G, its channel mean + epsilon D, the per-channel scale 1 + gamma * G / D)."""
    spatial, channel, shape = axes
    x32 = ops.cast(inputs, "float32")
    # sqrt has an infinite slope at 0: a channel that is zero everywhere keeps a zero gradient
    norm = ops.sqrt(ops.maximum(ops.sum(ops.square(x32), axis=spatial, keepdims=True), 1e-30))
    denominator = ops.mean(norm, axis=channel, keepdims=True) + epsilon
    scale = 1.0 + ops.reshape(ops.cast(gamma, "float32"), shape) * (norm / denominator)
    outputs = inputs * ops.cast(scale, inputs.dtype) + ops.cast(ops.reshape(beta, shape),
                                                                inputs.dtype)
    return outputs, norm, denominator, scale


def _grn_gradients(upstream, inputs, gamma, norm, denominator, scale, axes):
    """(d inputs, d gamma, d beta) of ``y = x * s + beta``, ``s = 1 + gamma * G / D``,
    ``D = mean_c G + eps``, ``G = ||x||`` over the spatial axes: two passes over the map (the
    per-channel sums of ``dy * x`` and ``dy``, then ``dx = dy * s + x * dG / G``)."""
    spatial, channel, shape = axes
    batch_and_space = (0,) + spatial
    dy32 = ops.cast(upstream, "float32")
    x32 = ops.cast(inputs, "float32")
    dscale = ops.sum(dy32 * x32, axis=spatial, keepdims=True)  # dL/ds per sample and channel
    dbeta = ops.reshape(ops.sum(dy32, axis=batch_and_space), (-1,))
    normalized = norm / denominator
    dgamma = ops.reshape(ops.sum(dscale * normalized, axis=0, keepdims=True), (-1,))
    dnormalized = dscale * ops.reshape(ops.cast(gamma, "float32"), shape)
    channels = ops.cast(ops.shape(norm)[channel], "float32")
    dnorm = (dnormalized - ops.sum(dnormalized * normalized, axis=channel, keepdims=True)
             / channels) / denominator
    dinputs = upstream * ops.cast(scale, upstream.dtype) + inputs * ops.cast(dnorm / norm,
                                                                             inputs.dtype)
    return dinputs, ops.cast(dgamma, gamma.dtype), ops.cast(dbeta, gamma.dtype)


def _grn_custom_gradient(inputs, gamma, beta, epsilon, axes):
    @ops.custom_gradient
    def forward(x, g, b):
        y, norm, denominator, scale = _grn_forward(x, g, b, epsilon, axes)

        def backward(*upstream, variables=None):
            return _grn_gradients(upstream[0], x, g, norm, denominator, scale, axes)

        return y, backward

    return forward(inputs, gamma, beta)


def fused_ema_step(optimizer, variables):
    """The EMA update of a built Keras optimizer with ``use_ema`` (its
    ``_update_model_variables_moving_average`` of ``variables``: the averages follow at
    ``optimizer.ema_momentum``, and equal the variables at the first step) as one multi-tensor
    kernel where the backend has one (``fast.torch_ops.fused_ema``: torch). Returns False, having
    changed nothing, elsewhere (other backends, non-float32 or mixed-device variables, a
    stateless scope, torch.compile, fast paths off); the caller then runs Keras' own update."""
    if not _enabled or keras.backend.backend() != "torch":
        return False
    from keras.src.backend.common.stateless_scope import in_stateless_scope

    if in_stateless_scope():
        return False
    from keras_convnext.fast import torch_ops

    pairs = [(a.value, v.value) for v, a in
             zip(variables, optimizer._model_variables_moving_average) if a is not None]
    first_step = int(ops.convert_to_numpy(optimizer.iterations)) == 0
    momentum = 0.0 if first_step else optimizer.ema_momentum
    return bool(pairs) and torch_ops.fused_ema([a for a, _ in pairs], [v for _, v in pairs],
                                               momentum)


def fused_adam_step(optimizer, grads, variables, learning_rate, multipliers=None,
                    decayed=None):
    """Keras' Adam update of ``variables`` by a built ``keras.optimizers.Adam``/``AdamW``
    (its moments, betas, epsilon and step) at ``learning_rate`` times each variable's
    ``multipliers`` entry (default 1), after the decoupled weight decay
    (``optimizer.weight_decay`` times that rate) of the variables whose ``decayed`` entry is true
    (default none), on the backend's fused kernel: torch's ``_fused_adam_``
    (``fast.torch_ops.fused_adam``), one call per group of equal rates. Returns False, having
    changed nothing, where there is none (other backends, amsgrad, non-float32 or mixed-device
    variables, a stateless scope, fast paths off); the caller then runs Keras' own update. Same
    numbers as Keras' update up to float rounding (tests/test_recipe.py)."""
    if not _enabled or keras.backend.backend() != "torch" or optimizer.amsgrad:
        return False
    from keras.src.backend.common.stateless_scope import in_stateless_scope

    if in_stateless_scope():
        return False
    import torch

    from keras_convnext.fast import torch_ops

    tensors = [v.value for v in variables]
    grads = [ops.convert_to_tensor(g) for g in grads]
    if not torch_ops.fused_adam_supported(tensors, grads):
        return False
    lr = float(ops.convert_to_numpy(learning_rate))
    multipliers = multipliers or [1.0] * len(variables)
    decayed = decayed or [False] * len(variables)
    weight_decay = float(getattr(optimizer, "weight_decay", None) or 0.0)
    groups = {}  # (rate, decay factor) -> positions
    for position, (multiplier, decay) in enumerate(zip(multipliers, decayed)):
        rate = lr * multiplier
        groups.setdefault((rate, weight_decay * rate if decay else 0.0), []).append(position)
    index = [optimizer._get_variable_index(v) for v in variables]
    step = int(ops.convert_to_numpy(optimizer.iterations)) + 1
    with torch.no_grad():
        for (rate, decay), positions in groups.items():
            group = [tensors[p] for p in positions]
            if decay:
                torch._foreach_mul_(group, 1.0 - decay)
            torch_ops.fused_adam(
                group, [grads[p].contiguous() for p in positions],
                [optimizer._momentums[index[p]].value for p in positions],
                [optimizer._velocities[index[p]].value for p in positions],
                rate, optimizer.beta_1, optimizer.beta_2, optimizer.epsilon, step)
    return True
