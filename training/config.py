"""Every setting of a training run in one dataclass: defaults, validation, YAML/JSON files, flags.

Precedence, lowest first: the defaults below (the paper's ImageNet recipe), the preset of the
chosen dataset (``PRESETS``: small-run defaults for the bundled digits), a ``--config`` file,
then command-line flags. Every key of ``Config`` is also a flag (``image_size`` ->
``--image-size``; booleans take ``--ema`` / ``--no-ema``), and a config file uses the same keys.

A value that is wrong for its key raises ``ConfigError`` with one line naming the key and why.
"""

import argparse
import dataclasses
import json
import os
import typing

from keras_convnext.architecture import ALL_VARIANTS, ISOTROPIC, get_variant

MIXED_PRECISION = {"bf16": "mixed_bfloat16", "fp16": "mixed_float16", "fp32": "float32"}
STRATEGIES = ("auto", "default", "mirrored", "multiworker", "tpu")
DATASET_KINDS = ("digits", "fashion_mnist[:DIR]", "folder:PATH", "tfrecord:GLOB",
                 "tfds:NAME[:SPLIT]")


class ConfigError(ValueError):
    """A bad configuration value; the message is one line naming the key."""


@dataclasses.dataclass
class Config:
    # --- data
    dataset: str = "digits"  # digits | fashion_mnist[:DIR] | folder:PATH | tfrecord:GLOB | tfds:...
    val_dataset: typing.Optional[str] = None  # a separate held-out source (same syntax)
    data_dir: typing.Optional[str] = None  # tfds data_dir (datasets must be prepared there)
    val_split: float = 0.1  # held-out fraction when the source has no validation split
    train_fraction: float = 1.0  # train on a fixed random part of the training set (labels)
    num_classes: typing.Optional[int] = None  # tfrecord: skips the label scan when given
    tfrecord_image_key: str = "image/encoded"  # tfrecord feature holding the encoded image
    tfrecord_label_key: str = "image/class/label"  # tfrecord feature holding the int label
    check_images: bool = True  # folder: decode every image before training (names bad ones)
    skip_bad_images: bool = False  # folder: drop undecodable images (with a count) instead
    label_offset: int = 0  # subtracted from tfrecord labels (1-based ImageNet records: 1)
    # --- image transforms and augmentation (the official recipe's values)
    image_size: int = 224  # training and evaluation input size in pixels
    channels: int = 3  # 3: RGB (gray replicated); 1: one channel (gray data, or RGB's luma)
    crop_pct: float = 0.875  # eval: resize the short side to image_size / crop_pct, center crop
    crop_scale: typing.Tuple[float, float] = (0.08, 1.0)  # random-resized-crop area range
    crop_ratio: typing.Tuple[float, float] = (0.75, 4.0 / 3.0)  # random-resized-crop aspect ratios
    hflip: bool = True  # random horizontal flips
    translate: int = 0  # random shift of up to N pixels (zero-padded) after the crop; 0: none
    rand_augment_ops: int = 2  # RandAugment operations per image; 0 disables it
    rand_augment_factor: float = 0.5  # keras.layers.RandAugment's strength, in [0, 1]
    random_erasing: float = 0.25  # random-erasing probability per image
    mixup: float = 0.8  # Mixup alpha; 0 disables
    cutmix: float = 1.0  # CutMix alpha; 0 disables
    mixup_prob: float = 1.0  # probability that a batch is mixed at all
    mixup_switch_prob: float = 0.5  # probability of CutMix rather than Mixup when both are on
    label_smoothing: float = 0.1  # of the one-hot (or mixed) targets
    # --- model
    model: str = "tiny"  # a variant of any family (see below)
    depths: typing.Optional[typing.Tuple[int, ...]] = None  # custom ConvNeXt (with dims)
    dims: typing.Optional[typing.Tuple[int, ...]] = None  # custom ConvNeXt: 4 widths
    drop_path: typing.Optional[float] = None  # stochastic depth; None: the variant's paper value
    layer_scale_init: typing.Optional[float] = None  # None: the variant's (1e-6; V2: none)
    stem_patch_size: int = 4  # the patchify stem's stride; 2 for small images (V1/V2 only)
    remat: bool = False  # recompute each block in the backward pass: less memory, more time
    weights: typing.Optional[str] = None  # fine-tune from a .keras / .weights.h5 / run folder
    # --- optimization
    epochs: int = 300  # total epochs of the run (a rerun resumes)
    batch_size: int = 128  # per replica; the global batch is batch_size * replicas
    lr: typing.Optional[float] = None  # peak lr at batch_size; None: 4e-3 * batch_size / 4096
    min_lr: float = 1e-6  # the cosine schedule's final lr
    warmup_epochs: typing.Optional[float] = None  # None: 20 per 300 epochs; capped at epochs
    weight_decay: float = 0.05  # AdamW's decoupled weight decay
    beta_2: float = 0.999  # AdamW's second-moment decay (FCMAE pre-training: 0.95)
    layer_decay: float = 1.0  # layer-wise lr decay (fine-tuning; 1.0 = off)
    clip_grad_norm: typing.Optional[float] = None  # clip the global gradient norm to this
    ema: bool = True  # keep an EMA of the weights (evaluated and exported)
    ema_decay: typing.Optional[float] = None  # None: 0.9999 scaled to the run's length
    steps_per_epoch: typing.Optional[int] = None  # None: one pass over the training set
    validation_steps: typing.Optional[int] = None  # None: the whole held-out set
    # --- run
    output: str = "runs/convnext"  # the run folder (rerun the same command to resume)
    mixed_precision: typing.Optional[str] = None  # bf16 | fp16 | fp32 | auto (bf16 on bf16 CPUs)
    strategy: str = "auto"  # auto | default | mirrored | multiworker | tpu (training/strategy.py)
    model_parallel: typing.Optional[int] = None  # JAX: shard pointwise layers over N devices
    cpu_devices: typing.Optional[int] = None  # split the CPU into N logical devices (TF)
    seed: int = 0  # weights, data order and augmentation
    restart_schedule: bool = False  # resume although the lr/EMA schedule changed (e.g. epochs)
    export: bool = True  # write model.keras and saved_model/ at the end
    export_formats: typing.Optional[str] = None  # also these, into export/: "onnx,litert"
    jit_compile: typing.Optional[bool] = None  # None: Keras' "auto" (XLA off on CPU-only TF)
    verbose: typing.Optional[int] = None  # keras fit verbosity; None: bar on a TTY, else 2

    def to_dict(self):
        return dataclasses.asdict(self)


# Small-run defaults for the bundled dataset: the recipe's components, scaled to 1,438 images of
# 8x8 digits upsampled to 32 px. No flips (digits are not mirror-symmetric); a milder crop (0.7-1)
# with stochastic depth 0.1 (96.7 % final vs 96.1 % with a 0.5-1 crop and none); lighter Mixup.
# RandAugment and random erasing are off: on 8x8 scans Keras' RandAugment (solarize, equalize,
# posterize, shear...) cost ~5 points of held-out accuracy (92.5 % vs 96.9 % after 20 epochs)
# and most of the input pipeline's time. Each can be turned back on by flag.
PRESETS = {
    "digits": {
        "model": "atto",
        "image_size": 32,
        "crop_pct": 1.0,
        "crop_scale": (0.7, 1.0),
        "hflip": False,
        "rand_augment_ops": 0,
        "rand_augment_factor": 0.1,
        "random_erasing": 0.0,
        "mixup": 0.2,
        "cutmix": 0.0,
        "mixup_prob": 0.3,
        "label_smoothing": 0.1,
        "drop_path": 0.1,
        "epochs": 30,
        "batch_size": 32,
        "lr": 3e-3,
        "warmup_epochs": 2,
        "output": "runs/digits",
    },
    # Fashion-MNIST (54,000 28x28 gray garments after the held-out 10 %) in <= 30 min on 2 cores:
    # ConvNeXt-atto at 32 px (the 28 px images upsampled; wider variants cost 1.3-3x per image,
    # a finer stem 1.6-2.9x), batch 512, 56 epochs, bf16 where PyTorch has a bf16 CPU ("auto":
    # AMX / AVX-512 BF16; fp32 elsewhere): on a 2-core Intel Xeon with AMX an epoch takes ~29 s
    # and the run 29 min 46 s, 92.58 % on the test set (36 fp32 epochs: 92.17 % in 28 min 45 s).
    # With that many epochs the model needs regularizing: a random shift of up to 2 px
    # (translate) and random erasing 0.25 (without erasing the held-out accuracy trailed by
    # 0.6-0.7 points at epoch 15; erasing 0.5 by 0.9 at epoch 22). At 12 epochs (the old preset:
    # batch 128, flips only, 91.0 %) every regularizer cost as much learning as it saved; the
    # ImageNet crop slows learning at any budget here (the stride-4 stem sees a rescaled garment
    # as new content). Elsewhere fewer epochs fit: TensorFlow's step is 0.8x PyTorch's fp32 one
    # on that CPU, and on the AVX2-only AMD machine --epochs 12 --batch-size 128 --lr 2e-3
    # --translate 0 --random-erasing 0 gave 91.0 % in 23.5 min; on an AVX2 Zen 3 EPYC (fp32,
    # 52 s an epoch) --epochs 32 took 28 min 52 s: 91.81 %. A shallower stage 3 (depths 2-2-2-2, a
    # 1.3x faster epoch) led at 11 minutes and fell behind at 30 (42 epochs: 91.92 %). See
    # training/TRAINING.md.
    "fashion_mnist": {
        "model": "atto",
        "image_size": 32,
        "crop_pct": 1.0,
        "crop_scale": (1.0, 1.0),
        "crop_ratio": (1.0, 1.0),
        "hflip": True,
        "translate": 2,
        "rand_augment_ops": 0,
        "random_erasing": 0.25,
        "mixup": 0.0,
        "cutmix": 0.0,
        "label_smoothing": 0.1,
        "drop_path": 0.0,
        "epochs": 56,
        "batch_size": 512,
        "lr": 4e-3,
        "warmup_epochs": 2,
        "mixed_precision": "auto",
        "output": "runs/fashion_mnist",
    },
}

FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def fields_of(cls):
    """``{name: field}`` of a config dataclass (``Config`` or a program's subclass)."""
    return {f.name: f for f in dataclasses.fields(cls)}


def _base_type(annotation):
    """(type, is_optional) of a field annotation."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return _base_type(inner[0])[0], True
    return annotation, False


def _coerce(key, value, fields=FIELDS):
    """Converts ``value`` (from YAML/JSON or a flag) to the type of ``key``."""
    if key not in fields:
        raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(fields)}")
    kind, optional = _base_type(fields[key].type)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"bad config value: {key} must not be empty")
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if not isinstance(value, (bool, int)):
                raise ValueError(value)
            return bool(value)
        if typing.get_origin(kind) is tuple:
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                value = " ".join(value)  # flags: "--dims 24 48 96 192" or "--dims 24,48,96,192"
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split()]
            if not isinstance(value, (list, tuple)):
                raise ValueError(value)
            item = typing.get_args(kind)[0]
            return tuple(_scalar(item, v) for v in value)
        return _scalar(kind, value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"bad config value: {key}={value!r} is not a valid {_type_name(kind)}"
        ) from None


def _scalar(kind, value):
    if isinstance(value, bool) and kind in (int, float):
        raise ValueError(value)
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return int(value)
    if kind is float:
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    raise TypeError(kind)


def _type_name(kind):
    if typing.get_origin(kind) is tuple:
        return f"list of {typing.get_args(kind)[0].__name__}"
    return kind.__name__


def load_file(path):
    """The mapping in a YAML (.yaml/.yml) or JSON file."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if path.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error becomes one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot parse config file {path}: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def make_config(file_values=None, flag_values=None, cls=Config, presets=None, check=None):
    """Merges defaults < dataset preset < file < flags into a validated ``cls`` (``Config``;
    a program with its own keys passes its subclass, ``presets`` and ``check``)."""
    fields = fields_of(cls)
    presets = PRESETS if presets is None else presets
    file_values = {k: _coerce(k, v, fields) for k, v in (file_values or {}).items()}
    flag_values = {k: _coerce(k, v, fields) for k, v in (flag_values or {}).items()}
    dataset = flag_values.get("dataset", file_values.get("dataset", cls.dataset))
    preset = presets.get(dataset.partition(":")[0], {})
    merged = {**preset, **file_values, **flag_values}
    config = cls(**merged)
    (check or validate)(config)
    return config


def _check(condition, message):
    if not condition:
        raise ConfigError(f"bad config value: {message}")


def validate(c):
    """Raises ConfigError naming the first key whose value cannot work."""
    _check_dataset_spec("dataset", c.dataset)
    if c.val_dataset is not None:
        _check_dataset_spec("val_dataset", c.val_dataset)
    if c.export_formats:
        from keras_convnext.export import ExportError, parse_formats

        try:
            parse_formats(c.export_formats)
        except ExportError as e:
            raise ConfigError(f"bad config value: export_formats: {e}") from None
    _check(0.0 <= c.val_split < 1.0, f"val_split={c.val_split} (must be in [0, 1))")
    _check(0.0 < c.train_fraction <= 1.0,
           f"train_fraction={c.train_fraction} (must be in (0, 1])")
    _check(c.num_classes is None or c.num_classes >= 2,
           f"num_classes={c.num_classes} (must be >= 2)")
    _check(c.stem_patch_size >= 1, f"stem_patch_size={c.stem_patch_size} (must be >= 1)")
    _check(c.image_size >= 8 * c.stem_patch_size,
           f"image_size={c.image_size} (ConvNeXt with a {c.stem_patch_size}x{c.stem_patch_size} "
           f"stem needs >= {8 * c.stem_patch_size} pixels)")
    _check(c.channels in (1, 3), f"channels={c.channels} (1 or 3)")
    _check(c.channels == 3 or c.rand_augment_ops == 0,
           "channels=1 with RandAugment (its color operations need RGB: pass "
           "--rand-augment-ops 0 or --channels 3)")
    _check(0.0 < c.crop_pct <= 1.0, f"crop_pct={c.crop_pct} (must be in (0, 1])")
    _check(len(c.crop_scale) == 2 and 0.0 < c.crop_scale[0] <= c.crop_scale[1] <= 1.0,
           f"crop_scale={list(c.crop_scale)} (need 0 < min <= max <= 1)")
    _check(len(c.crop_ratio) == 2 and 0.0 < c.crop_ratio[0] <= c.crop_ratio[1],
           f"crop_ratio={list(c.crop_ratio)} (need 0 < min <= max)")
    _check(0 <= c.translate < c.image_size // 2,
           f"translate={c.translate} (pixels, must be in [0, image_size / 2))")
    _check(c.rand_augment_ops >= 0, f"rand_augment_ops={c.rand_augment_ops} (must be >= 0)")
    _check(0.0 <= c.rand_augment_factor <= 1.0,
           f"rand_augment_factor={c.rand_augment_factor} (must be in [0, 1])")
    for key in ("random_erasing", "mixup_prob", "mixup_switch_prob"):
        value = getattr(c, key)
        _check(0.0 <= value <= 1.0, f"{key}={value} (must be a probability in [0, 1])")
    for key in ("mixup", "cutmix"):
        value = getattr(c, key)
        _check(value >= 0.0, f"{key}={value} (alpha must be >= 0; 0 disables it)")
    _check(0.0 <= c.label_smoothing < 1.0,
           f"label_smoothing={c.label_smoothing} (must be in [0, 1))")
    if (c.depths is None) != (c.dims is None):
        raise ConfigError("bad config value: depths and dims must be given together")
    if c.depths is not None:
        _check(len(c.depths) == 4 and len(c.dims) == 4 and min(c.depths + c.dims) >= 1,
               f"depths={list(c.depths)} dims={list(c.dims)} (need 4 positive integers each)")
    else:
        try:
            get_variant(c.model)
        except ValueError:
            raise ConfigError(
                f"unknown model {c.model!r}; choose one of {', '.join(ALL_VARIANTS)}"
            ) from None
    _check(c.stem_patch_size == 4 or c.depths is not None
           or get_variant(c.model).family != ISOTROPIC,
           f"stem_patch_size={c.stem_patch_size} (the isotropic models' stem is fixed)")
    _check(c.drop_path is None or 0.0 <= c.drop_path < 1.0,
           f"drop_path={c.drop_path} (must be in [0, 1))")
    _check(c.layer_scale_init is None or c.layer_scale_init >= 0.0,
           f"layer_scale_init={c.layer_scale_init} (must be >= 0)")
    if c.weights is not None and not os.path.exists(c.weights):
        raise ConfigError(f"weights not found: {c.weights}")
    _check(c.epochs >= 1, f"epochs={c.epochs} (must be >= 1)")
    _check(c.batch_size >= 1, f"batch_size={c.batch_size} (must be >= 1)")
    _check(c.lr is None or c.lr > 0.0, f"lr={c.lr} (must be > 0)")
    _check(c.min_lr >= 0.0, f"min_lr={c.min_lr} (must be >= 0)")
    _check(c.lr is None or c.min_lr <= c.lr, f"min_lr={c.min_lr} (must not exceed lr={c.lr})")
    _check(c.warmup_epochs is None or c.warmup_epochs >= 0.0,
           f"warmup_epochs={c.warmup_epochs} (must be >= 0)")
    _check(c.weight_decay >= 0.0, f"weight_decay={c.weight_decay} (must be >= 0)")
    _check(0.0 <= c.beta_2 < 1.0, f"beta_2={c.beta_2} (must be in [0, 1))")
    _check(0.0 < c.layer_decay <= 1.0, f"layer_decay={c.layer_decay} (must be in (0, 1])")
    _check(c.clip_grad_norm is None or c.clip_grad_norm > 0.0,
           f"clip_grad_norm={c.clip_grad_norm} (must be > 0)")
    _check(c.ema_decay is None or 0.0 <= c.ema_decay < 1.0,
           f"ema_decay={c.ema_decay} (must be in [0, 1))")
    _check(c.steps_per_epoch is None or c.steps_per_epoch >= 1,
           f"steps_per_epoch={c.steps_per_epoch} (must be >= 1)")
    _check(c.validation_steps is None or c.validation_steps >= 1,
           f"validation_steps={c.validation_steps} (must be >= 1)")
    _check(bool(c.output), "output must be a folder path")
    _check(c.mixed_precision is None or c.mixed_precision in (*MIXED_PRECISION, "auto"),
           f"mixed_precision={c.mixed_precision!r} (choose bf16, fp16, fp32 or auto)")
    _check(c.strategy in STRATEGIES,
           f"strategy={c.strategy!r} (choose one of {', '.join(STRATEGIES)})")
    _check(c.model_parallel is None or c.model_parallel >= 1,
           f"model_parallel={c.model_parallel} (must be >= 1)")
    _check(c.cpu_devices is None or c.cpu_devices >= 1,
           f"cpu_devices={c.cpu_devices} (must be >= 1)")
    _check(c.verbose is None or c.verbose in (0, 1, 2), f"verbose={c.verbose} (0, 1 or 2)")


def _check_dataset_spec(key, spec):
    kind, _, rest = spec.partition(":")
    if kind == "digits" and not rest or kind == "fashion_mnist":
        return
    if kind in ("folder", "tfrecord", "tfds") and rest:
        return
    raise ConfigError(
        f"bad config value: {key}={spec!r} (expected one of {', '.join(DATASET_KINDS)})"
    )


def _flag_type(field):
    kind, _ = _base_type(field.type)
    if typing.get_origin(kind) is tuple:
        return {"nargs": "+", "type": str}
    return {"type": str}


def field_help(cls=Config):
    """{key: description}: the comment beside each field of ``cls`` and its bases (one table:
    the dataclass is the documentation of every flag)."""
    import inspect
    import re

    fields, found = fields_of(cls), {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        for line in inspect.getsource(klass).splitlines():
            m = re.match(r"\s+(\w+): [^#]*#\s*(.+)$", line)
            if m and m.group(1) in fields:
                found[m.group(1)] = m.group(2).strip()
    return found


def _default_text(field, preset):
    """The default of ``field`` as the help shows it: the default dataset's preset value when it
    sets one (with the recipe's value beside it), else the recipe's."""
    name, recipe, preset_name = field.name, field.default, preset.get("__name__")
    if name in preset and preset[name] != recipe:
        return f"default: {preset[name]!r} ({preset_name} preset; the recipe: {recipe!r})"
    return f"default: {recipe!r}"


def build_parser(cls=Config, prog="python -m training.train",
                 description="Train or fine-tune a ConvNeXt with the paper's recipe "
                             "(keras_convnext).", presets=None):
    """The flags of every key of ``cls`` (plus ``--config`` and ``-v``), each with its
    description and the default it gets with the default dataset's preset."""
    from keras_convnext import cli

    presets = PRESETS if presets is None else presets
    preset = {**presets.get(cls.dataset, {}), "__name__": cls.dataset}
    parser = cli.ArgumentParser(
        prog=prog,
        description=f"{description} Defaults shown are those of --dataset {cls.dataset} (its "
                    "preset); other datasets start from the recipe's (shown beside).",
        usage="%(prog)s [--config FILE] [-v] [--KEY VALUE ...]",
        formatter_class=argparse.HelpFormatter,
    )
    parser.add_argument("--config", help="a YAML or JSON file with Config keys; flags override it")
    parser.add_argument("-v", dest="show_logs", action="store_true",
                        help="show TensorFlow's and the backends' log lines and tracebacks")
    descriptions = field_help(cls)
    for name, field in fields_of(cls).items():
        flag = "--" + name.replace("_", "-")
        kind, _ = _base_type(field.type)
        help_text = f"{descriptions.get(name, name.replace('_', ' '))} " \
                    f"({_default_text(field, preset)})"
        if name == "model":
            help_text = f"{help_text}; one of {', '.join(ALL_VARIANTS)}"
        help_text = help_text.replace("%", "%%")
        if kind is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, help=help_text, **_flag_type(field))
    return parser


def parse_args(argv=None, parser=None, **make):
    """Parses command-line arguments into a validated Config (``parser`` and ``make``'s
    ``cls``/``presets``/``check``: another program's, as ``training.pretrain``'s)."""
    args = vars((parser or build_parser()).parse_args(argv))
    args.pop("show_logs", None)  # read by keras_convnext.cli before TensorFlow starts
    config_file = args.pop("config")
    flags = {k: v for k, v in args.items() if v is not None}
    file_values = load_file(config_file) if config_file else {}
    return make_config(file_values, flags, **make)
