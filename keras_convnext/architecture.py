"""The architecture's vocabulary, at the bottom of the import graph: the family table, the stage
count, every layer name, the parser from a layer or variable path to (stage, block, sub-layer),
and the stage description (timm's ``feature_info``) read off a built model.

Builders name layers with the functions here; checkpoint converters, the FLOPs grouping, layer-wise
lr decay, ``feature_extractor`` and the training configuration read names back with ``parse``.
Nothing here imports another module of the package.

=============================  ==============================================================
``preprocessing``              0-255 RGB -> ImageNet normalization (``include_preprocessing``)
``stem``                       4x4/4 conv (``stem/conv``) + LayerNorm (``stem/norm``); the
                               roadmap's ResNet-like stems are ``stem_conv``, ``stem_norm``,
                               ``stem_act``, ``stem_pool``
``stage_{i}_downsample``       LayerNorm + 2x2/2 conv before stages i = 1, 2, 3 (roadmap steps
                               with BatchNorm: ``stage_{i}_downsample_norm`` / ``_conv``)
``stage_{i}_block_{j}``        block j of stage i (0-based, as in the reference code);
                               sub-layers ``dwconv``, ``norm``, ``pwconv1``, ``pwconv2``,
                               ``layer_scale``, ``drop_path``
``avg_pool`` / ``max_pool``    global pooling
``head_norm``, ``predictions`` the LayerNorm before the classifier and the classifier Dense
=============================  ==============================================================
"""

import collections
import dataclasses
import re

NUM_STAGES = 4
MIN_INPUT_SIZE = 32  # the stem and three downsamplings divide the size by 32

PREPROCESSING = "preprocessing"
STEM = "stem"
AVG_POOL, MAX_POOL = "avg_pool", "max_pool"
HEAD_NORM, PREDICTIONS = "head_norm", "predictions"
HEAD_LAYERS = (AVG_POOL, MAX_POOL, HEAD_NORM, PREDICTIONS)
BLOCK_SUBLAYERS = ("dwconv", "norm", "pwconv1", "pwconv2", "layer_scale", "drop_path")

# The parts of a network, in the order data flows through them.
PARTS = ("preprocessing", "stem", "downsample", "block", "head")


def block_name(stage, block):
    return f"stage_{stage}_block_{block}"


def downsample_name(stage):
    return f"stage_{stage}_downsample"


def stage_name(stage):
    """The key of a stage's output in ``feature_extractor``'s dict and in per-stage tables."""
    return f"stage_{stage}"


# ------------------------------------------------------------------------------------ parsing


@dataclasses.dataclass(frozen=True)
class LayerPath:
    """Where a layer or variable sits: ``part`` (one of ``PARTS``), its ``stage`` and ``block``
    (None where they do not apply: the stem precedes stage 0, the head follows the last stage),
    the ``sublayer`` inside it (``dwconv``, ``conv``, ...) and the ``variable`` (``kernel``)."""

    part: str
    stage: object = None
    block: object = None
    sublayer: object = None
    variable: object = None


_TOP = re.compile(
    r"(?P<preprocessing>preprocessing)"
    r"|(?P<stem>stem)(?:_(?P<stem_sub>\w+))?"
    r"|stage_(?P<ds_stage>\d+)_downsample(?:_(?P<ds_sub>\w+))?"
    r"|stage_(?P<stage>\d+)_block_(?P<block>\d+)"
    r"|(?P<head>avg_pool|max_pool|head_norm|predictions)"
)


def parse(path):
    """The ``LayerPath`` of a layer name or variable path (``stage_2_block_5/dwconv/kernel``,
    ``stage_1_downsample_conv/bias``, ``stem/norm/gamma``), or None for a name that is not part
    of a ConvNeXt's vocabulary."""
    top, *rest = str(path).split("/")
    match = _TOP.fullmatch(top)
    if match is None:
        return None
    g = match.groupdict()
    if g["preprocessing"]:
        part, stage, block, inner = "preprocessing", None, None, None
    elif g["stem"]:
        part, stage, block, inner = "stem", None, None, g["stem_sub"]
    elif g["ds_stage"] is not None:
        part, stage, block, inner = "downsample", int(g["ds_stage"]), None, g["ds_sub"]
    elif g["stage"] is not None:
        part, stage, block, inner = "block", int(g["stage"]), int(g["block"]), None
    else:
        part, stage, block, inner = "head", None, None, g["head"]
    if inner is None and len(rest) >= 2:
        inner = rest[0]
    variable = rest[-1] if rest else None
    return LayerPath(part, stage, block, inner, variable)


def stage_of(path):
    """The stage index of a downsampling layer or block (and of their variables), else None."""
    parsed = parse(path)
    return parsed.stage if parsed is not None else None


def is_head(path):
    """Whether a layer or variable belongs to the classifier head (``head_norm``, ``predictions``)."""
    return str(path).split("/")[0] in (HEAD_NORM, PREDICTIONS)


# ----------------------------------------------------------------------------------- stages


@dataclasses.dataclass(frozen=True)
class StageInfo:
    """One stage of a built model, as timm's ``feature_info`` describes it: its ``index``, the
    ``stride`` (reduction) of its output relative to the input, its output ``channels``, and
    the names of its layers in order (the downsampling before it, if any, then the blocks)."""

    index: int
    stride: object
    channels: int
    layers: tuple

    @property
    def name(self):
        return stage_name(self.index)

    @property
    def output_layer(self):
        """The name of the layer whose output is the stage's output (its last block)."""
        return self.layers[-1]

    @property
    def depth(self):
        return sum(1 for name in self.layers if parse(name).part == "block")


def stage_layers(layer_names):
    """``[(stage index, [layer names])]`` in order, from the model's top-level layer names."""
    stages = {}
    for name in layer_names:
        parsed = parse(name)
        if parsed is not None and parsed.stage is not None:
            stages.setdefault(parsed.stage, []).append(name)
    return sorted(stages.items())


def depths_of(layer_names):
    """Blocks per stage, from the model's layer names."""
    return tuple(
        sum(1 for n in names if parse(n).part == "block") for _, names in stage_layers(layer_names)
    )


# ------------------------------------------------------------------------------------ family

V1, V2, ISOTROPIC = "v1", "v2", "isotropic"
FAMILY_NAMES = {V1: "ConvNeXt", V2: "ConvNeXt V2", ISOTROPIC: "isotropic ConvNeXt"}
ISOTROPIC_MIN_INPUT_SIZE = 16  # its 16x16/16 stem


@dataclasses.dataclass(frozen=True)
class Variant:
    """One member of a family. ``default_drop_path_rate`` is the paper's ImageNet-1k stochastic
    depth for the variant (the constructors default to 0.0, like keras.applications: it is a
    training choice); ``layer_scale`` the LayerScale init the official definition builds it
    with (None: no LayerScale)."""

    name: str
    depths: tuple
    dims: tuple
    default_drop_path_rate: float = 0.0
    family: str = V1
    layer_scale: object = 1e-6

    @property
    def title(self):
        """``Tiny``, ``XLarge``: the constructor's suffix."""
        base = self.name.split("_")[-1]
        return "XLarge" if base == "xlarge" else base.capitalize()

    @property
    def model_name(self):
        """The reference's model name: ``convnext_tiny``, ``convnextv2_tiny``,
        ``convnext_isotropic_small``."""
        if self.family == V2:
            return f"convnextv2_{self.name[len('v2_'):]}"
        return f"convnext_{self.name}"

    @property
    def constructor_name(self):
        """``ConvNeXtTiny``, ``ConvNeXtV2Tiny``, ``ConvNeXtIsotropicSmall``."""
        prefix = {V1: "ConvNeXt", V2: "ConvNeXtV2", ISOTROPIC: "ConvNeXtIsotropic"}[self.family]
        return prefix + self.title


def _table(*variants):
    return {v.name: v for v in variants}


# The paper's T, S, B, L, XL and timm's small variants (atto ... nano).
VARIANTS = _table(
    Variant("atto", (2, 2, 6, 2), (40, 80, 160, 320), 0.0),
    Variant("femto", (2, 2, 6, 2), (48, 96, 192, 384), 0.0),
    Variant("pico", (2, 2, 6, 2), (64, 128, 256, 512), 0.0),
    Variant("nano", (2, 2, 8, 2), (80, 160, 320, 640), 0.0),
    Variant("tiny", (3, 3, 9, 3), (96, 192, 384, 768), 0.1),
    Variant("small", (3, 3, 27, 3), (96, 192, 384, 768), 0.4),
    Variant("base", (3, 3, 27, 3), (128, 256, 512, 1024), 0.5),
    Variant("large", (3, 3, 27, 3), (192, 384, 768, 1536), 0.5),
    Variant("xlarge", (3, 3, 27, 3), (256, 512, 1024, 2048), 0.5),
)

# ConvNeXt V2 (PAPER.md's table); drop path: the official V2 fine-tuning recipes.
V2_VARIANTS = _table(
    Variant("v2_atto", (2, 2, 6, 2), (40, 80, 160, 320), 0.1, V2, None),
    Variant("v2_femto", (2, 2, 6, 2), (48, 96, 192, 384), 0.1, V2, None),
    Variant("v2_pico", (2, 2, 6, 2), (64, 128, 256, 512), 0.1, V2, None),
    Variant("v2_nano", (2, 2, 8, 2), (80, 160, 320, 640), 0.2, V2, None),
    Variant("v2_tiny", (3, 3, 9, 3), (96, 192, 384, 768), 0.2, V2, None),
    Variant("v2_base", (3, 3, 27, 3), (128, 256, 512, 1024), 0.1, V2, None),
    Variant("v2_large", (3, 3, 27, 3), (192, 384, 768, 1536), 0.2, V2, None),
    Variant("v2_huge", (3, 3, 27, 3), (352, 704, 1408, 2816), 0.2, V2, None),
)

# Isotropic ConvNeXt (V1 paper, Section 3.3; official convnext_isotropic.py and TRAINING.md:
# LayerScale only for Large).
ISOTROPIC_VARIANTS = _table(
    Variant("isotropic_small", (18,), (384,), 0.1, ISOTROPIC, None),
    Variant("isotropic_base", (18,), (768,), 0.2, ISOTROPIC, None),
    Variant("isotropic_large", (36,), (1024,), 0.5, ISOTROPIC, 1e-6),
)

# Every family's table, as one live view (an entry added to a family's table is found here too);
# a ChainMap iterates its last map first, so this lists V1, then V2, then isotropic.
ALL_VARIANTS = collections.ChainMap(ISOTROPIC_VARIANTS, V2_VARIANTS, VARIANTS)


def variant_key(name):
    """The table key of a variant name: "tiny", "convnext_tiny" and "ConvNeXtTiny" are "tiny";
    "ConvNeXtV2Atto" and "convnextv2_atto" are "v2_atto"; "ConvNeXtIsotropicSmall" is
    "isotropic_small"."""
    key = str(name).lower().replace("-", "_").replace("convnext", "").strip("_")
    for prefix in ("v2", "isotropic"):
        if key.startswith(prefix) and not key.startswith(prefix + "_"):
            key = f"{prefix}_{key[len(prefix):]}"
    return key


def get_variant(name):
    """The table entry for ``name`` (any spelling ``variant_key`` accepts), of any family."""
    key = variant_key(name)
    if key not in ALL_VARIANTS:
        raise ValueError(
            f"unknown ConvNeXt variant {name!r}; choose one of {', '.join(ALL_VARIANTS)}"
        )
    return ALL_VARIANTS[key]


def find_variant(depths, dims, family=V1):
    """The name of the ``family`` variant with these depths and widths, or None."""
    for variant in ALL_VARIANTS.values():
        if (variant.family, variant.depths, variant.dims) == (family, tuple(depths), tuple(dims)):
            return variant.name
    return None
