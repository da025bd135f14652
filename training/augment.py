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

Given a ``seed`` (a (2,) tensor: the image's or batch's position in the stream, from
``training.data.train_pipeline``), every draw is stateless: the layers' seed generators are
swapped for ones deriving seeds from it while they are traced, so a resumed run sees the same
augmentations as an unbroken one, whatever order parallel calls run in. Without a seed (eager
use) the layers draw from their own generators.
"""

import contextlib

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

    def apply(image, seed=None):
        with stateless_draws(layer, seed):
            out = layer(image, training=True)
        return tf.clip_by_value(out, 0.0, 255.0)

    return apply


class _StatelessSeeds(keras.random.SeedGenerator):
    """Stands in for a layer's seed generator: the k-th draw gets ``fold_in(seed, k)`` (no
    state; the counter runs while the function is traced)."""

    def __init__(self, seed):  # noqa: super().__init__ would create a state variable
        self._seed = seed
        self._count = 0

    def next(self, ordered=True):
        self._count += 1
        return tf.random.experimental.stateless_fold_in(self._seed, self._count)


@contextlib.contextmanager
def stateless_draws(layer, seed):
    """Makes ``layer`` and its sub-layers (RandAugment's) draw from ``seed`` in the block."""
    if seed is None:
        yield
        return
    generator = _StatelessSeeds(seed)
    saved = []
    for sub in layer._flatten_layers():
        if hasattr(sub, "generator"):
            saved.append((sub, sub.generator, getattr(sub, "_backend_generators", None)))
            object.__setattr__(sub, "generator", generator)
            object.__setattr__(sub, "_backend_generators", {"tensorflow": generator})
    try:
        yield
    finally:
        for sub, own, backends in saved:
            object.__setattr__(sub, "generator", own)
            if backends is None:
                object.__delattr__(sub, "_backend_generators")
            else:
                object.__setattr__(sub, "_backend_generators", backends)


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

    def mix(layer, images, labels, seed):
        with stateless_draws(layer, seed):
            out = layer({"images": images, "labels": labels}, training=True)
        return tf.cast(out["images"], tf.float32), tf.cast(out["labels"], tf.float32)

    def uniform(seed, salt):
        if seed is None:
            return tf.random.uniform([])
        return tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(seed, salt))

    def fold(seed, salt):
        return None if seed is None else tf.random.experimental.stateless_fold_in(seed, salt)

    def apply(images, labels, seed=None):
        images = tf.cast(images, tf.float32)
        if erasing is not None:
            with stateless_draws(erasing, fold(seed, 1)):
                images = tf.cast(erasing(images, training=True), tf.float32)
        if mixup is None and cutmix is None:
            return images, labels
        if mixup is not None and cutmix is not None:
            def mixed():
                return tf.cond(uniform(seed, 2) < switch_prob,
                               lambda: mix(cutmix, images, labels, fold(seed, 3)),
                               lambda: mix(mixup, images, labels, fold(seed, 4)))
        else:
            layer = mixup if mixup is not None else cutmix

            def mixed():
                return mix(layer, images, labels, fold(seed, 5))
        if mix_prob >= 1.0:
            return mixed()
        return tf.cond(uniform(seed, 6) < mix_prob, mixed, lambda: (images, labels))

    return apply
