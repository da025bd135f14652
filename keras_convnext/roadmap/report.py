"""The roadmap's table and plot: ``python -m keras_convnext.roadmap [--steps ...] [--plot PATH]``.

Builds every step at the given size, counts its FLOPs with ``keras_convnext.count_flops`` and prints
them beside the paper's figures.
"""

import keras

from keras_convnext import cli
from keras_convnext.flops import count_flops
from keras_convnext.roadmap import STEPS, build, get_step


def table(steps=STEPS, image_size=224, classes=1000):
    """One row per step: name, change, params, GFLOPs (ours, counted), paper's figures."""
    rows = []
    for name in steps:
        step = get_step(name)
        model = build(name, input_shape=(image_size, image_size, 3), classes=classes)
        rows.append({
            "step": name,
            "change": step.change,
            "params": model.count_params(),
            "gflops": count_flops(model) / 1e9,
            "paper_gflops": step.paper_gflops,
            "appendix_gflops": step.appendix_gflops,
            "paper_top1": step.paper_top1,
        })
        del model
        keras.backend.clear_session()
    return rows


def format_table(rows):
    header = ("step", "change", "params", "GFLOPs (ours)", "GFLOPs (paper)", "(appendix)",
              "top-1 (paper)")
    lines = [
        (r["step"], r["change"], f"{r['params']:,}", f"{r['gflops']:.3f}",
         f"{r['paper_gflops']:.1f}", f"{r['appendix_gflops']:.2f}", f"{r['paper_top1']:.1f}")
        for r in rows
    ]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines)]
    out = []
    for i, line in enumerate([header, *lines]):
        # names and changes left-aligned, numbers right-aligned
        cells = [c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(line, widths))]
        out.append("  ".join(cells).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def plot(rows, path):
    """Writes the trajectory (paper top-1 and GFLOPs per step) to the PNG ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["step"] for r in rows]
    positions = range(len(rows))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    top.plot(positions, [r["paper_top1"] for r in rows], "o-", color="tab:blue")
    top.set_ylabel("ImageNet top-1 (%, paper)")
    top.set_title("ResNet-50 -> ConvNeXt-T, step by step")
    top.grid(alpha=0.3)
    bottom.bar(positions, [r["gflops"] for r in rows], color="tab:orange", label="ours (counted)")
    bottom.plot(positions, [r["paper_gflops"] for r in rows], "k_", markersize=18, mew=2,
                label="paper")
    bottom.set_ylabel("GFLOPs (224 px)")
    bottom.set_xticks(list(positions))
    bottom.set_xticklabels(names, rotation=45, ha="right")
    bottom.legend(loc="upper left")
    bottom.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None):
    """The CLI; returns the exit status (0 done, 2 bad input, with one line on stderr)."""
    parser = cli.ArgumentParser(
        prog="python -m keras_convnext.roadmap",
        description="The ConvNeXt paper's roadmap: parameters and FLOPs of every step.",
    )
    parser.add_argument("--steps", default="all",
                        help=f"comma-separated steps, or all ({', '.join(STEPS)})")
    parser.add_argument("--image-size", type=int, default=224, help="input size in pixels")
    parser.add_argument("--plot", metavar="PATH", help="write the trajectory to this PNG")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show the backends' log lines and tracebacks")
    args = parser.parse_args(argv)
    steps = list(STEPS) if args.steps.strip() == "all" else [
        s.strip() for s in args.steps.split(",") if s.strip()]
    if not steps:
        parser.error("--steps names no step")

    def work():
        for name in steps:
            get_step(name)
        rows = table(steps, image_size=args.image_size)
        lines = [format_table(rows)]
        if args.plot:
            plot(rows, args.plot)
            lines.append(f"wrote {args.plot}")
        return "\n".join(lines)

    return cli.exit_status(work, lambda text: text)
