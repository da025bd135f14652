"""What every benchmark here shares: machine facts (the CPU is named in every result), the
interleaved timing harness, and the runner that measures each backend in a process of its own
(Keras picks its backend once per process). Used by ``bench.py`` and ``compare.py``.
"""

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ALL_BACKENDS = ("tensorflow", "jax", "torch")


# ------------------------------------------------------------------------------ machine facts


def _cpuinfo(key):
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name():
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags():
    return set((_cpuinfo("flags") or "").split())


def load_average():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# ------------------------------------------------------------------------------------ timing


class Entry:
    """One model under test: how to call it for inference and for a training step."""

    def __init__(self, name, infer, train=None, context=None):
        self.name = name
        self.infer = infer
        self.train = train
        self.context = context or contextlib.nullcontext


def interleaved(entries, call, rounds, warmup):
    """Times ``call(entry)`` for every entry, alternating the order each round.

    Returns {name: {"first_s", "times_s", "median_s"}}; the first call of each entry is timed
    alone (it traces and compiles), then ``warmup`` rounds are dropped.
    """
    out = {e.name: {"first_s": None, "times_s": []} for e in entries}
    for e in entries:
        with e.context():
            start = time.perf_counter()
            call(e)
            out[e.name]["first_s"] = round(time.perf_counter() - start, 3)
    for r in range(warmup + rounds):
        order = entries if r % 2 == 0 else entries[::-1]
        for e in order:
            with e.context():
                start = time.perf_counter()
                call(e)
                elapsed = time.perf_counter() - start
            if r >= warmup:
                out[e.name]["times_s"].append(round(elapsed, 5))
    for name, rec in out.items():
        rec["median_s"] = statistics.median(rec["times_s"])
    return out


def add_throughput(results, batch):
    for rec in results.values():
        rec["img_s"] = round(batch / rec["median_s"], 3)


# ------------------------------------------------------------------------- one process each


def run_in_backend(script, argv, backend, out_flag="--json", timeout=None, stream=False):
    """Runs ``python script *argv out_flag PATH`` with ``KERAS_BACKEND=backend`` in a fresh
    process and returns the JSON it wrote to PATH, or ``{"error": ...}`` (with its last output
    lines unless ``stream``, which lets its output through as it runs); ``wall_s`` is added."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    env = {**os.environ, "KERAS_BACKEND": backend,
           "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    cmd = [sys.executable, os.path.abspath(script), *argv, out_flag, path]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=not stream, text=True,
                              timeout=timeout)
        try:
            with open(path) as f:
                result = json.load(f)
        except (OSError, ValueError):
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-5:]
            result = {"error": f"exit code {proc.returncode}: " + " | ".join(tail)[-600:]}
    except subprocess.TimeoutExpired:
        result = {"error": f"timed out after {timeout} s"}
    finally:
        if os.path.exists(path):
            os.unlink(path)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    return result
