"""oneDNN's linear (``torch.ops.mkldnn._linear_pointwise``) handed Keras' kernel as the
transposed view against a contiguous (out, in) copy, at ConvNeXt-T's pointwise-conv shapes
(batch 8, 224 px), with and without the fused GELU; ``F.linear`` (no GELU) beside them.

``python benchmarks/linear_layout.py [--json FILE]``: median ms of 20 calls per row, one
process, inference (no grad). Why it exists: ``keras_convnext/fast/torch_ops.py`` caches the
contiguous weight because the view picks a slow kernel for the wide layers (RESULTS.md)."""

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import cpu_name  # noqa: E402  (benchmarks/harness.py)

# (rows = batch * positions, in, out): stage 1, 3 and 4 pwconv1 / pwconv2 of ConvNeXt-T at b8
SHAPES = [(6272, 96, 384), (6272, 384, 96), (1568, 384, 1536), (1568, 1536, 384),
          (392, 768, 3072), (392, 3072, 768)]


def median_ms(fn, calls=20, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    with torch.no_grad():
        for m, k, n in SHAPES:
            x, kernel, bias = torch.randn(m, k), torch.randn(k, n), torch.randn(n)
            view = kernel.t()
            contiguous = view.contiguous()
            for post in ("none", "gelu"):
                row = {"shape": [m, k, n], "post_op": post}
                for name, weight in (("view_ms", view), ("contiguous_ms", contiguous)):
                    row[name] = median_ms(lambda w=weight: torch.ops.mkldnn._linear_pointwise(
                        x, w, bias, post, [], "none"))
                row["f_linear_no_gelu_ms"] = median_ms(lambda: F.linear(x, view, bias))
                rows.append(row)
                print(f"{m}x{k}x{n} {post}: view {row['view_ms']:.2f} ms, contiguous "
                      f"{row['contiguous_ms']:.2f} ms, F.linear {row['f_linear_no_gelu_ms']:.2f} ms",
                      flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_name(),
                       "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
