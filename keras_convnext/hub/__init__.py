"""ConvNeXt as a keras-hub model: ``import keras_convnext.hub`` (needs the ``[hub]`` extra).

- ``ConvNeXtBackbone``: a ``keras_hub.models.FeaturePyramidBackbone`` (``P2`` .. ``P5``) built
  by our builder, for keras-hub's ``ImageClassifier``, ``DeepLabV3ImageSegmenter``,
  ``RetinaNetObjectDetector``;
- ``ConvNeXtImageClassifier``, ``ConvNeXtImageClassifierPreprocessor``, ``ConvNeXtImageConverter``;
- ``from_preset``: keras-hub presets saved with ``save_to_preset``, and timm / Hugging Face
  ConvNeXt and ConvNeXtV2 folders (``config.json`` + ``model.safetensors``), converted on load.

keras-hub stays optional: ``import keras_convnext`` never imports it.
"""

try:
    import keras_hub  # noqa: F401
except ImportError:
    raise ImportError(
        "keras_convnext.hub needs keras-hub: pip install 'keras_convnext[hub]'"
    ) from None

from keras_convnext.hub import presets
from keras_convnext.hub.backbone import ConvNeXtBackbone
from keras_convnext.hub.image_classifier import ConvNeXtImageClassifier
from keras_convnext.hub.preprocessing import (
    ConvNeXtImageClassifierPreprocessor,
    ConvNeXtImageConverter,
    eval_converter,
)

presets.install()

__all__ = [
    "ConvNeXtBackbone",
    "ConvNeXtImageClassifier",
    "ConvNeXtImageClassifierPreprocessor",
    "ConvNeXtImageConverter",
    "eval_converter",
]
