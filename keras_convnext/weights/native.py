"""keras_convnext's own Keras weights files (``model.save_weights("x.weights.h5")``).

Read by layer name, not by Keras's positional matching, so the same strict checks apply as to
every other format (and a file saved with a head loads into ``include_top=False``). ``write``
is how the converter and the download cache produce such files.
"""

import keras

from keras_convnext import architecture as arch
from keras_convnext.weights import converted as c

NAME = "native"
DESCRIPTION = "keras_convnext Keras weights file"

_KERNEL_BIAS = ("kernel", "bias")
_GAMMA_BETA = ("gamma", "beta")
# Variable names, in Keras's order, of each kind of sub-layer, by the sub-layer's name.
VARIABLES = {
    "conv": _KERNEL_BIAS,
    "dwconv": _KERNEL_BIAS,
    "pwconv1": _KERNEL_BIAS,
    "pwconv2": _KERNEL_BIAS,
    "predictions": _KERNEL_BIAS,
    "norm": _GAMMA_BETA,
    "head_norm": _GAMMA_BETA,
    "layer_scale": ("gamma",),
    "grn": _GAMMA_BETA,
}

# The sub-layers that hold variables, per part of the network (keras_convnext.architecture).
_SUBLAYERS = {
    "stem": ("conv", "norm"),
    "downsample": ("conv", "norm"),
    "block": ("dwconv", "norm", "pwconv1", "pwconv2", "layer_scale", "grn"),
}


def _is_convnext_variable(path):
    """``stem/conv/kernel``, ``stage_2_block_5/dwconv/bias``, ``predictions/kernel``: the
    family's own layers (not the roadmap's ``stem_conv`` or ``RoadmapBlock`` sub-layers)."""
    parsed = arch.parse(path)
    if parsed is None or parsed.part == "preprocessing":
        return False
    if parsed.part == "head":
        return path.count("/") == 1
    own_name = {
        "stem": arch.STEM,
        "downsample": arch.downsample_name(parsed.stage),
        "block": arch.block_name(parsed.stage, parsed.block),
    }[parsed.part]
    return (
        path.split("/")[0] == own_name
        and path.count("/") == 2
        and parsed.sublayer in _SUBLAYERS[parsed.part]
    )


def has_convnext_variables(model):
    """Whether every variable of ``model`` is named as in a keras_convnext ConvNeXt (an early
    roadmap step, for one, is not: its weights files are Keras's business alone)."""
    return all(_is_convnext_variable(v.path) for v in model.weights)


def matches(entries):
    return any(e.layers and _is_top_level(e.layers[0]) for e in entries)


def _is_top_level(name):
    parsed = arch.parse(name)
    return parsed is not None and parsed.part != "preprocessing"


def convert(entries):
    out = c.Converted(NAME)
    for entry in entries:
        names = VARIABLES.get(entry.layers[-1]) if entry.layers else None
        if names is None or entry.index >= len(names):
            out.unexpected.append(entry.source)
            continue
        var = entry.name if entry.name in names else names[entry.index]
        out.add("/".join(entry.layers) + "/" + var, entry.array, entry.source)
    return out


def write(converted, path):
    """Builds the model ``converted`` describes, loads it strictly, and saves ``path``."""
    from keras_convnext.builder import convnext_graph, isotropic_graph
    from keras_convnext.weights import assign

    if not str(path).endswith(".weights.h5"):
        raise ValueError(f"a Keras weights file must end with .weights.h5, got {path}")
    arch_ = assign.architecture({k: v.shape for k, v in converted.arrays.items()})
    options = dict(
        include_top=arch_.classes is not None,
        classes=arch_.classes or 1000,
        include_preprocessing=False,
        classifier_activation=None,
        layer_scale_init_value=1e-6 if arch_.layer_scale else None,
        kernel_size=arch_.kernel_size,
        name=arch_.name,
    )
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")  # store full precision whatever the session uses
    try:
        if arch_.family == arch.ISOTROPIC:
            model = isotropic_graph(arch_.depths[0], arch_.dims[0], patch_size=arch_.stem_patch,
                                    **options)
        else:
            model = convnext_graph(arch_.depths, arch_.dims,
                                   use_grn=arch_.family == arch.V2, **options)
    finally:
        keras.config.set_dtype_policy(policy)
    assign.assign(model, converted)
    model.save_weights(path)
    return model
