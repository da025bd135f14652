"""The roadmap's steps as data: ``RoadmapConfig`` (everything a step can change; the defaults are
ResNet-50), ``Step`` (a parent plus one change, with the paper's figures) and ``ROADMAP`` in the
paper's order. ``get_config(step)`` applies the chain of diffs; ``keras_convnext.roadmap.builder``
turns a config into a model.
"""

import dataclasses

from keras_convnext.roadmap.blocks import ACTIVATIONS, NORMS, PLACEMENTS


@dataclasses.dataclass(frozen=True)
class RoadmapConfig:
    """Everything a roadmap step can change; the defaults are ResNet-50 (v1.5)."""

    depths: tuple = (3, 4, 6, 3)  # blocks per stage
    widths: tuple = (64, 128, 256, 512)  # bottleneck planes, or the inverted blocks' width
    stem: str = "resnet"  # "resnet": 7x7/2 conv, norm, act, 3x3/2 max-pool; "patchify": 4x4/4
    stem_width: int = 64
    block: str = "bottleneck"  # "bottleneck": out 4x width, hidden = width; "inverted": 4x hidden
    depthwise: bool = False  # the spatial conv is depthwise (groups = channels)
    spatial_first: bool = False  # the spatial conv moved to the top of the block
    kernel_size: int = 3
    activation: str = "relu"
    activations: str = "every"  # "every" (ResNet) or "one" (between the two 1x1 convs)
    norm: str = "batch"  # "batch" or "layer"
    norms: str = "every"  # "every" (after each conv) or "one" (after the spatial conv)
    downsampling: str = "in_block"  # "in_block" (stride-2 blocks) or "separate" (norm + 2x2/2)
    head_norm: bool = False  # LayerNorm after global average pooling

    def __post_init__(self):
        for key in ("depths", "widths"):
            value = getattr(self, key)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
                raise ValueError(f"{key} must be a list of integers, got {value!r}")
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        choices = {
            "stem": ("resnet", "patchify"),
            "block": ("bottleneck", "inverted"),
            "activation": ACTIVATIONS,
            "activations": PLACEMENTS,
            "norm": NORMS,
            "norms": PLACEMENTS,
            "downsampling": ("in_block", "separate"),
        }
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"{field} must be one of {allowed}, got {getattr(self, field)!r}")

    def block_channels(self, width):
        """(hidden, output) channels of a block of a stage of this width."""
        if self.block == "bottleneck":
            return width, 4 * width
        return 4 * width, width

    def is_convnext_block(self, in_channels, out_channels, strides):
        """Whether a block with these channels and stride is exactly ``ConvNeXtBlock``."""
        return (
            in_channels == out_channels
            and strides == 1
            and self.block == "inverted"
            and self.depthwise
            and self.spatial_first
            and (self.activation, self.activations) == ("gelu", "one")
            and (self.norm, self.norms) == ("layer", "one")
        )


@dataclasses.dataclass(frozen=True)
class Step:
    """One step of the roadmap: ``parent``'s config plus ``diff``.

    ``paper_gflops`` and ``paper_top1`` are the paper's Figure 2 (ImageNet-1k, 224 px);
    ``appendix_gflops`` is its appendix table's two-decimal figure.
    """

    name: str
    change: str
    diff: tuple  # ((field, value), ...): the RoadmapConfig fields this step changes
    paper_gflops: float
    paper_top1: float
    appendix_gflops: float
    parent: str = None  # None: the previous step


def _step(name, change, paper_gflops, paper_top1, appendix_gflops, parent=None, **diff):
    diff = tuple(diff.items())
    return Step(name, change, diff, paper_gflops, paper_top1, appendix_gflops, parent)


ROADMAP = (
    _step("resnet50", "ResNet-50 (v1.5), modern training recipe", 4.1, 78.8, 4.09),
    _step("stage_ratio", "blocks per stage (3,4,6,3) -> (3,3,9,3)", 4.5, 79.4, 4.53,
          depths=(3, 3, 9, 3)),
    _step("patchify_stem", "stem -> 4x4 conv, stride 4", 4.4, 79.5, 4.42, stem="patchify"),
    _step("depthwise_conv", "3x3 conv -> depthwise", 2.4, 78.3, 2.35, depthwise=True),
    _step("wider", "width 64 -> 96", 5.3, 80.5, 5.27,
          widths=(96, 192, 384, 768), stem_width=96),
    _step("inverted_bottleneck", "inverted bottleneck, hidden 4x", 4.6, 80.6, 4.64,
          block="inverted"),
    _step("move_up_dwconv", "depthwise conv moved to the top", 4.1, 79.9, 4.07,
          spatial_first=True),
    _step("kernel_5", "depthwise kernel 5x5", 4.1, 80.4, 4.10, kernel_size=5),
    _step("kernel_7", "depthwise kernel 7x7", 4.2, 80.6, 4.15, "move_up_dwconv", kernel_size=7),
    _step("kernel_9", "depthwise kernel 9x9", 4.2, 80.6, 4.21, "move_up_dwconv", kernel_size=9),
    _step("kernel_11", "depthwise kernel 11x11", 4.3, 80.6, 4.29, "move_up_dwconv",
          kernel_size=11),
    _step("gelu", "ReLU -> GELU (kernel 7)", 4.2, 80.6, 4.15, "kernel_7", activation="gelu"),
    _step("fewer_activations", "one GELU per block", 4.2, 81.3, 4.15, activations="one"),
    _step("fewer_norms", "one norm per block", 4.2, 81.4, 4.15, norms="one"),
    _step("layer_norm", "BatchNorm -> LayerNorm", 4.2, 81.5, 4.15, norm="layer"),
    _step("separate_downsampling", "LN + 2x2/2 conv between stages", 4.5, 82.0, 4.46,
          downsampling="separate", head_norm=True),
)
STEPS = tuple(step.name for step in ROADMAP)
_BY_NAME = {step.name: step for step in ROADMAP}


def get_step(name):
    """The ``Step`` record of ``name``."""
    if name not in _BY_NAME:
        raise ValueError(f"unknown roadmap step {name!r}; choose one of {', '.join(STEPS)}")
    return _BY_NAME[name]


def _parent(step):
    if step.parent is not None:
        return step.parent
    index = STEPS.index(step.name)
    return STEPS[index - 1] if index > 0 else None


def get_config(step):
    """The ``RoadmapConfig`` of ``step``: ResNet-50's, with every diff up to ``step`` applied."""
    chain = []
    name = step
    while name is not None:
        chain.append(get_step(name))
        name = _parent(chain[-1])
    config = RoadmapConfig()
    for record in reversed(chain):
        config = dataclasses.replace(config, **dict(record.diff))
    return config

