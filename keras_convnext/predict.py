"""Classify images from the command line and print the top classes of each.

    python -m keras_convnext.predict IMAGE [IMAGE ...] --model tiny --weights imagenet
    python -m keras_convnext.predict IMAGE [IMAGE ...] --model runs/digits      # a training run
    python -m keras_convnext.predict IMAGE [IMAGE ...] --model my_model.keras --top-k 3

``--model`` is a variant name (``--weights``: any checkpoint ``keras_convnext.load_weights``
reads, or "imagenet"; none: random initialization, said so), a ``.keras`` model, or a run
folder of ``python -m training.train`` (its ``model.keras``, else ``best_model.keras``). A run's
class names (``classes.json``), image size, crop and channels (``config.json``) are used; a
``.keras`` inside a run folder finds them beside it. Without saved names, 1000-class models get
ImageNet's and others "class N".
"""

import json
import os
import sys
import time

from keras_convnext import cli

RUN_MODELS = ("model.keras", "best_model.keras")  # what training.train writes, preferred first
CLASSES_FILE = "classes.json"
RUN_CONFIG_FILE = "config.json"


def parse_args(argv):
    parser = cli.ArgumentParser(prog="python -m keras_convnext.predict",
                                description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    parser.add_argument("--model", default="tiny",
                        help="a variant (atto ... xlarge, v2_atto ... v2_huge, isotropic_small ... "
                             "isotropic_large), a .keras file or a training run folder")
    parser.add_argument("--weights", default=None,
                        help="for a variant: a checkpoint path or 'imagenet' (a .keras file or "
                             "run folder here is the same as --model PATH)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input size in pixels (default: the run's or the model's, else 224)")
    parser.add_argument("--top-k", "--top", dest="top_k", type=int, default=5,
                        help="how many classes to print per image")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show the backends' log lines and tracebacks")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error(f"--top-k must be >= 1, got {args.top_k}")
    if args.image_size is not None and args.image_size < 1:
        parser.error(f"--image-size must be positive, got {args.image_size}")
    if args.weights is not None and _is_saved_model(args.weights):
        args.model, args.weights = args.weights, None
    return args


def _is_saved_model(path):
    return str(path).endswith(".keras") or os.path.isdir(path)


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {cli.first_line(e)}") from None


def resolve_saved(path):
    """(the .keras file, the run folder holding its metadata or None) of ``--model PATH``."""
    if os.path.isdir(path):
        for name in RUN_MODELS:
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name), path
        raise FileNotFoundError(
            f"{path} holds no {' or '.join(RUN_MODELS)} (a run folder of training.train has "
            "one once an epoch is done)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path}")
    folder = os.path.dirname(os.path.abspath(path))
    return path, folder if os.path.isfile(os.path.join(folder, CLASSES_FILE)) else None


def run_metadata(folder):
    """(class names or None, {"image_size", "crop_pct", "channels"} from the run's config)."""
    if folder is None:
        return None, {}
    names = None
    if os.path.isfile(os.path.join(folder, CLASSES_FILE)):
        names = _read_json(os.path.join(folder, CLASSES_FILE))
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{os.path.join(folder, CLASSES_FILE)} must hold a list of names")
    config = {}
    if os.path.isfile(os.path.join(folder, RUN_CONFIG_FILE)):
        values = _read_json(os.path.join(folder, RUN_CONFIG_FILE))
        config = {k: values[k] for k in ("image_size", "crop_pct", "channels") if k in values}
    return names, config


def load_saved_model(path):
    import keras

    import keras_convnext  # noqa: F401 - registers the package's layers for deserialization

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file: one line naming it
        raise ValueError(f"cannot load model {path}: {cli.first_line(e)}") from None


def class_labels(names, num_classes):
    """Names of the model's ``num_classes`` outputs: ``names``, ImageNet's, or "class N"."""
    if names is not None:
        if len(names) != num_classes:
            raise ValueError(f"the run saved {len(names)} class names for a model of "
                             f"{num_classes} classes")
        return list(names)
    if num_classes == 1000:
        from keras_convnext.imagenet import class_names

        return list(class_names())
    return [f"class {i}" for i in range(num_classes)]


def top_classes(probabilities, labels, k):
    """For each row of scores, the ``k`` best (index, label, score), best first."""
    import numpy as np

    probabilities = np.asarray(probabilities)
    return [[(int(i), labels[i], float(row[i])) for i in np.argsort(row)[::-1][:k]]
            for row in probabilities]


def prepare(args):
    """(model, labels, images, load seconds, a description of the model)."""
    import numpy as np

    import keras_convnext
    from keras_convnext.imagenet import EVAL_CROP_RATIO, load_image

    start = time.perf_counter()
    config = {}
    if _is_saved_model(args.model):
        path, folder = resolve_saved(args.model)
        names, config = run_metadata(folder)
        model = load_saved_model(path)
        described = path
    else:
        variant = keras_convnext.get_variant(args.model)
        names, described = None, variant.model_name
        size = args.image_size or 224
        model = keras_convnext.build(variant.name, weights=args.weights,
                                     input_shape=(size, size, 3))
        if args.weights is None:
            print("warning: no --weights given; the model is randomly initialized",
                  file=sys.stderr)
    seconds = time.perf_counter() - start
    height, width, channels = model.input_shape[1:4]
    size = args.image_size or config.get("image_size") or height or 224
    if height is not None and (height, width) != (size, size):
        raise ValueError(f"{described} takes {height}x{width} images, not --image-size {size}")
    crop = config.get("crop_pct", EVAL_CROP_RATIO)
    images = np.stack([load_image(p, size, crop_ratio=crop) for p in args.images])
    if channels == 1:  # luma, as training.data makes one-channel images
        images = images @ np.array([0.2989, 0.5870, 0.1140], "float32")[:, None]
    labels = class_labels(names, int(model.output_shape[-1]))
    return model, labels, images, seconds, described


def classify(args):
    import keras

    model, labels, images, load_seconds, described = prepare(args)
    model.predict(images[:1], verbose=0)  # warm-up (tracing / compilation)
    start = time.perf_counter()
    probabilities = model.predict(images, verbose=0)
    seconds = time.perf_counter() - start
    lines = []
    for path, top in zip(args.images, top_classes(probabilities, labels, args.top_k)):
        lines.append(path)
        for rank, (index, name, score) in enumerate(top, 1):
            lines.append(f"  {rank}. {name:<30} {score:7.2%}  (class {index})")
    lines.append(
        f"{described}: built and loaded in {load_seconds:.1f} s; "
        f"{len(images)} image(s) in {seconds * 1000:.0f} ms "
        f"({len(images) / seconds:.1f} img/s, backend {keras.backend.backend()})")
    return "\n".join(lines)


def main(argv=None):
    """The CLI; returns the exit status (0 done, 2 bad input, with one line on stderr)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return cli.exit_status(lambda: classify(args), lambda text: text)


if __name__ == "__main__":
    sys.exit(main())
