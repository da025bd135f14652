"""The paper's roadmap, ResNet-50 -> ConvNeXt-T, as runnable Keras models.

``STEPS`` names the steps of the paper's Figure 2 in order; ``build(step, **kwargs)`` returns the
model of a step, taking the keyword arguments of the ConvNeXt variants (``classes``,
``input_shape``, ``include_top`` ...) plus, to shrink or vary a step, any ``RoadmapConfig`` field
(e.g. ``depths=(1, 1, 1, 1)``). Every step is its parent's config plus one change (``Step.diff``),
so the list below *is* the roadmap; one builder turns a config into a model. The last step is
ConvNeXt-T layer for layer: same layer names, same weights (``ConvNeXtTiny``'s weights load into
it), 28,589,128 parameters, 4.456 GFLOPs.

Run ``python -m keras_convnext.roadmap`` for the table of every step (parameters, our FLOPs count,
the paper's FLOPs and ImageNet top-1) and ``--plot roadmap.png`` for the trajectory
(``keras_convnext.roadmap.report``). The blocks of the ResNet-like steps are
``keras_convnext.roadmap.blocks.RoadmapBlock``.

How the paper's ambiguous points are read (each reading reproduces the paper's appendix FLOPs,
4.09 4.53 4.42 2.35 5.27 4.64 4.07 4.10 4.15 4.21 4.29 4.15 4.15 4.15 4.15 and 4.46, to the
hundredth; see ``Step.appendix_gflops``):

* ResNet-50 is the v1.5 form (torchvision's): the first block of stages 2-4 strides 2 in its 3x3
  conv, and a block whose input and output differ has a 1x1 (strided) conv + norm shortcut.
* Until ``separate_downsampling``, blocks downsample themselves: the first block of stages 2-4
  strides 2 in its spatial conv (later the depthwise conv), its shortcut projects with a 1x1
  conv of stride 2.
* The "width" of ``wider`` is the bottleneck width: planes 64 -> 96 per stage (96, 192, 384,
  768), block outputs 4x that (384 ... 3072), stem 96 channels.
* ``inverted_bottleneck`` keeps the stage widths 96 ... 768 as the blocks' outputs, with a hidden
  width 4x that; the shortcut projection (first block of each stage) maps in -> out channels.
* After ``move_up_dwconv`` the depthwise conv runs on the block's input channels (so in the first
  block of a stage, on the previous stage's width, with the stride).
* The kernel sweep (5, 7, 9, 11) explores from ``move_up_dwconv``; the paper keeps 7, so ``gelu``
  changes ``kernel_7``, not ``kernel_11`` (``Step.parent``).
* ``patchify_stem`` replaces the whole ResNet stem (7x7/2 conv, norm, ReLU, 3x3/2 max-pool) by a
  4x4/4 conv and a norm (Swin's patch embedding, ConvNeXt's stem), so the stem keeps one norm
  throughout; ``separate_downsampling`` adds the norm before each 2x2/2 downsampling conv and the
  LayerNorm after global pooling (``head_norm``).
* ``fewer_norms`` leaves the norm of a shortcut projection in place (they disappear with separate
  downsampling); ``fewer_activations`` removes the ReLU after the residual sum too.
* LayerScale (init 1e-6) and stochastic depth are part of the training recipe (the paper's
  appendix A.1), not of a step: every step's residual branches get them, through the same
  ``layer_scale_init_value`` and ``drop_path_rate`` arguments as the variants. They cost no FLOPs.

FLOPs are counted by ``keras_convnext.count_flops`` from the built model (multiply-accumulates of
conv and dense layers, batch 1, 224 px), never from a table.
"""

import dataclasses

import keras

from keras_convnext.layers import (
    ConvNeXtBlock,
    Downsample,
    ImageNormalization,
    Stem,
)
from keras_convnext.model import (
    block_name,
    classification_head,
    downsample_name,
    drop_path_schedule,
    make_input,
    validate_arguments,
)
from keras_convnext.roadmap.blocks import (
    ACTIVATIONS,
    NORMS,
    PLACEMENTS,
    RoadmapBlock,
    apply_norm,
    norm_layer,
)

__all__ = [
    "ROADMAP",
    "STEPS",
    "RoadmapConfig",
    "Step",
    "build",
    "build_from_config",
    "get_config",
    "get_step",
]


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


_CONFIG_FIELDS = {field.name for field in dataclasses.fields(RoadmapConfig)}


def build(step, **kwargs):
    """Builds the model of roadmap step ``step``.

    Keyword arguments are the variants' (``include_top``, ``weights``, ``input_tensor``,
    ``input_shape``, ``pooling``, ``classes``, ``classifier_activation``,
    ``include_preprocessing``, ``drop_path_rate``, ``layer_scale_init_value``, ``seed``,
    ``name``) or ``RoadmapConfig`` fields overriding the step's config (``depths=(1, 1, 1, 1)``
    for a quick experiment).
    """
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in _CONFIG_FIELDS}
    config = dataclasses.replace(get_config(step), **overrides)
    kwargs.setdefault("model_name", f"roadmap_{step}")
    return build_from_config(config, **kwargs)


def _stem(x, config, data_format):
    if config.stem == "patchify" and config.norm == "layer":
        return Stem(config.stem_width, data_format=data_format, name="stem")(x)
    size, strides = (7, 2) if config.stem == "resnet" else (4, 4)
    x = keras.layers.Conv2D(
        config.stem_width, size, strides=strides, padding="same", data_format=data_format,
        use_bias=config.norm != "batch",  # no bias right before a BatchNorm
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02), name="stem_conv",
    )(x)
    x = apply_norm(norm_layer(config.norm, data_format, "stem_norm"), x, data_format)
    if config.stem == "resnet":
        x = keras.layers.Activation(config.activation, name="stem_act")(x)
        x = keras.layers.MaxPooling2D(
            3, strides=2, padding="same", data_format=data_format, name="stem_pool"
        )(x)
    return x


def _downsample(x, config, channels, stage, data_format):
    if config.norm == "layer":
        return Downsample(channels, data_format=data_format, name=downsample_name(stage))(x)
    norm = norm_layer(config.norm, data_format, f"{downsample_name(stage)}_norm")
    x = apply_norm(norm, x, data_format)
    return keras.layers.Conv2D(
        channels, 2, strides=2, data_format=data_format,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        name=f"{downsample_name(stage)}_conv",
    )(x)


def build_from_config(
    config,
    *,
    model_name="roadmap",
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    include_preprocessing=True,
    drop_path_rate=0.0,
    layer_scale_init_value=1e-6,
    seed=None,
    name=None,
):
    """Builds the functional model of a ``RoadmapConfig`` (arguments as in ``ConvNeXt``)."""
    validate_arguments(
        config.depths, config.widths, include_top, weights, pooling, classes, drop_path_rate,
        layer_scale_init_value,
    )
    data_format = keras.config.image_data_format()
    inputs, user_tensor = make_input(input_tensor, input_shape, data_format)

    x = inputs
    if include_preprocessing:
        x = ImageNormalization(data_format=data_format, name="preprocessing")(x)
    x = _stem(x, config, data_format)
    channels = config.stem_width
    separate = config.downsampling == "separate"
    rates = drop_path_schedule(config.depths, drop_path_rate)
    index = 0
    for stage, (depth, width) in enumerate(zip(config.depths, config.widths)):
        hidden, out = config.block_channels(width)
        if stage > 0 and separate:
            x = _downsample(x, config, out, stage, data_format)
            channels = out
        for block in range(depth):
            strides = 2 if stage > 0 and block == 0 and not separate else 1
            common = {
                "kernel_size": config.kernel_size,
                "layer_scale_init_value": layer_scale_init_value,
                "drop_path_rate": rates[index],
                "seed": None if seed is None else seed + index,
                "data_format": data_format,
                "name": block_name(stage, block),
            }
            if config.is_convnext_block(channels, out, strides):
                x = ConvNeXtBlock(out, mlp_ratio=hidden // out, **common)(x)
            else:
                x = RoadmapBlock(
                    channels, out, hidden, strides=strides, depthwise=config.depthwise,
                    spatial_first=config.spatial_first, activation=config.activation,
                    activations=config.activations, norm=config.norm, norms=config.norms,
                    **common,
                )(x)
            channels = out
            index += 1

    x = classification_head(
        x,
        include_top=include_top,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        data_format=data_format,
        head_norm=config.head_norm,
    )

    model_inputs = keras.utils.get_source_inputs(user_tensor) if user_tensor is not None else inputs
    model = keras.Model(model_inputs, x, name=name or model_name)
    if weights is not None:
        from keras_convnext.weights import load_weights

        load_weights(model, weights)
    return model
