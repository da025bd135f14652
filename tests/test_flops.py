"""count_flops counts the paper's way (conv and dense multiply-accumulates, batch 1) from the model.

Small models are checked against FLOPs computed by hand on every backend; ConvNeXt-T at 224 px
(a full-size model, slow to initialize) is checked once, in the tensorflow pass: the count is a
property of the architecture, and the small models show it is the same on every backend.
"""

import keras
import pytest
from conftest import BACKEND

from keras_convnext import ConvNeXtBlock, ConvNeXtTiny, LayerScale
from keras_convnext.flops import (
    count_flops,
    flops_by_layer,
    flops_per_stage,
    params_per_stage,
)

# Constant initializers: JAX compiles a random initializer per weight shape, and the values do not
# matter for counting.
Z = {"kernel_initializer": "zeros"}


def _model(input_shape, *layers):
    inputs = keras.Input(input_shape)
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x)


@pytest.mark.parametrize(
    "input_shape, layer, expected",
    [
        # H_out * W_out * C_out * (kh * kw * C_in / groups)
        ((8, 8, 3), keras.layers.Conv2D(4, 3, padding="same", **Z), 8 * 8 * 4 * 3 * 3 * 3),
        ((9, 9, 3), keras.layers.Conv2D(5, 3, strides=2, **Z), 4 * 4 * 5 * 3 * 3 * 3),
        ((6, 6, 4), keras.layers.Conv2D(8, 3, groups=2, **Z), 4 * 4 * 8 * 3 * 3 * 2),
        ((8, 8, 6), keras.layers.Conv2D(6, 1, groups=6, **Z), 8 * 8 * 6 * 1),
        (
            (3, 8, 8),
            keras.layers.Conv2D(4, 3, padding="same", data_format="channels_first", **Z),
            8 * 8 * 4 * 3 * 3 * 3,
        ),
        ((10, 2), keras.layers.Conv1D(4, 3, **Z), 8 * 4 * 3 * 2),
        ((4, 4, 4, 2), keras.layers.Conv3D(3, 2, **Z), 3 * 3 * 3 * 3 * 2 * 2 * 2 * 2),
        # depthwise: H_out * W_out * C * multiplier * kh * kw
        (
            (5, 5, 3),
            keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2,
                                         depthwise_initializer="zeros"),
            5 * 5 * 6 * 3 * 3,
        ),
        (
            (7, 7, 8),
            keras.layers.DepthwiseConv2D(7, strides=2, padding="same",
                                         depthwise_initializer="zeros"),
            4 * 4 * 8 * 7 * 7,
        ),
        # separable: the depthwise part plus a 1x1 conv
        (
            (5, 5, 3),
            keras.layers.SeparableConv2D(7, 3, padding="same", depthwise_initializer="zeros",
                                         pointwise_initializer="zeros"),
            5 * 5 * 3 * 3 * 3 + 5 * 5 * 3 * 7,
        ),
        (
            (3, 5, 5),
            keras.layers.SeparableConv2D(7, 3, padding="same", data_format="channels_first",
                                         depthwise_initializer="zeros",
                                         pointwise_initializer="zeros"),
            5 * 5 * 3 * 3 * 3 + 5 * 5 * 3 * 7,
        ),
        # transposed: every input position scatters kh * kw * C_out products per input channel
        ((3, 3, 5), keras.layers.Conv2DTranspose(4, 2, strides=2, **Z), 3 * 3 * 5 * 2 * 2 * 4),
        # dense: every leading position (here 2 x 3) times C_in * C_out
        ((2, 3, 5), keras.layers.Dense(4, **Z), 2 * 3 * 5 * 4),
        ((16,), keras.layers.Dense(10, **Z), 16 * 10),
        (
            (3, 5),
            keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 7), **Z),
            3 * 5 * 7,
        ),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, keras.layers.Layer) else None,
)
def test_a_single_layer_counts_as_computed_by_hand(input_shape, layer, expected):
    assert count_flops(_model(input_shape, layer)) == expected


def test_biases_norms_activations_pooling_and_layer_scale_are_not_counted():
    model = _model(
        (6, 6, 4),
        keras.layers.BatchNormalization(),
        keras.layers.LayerNormalization(),
        keras.layers.Activation("gelu"),
        LayerScale(),
        keras.layers.MaxPooling2D(2),
        keras.layers.GlobalAveragePooling2D(),
    )
    assert count_flops(model) == 0
    with_bias = _model((16,), keras.layers.Dense(10, use_bias=True, **Z))
    assert count_flops(with_bias) == 16 * 10


def test_a_stack_adds_up_and_is_reported_per_layer():
    model = _model(
        (8, 8, 3),
        keras.layers.Conv2D(4, 4, strides=4, name="stem", **Z),  # 2 x 2 x 4 x 48
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.Conv2D(6, 3, padding="same", name="conv", **Z),  # 2 x 2 x 6 x 36
        keras.layers.GlobalAveragePooling2D(name="pool"),
        keras.layers.Dense(5, name="fc", **Z),  # 6 x 5
    )
    per_layer = flops_by_layer(model)
    assert per_layer["stem"] == 2 * 2 * 4 * 48
    assert per_layer["conv"] == 2 * 2 * 6 * 36
    assert per_layer["fc"] == 6 * 5
    assert per_layer["bn"] == per_layer["pool"] == 0
    assert count_flops(model) == sum(per_layer.values())


def test_nested_sub_layers_are_counted_where_the_parent_calls_them():
    # ConvNeXtBlock's dwconv/pwconv1/pwconv2 are not in model.layers; they run on (H, W, C),
    # (H, W, C) and (H, W, 4C).
    h, w, c = 6, 5, 8
    model = _model((h, w, c), ConvNeXtBlock(c, name="block"))
    expected = h * w * c * 7 * 7 + h * w * c * 4 * c + h * w * 4 * c * c
    assert count_flops(model) == expected
    assert flops_by_layer(model)["block"] == expected


def test_a_shared_layer_is_counted_once_per_call():
    dense = keras.layers.Dense(4, **Z)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, dense(dense(inputs)))
    assert count_flops(model) == 2 * 4 * 4


def test_sequential_and_nested_models_count_the_same():
    def layers():
        return [keras.layers.Conv2D(4, 3, **Z), keras.layers.Flatten(), keras.layers.Dense(2, **Z)]

    expected = 4 * 4 * 4 * 27 + 64 * 2
    sequential = keras.Sequential([keras.Input((6, 6, 3)), *layers()])
    assert count_flops(sequential) == expected
    outer = _model((6, 6, 3), sequential)
    assert count_flops(outer) == expected


def test_the_input_size_must_be_known():
    model = _model((None, None, 3), keras.layers.Conv2D(4, 3, padding="same", **Z))
    with pytest.raises(ValueError, match="input_shape"):
        count_flops(model)
    small = count_flops(model, input_shape=(8, 8, 3))
    assert small == 8 * 8 * 4 * 27
    assert count_flops(model, input_shape=(16, 16, 3)) == 4 * small


class _Scale(keras.layers.Layer):
    """A custom layer with weights that count_flops has no rule for."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.w


def test_an_unknown_layer_with_weights_is_an_error_unless_a_counter_is_given():
    model = _model((4, 4, 3), _Scale(name="mystery"))
    with pytest.raises(ValueError, match="mystery"):
        count_flops(model)

    def scale_counter(layer, input_shapes, output_shape):
        assert input_shapes == [(1, 4, 4, 3)] and output_shape == (1, 4, 4, 3)
        return 48

    assert count_flops(model, counters={_Scale: scale_counter}) == 48


def test_params_per_stage_groups_by_layer_names():
    def block(name):
        return keras.layers.Dense(4, name=name, **Z)

    model = _model(
        (4,),
        keras.layers.Dense(4, name="stem", **Z),
        block("stage_0_block_0"),
        block("stage_1_downsample"),
        block("stage_1_block_0"),
        keras.layers.Dense(2, name="predictions", **Z),
    )
    assert params_per_stage(model) == {"stem": 20, "stage_0": 20, "stage_1": 40, "head": 10}
    assert sum(params_per_stage(model).values()) == model.count_params()
    assert flops_per_stage(model) == {"stem": 16, "stage_0": 16, "stage_1": 32, "head": 8}


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="a full-size model at 224 px; the count does not depend on the backend",
)
def test_convnext_tiny_is_4_456_gflops_as_counted_by_fvcore_without_norms():
    model = ConvNeXtTiny()
    flops = count_flops(model, input_shape=(224, 224, 3))
    assert abs(flops / 1e9 - 4.456) <= 0.005
    assert flops == 4_455_531_264
    stages = flops_per_stage(model, input_shape=(224, 224, 3))
    assert sum(stages.values()) == flops
    # stem 4x4/4 conv: 56 * 56 * 96 * 48; head: 768 * 1000
    assert stages["stem"] == 56 * 56 * 96 * 48 and stages["head"] == 768 * 1000
    params = params_per_stage(model)
    assert sum(params.values()) == model.count_params() == 28_589_128
    assert params["stage_2"] > params["stage_1"] > params["stage_0"]
