"""ImageNet-1k class names (bundled: WordNet synsets and lemmas in the standard class order) and the
evaluation-time image preparation (resize the shorter side, center crop)."""

import functools
import os

import numpy as np

_CLASSES_FILE = os.path.join(os.path.dirname(__file__), "data", "imagenet_classes.tsv")

# The standard ImageNet evaluation crop: resize to size / 0.875 (256 for 224), then center crop.
EVAL_CROP_RATIO = 0.875


@functools.lru_cache(maxsize=None)
def class_names():
    """The 1000 ImageNet-1k class names, index order, first lemma of each synset."""
    with open(_CLASSES_FILE, encoding="utf-8") as f:
        return tuple(line.rstrip("\n").split("\t")[1].split(",")[0] for line in f)


def decode_predictions(probabilities, top=5):
    """For each row of (N, 1000) scores, the ``top`` (class index, name, score), best first."""
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(class_names()):
        raise ValueError(
            f"decode_predictions expects (N, {len(class_names())}) ImageNet scores, "
            f"got shape {probabilities.shape}"
        )
    names = class_names()
    rows = []
    for scores in probabilities:
        best = np.argsort(scores)[::-1][:top]
        rows.append([(int(i), names[i], float(scores[i])) for i in best])
    return rows


def load_image(path, size=224, crop_ratio=EVAL_CROP_RATIO):
    """Reads an image file as (size, size, 3) float32 RGB in 0-255: shorter side resized to
    size / crop_ratio, then center-cropped. Raises ValueError naming a file that is not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = size / crop_ratio / min(image.size)
            resized = (max(size, round(image.width * scale)), max(size, round(image.height * scale)))
            image = image.resize(resized, Image.BICUBIC)
            left, top = (resized[0] - size) // 2, (resized[1] - size) // 2
            image = image.crop((left, top, left + size, top + size))
            return np.asarray(image, dtype="float32")
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read {path} as an image: {error}") from None
