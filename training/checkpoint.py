"""Atomic, resumable checkpoints: model + optimizer (moments, step, EMA) + the run's history.

Layout under ``checkpoints/``::

    ckpt-0003.weights.h5   model.save_weights(): every model variable and optimizer variable
    latest.json            {"epoch": 3, "file": "ckpt-0003.weights.h5", "state": {...}}

Each file is written to a temporary name in the same folder, flushed to disk and then
``os.replace``d over its final name, and ``latest.json`` is replaced only after the weights it
points to are complete. A kill at any moment leaves ``latest.json`` naming a whole checkpoint
(the previous one, if the kill came first); stray temporary files are ignored and cleaned up.
The last ``keep`` checkpoints are kept. (keras.callbacks.BackupAndRestore writes its weights in
place, so a kill during a save could corrupt the only backup; hence this module.)
"""

import contextlib
import json
import os

LATEST = "latest.json"
TMP_TAG = ".tmp-"


def _fsync_dir(directory):
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path):
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write_text(path, text):
    """Writes ``text`` to ``path`` so that readers see the old or the new file, never a part."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}{TMP_TAG}{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(directory)


def atomic_save(save_fn, path):
    """Calls ``save_fn(tmp_path)`` then moves the result to ``path`` (same suffix kept, since
    Keras checks file extensions)."""
    directory, name = os.path.split(os.path.abspath(path))
    stem, dot, suffix = name.partition(".")
    tmp = os.path.join(directory, f".{stem}{TMP_TAG}{os.getpid()}{dot}{suffix}")
    try:
        save_fn(tmp)
        if os.path.isfile(tmp):
            _fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.isfile(tmp):
            os.remove(tmp)
    _fsync_dir(directory)


class CheckpointManager:
    """Saves and restores ``model`` (compiled, optimizer built) in ``directory``."""

    def __init__(self, directory, keep=2):
        self.directory = directory
        self.keep = keep

    def latest(self):
        """The newest complete checkpoint's record (``epoch``, ``file``, ``state``), or None."""
        path = os.path.join(self.directory, LATEST)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        if not os.path.isfile(os.path.join(self.directory, record["file"])):
            raise RuntimeError(f"checkpoint {record['file']} named by {path} is missing")
        return record

    def save(self, model, epoch, state):
        """Writes checkpoint ``epoch`` (completed epochs) with a JSON-able ``state``."""
        os.makedirs(self.directory, exist_ok=True)
        name = f"ckpt-{epoch:04d}.weights.h5"
        atomic_save(lambda tmp: model.save_weights(tmp), os.path.join(self.directory, name))
        record = {"epoch": int(epoch), "file": name, "state": state}
        atomic_write_text(os.path.join(self.directory, LATEST), json.dumps(record, indent=1))
        self._prune(name)

    def restore(self, model):
        """Loads the newest checkpoint into ``model``; returns its record, or None."""
        record = self.latest()
        if record is not None:
            model.load_weights(os.path.join(self.directory, record["file"]))
        return record

    def _prune(self, newest):
        names = sorted(n for n in os.listdir(self.directory)
                       if n.startswith("ckpt-") and n.endswith(".weights.h5"))
        for name in names[:-self.keep] if self.keep else []:
            if name != newest:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self.directory, name))
        for name in os.listdir(self.directory):
            if TMP_TAG in name:  # left by a run killed while saving
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self.directory, name))
