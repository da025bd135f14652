"""The public builder ``ConvNeXt(depths, dims, ...)``, the stage description of a built model
(``stages``) and ``feature_extractor``.

``ConvNeXt`` builds the graph (``keras_convnext.builder``) and then applies ``weights=``
(``keras_convnext.weights``), as timm's ``build_model_with_cfg`` and keras-hub's ``from_preset``
do; the graph builder itself knows nothing of checkpoints. Layer names are
``keras_convnext.architecture``'s, so "stage 2, block 5, depthwise conv" is
``model.get_layer("stage_2_block_5").dwconv``.
"""

import keras

from keras_convnext import weights as weights_lib
from keras_convnext.architecture import (  # noqa: F401  (re-exported: the names users know)
    MIN_INPUT_SIZE,
    NUM_STAGES,
    StageInfo,
    block_name,
    downsample_name,
    stage_layers,
)
from keras_convnext.builder import (  # noqa: F401  (re-exported for the roadmap and users)
    classification_head,
    convnext_graph,
    drop_path_schedule,
    isotropic_graph,
    make_input,
    takes_model_options,
    validate_arguments,
    validate_weights,
)


@takes_model_options
def ConvNeXt(
    depths,
    dims,
    *,
    weights=None,
    skip_mismatched_head=False,
    layer_scale_init_value=1e-6,
    kernel_size=7,
    use_grn=False,
    stem_patch_size=4,
    **options,
):
    """Builds a ConvNeXt of any depths and widths as a functional Keras model.

    Args:
        depths: blocks per stage, four integers (Tiny: (3, 3, 9, 3)).
        dims: channels per stage, four integers (Tiny: (96, 192, 384, 768)).
        weights: None (random init), ``"imagenet"``, or the path of a checkpoint file in any
            format that ``keras_convnext.load_weights`` reads.
        skip_mismatched_head: with ``weights``, keep a freshly initialized classifier (with a
            warning) when the checkpoint's head does not fit ``classes``: for fine-tuning.
        layer_scale_init_value: LayerScale init (1e-6); None or 0 builds blocks without it.
        kernel_size: depthwise kernel size (7 in ConvNeXt).
        use_grn: ConvNeXt V2's blocks (GRN after the GELU); see ``ConvNeXtV2``.
        stem_patch_size: the patchify stem's kernel and stride (4 in every published model);
            2 keeps twice the resolution in every stage, for small images (28-32 px), at
            four times the compute. Inputs from ``8 * stem_patch_size`` px.
        model_name: name of the returned model (``name`` is an alias).
        include_top: end with global average pooling, LayerNorm and a Dense classifier.
        input_tensor: optional tensor to use as the model's input.
        input_shape: optional (H, W, C) (or (C, H, W) with channels_first); H, W >= 32 or None;
            any C >= 1 (3 by default). Pretrained 3-channel weights are adapted to C channels
            (timm's ``adapt_input_conv``: summed over RGB for 1, repeated and rescaled for more).
        pooling: with ``include_top=False``, None (4D feature map), ``"avg"`` or ``"max"``.
        classes: size of the classifier (with ``include_top``).
        classifier_activation: activation of the classifier; None returns logits.
        include_preprocessing: take 0-255 images and normalize them in the model: True (ImageNet's
            RGB mean/std; for 1-channel input their means; other channel counts go in as they
            are, with a warning, as in keras.applications), ``(mean, std)`` with one value per
            channel, or False (the model takes normalized input).
        drop_path_rate: stochastic depth of the last block; rates rise linearly from 0.
        seed: seed of the stochastic depth layers' random generators.
        remat: recompute each block's activations in the backward pass instead of keeping
            them (``keras.remat`` around each ``ConvNeXtBlock``): less training memory for
            more time.

    Returns:
        A ``keras.Model``. Use ``keras_convnext.feature_extractor(model)`` for the four stage
        outputs (strides 4, 8, 16, 32).
    """
    validate_weights(weights)
    model = convnext_graph(
        depths, dims, layer_scale_init_value=layer_scale_init_value, kernel_size=kernel_size,
        use_grn=use_grn, stem_patch_size=stem_patch_size, **options,
    )
    return apply_weights(model, weights, skip_mismatched_head=skip_mismatched_head)


@takes_model_options
def ConvNeXtV2(
    depths, dims, *, weights=None, skip_mismatched_head=False, layer_scale_init_value=None,
    kernel_size=7, **options
):
    """Builds a ConvNeXt V2 (Woo et al. 2023) of any depths and widths: ConvNeXt's stem,
    downsampling and head, blocks with GRN after the GELU and no LayerScale. Arguments as
    ``ConvNeXt``'s; ``model_name`` defaults to ``"convnextv2"``."""
    options.setdefault("model_name", "convnextv2")
    return ConvNeXt(depths, dims, weights=weights, skip_mismatched_head=skip_mismatched_head,
                    layer_scale_init_value=layer_scale_init_value, kernel_size=kernel_size,
                    use_grn=True, **options)


@takes_model_options
def ConvNeXtIsotropic(
    depth, dim, *, weights=None, skip_mismatched_head=False, layer_scale_init_value=None,
    kernel_size=7, **options
):
    """Builds an isotropic ConvNeXt (V1 paper, Section 3.3): a 16x16/16 patchify conv, then
    ``depth`` ConvNeXt blocks at ``dim`` channels (no downsampling), pooling, LayerNorm, head,
    exactly as the official ``convnext_isotropic.py`` (no norm after the stem; LayerScale off
    by default, as officially, except for Large). Inputs from 16 px; other arguments as
    ``ConvNeXt``'s."""
    validate_weights(weights)
    options.setdefault("model_name", "convnext_isotropic")
    model = isotropic_graph(depth, dim, layer_scale_init_value=layer_scale_init_value,
                            kernel_size=kernel_size, **options)
    return apply_weights(model, weights, skip_mismatched_head=skip_mismatched_head)


def apply_weights(model, weights, *, skip_mismatched_head=False):
    """``model`` with ``weights`` (None, a preset tag or a checkpoint path) loaded strictly."""
    if weights is not None:
        weights_lib.load_weights(model, weights, skip_mismatched_head=skip_mismatched_head)
    return model


def _spatial(shape, data_format):
    return tuple(shape[2:4]) if data_format == "channels_first" else tuple(shape[1:3])


def stages(model):
    """The ``StageInfo`` of every stage of a ConvNeXt-like model (the family, the roadmap
    steps): index, stride, output channels and layer names, read off the model's layers.

    The stride is measured, not assumed: from the stage output's spatial size against the
    input's, tracing the model symbolically at 224 px when its input size is not fixed.
    """
    data_format = keras.config.image_data_format()
    grouped = stage_layers(layer.name for layer in model.layers)
    if not grouped:
        raise ValueError(
            f"model {model.name!r} has no ConvNeXt stage 0 blocks (no layer named like "
            f"{block_name(0, 0)})"
        )
    outputs = [model.get_layer(names[-1]).output for _, names in grouped]
    input_shape = tuple(model.inputs[0].shape)
    in_size = _spatial(input_shape, data_format)
    out_shapes = [tuple(o.shape) for o in outputs]
    if None in in_size or any(None in _spatial(s, data_format) for s in out_shapes):
        probe = list(input_shape)
        probe[0] = 1
        for axis in ((2, 3) if data_format == "channels_first" else (1, 2)):
            if probe[axis] is None:
                probe[axis] = 224
        specs = keras.Model(model.inputs, outputs).compute_output_spec(
            keras.KerasTensor(tuple(probe), dtype=model.inputs[0].dtype)
        )
        in_size = _spatial(probe, data_format)
        out_shapes = [tuple(s.shape) for s in specs]
    channel_axis = 1 if data_format == "channels_first" else -1
    return [
        StageInfo(
            index=index,
            stride=int(round(in_size[0] / _spatial(shape, data_format)[0])),
            channels=int(shape[channel_axis]),
            layers=tuple(names),
        )
        for (index, names), shape in zip(grouped, out_shapes)
    ]


def feature_extractor(model):
    """A model with the same input as ``model`` returning the stage outputs.

    The outputs are a dict ``{"stage_0": stride 4, "stage_1": stride 8, "stage_2": stride 16,
    "stage_3": stride 32}`` (an isotropic ConvNeXt has one, ``stage_0`` at stride 16) of un-normalized feature maps, sharing ``model``'s weights (for
    detection and segmentation necks, e.g. an FPN). The returned model's ``feature_info`` is
    the list of ``StageInfo`` (stride, channels, layers) of those outputs, like timm's.
    """
    info = stages(model)
    missing = sorted(set(range(len(info))) - {s.index for s in info})
    if missing:
        raise ValueError(f"model {model.name!r} has no ConvNeXt stage {missing[0]} blocks")
    outputs = {s.name: model.get_layer(s.output_layer).output for s in info}
    features = keras.Model(model.input, outputs, name=f"{model.name}_features")
    features.feature_info = info
    return features
