"""ConvNeXt ("A ConvNet for the 2020s") for Keras 3, on TensorFlow, JAX and PyTorch."""

from keras_convnext.layers import (
    ConvNeXtBlock,
    Downsample,
    ImageNormalization,
    LayerScale,
    StochasticDepth,
    Stem,
)
from keras_convnext.architecture import StageInfo, parse as parse_layer_path
from keras_convnext.model import ConvNeXt, feature_extractor, stages
from keras_convnext.variants import (
    VARIANTS,
    ConvNeXtAtto,
    ConvNeXtBase,
    ConvNeXtFemto,
    ConvNeXtLarge,
    ConvNeXtNano,
    ConvNeXtPico,
    ConvNeXtSmall,
    ConvNeXtTiny,
    ConvNeXtXLarge,
    build,
    get_variant,
)
from keras_convnext.weights import load_weights
from keras_convnext.flops import count_flops, flops_per_stage, params_per_stage
from keras_convnext import roadmap

__version__ = "0.1.0"
