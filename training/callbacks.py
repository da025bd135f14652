"""The training program's Keras callbacks, reusable by every program that fits a ConvNeXt:
``NanGuard`` (stop at the first non-finite loss), ``EmaEvaluation`` (validate on the EMA weights)
and ``RunLog`` (metrics.csv, best model, checkpoint, in that order, at each epoch's end).
"""

import csv
import io
import math
import os

import keras

from training import recipe
from training.checkpoint import atomic_write_text

CSV_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")


class NanGuard(keras.callbacks.Callback):
    """Stops at the first non-finite training loss (before anything is saved)."""

    def __init__(self):
        super().__init__()
        self.where = None
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(keras.ops.convert_to_numpy(loss))):
            self.where = (self.epoch + 1, batch + 1)
            self.model.stop_training = True


class EmaEvaluation(keras.callbacks.Callback):
    """Validates on the EMA weights: swaps them in for fit's validation, and back after."""

    def __init__(self):
        super().__init__()
        self.in_fit = False
        self.saved = None

    def on_train_begin(self, logs=None):
        self.in_fit = True

    def on_train_end(self, logs=None):
        self.in_fit = False

    def on_test_begin(self, logs=None):
        ema = recipe.ema_variables(self.model.optimizer)
        if not self.in_fit or not ema:
            return
        variables = self.model.trainable_variables
        self.saved = [keras.ops.convert_to_numpy(v.value) for v in variables]
        for v in variables:  # copies: JAX's evaluate frees the arrays the model holds
            v.assign(keras.ops.convert_to_numpy(ema[v.path].value))

    def on_test_end(self, logs=None):
        if self.saved is not None:
            for v, value in zip(self.model.trainable_variables, self.saved):
                v.assign(value)
            self.saved = None


class RunLog(keras.callbacks.Callback):
    """At each epoch end: the metrics.csv row, the best model, then the checkpoint (in this
    order, and the CSV is rewritten from the checkpointed rows on resume, so after any kill
    every epoch appears exactly once)."""

    def __init__(self, out_dir, manager, state, nan_guard, save_best, config_dict,
                 columns=CSV_COLUMNS):
        super().__init__()
        self.columns = tuple(columns)
        self.out_dir = out_dir
        self.manager = manager
        self.state = state
        self.nan_guard = nan_guard
        self.save_best = save_best
        self.config_dict = config_dict

    def on_epoch_end(self, epoch, logs=None):
        if self.nan_guard.where is not None:
            return
        logs = logs or {}
        optimizer = recipe.base_optimizer(self.model.optimizer)
        row = {"epoch": epoch + 1}
        for key in self.columns[1:-1]:
            row[key] = float(logs[key]) if key in logs else None
        row["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        self.state["rows"] = [r for r in self.state["rows"] if r["epoch"] <= epoch] + [row]
        write_metrics_csv(os.path.join(self.out_dir, "metrics.csv"), self.state["rows"],
                          self.columns)
        score = row.get("val_accuracy")
        best = self.state.get("best")
        if score is not None and (best is None or score > best["val_accuracy"]):
            self.state["best"] = {"epoch": epoch + 1, "val_accuracy": score}
            self.save_best()
        self.state["config"] = self.config_dict
        self.manager.save(self.model, epoch + 1, self.state)


def write_metrics_csv(path, rows, columns=CSV_COLUMNS):
    """``rows`` as a CSV of ``columns`` (epoch first, learning_rate last)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    atomic_write_text(path, buffer.getvalue())
