"""keras_convnext.hub: ConvNeXt as a keras-hub backbone, classifier and preset format.

Proven against keras-hub itself (its ``from_preset`` dispatch, ``DeepLabV3ImageSegmenter`` and
``RetinaNetObjectDetector`` trained on ``keras_convnext.hub.shapes``), against keras_convnext's
own classifier (same logits for the same weights), and against timm and transformers models
(folders written here by ``timm``'s ``save_for_hf`` and transformers' ``save_pretrained``).
"""

import json

import keras
import numpy as np
import pytest

pytest.importorskip("keras_hub")

import keras_hub  # noqa: E402

import keras_convnext  # noqa: E402
import keras_convnext.hub as hub  # noqa: E402
from keras_convnext.hub.shapes import shapes  # noqa: E402
from keras_convnext.weights import CheckpointError  # noqa: E402
from conftest import BACKEND, run_once_across_backends, run_python  # noqa: E402
import weights_references as refs  # noqa: E402

SMALL = dict(depths=(1, 1, 2, 1), hidden_dims=(16, 24, 32, 40))
SIZE = 64


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _randomize(model, seed=0):
    """Random weights everywhere (LayerScale and GRN far from their inits, which hide blocks)."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        shape = tuple(v.shape)
        if len(shape) >= 2:
            value = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
        else:
            value = (0.0 if v.path.endswith(("bias", "beta")) else 1.0) + 0.2 * rng.normal(
                size=shape)
        v.assign(value.astype("float32"))
    return model


def _pixels(n=2, size=SIZE, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


# ------------------------------------------------------------------------------- packaging


@run_once_across_backends("imports in subprocesses")
def test_keras_hub_is_optional():
    out = run_python(
        "import sys, keras_convnext; print('keras_hub' in sys.modules)\n"
        "sys.modules['keras_hub'] = None\n"
        "try:\n    import keras_convnext.hub\nexcept ImportError as e:\n    print(e)\n",
        "jax",
    ).strip().splitlines()
    assert out[0] == "False"
    assert out[1] == "keras_convnext.hub needs keras-hub: pip install 'keras_convnext[hub]'"


# --------------------------------------------------------------------------------- backbone


def test_backbone_pyramid_variant_and_errors():
    backbone = hub.ConvNeXtBackbone(variant="v2_atto", image_shape=(SIZE, SIZE, 3))
    assert isinstance(backbone, keras_hub.models.FeaturePyramidBackbone)
    assert backbone.use_grn and backbone.layer_scale_init_value is None
    assert backbone.hidden_dims == (40, 80, 160, 320) and backbone.depths == (2, 2, 6, 2)
    shapes_ = {k: tuple(v.shape) for k, v in backbone.pyramid_outputs.items()}
    assert shapes_ == {f"P{i + 2}": (None, SIZE // 2 ** (i + 2), SIZE // 2 ** (i + 2), c)
                       for i, c in enumerate((40, 80, 160, 320))}
    features = keras.Model(backbone.input, backbone.pyramid_outputs)(_pixels(1))
    np.testing.assert_array_equal(_np(features["P5"]), _np(backbone(_pixels(1))))
    # the same layers and names as keras_convnext's own model
    ours = keras_convnext.ConvNeXtV2Atto(include_top=False, include_preprocessing=False,
                                         input_shape=(SIZE, SIZE, 3))
    assert sorted(v.path for v in ours.weights) == sorted(v.path for v in backbone.weights)

    tiny = hub.backbone.resolve_architecture("tiny", None, None, None, "default")
    assert tiny == ((3, 3, 9, 3), (96, 192, 384, 768), False, 1e-6)
    with pytest.raises(ValueError, match="pyramid levels P2, P3, P4, P5 .*not 'P6'"):
        backbone.pyramid_output("P6")
    assert backbone.pyramid_output(3) is backbone.pyramid_outputs["P3"]
    with pytest.raises(ValueError, match="either variant= or depths="):
        hub.ConvNeXtBackbone(depths=(1, 1, 1, 1), variant="atto")
    with pytest.raises(ValueError, match="isotropic ConvNeXt: one stage"):
        hub.ConvNeXtBackbone(variant="isotropic_small")
    with pytest.raises(ValueError, match="needs variant="):
        hub.ConvNeXtBackbone()
    with pytest.raises(ValueError, match="unknown ConvNeXt variant 'gigantic'"):
        hub.ConvNeXtBackbone(variant="gigantic")


def test_config_round_trip_keras_file_and_presets(tmp_path):
    backbone = _randomize(hub.ConvNeXtBackbone(**SMALL, drop_path_rate=0.1, seed=3))
    config = backbone.get_config()
    assert hub.ConvNeXtBackbone.from_config(config).get_config() == config
    pixels = _pixels()
    converter = hub.ConvNeXtImageConverter(image_size=(SIZE, SIZE))
    classifier = hub.ConvNeXtImageClassifier(
        backbone, 5, preprocessor=hub.ConvNeXtImageClassifierPreprocessor(converter),
        activation="softmax")
    expected = _np(classifier.predict(pixels, verbose=0))

    classifier.save(tmp_path / "c.keras")
    loaded = keras.saving.load_model(tmp_path / "c.keras")
    assert type(loaded) is hub.ConvNeXtImageClassifier
    assert type(loaded.backbone) is hub.ConvNeXtBackbone
    assert loaded.backbone.get_config() == config
    np.testing.assert_allclose(_np(loaded.predict(pixels, verbose=0)), expected, atol=1e-6)

    backbone.save_to_preset(str(tmp_path / "backbone"))
    converter.save_to_preset(str(tmp_path / "backbone"))
    again = keras_hub.models.Backbone.from_preset(str(tmp_path / "backbone"))
    assert type(again) is hub.ConvNeXtBackbone
    x = _np(converter(pixels))
    np.testing.assert_allclose(_np(again(x)), _np(backbone(x)), atol=1e-6)

    classifier.save_to_preset(str(tmp_path / "classifier"))
    task = keras_hub.models.ImageClassifier.from_preset(str(tmp_path / "classifier"))
    assert type(task) is hub.ConvNeXtImageClassifier
    assert task.preprocessor.image_converter.crop_pct is None
    np.testing.assert_allclose(_np(task.predict(pixels, verbose=0)), expected, atol=1e-6)
    # a backbone (and converter) preset gives a classifier with a new head
    fresh = keras_hub.models.ImageClassifier.from_preset(str(tmp_path / "backbone"),
                                                         num_classes=3)
    assert type(fresh) is hub.ConvNeXtImageClassifier and fresh.num_classes == 3


# ------------------------------------------------------------------------------- classifier


def _same_logits(variant, size, tmp_path):
    """keras_convnext's classifier and ConvNeXtImageClassifier on the same weights file."""
    ours = _randomize(keras_convnext.build(variant, input_shape=(size, size, 3), classes=7,
                                           classifier_activation=None), seed=1)
    path = str(tmp_path / f"{variant}.weights.h5")
    ours.save_weights(path)
    backbone = hub.ConvNeXtBackbone(variant=variant, image_shape=(size, size, 3))
    classifier = hub.ConvNeXtImageClassifier(
        backbone, 7, preprocessor=hub.ConvNeXtImageClassifierPreprocessor(
            hub.ConvNeXtImageConverter()))
    keras_convnext.load_weights(classifier, path)  # strict: every variable, every tensor
    pixels = _pixels(2, size)
    expected = _np(ours(pixels))
    got = _np(classifier.predict(pixels, verbose=0))
    assert refs.relative_error(got, expected) < 1e-5
    return expected


def test_classifier_logits_equal_keras_convnext_atto(tmp_path):
    _same_logits("atto", SIZE, tmp_path)


@run_once_across_backends("one Tiny check is enough; the graph is the same on every backend")
def test_classifier_logits_equal_keras_convnext_tiny(tmp_path):
    _same_logits("tiny", 32, tmp_path)


def test_classifier_head_options():
    backbone = hub.ConvNeXtBackbone(**SMALL, image_shape=(SIZE, SIZE, 3))
    task = hub.ConvNeXtImageClassifier(backbone, 4, pooling="max", activation="softmax",
                                       head_dtype="float32")
    probs = _np(task(_pixels(2)))
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert task.get_layer("predictions").dtype_policy.name == "float32"
    assert task.get_config()["pooling"] == "max"
    with pytest.raises(ValueError, match="pooling must be 'avg' or 'max'"):
        hub.ConvNeXtImageClassifier(backbone, 4, pooling="token")


def test_image_converter_crop_and_range():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (1, 80, 100, 3)).astype("float32")
    converter = hub.ConvNeXtImageConverter(image_size=(32, 32), crop_pct=0.5,
                                           interpolation="bilinear")
    # the central half of the short side (40 px) of the 80 x 100 image, resized to 32
    crop = image[:, 20:60, 30:70]
    resized = _np(keras.ops.image.resize(crop, (32, 32), interpolation="bilinear"))
    mean, std = np.array(keras_convnext.layers.IMAGENET_MEAN), np.array(
        keras_convnext.layers.IMAGENET_STD)
    np.testing.assert_allclose(_np(converter(image)), (resized / 255 - mean) / std, atol=1e-4)
    unit = hub.ConvNeXtImageConverter(image_size=(32, 32), crop_pct=0.5, pixel_range=1.0,
                                      interpolation="bilinear")
    np.testing.assert_allclose(_np(unit(image / 255)), _np(converter(image)), atol=1e-4)
    assert hub.eval_converter().crop_pct == 0.875
    config = converter.get_config()
    assert hub.ConvNeXtImageConverter.from_config(config).get_config() == config
    with pytest.raises(ValueError, match=r"crop_pct must be in \(0, 1\]"):
        hub.ConvNeXtImageConverter(crop_pct=1.5)


@run_once_across_backends("tf.data runs on TensorFlow whatever the backend")
def test_image_converter_in_tf_data():
    import tensorflow as tf

    image = np.random.default_rng(1).uniform(0, 255, (3, 70, 90, 3)).astype("float32")
    converter = hub.ConvNeXtImageConverter(image_size=(32, 32), crop_pct=0.875)
    mapped = next(iter(tf.data.Dataset.from_tensor_slices(image).batch(3).map(converter)))
    np.testing.assert_allclose(mapped.numpy(), _np(converter(image)), atol=1e-4)


# ----------------------------------------------------------------- timm and HF preset folders


@pytest.fixture(scope="module")
def timm_convnext():
    convnext = refs.import_timm()
    if convnext is None:
        pytest.skip("timm is not installed")
    return convnext


def _timm_folder(path, name, seed, **model_args):
    """A timm Hub folder, written by timm's own ``save_for_hf`` (config.json with
    ``architecture``, ``model_args`` and ``pretrained_cfg``; model.safetensors)."""
    import timm
    from timm.models._hub import save_for_hf

    model = refs.randomize_torch(timm.create_model(name, num_classes=5, **model_args), seed)
    save_for_hf(model, str(path), model_args=model_args, safe_serialization=True)
    return model


@pytest.mark.parametrize("name,use_grn", [("convnext_atto", False), ("convnextv2_atto", True)])
def test_from_preset_timm_folder(tmp_path, timm_convnext, name, use_grn):
    args = dict(depths=refs.DEPTHS, dims=refs.DIMS)
    model = _timm_folder(tmp_path, name, seed=5, **args)
    images = np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 3)).astype("float32")
    expected = refs.torch_logits(model, images)

    backbone = keras_hub.models.Backbone.from_preset(str(tmp_path))
    assert type(backbone) is hub.ConvNeXtBackbone and backbone.use_grn is use_grn
    assert backbone.hidden_dims == refs.DIMS
    task = keras_hub.models.ImageClassifier.from_preset(str(tmp_path))
    assert type(task) is hub.ConvNeXtImageClassifier and task.num_classes == 5
    assert refs.relative_error(_np(task(images)), expected) < 1e-4
    converter = task.preprocessor.image_converter
    assert converter.crop_pct == model.pretrained_cfg["crop_pct"]
    assert converter.image_size == tuple(model.pretrained_cfg["input_size"][1:])

    headless = keras_hub.models.ImageClassifier.from_preset(str(tmp_path), num_classes=3)
    np.testing.assert_allclose(_np(headless.backbone(images)), _np(backbone(images)), atol=1e-5)


def _hf_folder(path, v2, seed):
    from transformers import ConvNextImageProcessor

    model = (refs.hf_v2_model if v2 else refs.hf_model)(seed=seed)
    model.save_pretrained(str(path))
    ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.9).save_pretrained(str(path))
    return model


@pytest.mark.parametrize("v2", [False, True], ids=["convnext", "convnextv2"])
def test_from_preset_hf_folder(tmp_path, v2):
    model = _hf_folder(tmp_path, v2, seed=6)
    images = np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 3)).astype("float32")
    expected = refs.torch_logits(model, images)
    task = keras_hub.models.ImageClassifier.from_preset(str(tmp_path))
    assert type(task) is hub.ConvNeXtImageClassifier and task.backbone.use_grn is v2
    assert refs.relative_error(_np(task(images)), expected) < 1e-4
    converter = task.preprocessor.image_converter
    assert converter.image_size == (224, 224) and converter.crop_pct == 0.9
    backbone = hub.ConvNeXtBackbone.from_preset(str(tmp_path))
    assert backbone.hidden_dims == refs.DIMS


def test_from_preset_errors(tmp_path):
    # the preset of another architecture: keras-hub says which
    (tmp_path / "resnet").mkdir()
    (tmp_path / "resnet" / "config.json").write_text(json.dumps(
        {"architecture": "resnet18", "num_classes": 10}))
    with pytest.raises(ValueError, match="type `ResNetBackbone` which is not a "
                                         "subclass of calling class `ConvNeXtBackbone`"):
        hub.ConvNeXtBackbone.from_preset(str(tmp_path / "resnet"))
    # a timm ConvNeXt that is not ours
    (tmp_path / "hnf").mkdir()
    (tmp_path / "hnf" / "config.json").write_text(json.dumps(
        {"architecture": "convnext_tiny_hnf", "num_classes": 10}))
    with pytest.raises(ValueError, match="timm architecture 'convnext_tiny_hnf' is not a "
                                         "ConvNeXt keras_convnext builds"):
        keras_hub.models.Backbone.from_preset(str(tmp_path / "hnf"))
    # a config without its weights
    model = refs.hf_model(seed=0)
    model.config.save_pretrained(str(tmp_path / "noweights"))
    with pytest.raises(FileNotFoundError, match="Hugging Face ConvNeXt config.json but no "
                                                "model.safetensors or pytorch_model.bin"):
        keras_hub.models.Backbone.from_preset(str(tmp_path / "noweights"))
    # no config at all
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no config.json"):
        keras_hub.models.Backbone.from_preset(str(tmp_path / "empty"))
    # a V1 config over V2 weights: our strict loader names the mismatch
    _hf_folder(tmp_path / "v2", v2=True, seed=1)
    config = json.loads((tmp_path / "v2" / "config.json").read_text())
    config["model_type"] = "convnext"
    (tmp_path / "v2" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="a V1/V2 mismatch"):
        keras_hub.models.Backbone.from_preset(str(tmp_path / "v2"))


# ------------------------------------------------------------- keras-hub's task heads train

# keras-hub 0.32's DeepLabV3 and RetinaNet train on TensorFlow, JAX and torch alike here.


def _small_backbone():
    return hub.ConvNeXtBackbone(**SMALL, use_grn=True, image_shape=(SIZE, SIZE, 3))


def _fixture():
    data = shapes(8, SIZE, seed=1)
    return data, _np(hub.ConvNeXtImageConverter()(data["images"]))


def test_deeplab_v3_segmenter_trains():
    keras.utils.set_random_seed(0)
    data, x = _fixture()
    segmenter = keras_hub.models.DeepLabV3ImageSegmenter(
        keras_hub.models.DeepLabV3Backbone(
            image_encoder=_small_backbone(), spatial_pyramid_pooling_key="P4",
            upsampling_size=4, dilation_rates=[1, 2], low_level_feature_key="P2",
            image_shape=(SIZE, SIZE, 3)),
        num_classes=3)
    segmenter.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=[],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    losses = segmenter.fit(x, data["masks"], epochs=4, batch_size=4, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.6 * losses[0], losses


def test_retinanet_detector_trains():
    keras.utils.set_random_seed(0)
    data, x = _fixture()
    detector = keras_hub.models.RetinaNetObjectDetector(
        backbone=keras_hub.models.RetinaNetBackbone(
            image_encoder=_small_backbone(), min_level=3, max_level=5, use_p5=False,
            image_shape=(SIZE, SIZE, 3)),
        num_classes=2, bounding_box_format="yxyx", pre_logits_num_conv_layers=1)
    detector.compile(optimizer=keras.optimizers.Adam(1e-3))
    y = {"boxes": data["boxes"], "labels": data["labels"]}
    losses = detector.fit(x, y, epochs=4, batch_size=4, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.6 * losses[0], losses


def test_shapes_fixture_is_consistent():
    data = shapes(8, SIZE, seed=2)
    for n in range(8):
        covered = np.zeros((SIZE, SIZE), bool)
        for box, label in zip(data["boxes"][n], data["labels"][n]):
            if label < 0:
                continue
            y0, x0, y1, x1 = box.astype(int)
            inside = data["masks"][n, y0:y1, x0:x1, 0] == label + 1
            # the box is tight: the shape touches all four sides
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and \
                inside[:, -1].any()
            covered[y0:y1, x0:x1] |= inside
        np.testing.assert_array_equal(covered, data["masks"][n, ..., 0] > 0)
