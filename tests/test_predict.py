"""The prediction command and the ImageNet helpers it uses."""

import numpy as np
import pytest
from PIL import Image

import keras_convnext
from keras_convnext import predict
from keras_convnext.imagenet import class_names, decode_predictions, load_image


def test_the_bundled_class_names_are_imagenet_1k_in_order():
    names = class_names()
    assert len(names) == 1000
    assert names[0] == "tench" and names[207] == "golden retriever" and names[999] == "toilet tissue"


def test_decode_predictions_ranks_the_best_classes_first():
    scores = np.zeros((1, 1000))
    scores[0, [281, 207, 3]] = [0.5, 0.3, 0.2]
    top = decode_predictions(scores, top=3)[0]
    assert [(i, round(s, 2)) for i, _, s in top] == [(281, 0.5), (207, 0.3), (3, 0.2)]
    assert top[0][1] == "tabby"
    with pytest.raises(ValueError, match="expects"):
        decode_predictions(np.zeros((1, 10)))


def test_load_image_resizes_the_short_side_and_center_crops(tmp_path):
    pixels = np.zeros((100, 300, 3), "uint8")
    pixels[:, 140:160] = 255  # a white vertical bar in the middle
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    image = load_image(tmp_path / "wide.png", size=64)
    assert image.shape == (64, 64, 3) and image.dtype == np.float32
    assert image[:, 32].mean() > 200 and image[:, 0].mean() < 10


def test_load_image_names_a_file_that_is_not_an_image(tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="notes.jpg"):
        load_image(tmp_path / "notes.jpg")


def test_predict_prints_the_top5_for_each_image(tmp_path, capsys):
    model = keras_convnext.ConvNeXtAtto()
    weights = str(tmp_path / "atto.weights.h5")
    model.save_weights(weights)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        paths.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype="uint8")).save(paths[-1])
    code = predict.main([*paths, "--model", "atto", "--weights", weights, "--image-size", "64"])
    out = capsys.readouterr().out
    assert code == 0
    for path in paths:
        assert path in out
    ranked = [line for line in out.splitlines() if line.strip()[:2] in ("1.", "5.")]
    assert len(ranked) == 4
    assert "img/s" in out


def test_predict_reports_bad_input_in_one_line(tmp_path, capsys):
    assert predict.main([str(tmp_path / "missing.png"), "--model", "atto"]) == 2
    assert "missing.png" in capsys.readouterr().err
    Image.fromarray(np.zeros((40, 40, 3), "uint8")).save(tmp_path / "ok.png")
    assert predict.main([str(tmp_path / "ok.png"), "--model", "gigantic"]) == 2
    assert "unknown ConvNeXt variant 'gigantic'" in capsys.readouterr().err


def _run_folder(tmp_path, names=("cat", "dog", "bird"), channels=3):
    """A run folder as training.train leaves it: model.keras, classes.json, config.json."""
    import json

    run = tmp_path / "run"
    run.mkdir()
    model = keras_convnext.ConvNeXt((1, 1, 1, 1), (8, 16, 32, 64), classes=len(names),
                                    input_shape=(32, 32, channels))
    model.save(run / "model.keras")
    (run / "classes.json").write_text(json.dumps(list(names)))
    (run / "config.json").write_text(json.dumps({"image_size": 32, "crop_pct": 1.0,
                                                 "channels": channels, "epochs": 1}))
    return run, model


def test_predict_a_run_folder_prints_its_class_names(tmp_path, capsys):
    run, model = _run_folder(tmp_path)
    path = str(tmp_path / "img.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), "uint8")).save(path)
    expected = model.predict(load_image(path, 32, crop_ratio=1.0)[None], verbose=0)[0]
    best = ["cat", "dog", "bird"][int(np.argmax(expected))]
    for argv in (["--model", str(run)], ["--model", str(run / "model.keras")],
                 ["--weights", str(run)]):
        assert predict.main([path, *argv, "--top-k", "2"]) == 0
        out = capsys.readouterr().out
        ranked = [line.split() for line in out.splitlines() if line.strip()[:2] in ("1.", "2.")]
        assert len(ranked) == 2 and ranked[0][1] == best, out
        assert f"{100 * expected.max():.2f}%" in out
        assert "img/s" in out


def test_predict_a_one_channel_run_and_a_model_without_names(tmp_path, capsys):
    run, _ = _run_folder(tmp_path, names=[str(d) for d in range(10)], channels=1)
    path = str(tmp_path / "img.png")
    Image.fromarray(np.zeros((32, 32, 3), "uint8")).save(path)
    assert predict.main([path, "--model", str(run), "--top-k", "10"]) == 0
    ranked = [line.split()[1] for line in capsys.readouterr().out.splitlines()
              if line.startswith("  ") and line.split()[0].rstrip(".").isdigit()]
    assert sorted(ranked) == [str(d) for d in range(10)]
    other = tmp_path / "elsewhere"
    other.mkdir()
    keras_convnext.ConvNeXt((1, 1, 1, 1), (8, 16, 32, 64), classes=4).save(other / "m.keras")
    assert predict.main([path, "--model", str(other / "m.keras"), "--image-size", "32"]) == 0
    assert "class 0" in capsys.readouterr().out  # no saved names: "class N"
    (run / "classes.json").write_text('["just one"]')
    assert predict.main([path, "--model", str(run)]) == 2
    assert "saved 1 class names for a model of 10 classes" in capsys.readouterr().err
