"""``python -m training.roadmap_experiment``: train steps of the paper's roadmap on your data.

    python -m training.roadmap_experiment --steps resnet50,patchify_stem,separate_downsampling \\
        --dataset digits --epochs 10 --output runs/roadmap
    python -m training.roadmap_experiment --steps all --dataset folder:/data/flowers \\
        --image-size 128 --depths 1 1 3 1 --width-divisor 4 --epochs 30 --output runs/roadmap

Every step (``keras_convnext.roadmap.STEPS``) is trained from scratch with the same recipe, data,
augmentation and seed as ``python -m training.train`` (every training flag applies: the config,
data pipeline, optimizer and loss are the training program's own), so the steps differ only by
their architecture, as in the paper's Figure 2. ``--depths`` and ``--width-divisor`` shrink every
step alike, for a quick run on a CPU.

Writes into ``--output``: ``results.csv`` and ``results.json`` (per step: parameters, GFLOPs at the
run's image size, final and best validation accuracy, seconds; the json adds the per-epoch
history) and ``roadmap_experiment.png`` (validation accuracy and GFLOPs per step), and prints the
table. The paper's ImageNet figures are in ``python -m keras_convnext.roadmap``.
"""

from keras_convnext import cli as _cli

_cli.quiet_start(tensorflow=True)  # TensorFlow's start-up logs filtered (-v: shown)

import os  # noqa: E402
import csv  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402

from keras_convnext import count_flops, get_variant, roadmap  # noqa: E402
from training import cli, data, strategy  # noqa: E402
from training.config import ConfigError, build_parser, load_file, make_config  # noqa: E402
from training.config import _coerce  # noqa: E402 - a key's value as Config types it
from training.session import TrainingSession, drop_path_rate  # noqa: E402

RESULT_COLUMNS = ("step", "params", "gflops", "val_accuracy", "best_val_accuracy", "seconds")


@dataclasses.dataclass
class Experiment:
    steps: tuple
    width_divisor: int
    config: object  # training.config.Config


def parse_args(argv=None):
    """The training program's flags plus ``--steps`` and ``--width-divisor``."""
    parser = build_parser()
    parser.prog = "python -m training.roadmap_experiment"
    parser.description = "Train roadmap steps (ResNet-50 -> ConvNeXt-T) with one recipe."
    parser.add_argument("--steps", required=True,
                        help=f"comma-separated steps, or 'all' ({', '.join(roadmap.STEPS)})")
    parser.add_argument("--width-divisor", type=int, default=1,
                        help="divide every step's widths by this (default: 1, the paper's)")
    args = vars(parser.parse_args(argv))
    args.pop("show_logs")  # read by keras_convnext.cli before TensorFlow starts
    steps = args.pop("steps")
    divisor = args.pop("width_divisor")
    config_file = args.pop("config")
    flags = {k: v for k, v in args.items() if v is not None}
    for key in ("dims", "weights", "model"):
        if key in flags:
            raise ConfigError(f"--{key} does not apply: each roadmap step defines its model")
    file_values = load_file(config_file) if config_file else {}
    depths = flags.pop("depths", file_values.pop("depths", None))
    config = make_config(file_values, flags)
    if depths is not None:
        # validated as a custom ConvNeXt's would be, with the first step's widths
        config = dataclasses.replace(config, depths=_coerce("depths", depths))
        if len(config.depths) != 4 or min(config.depths) < 1:
            raise ConfigError(f"bad config value: depths={list(config.depths)} (need 4 >= 1)")
    names = roadmap.STEPS if steps.strip() == "all" else tuple(
        s.strip() for s in steps.split(",") if s.strip())
    for name in names:
        if name not in roadmap.STEPS:
            raise ConfigError(
                f"unknown roadmap step {name!r}; choose from {', '.join(roadmap.STEPS)}")
    if divisor < 1:
        raise ConfigError(f"bad config value: width_divisor={divisor} (must be >= 1)")
    return Experiment(names, divisor, config)


def build_step(step, config, num_classes, width_divisor=1):
    """The model of ``step`` for this run (its depths/width overrides applied)."""
    overrides = {}
    if config.depths is not None:
        overrides["depths"] = config.depths
    if width_divisor > 1:
        step_config = roadmap.get_config(step)
        overrides["widths"] = tuple(max(1, w // width_divisor) for w in step_config.widths)
        overrides["stem_width"] = max(1, step_config.stem_width // width_divisor)
    return roadmap.build(
        step,
        input_shape=(config.image_size, config.image_size, config.channels),
        classes=num_classes,
        # drop_path=None: ConvNeXt-T's paper value, the recipe every step is trained with
        drop_path_rate=drop_path_rate(config, get_variant("tiny").default_drop_path_rate),
        # layer_scale_init=None: the recipe's 1e-6 (every step is trained with LayerScale)
        layer_scale_init_value=(1e-6 if config.layer_scale_init is None
                                else config.layer_scale_init or None),
        seed=config.seed,
        **overrides,
    )


def train_step(step, experiment, runtime, source, log=print):
    """Trains one roadmap step from scratch; returns its result row (and history)."""
    start = time.time()
    keras.utils.set_random_seed(experiment.config.seed)  # the same initial randomness per step
    session = TrainingSession(experiment.config, runtime, source)
    train_ds, val_ds = session.datasets()
    model = session.compile(lambda: build_step(
        step, experiment.config, source.num_classes, experiment.width_divisor))
    gflops = count_flops(model) / 1e9
    log(f"{step}: {model.count_params():,} parameters, {gflops:.4f} GFLOPs at "
        f"{experiment.config.image_size} px")
    history = session.fit(model, train_ds, val_ds, session.callbacks()).history
    nan_guard = session.nan_guard
    accuracy = history.get("val_accuracy") or [math.nan]
    if nan_guard.where is not None:
        log(f"{step}: loss became NaN at epoch {nan_guard.where[0]}, step {nan_guard.where[1]}")
        accuracy = [math.nan]
    row = {
        "step": step,
        "params": model.count_params(),
        "gflops": gflops,
        "val_accuracy": float(accuracy[-1]),
        "best_val_accuracy": float(max(accuracy)),
        "seconds": time.time() - start,
    }
    del model
    keras.backend.clear_session()
    return row, {k: [float(v) for v in values] for k, values in history.items()}


def write_results(output, rows, histories):
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(output, "results.json"), "w") as f:
        json.dump([{**row, "history": histories[row["step"]]} for row in rows], f, indent=1)


def plot(rows, path):
    """Validation accuracy (bars) and GFLOPs (line) per trained step, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    positions = list(range(len(rows)))
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(rows) + 3), 4.5))
    ax.bar(positions, [100 * r["val_accuracy"] for r in rows], color="tab:blue")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_xticks(positions)
    ax.set_xticklabels([r["step"] for r in rows], rotation=45, ha="right")
    flops = ax.twinx()
    flops.plot(positions, [r["gflops"] for r in rows], "o-", color="tab:orange")
    flops.set_ylabel("GFLOPs", color="tab:orange")
    ax.set_title("Roadmap steps, one recipe")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def format_results(rows):
    lines = [f"{'step':<22} {'params':>12} {'GFLOPs':>8} {'val acc':>8} {'best':>8} {'time':>7}"]
    for r in rows:
        lines.append(f"{r['step']:<22} {r['params']:>12,} {r['gflops']:>8.4f} "
                     f"{r['val_accuracy']:>8.4f} {r['best_val_accuracy']:>8.4f} "
                     f"{r['seconds']:>6.0f}s")
    return "\n".join(lines)


def run(experiment, log=print):
    """Trains every step of ``experiment`` in order; returns the result rows."""
    config = experiment.config
    runtime = strategy.select(config.strategy, config.cpu_devices, config.model_parallel)
    source = data.load(config)
    log(f"Data: {source.description}; steps: {', '.join(experiment.steps)}")
    rows, histories = [], {}
    for step in experiment.steps:
        row, history = train_step(step, experiment, runtime, source, log)
        rows.append(row)
        histories[step] = history
        write_results(config.output, rows, histories)  # after every step: a long run keeps its part
    plot(rows, os.path.join(config.output, "roadmap_experiment.png"))
    return rows


def main(argv=None):
    """The CLI; returns the exit status (0 done, 2 bad configuration or data)."""
    def work():
        experiment = parse_args(argv)
        return experiment, run(experiment)

    def report(result):
        experiment, rows = result
        return (f"{format_results(rows)}\nResults in {experiment.config.output}: "
                "results.csv, results.json, roadmap_experiment.png")

    return cli.exit_status(work, report)


if __name__ == "__main__":
    sys.exit(main())
