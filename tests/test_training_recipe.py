"""training.recipe: schedule, weight-decay exclusions, layer-wise lr decay, EMA decay, on every
backend (the optimizer tests apply real updates)."""

import math

import keras
import numpy as np
import pytest

import keras_convnext
from training import recipe
from training.config import make_config


def _tiny(**kwargs):
    return keras_convnext.ConvNeXt((1, 1, 3, 1), (8, 16, 24, 32), input_shape=(32, 32, 3),
                                   classes=3, **kwargs)


def test_schedule_warms_up_linearly_then_cosine_to_min_lr():
    schedule = recipe.lr_schedule(1e-3, 1e-5, total_steps=110, warmup_steps=10)
    lr = lambda step: float(keras.ops.convert_to_numpy(schedule(step)))  # noqa: E731
    assert lr(0) == pytest.approx(0.0, abs=1e-12)
    assert lr(5) == pytest.approx(5e-4)
    assert lr(10) == pytest.approx(1e-3)
    # Halfway through the cosine part: (peak + min) / 2; the end: min_lr.
    assert lr(60) == pytest.approx((1e-3 + 1e-5) / 2, rel=1e-4)
    assert lr(110) == pytest.approx(1e-5, rel=1e-4)
    expected = 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 30 / 100))
    assert lr(40) == pytest.approx(expected, rel=1e-4)


def test_default_lr_warmup_and_ema_scale_with_the_run():
    assert recipe.default_lr(4096) == pytest.approx(4e-3)
    assert recipe.default_lr(128) == pytest.approx(1.25e-4)
    assert recipe.default_warmup_epochs(300) == 20 and recipe.default_warmup_epochs(30) == 2
    assert recipe.ema_decay_for(recipe.PAPER_STEPS) == pytest.approx(0.9999)
    assert recipe.ema_decay_for(10 * recipe.PAPER_STEPS) == pytest.approx(0.9999)
    short = recipe.ema_decay_for(880)
    assert 0.98 < short < 0.995  # horizon ~ 94 steps: the paper's ~11 % of the run
    assert recipe.ema_decay_for(880, 0.5) == 0.5


def test_weight_decay_skips_exactly_norms_biases_and_layer_scale_on_atto():
    model = keras_convnext.ConvNeXtAtto(input_shape=(32, 32, 3), classes=10)
    skipped = {v.path for v in recipe.no_weight_decay_variables(model)}
    decayed = {v.path for v in model.trainable_variables} - skipped
    norms = {v.path for v in model.trainable_variables
             if v.path.split("/")[-2] in ("norm", "head_norm")}
    biases = {v.path for v in model.trainable_variables if v.path.endswith("/bias")}
    gammas = {v.path for v in model.trainable_variables if "/layer_scale/" in v.path}
    assert skipped == norms | biases | gammas
    assert len(gammas) == 12 and len(norms) == 2 * (12 + 1 + 3 + 1)  # blocks, stem, downs, head
    assert all(p.endswith("/kernel") for p in decayed) and len(decayed) == 1 + 3 + 12 * 3 + 1
    config = make_config({}, {"dataset": "digits"})
    optimizer = recipe.make_optimizer(model, config, 1e-3, 100, 10, 0.99)
    assert {v.path for v in model.trainable_variables if optimizer._use_weight_decay(v)} == decayed


def _official_layer_id(name):
    """facebookresearch/ConvNeXt optim_factory.get_num_layer_for_convnext (12 groups)."""
    if name.startswith("downsample_layers"):
        stage = int(name.split(".")[1])
        return {0: 0, 1: 2, 2: 3, 3: 12}[stage]
    if name.startswith("stages"):
        stage, block = int(name.split(".")[1]), int(name.split(".")[2])
        return stage + 1 if stage in (0, 1) else (3 + block // 3 if stage == 2 else 12)
    return 13


def test_layer_groups_match_the_official_code_for_27_block_stage_2():
    depths = (3, 3, 27, 3)
    pairs = [("stem/conv/kernel", "downsample_layers.0.0.weight"),
             ("head_norm/gamma", "norm.weight"), ("predictions/kernel", "head.weight")]
    for stage in range(1, 4):
        pairs.append((f"stage_{stage}_downsample/conv/kernel",
                      f"downsample_layers.{stage}.1.weight"))
    for stage, depth in enumerate(depths):
        for block in range(depth):
            pairs.append((f"stage_{stage}_block_{block}/dwconv/kernel",
                          f"stages.{stage}.{block}.dwconv.weight"))
    for ours, official in pairs:
        assert recipe.layer_id(ours, depths) == _official_layer_id(official), ours
    assert recipe.num_layer_groups(depths) == 12
    # The same rule for shorter stage 2 (tiny, atto): 3 + ceil(d / 3) groups before the head.
    assert recipe.num_layer_groups((3, 3, 9, 3)) == 6
    assert recipe.layer_id("stage_3_block_0/norm/gamma", (2, 2, 6, 2)) == 5


def _step(optimizer, model, gradient):
    variables = model.trainable_variables
    before = [keras.ops.convert_to_numpy(v.value).copy() for v in variables]
    optimizer.apply([keras.ops.full(v.shape, gradient) for v in variables], variables)
    return {v.path: keras.ops.convert_to_numpy(v.value) - b for v, b in zip(variables, before)}


def test_layer_decay_moves_each_group_by_lr_times_decay_power():
    model, decay, lr = _tiny(), 0.5, 1e-2
    multipliers = recipe.layer_decay_multipliers(model, (1, 1, 3, 1), decay)
    top = recipe.num_layer_groups((1, 1, 3, 1)) + 1  # 5 for a 3-block stage 2
    optimizer = recipe.ConvNeXtAdamW(learning_rate=lr, weight_decay=0.0, epsilon=1e-12,
                                     lr_multipliers=multipliers)
    deltas = _step(optimizer, model, 1.0)  # Adam's first step moves every weight by -lr * mult
    for path, delta in deltas.items():
        group = recipe.layer_id(path, (1, 1, 3, 1))
        np.testing.assert_allclose(delta, -lr * decay ** (top - group), rtol=1e-4, err_msg=path)
    assert multipliers["predictions/kernel"] == 1.0 and multipliers["stem/conv/kernel"] == 0.5 ** 5


def test_decoupled_weight_decay_uses_the_scaled_lr_and_skips_exclusions():
    model, lr, wd = _tiny(), 0.1, 0.05
    multipliers = recipe.layer_decay_multipliers(model, (1, 1, 3, 1), 0.5)
    optimizer = recipe.ConvNeXtAdamW(learning_rate=lr, weight_decay=wd,
                                     lr_multipliers=multipliers)
    optimizer.exclude_from_weight_decay(var_list=recipe.no_weight_decay_variables(model))
    values = {v.path: keras.ops.convert_to_numpy(v.value).copy() for v in model.trainable_variables}
    deltas = _step(optimizer, model, 0.0)  # zero gradients: only weight decay moves weights
    for path, delta in deltas.items():
        if path.endswith("/kernel"):
            expected = -values[path] * wd * lr * multipliers[path]
            np.testing.assert_allclose(delta, expected, rtol=1e-3, atol=1e-8, err_msg=path)
        else:
            assert not np.any(delta), path


def test_fused_update_gives_keras_own_updates_over_several_steps(monkeypatch):
    """On torch the recipe's AdamW runs one fused kernel per group of equal rates
    (``dispatch.fused_adam_step``) and one EMA lerp (``dispatch.fused_ema_step``); with fast
    paths off (and on the other backends) it runs Keras' update per variable. Both must move
    every weight, moment and EMA copy alike over several steps of random gradients, with layer
    decay, weight-decay exclusions, clipping."""
    from keras_convnext import dispatch

    fused_calls, ema_calls = [], []
    if keras.backend.backend() == "torch":
        from keras_convnext.fast import torch_ops

        real, real_ema = torch_ops.fused_adam, torch_ops.fused_ema
        monkeypatch.setattr(torch_ops, "fused_adam",
                            lambda *a, **k: fused_calls.append(len(a[0])) or real(*a, **k))
        monkeypatch.setattr(torch_ops, "fused_ema",
                            lambda *a: ema_calls.append((len(a[0]), a[2])) or real_ema(*a))
    runs = []
    for fast in (True, False):
        keras.utils.set_random_seed(1)
        model = _tiny()
        optimizer = recipe.ConvNeXtAdamW(
            learning_rate=recipe.lr_schedule(1e-2, 1e-4, total_steps=8, warmup_steps=2),
            weight_decay=0.05, epsilon=1e-8, global_clipnorm=1.0, use_ema=True,
            ema_momentum=0.9,
            lr_multipliers=recipe.layer_decay_multipliers(model, (1, 1, 3, 1), 0.7))
        optimizer.exclude_from_weight_decay(var_list=recipe.no_weight_decay_variables(model))
        variables = model.trainable_variables
        grads = np.random.default_rng(2)
        with dispatch.fast_paths(fast):
            for _ in range(4):
                optimizer.apply([keras.ops.convert_to_tensor(
                    grads.standard_normal(v.shape).astype("float32")) for v in variables],
                    variables)
        runs.append([keras.ops.convert_to_numpy(v) for v in
                     variables + optimizer._momentums + optimizer._velocities
                     + optimizer._model_variables_moving_average])
    assert len(runs[0]) == len(runs[1]) > 4 * 3
    if keras.backend.backend() == "torch":  # 4 steps, every variable in one of a few groups
        assert len(fused_calls) >= 4 and sum(fused_calls) == 4 * len(variables)
        # once per step, every variable; the averages start as the variables (momentum 0)
        assert ema_calls == [(len(variables), 0.0)] + [(len(variables), 0.9)] * 3
    for fused, keras_own in zip(*runs):
        np.testing.assert_allclose(fused, keras_own, rtol=1e-6, atol=1e-8)


def test_config_reaches_the_optimizer_loss_and_model():
    from training.train import model_builder, model_spec

    config = make_config({}, {"dataset": "digits", "clip_grad_norm": 1.0, "label_smoothing": 0.2,
                              "depths": (1, 1, 3, 1), "dims": (8, 16, 24, 32), "drop_path": 0.3})
    model = model_builder(config, 10)()
    assert model.get_layer("stage_3_block_0").drop_path.rate == pytest.approx(0.3)
    assert model_spec(make_config({}, {"dataset": "folder:x", "model": "tiny"}))[3] == 0.1
    optimizer = recipe.make_optimizer(model, config, 1e-3, 100, 10, 0.99)
    assert optimizer.global_clipnorm == 1.0 and optimizer.use_ema
    assert optimizer.ema_momentum == 0.99 and optimizer.weight_decay == 0.05
    assert recipe.make_loss(config).label_smoothing == 0.2
