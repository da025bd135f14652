"""Classify images from the command line and print the top-5 ImageNet classes.

    python -m keras_convnext.predict IMAGE [IMAGE ...] --model tiny --weights PATH

``--weights`` takes any checkpoint that ``keras_convnext.load_weights`` reads (or "imagenet").
Without weights the model is randomly initialized and says so: useful only to check the setup.
"""

import argparse
import sys
import time

import numpy as np


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m keras_convnext.predict", description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    parser.add_argument("--model", default="tiny",
                        help="variant of any family: atto ... xlarge, v2_atto ... v2_huge, "
                             "isotropic_small ... isotropic_large")
    parser.add_argument("--weights", default=None, help="checkpoint path or 'imagenet'")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--top", type=int, default=5)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import keras_convnext
    from keras_convnext.imagenet import decode_predictions, load_image

    try:
        variant = keras_convnext.get_variant(args.model)
        images = np.stack([load_image(path, args.image_size) for path in args.images])
        start = time.perf_counter()
        model = keras_convnext.build(variant.name, weights=args.weights)
        load_seconds = time.perf_counter() - start
    except (ValueError, FileNotFoundError, NotImplementedError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.weights is None:
        print("warning: no --weights given; the model is randomly initialized", file=sys.stderr)

    model.predict(images[:1], verbose=0)  # warm-up (tracing / compilation)
    start = time.perf_counter()
    probabilities = model.predict(images, verbose=0)
    seconds = time.perf_counter() - start

    for path, top in zip(args.images, decode_predictions(probabilities, args.top)):
        print(path)
        for rank, (index, name, score) in enumerate(top, 1):
            print(f"  {rank}. {name:<30} {score:7.2%}  (class {index})")
    print(
        f"{variant.model_name}: built and loaded in {load_seconds:.1f} s; "
        f"{len(images)} image(s) in {seconds * 1000:.0f} ms "
        f"({len(images) / seconds:.1f} img/s, backend {__import__('keras').backend.backend()})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
