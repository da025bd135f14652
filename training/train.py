"""``python -m training.train``: train or fine-tune a ConvNeXt with the paper's recipe.

    python -m training.train --dataset digits --output runs/digits
    python -m training.train --dataset folder:/data/flowers --model tiny --image-size 224 \\
        --epochs 50 --weights runs/in1k/model.keras --layer-decay 0.8
    python -m training.train --config recipe.yaml --strategy multiworker   # TF_CONFIG set

Rerunning the same command resumes from the last checkpoint under ``--output``. See
training/TRAINING.md for every flag, the recipe's defaults and what is written where.
"""

from keras_convnext import cli as _cli

if _cli.help_only():  # answer --help before Keras and TensorFlow load
    from training.config import build_parser as _parser

    _parser().parse_args()
_cli.quiet_start(tensorflow=True)  # TensorFlow's start-up logs filtered (-v: shown)

import os  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import typing  # noqa: E402

import keras  # noqa: E402

import keras_convnext  # noqa: E402
from keras_convnext.architecture import get_variant  # noqa: E402
from keras_convnext import export as keras_export  # noqa: E402
from keras_convnext.predict import CLASSES_FILE  # noqa: E402
from keras_convnext.weights.files import CheckpointError, load_keras_model  # noqa: E402,F401
from training import cli, data, evaluate, export, lock, strategy  # noqa: E402
from training.callbacks import CSV_COLUMNS, RunLog, write_metrics_csv  # noqa: E402,F401
from training.checkpoint import (  # noqa: E402
    CheckpointManager, atomic_write_text, remove_temporaries)
from training.config import Config, ConfigError, parse_args  # noqa: E402
from training.session import TrainingError, TrainingSession, drop_path_rate  # noqa: E402,F401


@dataclasses.dataclass
class RunResult:
    model: keras.Model  # the trained model (EMA weights after fit)
    rows: typing.List[dict]  # metrics.csv
    best: typing.Optional[dict]  # {"epoch", "val_accuracy"}
    output: str
    files: typing.List[str]
    seconds: float
    resumed_from: int = 0
    test: typing.Optional[dict] = None  # test_metrics.json, for sources with a test split


# ------------------------------------------------------------------------------------- model


def model_spec(config):
    """(name, depths, dims, drop_path) of the configured network."""
    if config.depths is not None:
        name, depths, dims, default_drop = "custom", config.depths, config.dims, 0.0
    else:
        variant = get_variant(config.model)
        name, depths, dims = variant.name, variant.depths, variant.dims
        default_drop = variant.default_drop_path_rate
    return name, tuple(depths), tuple(dims), drop_path_rate(config, default_drop)


def model_builder(config, num_classes):
    """A function building the configured model: a variant of any family (its LayerScale
    default unless ``layer_scale_init`` is set), or a custom ConvNeXt of ``depths``/``dims``."""
    name, depths, dims, drop = model_spec(config)
    common = dict(
        input_shape=(config.image_size, config.image_size, config.channels),
        classes=num_classes,
        drop_path_rate=drop,
        seed=config.seed,
    )
    if config.layer_scale_init is not None:
        common["layer_scale_init_value"] = config.layer_scale_init or None
    if config.stem_patch_size != 4:
        common["stem_patch_size"] = config.stem_patch_size
    if config.remat:
        common["remat"] = True

    def build():
        if config.depths is not None:
            return keras_convnext.ConvNeXt(depths, dims, model_name="convnext_custom", **common)
        return keras_convnext.build(name, **common)

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
        source = load_keras_model(path, compile=False)
    except CheckpointError as e:
        raise ConfigError(f"cannot read weights: {e}") from None
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


# --------------------------------------------------------------------------------------- run


def _say(message):
    print(message, flush=True)


def run(config: Config, log=_say) -> RunResult:
    """Trains (or resumes) the run described by ``config``; returns what it produced."""
    start = time.time()
    runtime = strategy.select(config.strategy, config.cpu_devices, config.model_parallel)
    source = data.load(config)  # checks the data (a folder's every image) before --output exists
    folder = RunFolder(config, runtime)  # locks --output before anything is written into it
    try:
        return _train(config, runtime, source, folder, log, start)
    finally:
        folder.close()


def _train(config, runtime, source, folder, log, start):
    keras.utils.set_random_seed(config.seed)
    session = TrainingSession(config, runtime, source)
    build = model_builder(config, source.num_classes)
    pretrained = read_pretrained(config.weights) if config.weights else None
    prepare = None if pretrained is None else (lambda m: load_pretrained(m, pretrained, log))
    model = session.compile(build, prepare=prepare)
    state, initial_epoch = folder.resume(model, session.schedule, log)
    if runtime.is_chief and source.class_names is not None:
        write_class_names(config.output, source.class_names)
    train_ds, val_ds = session.datasets(start_epoch=initial_epoch)

    name, depths, dims, drop = model_spec(config)
    log(f"ConvNeXt-{name} depths={list(depths)} dims={list(dims)} "
        f"({model.count_params():,} parameters), {config.image_size} px, drop_path={drop}, "
        f"{keras.config.dtype_policy().name}")
    log(f"Data: {source.description}")
    log(session.describe())

    def save_best():
        export.save_keras(export.inference_model(model, build), folder.paths["best"])

    folder.fit(session, model, state, train_ds, val_ds, initial_epoch, save_best)
    files, test = folder.finish(model, build, source)
    return RunResult(model, state["rows"], state.get("best"), config.output, files,
                     time.time() - start, initial_epoch, test)


def write_class_names(output, names):
    """``classes.json``: the class names in label order, which ``keras_convnext.predict`` prints."""
    atomic_write_text(os.path.join(output, CLASSES_FILE), json.dumps(list(names), indent=1))


class RunFolder:
    """What a run writes under ``--output``: checkpoints, metrics.csv, logs, the best and final
    models. Every worker runs the same steps (collectives must match); only the chief writes
    into ``--output``, the others into a temporary folder removed at the end. The chief holds
    ``--output``'s lock (``training.lock``) from construction to ``close``: a second program
    on a busy folder stops with ``FolderLocked`` before touching anything; holding it, the
    chief removes what killed runs left there (temporary files and folders)."""

    def __init__(self, config, runtime, columns=CSV_COLUMNS):
        self.config = config
        self.columns = tuple(columns)  # of metrics.csv
        self.is_chief = runtime.is_chief
        self.lock = lock.acquire(config.output) if runtime.is_chief else None
        self.out_dir = (config.output if runtime.is_chief
                        else tempfile.mkdtemp(prefix="convnext_worker_"))
        os.makedirs(self.out_dir, exist_ok=True)
        if self.is_chief:
            remove_temporaries(self.out_dir)
            remove_temporaries(os.path.join(self.out_dir, "checkpoints"))
        self.manager = CheckpointManager(os.path.join(config.output, "checkpoints"))
        self.writer = (self.manager if runtime.is_chief
                       else CheckpointManager(os.path.join(self.out_dir, "checkpoints")))
        self.config_dict = config.to_dict()
        self.paths = {
            "metrics": os.path.join(self.out_dir, "metrics.csv"),
            "logs": os.path.join(self.out_dir, "logs"),
            "best": os.path.join(self.out_dir, "best_model.keras"),
            "final": os.path.join(self.out_dir, "model.keras"),
            "saved_model": os.path.join(self.out_dir, "saved_model"),
            "export": os.path.join(self.out_dir, "export"),
        }

    def close(self):
        """Releases ``--output``'s lock."""
        if self.lock is not None:
            lock.release(self.lock)
            self.lock = None

    def resume(self, model, schedule, log):
        """(state, epochs done): the last good checkpoint restored into ``model``, or a fresh
        run. A run whose lr/EMA ``schedule`` differs from the checkpointed one (a larger
        ``--epochs``, another ``--lr``...) is refused unless ``restart_schedule`` is set."""
        record = self.manager.restore(model, log)
        state = record["state"] if record else {"rows": [], "best": None}
        initial_epoch = record["epoch"] if record else 0
        planned = {**dataclasses.asdict(schedule), "min_lr": self.config.min_lr}
        if record:
            self._check_schedule(state.get("schedule"), planned, initial_epoch, log)
            log(f"Resuming from {os.path.join(self.manager.directory, record['file'])} "
                f"({initial_epoch} of {self.config.epochs} epochs done)")
            changed = [k for k in ("dataset", "model", "depths", "dims", "image_size")
                       if state.get("config", {}).get(k, self.config_dict[k])
                       != self.config_dict[k]]
            if changed:
                log(f"warning: {', '.join(changed)} differ from the checkpointed run")
            write_metrics_csv(self.paths["metrics"],
                              [r for r in state["rows"] if r["epoch"] <= initial_epoch],
                              self.columns)
        state["schedule"] = planned
        if self.is_chief:
            atomic_write_text(os.path.join(self.out_dir, "config.json"),
                              json.dumps(self.config_dict, indent=1))
        return state, initial_epoch

    def _check_schedule(self, saved, planned, done, log):
        if saved is None:
            return  # a checkpoint from before schedules were recorded
        changed = [k for k in planned if saved.get(k) != planned[k]]
        if not changed:
            return
        was = ", ".join(f"{k} {saved.get(k)} -> {planned[k]}" for k in changed)
        if not self.config.restart_schedule:
            raise ConfigError(
                f"{self.config.output} was trained with another lr/EMA schedule ({was}); "
                "resuming would jump to another point of the warm-up/cosine schedule and change "
                "the EMA decay: use a new --output, or --restart-schedule to go on from epoch "
                f"{done} with the new schedule")
        log(f"Restarting the schedule (--restart-schedule): {was}; epochs {done + 1}.. follow "
            "the new warm-up/cosine schedule at the current step, with the new EMA decay")

    def fit(self, session, model, state, train_ds, val_ds, initial_epoch,
            save_best=lambda: None):
        """Trains ``model`` on from ``initial_epoch`` with the run's callbacks (``RunLog``:
        metrics.csv, checkpoints, the best model; TensorBoard under logs/); raises the NaN
        error if the loss went NaN."""
        callbacks = session.callbacks(
            RunLog(self.out_dir, self.writer, state, session.nan_guard, save_best,
                   self.config_dict, self.columns),
            keras.callbacks.TensorBoard(self.paths["logs"], write_graph=False, profile_batch=0),
        )
        if initial_epoch < self.config.epochs:
            session.fit(model, train_ds, val_ds, callbacks, initial_epoch)
        failure = session.nan_error(state["rows"][-1]["epoch"] if state["rows"] else 0)
        if failure is not None:
            raise failure

    def finish(self, model, build, source=None, write_final=None):
        """Writes the final files (with ``export``: the inference model and SavedModel, or
        ``write_final(out_dir)``'s, which returns their paths), evaluates the source's test
        split (if it has one) and returns (the files of the run, the test record or None)."""
        paths = self.paths
        files = [paths["metrics"], paths["logs"], self.manager.directory]
        if os.path.exists(os.path.join(self.out_dir, CLASSES_FILE)):
            files.append(os.path.join(self.out_dir, CLASSES_FILE))
        if os.path.exists(paths["best"]):
            files.append(paths["best"])
        final, test = None, None
        if self.config.export and write_final is not None:
            files += write_final(self.out_dir)
        elif self.config.export:
            final = export.inference_model(model, build)
            export.save_keras(final, paths["final"])
            export.export_saved_model(final, paths["final"], paths["saved_model"])
            files += [paths["final"], paths["saved_model"]]
            if self.config.export_formats:  # keras_convnext.export: each file checked
                shutil.rmtree(paths["export"], ignore_errors=True)  # a rerun's: rewritten
                files += list(keras_export.export_all(
                    final, self.config.export_formats, paths["export"],
                    keras_path=paths["final"], log=_say).values())
        if write_final is None and source is not None and source.test is not None \
                and self.is_chief:
            test = evaluate.evaluate_test_set(
                final or export.inference_model(model, build), source, self.config,
                self.out_dir, paths["saved_model"] if self.config.export else None)
            files.append(os.path.join(self.out_dir, evaluate.TEST_METRICS))
        if not self.is_chief:
            shutil.rmtree(self.out_dir, ignore_errors=True)
        return files, test


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
    if result.test is not None:
        lines.append(evaluate.describe(result.test))
    lines.append(f"Files in {result.output}: " + ", ".join(
        os.path.relpath(p, result.output) + ("/" if os.path.isdir(p) else "")
        for p in result.files))
    return "\n".join(lines)


def main(argv=None):
    """The CLI; returns the exit status (0 done, 1 failed, 2 bad configuration or data)."""
    return cli.exit_status(lambda: run(parse_args(argv)), summary)


if __name__ == "__main__":
    sys.exit(main())
