"""How inference cost grows with batch size and image size: images/s, peak memory per image and
the fraction of the machine's GEMM rate, for ours on each backend and timm on PyTorch.

    python benchmarks/scaling.py --backends tensorflow,jax,torch --batches 1,8,32,64 \\
        --sizes 224,384 --json scaling.json --plot scaling.png

Every (backend, model, batch, size) point runs in a fresh process, so that its peak memory is
its own: build the model, one warm-up call, then ``--steps`` timed calls (the median is kept).
Memory: the process's peak resident set (``ru_maxrss``) minus its resident set after the
warm-up's inputs were made and before the first call, per image. GEMM fraction: the point's
images/s over ``gemm_floor``'s, the images/s that the model's GEMMs alone allow on the exact
shapes with the backend's fastest matmul (``benchmarks/gemm_floor.py``): 1.0 would be a model
that costs nothing but its GEMMs. Timings live here, never in the tests.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for _path in (REPO, HERE):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import bench  # noqa: E402  (benchmarks/bench.py: timm's entry)
from harness import ALL_BACKENDS, cpu_name, load_average, rss_mib, run_in_backend  # noqa: E402


def _ours(variant, size):
    import keras_convnext

    model = keras_convnext.build(variant, input_shape=(size, size, 3))
    return model.predict_on_batch


def _timm(variant, size):
    entry = bench.timm_entry(argparse.Namespace(variant=variant), train=False)
    if entry is None:
        raise SystemExit("timm is not importable")
    return entry.infer


def measure_point(model, variant, batch, size, steps, gemm_repeats):
    """One point in this process: img/s, peak memory per image, GEMM fraction."""
    import keras
    import numpy as np

    from gemm_floor import gemm_floor

    infer = (_timm if model == "timm" else _ours)(variant, size)
    images = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32")
    rss_before = rss_mib()
    start = time.perf_counter()
    infer(images)
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        infer(images)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    img_s = batch / statistics.median(times)
    floor = gemm_floor(variant, batch, size, repeats=gemm_repeats)
    return {
        "backend": keras.backend.backend(), "model": model, "variant": variant,
        "batch": batch, "size": size, "img_s": round(img_s, 2), "first_s": round(first, 2),
        "times_s": [round(t, 4) for t in times],
        "peak_mib_per_image": round(max(peak - rss_before, 0.0) / batch, 1),
        "peak_rss_mib": round(peak), "gemm_floor_img_s": floor["inference_img_s_max"],
        "gemm_fraction": round(img_s / floor["inference_img_s_max"], 3),
    }


def plot(points, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    series = sorted({(p["backend"], p["model"], p["size"]) for p in points})
    for backend, model, size in series:
        rows = sorted((p for p in points if (p["backend"], p["model"], p["size"])
                       == (backend, model, size)), key=lambda p: p["batch"])
        label = f"{model} ({backend}), {size} px"
        style = "--" if model == "timm" else "-"
        batches = [p["batch"] for p in rows]
        axes[0].plot(batches, [p["img_s"] for p in rows], style, marker="o", label=label)
        axes[1].plot(batches, [p["peak_mib_per_image"] for p in rows], style, marker="o",
                     label=label)
    for ax, title in zip(axes, ("inference images/s", "peak memory per image (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"ConvNeXt-{points[0]['variant']}, {cpu_name()}, {os.cpu_count()} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", default="tensorflow,jax,torch")
    p.add_argument("--variant", default="tiny")
    p.add_argument("--batches", default="1,8,32,64")
    p.add_argument("--sizes", default="224,384")
    p.add_argument("--steps", type=int, default=3, help="timed calls per point")
    p.add_argument("--gemm-repeats", type=int, default=2, help="repeats per GEMM shape")
    p.add_argument("--no-timm", action="store_true", help="leave timm out (PyTorch)")
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None, help="write the plot (matplotlib) here")
    p.add_argument("--point", nargs=3, metavar=("MODEL", "BATCH", "SIZE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.point:  # one point, in this process (run_in_backend's child)
        model, batch, size = args.point[0], int(args.point[1]), int(args.point[2])
        result = measure_point(model, args.variant, batch, size, args.steps, args.gemm_repeats)
        with open(args.json, "w") as f:
            json.dump(result, f)
        return 0
    backends = ALL_BACKENDS if args.backends == "all" else args.backends.split(",")
    points, report = [], {"cpu": cpu_name(), "cores": os.cpu_count(), "variant": args.variant,
                          "load_before": load_average()}
    for backend in backends:
        models = ["ours"] + (["timm"] if backend == "torch" and not args.no_timm else [])
        for model in models:
            for size in [int(s) for s in args.sizes.split(",")]:
                for batch in [int(b) for b in args.batches.split(",")]:
                    result = run_in_backend(
                        __file__, ["--point", model, str(batch), str(size), "--variant",
                                   args.variant, "--steps", str(args.steps),
                                   "--gemm-repeats", str(args.gemm_repeats)], backend)
                    if "error" in result:
                        print(f"{backend} {model} b{batch} {size}px: {result['error']}")
                        continue
                    points.append(result)
                    print(f"{backend:>10} {model:>4} {size} px batch {batch:>2}: "
                          f"{result['img_s']:8.2f} img/s, {result['peak_mib_per_image']:7.1f} "
                          f"MiB/image, GEMM fraction {result['gemm_fraction']:.2f}"
                          + (" (above 1: a disturbed measurement; use more --steps on a quiet "
                             "machine)" if result["gemm_fraction"] > 1 else ""), flush=True)
    report["points"] = points
    report["load_after"] = load_average()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.plot and points:
        plot(points, args.plot)
    return 0 if points else 1


if __name__ == "__main__":
    sys.exit(main())
