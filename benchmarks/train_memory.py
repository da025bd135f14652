"""Peak memory of a training step: ours (with and without ``remat=True``) on each backend, and
timm on PyTorch, at one batch size and image size.

    python benchmarks/train_memory.py --backends torch,tensorflow,jax --batch 32 --size 224 \\
        --json train_memory.json

Every point runs in a fresh process, so that its peak is its own: build the model and its
AdamW, make the batch, note the resident set, then one warm-up step and ``--steps`` timed steps
(the median is kept). Reported: the process's peak resident set (``ru_maxrss``), and the peak
minus the resident set before the first step (what the steps added: activations kept for the
backward pass, gradients, the optimizer's moments, the backend's buffers), in MiB and per
image. Ours trains with Keras' ``train_on_batch`` (``--optimizer``: Keras' AdamW or
training.train's), timm with its own loop (channels_last, ``torch.optim.AdamW``). Timings and memory live here, never in the tests.
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

import bench  # noqa: E402  (benchmarks/bench.py: importing timm, our AdamW)
from harness import ALL_BACKENDS, cpu_name, load_average, rss_mib, run_in_backend  # noqa: E402

MODELS = ("ours", "ours_remat", "timm")


def _ours_step(variant, size, remat, optimizer="keras"):
    import keras_convnext

    model = keras_convnext.build(variant, input_shape=(size, size, 3), remat=remat)
    model.compile(optimizer=bench.adamw(optimizer), loss="sparse_categorical_crossentropy")

    def step(images, labels):
        return model.train_on_batch(images, labels)

    return step


def _timm_step(variant, size):
    import numpy as np
    import torch

    timm = bench.import_timm()
    if timm is None:
        raise SystemExit("timm is not importable")
    from keras_convnext.architecture import get_variant

    model = timm.create_model(get_variant(variant).model_name).train().to(
        memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(images, labels):
        x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).contiguous(
            memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), torch.from_numpy(labels).long())
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def measure_point(model, variant, batch, size, steps, optimizer="keras"):
    """One point in this process: img/s and peak memory of the training step."""
    import keras
    import numpy as np

    if model == "timm":
        step = _timm_step(variant, size)
    else:
        step = _ours_step(variant, size, remat=model == "ours_remat", optimizer=optimizer)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    labels = rng.integers(0, 1000, batch)
    rss_before = rss_mib()
    start = time.perf_counter()
    step(images, labels)
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step(images, labels)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    added = max(peak - rss_before, 0.0)
    return {
        "backend": keras.backend.backend(), "model": model, "variant": variant,
        "batch": batch, "size": size, "img_s": round(batch / statistics.median(times), 2),
        "optimizer": "torch AdamW" if model == "timm" else optimizer,
        "first_s": round(first, 2), "times_s": [round(t, 3) for t in times],
        "rss_before_mib": round(rss_before), "peak_rss_mib": round(peak),
        "added_mib": round(added), "added_mib_per_image": round(added / batch, 1),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", default="torch,tensorflow,jax")
    p.add_argument("--variant", default="tiny")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=2, help="timed steps per point")
    p.add_argument("--models", default=",".join(MODELS),
                   help="ours, ours_remat (remat=True), timm (PyTorch only)")
    p.add_argument("--optimizer", choices=("keras", "recipe"), default="keras",
                   help="our models' AdamW: keras.optimizers.AdamW, or training.train's "
                        "(training.recipe.ConvNeXtAdamW: on torch the fused update)")
    p.add_argument("--json", default=None)
    p.add_argument("--point", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.point:  # one point, in this process (run_in_backend's child)
        result = measure_point(args.point, args.variant, args.batch, args.size, args.steps,
                               args.optimizer)
        with open(args.json, "w") as f:
            json.dump(result, f)
        return 0
    models = args.models.split(",")
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    backends = ALL_BACKENDS if args.backends == "all" else args.backends.split(",")
    points, report = [], {"cpu": cpu_name(), "cores": os.cpu_count(), "variant": args.variant,
                          "batch": args.batch, "size": args.size,
                          "load_before": load_average()}
    for backend in backends:
        for model in models:
            if model == "timm" and backend != "torch":
                continue
            result = run_in_backend(
                __file__, ["--point", model, "--variant", args.variant, "--batch",
                           str(args.batch), "--size", str(args.size), "--steps",
                           str(args.steps), "--optimizer", args.optimizer], backend)
            if "error" in result:
                print(f"{backend} {model}: {result['error']}")
                continue
            points.append(result)
            print(f"{backend:>10} {model:>10} batch {args.batch} {args.size} px: "
                  f"{result['img_s']:7.2f} img/s, peak RSS {result['peak_rss_mib']:6d} MiB, "
                  f"the steps added {result['added_mib']:6d} MiB "
                  f"({result['added_mib_per_image']} per image)", flush=True)
    report["points"] = points
    report["load_after"] = load_average()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0 if points else 1


if __name__ == "__main__":
    sys.exit(main())
