"""The recipe's augmentations, safe inside tf.data on every backend: RandAugment per image, Mixup
and CutMix per batch (Keras 3 preprocessing layers), and random erasing per batch (the Keras
layer's distribution, drawn more cheaply).

Mapping from the official (timm) settings:

* RandAugment ``rand-m9-mstd0.5``: ``keras.layers.RandAugment(num_ops=rand_augment_ops,
  factor=rand_augment_factor)``; Keras draws each op's strength up to ``factor`` of its range
  (timm's magnitude 9/10 with noise has no exact Keras equivalent; 0.5 is Keras' default).
  Applied per image, so every image gets its own ops, as in timm.
* Random erasing ``reprob=0.25``: ``random_erasing``, the distribution of
  ``keras.layers.RandomErasing(factor=(p, p))`` (a fixed probability p, random-noise fill) drawn
  at a quarter of its cost: the layer draws noise for every pixel of the batch, this only for
  the images it erases (on Fashion-MNIST the layer took as long as the rest of the pipeline).
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


ERASING_SCALE = (0.02, 0.33)  # keras.layers.RandomErasing's default: each side's squared share


def _uniform(shape, seed, salt, minval=0.0, maxval=1.0):
    if seed is None:
        return tf.random.uniform(shape, minval, maxval)
    return tf.random.stateless_uniform(
        shape, tf.random.experimental.stateless_fold_in(seed, salt), minval, maxval)


def random_erasing(images, probability, seed=None, scale=ERASING_SCALE):
    """Erases one box of each image with ``probability``: float32 (N, H, W, C) 0-255 in and out.

    The same distribution as ``keras.layers.RandomErasing(factor=(p, p), scale=scale)``: each
    side of the box is ``sqrt(U(scale))`` of the image's (so its area is 2-33 % of the image), its
    corner uniform inside the image, and its pixels ``clip(N(0, 1) * 255, 0, 255)``, drawn per
    pixel and channel. Unlike the layer it draws the noise only for the erased images."""
    images = tf.convert_to_tensor(images, tf.float32)
    shape = tf.shape(images)
    n, height, width = shape[0], shape[1], shape[2]
    sides = tf.sqrt(_uniform([n, 2], seed, 1, scale[0], scale[1]))

    def inside(length, side, salt):  # (n, length): the pixels of each image's box on one axis
        length_f = tf.cast(length, tf.float32)
        size = side * length_f
        start = _uniform([n], seed, salt) * (length_f - size)
        grid = tf.range(length_f)[None, :]
        return (grid >= start[:, None]) & (grid < (start + size)[:, None])

    cols = inside(width, sides[:, 0], 2)
    rows = inside(height, sides[:, 1], 3)
    picked = tf.where(_uniform([n], seed, 4) < probability)[:, 0]
    box = tf.gather(rows, picked)[:, :, None, None] & tf.gather(cols, picked)[:, None, :, None]
    noise_shape = tf.concat([tf.shape(picked)[:1], shape[1:]], 0)
    if seed is None:
        noise = tf.random.normal(noise_shape)
    else:
        noise = tf.random.stateless_normal(
            noise_shape, tf.random.experimental.stateless_fold_in(seed, 5))
    erased = tf.where(box, tf.clip_by_value(noise * 255.0, 0.0, 255.0), tf.gather(images, picked))
    return tf.tensor_scatter_nd_update(images, picked[:, None], erased)


def batch_augment(config):
    """A per-batch function ``(images, one-hot labels) -> (images, soft labels)`` applying
    random erasing and Mixup/CutMix, or None when all are off."""
    erasing = config.random_erasing
    mixup = keras.layers.MixUp(alpha=config.mixup, seed=config.seed + 2, dtype="float32") if (
        config.mixup > 0) else None
    cutmix = keras.layers.CutMix(
        factor=(config.cutmix, config.cutmix), seed=config.seed + 3, dtype="float32"
    ) if config.cutmix > 0 else None
    if not erasing and mixup is None and cutmix is None:
        return None
    mix_prob, switch_prob = config.mixup_prob, config.mixup_switch_prob

    def mix(layer, images, labels, seed):
        with stateless_draws(layer, seed):
            out = layer({"images": images, "labels": labels}, training=True)
        return tf.cast(out["images"], tf.float32), tf.cast(out["labels"], tf.float32)

    def fold(seed, salt):
        return None if seed is None else tf.random.experimental.stateless_fold_in(seed, salt)

    def apply(images, labels, seed=None):
        images = tf.cast(images, tf.float32)
        if erasing:
            images = random_erasing(images, erasing, fold(seed, 1))
        if mixup is None and cutmix is None:
            return images, labels
        if mixup is not None and cutmix is not None:
            def mixed():
                return tf.cond(_uniform([], seed, 2) < switch_prob,
                               lambda: mix(cutmix, images, labels, fold(seed, 3)),
                               lambda: mix(mixup, images, labels, fold(seed, 4)))
        else:
            layer = mixup if mixup is not None else cutmix

            def mixed():
                return mix(layer, images, labels, fold(seed, 5))
        if mix_prob >= 1.0:
            return mixed()
        return tf.cond(_uniform([], seed, 6) < mix_prob, mixed, lambda: (images, labels))

    return apply
