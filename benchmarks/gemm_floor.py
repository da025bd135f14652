"""The matrix-multiply floor of a ConvNeXt step on this machine and backend.

Nearly all of ConvNeXt's arithmetic is GEMMs: the two 1x1 convs of every block, the patchify
stem and the 2x2 downsampling convs (non-overlapping patches, so exactly GEMMs), the classifier.
Every implementation runs the same GEMMs (keras.applications, timm and this package differ in
everything around them), so their time, measured here alone with the backend's fastest matmul on
the exact shapes, is about the least that any implementation's step can take at this precision
(inside a real step, cache effects move it by some percent either way). A training step runs
each GEMM three times: forward, input gradient (not for the stem, whose input needs none) and
weight gradient.

    KERAS_BACKEND=torch python benchmarks/gemm_floor.py --variant tiny --batch 8 --size 224

``bench.py --gemm-floor`` adds it to the benchmark report.
"""

import argparse
import collections
import functools
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def gemm_shapes(depths, dims, batch, size, classes=1000, patch_size=4):
    """{(M, K, N): count} of the forward GEMMs, and the stem's shape (no input gradient)."""
    shapes = collections.Counter()
    side = size // patch_size
    stem = (batch * side * side, patch_size * patch_size * 3, dims[0])
    shapes[stem] += 1
    for i, (depth, dim) in enumerate(zip(depths, dims)):
        if i > 0:
            side //= 2
            shapes[(batch * side * side, 4 * dims[i - 1], dim)] += 1
        rows = batch * side * side
        shapes[(rows, dim, 4 * dim)] += depth
        shapes[(rows, 4 * dim, dim)] += depth
    shapes[(batch, dims[-1], classes)] += 1
    return shapes, stem


def training_gemms(shapes, stem):
    """Forward, input-gradient and weight-gradient GEMMs of a training step."""
    out = collections.Counter()
    for (m, k, n), count in shapes.items():
        out[(m, k, n)] += count                       # y = x W
        out[(k, m, n)] += count                       # dW = x^T dy
        out[(m, n, k)] += count - ((m, k, n) == stem)  # dx = dy W^T, none for the stem's input
    return +out


def _matmul_timer(dtype):
    """Returns time_gemm(m, k, n) -> the least seconds of the backend's fastest matmul."""
    import keras
    import numpy as np

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        kernels = [jax.jit(lambda a, b: a @ b)]
        sync = lambda y: y.block_until_ready()  # noqa: E731
    elif backend == "torch":
        import torch

        # Two CPU GEMMs: torch's default and oneDNN's (which keras_convnext uses); the floor
        # takes the faster.
        kernels = [torch.mm, lambda a, b: torch.ops.mkldnn._linear_pointwise(
            a, b.t(), None, "none", [], "")]
        sync = lambda y: y  # noqa: E731
    else:
        kernels = [keras.ops.matmul]
        sync = lambda y: y.numpy()  # noqa: E731

    def time_gemm(m, k, n, repeats=7):
        rng = np.random.default_rng(0)
        a = keras.ops.cast(rng.standard_normal((m, k), dtype=np.float32), dtype)
        b = keras.ops.cast(rng.standard_normal((k, n), dtype=np.float32), dtype)
        best = float("inf")
        for kernel in kernels:
            sync(kernel(a, b))
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                sync(kernel(a, b))
                times.append(time.perf_counter() - start)
            best = min(best, min(times))  # a floor: the best of the repeats
        return best

    return time_gemm


def gemm_floor(variant="tiny", batch=8, size=224, dtype="float32", repeats=7):
    """Seconds that the GEMMs alone take for one inference and one training step."""
    from keras_convnext.variants import get_variant

    spec = get_variant(variant)
    shapes, stem = gemm_shapes(spec.depths, spec.dims, batch, size)
    time_gemm = functools.partial(_matmul_timer(dtype), repeats=repeats)
    cache = {}

    def total(gemms):
        seconds = flops = 0.0
        for (m, k, n), count in gemms.items():
            if (m, k, n) not in cache:
                cache[(m, k, n)] = time_gemm(m, k, n)
            seconds += count * cache[(m, k, n)]
            flops += count * 2.0 * m * k * n
        return seconds, flops

    infer_s, infer_flops = total(shapes)
    train_s, train_flops = total(training_gemms(shapes, stem))
    return {
        "variant": variant, "batch": batch, "size": size, "dtype": dtype,
        "inference_s": round(infer_s, 6), "train_s": round(train_s, 6),
        "inference_img_s_max": round(batch / infer_s, 2),
        "train_img_s_max": round(batch / train_s, 2),
        "gemm_gflop_s": round((infer_flops + train_flops) / (infer_s + train_s) / 1e9, 1),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="tiny")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    import keras

    floor = gemm_floor(args.variant, args.batch, args.size, args.dtype)
    floor["backend"] = keras.backend.backend()
    print(json.dumps(floor, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(floor, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
