"""The architecture's vocabulary (keras_convnext.architecture) and the package's structure: one
parser of layer and variable paths that every consumer shares, the stage description of built
models (the family and the roadmap), layer decay grouped by it, the graph builders apart from
weight loading, and the generated constructors' signatures."""

import ast
import inspect
import math
import os

import pytest
from conftest import REPO

import keras_convnext
from keras_convnext import architecture, roadmap
from keras_convnext.architecture import LayerPath, parse
from training import recipe


def _atto(**kwargs):
    return keras_convnext.ConvNeXtAtto(input_shape=(32, 32, 3), **kwargs)


@pytest.mark.parametrize("path, expected", [
    ("stage_2_block_5/dwconv/kernel", LayerPath("block", 2, 5, "dwconv", "kernel")),
    ("stage_2_block_5", LayerPath("block", 2, 5)),
    ("stem/norm/gamma", LayerPath("stem", None, None, "norm", "gamma")),
    ("stem_conv/kernel", LayerPath("stem", None, None, "conv", "kernel")),
    ("stem_pool", LayerPath("stem", None, None, "pool")),
    ("stage_1_downsample/conv/bias", LayerPath("downsample", 1, None, "conv", "bias")),
    ("stage_3_downsample_norm/moving_mean",
     LayerPath("downsample", 3, None, "norm", "moving_mean")),
    ("predictions/kernel", LayerPath("head", None, None, "predictions", "kernel")),
    ("head_norm", LayerPath("head", None, None, "head_norm")),
    ("preprocessing", LayerPath("preprocessing")),
])
def test_parse_reads_every_kind_of_name(path, expected):
    assert parse(path) == expected


@pytest.mark.parametrize("path", ["pixels", "stage_x_block_1", "stages.0.0.dwconv.weight",
                                  "stage_1_blocks_2/dwconv/kernel", ""])
def test_parse_refuses_names_outside_the_vocabulary(path):
    assert parse(path) is None


def test_every_variable_of_a_built_model_parses_to_its_layer():
    model = _atto()
    for v in model.weights:
        where = parse(v.path)
        assert where is not None and where.part in ("stem", "downsample", "block", "head"), v.path
        assert where.variable == v.path.split("/")[-1]
    blocks = {(p.stage, p.block) for p in map(parse, (v.path for v in model.weights))
              if p.part == "block"}
    assert architecture.depths_of(layer.name for layer in model.layers) == (2, 2, 6, 2)
    assert len(blocks) == sum((2, 2, 6, 2))


def test_the_stage_description_of_the_family():
    model = keras_convnext.ConvNeXtAtto(include_top=False)  # input size not fixed: traced
    stages = keras_convnext.stages(model)
    assert [(s.index, s.stride, s.channels, s.depth) for s in stages] == [
        (0, 4, 40, 2), (1, 8, 80, 2), (2, 16, 160, 6), (3, 32, 320, 2)]
    assert stages[1].layers == ("stage_1_downsample", "stage_1_block_0", "stage_1_block_1")
    assert stages[3].output_layer == "stage_3_block_1" and stages[3].name == "stage_3"


def test_feature_extractor_exposes_the_stage_description():
    model = _atto(include_top=False)
    features = keras_convnext.feature_extractor(model)
    info = features.feature_info
    assert [s.name for s in info] == list(features.output)
    assert [(s.stride, s.channels) for s in info] == [(4, 40), (8, 80), (16, 160), (32, 320)]
    for s in info:
        assert tuple(features.output[s.name].shape[1:]) == (32 // s.stride, 32 // s.stride,
                                                            s.channels)


def _resnet_like():
    """A roadmap model whose stem and downsampling are the ResNet-style named layers
    (``stem_conv``, ``stage_i_downsample_norm`` / ``_conv``, BatchNorm)."""
    config = roadmap.RoadmapConfig(depths=(1, 1, 2, 1), widths=(4, 8, 8, 8), stem_width=4,
                                   downsampling="separate")
    return roadmap.build_from_config(config, input_shape=(32, 32, 3), classes=3)


def test_the_stage_description_of_roadmap_models():
    stages = keras_convnext.stages(_resnet_like())
    assert [(s.stride, s.channels) for s in stages] == [(4, 16), (8, 32), (16, 32), (32, 32)]
    assert stages[1].layers[:2] == ("stage_1_downsample_norm", "stage_1_downsample_conv")
    in_block = roadmap.build("resnet50", depths=(1, 1, 1, 1), input_shape=(32, 32, 3))
    assert [s.stride for s in keras_convnext.stages(in_block)] == [4, 8, 16, 32]


def test_layer_decay_groups_roadmap_layers_by_their_stage():
    model = _resnet_like()
    multipliers = recipe.layer_decay_multipliers(model, decay=0.5)
    depths = recipe.model_depths(model)
    assert depths == (1, 1, 2, 1)
    top = recipe.num_layer_groups(depths) + 1
    groups = {path: top - round(math.log(m, 0.5)) for path, m in multipliers.items()}
    assert groups["stem_conv/kernel"] == 0 and groups["stem_norm/gamma"] == 0
    assert groups["stage_1_downsample_conv/kernel"] == 2
    assert groups["stage_2_downsample_norm/gamma"] == 3
    assert groups["stage_3_downsample_conv/kernel"] == recipe.num_layer_groups(depths)
    assert groups["predictions/kernel"] == top
    # the family and the roadmap's last step give the same groups to the same names
    tiny_like = roadmap.build("separate_downsampling", depths=(1, 1, 2, 1),
                              widths=(8, 8, 8, 8), stem_width=8, input_shape=(32, 32, 3))
    family = keras_convnext.ConvNeXt((1, 1, 2, 1), (8, 8, 8, 8), input_shape=(32, 32, 3))
    assert (recipe.layer_decay_multipliers(tiny_like, decay=0.5)
            == recipe.layer_decay_multipliers(family, decay=0.5))


def _imports(module_path):
    """The keras_convnext modules a source file imports, at any depth (functions included)."""
    with open(module_path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("keras_convnext")}


def _module_file(name):
    base = os.path.join(REPO, *name.split("."))
    for candidate in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None


@pytest.mark.parametrize("graph_module", [
    "keras_convnext.builder", "keras_convnext.roadmap.steps", "keras_convnext.roadmap.blocks",
])
def test_graph_builders_import_nothing_from_weights(graph_module):
    seen, todo = set(), [graph_module]
    while todo:
        name = todo.pop()
        if name in seen or _module_file(name) is None:
            continue
        seen.add(name)
        todo += sorted(_imports(_module_file(name)))
    assert not [m for m in seen if m.startswith("keras_convnext.weights")], sorted(seen)
    assert "keras_convnext.layers" in seen or graph_module.endswith("steps")


def test_the_vocabulary_module_is_at_the_bottom():
    assert _imports(_module_file("keras_convnext.architecture")) == set()


def test_generated_constructors_have_real_signatures():
    signature = inspect.signature(keras_convnext.ConvNeXtTiny)
    names = list(signature.parameters)
    assert {"include_top", "weights", "input_tensor", "input_shape", "pooling", "classes",
            "classifier_activation", "drop_path_rate", "seed"} <= set(names)
    assert "depths" not in names and "model_name" not in names and "options" not in names
    assert signature.parameters["classes"].default == 1000
    assert all(p.kind is p.KEYWORD_ONLY for p in signature.parameters.values())


@pytest.mark.parametrize("spelling", ["tiny", "convnext_tiny", "ConvNeXtTiny", "ConvNeXt-Tiny"])
def test_one_name_normalisation_for_the_builder_and_the_training_config(spelling):
    from training.config import make_config

    assert architecture.get_variant(spelling).name == "tiny"
    assert make_config({}, {"model": spelling}).model == spelling


def test_depths_must_be_a_list_not_a_string():
    with pytest.raises(ValueError, match="depths must be a list of 4 integers"):
        keras_convnext.ConvNeXt("2262", (8, 8, 8, 8))
    with pytest.raises(ValueError, match="dims must be a list"):
        keras_convnext.ConvNeXt((2, 2, 6, 2), (8.5, 8, 8, 8))
