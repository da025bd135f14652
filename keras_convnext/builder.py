"""The functional skeleton every ConvNeXt graph is built with, and the family's graph.

``functional_model`` owns what every network here shares: argument checks, the input (or the
user's tensor), ImageNet preprocessing, the stochastic-depth schedule and the per-block seeds, the
stage loop with the architecture's layer names, the classification head and the source inputs.
A family supplies three callables (its stem, its downsampling, its block); ``convnext_graph`` is
ConvNeXt's, ``keras_convnext.roadmap.builder`` the roadmap's. Nothing here loads weights: the
public constructors (``keras_convnext.ConvNeXt``, the variants, ``roadmap.build``) do, after
building.
"""

import inspect
import os
import warnings

import keras

from keras_convnext.architecture import (
    AVG_POOL,
    HEAD_NORM,
    MAX_POOL,
    MIN_INPUT_SIZE,
    NUM_STAGES,
    PREDICTIONS,
    PREPROCESSING,
    STEM,
    block_name,
    downsample_name,
)
from keras_convnext.layers import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LAYER_NORM_EPSILON,
    ConvNeXtBlock,
    Downsample,
    ImageNormalization,
    Stem,
    conv_initializer,
)


def drop_path_schedule(depths, drop_path_rate):
    """Per-block stochastic depth rates, rising linearly from 0 to ``drop_path_rate``."""
    total = sum(depths)
    if total <= 1:
        return [float(drop_path_rate)] * total
    return [drop_path_rate * i / (total - 1) for i in range(total)]


def _stage_tuple(name, values):
    """``values`` as a tuple of four positive ints, or a ValueError naming ``name``."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ValueError(f"{name} must be a list of {NUM_STAGES} integers, got {values!r}")
    try:
        out = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a list of {NUM_STAGES} integers, got {values!r}") from None
    if any(isinstance(v, bool) or v != int(v) for v in values):
        raise ValueError(f"{name} must be a list of {NUM_STAGES} integers, got {values!r}")
    return out


def validate_architecture(depths, dims, layer_scale_init_value=None):
    """``(depths, dims)`` as tuples of four positive ints, or a ValueError naming the problem."""
    depths, dims = _stage_tuple("depths", depths), _stage_tuple("dims", dims)
    if len(depths) != NUM_STAGES or len(dims) != NUM_STAGES:
        raise ValueError(
            f"depths and dims must each have {NUM_STAGES} entries, got {depths} and {dims}"
        )
    if any(d < 1 for d in depths) or any(d < 1 for d in dims):
        raise ValueError(f"depths and dims must be positive, got {depths} and {dims}")
    if layer_scale_init_value is not None and float(layer_scale_init_value) < 0:
        raise ValueError(
            f"layer_scale_init_value must be None or >= 0, got {layer_scale_init_value}"
        )
    return depths, dims


def validate_options(include_top=True, pooling=None, classes=1000, drop_path_rate=0.0):
    """Raises a ValueError naming the first bad head or stochastic-depth option."""
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    if include_top and (not isinstance(classes, int) or classes < 1):
        raise ValueError(f"classes must be a positive integer, got {classes!r}")
    if not 0.0 <= float(drop_path_rate) < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")


def validate_weights(weights):
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"weights must be None, 'imagenet' or a file path, got {weights!r}")


def validate_arguments(
    depths, dims, include_top, weights, pooling, classes, drop_path_rate, layer_scale_init_value
):
    """Raises a ValueError naming the first bad builder argument; returns (depths, dims)."""
    depths, dims = validate_architecture(depths, dims, layer_scale_init_value)
    validate_options(include_top, pooling, classes, drop_path_rate)
    validate_weights(weights)
    return depths, dims


def _validate_input_shape(shape, data_format, min_size=MIN_INPUT_SIZE):
    """``shape`` excludes the batch axis. Raises a ValueError naming what is wrong."""
    if len(shape) != 3:
        raise ValueError(f"ConvNeXt takes images of rank 3 (H, W, C) per sample, got {shape}")
    if data_format == "channels_first":
        channels, spatial = shape[0], shape[1:]
    else:
        channels, spatial = shape[-1], shape[:2]
    if channels is not None and channels < 1:
        raise ValueError(
            f"ConvNeXt takes images with at least 1 channel, got input shape {tuple(shape)} "
            f"(data_format={data_format!r})"
        )
    for size in spatial:
        if size is not None and size < min_size:
            raise ValueError(
                f"ConvNeXt needs images of at least {min_size}x{min_size} pixels "
                f"(the network divides the size by {min_size}), got input shape "
                f"{tuple(shape)}"
            )


def make_input(input_tensor, input_shape, data_format, min_size=MIN_INPUT_SIZE):
    """(the model's input tensor, the user's tensor or None), with the input shape checked
    (each side at least ``min_size``, the network's total stride)."""
    if input_shape is None:
        input_shape = (3, None, None) if data_format == "channels_first" else (None, None, 3)
    input_shape = tuple(input_shape)
    if input_tensor is None:
        _validate_input_shape(input_shape, data_format, min_size)
        return keras.Input(shape=input_shape, name="pixels"), None
    if not keras.backend.is_keras_tensor(input_tensor):
        input_tensor = keras.Input(tensor=input_tensor, shape=input_shape, name="pixels")
    _validate_input_shape(tuple(input_tensor.shape[1:]), data_format, min_size)
    return input_tensor, input_tensor


def _channels(inputs, data_format):
    return inputs.shape[1 if data_format == "channels_first" else -1]


def normalization_statistics(include_preprocessing, channels):
    """``(mean, std)`` of the ``preprocessing`` layer for ``channels`` input channels, or None
    without one. ``True``: ImageNet's RGB statistics for 3 channels (or an unknown count), their
    means for 1 (gray), and for other counts none, with a warning (as keras.applications);
    ``(mean, std)``: those, one value per channel; ``False``: none."""
    if not isinstance(include_preprocessing, (tuple, list)):
        if not include_preprocessing:
            return None
        if channels in (None, 3):
            return IMAGENET_MEAN, IMAGENET_STD
        if channels == 1:
            return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
        # keras.applications' rule for other channel counts: no normalization in the model
        warnings.warn(
            f"include_preprocessing=True normalizes RGB (3 channels) or gray (1 channel) images "
            f"with ImageNet's statistics; the model takes {channels}-channel input as it is "
            f"(normalize it yourself, or pass include_preprocessing=(mean, std) with {channels} "
            "values each)",
            stacklevel=4,
        )
        return None
    try:
        mean, std = include_preprocessing
        mean, std = tuple(float(m) for m in mean), tuple(float(v) for v in std)
    except (TypeError, ValueError):
        raise ValueError(
            f"include_preprocessing must be True, False or (mean, std), got "
            f"{include_preprocessing!r}"
        ) from None
    if channels is not None and not len(mean) == len(std) == channels:
        raise ValueError(
            f"include_preprocessing=(mean, std) needs {channels} values each (one per input "
            f"channel), got {len(mean)} and {len(std)}"
        )
    return mean, std


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
        x = keras.layers.GlobalAveragePooling2D(data_format=data_format, name=AVG_POOL)(x)
        head_dtype = _head_dtype()
        if head_norm:
            x = keras.layers.LayerNormalization(
                epsilon=LAYER_NORM_EPSILON, name=HEAD_NORM, dtype=head_dtype
            )(x)
        return keras.layers.Dense(
            classes,
            activation=classifier_activation,
            kernel_initializer=conv_initializer(),
            name=PREDICTIONS,
            dtype=head_dtype,
        )(x)
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(data_format=data_format, name=AVG_POOL)(x)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(data_format=data_format, name=MAX_POOL)(x)
    return x


def functional_model(
    depths,
    *,
    stem,
    downsample,
    block,
    head_norm=True,
    min_size=MIN_INPUT_SIZE,
    model_name="convnext",
    include_top=True,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    include_preprocessing=True,
    drop_path_rate=0.0,
    seed=None,
    remat=False,
    name=None,
):
    """input -> preprocessing -> ``stem`` -> stages -> head, as a ``keras.Model``.

    ``stem(x, data_format)`` and ``downsample(x, stage, data_format)`` (before stages 1, 2, 3)
    return the next tensor; ``block(x, stage, block, drop_path_rate=, seed=, data_format=,
    name=)`` builds block ``block`` of ``stage`` under its architecture name. Block seeds are
    ``seed + index`` over the whole network, so stochastic depth is reproducible per block.
    The other arguments are the model options every constructor takes (``ConvNeXt``'s).
    ``remat=True`` makes every block recompute its inside in the backward pass (``keras.remat``;
    ``ConvNeXtBlock(remat=True)``): training keeps only each block's input (less activation
    memory, about one more forward pass of time); the weights are unchanged.
    """
    validate_options(include_top, pooling, classes, drop_path_rate)
    if not isinstance(remat, bool):
        raise ValueError(f"remat must be True or False, got {remat!r}")
    data_format = keras.config.image_data_format()
    inputs, user_tensor = make_input(input_tensor, input_shape, data_format, min_size)
    x = inputs
    statistics = normalization_statistics(include_preprocessing, _channels(inputs, data_format))
    if statistics is not None:
        x = ImageNormalization(*statistics, data_format=data_format, name=PREPROCESSING)(x)
    x = stem(x, data_format)
    rates = drop_path_schedule(depths, drop_path_rate)
    index = 0
    for stage, depth in enumerate(depths):
        if stage > 0:
            x = downsample(x, stage, data_format)
        for j in range(depth):
            x = block(
                x, stage, j,
                drop_path_rate=rates[index],
                seed=None if seed is None else seed + index,
                data_format=data_format,
                name=block_name(stage, j),
                **({"remat": True} if remat else {}),
            )
            index += 1
    x = classification_head(
        x,
        include_top=include_top,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        data_format=data_format,
        head_norm=head_norm,
    )
    model_inputs = keras.utils.get_source_inputs(user_tensor) if user_tensor is not None else inputs
    return keras.Model(model_inputs, x, name=name or model_name)


# The keyword arguments of ``functional_model`` that every public constructor passes through.
MODEL_OPTIONS = [
    p for name, p in inspect.signature(functional_model).parameters.items()
    if name not in ("depths", "stem", "downsample", "block", "head_norm", "min_size")
]


def takes_model_options(func):
    """Gives ``func(..., **options)`` a signature that lists the model options it forwards to
    ``functional_model``, so ``help()``, ``inspect.signature`` and IDEs show them."""
    signature = inspect.signature(func)
    own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    names = {p.name for p in own}
    func.__signature__ = signature.replace(
        parameters=own + [p for p in MODEL_OPTIONS if p.name not in names])
    return func


@takes_model_options
def convnext_graph(
    depths, dims, *, layer_scale_init_value=1e-6, kernel_size=7, use_grn=False,
    stem_patch_size=4, **options
):
    """ConvNeXt's graph (arguments as ``keras_convnext.ConvNeXt``'s, without ``weights``):
    the patchify stem, LayerNorm + 2x2/2 downsampling, ``ConvNeXtBlock`` stages (ConvNeXt V2's
    with ``use_grn=True`` and no LayerScale)."""
    depths, dims = validate_architecture(depths, dims, layer_scale_init_value)
    if isinstance(stem_patch_size, bool) or not isinstance(stem_patch_size, int) \
            or stem_patch_size < 1:
        raise ValueError(f"stem_patch_size must be a positive integer, got {stem_patch_size!r}")
    options.setdefault("min_size", 8 * stem_patch_size)

    def stem(x, data_format):
        return Stem(dims[0], patch_size=stem_patch_size, data_format=data_format, name=STEM)(x)

    def downsample(x, stage, data_format):
        return Downsample(dims[stage], data_format=data_format, name=downsample_name(stage))(x)

    def block(x, stage, j, **common):
        return ConvNeXtBlock(
            dims[stage], kernel_size=kernel_size, layer_scale_init_value=layer_scale_init_value,
            use_grn=use_grn, **common,
        )(x)

    return functional_model(depths, stem=stem, downsample=downsample, block=block, **options)


@takes_model_options
def isotropic_graph(
    depth, dim, *, layer_scale_init_value=None, kernel_size=7, patch_size=16, **options
):
    """Isotropic ConvNeXt's graph (V1 paper, Section 3.3; the official
    ``convnext_isotropic.py``): a ``patch_size`` x ``patch_size`` conv stem with no norm, then
    ``depth`` blocks at constant width ``dim`` (one stage, no downsampling), pooling, norm,
    head."""
    depth, dim = int(depth), int(dim)
    if depth < 1 or dim < 1:
        raise ValueError(f"depth and dim must be positive, got {depth} and {dim}")
    validate_architecture((1,) * NUM_STAGES, (1,) * NUM_STAGES, layer_scale_init_value)

    def stem(x, data_format):
        return Stem(dim, patch_size=patch_size, norm=False, data_format=data_format,
                    name=STEM)(x)

    def block(x, stage, j, **common):
        return ConvNeXtBlock(
            dim, kernel_size=kernel_size, layer_scale_init_value=layer_scale_init_value,
            **common,
        )(x)

    return functional_model((depth,), stem=stem, downsample=None, block=block,
                            min_size=patch_size, **options)
