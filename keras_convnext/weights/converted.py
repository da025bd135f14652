"""What every format converter returns, and the PyTorch-to-Keras tensor layouts they share.

A converter is a pure function from a foreign checkpoint (``name -> numpy array``) to a
``Converted``: arrays keyed by our variable paths (``stage_2_block_5/dwconv/kernel``) in our
layout, the foreign name each came from, and the foreign names it could not place.
"""

import dataclasses
import re

import numpy as np

from keras_convnext import architecture as arch


@dataclasses.dataclass
class Converted:
    format: str
    origin: str = "checkpoint"
    arrays: dict = dataclasses.field(default_factory=dict)
    sources: dict = dataclasses.field(default_factory=dict)
    unexpected: list = dataclasses.field(default_factory=list)
    problems: list = dataclasses.field(default_factory=list)

    def add(self, path, array, source):
        if path in self.arrays:
            self.problems.append(f"{source} and {self.sources[path]} both map to {path}")
            return
        self.arrays[path] = array
        self.sources[path] = source


# Our layer paths (keras_convnext.architecture's names). DOWNSAMPLE and BLOCK are templates for
# the rule tables, made with the architecture's naming functions: "{0}" is the stage, "{1}" the
# block.
STEM_CONV, STEM_NORM = f"{arch.STEM}/conv", f"{arch.STEM}/norm"
HEAD_NORM, PREDICTIONS = arch.HEAD_NORM, arch.PREDICTIONS
DOWNSAMPLE = arch.downsample_name("{0}")
BLOCK = arch.block_name("{0}", "{1}")
ISO_BLOCK = arch.block_name(0, "{0}")  # the isotropic model's one stage


# Kinds of parameters, by what the foreign tensor is.
CONV, DWCONV, LINEAR, NORM, SCALE, GRN = "conv", "dwconv", "linear", "norm", "scale", "grn"

# PyTorch parameter suffix -> Keras variable name, per kind.
_TORCH_NAMES = {
    CONV: {"weight": "kernel", "bias": "bias"},
    DWCONV: {"weight": "kernel", "bias": "bias"},
    LINEAR: {"weight": "kernel", "bias": "bias"},
    NORM: {"weight": "gamma", "bias": "beta"},
    GRN: {"weight": "gamma", "bias": "beta", "gamma": "gamma", "beta": "beta"},
}


def torch_to_keras(kind, suffix, array):
    """A PyTorch tensor in our Keras layout, or raise ValueError if its rank is wrong."""
    array = np.asarray(array)
    if kind == GRN:  # (C,) in timm, (1, 1, 1, C) in the official code and transformers
        if array.ndim not in (1, 4) or array.size != array.shape[-1]:
            raise ValueError(f"expected a GRN vector (C,) or (1, 1, 1, C), got {array.shape}")
        return array.reshape(-1)
    if suffix != "weight" or kind in (NORM, SCALE):
        if array.ndim != 1:
            raise ValueError(f"expected a vector, got shape {array.shape}")
        return array
    if kind == CONV:  # (out, in, kh, kw) -> (kh, kw, in, out)
        if array.ndim != 4:
            raise ValueError(f"expected a conv weight (out, in, kh, kw), got {array.shape}")
        return array.transpose(2, 3, 1, 0)
    if kind == DWCONV:  # (C, 1, k, k) -> (k, k, C, 1)
        if array.ndim != 4 or array.shape[1] != 1:
            raise ValueError(f"expected a depthwise weight (C, 1, k, k), got {array.shape}")
        return array.transpose(2, 3, 0, 1)
    if kind == LINEAR:  # (out, in) or a 1x1 conv (out, in, 1, 1) -> (in, out)
        if array.ndim == 4 and array.shape[2:] == (1, 1):
            array = array[:, :, 0, 0]
        if array.ndim != 2:
            raise ValueError(f"expected a linear weight (out, in), got {array.shape}")
        return array.T
    raise AssertionError(kind)


def convert_torch_state_dict(format_name, state_dict, rules):
    """Applies ``rules``, a list of ``(regex, layer path template, kind)``, to every key.

    A regex matches the whole key; its groups fill the template (``{0}``, ``{1}``) and its
    last group is the PyTorch parameter name (``weight``/``bias``) unless ``kind`` is SCALE,
    whose tensor becomes ``<layer path>/gamma``.
    """
    compiled = [(re.compile(pattern), template, kind) for pattern, template, kind in rules]
    out = Converted(format_name)
    for key, value in state_dict.items():
        for pattern, template, kind in compiled:
            match = pattern.fullmatch(key)
            if match is None:
                continue
            groups = match.groups()
            if kind == SCALE:
                layer, suffix, var = template.format(*groups), "weight", "gamma"
            else:
                layer, suffix = template.format(*groups[:-1]), groups[-1]
                var = _TORCH_NAMES[kind][suffix]
            try:
                out.add(f"{layer}/{var}", torch_to_keras(kind, suffix, value), key)
            except ValueError as e:
                out.problems.append(f"{key}: {e}")
            break
        else:
            out.unexpected.append(key)
    return out
