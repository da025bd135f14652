"""Model parallelism for ConvNeXt with ``keras.distribution`` (JAX backend).

Nearly all of a ConvNeXt's parameters (and, with AdamW and EMA, three times as much optimizer
state) sit in each block's two pointwise layers, ``pwconv1`` (dim -> 4 dim) and ``pwconv2``
(4 dim -> dim). ``layout_map`` shards both over the mesh's ``model`` axis along the hidden
(4 dim) axis, as Megatron-LM shards a Transformer's MLP: ``pwconv1`` by columns (with its bias
and V2's GRN parameters), ``pwconv2`` by rows. Everything else is replicated. XLA inserts the
one all-reduce per block that this needs, so a ConvNeXt-XL or V2-Huge whose weights and
optimizer state do not fit one device trains over several::

    mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "model"))  # 8 devices
    keras.distribution.set_distribution(keras.distribution.ModelParallel(
        layout_map=keras_convnext.distribution.layout_map(mesh, "xlarge"),
        batch_dim_name="batch"))
    model = keras_convnext.ConvNeXtXLarge()  # built sharded

The training program does this with ``--model-parallel N`` (``training/strategy.py``).
"""

import keras

from keras_convnext.architecture import block_name

MODEL_AXIS = "model"
BATCH_AXIS = "batch"
_BLOCK = block_name(r"\d+", r"\d+")  # every block of every family: stage_{i}_block_{j}


def pointwise_layouts(model_axis=MODEL_AXIS):
    """{variable-path regex: axes}: the sharded variables of every block."""
    return {
        rf"{_BLOCK}/pwconv1/kernel": (None, model_axis),
        rf"{_BLOCK}/pwconv1/bias": (model_axis,),
        rf"{_BLOCK}/grn/(gamma|beta)": (model_axis,),
        rf"{_BLOCK}/pwconv2/kernel": (model_axis, None),
    }


def _hidden_widths(model):
    """The pointwise hidden widths (4 x dims) of a variant name, Variant or built model."""
    if model is None:
        return ()
    if isinstance(model, keras.Model):
        return sorted({int(v.shape[-1]) for v in model.weights
                       if v.path.endswith("/pwconv1/kernel")})
    from keras_convnext.architecture import get_variant

    variant = get_variant(model) if isinstance(model, str) else model
    return sorted({4 * int(d) for d in variant.dims})


def layout_map(device_mesh, model=None, model_axis=MODEL_AXIS):
    """A ``keras.distribution.LayoutMap`` for ``device_mesh`` sharding the pointwise layers of
    every block over ``model_axis``. With ``model`` (a variant name, a ``Variant`` or a built
    model) the hidden widths are checked to divide evenly over that axis."""
    if model_axis not in device_mesh.axis_names:
        raise ValueError(f"the device mesh has no {model_axis!r} axis "
                         f"(axes: {', '.join(device_mesh.axis_names)})")
    shards = device_mesh.shape[list(device_mesh.axis_names).index(model_axis)]
    uneven = [w for w in _hidden_widths(model) if w % shards]
    if uneven:
        raise ValueError(f"pointwise widths {uneven} do not divide over {shards} devices of "
                         f"the {model_axis!r} axis")
    layouts = keras.distribution.LayoutMap(device_mesh)
    for path, axes in pointwise_layouts(model_axis).items():
        layouts[path] = axes
    return layouts


def model_parallel(model_devices, devices=None, model=None):
    """A ``keras.distribution.ModelParallel`` over ``devices`` (default: all): a
    (len(devices) / model_devices, model_devices) mesh of ``batch`` x ``model``, the batch
    split over the first axis, the pointwise layers over the second (``layout_map``)."""
    devices = devices if devices is not None else keras.distribution.list_devices()
    if model_devices < 1 or len(devices) % model_devices:
        raise ValueError(f"model_parallel={model_devices} must divide the {len(devices)} devices")
    mesh = keras.distribution.DeviceMesh(
        (len(devices) // model_devices, model_devices), (BATCH_AXIS, MODEL_AXIS), devices)
    return keras.distribution.ModelParallel(
        layout_map=layout_map(mesh, model), batch_dim_name=BATCH_AXIS)
