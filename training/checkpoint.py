"""Atomic, verified, resumable checkpoints: model + optimizer (moments, step, EMA) + the run's
history and random-number state.

Layout under ``checkpoints/``::

    ckpt-0003.weights.h5   model.save_weights(): every model variable and optimizer variable
    latest.json            {"epoch": 3, "file": "ckpt-0003.weights.h5", "sha256": "...",
                            "state": {...}, "earlier": [the older kept checkpoints' records]}

Each file is written to a temporary name in the same folder, flushed to disk and then
``os.replace``d over its final name, and ``latest.json`` is replaced only after the weights it
points to are complete and hashed (the hash is computed by reading the file back from disk). A
kill at any moment leaves ``latest.json`` naming a whole checkpoint (the previous one, if the
kill came first); stray temporary files are cleaned up. The last ``keep`` checkpoints are kept,
each with its sha256 and its state, so ``restore`` verifies the newest and, when its bytes are
damaged (HDF5 has no checksum of its own: zeroed blocks can load silently), says so in one line
and falls back to the previous good one; with none left it raises ``CheckpointError`` naming the
file. (keras.callbacks.BackupAndRestore writes its weights in place, so a kill during a save
could corrupt the only backup; hence this module.)
"""

import contextlib
import json
import os

from keras_convnext.weights.files import CheckpointError
from keras_convnext.weights.files import file_sha256 as sha256

LATEST = "latest.json"
TMP_TAG = ".tmp-"
OLD_TAG = ".old-"  # a folder being replaced (training.export's saved_model)


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
    Keras checks file extensions). Returns the sha256 of the file as read back from disk."""
    directory, name = os.path.split(os.path.abspath(path))
    stem, dot, suffix = name.partition(".")
    tmp = os.path.join(directory, f".{stem}{TMP_TAG}{os.getpid()}{dot}{suffix}")
    digest = None
    try:
        save_fn(tmp)
        if os.path.isfile(tmp):
            _fsync_file(tmp)
            digest = sha256(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.isfile(tmp):
            os.remove(tmp)
    _fsync_dir(directory)
    return digest


def remove_temporaries(directory):
    """Deletes what a killed program left in ``directory`` (temporary files and folders of
    ``atomic_save``/``atomic_write_text``/the SavedModel export). Call only while holding the
    folder's lock (``training.lock``), since another program's temporaries look the same."""
    if not os.path.isdir(directory):
        return
    import shutil

    for name in os.listdir(directory):
        if TMP_TAG in name or OLD_TAG in name:
            path = os.path.join(directory, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.remove(path)


class CheckpointManager:
    """Saves and restores ``model`` (compiled, optimizer built) in ``directory``."""

    def __init__(self, directory, keep=2):
        self.directory = directory
        self.keep = max(int(keep), 1)

    def _records(self):
        """The kept checkpoints' records, newest first ([] before the first save)."""
        path = os.path.join(self.directory, LATEST)
        if not os.path.isfile(path):
            return []
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
            earlier = record.pop("earlier", [])
            return [record, *earlier]
        except (OSError, ValueError, AttributeError) as e:
            raise CheckpointError(f"cannot resume: {path} is damaged ({e}); move the "
                                  "checkpoints folder away or use another --output") from None

    def latest(self):
        """The newest checkpoint's record (``epoch``, ``file``, ``sha256``, ``state``), or None
        (not verified: see ``restore``)."""
        records = self._records()
        return records[0] if records else None

    def verify(self, record):
        """None if ``record``'s file is whole (its sha256 matches), else why not."""
        path = os.path.join(self.directory, record["file"])
        if not os.path.isfile(path):
            return "missing"
        expected = record.get("sha256")
        if expected is not None and sha256(path) != expected:
            return "damaged: its sha256 differs from the one recorded when it was written"
        return None

    def save(self, model, epoch, state):
        """Writes checkpoint ``epoch`` (completed epochs) with a JSON-able ``state``; the older
        checkpoints are pruned only once the new one is on disk and named by latest.json."""
        os.makedirs(self.directory, exist_ok=True)
        name = f"ckpt-{epoch:04d}.weights.h5"
        digest = atomic_save(lambda tmp: model.save_weights(tmp),
                             os.path.join(self.directory, name))
        kept = [r for r in self._records() if r["epoch"] < epoch][: self.keep - 1]
        record = {"epoch": int(epoch), "file": name, "sha256": digest, "state": state,
                  "seeds": seed_states(model), "earlier": kept}
        atomic_write_text(os.path.join(self.directory, LATEST), json.dumps(record, indent=1))
        self._prune({name, *(r["file"] for r in kept)})

    def restore(self, model, log=print):
        """Loads the newest good checkpoint into ``model``; returns its record, or None when
        there is none. A damaged newest checkpoint is reported with ``log`` in one line and the
        previous good one is used; if none is good, raises ``CheckpointError``."""
        records = self._records()
        damaged = []
        for record in records:
            path = os.path.join(self.directory, record["file"])
            problem = self.verify(record)
            if problem is None:
                try:
                    model.load_weights(path)
                except Exception as e:  # noqa: BLE001 - h5py raises OSError, RuntimeError, ...
                    problem = f"unreadable ({first_line(e)})"
            if problem is None:
                set_seed_states(model, record.get("seeds"))
                if damaged:
                    log(f"warning: checkpoint {damaged[0][0]} is {damaged[0][1]}; resuming from "
                        f"the previous good checkpoint {path}")
                return record
            damaged.append((path, problem))
        if damaged:
            path, problem = damaged[0]
            raise CheckpointError(
                f"cannot resume: checkpoint {path} is {problem}"
                + (f", and so is every earlier one ({len(damaged) - 1})" if len(damaged) > 1
                   else "")
                + "; move the checkpoints folder away or use another --output")
        return None

    def _prune(self, keep):
        for name in os.listdir(self.directory):
            if name.startswith("ckpt-") and name.endswith(".weights.h5") and name not in keep:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self.directory, name))
        remove_temporaries(self.directory)


def _seed_variables(model):
    # SeedGenerator states (stochastic depth's masks): part of the model's state, not of
    # save_weights. Their paths are numbered per process; their order is the builder's.
    return [v for v in model.variables if v.name == "seed_generator_state"]


def seed_states(model):
    """The model's random-number generator states, as JSON-able lists (in variable order)."""
    import keras

    return [keras.ops.convert_to_numpy(v.value).tolist() for v in _seed_variables(model)]


def set_seed_states(model, states):
    """Restores ``seed_states(model)`` (a checkpoint written before they were kept: no-op)."""
    variables = _seed_variables(model)
    if states is None or len(states) != len(variables):
        return
    import numpy as np

    for v, value in zip(variables, states):
        v.assign(np.asarray(value, dtype=v.dtype))


def first_line(error):
    """The first line of an exception's message (or its type when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
