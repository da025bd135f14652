"""The residual block of the roadmap's intermediate steps (ResNet-50 -> ... -> ConvNeXt).

One layer covers every block the paper's roadmap passes through: a ResNet bottleneck, its
ResNeXt-style depthwise form, the inverted bottleneck, the depthwise conv moved to the top, larger
kernels, GELU, one activation and one norm per block, LayerNorm. Each option is one argument, so a
roadmap step changes exactly one of them. Blocks that have become exactly ConvNeXt's (same
channels in and out, no stride, every option at its ConvNeXt value) are built by the roadmap as
``keras_convnext.ConvNeXtBlock`` instead, so the final step is ConvNeXt-T layer for layer.

Registered for serialization under ``keras_convnext`` like the layers in ``layers.py``.
"""

import keras
from keras import ops

from keras_convnext.dispatch import conv_layer, depthwise_conv_layer
from keras_convnext.layers import (
    LAYER_NORM_EPSILON,
    PACKAGE,
    LayerScale,
    StochasticDepth,
    channel_axis,
    channel_norm,
    check_data_format,
    conv_initializer,
)

BATCH_NORM_MOMENTUM = 0.9  # PyTorch's 0.1, in Keras' convention
BATCH_NORM_EPSILON = 1e-5

NORMS = ("batch", "layer")
PLACEMENTS = ("every", "one")
ACTIVATIONS = ("relu", "gelu")


def norm_layer(kind, data_format, name, dtype=None):
    """BatchNorm (PyTorch's defaults) over the channel axis, or LayerNorm (eps 1e-6) over the
    last axis; call it through ``apply_norm``, which gives LayerNorm a channels-last view."""
    if kind == "batch":
        return keras.layers.BatchNormalization(
            axis=channel_axis(data_format), momentum=BATCH_NORM_MOMENTUM,
            epsilon=BATCH_NORM_EPSILON, name=name, dtype=dtype,
        )
    if kind == "layer":
        return keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name=name, dtype=dtype)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


def apply_norm(norm, x, data_format, training=None):
    """Normalizes the channels of ``x`` (a tensor or a KerasTensor) with a ``norm_layer``."""
    if isinstance(norm, keras.layers.BatchNormalization):
        return norm(x, training=training)
    return channel_norm(norm, x, data_format)


def activation_fn(name):
    if name == "relu":
        return keras.activations.relu
    if name == "gelu":
        return lambda x: keras.activations.gelu(x, approximate=False)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


@keras.saving.register_keras_serializable(package=PACKAGE)
class RoadmapBlock(keras.layers.Layer):
    """A residual block with three convs: two 1x1 (``pwconv1``: in -> hidden, ``pwconv2``:
    hidden -> filters) and one k x k ``spatial_conv``.

    Args:
        in_channels: channels of the block's input.
        filters: channels of the block's output (ResNet bottleneck: 4x the planes; inverted
            bottleneck: the stage width).
        hidden: channels between the two 1x1 convs (bottleneck: the planes; inverted: 4x width).
        strides: stride of the spatial conv (2 in the first block of stages 2-4 while blocks
            downsample themselves, as in ResNet v1.5).
        kernel_size: the spatial conv's kernel size.
        depthwise: the spatial conv is depthwise (groups = channels) rather than dense.
        spatial_first: the spatial conv comes first and runs on the block's input channels
            (``spatial_conv -> pwconv1 -> pwconv2``); otherwise it sits between the 1x1 convs
            (``pwconv1 -> spatial_conv -> pwconv2``) on ``hidden`` channels.
        activation: "relu" or "gelu".
        activations: "every" (ResNet: after each conv but the last, and after the residual sum)
            or "one" (only after ``pwconv1``, the expanding 1x1 conv).
        norm: "batch" or "layer".
        norms: "every" (after each conv) or "one" (only after the spatial conv).
        layer_scale_init_value: LayerScale at the end of the residual branch; None or 0: none.
        drop_path_rate: stochastic depth of the residual branch.

    When the input and output differ (channels or stride), the shortcut is a 1x1 conv with the
    block's stride followed by a norm (``shortcut_conv``, ``shortcut_norm``), as in ResNet.
    Norm layers are named after the conv they follow (``pwconv1_norm`` ...). A conv followed by
    a BatchNorm has no bias.
    """

    def __init__(
        self,
        in_channels,
        filters,
        hidden,
        strides=1,
        kernel_size=3,
        depthwise=False,
        spatial_first=False,
        activation="relu",
        activations="every",
        norm="batch",
        norms="every",
        layer_scale_init_value=1e-6,
        drop_path_rate=0.0,
        seed=None,
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.in_channels = int(in_channels)
        self.filters = int(filters)
        self.hidden = int(hidden)
        self.strides = int(strides)
        self.kernel_size = int(kernel_size)
        self.depthwise = bool(depthwise)
        self.spatial_first = bool(spatial_first)
        self.activation = _check_choice("activation", activation, ACTIVATIONS)
        self.activations = _check_choice("activations", activations, PLACEMENTS)
        self.norm = _check_choice("norm", norm, NORMS)
        self.norms = _check_choice("norms", norms, PLACEMENTS)
        self.layer_scale_init_value = layer_scale_init_value
        self.drop_path_rate = float(drop_path_rate)
        self.seed = seed
        self.data_format = check_data_format(data_format)
        self._act = activation_fn(self.activation)

        order = ("spatial_conv", "pwconv1") if self.spatial_first else ("pwconv1", "spatial_conv")
        self._order = order + ("pwconv2",)
        self._normed = self._order if self.norms == "every" else ("spatial_conv",)

        def conv(name, **kwargs):
            # A conv right before a BatchNorm has no bias (it would be redundant; torchvision's
            # ResNet-50 has none); before a LayerNorm it keeps one, as in ConvNeXt.
            before_batch_norm = self.norm == "batch" and name in self._normed + ("shortcut_conv",)
            return {
                "data_format": self.data_format,
                "use_bias": not before_batch_norm,
                "dtype": self.dtype_policy,
                "name": name,
                **kwargs,
            }

        spatial = conv("spatial_conv", padding="same", strides=self.strides)
        if self.depthwise:
            self.spatial_conv = depthwise_conv_layer(
                kernel_size=self.kernel_size, depthwise_initializer=conv_initializer(), **spatial
            )
        else:
            self.spatial_conv = conv_layer(
                self.in_channels if self.spatial_first else self.hidden,
                self.kernel_size,
                kernel_initializer=conv_initializer(),
                **spatial,
            )
        self.pwconv1 = conv_layer(
            self.hidden, 1, kernel_initializer=conv_initializer(), **conv("pwconv1")
        )
        self.pwconv2 = conv_layer(
            self.filters, 1, kernel_initializer=conv_initializer(), **conv("pwconv2")
        )
        for name in self._normed:
            layer = norm_layer(self.norm, self.data_format, f"{name}_norm", self.dtype_policy)
            setattr(self, f"{name}_norm", layer)
        # ResNet: an activation after every conv but the last (then one after the sum);
        # Transformer-style: one, after the expanding 1x1 conv.
        self._activated = self._order[:2] if self.activations == "every" else ("pwconv1",)

        self.projects = self.strides != 1 or self.in_channels != self.filters
        if self.projects:
            self.shortcut_conv = conv_layer(
                self.filters, 1, kernel_initializer=conv_initializer(),
                **conv("shortcut_conv", strides=self.strides),
            )
            self.shortcut_norm = norm_layer(
                self.norm, self.data_format, "shortcut_norm", self.dtype_policy
            )
        self.layer_scale = (
            LayerScale(layer_scale_init_value, name="layer_scale", dtype=self.dtype_policy)
            if layer_scale_init_value
            else None
        )
        self.drop_path = (
            StochasticDepth(
                self.drop_path_rate, seed=seed, name="drop_path", dtype=self.dtype_policy
            )
            if self.drop_path_rate > 0
            else None
        )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        axis = channel_axis(self.data_format)
        if input_shape[axis] is not None and input_shape[axis] != self.in_channels:
            raise ValueError(
                f"{self.name}: expected {self.in_channels} input channels, got input shape "
                f"{input_shape}"
            )
        shape = input_shape
        for name in self._order:
            conv = getattr(self, name)
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            if name in self._normed:
                getattr(self, f"{name}_norm").build(self._norm_shape(shape))
        if self.projects:
            self.shortcut_conv.build(input_shape)
            self.shortcut_norm.build(self._norm_shape(shape))
        if self.layer_scale is not None:
            self.layer_scale.build((None, None, None, self.filters))

    def _norm_shape(self, shape):
        if self.norm == "layer" and self.data_format == "channels_first":
            return (shape[0], shape[2], shape[3], shape[1])
        return shape

    def call(self, inputs, training=None):
        x = inputs
        for name in self._order:
            x = getattr(self, name)(x)
            if name in self._normed:
                x = apply_norm(getattr(self, f"{name}_norm"), x, self.data_format, training)
            if name in self._activated:
                x = self._act(x)
        if self.layer_scale is not None:
            if self.data_format == "channels_first":
                x = ops.transpose(self.layer_scale(ops.transpose(x, (0, 2, 3, 1))), (0, 3, 1, 2))
            else:
                x = self.layer_scale(x)
        if self.drop_path is not None:
            x = self.drop_path(x, training=training)
        shortcut = inputs
        if self.projects:
            shortcut = apply_norm(
                self.shortcut_norm, self.shortcut_conv(inputs), self.data_format, training
            )
        x = shortcut + x
        if self.activations == "every":
            x = self._act(x)
        return x

    def compute_output_shape(self, input_shape):
        if self.projects:
            return self.shortcut_conv.compute_output_shape(input_shape)
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "in_channels": self.in_channels,
            "filters": self.filters,
            "hidden": self.hidden,
            "strides": self.strides,
            "kernel_size": self.kernel_size,
            "depthwise": self.depthwise,
            "spatial_first": self.spatial_first,
            "activation": self.activation,
            "activations": self.activations,
            "norm": self.norm,
            "norms": self.norms,
            "layer_scale_init_value": self.layer_scale_init_value,
            "drop_path_rate": self.drop_path_rate,
            "seed": self.seed,
            "data_format": self.data_format,
        }
