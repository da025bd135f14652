"""The paper's headline claim, measured here: ConvNeXt-T vs Swin-T vs ResNet-50, in Keras.

    KERAS_BACKEND=jax python benchmarks/compare.py                 # speed on one backend
    python benchmarks/compare.py --backends tensorflow,jax,torch \\
        --memory --train --json benchmarks/compare_results.json --plot benchmarks/compare_plot.png

The three models, all 224 px, 1000 classes, 0-255 RGB input normalized inside the model:

* ``convnext_t``: ``keras_convnext.ConvNeXtTiny`` (ours).
* ``swin_t``: keras-hub's ``SwinTransformerBackbone`` configured as the Swin paper's Swin-T (patch
  4, window 7, embed 96, depths 2-2-6-2, heads 3-6-12-24, MLP ratio 4, qkv bias) under
  ``SwinTransformerImageClassifier`` (mean-pooled tokens, dense head): 28,288,354 parameters,
  exactly the reference's 28.29 M.
* ``resnet50``: keras-hub's ``ResNetBackbone`` as ResNet-50 (bottleneck 3-4-6-3, stride in the
  3x3 conv, i.e. torchvision's "v1.5", the paper's ResNet-50) under ``ResNetImageClassifier``.
  ``keras.applications.ResNet50`` puts the stride in the first 1x1 conv (the original Caffe
  model) and is cheaper (3.86 G vs 4.09 G); its count is reported beside, not timed.

What is measured, per backend (each in its own process):

* parameters (trainable, and all weights incl. BatchNorm statistics);
* FLOPs: multiply-accumulates for one image by ``keras_convnext.flops.count_flops`` (conv and
  dense layers, the paper's convention) plus attention's two activation matmuls, ``Q K^T`` and
  ``softmax(.) V`` (``benchmarks/flops_attention.py``), so that Swin is counted as the Swin paper
  counts itself;
* inference (``predict_on_batch``) and training-step (``train_on_batch``, AdamW,
  sparse cross-entropy) throughput, the three models interleaved in one process with
  ``benchmarks/harness.py``'s ``interleaved`` (order alternates each round, first call timed apart,
  warm-up rounds dropped, median kept);
* with ``--memory``: peak memory of a training step, each model in a fresh process: the resident
  set (RSS) sampled every 2 ms by a thread during the steady-state steps, minus the RSS just
  before them (model, optimizer state and compiled step already resident), and the process'
  ``ru_maxrss`` (whole life, compilation included). RSS sees native allocations (oneDNN, XLA,
  ATen) that ``tracemalloc`` would not; on CPU it is the memory that matters;
* with ``--train``: the three trained with one recipe (``training.data`` digits pipeline,
  ``training.augment``, ``training.recipe`` optimizer and loss) for a short run, held-out
  accuracy and time. Digits are 8x8 scans; the run is at ``--train-size`` px (64 by default),
  where Swin's window is scaled to keep Swin-T's window grid (see ``swin_window_for``).

The paper's ImageNet figures are quoted in ``PAPER`` and labelled as such; nothing here claims
them. ``--plot`` draws the paper's top-1 against the throughput measured here.
"""

import argparse
import json
import math
import os
import platform
import resource
import sys
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for path in (REPO, HERE):
    if path not in sys.path:
        sys.path.insert(0, path)

import harness  # noqa: E402  (benchmarks/harness.py: timing and per-backend processes)

MODELS = ("convnext_t", "swin_t", "resnet50")
ALL_BACKENDS = harness.ALL_BACKENDS
LABELS = {"convnext_t": "ConvNeXt-T", "swin_t": "Swin-T", "resnet50": "ResNet-50"}

# Quoted from the ConvNeXt paper (ImageNet-1k, 224 px): Table 1 and Figure 2. Not measured here.
PAPER = {
    "convnext_t": {"top1": 82.1, "gflops": 4.5, "params_m": 29, "v100_img_s": 774.7,
                   "source": "ConvNeXt paper, Table 1"},
    "swin_t": {"top1": 81.3, "gflops": 4.5, "params_m": 28, "v100_img_s": 757.9,
               "source": "ConvNeXt paper, Table 1"},
    "resnet50": {"top1": 78.8, "gflops": 4.1, "params_m": None, "v100_img_s": None,
                 "source": "ConvNeXt paper, Figure 2 (ResNet-50 with the ConvNeXt recipe; "
                           "76.1 with the original one)"},
}

SWIN_T = {"patch_size": 4, "embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24],
          "window_size": 7}
RESNET_50 = {"input_conv_filters": [64], "input_conv_kernel_sizes": [7],
             "stackwise_num_filters": [64, 128, 256, 512], "stackwise_num_blocks": [3, 4, 6, 3],
             "stackwise_num_strides": [1, 2, 2, 2], "block_type": "bottleneck_block"}
# Stochastic depth of each model's ImageNet recipe (ConvNeXt-T 0.1, Swin-T 0.2, ResNet none).
DROP_PATH = {"convnext_t": 0.1, "swin_t": 0.2, "resnet50": 0.0}


# ------------------------------------------------------------------------------------- models


def swin_window_for(size, patch_size=4, window=7, base=224):
    """Swin-T's window at input ``size``, scaled so every stage keeps the window grid it has at
    224 px (8x8, 4x4, 2x2, 1x1 windows): 7 at 224, 2 at 64.

    keras-hub builds every block's attention with the stage's ``window_size`` even where the
    block itself shrinks its window to a smaller feature map (the reference Swin shrinks both),
    so a stage whose map is smaller than the window fails; at 224 px the last map is exactly 7.
    """
    if size == base:
        return window
    tokens = size // patch_size // 2 ** 3  # the last stage's map side
    return max(1, tokens)


def build_model(name, size=224, classes=1000, drop_path=None, window=None, seed=0):
    """One of ``MODELS`` taking (N, size, size, 3) 0-255 RGB, softmax output."""
    import keras

    import keras_convnext

    keras.utils.set_random_seed(seed)
    drop = DROP_PATH[name] if drop_path is None else drop_path
    shape = (size, size, 3)
    if name == "convnext_t":
        return keras_convnext.ConvNeXtTiny(input_shape=shape, classes=classes,
                                           drop_path_rate=drop, seed=seed)
    import keras_hub

    if name == "swin_t":
        config = dict(SWIN_T, window_size=window or swin_window_for(size))
        backbone = keras_hub.models.SwinTransformerBackbone(image_shape=shape, drop_path=drop,
                                                            **config)
        head = keras_hub.models.SwinTransformerImageClassifier(backbone, num_classes=classes,
                                                                activation="softmax")
    elif name == "resnet50":
        backbone = keras_hub.models.ResNetBackbone(image_shape=shape, **RESNET_50)
        head = keras_hub.models.ResNetImageClassifier(backbone, num_classes=classes,
                                                      activation="softmax")
    else:
        raise ValueError(f"unknown model {name!r}; one of {MODELS}")
    # The same 0-255 -> ImageNet-normalized mapping as ours, inside the model.
    inputs = keras.Input(shape)
    x = keras_convnext.ImageNormalization(name="preprocessing")(inputs)
    return keras.Model(inputs, head(x), name=name)


def model_facts(model, size):
    """Parameters and FLOPs (multiply-accumulates, one image) of a built model."""
    from flops_attention import count_flops_with_attention

    flops = count_flops_with_attention(model, (size, size, 3))
    trainable = sum(math.prod(int(d) for d in v.shape) for v in model.trainable_weights)
    return {
        "params": int(model.count_params()),
        "params_trainable": trainable,
        "flops": flops["total"],
        "flops_linear": flops["linear"],
        "flops_attention": flops["attention"],
    }


def keras_applications_resnet50_facts(size):
    import keras

    from keras_convnext.flops import count_flops

    model = keras.applications.ResNet50(weights=None, input_shape=(size, size, 3))
    return {"params": int(model.count_params()), "flops": int(count_flops(model))}


def _compiled(model, lr=1e-4):
    import keras

    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=lr, weight_decay=0.05),
                  loss="sparse_categorical_crossentropy")
    return model


def _error(e):
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:400]


# ------------------------------------------------------------------------------- speed (1 proc)


def run_speed(args):
    """Facts and interleaved throughput of the models on the current backend."""
    import keras
    import numpy as np

    backend = keras.backend.backend()
    report = {"backend": backend, "keras": keras.__version__, "batch": args.batch,
              "size": args.size, "load_before": harness.load_average(), "models": {}}
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (args.batch, args.size, args.size, 3)).astype("float32")
    labels = rng.integers(0, 1000, (args.batch,)).astype("int32")

    entries = []
    for name in args.models:
        rec = report["models"].setdefault(name, {})
        try:
            start = time.perf_counter()
            model = build_model(name, args.size)
            rec["build_s"] = round(time.perf_counter() - start, 2)
            rec.update(model_facts(model, args.size))
            _compiled(model)
            entry = harness.Entry(name, model.predict_on_batch, model.train_on_batch)
            # The first call traces and compiles: timed here, apart; a model that cannot run
            # is reported, not timed.
            start = time.perf_counter()
            entry.infer(images)
            rec["inference_first_s"] = round(time.perf_counter() - start, 2)
            entries.append(entry)
        except Exception as e:  # noqa: BLE001 - reported per model
            rec["error"] = _error(e)
            rec["traceback"] = traceback.format_exc()[-3000:]
            print(f"[{backend}] {name} failed: {rec['error']}", file=sys.stderr, flush=True)

    if entries and not args.no_speed:
        inference = harness.interleaved(entries, lambda e: e.infer(images), args.steps, args.warmup)
        harness.add_throughput(inference, args.batch)
        trainable = []
        for e in entries:  # a model whose train step fails is reported, the others timed
            try:
                start = time.perf_counter()
                e.train(images, labels)
                report["models"][e.name]["train_first_s"] = round(time.perf_counter() - start, 2)
                trainable.append(e)
            except Exception as err:  # noqa: BLE001
                report["models"][e.name]["train_error"] = _error(err)
        train = harness.interleaved(trainable, lambda e: e.train(images, labels),
                                  args.train_steps, args.train_warmup)
        harness.add_throughput(train, args.batch)
        for name, rec in inference.items():
            report["models"][name]["inference"] = rec
        for name, rec in train.items():
            report["models"][name]["train"] = rec
    report["load_after"] = harness.load_average()
    return report


# ------------------------------------------------------------------------------ memory (1 proc)


def _rss():
    import psutil

    return psutil.Process().memory_info().rss


def run_memory(args, name):
    """Peak memory of a training step of ``name``, in this (fresh) process."""
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (args.batch, args.size, args.size, 3)).astype("float32")
    labels = rng.integers(0, 1000, (args.batch,)).astype("int32")
    rss_start = _rss()
    model = _compiled(build_model(name, args.size))
    rss_built = _rss()
    model.train_on_batch(images, labels)  # traces / compiles, creates the optimizer state
    rss_before = _rss()
    peak = [rss_before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    for _ in range(args.memory_steps):
        model.train_on_batch(images, labels)
    done.set()
    thread.join()
    mb = 1024 * 1024
    maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "backend": keras.backend.backend(),
        "steps": args.memory_steps,
        "rss_after_import_mb": round(rss_start / mb, 1),
        "rss_model_built_mb": round(rss_built / mb, 1),
        "rss_before_steps_mb": round(rss_before / mb, 1),
        "step_peak_rss_mb": round(peak[0] / mb, 1),
        "step_peak_over_resident_mb": round((peak[0] - rss_before) / mb, 1),
        "process_maxrss_mb": round(maxrss_kb / 1024, 1),
    }


# ---------------------------------------------------------------------------- training (1 proc)


def run_training(args):
    """The three trained with one recipe on the bundled digits, on the current backend."""
    import keras

    from training import config as config_lib
    from training import data, strategy
    from training.session import TrainingSession

    size = args.train_size
    steps_per_epoch = args.train_steps_per_epoch
    total = steps_per_epoch * args.train_epochs
    values = dict(config_lib.PRESETS["digits"])
    values.update({
        "image_size": size, "epochs": args.train_epochs, "steps_per_epoch": steps_per_epoch,
        "batch_size": args.train_batch, "ema": False, "drop_path": 0.0,
        "lr": values["lr"] * args.train_batch / values["batch_size"],
        "warmup_epochs": max(args.train_epochs * 0.1, 0.0), "seed": 0, "verbose": 2,
    })
    config = config_lib.make_config(values)
    source = data.load(config)
    out = {"backend": keras.backend.backend(), "dataset": source.description,
           "image_size": size, "batch": args.train_batch, "steps": total,
           "epochs_over_train_set": round(total * args.train_batch / source.num_train, 2),
           "swin_window": swin_window_for(size),
           "recipe": {k: getattr(config, k) for k in ("lr", "weight_decay", "warmup_epochs",
                                             "label_smoothing", "rand_augment_ops",
                                             "rand_augment_factor", "random_erasing", "mixup",
                                             "cutmix", "mixup_prob", "crop_scale", "drop_path",
                                             "ema")},
           "load_before": harness.load_average(), "models": {}}
    for name in args.models:
        rec = out["models"].setdefault(name, {})
        try:
            session = TrainingSession(config, strategy.Runtime("default"), source)
            train_ds, val_ds = session.datasets()
            model = session.compile(lambda: build_model(
                name, size, classes=source.num_classes, drop_path=0.0))
            start = time.perf_counter()
            history = session.fit(model, train_ds, None, session.callbacks())
            rec["train_s"] = round(time.perf_counter() - start, 1)
            start = time.perf_counter()
            loss, acc = model.evaluate(val_ds, verbose=0)
            rec["eval_s"] = round(time.perf_counter() - start, 1)
            rec["val_accuracy"] = round(float(acc), 4)
            rec["val_loss"] = round(float(loss), 4)
            rec["train_loss_last_epoch"] = round(float(history.history["loss"][-1]), 4)
        except Exception as e:  # noqa: BLE001
            rec["error"] = _error(e)
            rec["traceback"] = traceback.format_exc()[-3000:]
            print(f"[training] {name} failed: {rec['error']}", file=sys.stderr, flush=True)
        print(f"[training] {name}: {rec}", flush=True)
    out["load_after"] = harness.load_average()
    return out


# ------------------------------------------------------------------------------ orchestration


def _child(mode, backend, args, extra=()):
    """Runs this script as ``mode`` under ``backend`` in a fresh process; its JSON or an error."""
    argv = ["--child", mode,
            "--batch", str(args.batch), "--size", str(args.size),
            "--models", ",".join(args.models), "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--train-steps", str(args.train_steps),
            "--train-warmup", str(args.train_warmup), "--memory-steps", str(args.memory_steps),
            "--train-size", str(args.train_size), "--train-batch", str(args.train_batch),
            "--train-epochs", str(args.train_epochs),
            "--train-steps-per-epoch", str(args.train_steps_per_epoch), *extra]
    result = harness.run_in_backend(__file__, argv, backend, "--out", timeout=args.timeout)
    print(f"[{backend}] {mode}{' ' + ' '.join(extra) if extra else ''}: done in "
          f"{result['wall_s']} s", flush=True)
    return result


def run_all(args):
    backends = (ALL_BACKENDS if args.backends == "all" else
                () if args.backends == "none" else tuple(args.backends.split(",")))
    results = {
        "machine": {"cpu": harness.cpu_name(), "cores": os.cpu_count(),
                    "platform": platform.platform(), "python": platform.python_version()},
        "paper": PAPER,
        "settings": {"batch": args.batch, "size": args.size, "inference_rounds": args.steps,
                     "inference_warmup": args.warmup, "train_rounds": args.train_steps,
                     "train_warmup": args.train_warmup, "memory_steps": args.memory_steps},
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "backends": {},
    }
    try:
        import keras_hub

        results["keras_hub"] = keras_hub.__version__
    except ImportError as e:
        results["keras_hub"] = f"not importable: {e}"
    for backend in backends:
        rec = _child("speed", backend, args)
        if args.memory:
            rec["memory"] = {m: _child("memory", backend, args, ("--model", m))
                             for m in args.models}
        results["backends"][backend] = rec
    if args.train:
        results["training"] = _child("train", args.train_backend, args)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return results


def merge(paths):
    """One results dict from several ``run_all`` JSON files (later files win per backend)."""
    results = None
    for path in paths:
        with open(path) as f:
            part = json.load(f)
        if results is None:
            results = part
            continue
        results["backends"].update(part.get("backends", {}))
        if "training" in part:
            results["training"] = part["training"]
        results["started"] = min(results.get("started", "~"), part.get("started", "~"))
        results["finished"] = max(results.get("finished", ""), part.get("finished", ""))
    return results


def main_child(args):
    if args.child == "speed":
        result = run_speed(args)
        result["keras_applications_resnet50"] = keras_applications_resnet50_facts(args.size)
    elif args.child == "memory":
        result = run_memory(args, args.model)
    elif args.child == "train":
        result = run_training(args)
    else:
        raise ValueError(args.child)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


# -------------------------------------------------------------------------------------- output


def _fmt(value, spec):
    return "n/a" if value is None else format(value, spec)


def format_table(results):
    """Markdown tables of ``results`` (as written by ``run_all``)."""
    lines = []
    first = next(iter(results["backends"].values()), {})
    models = list(first.get("models", {})) or list(MODELS)
    lines.append("| model | params (trainable) | GMACs (conv+dense / attention) | paper: top-1, "
                 "GFLOPs |")
    lines.append("|---|---|---|---|")
    for name in models:
        facts = next((r["models"][name] for r in results["backends"].values()
                      if "flops" in r.get("models", {}).get(name, {})), {})
        paper = PAPER[name]
        if facts:
            flops = (f"{facts['flops'] / 1e9:.3f} ({facts['flops_linear'] / 1e9:.3f} / "
                     f"{facts['flops_attention'] / 1e9:.3f})")
            params = f"{facts['params_trainable'] / 1e6:.2f} M"
        else:
            flops = params = "n/a"
        lines.append(f"| {LABELS[name]} | {params} | {flops} | {paper['top1']} %, "
                     f"{paper['gflops']} G |")
    lines.append("")
    lines.append("| backend | model | inference img/s | train-step img/s | first call s "
                 "(infer / train) | train-step peak RSS over resident MB | process max RSS MB |")
    lines.append("|---|---|---|---|---|---|---|")
    for backend, rec in results["backends"].items():
        if "models" not in rec:
            lines.append(f"| {backend} | all | failed: {rec.get('error', '?')} | | | | |")
            continue
        for name, m in rec["models"].items():
            mem = rec.get("memory", {}).get(name, {})
            if "error" in m:
                lines.append(f"| {backend} | {LABELS[name]} | failed: {m['error']} | | | | |")
                continue
            inf, tr = m.get("inference", {}), m.get("train", {})
            train_cell = _fmt(tr.get("img_s"), ".2f") if tr else f"failed: {m.get('train_error')}"
            mem_cell = (_fmt(mem.get("step_peak_over_resident_mb"), ".0f") if "error" not in mem
                        else f"failed: {mem['error'][:120]}")
            lines.append(
                f"| {backend} | {LABELS[name]} | {_fmt(inf.get('img_s'), '.2f')} | {train_cell} | "
                f"{_fmt(m.get('inference_first_s'), '.1f')} / {_fmt(m.get('train_first_s'), '.1f')} | "
                f"{mem_cell} | {_fmt(mem.get('process_maxrss_mb'), '.0f')} |")
    training = results.get("training")
    if training and "models" in training:
        lines.append("")
        lines.append(f"Short training, {training['backend']}, {training['dataset']}, "
                     f"{training['image_size']} px, batch {training['batch']}, "
                     f"{training['steps']} steps ({training['epochs_over_train_set']} epochs), "
                     f"Swin window {training['swin_window']}:")
        lines.append("")
        lines.append("| model | held-out accuracy | train time s | final train loss |")
        lines.append("|---|---|---|---|")
        for name, m in training["models"].items():
            if "error" in m:
                lines.append(f"| {LABELS[name]} | failed: {m['error']} | | |")
            else:
                lines.append(f"| {LABELS[name]} | {m['val_accuracy']:.1%} | {m['train_s']:.0f} | "
                             f"{m['train_loss_last_epoch']:.3f} |")
    return "\n".join(lines)


def plot(results, path):
    """The paper's ImageNet top-1 (quoted) against inference throughput measured here."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = {"tensorflow": "o", "jax": "s", "torch": "^"}
    colors = {"convnext_t": "tab:blue", "swin_t": "tab:orange", "resnet50": "tab:gray"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, what in zip(axes, ("inference", "train")):
        for backend, rec in results["backends"].items():
            for name, m in rec.get("models", {}).items():
                speed = m.get(what, {}).get("img_s")
                if speed is None:
                    continue
                ax.scatter(speed, PAPER[name]["top1"], marker=markers.get(backend, "x"),
                           color=colors[name], s=70,
                           label=f"{LABELS[name]}, {backend}")
                ax.annotate(f"{LABELS[name]} ({backend})", (speed, PAPER[name]["top1"]),
                            textcoords="offset points", xytext=(5, 4), fontsize=7)
        ax.set_xlabel(f"{what} throughput measured here (img/s, batch "
                      f"{results['settings']['batch']}, 224 px)")
        ax.grid(alpha=0.3)
        ax.set_title(f"{what}")
    axes[0].set_ylabel("ImageNet-1k top-1 % (quoted from the paper)")
    cpu = results["machine"]["cpu"]
    fig.suptitle(f"ConvNeXt-T vs Swin-T vs ResNet-50: paper accuracy vs speed on {cpu} "
                 f"({results['machine']['cores']} cores)", fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        axes[1].legend(handles, labels, fontsize=7, loc="center left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", default=None,
                   help="comma-separated backends, 'all', or 'none' (with --train), each in its own "
                        "process; default: "
                        "the current KERAS_BACKEND only, in this process (speed only)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--warmup", type=int, default=1, help="inference rounds dropped")
    p.add_argument("--steps", type=int, default=5, help="inference rounds measured")
    p.add_argument("--train-warmup", type=int, default=1)
    p.add_argument("--train-steps", type=int, default=3)
    p.add_argument("--no-speed", action="store_true", help="facts only (params, FLOPs)")
    p.add_argument("--memory", action="store_true", help="peak memory of a train step")
    p.add_argument("--memory-steps", type=int, default=3)
    p.add_argument("--train", action="store_true", help="short training run on the digits")
    p.add_argument("--train-backend", default="tensorflow")
    p.add_argument("--train-size", type=int, default=64)
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--train-epochs", type=int, default=2)
    p.add_argument("--train-steps-per-epoch", type=int, default=45)
    p.add_argument("--timeout", type=int, default=3600, help="per child process, seconds")
    p.add_argument("--merge", nargs="+", default=None,
                   help="combine the JSON files of separate runs (backends, training) into one")
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        main_child(args)
        return 0
    if args.merge:
        results = merge(args.merge)
    elif args.backends:
        results = run_all(args)
    else:
        speed = run_speed(args)
        results = {"machine": {"cpu": harness.cpu_name(), "cores": os.cpu_count()},
                   "paper": PAPER, "settings": {"batch": args.batch, "size": args.size},
                   "backends": {speed["backend"]: speed}}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.plot:
        plot(results, args.plot)
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
