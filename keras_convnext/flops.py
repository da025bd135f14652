"""FLOPs and parameters of a built Keras model, counted the way the ConvNeXt paper counts them.

Convention (the paper's, and fvcore's when it is told to count convs and linear layers only):
FLOPs are the **multiply-accumulates** of every convolution (dense, grouped, depthwise, separable,
transposed) and every dense layer, for **one image** at the model's input size. Biases,
normalization layers, LayerScale, activations, pooling, residual additions and the softmax are not
counted. ConvNeXt-T at 224 px is 4.456 G by this convention (fvcore gives 4.47 G when it also counts
the norms).

The count is taken from the model itself, not from a table: the model is run once symbolically
(no arithmetic is done) on a batch-1 input while every counted layer records the shapes it is
called with, so layers nested inside other layers (the sub-layers of a ``ConvNeXtBlock``) and
layers called more than once are counted exactly as the model uses them. For a counted layer with
output ``y`` and kernel ``K``:

=====================  ======================================================================
Conv1D/2D/3D           ``size(y) * prod(K.shape[:-1])``  (``K``: k..., C_in / groups, C_out)
DepthwiseConv1D/2D     ``size(y) * prod(K.shape[:-2])``  (``K``: k..., C_in, multiplier)
SeparableConv1D/2D     depthwise part + ``positions(y) * C_in * multiplier * C_out``
Conv1D/2D/3DTranspose  ``size(x) * prod(K.shape[:-1])``  (``K``: k..., C_out, C_in)
Dense                  ``size(y) * C_in``  (leading axes, e.g. H and W, multiply in)
EinsumDense            ``size(y) * prod(contracted kernel axes)``
=====================  ======================================================================

Any other layer that owns weights is an error unless it is a known zero-FLOP layer (the norms,
GRN, LayerScale, Embedding): a FLOPs figure that silently skips a layer is worse than none. Pass
``counters={LayerClass: fn}`` to count a custom layer, where ``fn(layer, input_shapes,
output_shape)`` returns its MACs for one call (shapes include the batch axis, which is 1;
``input_shapes`` lists the tensor arguments, positional then keyword). A custom counter may also
name a layer made of sub-layers (attention's matmuls, say): its sub-layers are still counted.
"""

import math
import re

import keras

from keras_convnext import architecture
from keras_convnext.layers import GRN, LayerScale

__all__ = [
    "count_flops",
    "flops_by_layer",
    "flops_per_stage",
    "params_per_stage",
    "stage_of",
]


def _size(shape):
    return math.prod(int(d) for d in shape)


def _channels(layer, shape):
    return int(shape[1] if getattr(layer, "data_format", None) == "channels_first" else shape[-1])


def _conv(layer, input_shapes, output_shape):
    return _size(output_shape) * _size(layer.kernel.shape[:-1])


def _depthwise_conv(layer, input_shapes, output_shape):
    return _size(output_shape) * _size(layer.kernel.shape[:-2])


def _separable_conv(layer, input_shapes, output_shape):
    positions = _size(output_shape) // _channels(layer, output_shape)
    depthwise = layer.depthwise_kernel.shape  # k..., C_in, multiplier
    pointwise = layer.pointwise_kernel.shape  # 1..., C_in * multiplier, C_out
    return positions * (_size(depthwise) + _size(pointwise[-2:]))


def _conv_transpose(layer, input_shapes, output_shape):
    return _size(input_shapes[0]) * _size(layer.kernel.shape[:-1])


def _dense(layer, input_shapes, output_shape):
    return _size(output_shape) * int(layer.kernel.shape[0])


def _einsum_dense(layer, input_shapes, output_shape):
    match = re.fullmatch(r"\s*(\S+)\s*,\s*(\S+)\s*->\s*(\S+)\s*", layer.equation)
    if match is None:
        raise ValueError(f"cannot count FLOPs of EinsumDense equation {layer.equation!r}")
    _, kernel_axes, output_axes = match.groups()
    contracted = [
        int(dim) for axis, dim in zip(kernel_axes, layer.kernel.shape) if axis not in output_axes
    ]
    return _size(output_shape) * math.prod(contracted)


def _layer_classes(*names):
    return tuple(getattr(keras.layers, n) for n in names if hasattr(keras.layers, n))


# Checked in order with isinstance; the first match counts the layer.
COUNTERS = (
    (_layer_classes("DepthwiseConv1D", "DepthwiseConv2D"), _depthwise_conv),
    (_layer_classes("SeparableConv1D", "SeparableConv2D"), _separable_conv),
    (_layer_classes("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"), _conv_transpose),
    (_layer_classes("Conv1D", "Conv2D", "Conv3D"), _conv),
    (_layer_classes("Dense"), _dense),
    (_layer_classes("EinsumDense"), _einsum_dense),
)

# Layers with weights that the paper's convention does not count.
ZERO_FLOP_LAYERS = _layer_classes(
    "BatchNormalization",
    "LayerNormalization",
    "GroupNormalization",
    "RMSNormalization",
    "Normalization",
    "Embedding",
) + (LayerScale, GRN)


def _counter_for(layer, counters):
    for classes, fn in tuple((counters or {}).items()) + COUNTERS:
        if isinstance(layer, classes):
            return fn
    return None


def _own_variables(layer):
    """Variables of ``layer`` that none of its sub-layers owns."""
    inner = {
        id(v)
        for sub in layer._flatten_layers(include_self=False, recursive=True)
        for v in sub.weights
    }
    return [v for v in layer.weights if id(v) not in inner]


def _resolve_input_shapes(model, input_shape):
    """Per-input shapes with batch 1, from ``input_shape`` or the model's own inputs."""
    try:
        model_inputs = list(model.inputs)
    except (AttributeError, ValueError):
        model_inputs = []
    if input_shape is not None:
        shapes = list(input_shape) if isinstance(input_shape[0], (tuple, list)) else [input_shape]
    elif model_inputs:
        shapes = [tuple(t.shape[1:]) for t in model_inputs]
    else:
        raise ValueError(
            f"model {model.name!r} has no defined inputs; pass input_shape=(H, W, C) "
            "(without the batch axis)"
        )
    shapes = [tuple(s) for s in shapes]
    for shape in shapes:
        if any(d is None for d in shape):
            raise ValueError(
                f"FLOPs depend on the input size, but model {model.name!r} takes inputs of shape "
                f"{shape}; pass input_shape=(H, W, C), e.g. input_shape=(224, 224, 3)"
            )
    if model_inputs and len(shapes) != len(model_inputs):
        raise ValueError(
            f"model {model.name!r} has {len(model_inputs)} inputs but {len(shapes)} input "
            "shapes were given"
        )
    return [(1,) + s for s in shapes]


class _Trace(keras.layers.Layer):
    """Runs ``fn`` symbolically when called on KerasTensors (backend tracing, no arithmetic)."""

    def __init__(self, fn, on_start, **kwargs):
        super().__init__(**kwargs)
        self._fn = fn
        self._on_start = on_start

    def call(self, inputs):
        # A backend may trace more than once (PyTorch retries off the meta device); only the
        # last, complete trace must count.
        self._on_start()
        return self._fn(inputs)


def _shape(x):
    return tuple(int(d) for d in x.shape)


def _record_calls(model, input_shapes, counters):
    """Traces ``model`` once; returns [(layer, counter, input_shapes, output_shape)] per call."""
    layers = list(model._flatten_layers(include_self=False, recursive=True))
    counted = []
    for layer in layers:
        fn = _counter_for(layer, counters)
        if fn is not None:
            counted.append((layer, fn))
        elif not isinstance(layer, ZERO_FLOP_LAYERS) and _own_variables(layer):
            raise ValueError(
                f"count_flops cannot count layer {layer.name!r} of type "
                f"{type(layer).__name__}: it has weights but is not a conv, dense or known "
                "zero-FLOP layer; pass counters={" + type(layer).__name__ + ": fn} with "
                "fn(layer, input_shapes, output_shape) -> multiply-accumulates"
            )

    calls = []

    def patch(layer, fn):
        original = layer.call

        def call(*args, **kwargs):
            outputs = original(*args, **kwargs)
            inputs = [a for a in (*args, *kwargs.values()) if hasattr(a, "shape")]
            calls.append((layer, fn, [_shape(a) for a in inputs], _shape(outputs)))
            return outputs

        # Set on the instance (bypassing Layer.__setattr__'s tracking): Layer.__call__ looks up
        # self.call, so the wrapper runs in place of the class's method until it is deleted.
        layer.__dict__["call"] = call

    for layer, fn in counted:
        patch(layer, fn)
    try:
        inputs = [keras.KerasTensor(shape) for shape in input_shapes]
        trace = _Trace(lambda x: model(x), on_start=calls.clear, name="flops_trace")
        trace(inputs if len(inputs) > 1 else inputs[0])
    finally:
        for layer, _ in counted:
            layer.__dict__.pop("call", None)
    return calls


def flops_by_layer(model, input_shape=None, counters=None):
    """Multiply-accumulates of each of ``model.layers`` (nested sub-layers add into their parent).

    Returns a dict ``{layer name: MACs}`` in model order, for one image. ``input_shape``
    (without the batch axis) is needed when the model's input size is not fixed.
    """
    input_shapes = _resolve_input_shapes(model, input_shape)
    owner = {}
    for top in model.layers:
        for sub in top._flatten_layers(include_self=True, recursive=True):
            owner.setdefault(id(sub), top.name)
    result = {top.name: 0 for top in model.layers}
    for layer, fn, shapes, output_shape in _record_calls(model, input_shapes, counters):
        name = owner.get(id(layer), layer.name)
        result[name] = result.get(name, 0) + int(fn(layer, shapes, output_shape))
    return result


def count_flops(model, input_shape=None, counters=None):
    """FLOPs of ``model`` by the ConvNeXt paper's convention: multiply-accumulates of every conv
    and dense layer for one image (biases, norms, activations and pooling not counted).

    Args:
        model: a built Keras model (functional, sequential or subclassed).
        input_shape: input size without the batch axis, e.g. ``(224, 224, 3)``; needed when the
            model's input has ``None`` spatial dimensions (a list of shapes for several inputs).
        counters: optional ``{LayerClass: fn(layer, input_shapes, output_shape) -> MACs}`` for
            custom layers with weights.

    Returns:
        An ``int``; divide by 1e9 for GFLOPs. ``count_flops(ConvNeXtTiny(), (224, 224, 3))`` is
        4,455,531,264 (4.456 G, the paper's 4.5 G).
    """
    return sum(flops_by_layer(model, input_shape, counters).values())


def stage_of(layer_name):
    """``"stage_{i}"`` for a downsampling layer or block of stage i, else None."""
    stage = architecture.stage_of(layer_name)
    return architecture.stage_name(stage) if stage is not None else None


def _group_by_stage(model, values):
    """Sums ``values[layer name]`` into ``stem``, ``stage_0`` ... ``stage_3``, ``head``.

    A stage is its blocks and the downsampling before it (``keras_convnext.architecture``); the
    layers before the first stage are the stem, those after the last one the head.
    """
    groups = {"stem": 0}
    seen_stage = False
    for layer in model.layers:
        stage = stage_of(layer.name)
        if stage is not None:
            seen_stage = True
            key = stage
        else:
            key = "head" if seen_stage else "stem"
        groups[key] = groups.get(key, 0) + values.get(layer.name, 0)
    groups.setdefault("head", 0)
    groups["head"] = groups.pop("head")  # keep the head last
    return groups


def params_per_stage(model):
    """Parameter count per stage: ``{"stem": n, "stage_0": n, ..., "head": n}``.

    Stages are found by the layer names that keras_convnext models share (``stage_{i}_block_{j}``,
    ``stage_{i}_downsample``); the values add up to ``model.count_params()``.
    """
    return _group_by_stage(model, {layer.name: layer.count_params() for layer in model.layers})


def flops_per_stage(model, input_shape=None, counters=None):
    """Multiply-accumulates per stage, grouped like ``params_per_stage``."""
    return _group_by_stage(model, flops_by_layer(model, input_shape, counters))
