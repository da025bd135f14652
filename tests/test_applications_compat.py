"""A drop-in for keras.applications: every check that Keras' own
``keras/src/applications/applications_test.py`` (Keras 3.15) makes of its ConvNeXt models, made of
every family here (V1, V2, isotropic) on every backend and in both data formats; any number of
input channels, with pretrained weights adapted as timm adapts them; ``preprocess_input`` and
``decode_predictions`` at the top level with keras.applications' signatures."""

import warnings

import keras
import numpy as np
import pytest

import keras_convnext
import weights_references as R
from keras_convnext import roadmap
from keras_convnext.weights import load_weights

# (constructor, channels of the last feature map); the smallest of each family
APPS = [(keras_convnext.ConvNeXtAtto, 320), (keras_convnext.ConvNeXtV2Atto, 320),
        (keras_convnext.ConvNeXtIsotropicSmall, 384)]
FORMATS = ["channels_last", "channels_first"]
IDS = [app.__name__ for app, _ in APPS]


@pytest.fixture(params=FORMATS)
def data_format(request):
    keras.config.set_image_data_format(request.param)
    yield request.param
    keras.config.set_image_data_format("channels_last")


def _shape(data_format, channels, size=None):
    return (channels, size, size) if data_format == "channels_first" else (size, size, channels)


@pytest.mark.filterwarnings("ignore:include_preprocessing=True normalizes")
@pytest.mark.parametrize("app, last_dim", APPS, ids=IDS)
def test_notop_variable_input_channels(app, last_dim, data_format):
    expected = [None, last_dim, None, None] if data_format == "channels_first" else [
        None, None, None, last_dim]
    for channels in (1, 4):
        model = app(weights=None, include_top=False, input_shape=_shape(data_format, channels))
        assert list(model.outputs[0].shape) == expected


@pytest.mark.parametrize("app, last_dim", APPS, ids=IDS)
def test_notop_custom_input_shape(app, last_dim, data_format):
    model = app(weights=None, include_top=False, input_shape=_shape(data_format, 3, 123))
    axis = 1 if data_format == "channels_first" else -1
    assert list(model.outputs[0].shape)[axis] == last_dim


@pytest.mark.parametrize("app, last_dim", APPS, ids=IDS)
def test_notop_custom_input_tensor_of_4_channels_through_a_conv(app, last_dim, data_format):
    inputs = keras.Input(shape=_shape(data_format, 4, 200), name="custom_input")
    x = keras.layers.Conv2D(3, (2, 2), padding="valid", strides=(2, 2))(inputs)
    model = app(weights=None, include_top=False, input_tensor=x)
    axis = 1 if data_format == "channels_first" else -1
    assert list(model.outputs[0].shape)[axis] == last_dim
    assert model.inputs[0].name == inputs.name  # the source input, not the conv's output


@pytest.mark.parametrize("app, last_dim", APPS, ids=IDS)
def test_pooling(app, last_dim, data_format):
    model = app(weights=None, include_top=False, pooling="max")
    assert list(model.outputs[0].shape) == [None, last_dim]


@pytest.mark.parametrize("app, last_dim", APPS, ids=IDS)
def test_classifier_activation(app, last_dim):
    model = app(weights=None, include_top=True, classifier_activation="softmax")
    assert model.layers[-1].activation.__name__ == "softmax"


@pytest.mark.parametrize("app, last_dim", APPS, ids=IDS)
def test_base_preprocess_predict_decode_and_serialization(app, last_dim):
    """keras.applications' base test, offline: the classifier is set so that class 386
    (African elephant) wins, and preprocess_input -> predict -> decode_predictions name it."""
    model = app(weights=None, input_shape=(64, 64, 3))
    head = model.get_layer("predictions")
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in head.weights)
    bias = np.zeros_like(bias)
    bias[386] = 50.0
    head.set_weights([np.zeros_like(kernel), bias])
    x = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    x = keras_convnext.preprocess_input(x)
    preds = model.predict(x, verbose=0)
    decoded = keras_convnext.decode_predictions(preds)
    assert len(decoded) == 1 and len(decoded[0]) == 5
    wnid, name, score = decoded[0][0]
    assert (wnid, name) == ("n02504458", "African_elephant") and score > 0.99
    config = keras.saving.serialize_keras_object(model)
    reconstructed = keras.saving.deserialize_keras_object(config)
    assert len(reconstructed.weights) == len(model.weights)


def test_preprocess_input_is_the_identity_as_in_keras_applications():
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    assert keras_convnext.preprocess_input(x) is x
    assert keras_convnext.preprocess_input(x, data_format="channels_last") is x
    with pytest.raises(ValueError, match=r"\(N, 1000\)"):
        keras_convnext.decode_predictions(np.zeros((2, 10)))


# ------------------------------------------------------------------- channels and weights


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_any_channel_count_on_the_roadmap_too(channels):
    model = roadmap.build("resnet50", depths=(1, 1, 1, 1), input_shape=(32, 32, channels),
                          include_preprocessing=channels == 1, classes=3)
    x = np.zeros((1, 32, 32, channels), "float32")
    assert model.predict(x, verbose=0).shape == (1, 3)


def test_preprocessing_rule_for_other_channel_counts():
    gray = keras_convnext.ConvNeXtAtto(input_shape=(32, 32, 1))
    layer = gray.get_layer("preprocessing")
    assert layer.mean == pytest.approx((np.mean([0.485, 0.456, 0.406]),))
    assert layer.std == pytest.approx((np.mean([0.229, 0.224, 0.225]),))
    with pytest.warns(UserWarning, match="takes 4-channel input as it is"):
        plain = keras_convnext.ConvNeXtAtto(input_shape=(32, 32, 4))  # as keras.applications
    assert "preprocessing" not in [layer.name for layer in plain.layers]
    four = keras_convnext.ConvNeXtAtto(
        input_shape=(32, 32, 4), include_preprocessing=((0.5,) * 4, (0.25,) * 4))
    assert four.get_layer("preprocessing").std == (0.25,) * 4
    with pytest.raises(ValueError, match="needs 4 values each"):
        keras_convnext.ConvNeXtAtto(input_shape=(32, 32, 4),
                                    include_preprocessing=((0.5,) * 3, (0.25,) * 3))
    assert "preprocessing" not in [layer.name for layer in keras_convnext.ConvNeXtAtto(
        input_shape=(32, 32, 4), include_preprocessing=False).layers]
    with pytest.raises(ValueError, match="at least 1 channel"):
        keras_convnext.ConvNeXtAtto(input_shape=(32, 32, 0))


@pytest.fixture(scope="module")
def refs():
    return R.references()


@pytest.mark.parametrize("channels", [1, 4])
def test_pretrained_weights_into_other_channel_counts_equal_timms_in_chans(refs, channels):
    """A 3-channel checkpoint into a C-channel model: the stem kernel adapted exactly as timm's
    ``adapt_input_conv`` does, with a warning; logits equal timm's own ``in_chans=C`` model."""
    if refs.timm is None:
        pytest.skip("timm is not installed (pip install --no-deps timm)")
    import torch
    from timm.models._manipulate import adapt_input_conv

    state = torch.load(refs.files["timm-linear-mlp-pth"], weights_only=True)
    reference = refs.timm.ConvNeXt(depths=R.DEPTHS, dims=R.DIMS, num_classes=R.CLASSES,
                                   in_chans=channels, ls_init_value=1e-6).eval()
    state = dict(state, **{"stem.0.weight": adapt_input_conv(channels, state["stem.0.weight"])})
    reference.load_state_dict(state, strict=True)
    x = np.random.default_rng(0).normal(size=(2, 64, 64, channels)).astype("float32")
    expected = R.torch_logits(reference, x)
    ours = keras_convnext.ConvNeXt(R.DEPTHS, R.DIMS, classes=R.CLASSES, include_preprocessing=False,
                                   classifier_activation=None, input_shape=(64, 64, channels))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_weights(ours, refs.files["timm-linear-mlp-pth"])
    assert any(f"to the model's {channels} input channel" in str(w.message) for w in caught)
    error = R.relative_error(keras.ops.convert_to_numpy(ours(x)), expected)
    assert error < 1e-4, error


@pytest.mark.parametrize("step", ["resnet50", "depthwise_conv", "layer_norm"])
def test_the_roadmap_takes_any_channels_in_both_data_formats(step, data_format):
    model = roadmap.build(step, depths=(1, 1, 1, 1), widths=(8, 8, 8, 8), stem_width=8,
                          input_shape=_shape(data_format, 4, 32), classes=3,
                          include_preprocessing=False)
    x = np.random.default_rng(0).uniform(0, 1, (1,) + _shape(data_format, 4, 32))
    assert model.predict(x.astype("float32"), verbose=0).shape == (1, 3)
