"""Shared fixtures. The suite runs once per backend (scripts/test.sh sets KERAS_BACKEND)."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_once_across_backends(reason="spawns every backend itself"):
    """Marks a test that runs only in the TensorFlow pass: one that starts a process per
    backend itself, or whose result cannot depend on the backend."""
    return pytest.mark.skipif(BACKEND != "tensorflow", reason=f"{reason}; runs in the tensorflow pass")


def run_python(code, backend, *args, timeout=600, env=None):
    """Runs ``python -c code`` under ``backend``; returns stdout, fails the test on error."""
    full_env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO,
    )
    if result.returncode != 0:
        pytest.fail(f"{backend} subprocess failed:\n{result.stdout}\n{result.stderr[-4000:]}")
    return result.stdout


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _reset_keras_state():
    yield
    keras.config.set_dtype_policy("float32")
    keras.config.set_image_data_format("channels_last")
