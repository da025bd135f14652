"""keras.applications ConvNeXt weight files: the ``.h5`` files keras.applications downloads
(``convnext_tiny.h5``, ``convnext_tiny_notop.h5``) and ``.weights.h5`` saved from such a model.

Layers are named ``{model}_stem`` (a Sequential of ``{model}_stem_conv`` and
``{model}_stem_layernorm``), ``{model}_downsampling_block_i`` (``..._layernorm_i``,
``..._conv_i``), ``{model}_stage_i_block_j_{depthwise_conv,layernorm,pointwise_conv_1,
pointwise_conv_2,layer_scale}``, ``{model}_head_layernorm``, ``{model}_head_dense``; the
include_top=False files end with an unnamed ``layer_normalization`` (the head LayerNorm).
The depthwise conv is a grouped ``Conv2D`` with kernel (k, k, 1, C); ours is (k, k, C, 1).
"""

import re

from keras_convnext.weights import converted as c
from keras_convnext.weights.native import VARIABLES

NAME = "keras_applications"
DESCRIPTION = "keras.applications ConvNeXt weights file"

_B = r".*_stage_(\d+)_block_(\d+)_"
# (innermost layer name pattern, our layer path from its groups, our sub-layer kind)
_LAYERS = [
    (r".*_stem_conv", lambda: c.STEM_CONV, "conv"),
    (r".*_stem_layernorm", lambda: c.STEM_NORM, "norm"),
    (r".*_downsampling_layernorm_(\d)", lambda i: c.DOWNSAMPLE.format(int(i) + 1) + "/norm",
     "norm"),
    (r".*_downsampling_conv_(\d)", lambda i: c.DOWNSAMPLE.format(int(i) + 1) + "/conv", "conv"),
    (_B + "depthwise_conv", lambda i, j: c.BLOCK.format(i, j) + "/dwconv", "dwconv"),
    (_B + "layernorm", lambda i, j: c.BLOCK.format(i, j) + "/norm", "norm"),
    (_B + "pointwise_conv_1", lambda i, j: c.BLOCK.format(i, j) + "/pwconv1", "pwconv1"),
    (_B + "pointwise_conv_2", lambda i, j: c.BLOCK.format(i, j) + "/pwconv2", "pwconv2"),
    (_B + "layer_scale", lambda i, j: c.BLOCK.format(i, j) + "/layer_scale", "layer_scale"),
    (r".*_head_layernorm|layer_normalization(?:_\d+)?", lambda: c.HEAD_NORM, "head_norm"),
    (r".*_head_dense", lambda: c.PREDICTIONS, "predictions"),
]
_COMPILED = [(re.compile(p), f, kind) for p, f, kind in _LAYERS]


def matches(entries):
    signature = re.compile(r".*_(stem_conv|stage_\d+_block_\d+_depthwise_conv)")
    return any(e.layers and signature.fullmatch(e.layers[-1]) for e in entries)


def _locate(layer):
    """(our layer path, our sub-layer kind) of a keras.applications layer name, or None."""
    for pattern, path_of, kind in _COMPILED:
        match = pattern.fullmatch(layer)
        if match:
            return path_of(*match.groups()), kind
    return None


def convert(entries):
    out = c.Converted(NAME)
    for entry in entries:
        located = _locate(entry.layers[-1]) if entry.layers else None
        names = VARIABLES[located[1]] if located else ()
        if entry.index >= len(names):
            out.unexpected.append(entry.source)
            continue
        layer, kind = located
        var = entry.name if entry.name in names else names[entry.index]
        array = entry.array
        if kind == "dwconv" and var == "kernel":
            if array.ndim != 4 or array.shape[2] != 1:
                out.problems.append(
                    f"{entry.source}: expected a grouped conv kernel (k, k, 1, C), "
                    f"got {array.shape}"
                )
                continue
            array = array.transpose(0, 1, 3, 2)
        out.add(f"{layer}/{var}", array, entry.source)
    return out
