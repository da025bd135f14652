"""The PyTorch training step's GEMM choices, measured: why ``torch_ops.training_gemm`` picks
torch's own GEMMs on AVX2 and when ``torch_ops.block_mlp`` runs a block's MLP in pieces.

``python benchmarks/training_gemms.py --what gemms [--variant V --batch B --size S]``: for each
pointwise-conv shape (``linear_layout.pointwise_shapes``), the three GEMMs of a training step
(forward, input gradient, weight gradient) as ``_OneDNNLinear`` runs them (oneDNN's linear
against the (out, in) copy, ``torch.mm`` for the weight gradient), as ``_AtenLinear`` does (MKL,
the forward with and without the weight's transposed copy) and as timm's ``nn.Linear`` does;
median ms of 9 interleaved rounds, one process.

``--what step``: whole ``train_on_batch`` steps of our model (the recipe's optimizer) with the
training GEMMs forced to each choice and the block MLP in pieces on or off, and timm's step,
alternating in one process (``harness.interleaved``); img/s and ours/timm per setting.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Entry, add_throughput, cpu_name, interleaved, write_report  # noqa: E402
from linear_layout import pointwise_shapes  # noqa: E402

SETTINGS = {  # name: (AVX-512 rule answer, MLP_CHUNK_FROM_BYTES or None for the default)
    "ours_onednn": (True, None),
    "ours_aten_no_pieces": (False, 1 << 62),
    "ours_aten": (False, None),  # what an AVX2 CPU runs
}


def gemm_rows(variant, batch, size):
    import torch

    lp = torch.ops.mkldnn._linear_pointwise
    rows = []
    for m, k, n in pointwise_shapes(variant, batch, size):
        x, dy = torch.randn(m, k), torch.randn(m, n)
        kernel, bias = torch.randn(k, n) * 0.02, torch.randn(n)
        weight = kernel.t().contiguous()  # (out, in): oneDNN's and nn.Linear's layout
        calls = {
            "forward onednn": lambda: lp(x, weight, bias, "none", [], ""),
            "forward aten, copy": lambda: torch.addmm(bias, x, kernel.t().contiguous().t()),
            "forward aten, kernel": lambda: torch.addmm(bias, x, kernel),
            "input grad onednn": lambda: lp(dy, kernel, None, "none", [], ""),
            "input grad aten": lambda: torch.mm(dy, kernel.t()),
            "input grad timm": lambda: torch.mm(dy, weight),
            "weight grad ours": lambda: torch.mm(x.t(), dy),
            "weight grad timm": lambda: torch.mm(dy.t(), x),
        }
        entries = [Entry(name, call) for name, call in calls.items()]
        times = interleaved(entries, lambda e: e.infer(), rounds=9, warmup=2)
        row = {"shape": [m, k, n]}
        row.update({name: round(rec["median_s"] * 1e3, 2) for name, rec in times.items()})
        rows.append(row)
        print(f"{m}x{k}x{n}: " + ", ".join(f"{name} {row[name]:.1f}" for name in calls), flush=True)
    return rows


def step_rows(variant, batch, size, rounds):
    import numpy as np
    from types import SimpleNamespace

    from bench import keras_entries, timm_entry
    from keras_convnext.fast import torch_ops

    args = SimpleNamespace(variant=variant, size=size, batch=batch, optimizer="recipe")
    ours = keras_entries(args, ["ours"])[0]
    default_bytes = torch_ops.MLP_CHUNK_FROM_BYTES
    images = np.random.RandomState(0).rand(batch, size, size, 3).astype("float32")
    labels = np.random.RandomState(0).randint(0, 1000, batch)

    def setting(name):
        avx512, chunk_bytes = SETTINGS[name]

        def step(batch_images, batch_labels):
            torch_ops._AVX512[:] = [avx512]
            torch_ops.MLP_CHUNK_FROM_BYTES = chunk_bytes or default_bytes
            return ours.train(batch_images, batch_labels)
        return Entry(name, None, step)

    entries = [setting(name) for name in SETTINGS]
    timm = timm_entry(args)
    if timm is not None:
        entries.append(timm)
    saved = list(torch_ops._AVX512), default_bytes
    try:
        results = interleaved(entries, lambda e: e.train(images, labels), rounds=rounds,
                              warmup=1)
    finally:  # the process's own choice again
        torch_ops._AVX512[:], torch_ops.MLP_CHUNK_FROM_BYTES = saved
    add_throughput(results, batch)
    for name, rec in results.items():
        ratio = (f", ours/timm {results['timm']['median_s'] / rec['median_s']:.3f}"
                 if "timm" in results and name != "timm" else "")
        print(f"{name}: {rec['img_s']:.2f} img/s (median {rec['median_s']:.3f} s){ratio}")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--what", choices=("gemms", "step"), default="gemms")
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=10, help="train steps per setting (step)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import torch

    torch.manual_seed(0)
    if args.what == "gemms":
        with torch.no_grad():
            out = {"rows": gemm_rows(args.variant, args.batch, args.size)}
    else:
        out = {"results": step_rows(args.variant, args.batch, args.size, args.rounds)}
    report = {"cpu": cpu_name(), "what": args.what, "variant": args.variant,
              "batch": args.batch, "size": args.size, "torch": torch.__version__,
              "threads": torch.get_num_threads(), **out}
    return write_report(report, args.json)


if __name__ == "__main__":
    main()
