"""oneDNN's linear (``torch.ops.mkldnn._linear_pointwise``) handed Keras' kernel as the
transposed view against a contiguous (out, in) copy, at a variant's pointwise-conv GEMMs
(``gemm_floor.gemm_shapes``; ConvNeXt-T at batch 8, 224 px by default), with and without the
fused GELU; ``F.linear`` (no GELU) beside them.

``python benchmarks/linear_layout.py [--variant V --batch B --size S] [--json FILE]``: median
ms of 20 rounds per row (``harness.interleaved``: the three calls alternate), one process,
inference (no grad). Why it exists: ``keras_convnext/fast/torch_ops.py`` caches the contiguous
weight because the view picks a slow kernel for the wide layers (RESULTS.md)."""

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gemm_floor import gemm_shapes  # noqa: E402  (benchmarks/gemm_floor.py)
from harness import Entry, cpu_name, interleaved  # noqa: E402  (benchmarks/harness.py)


def pointwise_shapes(variant, batch, size):
    """(rows, in, out) of the blocks' two 1x1 convs (the 4x expansion and back), stage order."""
    from keras_convnext.variants import get_variant

    spec = get_variant(variant)
    shapes, _ = gemm_shapes(spec.depths, spec.dims, batch, size)
    return [(m, k, n) for m, k, n in shapes if n == 4 * k or k == 4 * n]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    with torch.no_grad():
        for m, k, n in pointwise_shapes(args.variant, args.batch, args.size):
            x, kernel, bias = torch.randn(m, k), torch.randn(k, n), torch.randn(n)
            view = kernel.t()
            contiguous = view.contiguous()
            for post in ("none", "gelu"):
                entries = [Entry(f"{name}_ms", lambda w=weight: torch.ops.mkldnn._linear_pointwise(
                    x, w, bias, post, [], "none")) for name, weight in
                    (("view", view), ("contiguous", contiguous))]
                entries.append(Entry("f_linear_no_gelu_ms", lambda: F.linear(x, view, bias)))
                times = interleaved(entries, lambda e: e.infer(), rounds=20, warmup=3)
                row = {"shape": [m, k, n], "post_op": post}
                row.update({name: rec["median_s"] * 1e3 for name, rec in times.items()})
                rows.append(row)
                print(f"{m}x{k}x{n} {post}: view {row['view_ms']:.2f} ms, contiguous "
                      f"{row['contiguous_ms']:.2f} ms, F.linear {row['f_linear_no_gelu_ms']:.2f} ms",
                      flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_name(), "variant": args.variant, "batch": args.batch,
                       "size": args.size, "torch": torch.__version__,
                       "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
