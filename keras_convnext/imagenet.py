"""ImageNet-1k class names (bundled: WordNet synsets and lemmas in the standard class order) and the
evaluation-time image preparation (resize the shorter side, center crop)."""

import functools
import os

import numpy as np

_CLASSES_FILE = os.path.join(os.path.dirname(__file__), "data", "imagenet_classes.tsv")

# The standard ImageNet evaluation crop: resize to size / 0.875 (256 for 224), then center crop.
EVAL_CROP_RATIO = 0.875


@functools.lru_cache(maxsize=None)
def _synsets():
    """(WordNet id, lemmas) of the 1000 classes, in index order."""
    with open(_CLASSES_FILE, encoding="utf-8") as f:
        return tuple(tuple(line.rstrip("\n").split("\t")[:2]) for line in f)


def class_names():
    """The 1000 ImageNet-1k class names, index order, first lemma of each synset."""
    return tuple(lemmas.split(",")[0] for _, lemmas in _synsets())


def _top(probabilities, top):
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(_synsets()):
        raise ValueError(
            f"decode_predictions expects (N, {len(_synsets())}) ImageNet scores, "
            f"got shape {probabilities.shape}"
        )
    return [(np.argsort(scores)[::-1][:top], scores) for scores in probabilities]


def keras_decode_predictions(preds, top=5):
    """``keras.applications``' ``decode_predictions``: for each row of (N, 1000) scores, the
    ``top`` (WordNet id, class name, score) tuples, best first, names with underscores
    ("great_white_shark"), from the bundled class list (no download)."""
    synsets = _synsets()
    return [[(synsets[i][0], synsets[i][1].split(",")[0].replace(" ", "_"), float(scores[i]))
             for i in best] for best, scores in _top(preds, top)]


def preprocess_input(x, data_format=None):
    """``keras.applications.convnext.preprocess_input``: the identity. keras_convnext models
    normalize 0-255 RGB inside (their ``preprocessing`` layer, ``include_preprocessing=True``),
    so images go in as they are; with ``include_preprocessing=False`` normalize them yourself
    (``(x / 255 - mean) / std`` with ImageNet's mean and std)."""
    return x


def decode_predictions(probabilities, top=5):
    """For each row of (N, 1000) scores, the ``top`` (class index, name, score), best first."""
    names = class_names()
    return [[(int(i), names[i], float(scores[i])) for i in best]
            for best, scores in _top(probabilities, top)]


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
