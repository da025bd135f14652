"""The one place where model code may pick a backend-specific implementation.

Layers ask this module for an op or layer instead of testing ``keras.backend.backend()``
themselves. Every fast path registered here must give the same numbers as the plain Keras
layer (tests/test_dispatch.py checks this on every backend) and keep the same weights and
serialized form, so checkpoints and ``.keras`` files do not depend on the backend.
"""

import keras


def depthwise_conv_layer(**kwargs):
    """The depthwise conv used by ConvNeXt blocks (weights: ``kernel`` (k, k, C, 1), ``bias`` (C,))."""
    return keras.layers.DepthwiseConv2D(**kwargs)
