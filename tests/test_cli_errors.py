"""Every command's error paths (one line on stderr, exit status 2), its quiet start-up and its
fast --help: ``keras_convnext.predict``, ``.convert``, ``.roadmap``, ``training.train`` and
``training.roadmap_experiment``. In-process checks run in the TensorFlow pass only (the
commands' error handling does not depend on the backend); one subprocess per start-up check."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run_once_across_backends
from keras_convnext import cli, convert, predict, roadmap
from keras_convnext.roadmap import report

pytestmark = run_once_across_backends("the commands' error handling is backend-independent")


def one_line_error(capsys, main, argv, status=2):
    """Runs ``main(argv)`` (returning or exiting, as argparse does); returns its one error line."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == status, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "ok.png"
    Image.fromarray(np.zeros((40, 40, 3), "uint8")).save(path)
    return str(path)


def test_predict_errors(tmp_path, image, capsys, monkeypatch):
    line = one_line_error(capsys, predict.main, [image, "--model", "atto", "--image-size", "16"])
    assert "at least 32x32 pixels" in line
    assert "--top-k must be >= 1" in one_line_error(capsys, predict.main, [image, "--top-k", "0"])
    assert "unrecognized arguments: --bogus" in one_line_error(
        capsys, predict.main, [image, "--bogus"])
    assert "holds no model.keras or best_model.keras" in one_line_error(
        capsys, predict.main, [image, "--model", str(tmp_path)])
    (tmp_path / "broken.keras").write_bytes(b"PK\x03\x04 truncated")
    assert f"cannot load model {tmp_path / 'broken.keras'}" in one_line_error(
        capsys, predict.main, [image, "--weights", str(tmp_path / "broken.keras")])

    # Offline: the download fails inside keras.utils.get_file (nothing is downloaded here).
    from keras_convnext.weights import presets

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -2] Name or service not known")

    monkeypatch.setattr(presets, "cache_dir", lambda: str(tmp_path / "cache"))
    monkeypatch.setattr(keras.utils, "get_file", offline)
    line = one_line_error(capsys, predict.main, [image, "--model", "atto", "--weights", "imagenet"])
    assert "could not download the 'imagenet' weights of convnext_atto" in line


def test_convert_errors(tmp_path, capsys):
    assert "DST must end with .weights.h5" in one_line_error(
        capsys, convert.main, [str(tmp_path / "a.pth"), str(tmp_path / "b.h5")])
    assert "a.pth" in one_line_error(
        capsys, convert.main, [str(tmp_path / "a.pth"), str(tmp_path / "b.weights.h5")])


def test_roadmap_errors(capsys):
    assert "unknown roadmap step 'bogus'" in one_line_error(
        capsys, report.main, ["--steps", "bogus"])
    assert "--steps names no step" in one_line_error(capsys, report.main, ["--steps", ","])
    assert "invalid int value" in one_line_error(capsys, report.main, ["--image-size", "x"])
    assert "32" in one_line_error(capsys, report.main, ["--steps", "resnet50",
                                                        "--image-size", "16"])
    with pytest.raises(ValueError, match="depths must be a list of integers"):
        roadmap.build("resnet50", depths="2262")


def test_training_programs_errors(tmp_path, capsys):
    from training import roadmap_experiment, train

    out = ["--output", str(tmp_path / "run")]
    assert "unrecognized arguments: --bogus" in one_line_error(
        capsys, train.main, ["--bogus", "1", *out])
    assert "depths=[2262]" in one_line_error(
        capsys, train.main, ["--depths", "2262", "--dims", "8", "16", "32", "64", *out])
    (tmp_path / "depths.yaml").write_text('depths: "2262"\ndims: [8, 16, 32, 64]\n')
    assert "depths=[2262]" in one_line_error(
        capsys, train.main, ["--config", str(tmp_path / "depths.yaml"), *out])
    (tmp_path / "steps.yaml").write_text('depths: "2262"\n')  # each step has its own widths
    assert "depths=[2262]" in one_line_error(
        capsys, roadmap_experiment.main,
        ["--steps", "resnet50", "--config", str(tmp_path / "steps.yaml"), *out])
    assert "unknown roadmap step 'bogus'" in one_line_error(
        capsys, roadmap_experiment.main, ["--steps", "bogus", *out])
    assert "the following arguments are required: --steps" in one_line_error(
        capsys, roadmap_experiment.main, out)
    assert not (tmp_path / "run").exists()


def test_tensorflow_log_lines_are_filtered_and_the_rest_kept(capfd):
    with cli.filtered_stderr():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are "
                    b"written to STDERR\n")
        os.write(2, b"I0000 00:00:1796131532.862727   29726 cudart_stub.cc:31] Could not find "
                    b"cuda drivers on your machine, GPU will not be used.\n")
        os.write(2, b"E0000 00:00:1796131540.780918   29726 cuda_platform.cc:52] failed call to "
                    b"cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n")
        os.write(2, b"To enable the following instructions: AVX2 FMA, in other operations, "
                    b"rebuild TensorFlow with the appropriate compiler flags.\n")
        os.write(2, b"a real problem\n")
    assert capfd.readouterr().err == "a real problem\n"
    assert cli.verbose_requested(["x", "-v"]) and cli.verbose_requested(["x", "--verbose"])
    assert not cli.verbose_requested(["x", "--verbose", "2"])  # training's Keras verbosity


def _command(*args, backend="tensorflow"):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**env, "KERAS_BACKEND": backend, "PYTHONPATH": REPO})


@pytest.mark.parametrize("args, error", [
    (("keras_convnext.roadmap", "--steps", "bogus"), "error: unknown roadmap step 'bogus'"),
    (("training.pretrain", "--mask-ratio", "2"), "error: bad config value: mask_ratio=2"),
])
def test_a_failing_command_prints_only_its_error_line(args, error):
    result = _command("-m", *args)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.splitlines()[-1]], result.stderr
    assert result.stderr.startswith(error), result.stderr


def test_verbose_shows_the_traceback_too(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["roadmap", "--steps", "bogus", "-v"])
    assert report.main(sys.argv[1:]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1].startswith("error: unknown roadmap step")


@pytest.mark.parametrize("module", ["training.train", "keras_convnext.predict",
                                    "keras_convnext.convert"])
def test_help_is_fast_and_describes_every_flag(module):
    result = _command("-X", "importtime", "-m", module, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "keras" not in imported and "tensorflow" not in imported
    if module == "training.train":
        help_text = " ".join(result.stdout.split())
        assert "(default: 32 (digits preset; the recipe: 224))" in help_text
        assert "--skip-bad-images" in help_text and "--model-parallel" in help_text
        from training.config import FIELDS, field_help

        assert set(field_help()) == set(FIELDS)  # a description for every key

