"""What every benchmark here shares: machine facts (the CPU is named in every result), the
interleaved timing harness, and the runner that measures each backend in a process of its own
(Keras picks its backend once per process). Used by ``bench.py`` and ``compare.py``.
"""

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types

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


def rss_mib():
    """The current resident set of this process in MiB (Linux ``/proc``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


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


def write_report(report, json_path=None):
    """Writes ``report`` to ``json_path`` (when given) and returns it."""
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=1)
    return report


def print_rows(rows, describe, json_path=None, several=True):
    """Prints ``describe(row)`` (or the row's error) for each backend's row and writes the rows
    to ``json_path``: all of them (``several``), or the one row a per-backend child measured,
    which ``run_in_backend`` reads back. Returns ``rows``."""
    for row in rows:
        print(f"failed: {row['error']}" if "error" in row else describe(row))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(rows if several else rows[0], f, indent=1)
    return rows


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


# ------------------------------------------------------------------------ timm, the reference


class _EmptyModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``torchvision`` and its submodules to modules whose every attribute is an
    inert placeholder class."""

    class _Placeholder(type):
        def __getattr__(cls, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return f"{cls.__name__}.{name}"

    class _Module(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            value = _EmptyModules._Placeholder(name, (), {"__init__": lambda *a, **k: None})
            setattr(self, name, value)
            return value

    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = self._Module(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


@contextlib.contextmanager
def _without_torchvision():
    finder = _EmptyModules()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            if isinstance(sys.modules[name], _EmptyModules._Module):
                del sys.modules[name]


def import_timm():
    """timm, or None if it is not installed. timm imports torchvision for its data pipeline
    and BatchNorm freezing, never for ConvNeXt, and no CPU build of torchvision installs beside
    the CPU torch pinned here (timm is installed with --no-deps): without a working torchvision,
    its imports resolve to empty modules while timm is imported, then are removed again."""
    if importlib.util.find_spec("timm") is None:
        return None
    if "timm" in sys.modules:
        return sys.modules["timm"]
    try:
        import torchvision  # noqa: F401  (a working torchvision needs no help)

        return importlib.import_module("timm")
    except Exception:  # noqa: BLE001 - missing, or a build that cannot load beside this torch
        for name in [n for n in sys.modules if n == "timm" or n.startswith(("timm.", "torchvision"))]:
            del sys.modules[name]
    with _without_torchvision():
        return importlib.import_module("timm")
