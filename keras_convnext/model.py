"""The functional-API builder for every ConvNeXt: ``ConvNeXt(depths, dims, ...)``.

Layer names are stable and documented (they are what checkpoint converters and users address):

=============================  ==============================================================
``preprocessing``              0-255 RGB -> ImageNet normalization (``include_preprocessing``)
``stem``                       4x4/4 conv (``stem/conv``) + LayerNorm (``stem/norm``)
``stage_{i}_downsample``       LayerNorm + 2x2/2 conv before stages i = 1, 2, 3
``stage_{i}_block_{j}``        block j of stage i (0-based, as in the reference code);
                               sub-layers ``dwconv``, ``norm``, ``pwconv1``, ``pwconv2``,
                               ``layer_scale``, ``drop_path``
``avg_pool``                   global average pooling (``include_top`` or ``pooling="avg"``)
``max_pool``                   global max pooling (``pooling="max"``)
``head_norm``                  LayerNorm before the classifier (``include_top``)
``predictions``                the classifier Dense (``include_top``)
=============================  ==============================================================

So "stage 2, block 5, depthwise conv" is ``model.get_layer("stage_2_block_5").dwconv``.
"""

import os

import keras

from keras_convnext.layers import (
    LAYER_NORM_EPSILON,
    ConvNeXtBlock,
    Downsample,
    ImageNormalization,
    Stem,
)

MIN_INPUT_SIZE = 32
NUM_STAGES = 4


def block_name(stage, block):
    return f"stage_{stage}_block_{block}"


def downsample_name(stage):
    return f"stage_{stage}_downsample"


def drop_path_schedule(depths, drop_path_rate):
    """Per-block stochastic depth rates, rising linearly from 0 to ``drop_path_rate``."""
    total = sum(depths)
    if total <= 1:
        return [float(drop_path_rate)] * total
    return [drop_path_rate * i / (total - 1) for i in range(total)]


def validate_arguments(
    depths, dims, include_top, weights, pooling, classes, drop_path_rate, layer_scale_init_value
):
    """Raises a ValueError naming the first bad builder argument (shared with the roadmap)."""
    if len(depths) != NUM_STAGES or len(dims) != NUM_STAGES:
        raise ValueError(
            f"depths and dims must each have {NUM_STAGES} entries, got {depths} and {dims}"
        )
    if any(int(d) < 1 for d in depths) or any(int(d) < 1 for d in dims):
        raise ValueError(f"depths and dims must be positive, got {depths} and {dims}")
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    if include_top and (not isinstance(classes, int) or classes < 1):
        raise ValueError(f"classes must be a positive integer, got {classes!r}")
    if not 0.0 <= float(drop_path_rate) < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
    if layer_scale_init_value is not None and float(layer_scale_init_value) < 0:
        raise ValueError(
            f"layer_scale_init_value must be None or >= 0, got {layer_scale_init_value}"
        )
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"weights must be None, 'imagenet' or a file path, got {weights!r}")


def _validate_input_shape(shape, data_format):
    """``shape`` excludes the batch axis. Raises a ValueError naming what is wrong."""
    if len(shape) != 3:
        raise ValueError(f"ConvNeXt takes images of rank 3 (H, W, C) per sample, got {shape}")
    if data_format == "channels_first":
        channels, spatial = shape[0], shape[1:]
    else:
        channels, spatial = shape[-1], shape[:2]
    if channels is not None and channels != 3:
        raise ValueError(
            f"ConvNeXt takes RGB images with 3 channels, got input shape {tuple(shape)} "
            f"({channels} channels, data_format={data_format!r})"
        )
    for size in spatial:
        if size is not None and size < MIN_INPUT_SIZE:
            raise ValueError(
                f"ConvNeXt needs images of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} pixels "
                f"(the stem and three downsamplings divide the size by 32), got input shape "
                f"{tuple(shape)}"
            )


def make_input(input_tensor, input_shape, data_format):
    """(the model's input tensor, the user's tensor or None), with the input shape checked."""
    if input_shape is None:
        input_shape = (3, None, None) if data_format == "channels_first" else (None, None, 3)
    input_shape = tuple(input_shape)
    if input_tensor is None:
        _validate_input_shape(input_shape, data_format)
        return keras.Input(shape=input_shape, name="pixels"), None
    if not keras.backend.is_keras_tensor(input_tensor):
        input_tensor = keras.Input(tensor=input_tensor, shape=input_shape, name="pixels")
    _validate_input_shape(tuple(input_tensor.shape[1:]), data_format)
    return input_tensor, input_tensor


def _head_dtype():
    # Under a mixed policy the classifier computes and returns float32 (numerically safer logits
    # and softmax); otherwise it follows the global policy.
    policy = keras.config.dtype_policy()
    return "float32" if policy.compute_dtype != policy.variable_dtype else None


def classification_head(
    x, *, include_top, pooling, classes, classifier_activation, data_format, head_norm=True
):
    """The end of the network: with ``include_top``, global average pooling -> LayerNorm
    (``head_norm``) -> Dense classifier; otherwise the ``pooling`` keras.applications offers."""
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(data_format=data_format, name="avg_pool")(x)
        head_dtype = _head_dtype()
        if head_norm:
            x = keras.layers.LayerNormalization(
                epsilon=LAYER_NORM_EPSILON, name="head_norm", dtype=head_dtype
            )(x)
        return keras.layers.Dense(
            classes,
            activation=classifier_activation,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            name="predictions",
            dtype=head_dtype,
        )(x)
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(data_format=data_format, name="avg_pool")(x)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(data_format=data_format, name="max_pool")(x)
    return x


def ConvNeXt(
    depths,
    dims,
    *,
    model_name="convnext",
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
    kernel_size=7,
    seed=None,
    skip_mismatched_head=False,
    name=None,
):
    """Builds a ConvNeXt of any depths and widths as a functional Keras model.

    Args:
        depths: blocks per stage, four integers (Tiny: (3, 3, 9, 3)).
        dims: channels per stage, four integers (Tiny: (96, 192, 384, 768)).
        model_name: name of the returned model (``name`` is an alias).
        include_top: end with global average pooling, LayerNorm and a Dense classifier.
        weights: None (random init), ``"imagenet"``, or the path of a checkpoint file in any
            format that ``keras_convnext.load_weights`` reads.
        input_tensor: optional tensor to use as the model's input.
        input_shape: optional (H, W, 3) (or (3, H, W) with channels_first); H, W >= 32 or None.
        pooling: with ``include_top=False``, None (4D feature map), ``"avg"`` or ``"max"``.
        classes: size of the classifier (with ``include_top``).
        classifier_activation: activation of the classifier; None returns logits.
        include_preprocessing: take 0-255 RGB and normalize with ImageNet mean/std in the model.
        drop_path_rate: stochastic depth of the last block; rates rise linearly from 0.
        layer_scale_init_value: LayerScale init (1e-6); None or 0 builds blocks without it.
        kernel_size: depthwise kernel size (7 in ConvNeXt).
        seed: seed of the stochastic depth layers' random generators.
        skip_mismatched_head: with ``weights``, keep a freshly initialized classifier (with a
            warning) when the checkpoint's head does not fit ``classes``: for fine-tuning.

    Returns:
        A ``keras.Model``. Use ``keras_convnext.feature_extractor(model)`` for the four stage
        outputs (strides 4, 8, 16, 32).
    """
    depths = tuple(int(d) for d in depths)
    dims = tuple(int(d) for d in dims)
    validate_arguments(
        depths, dims, include_top, weights, pooling, classes, drop_path_rate,
        layer_scale_init_value,
    )
    data_format = keras.config.image_data_format()
    inputs, user_tensor = make_input(input_tensor, input_shape, data_format)

    x = inputs
    if include_preprocessing:
        x = ImageNormalization(data_format=data_format, name="preprocessing")(x)
    x = Stem(dims[0], data_format=data_format, name="stem")(x)
    rates = drop_path_schedule(depths, drop_path_rate)
    index = 0
    for stage, (depth, dim) in enumerate(zip(depths, dims)):
        if stage > 0:
            x = Downsample(dim, data_format=data_format, name=downsample_name(stage))(x)
        for block in range(depth):
            x = ConvNeXtBlock(
                dim,
                kernel_size=kernel_size,
                layer_scale_init_value=layer_scale_init_value,
                drop_path_rate=rates[index],
                seed=None if seed is None else seed + index,
                data_format=data_format,
                name=block_name(stage, block),
            )(x)
            index += 1

    x = classification_head(
        x,
        include_top=include_top,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        data_format=data_format,
    )

    if user_tensor is not None:
        model_inputs = keras.utils.get_source_inputs(user_tensor)
    else:
        model_inputs = inputs
    model = keras.Model(model_inputs, x, name=name or model_name)

    if weights is not None:
        from keras_convnext.weights import load_weights

        load_weights(model, weights, skip_mismatched_head=skip_mismatched_head)
    return model


def feature_extractor(model):
    """A model with the same input as ``model`` returning the four stage outputs.

    The outputs are a dict ``{"stage_0": stride 4, "stage_1": stride 8, "stage_2": stride 16,
    "stage_3": stride 32}`` of un-normalized feature maps, sharing ``model``'s weights (for
    detection and segmentation necks, e.g. an FPN).
    """
    outputs = {}
    for stage in range(NUM_STAGES):
        last = None
        for layer in model.layers:
            if layer.name.startswith(f"stage_{stage}_block_"):
                last = layer
        if last is None:
            raise ValueError(f"model {model.name!r} has no ConvNeXt stage {stage} blocks")
        outputs[f"stage_{stage}"] = last.output
    return keras.Model(model.input, outputs, name=f"{model.name}_features")
