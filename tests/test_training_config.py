"""training.config: defaults, the digits preset, YAML/JSON files, flag precedence, validation."""

import json

import pytest

from training.config import PRESETS, Config, ConfigError, make_config, parse_args


def test_defaults_are_the_papers_recipe():
    c = make_config({}, {"dataset": "folder:/data"})
    assert (c.model, c.image_size, c.epochs, c.weight_decay) == ("tiny", 224, 300, 0.05)
    assert (c.mixup, c.cutmix, c.random_erasing, c.label_smoothing) == (0.8, 1.0, 0.25, 0.1)
    assert (c.rand_augment_ops, c.ema, c.ema_decay, c.layer_decay) == (2, True, None, 1.0)
    assert c.crop_scale == (0.08, 1.0) and c.crop_pct == 0.875 and c.hflip


def test_digits_preset_applies_only_to_digits():
    digits = parse_args(["--dataset", "digits"])
    assert (digits.model, digits.image_size, digits.hflip) == ("atto", 32, False)
    assert digits.epochs == PRESETS["digits"]["epochs"]
    assert parse_args(["--dataset", "folder:/x"]).model == Config.model


@pytest.mark.parametrize("suffix", ["json", "yaml"])
def test_config_file_then_flags_override(tmp_path, suffix):
    values = {"epochs": 7, "lr": 0.01, "model": "femto", "crop_scale": [0.5, 1.0],
              "ema": False, "mixed-precision": "bf16"}
    path = tmp_path / f"c.{suffix}"
    if suffix == "json":
        path.write_text(json.dumps(values))
    else:
        path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in values.items()))
    c = parse_args(["--config", str(path), "--epochs", "3", "--crop-scale", "0.2", "0.9"])
    assert (c.epochs, c.lr, c.model, c.ema, c.mixed_precision) == (3, 0.01, "femto", False, "bf16")
    assert c.crop_scale == (0.2, 0.9)
    # A file value beats the digits preset, a flag beats both.
    c = parse_args(["--config", str(path), "--dataset", "digits", "--no-ema"])
    assert c.model == "femto" and c.image_size == 32 and c.ema is False


def test_flags_cover_the_issue_names():
    c = parse_args(["--dataset", "tfds:mnist:train", "--data-dir", "/d", "--model", "nano",
                    "--image-size", "64", "--epochs", "2", "--batch-size", "16", "--lr", "1e-3",
                    "--mixed-precision", "fp16", "--strategy", "mirrored", "--output", "o"])
    assert (c.dataset, c.data_dir, c.model, c.image_size, c.batch_size, c.strategy) == (
        "tfds:mnist:train", "/d", "nano", 64, 16, "mirrored")


def test_list_flags_take_spaces_or_commas():
    spaced = parse_args(["--depths", "2", "2", "6", "2", "--dims", "24", "48", "96", "192"])
    commas = parse_args(["--depths", "2,2,6,2", "--dims", "24,48,96,192"])
    assert (spaced.depths, spaced.dims) == (commas.depths, commas.dims) == (
        (2, 2, 6, 2), (24, 48, 96, 192))
    with pytest.raises(ConfigError, match="depths=.* is not a valid list of int"):
        parse_args(["--depths", "2,2,x,2", "--dims", "24,48,96,192"])


@pytest.mark.parametrize("flags, words", [
    (["--model", "gigantic"], "unknown model 'gigantic'"),
    (["--lr", "-1"], "lr=-1.0"),
    (["--lr", "fast"], "lr='fast' is not a valid float"),
    (["--epochs", "0"], "epochs=0"),
    (["--mixup-prob", "1.5"], "mixup_prob=1.5"),
    (["--strategy", "horovod"], "strategy='horovod'"),
    (["--mixed-precision", "int8"], "mixed_precision='int8'"),
    (["--dataset", "imagenet"], "dataset='imagenet'"),
    (["--image-size", "16"], "image_size=16"),
    (["--depths", "1", "1", "1", "1"], "depths and dims must be given together"),
    (["--weights", "/no/such/file.keras"], "weights not found"),
])
def test_bad_values_name_the_key_in_one_line(flags, words):
    with pytest.raises(ConfigError) as info:
        parse_args(flags)
    message = str(info.value)
    assert words in message and "\n" not in message


def test_bad_config_files(tmp_path):
    (tmp_path / "a.yaml").write_text("epochs: [unclosed\n")
    (tmp_path / "b.json").write_text(json.dumps({"epochz": 3}))
    (tmp_path / "c.json").write_text(json.dumps({"batch_size": 2.5}))
    for name, words in (("a.yaml", "cannot parse config file"), ("b.json", "unknown config key"),
                        ("c.json", "batch_size=2.5"), ("missing.json", "not found")):
        with pytest.raises(ConfigError, match=words):
            parse_args(["--config", str(tmp_path / name)])


def test_stem_patch_size_is_checked_against_the_image_size_and_the_family():
    from training.config import ConfigError, make_config

    from training.train import model_builder

    config = make_config({}, {"model": "atto", "stem_patch_size": 2, "image_size": 16})
    model = model_builder(config, 10)()
    assert model.get_layer("stem").patch_size == 2 and model.output_shape == (None, 10)
    with pytest.raises(ConfigError, match=r"image_size=16 .*4x4 stem needs >= 32"):
        make_config({}, {"image_size": 16})
    with pytest.raises(ConfigError, match="stem_patch_size=2 .*isotropic"):
        make_config({}, {"model": "isotropic_small", "stem_patch_size": 2})
    with pytest.raises(ConfigError, match="stem_patch_size=0"):
        make_config({}, {"stem_patch_size": 0})


def test_remat_reaches_every_block_of_the_trained_model():
    from training.train import model_builder

    config = make_config({}, {"model": "atto", "image_size": 32, "remat": True})
    model = model_builder(config, 10)()
    blocks = [layer for layer in model.layers if "_block_" in layer.name]
    assert len(blocks) == 12 and all(block.remat for block in blocks)
    plain = model_builder(make_config({}, {"image_size": 32}), 10)()
    assert not any(layer.remat for layer in plain.layers if "_block_" in layer.name)


def test_auto_mixed_precision_is_bf16_only_on_cpus_that_multiply_bf16(monkeypatch):
    """``auto`` (the Fashion-MNIST preset's) resolves on the machine: bf16 where PyTorch runs on
    a CPU with AMX or AVX-512 BF16 and no accelerator, fp32 on an AVX2-only CPU, a GPU, or the
    other backends (whose bf16 step was not faster); the named choices map straight to their
    policies and None is fp32."""
    import keras

    from training import strategy

    assert PRESETS["fashion_mnist"]["mixed_precision"] == "auto"
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    monkeypatch.setattr(strategy, "_accelerator_present", lambda: False)
    monkeypatch.setattr(strategy, "cpu_flags", lambda: {"avx2", "amx_bf16", "fma"})
    assert strategy.dtype_policy("auto") == "mixed_bfloat16"
    monkeypatch.setattr(strategy, "cpu_flags", lambda: {"avx2", "fma"})
    assert strategy.dtype_policy("auto") == "float32"
    monkeypatch.setattr(strategy, "cpu_flags", lambda: {"avx512_bf16"})
    assert strategy.dtype_policy("auto") == "mixed_bfloat16"
    for other in ("tensorflow", "jax"):
        monkeypatch.setattr(keras.backend, "backend", lambda: other)
        assert strategy.dtype_policy("auto") == "float32"
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    monkeypatch.setattr(strategy, "_accelerator_present", lambda: True)
    assert strategy.dtype_policy("auto") == "float32"
    assert [strategy.dtype_policy(c) for c in (None, "fp32", "bf16", "fp16")] == [
        "float32", "float32", "mixed_bfloat16", "mixed_float16"]
    assert make_config({}, {"dataset": "digits", "mixed_precision": "fp32"}).mixed_precision == "fp32"
    with pytest.raises(ConfigError, match="choose bf16, fp16, fp32 or auto"):
        make_config({}, {"dataset": "digits", "mixed_precision": "half"})
