"""The published checkpoints behind ``weights="imagenet"`` and ``weights="imagenet22k"``.

Where each address was found:
- T/S/B/L ImageNet-1k and T/S/B/L/XL ImageNet-22k: ``model_urls`` in facebookresearch/ConvNeXt
  ``models/convnext.py`` (the same addresses are timm's ``convnext_*.fb_in1k`` / ``fb_in22k``
  pretrained cfgs);
- XL ImageNet-1k (22k pre-trained, fine-tuned on 1k; there is no 1k-only XL): the official
  README and timm's ``convnext_xlarge.fb_in22k_ft_in1k`` cfg;
- atto, femto, pico, nano (timm's own variants, trained by timm): timm's
  ``convnext_{atto.d2,femto.d1,pico.d1,nano.d1h}_in1k`` cfgs;
- isotropic S/B/L: the ImageNet-1k table of the facebookresearch/ConvNeXt README (and
  ``convnext_isotropic.py``);
- ConvNeXt V2: the facebookresearch/ConvNeXt-V2 README, FCMAE pre-trained then fine-tuned
  checkpoints: ``imagenet`` is ImageNet-1k fine-tuning (``im1k/..._1k_224_ema.pt``, every size),
  ``imagenet22k`` the ImageNet-22k intermediate fine-tuning, then ImageNet-1k
  (``im22k/..._22k_224_ema.pt``; a 1000-class head; Huge only at 384 px). The FCMAE-only
  ``pt_only`` files hold sparse-convolution encoders and are not presets.

Hashes: the official repositories publish no hash for their files (``sha256=None``). timm's
release files carry the first 8 hex digits of their sha256 in their names (the torch.hub
convention), which is checked after download (``sha256_prefix``).

A download is converted once to a keras_convnext ``.weights.h5`` beside it in the cache
(``$KERAS_CONVNEXT_CACHE``, default ``$KERAS_HOME/models/keras_convnext``, ``~/.keras`` when
KERAS_HOME is unset); later loads read the converted file and need neither network nor torch.
"""

import dataclasses
import os

import keras

from keras_convnext import architecture as families
from keras_convnext.weights import assign, formats, native
from keras_convnext.weights.files import CheckpointError, file_sha256

IMAGENET_1K_CLASSES = 1000

_FB = "https://dl.fbaipublicfiles.com/convnext/"
_FB_V2 = _FB + "convnextv2/"
_TIMM = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-rsb-weights/"


@dataclasses.dataclass(frozen=True)
class Preset:
    variant: str
    tag: str
    url: str
    classes: int
    sha256: object = None  # the full sha256, where published
    sha256_prefix: object = None  # the leading hex digits published in the file name

    @property
    def filename(self):
        return self.url.rsplit("/", 1)[-1]


def _fb(variant, tag, name, classes):
    return Preset(variant, tag, _FB + name, classes)


def _v2(size, tag, resolution=224):
    folder, data = ("im1k", "1k") if tag == "imagenet" else ("im22k", "22k")
    return Preset(f"v2_{size}", tag,
                  f"{_FB_V2}{folder}/convnextv2_{size}_{data}_{resolution}_ema.pt",
                  IMAGENET_1K_CLASSES)


def _timm(variant, name, prefix):
    return Preset(variant, "imagenet", _TIMM + name, IMAGENET_1K_CLASSES, sha256_prefix=prefix)


PRESETS = {
    (p.variant, p.tag): p
    for p in (
        _timm("atto", "convnext_atto_d2-01bb0f51.pth", "01bb0f51"),
        _timm("femto", "convnext_femto_d1-d71d5b4c.pth", "d71d5b4c"),
        _timm("pico", "convnext_pico_d1-10ad7f0d.pth", "10ad7f0d"),
        _timm("nano", "convnext_nano_d1h-7eb4bdea.pth", "7eb4bdea"),
        _fb("tiny", "imagenet", "convnext_tiny_1k_224_ema.pth", 1000),
        _fb("small", "imagenet", "convnext_small_1k_224_ema.pth", 1000),
        _fb("base", "imagenet", "convnext_base_1k_224_ema.pth", 1000),
        _fb("large", "imagenet", "convnext_large_1k_224_ema.pth", 1000),
        _fb("xlarge", "imagenet", "convnext_xlarge_22k_1k_224_ema.pth", 1000),
        _fb("tiny", "imagenet22k", "convnext_tiny_22k_224.pth", assign.IMAGENET_22K_CLASSES),
        _fb("small", "imagenet22k", "convnext_small_22k_224.pth", assign.IMAGENET_22K_CLASSES),
        _fb("base", "imagenet22k", "convnext_base_22k_224.pth", assign.IMAGENET_22K_CLASSES),
        _fb("large", "imagenet22k", "convnext_large_22k_224.pth", assign.IMAGENET_22K_CLASSES),
        _fb("xlarge", "imagenet22k", "convnext_xlarge_22k_224.pth", assign.IMAGENET_22K_CLASSES),
        _fb("isotropic_small", "imagenet", "convnext_iso_small_1k_224_ema.pth", 1000),
        _fb("isotropic_base", "imagenet", "convnext_iso_base_1k_224_ema.pth", 1000),
        _fb("isotropic_large", "imagenet", "convnext_iso_large_1k_224_ema.pth", 1000),
        *(_v2(size, "imagenet")
          for size in ("atto", "femto", "pico", "nano", "tiny", "base", "large", "huge")),
        *(_v2(size, "imagenet22k") for size in ("nano", "tiny", "base", "large")),
        _v2("huge", "imagenet22k", resolution=384),
    )
}
TAGS = tuple(sorted({tag for _, tag in PRESETS}))


def cache_dir():
    if os.environ.get("KERAS_CONVNEXT_CACHE"):
        return os.path.abspath(os.path.expanduser(os.environ["KERAS_CONVNEXT_CACHE"]))
    home = os.environ.get("KERAS_HOME") or os.path.join("~", ".keras")
    return os.path.abspath(os.path.join(os.path.expanduser(home), "models", "keras_convnext"))


def find(model, tag):
    """The preset for ``model``'s variant (told from its variable shapes) and ``tag``."""
    arch = assign.architecture({v.path: tuple(v.shape) for v in model.weights})
    preset = PRESETS.get((arch.variant, tag))
    if preset is None:
        available = sorted(v for v, t in PRESETS if t == tag)
        raise ValueError(
            f"weights={tag!r}: no published checkpoint for {arch.describe()}; {tag!r} exists "
            f"for {', '.join(families.get_variant(v).model_name for v in available)}"
        )
    return preset


def fetch(preset):
    """The path of ``preset`` converted to a keras_convnext ``.weights.h5``, downloading and
    converting it on first use."""
    directory = cache_dir()
    stem = preset.filename.rsplit(".", 1)[0]
    converted_path = os.path.join(directory, f"{stem}.keras_convnext.weights.h5")
    if os.path.isfile(converted_path):
        return converted_path
    try:
        raw = keras.utils.get_file(
            fname=preset.filename,
            origin=preset.url,
            file_hash=preset.sha256,
            cache_subdir=directory,
        )
    except Exception as e:
        raise OSError(
            f"could not download the {preset.tag!r} weights of "
            f"{families.get_variant(preset.variant).model_name} from "
            f"{preset.url} ({type(e).__name__}: {e}). If this machine is offline, download that "
            f"file elsewhere and put it at {os.path.join(directory, preset.filename)} (it is "
            f"converted on first use), or pass its path as weights=..."
        ) from e
    if preset.sha256_prefix:
        digest = file_sha256(raw)
        if not digest.startswith(preset.sha256_prefix):
            raise CheckpointError(
                f"{raw}: sha256 {digest} does not start with {preset.sha256_prefix}, the hash "
                f"published in the name of {preset.url}; delete the file and download it again"
            )
    converted = formats.read(raw)
    classes = assign.architecture({p: a.shape for p, a in converted.arrays.items()}).classes
    if classes != preset.classes:
        raise CheckpointError(
            f"{raw}: expected a classifier for {preset.classes} classes, found {classes}"
        )
    tmp = converted_path[: -len(".weights.h5")] + ".partial.weights.h5"
    native.write(converted, tmp)
    os.replace(tmp, converted_path)
    return converted_path


