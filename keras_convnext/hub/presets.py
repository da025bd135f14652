"""``from_preset`` on timm and Hugging Face ConvNeXt / ConvNeXtV2 folders, through our converters.

keras-hub tells a preset's format from its ``config.json`` (``registered_name``: a Keras preset;
``model_type``: transformers; ``architecture``: timm) and has no ConvNeXt converter for the
last two. ``install()`` (run by ``import keras_convnext.hub``) gives its timm and transformers
loaders one: a ConvNeXt config becomes ``ConvNeXtBackbone`` arguments (``timm_backbone_kwargs``,
``hf_backbone_kwargs``), and the weights file (``model.safetensors``, fetched by keras-hub's own
``get_file``, so ``hf://`` works) is loaded by ``keras_convnext.load_weights``, strictly. Every
other architecture goes to keras-hub's converters as before.
"""

import json
import warnings

from keras_hub.models import ImageClassifier
from keras_hub.src.utils import preset_utils
from keras_hub.src.utils.preset_utils import PresetLoader, check_file_exists, get_file
from keras_hub.src.utils.timm import preset_loader as timm_loader
from keras_hub.src.utils.transformers import preset_loader as transformers_loader

from keras_convnext import architecture as arch
from keras_convnext import weights as weights_lib
from keras_convnext.hub.backbone import ConvNeXtBackbone
from keras_convnext.layers import IMAGENET_MEAN, IMAGENET_STD

WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
HF_PREPROCESSOR_FILE = "preprocessor_config.json"
_PIL_FILTERS = {0: "nearest", 2: "bilinear", 3: "bicubic"}
_HIERARCHICAL = ", ".join(n for n, v in arch.ALL_VARIANTS.items() if v.family != arch.ISOTROPIC)


def _variant(name, source):
    try:
        variant = arch.get_variant(name)
    except ValueError:
        variant = None
    if variant is None or variant.family == arch.ISOTROPIC:
        raise ValueError(
            f"the {source} architecture {name!r} is not a ConvNeXt keras_convnext builds as a "
            f"backbone (it builds {_HIERARCHICAL})"
        )
    return variant


# ------------------------------------------------------------------------------------- timm

# timm ConvNeXt arguments that keep our architecture; any other model_args entry is refused.
_TIMM_NEUTRAL = {"num_classes", "in_chans", "drop_path_rate", "drop_rate", "conv_mlp",
                 "global_pool", "pretrained_cfg", "pretrained_cfg_overlay"}


def timm_backbone_kwargs(config):
    """``ConvNeXtBackbone`` arguments for a timm ``config.json`` (``architecture`` names the
    variant; ``model_args``, as timm's ``save_for_hf`` writes them, override depths and dims)."""
    variant = _variant(config["architecture"], "timm")
    args = dict(config.get("model_args") or {})
    unknown = sorted(set(args) - _TIMM_NEUTRAL - {"depths", "dims", "use_grn", "ls_init_value",
                                                  "kernel_sizes"})
    if unknown:
        raise ValueError(
            f"timm {config['architecture']} with model_args {unknown} is not the ConvNeXt "
            "keras_convnext builds"
        )
    use_grn = bool(args.get("use_grn", variant.family == arch.V2))
    kernel = args.get("kernel_sizes", 7)
    if isinstance(kernel, (list, tuple)):
        if len(set(kernel)) != 1:
            raise ValueError(f"timm kernel_sizes {kernel}: keras_convnext uses one kernel size")
        kernel = kernel[0]
    return {
        "depths": tuple(args.get("depths", variant.depths)),
        "hidden_dims": tuple(args.get("dims", variant.dims)),
        "use_grn": use_grn,
        "layer_scale_init_value": args.get("ls_init_value", None if use_grn else 1e-6),
        "kernel_size": int(kernel),
        "image_shape": (None, None, int(args.get("in_chans", 3))),
    }


def timm_classes(config):
    return config.get("num_classes") or None


def timm_converter_kwargs(preset, config):
    """``ConvNeXtImageConverter`` arguments from timm's ``pretrained_cfg`` (size, crop_pct,
    mean/std, interpolation), or None without one."""
    cfg = config.get("pretrained_cfg") or {}
    if "input_size" not in cfg:
        return None
    mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
    interpolation = cfg.get("interpolation", "bicubic")
    return {
        "image_size": tuple(cfg["input_size"][1:]),
        "crop_pct": cfg.get("crop_pct"),
        "scale": [1.0 / 255.0 / s for s in std],
        "offset": [-m / s for m, s in zip(mean, std)],
        "interpolation": interpolation if interpolation in ("bilinear", "nearest", "bicubic")
        else "bilinear",
    }


# ------------------------------------------------------------------------- Hugging Face

HF_MODEL_TYPES = {"convnext": arch.V1, "convnextv2": arch.V2}


def hf_backbone_kwargs(config):
    """``ConvNeXtBackbone`` arguments for a transformers ``ConvNextConfig`` /
    ``ConvNextV2Config``."""
    family = HF_MODEL_TYPES[config["model_type"]]
    checks = {"num_stages": 4, "patch_size": 4, "hidden_act": "gelu"}
    for key, expected in checks.items():
        if config.get(key, expected) != expected:
            raise ValueError(
                f"Hugging Face {config['model_type']} with {key}={config[key]!r}: keras_convnext "
                f"builds {key}={expected!r}"
            )
    if "depths" not in config or "hidden_sizes" not in config:
        raise ValueError(f"Hugging Face {config['model_type']} config.json without depths or "
                         "hidden_sizes")
    use_grn = family == arch.V2
    layer_scale = None if use_grn else config.get("layer_scale_init_value", 1e-6)
    return {
        "depths": tuple(config["depths"]),
        "hidden_dims": tuple(config["hidden_sizes"]),
        "use_grn": use_grn,
        "layer_scale_init_value": layer_scale if layer_scale else None,
        "image_shape": (None, None, int(config.get("num_channels", 3))),
    }


def hf_classes(config):
    """The classifier's size of a ``...ForImageClassification`` checkpoint, else None."""
    if not any(str(a).endswith("ForImageClassification") for a in config.get("architectures")
               or ()):
        return None
    return len(config["id2label"]) if config.get("id2label") else config.get("num_labels")


def hf_converter_kwargs(preset, config):
    """``ConvNeXtImageConverter`` arguments from ``preprocessor_config.json`` (transformers'
    ``ConvNextImageProcessor``: below 384 px the short side is resized to size / crop_pct and
    center-cropped, from 384 px the image is resized without a crop); ImageNet normalization
    at the input size without one."""
    if not check_file_exists(preset, HF_PREPROCESSOR_FILE):
        return {}
    with open(get_file(preset, HF_PREPROCESSOR_FILE), encoding="utf-8") as f:
        cfg = json.load(f)
    size = cfg.get("size", {})
    edge = size.get("shortest_edge", size.get("height")) if isinstance(size, dict) else size
    mean, std = cfg.get("image_mean", IMAGENET_MEAN), cfg.get("image_std", IMAGENET_STD)
    factor = cfg.get("rescale_factor", 1 / 255) if cfg.get("do_rescale", True) else 1.0
    normalize = cfg.get("do_normalize", True)
    kwargs = {
        "scale": [factor / s for s in std] if normalize else [factor] * len(std),
        "offset": [-m / s for m, s in zip(mean, std)] if normalize else [0.0] * len(std),
        "interpolation": _PIL_FILTERS.get(cfg.get("resample", 3), "bicubic"),
    }
    if edge:
        kwargs["image_size"] = (int(edge), int(edge))
        if int(edge) < 384:
            kwargs["crop_pct"] = cfg.get("crop_pct", 224 / 256)
        else:
            kwargs["crop_to_aspect_ratio"] = False
    return kwargs


# ------------------------------------------------------------------------------ the loaders


class _Source:
    def __init__(self, name, claims, backbone_kwargs, classes, converter_kwargs):
        self.name, self.claims = name, claims
        self.backbone_kwargs, self.classes = backbone_kwargs, classes
        self.converter_kwargs = converter_kwargs


TIMM = _Source("timm", lambda c: str(c.get("architecture", "")).startswith("convnext"),
               timm_backbone_kwargs, timm_classes, timm_converter_kwargs)
HF = _Source("Hugging Face", lambda c: c.get("model_type") in HF_MODEL_TYPES,
             hf_backbone_kwargs, hf_classes, hf_converter_kwargs)


class _ConvNeXtLoading:
    """Mixed into keras-hub's timm / transformers loader: ConvNeXt configs are handled here,
    every other one by keras-hub's loader."""

    source = None

    def __init__(self, preset, config):
        if not self.source.claims(config):
            self.convnext = None
            super().__init__(preset, config)
            return
        PresetLoader.__init__(self, preset, config)
        self.converter = None  # keras-hub's own methods then skip their converter hooks
        self.convnext = self.source.backbone_kwargs(config)

    def check_backbone_class(self):
        return ConvNeXtBackbone if self.convnext is not None else super().check_backbone_class()

    def weights_file(self):
        for name in WEIGHTS_FILES:
            if check_file_exists(self.preset, name):
                return get_file(self.preset, name)
        raise FileNotFoundError(
            f"the preset {self.preset} has a {self.source.name} ConvNeXt config.json but no "
            f"{' or '.join(WEIGHTS_FILES)}"
        )

    def load_backbone(self, cls, load_weights, **kwargs):
        if self.convnext is None:
            return super().load_backbone(cls, load_weights, **kwargs)
        backbone = cls(**{**self.convnext, **{k: v for k, v in kwargs.items() if v is not None}})
        if load_weights:
            weights_lib.load_weights(backbone, self.weights_file())
        return backbone

    def load_task(self, cls, load_weights, load_task_weights, **kwargs):
        if self.convnext is None:
            return super().load_task(cls, load_weights, load_task_weights, **kwargs)
        classes = self.source.classes(self.config)
        if not (issubclass(cls, ImageClassifier) and classes):
            return PresetLoader.load_task(self, cls, load_weights, load_task_weights, **kwargs)
        kwargs.setdefault("num_classes", classes)
        whole = load_weights and load_task_weights and kwargs["num_classes"] == classes
        task = PresetLoader.load_task(self, cls, load_weights and not whole, load_task_weights,
                                      **kwargs)
        if whole:
            weights_lib.load_weights(task, self.weights_file())
        elif load_weights and load_task_weights:
            warnings.warn(
                f"{self.preset}: the checkpoint's classifier has {classes} classes, the task "
                f"{kwargs['num_classes']}; loaded the backbone only", stacklevel=2)
        return task

    def load_image_converter(self, cls, **kwargs):
        if self.convnext is None:
            return super().load_image_converter(cls, **kwargs)
        found = self.source.converter_kwargs(self.preset, self.config)
        return None if found is None else cls(**{**found, **kwargs})


def _with_convnext(loader_cls, source):
    if getattr(loader_cls, "source", None) is not None:  # already installed
        return loader_cls
    return type(loader_cls.__name__, (_ConvNeXtLoading, loader_cls),
                {"source": source, "__module__": __name__, "__doc__": loader_cls.__doc__})


def install():
    """Makes keras-hub's ``from_preset`` read timm and Hugging Face ConvNeXt folders
    (idempotent). ``preset_utils.get_preset_loader`` imports the loader classes from their
    modules on every call, so replacing the module attributes is enough."""
    timm_loader.TimmPresetLoader = _with_convnext(timm_loader.TimmPresetLoader, TIMM)
    transformers_loader.TransformersPresetLoader = _with_convnext(
        transformers_loader.TransformersPresetLoader, HF)
    return preset_utils.get_preset_loader
