"""The paper's roadmap: every step named and ordered as in the paper, one config change at a time,
FLOPs as the paper reports them, every step trainable on every backend, the last step ConvNeXt-T.

Full-size 224 px models are slow to initialize, so the checks that need them (FLOPs, parameter
counts, the final step against ConvNeXtTiny) run once, in the tensorflow pass: they are facts about
the architecture. Every backend builds and trains every step at 32 px in a reduced form (fewer
blocks, 1/8 of the widths), which keeps each step's one change.

Where weight values do not matter, the random initializer (TruncatedNormal, the only one these
models use) is replaced by NumPy's generator (``cheap_init``, for every test here), or by zeros
where only shapes count:
JAX compiles its random initializer once per weight shape, which would cost more than everything
else here. Initialization is the layers' tests' concern.
"""

import dataclasses
import math
import os
import re
import runpy
import sys

import keras
import numpy as np
import pytest
from conftest import BACKEND, REPO

from keras_convnext import ConvNeXt, ConvNeXtTiny, count_flops, dispatch, roadmap
from keras_convnext.roadmap import ROADMAP, STEPS, RoadmapConfig, get_config, get_step

# The paper's facts as the project keeps them (../shared/PAPER.md, beside the checkout in every
# workplace and in CI), not a copy of the code's table.
PAPER_MD = os.path.join(REPO, os.pardir, "shared", "PAPER.md")


def _paper_table():
    """step -> (GFLOPs, ImageNet top-1), in order, from PAPER.md's roadmap table."""
    if not os.path.isfile(PAPER_MD):
        pytest.skip(f"{PAPER_MD} is not beside this checkout")
    rows = {}
    with open(PAPER_MD, encoding="utf-8") as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 4 and re.fullmatch(r"[a-z_0-9]+", cells[0]) and re.fullmatch(
                    r"\d+\.\d", cells[2]):
                rows[cells[0]] = (float(cells[2]), float(cells[3]))
    assert len(rows) >= 16, f"no roadmap table found in {PAPER_MD}"
    return rows


TORCHVISION_RESNET50_PARAMS = 25_557_032
CONVNEXT_TINY_PARAMS = 28_589_128

full_size = pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="full-size 224 px models; architecture facts, checked once in the tensorflow pass",
)


SMALL_WIDTHS = (8, 16, 32, 64)


def _small(step, **kwargs):
    """``step`` at 32 px with fewer blocks and small widths, the same for every step (so that
    JAX compiles each op for few shapes): every change but ``wider``'s is kept."""
    return roadmap.build(
        step,
        depths=(1, 1, 2, 1),
        widths=SMALL_WIDTHS,
        stem_width=SMALL_WIDTHS[0],
        input_shape=(32, 32, 3),
        classes=3,
        **kwargs,
    )


def _images(n=4, size=32, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


# ------------------------------------------------------------------ the steps


def test_the_steps_are_the_papers_in_order():
    paper = _paper_table()
    assert STEPS == tuple(paper)
    for step in ROADMAP:
        assert (step.paper_gflops, step.paper_top1) == paper[step.name]


def test_each_step_is_its_parent_plus_exactly_its_own_change():
    fields = [f.name for f in dataclasses.fields(RoadmapConfig)]
    assert get_config("resnet50") == RoadmapConfig() and ROADMAP[0].diff == ()
    for previous, step in zip(ROADMAP, ROADMAP[1:]):
        parent = step.parent or previous.name
        before, after = get_config(parent), get_config(step.name)
        changed = {f for f in fields if getattr(before, f) != getattr(after, f)}
        assert changed == set(dict(step.diff)), step.name
        assert changed, f"{step.name} changes nothing"
    # the kernel sweep explores from move_up_dwconv; the roadmap goes on with 7x7
    assert {get_step(k).parent for k in ("kernel_7", "kernel_9", "kernel_11")} == {"move_up_dwconv"}
    assert get_step("gelu").parent == "kernel_7"
    assert get_config("gelu").kernel_size == 7


def test_the_last_config_is_convnext_tiny():
    config = get_config("separate_downsampling")
    assert config.depths == (3, 3, 9, 3) and config.widths == (96, 192, 384, 768)
    assert (config.stem, config.block, config.kernel_size) == ("patchify", "inverted", 7)
    assert config.depthwise and config.spatial_first and config.head_norm
    assert (config.activation, config.activations, config.norm, config.norms) == (
        "gelu", "one", "layer", "one",
    )
    assert config.downsampling == "separate"


def test_an_unknown_step_or_option_is_refused():
    with pytest.raises(ValueError, match="resnet_50"):
        roadmap.build("resnet_50")
    with pytest.raises(ValueError, match="norm"):
        RoadmapConfig(norm="group")


# ------------------------------------------------------- full size, 224 px


# Keras' class and ours (dispatch.TruncatedNormal, which the layers use: its own __call__).
TRUNCATED_NORMALS = (keras.initializers.TruncatedNormal, dispatch.TruncatedNormal)


def _zeros(self, shape, dtype=None):
    return keras.ops.zeros(shape, dtype=dtype)


def _numpy_normal(self, shape, dtype=None):
    values = np.random.default_rng(math.prod(shape)).normal(0.0, self.stddev, shape)
    return keras.ops.convert_to_tensor(np.clip(values, -2 * self.stddev, 2 * self.stddev), dtype)


@pytest.fixture(autouse=True)
def cheap_init(monkeypatch):
    for cls in TRUNCATED_NORMALS:
        monkeypatch.setattr(cls, "__call__", _numpy_normal)


@pytest.fixture(scope="module")
def counted():
    """step -> (GFLOPs at 224 px, params, trainable params outside LayerScale).

    Counting needs only the weights' shapes, so the models are built without initializing their
    weights (deferred by a StatelessScope, random initializers stubbed): 16 full-size models in
    seconds instead of minutes.
    """
    results = {}
    with pytest.MonkeyPatch.context() as patch:
        for cls in TRUNCATED_NORMALS:
            patch.setattr(cls, "__call__", _zeros)
        for step in STEPS:
            with keras.StatelessScope(initialize_variables=False):
                model = roadmap.build(step, input_shape=(224, 224, 3))
            trainable = sum(
                math.prod(w.shape) for w in model.trainable_weights if "layer_scale" not in w.path
            )
            results[step] = (count_flops(model) / 1e9, model.count_params(), trainable)
    keras.backend.clear_session()  # forgets the never-initialized variables
    return results


@full_size
def test_every_step_has_the_papers_flops(counted):
    for step in ROADMAP:
        gflops = counted[step.name][0]
        # the paper's figure, and its appendix's two-decimal one
        assert abs(gflops - step.paper_gflops) <= 0.06, (step.name, gflops)
        assert abs(gflops - step.appendix_gflops) <= 0.005, (step.name, gflops)


@full_size
def test_the_first_step_is_resnet50(counted):
    # torchvision's ResNet-50 trainable parameters (BatchNorm statistics are not parameters),
    # with LayerScale (part of the recipe here) set aside
    assert counted["resnet50"][2] == TORCHVISION_RESNET50_PARAMS


@full_size
def test_the_last_step_is_convnext_tiny(counted):
    # layer for layer; that it computes the same function is checked on every backend below
    final, tiny = roadmap.build("separate_downsampling"), ConvNeXtTiny()
    assert counted["separate_downsampling"][1] == tiny.count_params() == CONVNEXT_TINY_PARAMS
    assert count_flops(final, (224, 224, 3)) == count_flops(tiny, (224, 224, 3))
    assert [layer.name for layer in final.layers] == [layer.name for layer in tiny.layers]
    assert [(w.path, w.shape) for w in final.weights] == [(w.path, w.shape) for w in tiny.weights]


# ------------------------------------------------------ every backend, 32 px


@pytest.mark.parametrize("step", STEPS)
def test_every_step_builds_and_trains_at_32px(step):
    model = _small(step)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
        run_eagerly=True,
    )
    first = model.trainable_weights[0]
    before = keras.ops.convert_to_numpy(first).copy()
    loss = model.train_on_batch(_images(), np.array([0, 1, 2, 0]))
    assert np.isfinite(loss)
    assert np.any(keras.ops.convert_to_numpy(first) != before), "no gradient reached the stem"
    assert model.predict(_images(2), verbose=0).shape == (2, 3)


def test_the_last_step_computes_what_convnext_computes():
    ours = _small("separate_downsampling")
    reference = ConvNeXt((1, 1, 2, 1), SMALL_WIDTHS, input_shape=(32, 32, 3), classes=3)
    assert [layer.name for layer in ours.layers] == [layer.name for layer in reference.layers]
    ours.set_weights(reference.get_weights())
    x = _images()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ours(x)), keras.ops.convert_to_numpy(reference(x)), atol=1e-6
    )


@pytest.mark.parametrize("step", ["depthwise_conv", "fewer_norms", "layer_norm"])
def test_a_roadmap_model_round_trips_through_a_keras_file(step, tmp_path):
    model = _small(step)
    path = str(tmp_path / f"{step}.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    x = _images()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-6
    )


def test_build_takes_the_variants_arguments():
    features = _small("kernel_7", include_top=False, pooling="avg")
    assert features.output.shape == (None, SMALL_WIDTHS[-1])
    maps = _small("resnet50", include_top=False)
    assert maps.output.shape == (None, 1, 1, 4 * SMALL_WIDTHS[-1])
    assert _small("gelu", name="mine").name == "mine"
    with pytest.raises(ValueError, match="32"):
        roadmap.build("resnet50", input_shape=(16, 16, 3))


# ---------------------------------------------------------------- the CLI


@full_size
def test_the_command_prints_the_table_and_writes_the_plot(tmp_path, capsys, monkeypatch):
    png = tmp_path / "roadmap.png"
    argv = ["roadmap", "--steps", "resnet50,depthwise_conv", "--image-size", "32",
            "--plot", str(png)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("keras_convnext.roadmap", run_name="__main__")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "GFLOPs" in lines[0] and "top-1" in lines[0]
    assert lines[2].startswith("resnet50") and lines[3].startswith("depthwise_conv")
    assert "78.3" in lines[3]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
