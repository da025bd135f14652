"""What every command of the package shares (``keras_convnext.predict``, ``.convert``,
``.roadmap``, ``training.train``, ``training.roadmap_experiment``): quiet start-up, one-line
errors, exit statuses.

* Quiet: TensorFlow's C++ start-up lines (absl's "All log messages before absl::InitializeLog",
  "Could not find cuda drivers", the CPU-feature banner, "failed call to cuInit") are written
  to file descriptor 2 before any Python code could filter them, some even with
  ``TF_CPP_MIN_LOG_LEVEL=3``. ``quiet_start()`` sets ``TF_CPP_MIN_LOG_LEVEL=2`` and Python's
  ``tensorflow``/``absl`` loggers to errors, then (when TensorFlow will be used) imports it and
  lists its devices with file descriptor 2 captured, replaying every captured line that is not
  such a log line. ``-v`` / ``--verbose`` on the command line leaves all of it alone.
* ``--help`` answers before Keras or TensorFlow is imported: ``keras_convnext/__init__.py``
  imports nothing heavy when a command of the package was started with ``-h``/``--help``.
* Errors: ``ArgumentParser.error`` prints one line (``error: ... (see PROG --help)``) and exits 2;
  ``exit_status`` runs a command, turning the errors a user can fix into one line and 2.

Nothing here imports Keras or TensorFlow.
"""

import argparse
import contextlib
import logging
import os
import re
import sys
import tempfile
import traceback

HELP_FLAGS = ("-h", "--help")
# The packages whose modules are commands (``python -m keras_convnext.predict``, ...).
COMMAND_PACKAGES = ("keras_convnext", "training")
# The commands whose --help is built from light modules only (argparse, architecture names).
FAST_HELP = ("keras_convnext.predict", "keras_convnext.convert", "training.train")

# A line of TensorFlow's / XLA's C++ logging (absl format) or the banners printed with them.
_LOG_LINE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w.\-]+:\d+\]"
    r"|To enable the following instructions: .* rebuild TensorFlow)"
)


def command(argv=None):
    """The command this process runs (``"keras_convnext.predict"``, ``"training.train"``, ...)
    when it is one of the package's, else None: from ``python -m MODULE`` (``sys.orig_argv``;
    while ``-m`` locates the module, ``sys.argv[0]`` is only ``"-m"``) or the file run."""
    if argv is None:
        orig = getattr(sys, "orig_argv", [])
        if "-m" in orig[:-1]:
            module = orig[orig.index("-m") + 1]
            return module if module.split(".")[0] in COMMAND_PACKAGES else None
        argv = sys.argv
    if not argv or not argv[0] or argv[0] in ("-c", "-m") or not argv[0].endswith(".py"):
        return None
    parts = os.path.normpath(os.path.abspath(argv[0]))[:-3].split(os.sep)
    return ".".join(parts[-2:]) if len(parts) >= 2 and parts[-2] in COMMAND_PACKAGES else None


def help_only(argv=None):
    """True when a command whose help needs no model (``FAST_HELP``) was started with
    ``-h``/``--help``: argparse prints it and exits, so nothing heavy needs importing."""
    wanted = any(a in HELP_FLAGS for a in (sys.argv if argv is None else argv)[1:])
    return wanted and command(argv) in FAST_HELP


def verbose_requested(argv=None):
    """``-v`` on the command line, or ``--verbose`` as a switch (the training programs'
    ``--verbose N`` is Keras' progress display, not this)."""
    argv = (sys.argv if argv is None else argv)[1:]
    return "-v" in argv or any(a == "--verbose" and argv[i + 1:i + 2] not in (["0"], ["1"], ["2"])
                               for i, a in enumerate(argv))


def is_tensorflow_log_line(line):
    return bool(_LOG_LINE.match(line))


@contextlib.contextmanager
def filtered_stderr(keep=None):
    """Captures file descriptor 2 (C++ writes too) and replays the lines ``keep(line)`` is
    true for (default: those that are not TensorFlow log lines)."""
    keep = keep or (lambda line: not is_tensorflow_log_line(line))
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode("utf-8", "replace")
                    .splitlines(keepends=True) if keep(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def quiet_start(verbose=None, tensorflow=None):
    """Silences TensorFlow's start-up logs (unless ``verbose``, default: ``-v`` on the command
    line); call before TensorFlow is first imported. ``tensorflow``: import it now (default:
    when Keras' backend is TensorFlow); the training programs always need it (tf.data)."""
    if verbose is None:
        verbose = verbose_requested()
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if tensorflow is None:
        tensorflow = _keras_backend() == "tensorflow"
    if not tensorflow or "tensorflow" in sys.modules:
        return
    try:
        with filtered_stderr():
            import tensorflow as tf

            tf.config.list_physical_devices()  # CUDA's cuInit logs here
    except ImportError:
        return
    with contextlib.suppress(ImportError):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)


def _keras_backend():
    """Keras' backend as Keras will choose it (KERAS_BACKEND, else ~/.keras/keras.json),
    without importing Keras."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    with contextlib.suppress(OSError, ValueError):
        import json

        with open(os.path.join(home, "keras.json"), encoding="utf-8") as f:
            return json.load(f).get("backend", "tensorflow")
    return "tensorflow"


def first_line(error):
    """The first non-empty line of an exception's message (or its type's name)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a bad flag reported in one line (and exit status 2), and every flag's
    default shown in the help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


# Errors a user can fix: bad flags, files, values. CheckpointError and the training program's
# ConfigError / DataError are ValueErrors.
USER_ERRORS = (ValueError, OSError, ImportError, NotImplementedError)


def exit_status(work, report=None, errors=USER_ERRORS, failures=()):
    """Runs ``work()``; on success prints ``report(result)`` (when given and not empty) and
    returns 0. A failure prints one line on stderr and returns its status: 2 for ``errors``
    (the user can fix them), 1 for ``failures`` (the work could not go on), 130 for Ctrl-C;
    with ``-v`` the traceback comes first."""
    try:
        result = work()
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except failures as e:
        return _fail(e, 1)
    except errors as e:
        return _fail(e, 2)
    text = report(result) if report is not None else None
    if text:
        print(text, flush=True)
    return 0


def _fail(error, status):
    if verbose_requested():  # -v: the whole story
        traceback.print_exception(error)
    print(f"error: {first_line(error)}", file=sys.stderr)
    return status
