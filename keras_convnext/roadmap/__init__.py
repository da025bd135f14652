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

from keras_convnext.roadmap.blocks import RoadmapBlock
from keras_convnext.roadmap.builder import build, build_from_config
from keras_convnext.roadmap.steps import ROADMAP, STEPS, RoadmapConfig, Step, get_config, get_step

__all__ = [
    "ROADMAP",
    "STEPS",
    "RoadmapBlock",
    "RoadmapConfig",
    "Step",
    "build",
    "build_from_config",
    "get_config",
    "get_step",
]
