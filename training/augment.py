"""The recipe's augmentations, made of Keras 3 preprocessing layers (safe inside tf.data on every
backend): RandAugment per image; random erasing, Mixup and CutMix per batch.

Mapping from the official (timm) settings:

* RandAugment ``rand-m9-mstd0.5``: ``keras.layers.RandAugment(num_ops=rand_augment_ops,
  factor=rand_augment_factor)``; Keras draws each op's strength up to ``factor`` of its range
  (timm's magnitude 9/10 with noise has no exact Keras equivalent; 0.5 is Keras' default).
  Applied per image, so every image gets its own ops, as in timm.
* Random erasing ``reprob=0.25``: ``keras.layers.RandomErasing(factor=(p, p))`` (a fixed
  probability p; a single float would draw p from [0, factor]), random-noise fill.
* Mixup 0.8 / CutMix 1.0 with ``mixup_prob`` 1.0 and ``mixup_switch_prob`` 0.5: each batch is
  mixed with probability ``mixup_prob``, by CutMix with probability ``mixup_switch_prob`` when
  both are enabled (timm's "batch" mode chooses per batch too; the mixing weight is per image).
  ``keras.layers.CutMix(factor=(a, a))`` draws its weight from Beta(a, a).
"""

import keras
import tensorflow as tf

VALUE_RANGE = (0, 255)


def image_augment(config):
    """A per-image function (float32 HxWx3 0-255 -> same), or None when RandAugment is off."""
    if config.rand_augment_ops <= 0 or config.rand_augment_factor <= 0:
        return None
    layer = keras.layers.RandAugment(
        value_range=VALUE_RANGE,
        num_ops=config.rand_augment_ops,
        factor=config.rand_augment_factor,
        seed=config.seed,
        dtype="float32",
    )

    def apply(image):
        return tf.clip_by_value(layer(image, training=True), 0.0, 255.0)

    return apply


def batch_augment(config):
    """A per-batch function ``(images, one-hot labels) -> (images, soft labels)`` applying
    random erasing and Mixup/CutMix, or None when all are off."""
    erasing = None
    if config.random_erasing > 0:
        erasing = keras.layers.RandomErasing(
            factor=(config.random_erasing, config.random_erasing),
            value_range=VALUE_RANGE,
            seed=config.seed + 1,
            dtype="float32",
        )
    mixup = keras.layers.MixUp(alpha=config.mixup, seed=config.seed + 2, dtype="float32") if (
        config.mixup > 0) else None
    cutmix = keras.layers.CutMix(
        factor=(config.cutmix, config.cutmix), seed=config.seed + 3, dtype="float32"
    ) if config.cutmix > 0 else None
    if erasing is None and mixup is None and cutmix is None:
        return None
    mix_prob, switch_prob = config.mixup_prob, config.mixup_switch_prob

    def mix(layer, images, labels):
        out = layer({"images": images, "labels": labels}, training=True)
        return tf.cast(out["images"], tf.float32), tf.cast(out["labels"], tf.float32)

    def apply(images, labels):
        images = tf.cast(images, tf.float32)
        if erasing is not None:
            images = tf.cast(erasing(images, training=True), tf.float32)
        if mixup is None and cutmix is None:
            return images, labels
        if mixup is not None and cutmix is not None:
            def mixed():
                return tf.cond(tf.random.uniform([]) < switch_prob,
                               lambda: mix(cutmix, images, labels),
                               lambda: mix(mixup, images, labels))
        else:
            layer = mixup if mixup is not None else cutmix

            def mixed():
                return mix(layer, images, labels)
        if mix_prob >= 1.0:
            return mixed()
        return tf.cond(tf.random.uniform([]) < mix_prob, mixed, lambda: (images, labels))

    return apply
