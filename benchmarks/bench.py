"""Speed of keras_convnext beside keras.applications (and timm), on the current Keras backend.

    KERAS_BACKEND=jax python benchmarks/bench.py                  # one backend
    python benchmarks/bench.py --backends tensorflow,jax,torch    # each in its own process
    python benchmarks/bench.py --json out.json --bf16 --data       # + bf16 mode, input pipeline
    python benchmarks/bench.py --gemm-floor                       # + the GEMMs' time alone
    python benchmarks/bench.py --models ours,ours_int8 --what inference   # Keras int8 vs fp32

What is timed, per model, as users call it:

* inference: ``model.predict_on_batch(images)`` (numpy in, numpy out; timm: ``model(x)`` under
  ``torch.inference_mode()``);
* train step: ``model.train_on_batch(images, labels)`` after ``compile(AdamW,
  sparse_categorical_crossentropy)`` with Keras' default ``jit_compile`` (``--optimizer recipe``:
  training.train's AdamW instead of Keras'; timm: forward,
  cross-entropy, backward, ``torch.optim.AdamW.step``, channels_last memory);
* with ``--data``: images/s of the training input pipeline (``training.data.train_pipeline`` with
  the recipe's augmentations, on JPEGs written to a temporary folder).

The models are measured interleaved in one process (round r runs A B C, round r+1 runs C B A), so
a busy machine slows all of them alike; the first call (tracing/compiling; in the order of
``--models``, so swap it to see what the process's first compilation costs) is reported apart, then
``--warmup`` rounds are dropped and the median of ``--steps`` rounds is kept. Ratios are ours
over the others, in images/s. Timings live here, never in the tests.
"""

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for _path in (REPO, HERE):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from harness import (  # noqa: E402  (benchmarks/harness.py)
    ALL_BACKENDS,
    Entry,
    add_throughput,
    cpu_flags,
    cpu_name,
    import_timm,
    interleaved,
    load_average,
    run_in_backend,
)

KERAS_APPLICATIONS = {
    "tiny": "ConvNeXtTiny",
    "small": "ConvNeXtSmall",
    "base": "ConvNeXtBase",
    "large": "ConvNeXtLarge",
    "xlarge": "ConvNeXtXLarge",
}


# ------------------------------------------------------------------------------------- models


def v1_counterpart(variant):
    """The V1 variant of the same size as ``variant`` ("v2_tiny" -> "tiny"), else itself."""
    from keras_convnext.architecture import VARIANTS, get_variant

    name = get_variant(variant).name
    return name[len("v2_"):] if name.startswith("v2_") and name[3:] in VARIANTS else name


def adamw(choice="keras"):
    """Our models' optimizer in a benchmark's train step (lr 1e-4, weight decay 0.05, as timm's):
    ``keras.optimizers.AdamW``, or for ``"recipe"`` training.train's
    (``training.recipe.ConvNeXtAdamW``: on torch, the fused update)."""
    import keras

    if choice == "recipe":
        from training.recipe import ConvNeXtAdamW

        return ConvNeXtAdamW(learning_rate=1e-4, weight_decay=0.05)
    return keras.optimizers.AdamW(learning_rate=1e-4, weight_decay=0.05)


def keras_entries(args, names):
    import keras

    import keras_convnext
    from keras_convnext import dispatch

    shape = (args.size, args.size, 3)
    entries = []

    def compiled(model, jit_compile="auto"):
        model.compile(optimizer=adamw(getattr(args, "optimizer", "keras")),
                      loss="sparse_categorical_crossentropy",
                      jit_compile=jit_compile)
        return model

    def entry(name, model, context=None, jit_compile="auto"):
        compiled(model, jit_compile)
        return Entry(name, model.predict_on_batch, model.train_on_batch, context)

    peer = v1_counterpart(args.variant)  # keras.applications has no V2: its V1 of that size

    def keras_application(policy=contextlib.nullcontext):
        constructor = getattr(keras.applications, KERAS_APPLICATIONS[peer])
        with policy():
            return constructor(weights=None, input_shape=shape)

    if "ours" in names:
        entries.append(entry("ours", keras_convnext.build(args.variant, input_shape=shape)))
    if "ours_jit" in names:  # Keras' jit_compile=True: XLA on TF/JAX, torch.compile on torch
        entries.append(entry("ours_jit", keras_convnext.build(args.variant, input_shape=shape),
                             jit_compile=True))
    if "ours_plain" in names:
        # Fast paths off: read at trace time on JAX/TF, at every call on torch.
        with dispatch.fast_paths(False):
            model = keras_convnext.build(args.variant, input_shape=shape)
        entries.append(entry("ours_plain", model, lambda: dispatch.fast_paths(False)))
    if "ours_v1" in names and peer != args.variant:
        entries.append(entry("ours_v1", keras_convnext.build(peer, input_shape=shape)))
    if "keras" in names and peer in KERAS_APPLICATIONS:
        entries.append(entry("keras", keras_application()))
    if "ours_bf16" in names:
        entries.append(entry("ours_bf16", bf16_model(args)))
    if "keras_bf16" in names and peer in KERAS_APPLICATIONS:
        entries.append(entry("keras_bf16", keras_application(mixed_bfloat16)))
    if "ours_int8" in names:  # Keras' model.quantize("int8"): inference only
        model = keras_convnext.build(args.variant, input_shape=shape)
        model.quantize("int8")
        entries.append(Entry("ours_int8", model.predict_on_batch, None, None))
    for name in ("litert", "litert_int8"):
        if name in names:
            entries.append(litert_entry(args, int8=name == "litert_int8"))
    return entries


def litert_entry(args, int8=False):
    """Our model exported to LiteRT (``keras_convnext.export``; full-integer int8 calibrated on
    16 random images for ``int8``), run by the LiteRT interpreter on every core: inference
    only. Needs a backend that writes LiteRT (TensorFlow) and ``ai-edge-litert``."""
    import tempfile

    import numpy as np

    import keras_convnext
    from keras_convnext import export as ex

    ex.require("litert", "tensorflow")
    model = keras_convnext.build(args.variant, input_shape=(args.size, args.size, 3))
    path = os.path.join(tempfile.mkdtemp(prefix="bench-litert-"), "model.tflite")
    representative = np.random.default_rng(1).uniform(
        0, 255, (16, args.size, args.size, 3)).astype("float32")
    ex.export_model(model, "litert", path, int8=int8, representative=representative)
    return Entry("litert_int8" if int8 else "litert",
                 ex.load(path, "litert", num_threads=os.cpu_count()), None, None)


@contextlib.contextmanager
def mixed_bfloat16():
    """Builds models under Keras' "mixed_bfloat16" policy (bf16 compute, fp32 variables)."""
    import keras

    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(old)


def bf16_model(args, source=None, classifier_activation="softmax"):
    """keras_convnext under the "mixed_bfloat16" policy (bfloat16 compute, float32 variables and
    classifier), with ``source``'s weights when given."""
    import keras_convnext

    with mixed_bfloat16():
        model = keras_convnext.build(
            args.variant, input_shape=(args.size, args.size, 3),
            classifier_activation=classifier_activation)
    if source is not None:
        model.set_weights(source.get_weights())
    return model


def timm_entry(args, bf16=False, train=True):
    """timm's model of the variant; with ``bf16``, run under ``torch.autocast("cpu",
    torch.bfloat16)`` (timm's own mixed precision: bf16 GEMMs/convs, fp32 weights and
    optimizer), the peer of our ``mixed_bfloat16`` policy. ``train=False``: inference only
    (no training copy of the model or optimizer in memory)."""
    import numpy as np
    import torch

    timm = import_timm()
    if timm is None:
        return None
    from keras_convnext.architecture import get_variant

    name = get_variant(args.variant).model_name  # convnext_tiny, convnextv2_tiny
    infer_model = timm.create_model(name).eval()

    def precision():
        if bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_nchw(images):
        return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))

    def infer(images):
        with torch.inference_mode(), precision():
            return infer_model(to_nchw(images)).float().numpy()

    entry_name = "timm_bf16" if bf16 else "timm"
    if not train:
        return Entry(entry_name, infer, None)
    train_model = timm.create_model(name).train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(train_model.parameters(), lr=1e-4, weight_decay=0.05)
    loss_fn = torch.nn.CrossEntropyLoss()

    def train_step(images, labels):
        x = to_nchw(images).contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with precision():
            loss = loss_fn(train_model(x), torch.from_numpy(labels).long())
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return Entry(entry_name, infer, train_step)


# ------------------------------------------------------------------------------------ timing


def ratios(results):
    """img/s of ours (and its variants) over every other model, and of each variant pair."""
    pairs = [(mine, other) for mine in results if mine.startswith("ours")
             for other in results if not other.startswith("ours")]
    pairs += [("ours", "ours_plain"), ("ours", "ours_v1"), ("ours_jit", "ours"),
              ("ours_int8", "ours"), ("ours_bf16", "ours"), ("timm_bf16", "timm"),
              ("litert", "ours"), ("litert_int8", "ours"), ("litert_int8", "litert")]
    return {f"{mine}/{other}": round(results[mine]["img_s"] / results[other]["img_s"], 3)
            for mine, other in pairs if mine in results and other in results}


# ----------------------------------------------------------------------------------- bf16


def bf16_accuracy(args, images):
    """Deviation of the bfloat16 mode from float32 on the same weights and images.

    The models have random weights with LayerScale set to 0.5 (not 1e-6) so that every block
    contributes and bf16 rounding accumulates through the whole depth, as in a trained model.
    """
    import keras
    import numpy as np

    import keras_convnext

    fp32 = keras_convnext.build(
        args.variant, input_shape=(args.size, args.size, 3), classifier_activation=None, seed=0)
    rng = np.random.default_rng(1)
    weights = []
    for w in fp32.weights:
        value = keras.ops.convert_to_numpy(w)
        if w.path.endswith("layer_scale/gamma"):
            value = np.full_like(value, 0.5)
        elif w.path.endswith("bias"):
            value = (0.02 * rng.standard_normal(value.shape)).astype(value.dtype)
        weights.append(value)
    fp32.set_weights(weights)
    bf16 = bf16_model(args, source=fp32, classifier_activation=None)
    logits32 = np.asarray(fp32.predict(images, batch_size=args.batch, verbose=0), np.float64)
    logits16 = np.asarray(bf16.predict(images, batch_size=args.batch, verbose=0), np.float64)

    def softmax(z):
        z = z - z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)

    p32, p16 = softmax(logits32), softmax(logits16)
    top5_32 = np.argsort(-logits32, axis=-1)[:, :5]
    top5_16 = np.argsort(-logits16, axis=-1)[:, :5]
    return {
        "images": int(len(images)),
        "logit_std": float(logits32.std()),
        "logits_max_abs_diff": float(np.abs(logits32 - logits16).max()),
        "logits_mean_abs_diff": float(np.abs(logits32 - logits16).mean()),
        "prob_max_abs_diff": float(np.abs(p32 - p16).max()),
        "prob_mean_abs_diff": float(np.abs(p32 - p16).mean()),
        "top1_agreement": float((top5_32[:, 0] == top5_16[:, 0]).mean()),
        "top5_overlap": float(np.mean(
            [len(set(a) & set(b)) / 5 for a, b in zip(top5_32, top5_16)])),
    }


def sample_images(count, size, seed=0):
    """uint8-valued float32 images: crops of scikit-learn's two sample photos when available,
    else smooth random images."""
    import numpy as np

    rng = np.random.default_rng(seed)
    photos = []
    try:
        from sklearn.datasets import load_sample_images

        photos = [np.asarray(p) for p in load_sample_images().images]
    except Exception:  # noqa: BLE001 - optional data
        photos = []
    out = np.empty((count, size, size, 3), np.float32)
    for i in range(count):
        if photos:
            photo = photos[i % len(photos)]
            crop = int(rng.integers(size, min(photo.shape[:2]) + 1))
            top = int(rng.integers(0, photo.shape[0] - crop + 1))
            left = int(rng.integers(0, photo.shape[1] - crop + 1))
            patch = photo[top:top + crop, left:left + crop]
            idx = (np.arange(size) * crop // size)
            out[i] = patch[idx][:, idx]
            if rng.random() < 0.5:
                out[i] = out[i][:, ::-1]
        else:
            coarse = rng.uniform(0, 255, (size // 16 + 1, size // 16 + 1, 3))
            idx = np.arange(size) // 16
            out[i] = coarse[idx][:, idx]
    return out


# ------------------------------------------------------------------------------ input pipeline


def data_throughput(args):
    """Images/s of ``training.data.train_pipeline`` with the recipe's augmentations."""
    import numpy as np
    import tensorflow as tf

    from training import augment, config as config_lib, data

    with tempfile.TemporaryDirectory() as folder:
        # ImageNet-sized JPEGs (375x375, quality 90) made from the sample photos.
        images = sample_images(64, 375, seed=2)
        for i, image in enumerate(images):
            cls = os.path.join(folder, f"class_{i % 2}")
            os.makedirs(cls, exist_ok=True)
            jpeg = tf.io.encode_jpeg(tf.constant(image.astype(np.uint8)), quality=90)
            tf.io.write_file(os.path.join(cls, f"{i}.jpg"), jpeg)
        config = config_lib.make_config(
            {"dataset": f"folder:{folder}", "image_size": args.size, "batch_size": args.batch})
        source = data.load(config)
        ds = data.train_pipeline(
            source, config, args.batch, augment.image_augment(config),
            augment.batch_augment(config))
        it = iter(ds)
        for _ in range(3):
            next(it)
        batches = max(args.steps * 4, 12)
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        elapsed = time.perf_counter() - start
        del it, ds  # stop the prefetching readers before the folder is removed
    return {"batches": batches, "img_s": round(batches * args.batch / elapsed, 2)}


# --------------------------------------------------------------------------------- one backend


def run_backend(args):
    import keras
    import numpy as np

    backend = keras.backend.backend()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if args.bf16:
        names += [n for n in ("ours_bf16", "keras_bf16") if n not in names]
    report = {
        "backend": backend,
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in cpu_flags(),
        "keras": keras.__version__,
        "variant": args.variant,
        "batch": args.batch,
        "size": args.size,
        "optimizer": args.optimizer,
        "load_before": load_average(),
    }
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (args.batch, args.size, args.size, 3)).astype("float32")
    labels = rng.integers(0, 1000, (args.batch,)).astype("int32")

    keras.utils.set_random_seed(0)
    entries = keras_entries(args, names)
    for name, bf16 in (("timm", False), ("timm_bf16", True)):
        if name in names and backend == "torch":
            timm = timm_entry(args, bf16=bf16)
            if timm is not None:
                entries.append(timm)
            report[name] = timm is not None
    # First calls run in the order of --models: the first one in a process can pay one-time
    # start-up costs of the backend, so compare first calls with the order swapped too.
    entries.sort(key=lambda e: names.index(e.name) if e.name in names else len(names))

    if "inference" in args.what:
        res = interleaved(entries, lambda e: e.infer(images), args.steps, args.warmup)
        add_throughput(res, args.batch)
        report["inference"] = {"results": res, "ratios": ratios(res)}
    if "train" in args.what:
        trainable = [e for e in entries if e.train is not None]
        res = interleaved(trainable, lambda e: e.train(images, labels), args.train_steps,
                          args.train_warmup)
        add_throughput(res, args.batch)
        report["train"] = {"results": res, "ratios": ratios(res)}
    del entries
    if args.bf16:
        report["bf16_accuracy"] = bf16_accuracy(args, sample_images(args.bf16_images, args.size))
    if args.gemm_floor:
        import gemm_floor

        report["gemm_floor"] = [
            gemm_floor.gemm_floor(args.variant, args.batch, args.size, dtype)
            for dtype in (("float32", "bfloat16") if args.bf16 else ("float32",))]
    if args.data:
        report["data"] = data_throughput(args)
    report["load_after"] = load_average()
    return report


# -------------------------------------------------------------------------------------- output


def format_report(report):
    lines = [
        f"backend {report['backend']} | ConvNeXt-{report['variant']} batch {report['batch']} "
        f"{report['size']}px | {report['cpu']} ({report['cores']} cores) | "
        f"load {report['load_before']} -> {report['load_after']}"
    ]
    for what in ("inference", "train"):
        if what not in report:
            continue
        lines.append(f"  {what:9s}  {'model':10s} {'img/s':>8s} {'median s':>9s} {'first s':>8s}")
        for name, rec in report[what]["results"].items():
            lines.append(f"  {'':9s}  {name:10s} {rec['img_s']:8.2f} {rec['median_s']:9.3f} "
                         f"{rec['first_s']:8.2f}")
        if report[what]["ratios"]:
            lines.append("  " + " " * 11 + "  ".join(
                f"{k} {v:.2f}x" for k, v in report[what]["ratios"].items()))
    if "bf16_accuracy" in report:
        a = report["bf16_accuracy"]
        lines.append(
            f"  bf16 vs fp32 ({a['images']} images): logits max|d| {a['logits_max_abs_diff']:.3g} "
            f"mean|d| {a['logits_mean_abs_diff']:.3g} (logit std {a['logit_std']:.3g}); "
            f"probs max|d| {a['prob_max_abs_diff']:.3g} mean|d| {a['prob_mean_abs_diff']:.2g}; "
            f"top-1 agreement {a['top1_agreement']:.1%}, top-5 overlap {a['top5_overlap']:.1%}")
    for floor in report.get("gemm_floor", []):
        lines.append(
            f"  GEMM floor {floor['dtype']} ({floor['gemm_gflop_s']} GFLOP/s): inference >= "
            f"{floor['inference_s']:.3f} s (<= {floor['inference_img_s_max']:.2f} img/s), train "
            f"step >= {floor['train_s']:.3f} s (<= {floor['train_img_s_max']:.2f} img/s)")
    if "data" in report:
        train = report.get("train", {}).get("results", {}).get("ours")
        verdict = ""
        if train:
            verdict = (" > " if report["data"]["img_s"] > train["img_s"] else " <= ") + \
                f"train step {train['img_s']:.2f} img/s"
        lines.append(f"  input pipeline: {report['data']['img_s']:.2f} img/s{verdict}")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", default=None,
                   help="comma-separated backends (or 'all'), each run in a subprocess; "
                        "default: the current KERAS_BACKEND only")
    p.add_argument("--variant", default="tiny")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--what", default="inference,train", help="inference,train")
    p.add_argument("--models", default="ours,keras,timm",
                   help="ours, ours_plain (fast paths off), ours_jit (compiled with "
                        "jit_compile=True: torch.compile on torch), ours_v1 (a V2 variant's V1 of the "
                        "same size), keras (keras.applications; its V1 for a V2 variant), "
                        "timm (torch only, when importable), ours_bf16 and keras_bf16 (the "
                        "mixed_bfloat16 policy: bf16 compute, fp32 variables), timm_bf16 "
                        "(timm under torch.autocast bfloat16), ours_int8 (model.quantize), litert "
                        "and litert_int8 (ours exported to LiteRT, fp32 and full-integer int8; "
                        "TensorFlow backend)")
    p.add_argument("--optimizer", choices=("keras", "recipe"), default="keras",
                   help="our models' optimizer in the train step: keras.optimizers.AdamW, or "
                        "training.train's (training.recipe.ConvNeXtAdamW: on torch, the fused "
                        "update of keras_convnext.dispatch.fused_adam_step)")
    p.add_argument("--warmup", type=int, default=2, help="inference rounds dropped")
    p.add_argument("--steps", type=int, default=7, help="inference rounds measured")
    p.add_argument("--train-warmup", type=int, default=1)
    p.add_argument("--train-steps", type=int, default=3)
    p.add_argument("--bf16", action="store_true",
                   help="also time the bfloat16 inference mode and measure its deviation")
    p.add_argument("--bf16-images", type=int, default=32)
    p.add_argument("--data", action="store_true", help="also time the tf.data input pipeline")
    p.add_argument("--gemm-floor", action="store_true",
                   help="also time the model's GEMMs alone (gemm_floor.py): the step time no "
                        "implementation can beat at this precision")
    p.add_argument("--json", default=None, help="write the report(s) here")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.backends:
        backends = ALL_BACKENDS if args.backends == "all" else args.backends.split(",")
        reports = []
        child = _drop_option(_drop_option(
            list(argv if argv is not None else sys.argv[1:]), "--backends"), "--json")
        for backend in backends:
            report = run_in_backend(__file__, child, backend, stream=True)
            if "error" in report:
                print(f"[{backend}] failed: {report['error']}", file=sys.stderr)
            else:
                reports.append(report)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(reports, f, indent=1)
        print("\n\n".join(format_report(r) for r in reports))
        return 0 if len(reports) == len(backends) else 1
    report = run_backend(args)
    print(format_report(report), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


def _drop_option(argv, name):
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == name:
            skip = True
            continue
        if a.startswith(name + "="):
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    sys.exit(main())
