"""benchmarks/compare.py's machinery and the attention FLOPs counter (benchmarks/flops_attention.py).

The attention counts are checked against hand computations on small layers on every backend; the
full-size Swin-T (slow to build) is checked once, in the tensorflow pass. The comparison's timing
code runs on a tiny stand-in model: timings live in benchmarks/, never in the tests.
"""

import argparse
import os
import sys
import time

import keras
import numpy as np
import pytest
from conftest import REPO, run_once_across_backends, run_python

from keras_convnext.flops import count_flops

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import compare  # noqa: E402
from flops_attention import (  # noqa: E402  (benchmarks/flops_attention.py)
    attention_counters,
    attention_macs,
    count_flops_with_attention,
)

keras_hub = pytest.importorskip("keras_hub")


def test_multi_head_attention_counted_by_hand():
    # query 5 tokens x 6 channels, value 7 x 6; 2 heads of width 4. (A value width other than
    # the key width would be counted too, but Keras' JAX attention rejects it.)
    q, v = keras.Input((5, 6)), keras.Input((7, 6))
    mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, kernel_initializer="zeros")
    model = keras.Model([q, v], mha(q, v))
    linear = (5 * 6 * 2 * 4      # query projection
              + 7 * 6 * 2 * 4    # key projection (key = value)
              + 7 * 6 * 2 * 4    # value projection
              + 5 * 2 * 4 * 6)   # output projection
    attention = 2 * 5 * 7 * 4 + 2 * 5 * 7 * 4  # Q K^T + softmax(.) V, per head
    assert count_flops(model) == linear  # conv/dense only: the matmuls have no weights
    assert count_flops_with_attention(model) == {
        "total": linear + attention, "attention": attention, "linear": linear}


def test_multi_head_attention_over_two_axes():
    # (3 x 4) positions attend to each other: 12 queries x 12 keys.
    x = keras.Input((3, 4, 8))
    model = keras.Model(x, keras.layers.MultiHeadAttention(2, 5, kernel_initializer="zeros")(x, x))
    assert count_flops_with_attention(model)["attention"] == attention_macs(1, 2, 12, 12, 5)


def _tiny_swin(num_classes=10):
    """32 px, patch 4 (8x8 tokens), embed 8, depths 2-1, heads 1-2, window 4 (stage 0's second
    block shifts its windows; stage 1's 4x4 map is one window and does not)."""
    backbone = keras_hub.models.SwinTransformerBackbone(
        image_shape=(32, 32, 3), patch_size=4, embed_dim=8, depths=[2, 1], num_heads=[1, 2],
        window_size=4)
    return keras_hub.models.SwinTransformerImageClassifier(backbone, num_classes=num_classes)


@run_once_across_backends("slow to build under JAX; shapes only, the MHA tests cover backends")
def test_swin_window_attention_counted_by_hand():
    model = _tiny_swin()
    # stage 0: 8x8 tokens, C 8, four 4x4 windows; stage 1: 4x4 tokens, C 16, one window.
    # per block: Q K^T and attn V over every window = 2 * tokens * window area * C.
    attention = 2 * (2 * 64 * 16 * 8) + 1 * (2 * 16 * 16 * 16)
    linear = (
        8 * 8 * 8 * (4 * 4 * 3)                      # patch embedding conv
        + 2 * 64 * 8 * (3 * 8 + 8 + 4 * 8 + 4 * 8)  # stage 0 blocks: qkv, proj, MLP 4x
        + 16 * (4 * 8) * 16                          # patch merging: 4C -> 2C
        + 1 * 16 * 16 * (3 * 16 + 16 + 4 * 16 + 4 * 16)  # stage 1 block
        + 16 * 10                                    # classifier
    )
    assert count_flops_with_attention(model) == {
        "total": linear + attention, "attention": attention, "linear": linear}
    # Without the counters, Swin's relative-position table is a weight count_flops won't skip.
    with pytest.raises(ValueError, match="WindowAttention"):
        count_flops(model)


def test_counters_register_keras_hub_only_when_imported():
    counters = attention_counters()  # keras_hub was imported above
    assert keras.layers.MultiHeadAttention in counters
    assert any(c.__name__ == "WindowAttention" for c in counters)


@run_once_across_backends("imports in a fresh process")
def test_counters_leave_keras_hub_alone_when_it_was_not_imported():
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import keras; "
            "from flops_attention import attention_counters; "
            "print(sorted(c.__name__ for c in attention_counters()), 'keras_hub' in sys.modules)")
    out = run_python(code, "tensorflow").strip().splitlines()[-1]
    assert out == "['MultiHeadAttention'] False"


@run_once_across_backends("a property of the architecture")
def test_swin_t_as_configured_matches_the_reference():
    model = compare.build_model("swin_t", 224)
    facts = compare.model_facts(model, 224)
    # the reference Swin-T (microsoft/Swin-Transformer, timm swin_tiny_patch4_window7_224)
    assert facts["params_trainable"] == 28_288_354
    # attention by hand: per block 2 * (H W) * 49 * C, blocks 2-2-6-2 at 56/28/14/7 px, C 96..768
    attention = sum(2 * d * (56 >> i) ** 2 * 49 * (96 << i) for i, d in enumerate((2, 2, 6, 2)))
    assert facts["flops_attention"] == attention == 140_141_568
    assert round(facts["flops"] / 1e9, 2) == 4.49  # the Swin paper's 4.5 G


def test_swin_window_for_keeps_the_window_grid():
    assert compare.swin_window_for(224) == 7
    assert compare.swin_window_for(64) == 2
    assert compare.swin_window_for(128) == 4


def _args(**kw):
    base = dict(batch=2, size=32, models=["tiny", "broken"], steps=1, warmup=0, train_steps=1,
                train_warmup=0, no_speed=False, memory_steps=1)
    return argparse.Namespace(**{**base, **kw})


def _stand_in(name, size=224, classes=1000, **kwargs):
    if name == "broken":
        raise RuntimeError("cannot be configured")
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(4, 4, strides=4)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x))


@run_once_across_backends("compiles a train step twice; benchmarks/ runs every backend")
def test_speed_and_memory_machinery(monkeypatch):
    monkeypatch.setattr(compare, "build_model", _stand_in)
    report = compare.run_speed(_args())
    tiny = report["models"]["tiny"]
    assert tiny["flops"] == 8 * 8 * 4 * 4 * 4 * 3 + 4 * 1000
    assert tiny["flops_attention"] == 0
    assert tiny["inference"]["img_s"] > 0 and tiny["train"]["img_s"] > 0
    assert "first_s" in tiny["inference"] and tiny["train_first_s"] > 0
    # a model that fails is reported with its error, and the others are still timed
    assert report["models"]["broken"]["error"] == "RuntimeError: cannot be configured"


@run_once_across_backends("samples this process's memory; benchmarks/ runs every backend")
def test_memory_sampler_sees_a_steps_transient_allocation(monkeypatch):
    """A train step that briefly holds 256 MiB more must show as ~256 MiB over the resident
    memory before the steps (the sampler runs while the steps do, not just before them)."""
    monkeypatch.setattr(compare, "build_model", _stand_in)
    compiled = compare._compiled

    def with_transient(model, lr=1e-4):
        model = compiled(model, lr)
        step = model.train_on_batch
        calls = []

        def train_on_batch(*args, **kwargs):
            calls.append(1)
            if len(calls) > 1:  # the steady-state steps, not the first (compiling) one
                block = np.ones(256 * 1024 * 1024 // 8)  # touched: resident
                time.sleep(0.05)
                del block
            return step(*args, **kwargs)

        model.train_on_batch = train_on_batch
        return model

    monkeypatch.setattr(compare, "_compiled", with_transient)
    memory = compare.run_memory(_args(memory_steps=2), "tiny")
    assert 200 <= memory["step_peak_over_resident_mb"] < 400, memory
    assert memory["process_maxrss_mb"] >= memory["step_peak_rss_mb"] * 0.99


@run_once_across_backends("formats saved results, no model")
def test_table_and_plot(tmp_path):
    model = {"params": 10, "params_trainable": 9, "flops": 2e9, "flops_linear": 1.9e9,
             "flops_attention": 1e8, "inference": {"img_s": 3.0}, "train": {"img_s": 1.0},
             "inference_first_s": 1.0, "train_first_s": 2.0}
    results = {
        "machine": {"cpu": "cpu", "cores": 2}, "settings": {"batch": 8},
        "backends": {
            "jax": {"models": {"convnext_t": model, "swin_t": {"error": "ValueError: x"},
                               "resnet50": model},
                    "memory": {"convnext_t": {"step_peak_over_resident_mb": 5.0,
                                              "process_maxrss_mb": 9.0}}},
            "torch": {"error": "exit code 1: boom"},
        },
        "training": {"backend": "jax", "dataset": "digits", "image_size": 64, "batch": 32,
                     "steps": 10, "epochs_over_train_set": 0.2, "swin_window": 2,
                     "models": {"convnext_t": {"val_accuracy": 0.5, "train_s": 3.0,
                                               "train_loss_last_epoch": 1.0},
                                "swin_t": {"error": "E"}}},
    }
    table = compare.format_table(results)
    assert "| jax | Swin-T | failed: ValueError: x |" in table
    assert "| torch | all | failed: exit code 1: boom |" in table
    assert "| ConvNeXt-T | 50.0% |" in table
    assert "2.000 (1.900 / 0.100)" in table
    compare.plot(results, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000
