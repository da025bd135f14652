"""Checkpoint loading: ``load_weights(model, path_or_name)``.

Reads Keras ``.weights.h5`` files saved from a keras_convnext model of the same architecture.
Keras refuses a file whose layers or shapes do not match, so a wrong variant never half-loads.
"""

import os


def load_weights(model, weights):
    """Loads ``weights`` (a file path, or a published name such as "imagenet") into ``model``."""
    if weights in ("imagenet", "imagenet22k"):
        raise NotImplementedError(
            f"weights={weights!r}: published ImageNet checkpoints are not available yet; pass "
            "weights=None or the path of a keras_convnext .weights.h5 file"
        )
    path = os.fspath(weights)
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if not path.endswith(".weights.h5"):
        raise ValueError(
            f"cannot read weights from {path}: supported formats are keras_convnext "
            "'.weights.h5' files"
        )
    model.load_weights(path)
    return model
