"""FCMAE, ConvNeXt V2's fully convolutional masked autoencoder (Woo et al. 2023), dense.

The official code encodes with sparse convolutions (MinkowskiEngine, CUDA only); this is the
authors' TPU formulation in ``keras.ops``: dense convolutions with the mask applied again after
every spatial operation, so masked positions stay zero and never reach visible ones.

* Masking: per sample, ``int(L * (1 - mask_ratio))`` of the ``L`` patches (``patch_size``
  pixels square) are kept, chosen at random; the 0/1 patch mask is upsampled to every
  resolution the encoder works at.
* Encoder: ``FCMAE.encoder`` is a plain ``ConvNeXtV2`` (``include_top=False``), so its weights
  file is a V2 encoder's. The masked pass zeroes masked pixels, the stem's output, each block's
  input, depthwise-conv output and GRN input (``ConvNeXtBlock(visible=)``), and each
  downsampling's normalized input and output. A position at a coarser grid is visible when any
  input position of its window is, as a sparse strided convolution's output site is; with
  ``patch_size`` = the total stride (32, the paper's) every window is wholly visible or masked.
* Decoder: the encoder's output (nearest-upsampled to the patch grid when ``patch_size`` < 32),
  a 1x1 projection to ``decoder_dim``, a learned mask token at masked patches, ``decoder_depth``
  V2 blocks, and a 1x1 layer predicting each patch's ``patch_size**2 * channels`` pixels.
* Loss: MSE on the masked patches only, of the normalized image (the encoder's own
  ``preprocessing``), optionally normalized per patch (``norm_pix_loss``).

Differences from the sparse original, both by design: GRN sums over each sample's visible
positions (MinkowskiGRN sums over the whole batch's active sites at once; the dense V2 that is
fine-tuned normalizes per sample), and patch sizes below 32 are allowed (see ``check_geometry``).
"""

import keras
from keras import ops

from keras_convnext import architecture as arch
from keras_convnext.builder import convnext_graph
from keras_convnext.layers import (
    PACKAGE,
    ConvNeXtBlock,
    _to_channels_last,
    _to_data_format,
    channel_norm,
    conv_initializer,
)

TOTAL_STRIDE = arch.MIN_INPUT_SIZE  # stem 4 x three 2x downsamplings
STEM_STRIDE = 4
PATCH_SIZES = (4, 8, 16, 32)  # multiples of the stem's stride that divide the total stride


def check_geometry(image_size, patch_size, mask_ratio):
    """Raises a one-line ValueError unless the masked encoder can keep this masking exact:
    ``image_size`` a multiple of 32 (every stage's grid whole), ``patch_size`` one of 4, 8, 16,
    32 dividing it (the stem's 4x4 windows never straddle two patches, and the stride-32
    output upsamples to the patch grid by a whole factor), ``0 < mask_ratio < 1`` and at least
    one patch kept and one masked."""
    if not 0.0 < float(mask_ratio) < 1.0:
        raise ValueError(f"mask_ratio={mask_ratio} (must be in (0, 1))")
    if image_size % TOTAL_STRIDE:
        raise ValueError(
            f"image_size={image_size}: FCMAE needs a multiple of {TOTAL_STRIDE} (the encoder's "
            f"total stride), e.g. {max(TOTAL_STRIDE, image_size // TOTAL_STRIDE * TOTAL_STRIDE)}")
    if patch_size not in PATCH_SIZES or image_size % patch_size:
        works = [p for p in PATCH_SIZES if image_size % p == 0]
        raise ValueError(
            f"patch_size={patch_size} at image_size={image_size}: the masked encoder keeps "
            f"patches exact for {', '.join(map(str, works))} (multiples of the stem's stride "
            f"{STEM_STRIDE} dividing the total stride {TOTAL_STRIDE})")
    patches = (image_size // patch_size) ** 2
    keep = int(patches * (1.0 - float(mask_ratio)))
    if keep < 1 or keep >= patches:
        raise ValueError(
            f"mask_ratio={mask_ratio} keeps {keep} of {patches} patches at image_size="
            f"{image_size}, patch_size={patch_size}: at least one must be kept and one masked")


def random_mask(batch, grid, mask_ratio, seed=None):
    """(batch, grid, grid) float 0/1, 1 = masked: exactly ``int(L * (1 - ratio))`` of the
    ``L = grid**2`` patches kept per sample, chosen uniformly (the official ``gen_random_mask``)."""
    patches = grid * grid
    keep = int(patches * (1.0 - mask_ratio))
    noise = keras.random.uniform((batch, patches), seed=seed)
    rank = ops.argsort(ops.argsort(noise, axis=-1), axis=-1)
    return ops.reshape(ops.cast(rank >= keep, "float32"), (batch, grid, grid))


def visibility(mask, factor):
    """The (N, g, g) patch mask as an (N, H, W, 1) 0/1 visibility map at ``factor`` times the
    patch grid's resolution: patches repeated for ``factor >= 1``; for ``factor < 1`` a cell
    is visible when any patch under it is (max-pooling, as a sparse strided conv's sites)."""
    visible = 1.0 - mask
    if factor >= 1:
        factor = int(factor)
        visible = ops.repeat(ops.repeat(visible, factor, axis=1), factor, axis=2)
    else:
        k = int(round(1 / factor))
        n, g = ops.shape(visible)[0], visible.shape[1]
        visible = ops.max(ops.reshape(visible, (n, g // k, k, g // k, k)), axis=(2, 4))
    return visible[..., None]


def patchify(images, patch_size):
    """(N, H, W, C) -> (N, H/p, W/p, p*p*C), each patch's pixels in (row, column, channel)
    order (the official ``patchify``'s ``nhwpqc``)."""
    n, h, w, c = images.shape
    n = ops.shape(images)[0] if n is None else n
    p = patch_size
    x = ops.reshape(images, (n, h // p, p, w // p, p, c))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (n, h // p, w // p, p * p * c))


def unpatchify(patches, patch_size, channels):
    """The inverse of ``patchify``: (N, g, g, p*p*C) -> (N, g*p, g*p, C)."""
    n, gh, gw, _ = patches.shape
    n = ops.shape(patches)[0] if n is None else n
    p = patch_size
    x = ops.reshape(patches, (n, gh, gw, p, p, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (n, gh * p, gw * p, channels))


def normalize_patches(target):
    """Per-patch normalization of ``norm_pix_loss``: zero mean, unit (unbiased) variance."""
    mean = ops.mean(target, axis=-1, keepdims=True)
    var = ops.var(target, axis=-1, keepdims=True) * (target.shape[-1] / (target.shape[-1] - 1))
    return (target - mean) / ops.sqrt(var + 1e-6)


def reconstruction_loss(target, pred, mask, norm_pix_loss=True):
    """Mean over masked patches of each patch's mean squared error (float32). ``target`` and
    ``pred`` are (N, g, g, p*p*C) patches, ``mask`` (N, g, g) with 1 at masked patches."""
    target, pred = ops.cast(target, "float32"), ops.cast(pred, "float32")
    mask = ops.cast(mask, "float32")
    if norm_pix_loss:
        target = normalize_patches(target)
    per_patch = ops.mean(ops.square(pred - target), axis=-1)
    return ops.sum(per_patch * mask) / ops.maximum(ops.sum(mask), 1.0)


@keras.saving.register_keras_serializable(package=PACKAGE)
class FCMAE(keras.Model):
    """The masked autoencoder around a ConvNeXt V2 encoder, trained by ``model.fit`` on images
    alone (0-255, as the classifier takes them; labels are not used).

    ``call(images)`` draws a mask per sample and returns ``{"pred", "target", "mask"}``: the
    predicted and the true (normalized) pixels per patch, (N, g, g, p*p*C), and the (N, g, g)
    mask; ``compute_loss`` is ``reconstruction_loss`` of those. ``encoder`` is the V2 network
    whose weights ``encoder.save_weights`` writes for fine-tuning.
    """

    def __init__(self, depths, dims, *, image_size, channels=3, patch_size=TOTAL_STRIDE,
                 mask_ratio=0.6, decoder_dim=512, decoder_depth=1, norm_pix_loss=True,
                 drop_path_rate=0.0, seed=None, encoder_name="convnextv2", **kwargs):
        super().__init__(**kwargs)
        check_geometry(int(image_size), int(patch_size), mask_ratio)
        if int(decoder_dim) < 1 or int(decoder_depth) < 0:
            raise ValueError(f"decoder_dim={decoder_dim}, decoder_depth={decoder_depth} (need "
                             "decoder_dim >= 1 and decoder_depth >= 0)")
        self.depths, self.dims = tuple(int(d) for d in depths), tuple(int(d) for d in dims)
        self.image_size, self.channels = int(image_size), int(channels)
        self.patch_size, self.mask_ratio = int(patch_size), float(mask_ratio)
        self.decoder_dim, self.decoder_depth = int(decoder_dim), int(decoder_depth)
        self.norm_pix_loss = bool(norm_pix_loss)
        self.drop_path_rate, self.seed = float(drop_path_rate), seed
        self.encoder_name = encoder_name
        self.data_format = keras.config.image_data_format()
        self.grid = self.image_size // self.patch_size
        shape = (self.image_size, self.image_size, self.channels)
        if self.data_format == "channels_first":
            shape = (self.channels, self.image_size, self.image_size)
        self.encoder = convnext_graph(
            self.depths, self.dims, use_grn=True, layer_scale_init_value=None,
            include_top=False, input_shape=shape, drop_path_rate=self.drop_path_rate, seed=seed,
            model_name=encoder_name)
        self.mask_generator = keras.random.SeedGenerator(seed)
        dense = dict(kernel_initializer=conv_initializer())
        self.proj = keras.layers.Dense(self.decoder_dim, name="decoder_proj", **dense)
        self.decoder_blocks = [
            ConvNeXtBlock(self.decoder_dim, use_grn=True, layer_scale_init_value=None,
                          data_format="channels_last", name=f"decoder_block_{i}")
            for i in range(self.decoder_depth)]
        self.pred = keras.layers.Dense(self.patch_size ** 2 * self.channels,
                                       name="decoder_pred", **dense)
        self.proj.build((None, None, None, self.dims[-1]))
        for block in self.decoder_blocks:
            block.build((None, None, None, self.decoder_dim))
        self.pred.build((None, None, None, self.decoder_dim))
        self.mask_token = self.add_weight(
            name="mask_token", shape=(self.decoder_dim,),
            initializer=keras.initializers.RandomNormal(stddev=0.02))
        self.built = True

    # ------------------------------------------------------------------------- the pieces

    def preprocess(self, images):
        """The encoder's input normalization (its ``preprocessing`` layer), or the images."""
        names = {layer.name for layer in self.encoder.layers}
        if arch.PREPROCESSING in names:
            return self.encoder.get_layer(arch.PREPROCESSING)(images)
        return ops.cast(images, self.compute_dtype)

    def _visible(self, mask, stride):
        v = ops.cast(visibility(mask, self.patch_size / stride), self.compute_dtype)
        return _to_data_format(v, self.data_format)

    def encode(self, images, mask, training=False):
        """The masked dense encoding of ``images`` (0-255) under ``mask`` (N, g, g; 1 =
        masked): the encoder's stride-32 feature map, zero where no visible pixel reaches."""
        x = self.preprocess(images) * self._visible(mask, 1)
        stride = 1
        for layer in self.encoder.layers:
            where = arch.parse(layer.name)
            if where is None or where.part not in ("stem", "downsample", "block"):
                continue
            if where.part == "stem":
                stride *= layer.patch_size
                x = layer(x) * self._visible(mask, stride)
            elif where.part == "downsample":
                x = channel_norm(layer.norm, x, self.data_format) * self._visible(mask, stride)
                stride *= 2
                x = layer.conv(x) * self._visible(mask, stride)
            else:
                x = layer(x, training=training, visible=self._visible(mask, stride))
        return x

    def decode(self, features, mask, training=False):
        """(N, g, g, p*p*C) pixel predictions from the encoder's features and the mask."""
        x = _to_channels_last(features, self.data_format)
        factor = TOTAL_STRIDE // self.patch_size
        if factor > 1:
            x = ops.repeat(ops.repeat(x, factor, axis=1), factor, axis=2)
        x = self.proj(x)
        masked = ops.cast(mask[..., None], x.dtype)
        x = x * (1.0 - masked) + ops.cast(self.mask_token, x.dtype) * masked
        for block in self.decoder_blocks:
            x = block(x, training=training)
        return self.pred(x)

    def target(self, images):
        """The true pixels per patch: the normalized image, patchified (N, g, g, p*p*C)."""
        return patchify(_to_channels_last(self.preprocess(images), self.data_format),
                        self.patch_size)

    def sample_mask(self, batch):
        return random_mask(batch, self.grid, self.mask_ratio, seed=self.mask_generator)

    # ----------------------------------------------------------------------- Keras hooks

    def call(self, images, training=False, patch_mask=None):
        mask = patch_mask
        if mask is None:
            mask = self.sample_mask(ops.shape(images)[0])
        pred = self.decode(self.encode(images, mask, training), mask, training)
        return {"pred": pred, "target": self.target(images), "mask": mask}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y_pred is None:
            y_pred = self(x, training=training)
        loss = reconstruction_loss(y_pred["target"], y_pred["pred"], y_pred["mask"],
                                   self.norm_pix_loss)
        if self.losses:
            loss = loss + ops.sum(self.losses)
        return loss

    def reconstruct(self, images, mask=None):
        """(reconstructed images (N, H, W, C) in the normalized space, the (N, g, g) mask):
        visible patches as they are, masked ones predicted (with ``norm_pix_loss`` mapped
        back to each patch's own mean and variance, as the MAE papers visualize)."""
        out = self(images, training=False, patch_mask=mask)
        pred, target, mask = out["pred"], ops.cast(out["target"], "float32"), out["mask"]
        pred = ops.cast(pred, "float32")
        if self.norm_pix_loss:
            mean = ops.mean(target, axis=-1, keepdims=True)
            n = target.shape[-1]
            var = ops.var(target, axis=-1, keepdims=True) * (n / (n - 1))
            pred = pred * ops.sqrt(var + 1e-6) + mean
        m = mask[..., None]
        patches = target * (1.0 - m) + pred * m
        return unpatchify(patches, self.patch_size, self.channels), mask

    def get_config(self):
        return {
            **super().get_config(), "depths": self.depths, "dims": self.dims,
            "image_size": self.image_size, "channels": self.channels,
            "patch_size": self.patch_size, "mask_ratio": self.mask_ratio,
            "decoder_dim": self.decoder_dim, "decoder_depth": self.decoder_depth,
            "norm_pix_loss": self.norm_pix_loss, "drop_path_rate": self.drop_path_rate,
            "seed": self.seed, "encoder_name": self.encoder_name,
        }


def for_variant(variant, **options):
    """The ``FCMAE`` of a ConvNeXt V2 variant (``"v2_atto"``, ``"ConvNeXtV2Atto"``...);
    ``options`` as ``FCMAE``'s. A V1 or isotropic name is a one-line ValueError: FCMAE trains
    V2's GRN blocks (the V2 paper adds GRN because V1 blocks collapse features under FCMAE)."""
    entry = arch.get_variant(variant)
    if entry.family != arch.V2:
        v2 = ", ".join(arch.V2_VARIANTS)
        raise ValueError(
            f"FCMAE needs a ConvNeXt V2 encoder (GRN blocks); {variant!r} is a "
            f"{arch.FAMILY_NAMES[entry.family]}: choose one of {v2}")
    options.setdefault("encoder_name", entry.model_name)
    return FCMAE(entry.depths, entry.dims, **options)
