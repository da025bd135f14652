"""keras-hub preprocessing for ConvNeXt: ``ConvNeXtImageConverter`` (resize, the evaluation
crop, ImageNet normalization) and ``ConvNeXtImageClassifierPreprocessor``."""

import keras
import numpy as np
from keras import ops
from keras_hub.layers import ImageConverter
from keras_hub.models import ImageClassifierPreprocessor

from keras_convnext.hub.backbone import ConvNeXtBackbone
from keras_convnext.imagenet import EVAL_CROP_RATIO
from keras_convnext.layers import IMAGENET_MEAN, IMAGENET_STD


def normalization(pixel_range=255.0, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """keras-hub's ``(scale, offset)`` that maps images in ``[0, pixel_range]`` to
    ``(x / pixel_range - mean) / std``, per channel."""
    if not float(pixel_range) > 0:
        raise ValueError(f"pixel_range must be positive (255 or 1), got {pixel_range!r}")
    scale = [1.0 / (float(pixel_range) * s) for s in std]
    offset = [-m / s for m, s in zip(mean, std)]
    return scale, offset


@keras.saving.register_keras_serializable(package="keras_convnext")
class ConvNeXtImageConverter(ImageConverter):
    """Resizes, crops and normalizes images for a ConvNeXt.

    Args:
        image_size: ``(height, width)`` of the output, or None to keep the input size.
        crop_pct: the evaluation crop, as timm's ``crop_pct`` and Hugging Face's: the central
            ``crop_pct`` of the image's short side is resized to ``image_size`` (the same
            region as "resize the short side to size / crop_pct, center-crop size"; 0.875 for
            the 224 px ImageNet checkpoints). None or 1.0: resize the central square only.
            Applies to plain image batches; detection inputs (dicts with boxes) are only
            resized.
        pixel_range: 255 for 0-255 input, 1 for 0-1 input; with ``scale`` and ``offset`` None
            the converter applies ImageNet's mean and std to that range.
        scale, offset: keras-hub's per-channel ``x * scale + offset`` instead of ImageNet's.
        interpolation: resizing filter ("bicubic", as the checkpoints were evaluated).
        Other arguments: ``keras_hub.layers.ImageConverter``'s.
    """

    backbone_cls = ConvNeXtBackbone

    def __init__(self, image_size=None, scale=None, offset=None, crop_pct=None,
                 pixel_range=255.0, interpolation="bicubic", **kwargs):
        if scale is None and offset is None:
            scale, offset = normalization(pixel_range)
        if crop_pct is not None and not 0.0 < float(crop_pct) <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct!r}")
        super().__init__(image_size=image_size, scale=scale, offset=offset,
                         interpolation=interpolation, **kwargs)
        self.crop_pct = None if crop_pct is None else float(crop_pct)

    def _call_python(self, inputs):
        if isinstance(inputs, (list, tuple)):
            try:
                inputs = np.asarray(inputs)
            except ValueError:  # images of different sizes
                return type(inputs)(self._call_python(x) for x in inputs)
        if (self.crop_pct not in (None, 1.0) and self.image_size is not None
                and not isinstance(inputs, dict)):
            inputs = self._center_crop(inputs)
        return super()._call_python(inputs)

    def _center_crop(self, images):
        """The central ``crop_pct`` of each side (Resizing then crops to the aspect ratio)."""
        images = ops.convert_to_tensor(images) if isinstance(images, np.ndarray) else images
        shape = ops.shape(images)
        axes = (-2, -1) if self.data_format == "channels_first" else (-3, -2)
        h, w = shape[axes[0]], shape[axes[1]]
        ch, cw = self._fraction(h), self._fraction(w)
        top, left = (h - ch) // 2, (w - cw) // 2
        if self.data_format == "channels_first":
            return images[..., top:top + ch, left:left + cw]
        return images[..., top:top + ch, left:left + cw, :]

    def _fraction(self, size):
        if isinstance(size, int):
            return max(1, int(round(size * self.crop_pct)))
        import tensorflow as tf  # a tf.data graph: the size is a tensor

        return tf.maximum(1, tf.cast(tf.round(tf.cast(size, tf.float32) * self.crop_pct),
                                     size.dtype))

    def get_config(self):
        config = super().get_config()
        config["crop_pct"] = self.crop_pct
        return config


def eval_converter(image_size=224, crop_pct=EVAL_CROP_RATIO, **kwargs):
    """The converter the ImageNet checkpoints were evaluated with (bicubic, 0.875 crop)."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    return ConvNeXtImageConverter(image_size=size, crop_pct=crop_pct, **kwargs)


@keras.saving.register_keras_serializable(package="keras_convnext")
class ConvNeXtImageClassifierPreprocessor(ImageClassifierPreprocessor):
    """keras-hub's ``ImageClassifierPreprocessor`` with a ``ConvNeXtImageConverter``."""

    backbone_cls = ConvNeXtBackbone
    image_converter_cls = ConvNeXtImageConverter
