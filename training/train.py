"""``python -m training.train``: train or fine-tune a ConvNeXt with the paper's recipe.

    python -m training.train --dataset digits --output runs/digits
    python -m training.train --dataset folder:/data/flowers --model tiny --image-size 224 \\
        --epochs 50 --weights runs/in1k/model.keras --layer-decay 0.8
    python -m training.train --config recipe.yaml --strategy multiworker   # TF_CONFIG set

Rerunning the same command resumes from the last checkpoint under ``--output``. See
training/TRAINING.md for every flag, the recipe's defaults and what is written where.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import csv  # noqa: E402
import dataclasses  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import typing  # noqa: E402

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_convnext  # noqa: E402
from training import augment, data, export, recipe, strategy  # noqa: E402
from training.checkpoint import CheckpointManager, atomic_write_text  # noqa: E402
from training.config import MIXED_PRECISION, Config, ConfigError, parse_args  # noqa: E402
from training.data import DataError  # noqa: E402
from keras_convnext.variants import get_variant  # noqa: E402

CSV_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss); the message is one line."""


@dataclasses.dataclass
class RunResult:
    model: keras.Model  # the trained model (EMA weights after fit)
    rows: typing.List[dict]  # metrics.csv
    best: typing.Optional[dict]  # {"epoch", "val_accuracy"}
    output: str
    files: typing.List[str]
    seconds: float
    resumed_from: int = 0


# ------------------------------------------------------------------------------------- model


def model_spec(config):
    """(name, depths, dims, drop_path) of the configured network."""
    if config.depths is not None:
        name, depths, dims, default_drop = "custom", config.depths, config.dims, 0.0
    else:
        variant = get_variant(config.model)
        name, depths, dims = variant.name, variant.depths, variant.dims
        default_drop = variant.default_drop_path_rate
    drop = default_drop if config.drop_path is None else config.drop_path
    return name, tuple(depths), tuple(dims), drop


def model_builder(config, num_classes):
    name, depths, dims, drop = model_spec(config)

    def build():
        return keras_convnext.ConvNeXt(
            depths, dims,
            model_name=f"convnext_{name}",
            input_shape=(config.image_size, config.image_size, 3),
            classes=num_classes,
            drop_path_rate=drop,
            layer_scale_init_value=config.layer_scale_init or None,
            seed=config.seed,
        )

    return build


def read_pretrained(path):
    """``(kind, payload)``: a ``.keras`` model or run folder -> {path: array}; any checkpoint
    file keras_convnext reads (.weights.h5, official/timm .pth, safetensors, HF, keras.applications
    .h5) -> the path, loaded by ``keras_convnext.load_weights`` with a fresh head if classes differ."""
    if os.path.isdir(path):
        path = os.path.join(path, "model.keras")
        if not os.path.isfile(path):
            raise ConfigError(f"weights folder has no model.keras: {os.path.dirname(path)}")
    if not path.endswith(".keras"):
        if not os.path.isfile(path):
            raise ConfigError(f"weights file not found: {path}")
        return "checkpoint", path
    try:
        source = keras.saving.load_model(path, compile=False)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"cannot read weights {path}: {data.first_line(e)}") from None
    return "keras", {v.path: keras.ops.convert_to_numpy(v.value)
                     for v in source.trainable_variables}


def load_pretrained(model, pretrained, log):
    kind, payload = pretrained
    if kind == "checkpoint":
        try:
            keras_convnext.load_weights(model, payload, skip_mismatched_head=True)
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"cannot load weights {payload}: {data.first_line(e)}") from None
        log(f"Fine-tuning from {payload}")
        return
    skipped = []
    for v in model.trainable_variables:
        value = payload.get(v.path)
        if value is not None and tuple(value.shape) == tuple(v.shape):
            v.assign(value)
        elif v.path.startswith("predictions/"):
            skipped.append(v.path)  # a new head for a new number of classes, as officially
        else:
            raise ConfigError(
                f"weights do not fit this model: {v.path} is "
                f"{'missing' if value is None else f'shaped {value.shape}, need {tuple(v.shape)}'}"
            )
    log("Fine-tuning from pretrained weights"
        + (f" (new head: {', '.join(skipped)})" if skipped else ""))


# ---------------------------------------------------------------------------------- callbacks


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

    def __init__(self, out_dir, manager, state, nan_guard, save_best, config_dict):
        super().__init__()
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
        for key in CSV_COLUMNS[1:-1]:
            row[key] = float(logs[key]) if key in logs else None
        row["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        self.state["rows"] = [r for r in self.state["rows"] if r["epoch"] <= epoch] + [row]
        write_metrics_csv(os.path.join(self.out_dir, "metrics.csv"), self.state["rows"])
        score = row["val_accuracy"]
        best = self.state.get("best")
        if score is not None and (best is None or score > best["val_accuracy"]):
            self.state["best"] = {"epoch": epoch + 1, "val_accuracy": score}
            self.save_best()
        self.state["config"] = self.config_dict
        self.manager.save(self.model, epoch + 1, self.state)


def write_metrics_csv(path, rows):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in CSV_COLUMNS})
    atomic_write_text(path, buffer.getvalue())


# --------------------------------------------------------------------------------------- run


def _say(message):
    print(message, flush=True)


def run(config: Config, log=_say) -> RunResult:
    """Trains (or resumes) the run described by ``config``; returns what it produced."""
    start = time.time()
    runtime = strategy.select(config.strategy, config.cpu_devices)
    if config.mixed_precision:
        keras.config.set_dtype_policy(MIXED_PRECISION[config.mixed_precision])
    keras.utils.set_random_seed(config.seed)

    source = data.load(config)
    global_batch = config.batch_size * runtime.num_replicas
    if config.steps_per_epoch is not None:
        steps_per_epoch = config.steps_per_epoch
    elif source.num_train is None:
        raise DataError("the training set size is unknown: set steps_per_epoch")
    else:
        steps_per_epoch = max(1, source.num_train // global_batch)
    peak_lr = (config.lr if config.lr is not None else recipe.default_lr(config.batch_size))
    peak_lr *= runtime.num_replicas  # linear scaling with the global batch
    warmup_epochs = min(config.epochs, config.warmup_epochs if config.warmup_epochs is not None
                        else recipe.default_warmup_epochs(config.epochs))
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    ema_decay = recipe.ema_decay_for(total_steps, config.ema_decay)
    name, depths, dims, drop = model_spec(config)

    # Every worker runs the same steps (collectives must match); only the chief writes into
    # --output, the others into a temporary folder removed at the end.
    out_dir = config.output if runtime.is_chief else tempfile.mkdtemp(prefix="convnext_worker_")
    os.makedirs(out_dir, exist_ok=True)
    manager = CheckpointManager(os.path.join(config.output, "checkpoints"))
    writer = (manager if runtime.is_chief
              else CheckpointManager(os.path.join(out_dir, "checkpoints")))
    config_dict = config.to_dict()

    train_ds = data.train_pipeline(source, config, global_batch, augment.image_augment(config),
                                   augment.batch_augment(config))
    val_ds = data.eval_pipeline(source, config, global_batch)
    build = model_builder(config, source.num_classes)
    pretrained = read_pretrained(config.weights) if config.weights else None

    with runtime.scope():
        model = build()
        if pretrained is not None:
            load_pretrained(model, pretrained, log)
        optimizer = recipe.make_optimizer(model, config, depths, peak_lr, total_steps,
                                          warmup_steps, ema_decay)
        model.compile(optimizer=optimizer, loss=recipe.make_loss(config), metrics=["accuracy"],
                      jit_compile="auto" if config.jit_compile is None else config.jit_compile)
        model.optimizer.build(model.trainable_variables)
    strategy.adapt_model(runtime, model)

    record = manager.restore(model)
    state = record["state"] if record else {"rows": [], "best": None}
    initial_epoch = record["epoch"] if record else 0
    if record:
        log(f"Resuming from {os.path.join(manager.directory, record['file'])} "
            f"({initial_epoch} of {config.epochs} epochs done)")
        changed = [k for k in ("dataset", "model", "depths", "dims", "image_size")
                   if state.get("config", {}).get(k, config_dict[k]) != config_dict[k]]
        if changed:
            log(f"warning: {', '.join(changed)} differ from the checkpointed run")
        write_metrics_csv(os.path.join(out_dir, "metrics.csv"),
                          [r for r in state["rows"] if r["epoch"] <= initial_epoch])
    if runtime.is_chief:
        atomic_write_text(os.path.join(out_dir, "config.json"), json.dumps(config_dict, indent=1))

    log(f"ConvNeXt-{name} depths={list(depths)} dims={list(dims)} "
        f"({model.count_params():,} parameters), {config.image_size} px, drop_path={drop}")
    log(f"Data: {source.description}")
    log(f"{runtime.name} x{runtime.num_replicas}: global batch {global_batch}, "
        f"{steps_per_epoch} steps/epoch, peak lr {peak_lr:.3g} (warm-up {warmup_steps} steps, "
        f"cosine to {config.min_lr:g}), weight decay {config.weight_decay}, "
        f"EMA {f'{ema_decay:.6g}' if config.ema else 'off'}, layer decay {config.layer_decay}, "
        f"precision {keras.config.dtype_policy().name}")

    paths = {
        "metrics": os.path.join(out_dir, "metrics.csv"),
        "logs": os.path.join(out_dir, "logs"),
        "best": os.path.join(out_dir, "best_model.keras"),
        "final": os.path.join(out_dir, "model.keras"),
        "saved_model": os.path.join(out_dir, "saved_model"),
    }

    def save_best():
        export.save_keras(export.inference_model(model, build), paths["best"])

    nan_guard = NanGuard()
    callbacks = [nan_guard]
    if config.ema:
        callbacks.append(EmaEvaluation())
    callbacks += [
        RunLog(out_dir, writer, state, nan_guard, save_best, config_dict),
        keras.callbacks.TensorBoard(paths["logs"], write_graph=False, profile_batch=0),
    ]
    verbose = config.verbose if config.verbose is not None else (1 if sys.stdout.isatty() else 2)
    if initial_epoch < config.epochs:
        try:
            model.fit(train_ds, epochs=config.epochs, initial_epoch=initial_epoch,
                      steps_per_epoch=steps_per_epoch, validation_data=val_ds,
                      validation_steps=config.validation_steps, callbacks=callbacks,
                      verbose=verbose, shuffle=False)
        except (tf.errors.InvalidArgumentError, tf.errors.DataLossError,
                tf.errors.NotFoundError) as e:
            failure = _data_failure(e, source)
            if failure is None:
                raise
            raise failure from None
    if nan_guard.where is not None:
        epoch, step = nan_guard.where
        last = state["rows"][-1]["epoch"] if state["rows"] else 0
        raise TrainingError(
            f"loss became NaN at epoch {epoch}, step {step}; stopped without saving that epoch "
            f"(last checkpoint: epoch {last}); try a lower --lr, --clip-grad-norm 1.0, or fp32"
        )

    files = [paths["metrics"], paths["logs"], manager.directory]
    if os.path.exists(paths["best"]):
        files.append(paths["best"])
    if config.export:
        final = export.inference_model(model, build)
        export.save_keras(final, paths["final"])
        export.export_saved_model(final, paths["final"], paths["saved_model"])
        files += [paths["final"], paths["saved_model"]]
    if not runtime.is_chief:
        shutil.rmtree(out_dir, ignore_errors=True)
    return RunResult(model, state["rows"], state.get("best"), config.output, files,
                     time.time() - start, initial_epoch)


def _data_failure(error, source):
    """A one-line DataError for an input failure (naming the corrupt image file when there is
    one), or None when the error does not come from the data."""
    bad = data.find_unreadable(source.files) if source.files else None
    if bad is not None:
        return DataError(f"corrupt or unreadable image file {bad[0]}: {bad[1]}")
    if isinstance(error, tf.errors.DataLossError):
        return DataError(f"corrupt record in the dataset: {data.first_line(error.message)}")
    return None


def _duration(seconds):
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def summary(result):
    lines = [f"Done in {_duration(result.seconds)}."]
    if result.best is not None:
        last = result.rows[-1] if result.rows else {}
        lines.append(
            f"Best val accuracy {result.best['val_accuracy']:.4f} (epoch {result.best['epoch']}, "
            f"EMA weights when EMA is on); last epoch {last.get('val_accuracy', float('nan')):.4f}."
        )
    lines.append(f"Files in {result.output}: " + ", ".join(
        os.path.relpath(p, result.output) + ("/" if os.path.isdir(p) else "")
        for p in result.files))
    return "\n".join(lines)


def main(argv=None):
    """The CLI; returns the exit status (0 done, 1 failed, 2 bad configuration or data)."""
    try:
        config = parse_args(argv)
        result = run(config)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    print(summary(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
