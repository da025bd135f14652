"""Attention matmuls for ``count_flops``, so that transformers are counted like ConvNeXt.

``keras_convnext.flops.count_flops`` counts the multiply-accumulates (MACs) of conv and dense
layers. A transformer also multiplies activations by activations, in two matmuls that have no
weights and that ``count_flops`` therefore cannot see: ``Q K^T`` and ``softmax(.) V``. This module
counts them through ``count_flops``' own hook (``counters={LayerClass: fn}``); the attention's
weighted projections (QKV, output) are ``Dense`` / ``EinsumDense`` sub-layers and are counted by
``count_flops`` as usual, so nothing is counted twice.

Per attention call, with ``B`` independent sequences (windows x batch), ``N`` queries, ``M`` keys,
``h`` heads of key width ``d_k`` and value width ``d_v``::

    Q K^T           B * h * N * M * d_k
    softmax(.) V    B * h * N * M * d_v

Softmax, scaling, the relative-position bias and masks are not counted (as norms and activations
are not). This is the convention of the Swin paper's own FLOPs (its ``WindowAttention.flops``) and
of fvcore's matmul handles, so Swin-T at 224 px comes out at the published 4.5 G. Counted layers:

* ``keras.layers.MultiHeadAttention`` (any ``attention_axes``), and
* keras-hub's Swin ``WindowAttention`` (``B`` = windows, ``N = M`` = window area), registered
  only when keras-hub has been imported (a model that uses it has imported it).

    from keras_convnext.flops import count_flops
    from flops_attention import attention_counters  # benchmarks/ on sys.path
    count_flops(swin, counters=attention_counters())
"""

import math
import sys

import keras

__all__ = ["attention_counters", "attention_macs", "count_flops_with_attention"]


def attention_macs(sequences, heads, queries, keys, key_dim, value_dim=None):
    """MACs of ``Q K^T`` and ``softmax(.) V`` for ``sequences`` independent attentions."""
    value_dim = key_dim if value_dim is None else value_dim
    return sequences * heads * queries * keys * (key_dim + value_dim)


def _window_attention(layer, input_shapes, output_shape):
    """keras-hub's Swin ``WindowAttention``: input (windows * batch, N, C)."""
    windows, tokens, _ = input_shapes[0]
    return attention_macs(windows, layer.num_heads, tokens, tokens, layer.head_dim)


def _multi_head_attention(layer, input_shapes, output_shape):
    """``keras.layers.MultiHeadAttention`` called as ``mha(query, value[, key])``."""
    query = input_shapes[0]
    value = input_shapes[1] if len(input_shapes) > 1 else query  # mha(x) is not allowed; be safe
    rank = len(query)
    axes = layer._attention_axes
    if axes is None:
        axes = tuple(range(1, rank - 1))
    axes = tuple(a % rank for a in axes)
    outer = math.prod(int(d) for i, d in enumerate(query[:-1]) if i not in axes)
    queries = math.prod(int(query[a]) for a in axes)
    keys = math.prod(int(value[a]) for a in axes)
    key_dim = layer._key_dim
    value_dim = layer._value_dim or key_dim
    return attention_macs(outer, layer._num_heads, queries, keys, key_dim, value_dim)


def attention_counters():
    """``{LayerClass: counter}`` for ``count_flops(..., counters=...)``."""
    counters = {keras.layers.MultiHeadAttention: _multi_head_attention}
    if "keras_hub" in sys.modules:
        try:
            from keras_hub.src.models.swin_transformer.swin_transformer_layers import (
                WindowAttention,
            )
        except ImportError:  # another keras-hub layout: Swin is then not counted, and says so
            WindowAttention = None
        if WindowAttention is not None:
            counters[WindowAttention] = _window_attention
    return counters


def count_flops_with_attention(model, input_shape=None, counters=None):
    """``count_flops`` plus attention matmuls; returns ``{"total", "attention", "linear"}``.

    ``linear`` is what ``count_flops`` alone reports (conv and dense MACs), ``attention`` the
    ``Q K^T`` and ``softmax(.) V`` MACs, ``total`` their sum; one image, batch 1.
    """
    from keras_convnext.flops import count_flops

    extra = attention_counters()
    extra.update(counters or {})
    total = count_flops(model, input_shape, counters=extra)
    zero = {cls: (lambda *a: 0) for cls in extra}
    linear = count_flops(model, input_shape, counters={**(counters or {}), **zero})
    return {"total": int(total), "attention": int(total - linear), "linear": int(linear)}
