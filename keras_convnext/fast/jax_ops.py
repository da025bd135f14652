"""Depthwise convolution for JAX on CPU (XLA) as shifted slices instead of a grouped convolution.

XLA's CPU backend lowers a depthwise convolution (``feature_group_count == channels``) to a
dense convolution with a block-diagonal kernel, about ``channels`` times the work: ConvNeXt's
7x7 depthwise conv is then slower than the whole rest of the block. Written as a sum of
``k * k`` shifted slices times a per-channel weight, the forward pass becomes one fused
elementwise loop. The backward pass is a ``custom_vjp``: the input gradient is the same
shifted-slice sum of the output gradient with the flipped kernel, and the kernel gradient
accumulates the ``k * k`` products row by row in a ``lax.scan`` (XLA's CPU reductions over
the batch and spatial axes are slow; fused elementwise accumulation is not).

Only stride 1 and dilation 1 are handled here (ConvNeXt's case); ``supported`` tells the
caller when to fall back to ``keras.ops.depthwise_conv``. Low-precision inputs (bfloat16,
float16) are accumulated in float32 and cast back, as XLA's own convolution does.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def same_padding(size):
    """Keras' "same" padding for kernel ``size`` at stride 1: (before, after)."""
    total = size - 1
    return total // 2, total - total // 2


def _accumulation_dtype(dtype):
    return jnp.float32 if jnp.dtype(dtype).itemsize < 4 else dtype


@functools.partial(jax.jit, static_argnums=(2, 3))
def _shifted_sum(xp, kernel, out_h, out_w):
    """sum_{i,j} xp[:, i:i+out_h, j:j+out_w, :] * kernel[i, j] (NHWC, kernel (kh, kw, C))."""
    kh, kw = kernel.shape[:2]
    acc_dtype = _accumulation_dtype(xp.dtype)
    kernel = kernel.astype(acc_dtype)
    out = None
    for i in range(kh):
        for j in range(kw):
            term = xp[:, i:i + out_h, j:j + out_w, :].astype(acc_dtype) * kernel[i, j]
            out = term if out is None else out + term
    return out


@functools.partial(jax.jit, static_argnums=(2, 3))
def _kernel_grad(xp, g, kh, kw):
    """d(loss)/d(kernel)[i, j, c] = sum_{n,h,w} xp[n, h+i, w+j, c] * g[n, h, w, c].

    One scan step per (sample, output row) adds ``windows * g_row`` to a (kh*kw, W, C)
    accumulator, where ``windows[i*kw + j] = xp_rows[i, j:j+W]`` is a constant-index gather
    that XLA fuses into the multiply-add: one small fused loop per step, compiled once.
    """
    n, h, w, c = g.shape
    acc_dtype = _accumulation_dtype(g.dtype)
    rows_of_tap = np.repeat(np.arange(kh), kw)[:, None]                       # (kh*kw, 1)
    cols_of_tap = np.tile(np.arange(kw), kh)[:, None] + np.arange(w)[None]    # (kh*kw, W)

    def step(acc, r):
        b, row = r // h, r % h
        xs = lax.dynamic_slice(xp, (b, row, 0, 0), (1, kh, xp.shape[2], c))[0]
        gs = lax.dynamic_slice(g, (b, row, 0, 0), (1, 1, w, c))[0, 0]
        windows = xs[rows_of_tap, cols_of_tap].astype(acc_dtype)
        return acc + windows * gs.astype(acc_dtype)[None], None

    acc, _ = lax.scan(step, jnp.zeros((kh * kw, w, c), acc_dtype), jnp.arange(n * h))
    return jnp.sum(acc, axis=1).reshape(kh, kw, c)


def _materialize(x):
    """``x``, unchanged, as a fusion boundary.

    Left free, XLA's CPU fusion splits the 49-term sum into separate fusions when a consumer
    (LayerNorm's reductions) wants to fuse it, materializing every term: 10x slower. A
    ``reduce_precision`` to the dtype's own precision is an identity that XLA does not fuse
    through, so the sum stays one loop and its result is written once.
    """
    info = jnp.finfo(x.dtype)
    return lax.reduce_precision(x, exponent_bits=info.nexp, mantissa_bits=info.nmant)


def _pad(x, pads):
    (top, bottom), (left, right) = pads
    return jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise_nhwc(x, kernel, pads):
    out_h = x.shape[1] + sum(pads[0]) - kernel.shape[0] + 1
    out_w = x.shape[2] + sum(pads[1]) - kernel.shape[1] + 1
    return _materialize(_shifted_sum(_pad(x, pads), kernel, out_h, out_w).astype(x.dtype))


def _depthwise_fwd(x, kernel, pads):
    return _depthwise_nhwc(x, kernel, pads), (x, kernel)


def _depthwise_bwd(pads, residuals, g):
    x, kernel = residuals
    kh, kw = kernel.shape[:2]
    (top, bottom), (left, right) = pads
    # Input gradient: a correlation of g with the flipped kernel. g is padded so that
    # dx[a] = sum_i g_padded[a + i] * kernel[kh - 1 - i]; the rows/cols of g that fall on
    # "valid" padding (rows of x that no output saw) are handled by cropping/padding below.
    g_pads = ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right))
    gp = _pad(g, g_pads)
    dx = _materialize(_shifted_sum(gp, kernel[::-1, ::-1], x.shape[1], x.shape[2]).astype(x.dtype))
    dk = _kernel_grad(_pad(x, pads), g, kh, kw).astype(kernel.dtype)
    return dx, dk


_depthwise_nhwc.defvjp(_depthwise_fwd, _depthwise_bwd)


def supported(strides, dilation_rate, depth_multiplier):
    return (
        tuple(strides) == (1, 1)
        and tuple(dilation_rate) == (1, 1)
        and depth_multiplier == 1
    )


@functools.partial(jax.jit, static_argnums=(2, 3))
def depthwise_conv2d(inputs, kernel, padding, data_format):
    """Depthwise conv, stride 1, dilation 1. ``kernel`` is Keras' (kh, kw, C, 1)."""
    kh, kw = kernel.shape[:2]
    if padding == "same":
        pads = (same_padding(kh), same_padding(kw))
    else:
        pads = ((0, 0), (0, 0))
    kernel = kernel[:, :, :, 0]
    if data_format == "channels_first":
        x = jnp.transpose(inputs, (0, 2, 3, 1))
        return jnp.transpose(_depthwise_nhwc(x, kernel, pads), (0, 3, 1, 2))
    return _depthwise_nhwc(inputs, kernel, pads)
