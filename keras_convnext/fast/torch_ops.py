"""PyTorch fast paths: convolutions without the layout copies of Keras' torch backend, and
oneDNN GEMMs for the 1x1 convs (with GELU, LayerScale and the shortcut fused at inference).

Keras' torch ``conv`` turns an NHWC input into NCHW with ``permute(...).contiguous()`` (a
copy), then back into channels_last memory with ``.contiguous(memory_format=channels_last)``
(a second copy) before ``conv2d``. But ``permute(0, 3, 1, 2)`` of an NHWC-contiguous tensor
already *is* an NCHW tensor in channels_last memory, which oneDNN convolves directly; and the
channels_last output permuted back to NHWC is again contiguous. So the convolution runs on the
caller's memory with no copy in or out, and the bias is fused into ``conv2d``.
"""

import math
import warnings
import weakref

import torch
import torch.nn.functional as F


_INFERENCE_WEIGHTS = weakref.WeakKeyDictionary()  # layer -> {tag: (sources' identity, tensors)}


def inference_weights(owner, tag, make, *sources):
    """``make(*sources)``: a layer's weights in the form its fast path computes with (cast to
    the compute dtype, LayerScale folded in), made once per layer at inference and again only
    when a source variable changes (its storage or version). Under ``mixed_bfloat16`` the casts
    alone re-read all float32 weights on every call (a fifth of a ConvNeXt-T bf16 forward).
    With autograd (training), under torch.compile, or without an ``owner``: made every call.
    A small source (a LayerScale vector, which Keras hands a layer as a fresh autocast copy
    each call) is compared by value, a large one by identity."""
    if owner is None or torch.is_grad_enabled() or torch.compiler.is_compiling():
        return make(*sources)
    entries = _INFERENCE_WEIGHTS.get(owner)
    if entries is None:
        entries = _INFERENCE_WEIGHTS[owner] = {}
    hit = entries.get(tag)
    try:
        keys = None if hit is not None and _same_sources(hit[0], sources) else (
            _source_keys(sources))
    except RuntimeError:  # an inference-mode tensor has no version counter: do not cache
        entries.pop(tag, None)
        return make(*sources)
    if keys is not None:
        hit = entries[tag] = (keys, make(*sources))
    return hit[1]


_BY_VALUE = 4096  # sources up to this many elements are compared by value


def _identity(t):
    return t.data_ptr(), t._version, t.dtype, tuple(t.shape)


def _source_keys(sources):
    return tuple(
        None if t is None
        else ("value", t.detach().clone()) if t.numel() <= _BY_VALUE
        else ("identity", _identity(t))
        for t in sources)


def _same_sources(keys, sources):
    if len(keys) != len(sources):
        return False
    for key, t in zip(keys, sources):
        if key is None or t is None:
            if key is not t:
                return False
        elif key[0] == "value":
            if not (key[1].dtype == t.dtype and key[1].shape == t.shape
                    and torch.equal(key[1], t)):
                return False
        elif key[1] != _identity(t):
            return False
    return True


def _cast(dtype):
    """``make`` for ``inference_weights``: every source in ``dtype`` (None stays None)."""
    return lambda *tensors: tuple(None if t is None else t.to(dtype) for t in tensors)


def same_padding(size):
    """Keras' "same" padding for kernel ``size`` at stride 1: (before, after)."""
    total = size - 1
    return total // 2, total - total // 2


def _nchw_view_and_padding(inputs, weight, padding, data_format, kh, kw):
    """(x, weight, pad) for ``F.conv2d``: an NHWC input as an NCHW view in channels_last memory
    (no copy for NHWC-contiguous input) and Keras' "same"/"valid" padding, asymmetric "same"
    padding applied with ``F.pad``."""
    if data_format == "channels_last":
        x = inputs.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        weight = weight.contiguous(memory_format=torch.channels_last)
    else:
        x = inputs
    pad = 0
    if padding == "same":
        (top, bottom), (left, right) = same_padding(kh), same_padding(kw)
        if top == bottom and left == right:
            pad = (top, left)
        else:
            x = F.pad(x, (left, right, top, bottom))
    return x, weight, pad


def _to_caller_layout(out, data_format):
    """The conv output back in the caller's layout (for NHWC a view, contiguous again)."""
    return out.permute(0, 2, 3, 1) if data_format == "channels_last" else out


def supported(strides, dilation_rate, depth_multiplier):
    return (
        tuple(strides) == (1, 1)
        and tuple(dilation_rate) == (1, 1)
        and depth_multiplier == 1
    )


def depthwise_conv2d(inputs, kernel, bias, padding, data_format, owner=None):
    """Depthwise conv (stride 1, dilation 1) plus bias. ``kernel`` is Keras' (kh, kw, C, 1);
    ``owner``: the layer, for ``inference_weights``."""
    kh, kw, channels = kernel.shape[0], kernel.shape[1], kernel.shape[2]
    # (kh, kw, C, 1) -> (C, 1, kh, kw), as torch's grouped conv2d wants it.
    weight, bias = inference_weights(
        owner, ("depthwise", inputs.dtype, tuple(kernel.shape)),
        lambda k, b: _cast(inputs.dtype)(k.permute(2, 3, 0, 1), b), kernel, bias)
    x, weight, pad = _nchw_view_and_padding(inputs, weight, padding, data_format, kh, kw)
    if _needs_grad(x, weight, bias) and small_map_depthwise(x.shape, weight.shape, pad):
        out = _SmallMapDepthwise.apply(x, weight, bias, pad)
    else:
        out = F.conv2d(x, weight, bias, stride=1, padding=pad, groups=channels)
    return _to_caller_layout(out, data_format)


def _needs_grad(*tensors):
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


SMALL_MAP = 64  # positions (H * W) up to which the depthwise weight gradient is a batched GEMM


def small_map_depthwise(x_shape, weight_shape, pad):
    """Whether ``_SmallMapDepthwise`` takes a depthwise conv in training: symmetric padding of
    an odd kernel (Keras' "same" at stride 1) on a map of at most ``SMALL_MAP`` positions.
    There oneDNN's weight gradient is 1.6x (8x8 maps) to 27x (2x2) slower than the GEMM; on
    14x14 maps the GEMM's ``H * W / k**2`` extra work makes it 2-5x slower (measured on AMD
    EPYC Zen 1, 2 cores, fp32: benchmarks/RESULTS.md)."""
    kh, kw = weight_shape[2], weight_shape[3]
    return (kh % 2 == 1 and kw % 2 == 1 and pad != 0 and tuple(pad) == (kh // 2, kw // 2)
            and x_shape[2] * x_shape[3] <= SMALL_MAP)


_TAP_MAPS = {}


def _tap_map(height, width, kh, kw, dtype):
    """The 0/1 matrix ``(H*W * H*W, kh*kw)`` that sums position pairs (input p, output q) into
    the kernel tap that joins them (p = q + tap - k // 2 on each axis, both inside the map)."""
    key = (height, width, kh, kw, dtype)
    if key not in _TAP_MAPS:
        oh, ow, ti, tj = torch.meshgrid(
            torch.arange(height), torch.arange(width), torch.arange(kh), torch.arange(kw),
            indexing="ij")
        ih, iw = oh + ti - kh // 2, ow + tj - kw // 2
        inside = (ih >= 0) & (ih < height) & (iw >= 0) & (iw < width)
        rows = ((ih * width + iw) * (height * width) + oh * width + ow)[inside]
        cols = (ti * kw + tj)[inside]
        tap_map = torch.zeros(height * width * height * width, kh * kw, dtype=dtype)
        tap_map[rows, cols] = 1
        _TAP_MAPS[key] = tap_map
    return _TAP_MAPS[key]


class _SmallMapDepthwise(torch.autograd.Function):
    """Depthwise conv (odd kernel, "same", stride 1) whose backward suits small maps: the input
    gradient is the forward conv with the kernel flipped, and the weight gradient a batched
    GEMM over channels, ``G_c = X_c^T dY_c`` (positions x positions, summed over the batch:
    K = batch), whose entries are then summed into the taps that join each pair of positions
    (``_tap_map``). Same numbers as ``conv2d``'s backward up to float32 summation order."""

    @staticmethod
    def forward(ctx, x, weight, bias, pad):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride=1, padding=pad, groups=x.shape[1])

    @staticmethod
    def backward(ctx, upstream):
        x, weight = ctx.saved_tensors
        n, channels, height, width = x.shape
        kh, kw = weight.shape[2], weight.shape[3]
        d_x = d_weight = d_bias = None
        if ctx.needs_input_grad[0]:
            d_x = F.conv2d(upstream, weight.flip(2, 3), None, stride=1,
                           padding=(kh // 2, kw // 2), groups=channels)
        if ctx.needs_input_grad[1]:
            by_channel = x.permute(1, 0, 2, 3).reshape(channels, n, height * width).contiguous()
            dy = upstream.permute(1, 0, 2, 3).reshape(channels, n, height * width).contiguous()
            pairs = torch.bmm(by_channel.transpose(1, 2), dy)  # (C, p, q)
            taps = pairs.reshape(channels, -1) @ _tap_map(height, width, kh, kw, pairs.dtype)
            d_weight = taps.reshape(channels, 1, kh, kw)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            d_bias = upstream.sum((0, 2, 3))
        return d_x, d_weight, d_bias, None


def truncated_normal(shape, mean, stddev, dtype, seed):
    """Keras' truncated normal (values within 2 ``stddev`` of ``mean``), drawn in place by the
    inverse CDF (``torch.nn.init.trunc_normal_``). Keras' torch version draws 4 candidates per
    value and gathers with int64 indices: about 10x the weight in temporaries, which the C heap
    keeps after the model is built (~120 MiB of RSS for ConvNeXt-T, under every later peak).
    ``seed``: a Keras seed (int or ``SeedGenerator``), turned into the torch generator's seed by
    one ``keras.random.randint`` draw, so the same seed gives the same weights."""
    import keras
    from keras.src.backend.torch.core import get_device

    device = get_device()  # Keras' device for new tensors
    dtype = getattr(torch, keras.backend.standardize_dtype(dtype or keras.config.floatx()))
    if device == "meta":  # symbolic build: no values
        return torch.empty(tuple(shape), dtype=dtype, device=device)
    start = int(keras.random.randint((), 0, 2**31 - 1, seed=seed))
    generator = torch.Generator(device=device).manual_seed(start)
    draw_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    out = torch.empty(tuple(shape), dtype=draw_dtype, device=device)  # erfinv_: no CPU half
    torch.nn.init.trunc_normal_(out, mean, stddev, mean - 2 * stddev, mean + 2 * stddev,
                                generator=generator)
    return out.to(dtype)


def dense(inputs, kernel, bias, gelu=False, owner=None):
    """``inputs @ kernel + bias`` as one GEMM with the bias added inside it (not in a second
    pass over the output), then exact GELU when ``gelu``. On CPU tensors with autograd (not
    under torch.compile) the GEMMs are those ``training_gemm`` picks by CPU feature
    (``_OneDNNLinear`` or ``_AtenLinear``); on a oneDNN build without autograd
    (inference) the GELU runs inside it as a post-op (``mkldnn._linear_pointwise``, the op that
    ``torch.compile`` fuses to; the same erf GELU); otherwise ``F.linear``. ``kernel`` is Keras'
    (in, out); ``owner``: the layer, for ``inference_weights``."""
    dtype = inputs.dtype
    cpu = inputs.device.type == "cpu"  # oneDNN's ops and the CPU-feature choice: CPU only
    if gelu and cpu and _onednn_inference(dtype):
        weight, bias = inference_weights(owner, ("dense oneDNN", dtype), _linear_layout(dtype),
                                         kernel, bias)
        return torch.ops.mkldnn._linear_pointwise(
            inputs.contiguous(), weight, bias, "gelu", [], "none")
    kernel, bias = inference_weights(owner, ("dense", dtype), _cast(dtype), kernel, bias)
    gemm = training_gemm(dtype) if cpu and torch.is_grad_enabled() and _eager() else None
    if gemm == "onednn" and _has_linear_pointwise(dtype):
        out = _OneDNNLinear.apply(inputs.contiguous(), kernel, bias)
    elif gemm == "aten":
        out = _AtenLinear.apply(inputs, kernel, bias)
    else:
        out = F.linear(inputs, kernel.t(), bias)  # addmm reads the (in, out) kernel as it is
    return F.gelu(out) if gelu else out


def _linear_layout(dtype):
    """``make`` for ``inference_weights``: Keras' (in, out) kernel as the contiguous (out, in)
    weight of oneDNN's linear (and the bias) in ``dtype``. Handed the transposed view instead,
    oneDNN picks a slow kernel for the wide layers: up to 1.7x (Intel AMX) and 2.2x (AMD Zen 1)
    the time at ConvNeXt-T's stage-3/4 shapes; the view is 4-8 % faster only for stage 1-2's
    narrow pwconv2 on Intel (benchmarks/linear_layout.py, RESULTS.md)."""
    def make(kernel, bias):
        kernel, bias = _cast(dtype)(kernel, bias)
        return kernel.t().contiguous(), bias
    return make


class _OneDNNLinear(torch.autograd.Function):
    """``x @ kernel + bias`` for training: the forward GEMM and the input gradient on oneDNN
    (faster than the default CPU GEMM for ConvNeXt's shapes on AVX-512), the weight gradient
    (a long reduction over all rows) on ``torch.mm``. Same arithmetic as ``F.linear``."""

    @staticmethod
    def forward(ctx, x, kernel, bias):
        ctx.save_for_backward(x, kernel)
        ctx.has_bias = bias is not None
        weight = kernel.t().contiguous()  # see _linear_layout: the view is slow for wide layers
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, dy):
        x, kernel = ctx.saved_tensors
        dy = dy.contiguous()
        rows = dy.reshape(-1, dy.shape[-1])
        dx = None
        if ctx.needs_input_grad[0]:
            dx = torch.ops.mkldnn._linear_pointwise(dy, kernel, None, "none", [], "")
        return (dx, *_kernel_and_bias_grads(ctx, x, rows))


def _kernel_and_bias_grads(ctx, x, rows):
    """A linear function's gradients of Keras' (in, out) kernel (``x``'s rows transposed times
    the upstream ``rows``: one long reduction on ``torch.mm``) and of the bias, each where
    autograd asks for it."""
    dkernel = dbias = None
    if ctx.needs_input_grad[1]:
        dkernel = torch.mm(x.reshape(-1, x.shape[-1]).t(), rows)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        dbias = rows.sum(0)
    return dkernel, dbias


def training_gemm(dtype):
    """Whose GEMMs a training step's dense layers use, by CPU feature: ``"onednn"``
    (``_OneDNNLinear``) where the CPU has AVX-512 (Intel AMX and AVX-512 machines, where its
    kernels beat the default GEMM at ConvNeXt's shapes) or for half precision, and ``"aten"``
    (``_AtenLinear``: torch's own GEMM, MKL's sgemm) on AVX2 alone, where oneDNN's forward and
    input-gradient GEMMs are 7-17 % slower than MKL's at ConvNeXt-T's shapes (AMD EPYC Zen 3,
    ``benchmarks/training_gemms.py``, RESULTS.md)."""
    if dtype != torch.float32:
        return "onednn"
    if not _AVX512:
        features = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
        _AVX512.append(bool(features.get("avx512_f") or features.get("amx_tile")))
    return "onednn" if _AVX512[0] else "aten"


_AVX512 = []  # [whether the CPU has AVX-512 or AMX], read once


def _eager():
    return not torch.compiler.is_compiling()


COPY_WEIGHT_ROWS = 4096  # rows from which _AtenLinear's forward reads an (out, in) copy


def _forward_weight(kernel, rows):
    """The (in, out) kernel as a forward GEMM of ``rows`` rows reads it on MKL: for a long GEMM
    the transposed view of an (out, in) copy, else the kernel itself. The copy costs a pass over
    the weight (slow: a transposing copy) and pays only on long GEMMs."""
    return kernel.t().contiguous().t() if rows >= COPY_WEIGHT_ROWS else kernel


class _AtenLinear(torch.autograd.Function):
    """``x @ kernel + bias`` for training on torch's own GEMMs in the layouts MKL runs fastest
    at ConvNeXt's shapes on AVX2: the forward of a long GEMM (``COPY_WEIGHT_ROWS`` rows or more)
    against an (out, in) copy of the weight (19-25 % less time for stage 2's pwconv1 at batch 8
    in two runs of ``benchmarks/training_gemms.py``; stage 1 within the noise), of a short one
    against the kernel as it is (the copy, a slow transposing pass over the weight, costs more
    than it saves there), the input gradient against the kernel's transposed view, the weight
    gradient straight in Keras' (in, out) layout (no transposed copy of it). Same arithmetic as
    ``F.linear``."""

    @staticmethod
    def forward(ctx, x, kernel, bias):
        ctx.save_for_backward(x, kernel)
        ctx.has_bias = bias is not None
        rows = x.reshape(-1, x.shape[-1])
        weight = _forward_weight(kernel, rows.shape[0])
        out = rows @ weight if bias is None else torch.addmm(bias, rows, weight)
        return out.view(*x.shape[:-1], kernel.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        x, kernel = ctx.saved_tensors
        rows = dy.reshape(-1, dy.shape[-1])
        dx = None
        if ctx.needs_input_grad[0]:
            dx = torch.mm(rows, kernel.t()).view(x.shape)
        return (dx, *_kernel_and_bias_grads(ctx, x, rows))


# A block MLP whose hidden activation reaches this many bytes runs as ``_ChunkedMLP``: glibc
# serves an allocation this large (its largest dynamic mmap threshold, 32 MiB on 64-bit) with
# a fresh mapping every time, whose page faults cost ~3x the GELU written into it.
MLP_CHUNK_FROM_BYTES = 32 << 20
MLP_CHUNK_ROWS = 2048  # rows per piece: a stage-1 hidden piece of 3 MiB at ConvNeXt-T's width


def block_mlp(inputs, kernel1, bias1, kernel2, bias2):
    """``gelu(inputs @ kernel1 + bias1) @ kernel2 + bias2`` (a block's pwconv1, exact GELU,
    pwconv2) in training as ``_ChunkedMLP`` where it pays: float32 on the CPUs whose training
    GEMMs are torch's (``training_gemm``), with a hidden activation of at least
    ``MLP_CHUNK_FROM_BYTES``. Returns None elsewhere (the layers run one by one)."""
    dtype = inputs.dtype
    if not (_eager() and inputs.device.type == "cpu"
            and _needs_grad(inputs, kernel1, bias1, kernel2, bias2)
            and training_gemm(dtype) == "aten" and bias1 is not None and bias2 is not None):
        return None
    rows = inputs.numel() // inputs.shape[-1]
    if rows * kernel1.shape[-1] * inputs.element_size() < MLP_CHUNK_FROM_BYTES:
        return None
    return _ChunkedMLP.apply(inputs, *_cast(dtype)(kernel1, bias1), *_cast(dtype)(kernel2, bias2))


class _ChunkedMLP(torch.autograd.Function):
    """A block's MLP over pieces of ``MLP_CHUNK_ROWS`` rows, so that its hidden activations
    (4x the block's width) are heap blocks of a few MiB that the allocator reuses step after
    step, not mappings page-faulted in afresh, and GELU's output is recomputed in the backward
    pass (one cheap pass over a piece) instead of kept. On a 2-core AMD EPYC Zen 3, ConvNeXt-T
    at batch 32: a 1.24x faster training step and an 18 % lower peak (RESULTS.md). The GEMMs
    are ``_AtenLinear``'s; the same arithmetic, the weight gradients summed piece by piece."""

    @staticmethod
    def forward(ctx, x, kernel1, bias1, kernel2, bias2):
        rows = x.reshape(-1, x.shape[-1])
        total = rows.shape[0]
        weight1, weight2 = _forward_weight(kernel1, total), _forward_weight(kernel2, total)
        out = torch.empty(total, kernel2.shape[-1], dtype=x.dtype, device=x.device)
        hidden = []
        for start in range(0, total, MLP_CHUNK_ROWS):
            stop = min(start + MLP_CHUNK_ROWS, total)
            h = torch.addmm(bias1, rows[start:stop], weight1)
            hidden.append(h)
            torch.addmm(bias2, F.gelu(h), weight2, out=out[start:stop])
        ctx.save_for_backward(x, kernel1, kernel2, *hidden)
        return out.view(*x.shape[:-1], kernel2.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        x, kernel1, kernel2, *hidden = ctx.saved_tensors
        rows = x.reshape(-1, x.shape[-1])
        dys = dy.reshape(-1, dy.shape[-1])
        dx = torch.empty_like(rows)
        dkernel1, dkernel2 = torch.zeros_like(kernel1), torch.zeros_like(kernel2)
        dbias1 = torch.zeros(kernel1.shape[-1], dtype=x.dtype, device=x.device)
        for index, h in enumerate(hidden):
            start = index * MLP_CHUNK_ROWS
            stop = start + h.shape[0]
            d = dys[start:stop]
            dkernel2.addmm_(F.gelu(h).t(), d)
            dh = torch.ops.aten.gelu_backward(torch.mm(d, kernel2.t()), h)
            dbias1 += dh.sum(0)
            dkernel1.addmm_(rows[start:stop].t(), dh)
            torch.mm(dh, kernel1.t(), out=dx[start:stop])
        return dx.view(x.shape), dkernel1, dbias1, dkernel2, dys.sum(0)


def dense_scale_add(inputs, kernel, bias, scale, residual, owner=None):
    """``residual + scale * (inputs @ kernel + bias)`` (the end of a ConvNeXt block: pwconv2,
    LayerScale, shortcut) as one oneDNN GEMM whose output pass adds ``residual`` (a binary
    post-op), with the per-channel ``scale`` folded into the kernel and bias. Inference only
    (no autograd, not under torch.compile); returns None where it does not apply."""
    if (inputs.device.type != "cpu" or not _onednn_inference(inputs.dtype)
            or residual.shape[-1] != kernel.shape[-1]):
        return None
    dtype = inputs.dtype

    def fold(kernel, bias, scale):
        kernel = kernel.to(torch.float32)
        if bias is not None:
            bias = bias.to(torch.float32)
        if scale is not None:
            scale = scale.to(torch.float32)
            kernel = kernel * scale
            bias = bias * scale if bias is not None else None
        return kernel.t().to(dtype).contiguous(), (bias.to(dtype) if bias is not None else None)

    weight, bias = inference_weights(owner, ("block end", dtype), fold, kernel, bias, scale)
    return torch.ops.mkldnn._linear_pointwise.binary(
        inputs.contiguous(), residual.to(dtype).contiguous(), weight, bias, "add")


def int8_gemm():
    """The CPU int8 GEMM ``int8_dense`` runs on here, or None: ``"onednn"`` (oneDNN's
    ``qlinear_pointwise``, the op of torch's x86 inductor quantization, on AMX tiles or AVX-512
    VNNI's ``vpdpbusd``) where the CPU has int8 dot-product instructions, else ``"fbgemm"``
    (fbgemm's dynamic quantized linear, the kernel of ``torch.ao``'s dynamic quantization),
    which on AVX2 alone (``vpmaddubsw``) measured faster than oneDNN's. Chosen by CPU feature:
    see benchmarks/RESULTS.md, int8."""
    if _INT8_GEMM:
        return _INT8_GEMM[0]
    kernel = None
    if onednn_int8_supported():
        kernel = "onednn"
    elif _fbgemm_runs():
        kernel = "fbgemm"
    _INT8_GEMM.append(kernel)
    return kernel


_INT8_GEMM = []  # the kernel int8_gemm() chose, once per process


def int8_gemm_available():
    """Whether this torch build and CPU have an int8 GEMM for ``int8_dense``."""
    return int8_gemm() is not None


def _fbgemm_runs():
    return (torch.backends.quantized.engine in ("x86", "fbgemm")
            and hasattr(torch.ops.quantized, "linear_dynamic"))


def onednn_int8_supported():
    """Whether oneDNN's int8 GEMM is right for this CPU: it has int8 dot-product instructions
    (AMX, AVX-512 VNNI or AVX-VNNI) and the op runs. On AVX2 alone oneDNN's u8 x s8 products
    saturate in int16 (``vpmaddubsw``): measured 20 % off on an AMD EPYC Zen 1, so never there."""
    features = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return (any(features.get(name) for name in ("amx_int8", "avx512_vnni", "avx_vnni"))
            and hasattr(torch.ops.onednn, "qlinear_pointwise") and _onednn_int8_runs())


def _onednn_int8_runs():
    try:
        weight = torch.ops.onednn.qlinear_prepack(torch.ones(4, 3, dtype=torch.int8), None)
        torch.ops.onednn.qlinear_pointwise(
            torch.ones(2, 3, dtype=torch.uint8), 1.0, 0, weight, torch.ones(4),
            torch.zeros(4, dtype=torch.long), None, 1.0, 0, torch.float32, "gelu", [], "none")
        return True
    except Exception:  # noqa: BLE001 - absent or unsupported here: fbgemm
        return False


def int8_dense(owner, inputs, kernel, kernel_scale, bias, gelu=False, residual=None,
               scale=None):
    """``inputs @ (kernel / kernel_scale) + bias`` with Keras' int8 weights (``kernel`` (in,
    out) int8, one ``kernel_scale`` per output) on the CPU's int8 GEMM (``int8_gemm``),
    inference only; then exact GELU when ``gelu``, and ``residual + scale * outputs`` when
    ``residual`` is given (a block's end).

    Keras' own int8 ``Dense`` quantizes each input row on every call and multiplies int8 by
    int8 through the generic ``matmul``, which on a CPU runs as an int32 matmul: slower than
    float32. Here the input is quantized per tensor (asymmetric uint8, in one fused pass) and
    multiplied with the CPU's int8 dot products. The weights are Keras' exactly (packed once
    per layer and kernel, again when a variable changes: ``inference_weights``); the input
    quantization differs, so outputs agree with Keras' int8 to int8 rounding, not bit for bit. On oneDNN the GELU, LayerScale (folded
    into the per-channel output scales) and the shortcut (a binary post-op) run inside the
    GEMM; on fbgemm after it."""
    packed = inference_weights(owner, ("int8", int8_gemm()), _pack_int8,
                               kernel, kernel_scale, bias)
    if int8_gemm() == "onednn":
        return _onednn_int8_dense(inputs, packed, bias, gelu, residual, scale)
    outputs = torch.ops.quantized.linear_dynamic(inputs.float().contiguous(), packed, True)
    if gelu:
        outputs = F.gelu(outputs)
    if residual is None:
        return outputs
    return residual + (outputs if scale is None else outputs * scale.to(outputs.dtype))


def _pack_int8(kernel, kernel_scale, bias):
    """The int8 weights in the chosen GEMM's packed form (with their float scales for oneDNN)."""
    weight = kernel.t().contiguous()  # (out, in) int8
    if int8_gemm() == "onednn":
        return (torch.ops.onednn.qlinear_prepack(weight, None),
                (1.0 / kernel_scale.reshape(-1)).float(),
                torch.zeros(weight.shape[0], dtype=torch.long))
    with warnings.catch_warnings():  # torch marks its quantized tensors as deprecated
        warnings.simplefilter("ignore")
        quantized = torch._make_per_channel_quantized_tensor(
            weight, (1.0 / kernel_scale.reshape(-1)).double(),
            torch.zeros(weight.shape[0], dtype=torch.long), 0)
        return torch.ops.quantized.linear_prepack(
            quantized, None if bias is None else bias.float())


def _onednn_int8_dense(inputs, packed, bias, gelu, residual, scale):
    weight, weight_scale, weight_zero = packed
    shape = inputs.shape
    rows = inputs.float().reshape(-1, shape[-1]).contiguous()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.quantize_per_tensor_dynamic(rows, torch.quint8, False)
    # the quantized tensor's bytes as a plain uint8 tensor (int_repr() would copy them)
    codes = torch.empty(0, dtype=torch.uint8).set_(
        quantized.untyped_storage(), quantized.storage_offset(), quantized.shape,
        quantized.stride())
    x_scale, x_zero = quantized.q_scale(), quantized.q_zero_point()
    bias = None if bias is None else bias.float()
    unary = ("gelu", [], "none") if gelu else ("none", [], "")
    if residual is None:
        out = torch.ops.onednn.qlinear_pointwise(
            codes, x_scale, x_zero, weight, weight_scale, weight_zero, bias, 1.0, 0,
            torch.float32, *unary)
    else:
        if scale is not None:  # LayerScale folded into the output scales: exact
            scale = scale.float().reshape(-1)
            weight_scale = weight_scale * scale
            bias = None if bias is None else bias * scale
        other = residual.float().reshape(-1, residual.shape[-1]).contiguous()
        out = torch.ops.onednn.qlinear_pointwise.binary(
            codes, x_scale, x_zero, weight, weight_scale, weight_zero, other, bias, 1.0, 0,
            torch.float32, 1.0, 0, "add", 1.0, *unary)
    return out.reshape(*shape[:-1], out.shape[-1])


def _onednn_eager(dtype):
    """True where oneDNN's linear ops may run on ``dtype``: a torch build and a CPU that have
    them (bfloat16 needs AVX-512 or AMX), and not under torch.compile (inductor cannot lower
    them and fuses by itself)."""
    return _eager() and _has_linear_pointwise(dtype)


def _onednn_inference(dtype):
    """``_onednn_eager`` without autograd: where the fused ops (outputs without gradients) may
    run."""
    return not torch.is_grad_enabled() and _onednn_eager(dtype)


_LINEAR_POINTWISE = {}  # dtype -> whether oneDNN's linear ops run on it here


def _has_linear_pointwise(dtype):
    if dtype not in _LINEAR_POINTWISE:
        try:
            x = torch.ones(2, 3, dtype=dtype)
            w = torch.ones(4, 3, dtype=dtype)
            torch.ops.mkldnn._linear_pointwise(x, w, None, "gelu", [], "none")
            torch.ops.mkldnn._linear_pointwise.binary(
                x, torch.ones(2, 4, dtype=dtype), w, None, "add")
            _LINEAR_POINTWISE[dtype] = True
        except Exception:  # noqa: BLE001 - absent or unsupported: plain F.linear + F.gelu
            _LINEAR_POINTWISE[dtype] = False
    return _LINEAR_POINTWISE[dtype]


def conv2d_supported(strides, padding, dilation_rate, groups):
    return tuple(dilation_rate) == (1, 1) and groups == 1 and (
        padding == "valid" or tuple(strides) == (1, 1))


def conv2d(inputs, kernel, bias, strides, padding, data_format, owner=None):
    """A Keras ``Conv2D`` (kernel (kh, kw, in, out)) on the caller's memory: see the module
    docstring; ``conv2d_supported`` says which configurations; ``owner``: the layer, for
    ``inference_weights``."""
    kh, kw = kernel.shape[0], kernel.shape[1]
    if (_needs_grad(inputs, kernel, bias) and data_format == "channels_last"
            and padding == "valid" and tuple(strides) == (kh, kw)):
        return patchify(inputs, *_cast(inputs.dtype)(kernel, bias), kh, kw)
    weight, bias = inference_weights(
        owner, ("conv", inputs.dtype),
        lambda k, b: _cast(inputs.dtype)(k.permute(3, 2, 0, 1), b), kernel, bias)
    x, weight, pad = _nchw_view_and_padding(inputs, weight, padding, data_format, kh, kw)
    out = F.conv2d(x, weight, bias, stride=tuple(strides), padding=pad)
    return _to_caller_layout(out, data_format)


def patchify(inputs, kernel, bias, kh, kw):
    """A conv whose stride is its kernel (the stem, the downsampling layers) on NHWC input as
    one GEMM: the non-overlapping patches flattened in Keras' kernel order (kh, kw, in), times
    the kernel as a (kh*kw*in, out) matrix. Its backward is two GEMMs, 1.2-5x faster than
    oneDNN's strided-conv backward on CPU (benchmarks/RESULTS.md); used in training."""
    n, height, width, channels = inputs.shape
    rows, cols = height // kh, width // kw
    patches = (inputs[:, :rows * kh, :cols * kw]
               .reshape(n, rows, kh, cols, kw, channels).permute(0, 1, 3, 2, 4, 5)
               .reshape(n * rows * cols, kh * kw * channels))
    matrix = kernel.reshape(kh * kw * channels, -1)
    out = patches @ matrix if bias is None else torch.addmm(bias, patches, matrix)
    return out.view(n, rows, cols, -1)


def layer_norm(inputs, gamma, beta, epsilon):
    """LayerNorm over the last axis of a half-precision map with float32 ``gamma``/``beta``:
    torch's CPU kernel takes the mixed dtypes itself (statistics and affine in float32, one
    rounding at the end), so the map is read once and written once. With autograd,
    ``_HalfLayerNorm``: that forward (the half-precision map saved, not a float32 copy) and
    torch's float32 backward, whose gamma/beta gradients are float32 sums (the mixed-dtype
    backward sums them in half precision)."""
    if _needs_grad(inputs, gamma, beta):
        return _HalfLayerNorm.apply(inputs, gamma, beta, epsilon)
    return torch.nn.functional.layer_norm(inputs, (inputs.shape[-1],), gamma, beta, epsilon)


class _HalfLayerNorm(torch.autograd.Function):
    """Half-precision LayerNorm whose backward is Keras' float32 one on the same statistics."""

    @staticmethod
    def forward(ctx, inputs, gamma, beta, epsilon):
        outputs, mean, rstd = torch.native_layer_norm(
            inputs, (inputs.shape[-1],), gamma, beta, epsilon)
        ctx.save_for_backward(inputs, gamma, beta, mean, rstd)
        return outputs

    @staticmethod
    def backward(ctx, upstream):
        inputs, gamma, beta, mean, rstd = ctx.saved_tensors
        needs = ctx.needs_input_grad
        mask = [needs[0], gamma is not None and needs[1], beta is not None and needs[2]]
        d_inputs, d_gamma, d_beta = torch.ops.aten.native_layer_norm_backward(
            upstream.float(), inputs.float(), (inputs.shape[-1],), mean.float(), rstd.float(),
            gamma, beta, mask)
        if d_inputs is not None:
            d_inputs = d_inputs.to(inputs.dtype)
        return d_inputs, d_gamma, d_beta, None


def grn(inputs, gamma, beta, epsilon, channels_last, overwrite_inputs=False):
    """GRN with few passes over the map and no large temporaries (on CPU a fresh tensor of
    feature-map size costs more than the arithmetic: page faults): the squared norm summed in
    float32 over slices of the map, then ``beta + x * (1 + gamma * N)`` as one ``addcmul``
    (written into ``inputs`` when ``overwrite_inputs`` and nothing needs them for a backward
    pass). With autograd, ``_GRN``: the backward pass written out, two passes over the map."""
    if torch.is_grad_enabled() and (inputs.requires_grad or gamma.requires_grad
                                    or beta.requires_grad):
        return _GRN.apply(inputs, gamma, beta, epsilon, channels_last)
    scale = _grn_scale(inputs, gamma, epsilon, channels_last)[0]
    beta = beta.to(inputs.dtype).reshape(scale.shape[1:])
    if overwrite_inputs and not torch.compiler.is_compiling():
        return inputs.mul_(scale.to(inputs.dtype)).add_(beta)
    return torch.addcmul(beta, inputs, scale.to(inputs.dtype))


_GRN_SLICE = 64  # rows of the flattened map per slice: temporaries stay small and in cache


def _spatial_sum(a, b, channels_last):
    """float32 ``sum over (H, W) of a * b`` per sample and channel, shaped (N, C), computed
    over slices of the map."""
    n = a.shape[0]
    if channels_last:
        c = a.shape[-1]
        a, b, axis = a.reshape(n, -1, c), b.reshape(n, -1, c), 1
    else:
        c = a.shape[1]
        a, b, axis = a.reshape(n, c, -1), b.reshape(n, c, -1), 2
    total = torch.zeros(n, c, dtype=torch.float32, device=a.device)
    for part_a, part_b in zip(a.split(_GRN_SLICE, dim=axis), b.split(_GRN_SLICE, dim=axis)):
        total += (part_a.float() * part_b.float()).sum(axis)
    return total


def _grn_scale(inputs, gamma, epsilon, channels_last):
    """(``1 + gamma * N`` in float32 shaped (N, 1, 1, C) or (N, C, 1, 1), the norm G (N, C),
    ``D = mean_c G + epsilon`` (N, 1)): what the forward pass and the backward pass need."""
    norm = _spatial_sum(inputs, inputs, channels_last).sqrt_()
    denominator = norm.mean(dim=1, keepdim=True) + epsilon
    scale = torch.addcmul(torch.ones((), dtype=torch.float32, device=inputs.device),
                          gamma.to(torch.float32).reshape(1, -1), norm / denominator)
    view = (norm.shape[0], 1, 1, norm.shape[1]) if channels_last else (
        norm.shape[0], norm.shape[1], 1, 1)
    return scale.reshape(view), norm, denominator


class _GRN(torch.autograd.Function):
    """GRN's backward written out: ``dL/ds = sum dy * x`` and ``dbeta = sum dy`` per channel,
    then ``dx = dy * s + x * dG / G`` (see ``dispatch._grn_gradients``, the same algebra)."""

    @staticmethod
    def forward(ctx, inputs, gamma, beta, epsilon, channels_last):
        scale, norm, denominator = _grn_scale(inputs, gamma, epsilon, channels_last)
        ctx.save_for_backward(inputs, gamma, norm, denominator, scale)
        ctx.channels_last = channels_last
        return torch.addcmul(beta.to(inputs.dtype).reshape(scale.shape[1:]), inputs,
                             scale.to(inputs.dtype))

    @staticmethod
    def backward(ctx, upstream):
        inputs, gamma, norm, denominator, scale = ctx.saved_tensors
        upstream = upstream.contiguous()
        channels_last = ctx.channels_last
        dscale = _spatial_sum(upstream, inputs, channels_last)  # (N, C)
        spatial = (1, 2) if channels_last else (2, 3)
        dbeta = upstream.sum(dim=(0,) + spatial, dtype=torch.float32)
        normalized = norm / denominator
        dgamma = (dscale * normalized).sum(0)
        dnormalized = dscale * gamma.to(torch.float32).reshape(1, -1)
        dnorm = (dnormalized - (dnormalized * normalized).mean(1, keepdim=True)) / denominator
        k = (dnorm / norm.clamp_min(1e-15)).reshape(scale.shape)  # a zero channel: no NaN
        dinputs = upstream * scale.to(upstream.dtype)
        dinputs.addcmul_(inputs, k.to(inputs.dtype))
        return dinputs, dgamma.to(gamma.dtype), dbeta.to(gamma.dtype), None, None


def fused_adam_supported(variables, grads):
    """Whether ``fused_adam`` can update these torch tensors: torch's fused Adam kernel exists,
    and every variable and gradient is a float32 tensor on one CPU or CUDA device."""
    return hasattr(torch, "_fused_adam_") and _foreach_ready(variables, grads)


def _foreach_ready(first, *others):
    """Whether torch's multi-tensor kernels can take these lists in eager mode: every tensor
    float32 on one CPU or CUDA device (``first`` not empty)."""
    if not first or torch.compiler.is_compiling():
        return False
    device = first[0].device
    return device.type in ("cpu", "cuda") and all(
        t is not None and t.dtype == torch.float32 and t.device == device
        for tensors in (first, *others) for t in tensors)


def fused_ema(averages, values, momentum):
    """Keras' EMA update, in place: ``average = momentum * average + (1 - momentum) * value``
    for every pair, as one ``torch._foreach_lerp_`` (``average += (1 - momentum)(value -
    average)``: the same up to float rounding, exact at ``momentum`` 0). Keras runs about eight
    ops per variable for it, each with its own dispatch and temporaries. Returns False, having
    changed nothing, where the kernel cannot take the tensors (``_foreach_ready``)."""
    if not _foreach_ready(averages, values):
        return False
    with torch.no_grad():
        torch._foreach_lerp_(averages, values, 1.0 - float(momentum))
    return True


def fused_adam(variables, grads, momentums, velocities, lr, beta_1, beta_2, epsilon, step):
    """Keras' Adam update, in place: ``m += (g - m)(1 - b1)``, ``v += (g^2 - v)(1 - b2)``,
    ``var -= alpha * m / (sqrt(v) + eps)`` with ``alpha = lr sqrt(1 - b2^t) / (1 - b1^t)`` at
    step ``t`` (1-based), as torch's fused kernel (``torch._fused_adam_``, what
    ``torch.optim.Adam(fused=True)`` runs): one pass over each variable instead of Keras' chain
    of ops with temporaries the size of the model. torch's kernel scales by its own bias
    corrections (in float64) and adds its epsilon after dividing by ``sqrt(1 - b2^t)``; so
    ``alpha`` is computed as Keras does (float32: ``1 - b2^t`` loses ~1e-5 of itself at step 1)
    and handed over as the kernel's ``lr`` and ``eps``: Keras' update up to float rounding."""
    f32 = torch.float32
    t = torch.tensor(float(step), dtype=f32)
    beta_1_power = torch.pow(torch.tensor(beta_1, dtype=f32), t)
    beta_2_power = torch.pow(torch.tensor(beta_2, dtype=f32), t)
    alpha = float(torch.tensor(lr, dtype=f32) * torch.sqrt(1 - beta_2_power) / (1 - beta_1_power))
    correction_1 = 1.0 - beta_1 ** step  # the kernel's own, in float64
    root_correction_2 = math.sqrt(1.0 - beta_2 ** step)
    steps = [torch.tensor(float(step), device=variables[0].device)] * len(variables)
    torch._fused_adam_(
        variables, grads, momentums, velocities, [], steps,
        lr=alpha * correction_1 / root_correction_2, beta1=beta_1, beta2=beta_2,
        weight_decay=0.0, eps=epsilon / root_correction_2, amsgrad=False, maximize=False)
