"""The roadmap's builder: a ``RoadmapConfig`` (or a step's name) -> a functional Keras model.

Built on the same skeleton as the family (``keras_convnext.builder.functional_model``): the
roadmap supplies its stem (ResNet's, or the patchify stem), its downsampling (inside the blocks
until ``separate_downsampling``) and its blocks (``RoadmapBlock``, or ``ConvNeXtBlock`` once a
block has become exactly ConvNeXt's), under the architecture's layer names.
"""

import dataclasses

import keras

from keras_convnext.architecture import STEM, downsample_name
from keras_convnext.builder import (
    functional_model,
    takes_model_options,
    validate_architecture,
    validate_weights,
)
from keras_convnext.dispatch import conv_layer
from keras_convnext.layers import ConvNeXtBlock, Downsample, Stem, conv_initializer
from keras_convnext.model import apply_weights
from keras_convnext.roadmap.blocks import RoadmapBlock, apply_norm, norm_layer
from keras_convnext.roadmap.steps import RoadmapConfig, get_config

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
        return Stem(config.stem_width, data_format=data_format, name=STEM)(x)
    size, strides = (7, 2) if config.stem == "resnet" else (4, 4)
    x = conv_layer(
        config.stem_width, size, strides=strides, padding="same", data_format=data_format,
        use_bias=config.norm != "batch",  # no bias right before a BatchNorm
        kernel_initializer=conv_initializer(), name=f"{STEM}_conv",
    )(x)
    x = apply_norm(norm_layer(config.norm, data_format, f"{STEM}_norm"), x, data_format)
    if config.stem == "resnet":
        x = keras.layers.Activation(config.activation, name=f"{STEM}_act")(x)
        x = keras.layers.MaxPooling2D(
            3, strides=2, padding="same", data_format=data_format, name=f"{STEM}_pool"
        )(x)
    return x


def _downsample(x, config, channels, stage, data_format):
    if config.norm == "layer":
        return Downsample(channels, data_format=data_format, name=downsample_name(stage))(x)
    norm = norm_layer(config.norm, data_format, f"{downsample_name(stage)}_norm")
    x = apply_norm(norm, x, data_format)
    return conv_layer(
        channels, 2, strides=2, data_format=data_format,
        kernel_initializer=conv_initializer(), name=f"{downsample_name(stage)}_conv",
    )(x)


@takes_model_options
def build_from_config(
    config, *, weights=None, layer_scale_init_value=1e-6, model_name="roadmap", **options
):
    """Builds the functional model of a ``RoadmapConfig`` (arguments as in ``ConvNeXt``)."""
    validate_weights(weights)
    validate_architecture(config.depths, config.widths, layer_scale_init_value)
    separate = config.downsampling == "separate"
    channels = [config.stem_width]  # the channels flowing into the next layer

    def stem(x, data_format):
        return _stem(x, config, data_format)

    def downsample(x, stage, data_format):
        if not separate:  # the first block of the stage strides instead
            return x
        out = config.block_channels(config.widths[stage])[1]
        channels[0] = out
        return _downsample(x, config, out, stage, data_format)

    def block(x, stage, j, **common):
        hidden, out = config.block_channels(config.widths[stage])
        strides = 2 if stage > 0 and j == 0 and not separate else 1
        common.update(kernel_size=config.kernel_size, layer_scale_init_value=layer_scale_init_value)
        if config.is_convnext_block(channels[0], out, strides):
            x = ConvNeXtBlock(out, mlp_ratio=hidden // out, **common)(x)
        elif common.pop("remat", False):
            raise ValueError(f"remat applies to ConvNeXt blocks; stage {stage} block {j} of "
                             "this roadmap model is a ResNet-style block")
        else:
            x = RoadmapBlock(
                channels[0], out, hidden, strides=strides, depthwise=config.depthwise,
                spatial_first=config.spatial_first, activation=config.activation,
                activations=config.activations, norm=config.norm, norms=config.norms, **common,
            )(x)
        channels[0] = out
        return x

    model = functional_model(config.depths, stem=stem, downsample=downsample, block=block,
                             head_norm=config.head_norm, model_name=model_name, **options)
    return apply_weights(model, weights)
