"""The layers ConvNeXt is made of: LayerScale, StochasticDepth, the block, the stem, downsampling.

Every layer is registered for serialization under the package name ``keras_convnext`` so a
``.keras`` file round-trips with no ``custom_objects`` (after ``import keras_convnext``), on any
backend. Weight shapes and the order of operations follow the reference implementation
(facebookresearch/ConvNeXt), so published checkpoints map onto these layers tensor for tensor.

Sub-layer names inside a block (``dwconv``, ``norm``, ``pwconv1``, ``pwconv2``, ``layer_scale``,
``drop_path``) are the reference implementation's, so ``stage_2_block_5/dwconv/kernel`` is the
official ``stages.2.5.dwconv.weight``.
"""

import keras
from keras import ops

from keras_convnext.dispatch import (
    block_mlp, conv_layer, dense_layer, depthwise_conv_layer, grn, norm_layer, truncated_normal,
)

PACKAGE = "keras_convnext"
LAYER_NORM_EPSILON = 1e-6


def conv_initializer():
    # The reference initializes every conv and linear weight with trunc_normal(std=0.02).
    return truncated_normal(stddev=0.02)


def channel_axis(data_format):
    return 1 if data_format == "channels_first" else -1


def _to_channels_last(x, data_format):
    return ops.transpose(x, (0, 2, 3, 1)) if data_format == "channels_first" else x


def _to_data_format(x, data_format):
    return ops.transpose(x, (0, 3, 1, 2)) if data_format == "channels_first" else x


def channel_norm(norm, x, data_format):
    """LayerNorm over channels. With channels_first it normalizes a transposed NHWC view
    (Keras' torch backend mis-handles LayerNormalization(axis=1) on 4D tensors)."""
    return _to_data_format(norm(_to_channels_last(x, data_format)), data_format)


def check_data_format(data_format):
    data_format = data_format or keras.config.image_data_format()
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(
            f"data_format must be 'channels_last' or 'channels_first', got {data_format!r}"
        )
    return data_format


@keras.saving.register_keras_serializable(package=PACKAGE)
class LayerScale(keras.layers.Layer):
    """Multiplies the last axis by a learned per-channel scale (``gamma``), from CaiT.

    ConvNeXt initializes gamma to a tiny value (1e-6) so that every residual block starts
    close to the identity. The layer itself always scales; to disable LayerScale, a block is
    built with ``layer_scale_init_value=None`` or ``0`` and simply has no LayerScale layer.
    """

    def __init__(self, init_value=1e-6, **kwargs):
        super().__init__(**kwargs)
        if init_value is None or float(init_value) <= 0.0:
            raise ValueError(
                f"LayerScale init_value must be a positive number, got {init_value!r}; "
                "to disable LayerScale, build the block with layer_scale_init_value=None"
            )
        self.init_value = float(init_value)

    def build(self, input_shape):
        self.gamma = self.add_weight(
            name="gamma",
            shape=(input_shape[-1],),
            initializer=keras.initializers.Constant(self.init_value),
            trainable=True,
        )

    def call(self, inputs):
        return inputs * ops.cast(self.gamma, inputs.dtype)

    def get_config(self):
        return {**super().get_config(), "init_value": self.init_value}


@keras.saving.register_keras_serializable(package=PACKAGE)
class StochasticDepth(keras.layers.Layer):
    """Drop path: in training, zeroes whole samples of a residual branch with probability ``rate``
    and scales the kept ones by ``1 / (1 - rate)``; the identity at inference.

    Random numbers come from a ``keras.random.SeedGenerator`` so that the layer works inside a
    traced (JAX, XLA) training step and is reproducible given ``seed``.
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        rate = float(rate)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"StochasticDepth rate must be in [0, 1), got {rate}")
        self.rate = rate
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if rate > 0 else None
        # No shape-dependent state: built now, so that a block rebuilt on loading (which does
        # not call this layer) leaves no unbuilt layer, which model.quantize("int8") refuses.
        self.built = True

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        noise = keras.random.uniform(shape, seed=self.seed_generator, dtype=inputs.dtype)
        mask = ops.floor(keep + noise)
        return inputs * (mask / keep)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.saving.register_keras_serializable(package=PACKAGE)
class GRN(keras.layers.Layer):
    """Global Response Normalization (ConvNeXt V2), per sample over the spatial axes:
    ``G = ||X||_2`` over (H, W) per channel, ``N = G / (mean over channels of G + eps)``,
    ``gamma * (X * N) + beta + X``. ``gamma`` and ``beta`` start at zero, so GRN starts as the
    identity. The norm is computed in float32 whatever the compute dtype: a squared norm over a
    feature map overflows float16 and loses most of its digits in bfloat16.
    """

    def __init__(self, epsilon=1e-6, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)
        self.data_format = check_data_format(data_format)

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"GRN takes 4-D feature maps (N, H, W, C) or (N, C, H, W), got shape "
                f"{tuple(input_shape)}"
            )
        channels = input_shape[channel_axis(self.data_format)]
        self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="zeros")
        self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros")

    def call(self, inputs, overwrite_inputs=False):
        """``overwrite_inputs``: the caller will not use ``inputs`` again, so a backend may
        write the output over them at inference (the block's hidden activation)."""
        return grn(inputs, self.gamma, self.beta, self.epsilon, self.data_format,
                   overwrite_inputs=overwrite_inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon, "data_format": self.data_format}


def _sublayer_quantization(layer, sublayers):
    """``{"dtype": ...}`` for ``layer``'s config once ``model.quantize`` has quantized some of
    its ``sublayers`` (which the layer creates itself, with its own dtype policy): a
    ``DTypePolicyMap`` with the layer's policy as default and each quantized sublayer's policy
    under ``.*/<name>``, so that a loaded layer builds them quantized (Keras-hub's way); {}
    when nothing is quantized or the policy is already such a map."""
    if isinstance(layer._dtype_policy, keras.dtype_policies.DTypePolicyMap):
        return {}
    quantized = [sub for sub in sublayers if sub.quantization_mode is not None]
    if not quantized:
        return {}
    policies = keras.dtype_policies.DTypePolicyMap(default_policy=layer.dtype_policy)
    for sub in quantized:
        policies[f".*/{sub.name}"] = sub.dtype_policy
    return {"dtype": keras.dtype_policies.serialize(policies)}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConvNeXtBlock(keras.layers.Layer):
    """The ConvNeXt block: 7x7 depthwise conv -> LayerNorm -> 1x1 (4x expansion) -> GELU ->
    1x1 -> LayerScale -> stochastic depth -> + input. ConvNeXt V2's block (``use_grn=True``,
    ``layer_scale_init_value=None``) has GRN after the GELU and no LayerScale.

    The two 1x1 convs are Dense layers on the channel axis, as in the reference (``pwconv1``,
    ``pwconv2``). With ``data_format="channels_first"`` the depthwise conv runs on NCHW and the
    channel MLP on a transposed NHWC view, exactly like the reference's permutes.
    """

    def __init__(
        self,
        dim,
        kernel_size=7,
        mlp_ratio=4,
        layer_scale_init_value=1e-6,
        drop_path_rate=0.0,
        seed=None,
        data_format=None,
        use_grn=False,
        remat=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.use_grn = bool(use_grn)
        self.remat = bool(remat)
        self.kernel_size = int(kernel_size)
        self.mlp_ratio = mlp_ratio
        self.layer_scale_init_value = layer_scale_init_value
        self.drop_path_rate = float(drop_path_rate)
        self.seed = seed
        self.data_format = check_data_format(data_format)
        common = {"dtype": self.dtype_policy}
        self.dwconv = depthwise_conv_layer(
            kernel_size=self.kernel_size,
            padding="same",
            data_format=self.data_format,
            depthwise_initializer=conv_initializer(),
            name="dwconv",
            **common,
        )
        self.norm = norm_layer(
            epsilon=LAYER_NORM_EPSILON, name="norm", **common
        )
        hidden = int(mlp_ratio * self.dim)
        # GELU (exact) belongs to pwconv1 so that a backend can fuse it into the GEMM.
        self.pwconv1 = dense_layer(
            hidden, activation="gelu", kernel_initializer=conv_initializer(), name="pwconv1",
            **common
        )
        # GRN normalizes the hidden activation of a channels-last view (the MLP's layout).
        self.grn = GRN(data_format="channels_last", name="grn", **common) if use_grn else None
        self.pwconv2 = dense_layer(
            self.dim, kernel_initializer=conv_initializer(), name="pwconv2", **common
        )
        self.layer_scale = (
            LayerScale(layer_scale_init_value, name="layer_scale", **common)
            if layer_scale_init_value
            else None
        )
        self.drop_path = (
            StochasticDepth(self.drop_path_rate, seed=seed, name="drop_path", **common)
            if self.drop_path_rate > 0
            else None
        )

    def build(self, input_shape):
        channels = input_shape[channel_axis(self.data_format)]
        if channels is not None and channels != self.dim:
            raise ValueError(
                f"{self.name}: expected {self.dim} input channels, got input shape {input_shape}"
            )
        self.dwconv.build(input_shape)
        channels_last = (None, None, None, self.dim)
        self.norm.build(channels_last)
        self.pwconv1.build(channels_last)
        hidden = channels_last[:-1] + (self.pwconv1.units,)
        if self.grn is not None:
            self.grn.build(hidden)
        self.pwconv2.build(hidden)
        if self.layer_scale is not None:
            self.layer_scale.build(channels_last)

    def call(self, inputs, training=None, visible=None):
        """``visible``: FCMAE's masked dense encoding (``keras_convnext.fcmae``). A 0/1 map
        shaped like ``inputs`` with one channel, 1 at visible positions; ``inputs`` must be
        zero elsewhere. The depthwise conv's output and the GRN's input are zeroed at masked
        positions (so GRN's norms sum over visible positions only) and so is the block's
        output: visible outputs then never depend on masked ones, as in the sparse original.

        With ``remat`` (training only), the block's inside is recomputed in the backward pass
        (``keras.remat``) instead of kept: only its input stays in memory."""
        if self.remat and training:
            if visible is None:
                return keras.remat(lambda x: self._forward(x, training, None))(inputs)
            return keras.remat(lambda x, v: self._forward(x, training, v))(inputs, visible)
        return self._forward(inputs, training, visible)

    def _forward(self, inputs, training, visible):
        x = self.dwconv(inputs)
        if visible is not None:
            x = x * ops.cast(visible, x.dtype)
            visible = _to_channels_last(visible, self.data_format)
        x = self.norm(_to_channels_last(x, self.data_format))
        if visible is None and self.grn is None:
            mlp = block_mlp(self.pwconv1, self.pwconv2, x)
            if mlp is not None:  # pwconv1, GELU and pwconv2 in one fast path
                return self._end(inputs, mlp, training)
        x = self.pwconv1(x)  # includes the GELU
        if visible is not None:
            x = x * ops.cast(visible, x.dtype)
        if self.grn is not None:
            x = self.grn(x, overwrite_inputs=True)  # pwconv1's output, used by nothing else
        if visible is not None:
            x = self.pwconv2(x) * ops.cast(visible, x.dtype)
            x = _to_data_format(x, self.data_format)
            if self.drop_path is not None:
                x = self.drop_path(x, training=training)
            return inputs + x
        if self.data_format == "channels_last" and not (training and self.drop_path is not None):
            # pwconv2, LayerScale and the shortcut in one call, which a backend may fuse.
            gamma = self.layer_scale.gamma if self.layer_scale is not None else None
            return self.pwconv2(x, residual=inputs, scale=gamma)
        return self._end(inputs, self.pwconv2(x), training)

    def _end(self, inputs, x, training):
        """LayerScale, stochastic depth and the shortcut on pwconv2's output ``x``."""
        if self.layer_scale is not None:
            x = self.layer_scale(x)
        x = _to_data_format(x, self.data_format)
        if self.drop_path is not None:
            x = self.drop_path(x, training=training)
        return inputs + x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            **_sublayer_quantization(self, (self.pwconv1, self.pwconv2)),
            "dim": self.dim,
            "kernel_size": self.kernel_size,
            "mlp_ratio": self.mlp_ratio,
            "layer_scale_init_value": self.layer_scale_init_value,
            "drop_path_rate": self.drop_path_rate,
            "seed": self.seed,
            "data_format": self.data_format,
            "use_grn": self.use_grn,
            "remat": self.remat,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class Stem(keras.layers.Layer):
    """Patchify stem: a 4x4 conv with stride 4 (non-overlapping patches), then LayerNorm.
    Isotropic ConvNeXt's stem is a 16x16/16 conv alone (``patch_size=16, norm=False``)."""

    def __init__(self, dim, patch_size=4, data_format=None, norm=True, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.patch_size = int(patch_size)
        self.use_norm = bool(norm)
        self.data_format = check_data_format(data_format)
        self.conv = conv_layer(
            self.dim,
            self.patch_size,
            strides=self.patch_size,
            data_format=self.data_format,
            kernel_initializer=conv_initializer(),
            name="conv",
            dtype=self.dtype_policy,
        )
        self.norm = norm_layer(
            epsilon=LAYER_NORM_EPSILON,
            name="norm",
            dtype=self.dtype_policy,
        ) if norm else None

    def build(self, input_shape):
        self.conv.build(input_shape)
        if self.norm is not None:
            self.norm.build((None, None, None, self.dim))

    def call(self, inputs):
        x = self.conv(inputs)
        return x if self.norm is None else channel_norm(self.norm, x, self.data_format)

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "patch_size": self.patch_size,
            "data_format": self.data_format,
            "norm": self.use_norm,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class Downsample(keras.layers.Layer):
    """Separate downsampling between stages: LayerNorm, then a 2x2 conv with stride 2."""

    def __init__(self, dim, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.data_format = check_data_format(data_format)
        self.norm = norm_layer(
            epsilon=LAYER_NORM_EPSILON,
            name="norm",
            dtype=self.dtype_policy,
        )
        self.conv = conv_layer(
            self.dim,
            2,
            strides=2,
            data_format=self.data_format,
            kernel_initializer=conv_initializer(),
            name="conv",
            dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        self.norm.build((None, None, None, input_shape[channel_axis(self.data_format)]))
        self.conv.build(input_shape)

    def call(self, inputs):
        return self.conv(channel_norm(self.norm, inputs, self.data_format))

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "data_format": self.data_format}


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ImageNormalization(keras.layers.Layer):
    """Maps 0-255 images to normalized input: ``(x / 255 - mean) / std`` per channel (ImageNet's
    RGB statistics by default; one value per channel for other images). No weights."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != len(self.std) or not self.mean or min(self.std) <= 0:
            raise ValueError(
                f"ImageNormalization needs one mean and one positive std per channel, got "
                f"mean={self.mean}, std={self.std}"
            )
        self.data_format = check_data_format(data_format)

    def build(self, input_shape):
        channels = input_shape[channel_axis(self.data_format)]
        if channels is not None and channels != len(self.mean):
            raise ValueError(
                f"ImageNormalization has statistics for {len(self.mean)} channels, got input "
                f"shape {tuple(input_shape)}"
            )

    def call(self, inputs):
        shape = (-1, 1, 1) if self.data_format == "channels_first" else (-1,)
        scale = ops.reshape(ops.convert_to_tensor([255.0 * s for s in self.std]), shape)
        offset = ops.reshape(ops.convert_to_tensor([255.0 * m for m in self.mean]), shape)
        x = ops.cast(inputs, self.compute_dtype)
        return (x - ops.cast(offset, x.dtype)) / ops.cast(scale, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "mean": self.mean,
            "std": self.std,
            "data_format": self.data_format,
        }
