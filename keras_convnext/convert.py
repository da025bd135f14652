"""Converts a ConvNeXt checkpoint in any supported format to a keras_convnext weights file.

    python -m keras_convnext.convert SRC DST.weights.h5 [--variant tiny] [--ema] [--verbose]

SRC is a facebookresearch/ConvNeXt ``.pth``, a timm or Hugging Face ``.safetensors`` /
``.pth`` / ``.bin``, a keras.applications ``.h5`` / ``.weights.h5`` or a keras_convnext
``.weights.h5``; its format is told from the file. DST is a Keras weights file for the matching
keras_convnext model, which loads with no torch installed::

    model = keras_convnext.ConvNeXtTiny(weights="DST.weights.h5")

``--variant`` checks that SRC is that variant (the error names the variant it looks like).
The conversion is strict: every tensor of SRC is used, every variable of DST is set.
"""

import sys

from keras_convnext import cli


def convert(src, dst, *, variant=None, ema=False, verbose=False, out=None):
    """Converts ``src`` to the keras_convnext weights file ``dst``; prints what matched."""
    from keras_convnext.variants import get_variant
    from keras_convnext.weights import CheckpointError, architecture, formats, native
    from keras_convnext.weights import read_checkpoint

    out = out or sys.stdout
    converted = read_checkpoint(src, ema=ema)
    arch = architecture({path: array.shape for path, array in converted.arrays.items()})
    if variant is not None:
        wanted = get_variant(variant)
        if (wanted.family, wanted.depths, wanted.dims) != (arch.family, arch.depths, arch.dims):
            raise CheckpointError(
                f"{src} is not {wanted.model_name} (depths {wanted.depths}, dims "
                f"{wanted.dims}): it looks like {arch.describe()}"
            )
    native.write(converted, dst)
    print(f"read {src}: {formats.describe_format(converted)}", file=out)
    print(
        f"matched all {len(converted.arrays)} tensors, one to each variable of {arch.describe()}",
        file=out,
    )
    if verbose:
        for path, array in converted.arrays.items():
            print(f"  {converted.sources[path]} -> {path} {tuple(array.shape)}", file=out)
    print(f"wrote {dst}", file=out)
    return arch


def main(argv=None):
    """The CLI; returns the exit status (0 done, 2 bad input, with one line on stderr)."""
    parser = cli.ArgumentParser(
        prog="python -m keras_convnext.convert",
        description="Convert a ConvNeXt checkpoint (official, timm, Hugging Face, "
        "keras.applications, keras_convnext) to a keras_convnext .weights.h5 file.",
    )
    parser.add_argument("src", help="checkpoint file to read")
    parser.add_argument("dst", help="Keras weights file to write (must end with .weights.h5)")
    parser.add_argument("--variant",
                        help="fail unless SRC is this variant (tiny, v2_atto, isotropic_small, ...)")
    parser.add_argument("--ema", action="store_true", help="take a training checkpoint's EMA")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="list every tensor; show the backends' log lines and tracebacks")
    args = parser.parse_args(argv)
    if not args.dst.endswith(".weights.h5"):
        parser.error(f"DST must end with .weights.h5, got {args.dst}")
    return cli.exit_status(
        lambda: convert(args.src, args.dst, variant=args.variant, ema=args.ema,
                        verbose=args.verbose))


if __name__ == "__main__":
    sys.exit(main())
