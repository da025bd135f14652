"""ConvNeXt ("A ConvNet for the 2020s") for Keras 3, on TensorFlow, JAX and PyTorch."""

from keras_convnext import cli as _cli

__version__ = "0.1.0"

# A command of the package started with --help prints it and exits before any model is built:
# Keras (and TensorFlow with it) is not imported. A command silences TensorFlow's start-up
# logs before Keras imports it (keras_convnext.cli).
if _cli.help_only():
    from keras_convnext.architecture import ALL_VARIANTS, get_variant  # noqa: F401
else:
    if _cli.command() is not None:
        _cli.quiet_start()
    from keras_convnext.layers import (
        GRN,
        ConvNeXtBlock,
        Downsample,
        ImageNormalization,
        LayerScale,
        StochasticDepth,
        Stem,
    )
    from keras_convnext.architecture import StageInfo, parse as parse_layer_path
    from keras_convnext.model import (
        ConvNeXt,
        ConvNeXtIsotropic,
        ConvNeXtV2,
        feature_extractor,
        stages,
    )
    from keras_convnext.variants import (  # every family's constructors
        ALL_VARIANTS,
        ISOTROPIC_VARIANTS,
        V2_VARIANTS,
        VARIANTS,
        ConvNeXtAtto,
        ConvNeXtBase,
        ConvNeXtFemto,
        ConvNeXtIsotropicBase,
        ConvNeXtIsotropicLarge,
        ConvNeXtIsotropicSmall,
        ConvNeXtLarge,
        ConvNeXtNano,
        ConvNeXtPico,
        ConvNeXtSmall,
        ConvNeXtTiny,
        ConvNeXtV2Atto,
        ConvNeXtV2Base,
        ConvNeXtV2Femto,
        ConvNeXtV2Huge,
        ConvNeXtV2Large,
        ConvNeXtV2Nano,
        ConvNeXtV2Pico,
        ConvNeXtV2Tiny,
        ConvNeXtXLarge,
        build,
        get_variant,
    )
    from keras_convnext.weights import load_weights
    from keras_convnext.imagenet import keras_decode_predictions as decode_predictions
    from keras_convnext.imagenet import preprocess_input
    from keras_convnext.flops import count_flops, flops_per_stage, params_per_stage
    from keras_convnext import roadmap
    from keras_convnext import distribution
