"""``python -m training.pretrain``: FCMAE self-supervised pre-training of a ConvNeXt V2 encoder.

    python -m training.pretrain --dataset digits --output runs/fcmae_digits
    python -m training.train --dataset digits --model v2_atto --image-size 64 \\
        --weights runs/fcmae_digits/encoder.weights.h5 --output runs/digits_ft
    python -m training.pretrain --dataset folder:/data/imagenet --model v2_base   # the paper's

Takes every dataset, strategy, flag and config file of ``training.train`` (labels are read and
ignored), plus FCMAE's keys (``PretrainConfig``), and runs through the same ``TrainingSession``
and ``RunFolder``: rerunning the same command resumes from the last checkpoint. Writes
``metrics.csv`` (epoch, loss, learning_rate), ``checkpoints/`` and ``encoder.weights.h5``, the V2
encoder's weights (``include_top=False``), for ``weights=`` or ``training.train --weights``.
See training/TRAINING.md ("FCMAE pre-training").
"""

from keras_convnext import cli as _cli

_cli.quiet_start(tensorflow=True)  # TensorFlow's start-up logs filtered (-v: shown)

import dataclasses  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import typing  # noqa: E402

import keras  # noqa: E402

from keras_convnext import fcmae  # noqa: E402
from keras_convnext.architecture import V2, V2_VARIANTS, get_variant  # noqa: E402
from training import cli, data, strategy  # noqa: E402
from training import config as config_lib  # noqa: E402
from training.checkpoint import atomic_save  # noqa: E402
from training.config import Config, ConfigError  # noqa: E402
from training.session import TrainingSession  # noqa: E402
from training.train import RunFolder, RunResult, summary  # noqa: E402

CSV_COLUMNS = ("epoch", "loss", "learning_rate")
ENCODER_FILE = "encoder.weights.h5"
BASE_LR, BASE_BATCH = 1.5e-4, 256  # official: lr = blr * global batch / 256
PAPER_EPOCHS, PAPER_WARMUP_EPOCHS = 1600, 40


@dataclasses.dataclass
class PretrainConfig(Config):
    """``training.train``'s keys with FCMAE's defaults (the official ``main_pretrain.py`` and
    TRAINING.md: AdamW betas (0.9, 0.95), base lr 1.5e-4 per 256 images, weight decay 0.05,
    1600 epochs with 40 of warm-up, random-resized-crop (0.2, 1) and flips, nothing else, no
    stochastic depth, no EMA), and FCMAE's own keys. The label-only keys (mixup, cutmix,
    label smoothing) do nothing here."""

    model: str = "v2_atto"
    crop_scale: typing.Tuple[float, float] = (0.2, 1.0)
    rand_augment_ops: int = 0
    random_erasing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    label_smoothing: float = 0.0
    drop_path: typing.Optional[float] = 0.0
    epochs: int = PAPER_EPOCHS
    batch_size: int = 64
    lr: typing.Optional[float] = None  # None: 1.5e-4 * batch_size / 256 (x replicas)
    min_lr: float = 0.0
    warmup_epochs: typing.Optional[float] = None  # None: 40 per 1600 epochs, at most 40
    beta_2: float = 0.95
    ema: bool = False
    output: str = "runs/fcmae"
    export: bool = True  # write encoder.weights.h5 at the end
    # --- FCMAE
    mask_ratio: float = 0.6  # fraction of patches masked, per image
    patch_size: int = fcmae.TOTAL_STRIDE  # 4, 8, 16 or 32 (the encoder's total stride)
    decoder_dim: int = 512
    decoder_depth: int = 1
    norm_pix_loss: bool = True  # per-patch normalized pixel targets


# The bundled 8x8 digits, upsampled to 64 px with 8 px patches (an 8x8 patch grid: 64 patches,
# 25 kept), a narrow decoder and a short run's lr; measured in training/TRAINING.md.
PRESETS = {
    "digits": {
        "image_size": 64,
        "patch_size": 8,
        "decoder_dim": 128,
        "crop_pct": 1.0,
        "crop_scale": (0.6, 1.0),
        "hflip": False,
        "epochs": 30,
        "batch_size": 32,
        "lr": 1.5e-3,
        "warmup_epochs": 3,
        "output": "runs/fcmae_digits",
    },
    # Fashion-MNIST: the classifier preset's size (32 px), flips, batch and lr, taken from it; a
    # mild crop (the classifier trains without one; masked pre-training wants some variety);
    # 8 px patches (a 4x4 grid: 16 patches, 6 kept), a narrow decoder; the experiment in
    # TRAINING.md.
    "fashion_mnist": {
        **{key: config_lib.PRESETS["fashion_mnist"][key] for key in (
            "image_size", "crop_pct", "hflip", "batch_size", "lr")},
        "crop_scale": (0.8, 1.0),
        "crop_ratio": (0.9, 1.1),
        "patch_size": 8,
        "decoder_dim": 128,
        "epochs": 4,
        "warmup_epochs": 0.5,
        "output": "runs/fcmae_fashion_mnist",
    },
}


def validate(c):
    """``training.train``'s checks, then FCMAE's: a V2 variant (custom depths/dims are built
    as V2), an exact masking geometry, a decoder, and no fine-tuning-only settings."""
    config_lib.validate(c)
    if c.depths is None and get_variant(c.model).family != V2:
        raise ConfigError(
            f"bad config value: model={c.model!r}: FCMAE needs a ConvNeXt V2 encoder (GRN "
            f"blocks); choose one of {', '.join(V2_VARIANTS)}")
    try:
        fcmae.check_geometry(c.image_size, c.patch_size, c.mask_ratio)
    except ValueError as e:
        raise ConfigError(f"bad config value: {e}") from None
    config_lib._check(c.decoder_dim >= 1, f"decoder_dim={c.decoder_dim} (must be >= 1)")
    config_lib._check(c.decoder_depth >= 0, f"decoder_depth={c.decoder_depth} (must be >= 0)")
    config_lib._check(c.layer_decay == 1.0,
                      f"layer_decay={c.layer_decay} (a fine-tuning setting; pretrain needs 1.0)")
    config_lib._check(c.mixup == 0.0 and c.cutmix == 0.0,
                      "mixup/cutmix mix labels, which FCMAE does not use (set them to 0)")
    config_lib._check(c.weights is None, "weights: pretrain starts from random initialization")


def parse_args(argv=None):
    parser = config_lib.build_parser(
        PretrainConfig, prog="python -m training.pretrain",
        description="FCMAE pre-training of a ConvNeXt V2 encoder (keras_convnext).",
        presets=PRESETS)
    return config_lib.parse_args(argv, parser=parser, cls=PretrainConfig, presets=PRESETS,
                                 check=validate)


def make_config(file_values=None, flag_values=None):
    """Defaults < dataset preset < file < flags, as a validated ``PretrainConfig``."""
    return config_lib.make_config(file_values, flag_values, cls=PretrainConfig, presets=PRESETS,
                                  check=validate)


def resolve(config):
    """``config`` with the FCMAE defaults of ``lr`` and ``warmup_epochs`` filled in."""
    lr = config.lr if config.lr is not None else BASE_LR * config.batch_size / BASE_BATCH
    warmup = config.warmup_epochs
    if warmup is None:
        warmup = min(float(PAPER_WARMUP_EPOCHS), PAPER_WARMUP_EPOCHS * config.epochs / PAPER_EPOCHS)
    return dataclasses.replace(config, lr=lr, warmup_epochs=warmup)


def model_builder(config):
    """A function building the configured ``FCMAE`` around the V2 variant ``config.model``,
    or a custom ConvNeXt V2 of ``depths``/``dims``."""
    options = dict(
        image_size=config.image_size, channels=config.channels, patch_size=config.patch_size,
        mask_ratio=config.mask_ratio, decoder_dim=config.decoder_dim,
        decoder_depth=config.decoder_depth, norm_pix_loss=config.norm_pix_loss,
        drop_path_rate=config.drop_path or 0.0, seed=config.seed, name="fcmae")

    def build():
        if config.depths is not None:
            return fcmae.FCMAE(config.depths, config.dims, **options)
        return fcmae.for_variant(config.model, **options)

    return build


def images_only(dataset):
    return dataset.map(lambda images, labels: images)


def _say(message):
    print(message, flush=True)


def run(config: PretrainConfig, log=_say) -> RunResult:
    """Pre-trains (or resumes) the run described by ``config``; returns what it produced."""
    start = time.time()
    config = resolve(config)
    runtime = strategy.select(config.strategy, config.cpu_devices, config.model_parallel)
    folder = RunFolder(config, runtime, CSV_COLUMNS)  # locks --output before anything is written
    try:
        return _pretrain(config, runtime, folder, log, start)
    finally:
        folder.close()


def _pretrain(config, runtime, folder, log, start):
    keras.utils.set_random_seed(config.seed)
    source = data.load(config)
    session = TrainingSession(config, runtime, source)
    model = session.compile(model_builder(config), metrics=(), loss=None)
    state, initial_epoch = folder.resume(model, session.schedule, log)
    train_ds = images_only(session.datasets(start_epoch=initial_epoch)[0])

    encoder = model.encoder
    grid = config.image_size // config.patch_size
    name = "convnextv2_custom" if config.depths else get_variant(config.model).model_name
    log(f"FCMAE {name} depths={list(model.depths)} dims={list(model.dims)} "
        f"({encoder.count_params():,} encoder, "
        f"{model.count_params() - encoder.count_params():,} decoder parameters), "
        f"{config.image_size} px, {config.patch_size} px patches ({grid}x{grid}), "
        f"mask ratio {config.mask_ratio}, decoder {config.decoder_depth}x{config.decoder_dim}, "
        f"norm_pix_loss={config.norm_pix_loss}")
    log(f"Data: {source.description} (labels not used)")
    log(session.describe())

    folder.fit(session, model, state, train_ds, None, initial_epoch)

    def write_encoder(out_dir):
        path = os.path.join(out_dir, ENCODER_FILE)
        atomic_save(lambda tmp: encoder.save_weights(tmp), path)
        return [path]

    files, _ = folder.finish(model, None, write_final=write_encoder)
    return RunResult(model, state["rows"], None, config.output, files, time.time() - start,
                     initial_epoch)


def main(argv=None):
    """The CLI; returns the exit status (0 done, 1 failed, 2 bad configuration or data)."""
    return cli.exit_status(lambda: run(parse_args(argv)), summary)


if __name__ == "__main__":
    sys.exit(main())
