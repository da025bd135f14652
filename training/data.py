"""Datasets as tf.data pipelines, for every Keras backend: sources and image transforms.

Sources (``Config.dataset``, and ``Config.val_dataset`` for a separate held-out set):

``digits``             scikit-learn's digits (1,797 real 8x8 scans, 10 classes), shipped in this
                       package as ``training/data/digits.npz``; a fixed, stratified 20 % held-out
                       split (359 images).
``folder:PATH``        ImageNet-style class subfolders of JPEG/PNG files. ``PATH/train`` and
                       ``PATH/val`` (or ``validation``) are used when both exist; otherwise
                       ``val_split`` of each class is held out (deterministically).
``tfrecord:GLOB``      tf.train.Example records with an encoded image and an integer label
                       (keys ``tfrecord_image_key`` / ``tfrecord_label_key``).
``tfds:NAME[:SPLIT]``  a TFDS dataset already prepared in ``data_dir`` (nothing is downloaded);
                       held out: the ``validation`` or ``test`` split, else ``val_split``.
``fashion_mnist[:DIR]`` Fashion-MNIST's four IDX files (default DIR: where Debian's
                       ``dataset-fashion-mnist`` installs them, ``FASHION_MNIST_DIR``): 60,000 28x28
                       gray training images, of which a fixed, stratified ``val_split`` is held
                       out, and the official 10,000 test images as the ``test`` set.

Each source yields ``(uint8 RGB image of any size, int32 label)``. The training pipeline applies
random-resized-crop and flip (per image), RandAugment, random erasing and Mixup/CutMix
(``training.augment``); evaluation resizes the short side to ``image_size / crop_pct`` and takes
the center crop, as the official code does. Images stay in 0-255: the model normalizes them.
Labels become one-hot (soft after mixing).
"""

import dataclasses
import os
import typing

import numpy as np
import tensorflow as tf

from training import idx

DIGITS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "digits.npz")
DIGITS_VAL_FRACTION = 0.2
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SHUFFLE_BUFFER = 10_000
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_MNIST_FILES = {  # (images, labels) stems of each official split
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DataError(ValueError):
    """A dataset that cannot be used; the message is one line naming the problem."""


@dataclasses.dataclass
class Source:
    """The raw examples of a run, before transforms."""

    train: tf.data.Dataset
    val: tf.data.Dataset
    num_classes: int
    num_train: typing.Optional[int]
    num_val: typing.Optional[int]
    description: str
    files: typing.Sequence[str] = ()  # image files, to name a corrupt one if decoding fails
    gray: bool = False  # the images are gray (replicated to RGB)
    test: typing.Optional[tf.data.Dataset] = None  # an official test split, evaluated at the end
    num_test: typing.Optional[int] = None
    class_names: typing.Optional[typing.Sequence[str]] = None


# ------------------------------------------------------------------------------------ sources


def load_digits_arrays():
    """(images uint8 (1797, 8, 8) in 0-16, labels uint8) from the package file."""
    with np.load(DIGITS_FILE) as data:
        return data["images"], data["labels"]


def stratified_split(labels, val_fraction):
    """Stratified, fixed (seed 0) train / held-out index arrays."""
    rng = np.random.default_rng(0)
    train, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = int(round(len(members) * val_fraction))
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return np.sort(np.array(train, np.int64)), np.sort(np.array(val, np.int64))


def digits_split(labels, val_fraction=DIGITS_VAL_FRACTION):
    """The digits' fixed held-out split."""
    return stratified_split(labels, val_fraction)


def _digits_source():
    images, labels = load_digits_arrays()
    # 0-16 intensities -> 0-255 RGB; upsampling happens in the transforms (to image_size).
    gray = (images.astype(np.float32) * (255.0 / 16.0)).round().astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    train_idx, val_idx = digits_split(labels)

    def make(idx):
        return tf.data.Dataset.from_tensor_slices((rgb[idx], labels[idx].astype(np.int32)))

    return Source(make(train_idx), make(val_idx), 10, len(train_idx), len(val_idx),
                  f"digits ({len(train_idx)} train / {len(val_idx)} held out, 8x8 upsampled)",
                  gray=True, class_names=tuple(str(d) for d in range(10)))


def load_fashion_mnist(directory=FASHION_MNIST_DIR, split="train"):
    """(images uint8 (N, 28, 28), labels uint8 (N,)) of an official split, checked."""
    stems = FASHION_MNIST_FILES[split]
    paths = [idx.find_idx(directory, stem) for stem in stems]
    if not os.path.isdir(directory) or None in paths:
        missing = [stem for stem, path in zip(stems, paths) if path is None]
        raise DataError(
            f"Fashion-MNIST not found in {directory} (missing {', '.join(missing)}[.gz]): "
            f"install Debian's {FASHION_MNIST_PACKAGE} (apt-get install {FASHION_MNIST_PACKAGE}) "
            "or pass fashion_mnist:DIR")
    try:
        images, labels = (idx.read_idx(path) for path in paths)
    except idx.IdxError as e:
        raise DataError(str(e)) from None
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{paths[0]}: expected uint8 images (N, H, W), found {images.dtype.name} "
                        f"of shape {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{paths[1]}: {labels.shape} labels for {len(images)} images in "
                        f"{paths[0]}")
    if len(labels) and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{paths[1]}: label {int(labels.max())} out of range (10 classes)")
    return images, labels


def _fashion_mnist_source(directory, val_split):
    directory = directory or FASHION_MNIST_DIR
    images, labels = load_fashion_mnist(directory, "train")
    test_images, test_labels = load_fashion_mnist(directory, "test")
    train_idx, val_idx = stratified_split(labels, val_split)
    if len(val_idx) == 0:
        raise DataError("fashion_mnist needs val_split > 0 for its held-out set")

    def make(x, y):
        rgb = np.repeat(x[..., None], 3, axis=-1)  # gray replicated; 1-channel runs take one back
        return tf.data.Dataset.from_tensor_slices((rgb, y.astype(np.int32)))

    return Source(
        make(images[train_idx], labels[train_idx]), make(images[val_idx], labels[val_idx]),
        len(FASHION_MNIST_CLASSES), len(train_idx), len(val_idx),
        f"Fashion-MNIST {directory} ({len(train_idx)} train / {len(val_idx)} held out / "
        f"{len(test_labels)} official test, 28x28 gray)",
        gray=True, test=make(test_images, test_labels), num_test=len(test_labels),
        class_names=FASHION_MNIST_CLASSES)


def _list_class_folder(path):
    """(class names, image files of each class) of the class subfolders under ``path``."""
    try:
        classes = sorted(e.name for e in os.scandir(path) if e.is_dir())
    except OSError as e:
        raise DataError(f"cannot read dataset folder {path}: {e.strerror or e}") from None
    members = []
    for name in classes:
        folder = os.path.join(path, name)
        try:
            names = sorted(os.listdir(folder))
        except OSError as e:
            raise DataError(f"cannot read dataset folder {folder}: {e.strerror or e}") from None
        members.append([os.path.join(folder, f) for f in names
                        if f.lower().endswith(IMAGE_EXTENSIONS)])
    return classes, members


def _flatten(members):
    files = [f for group in members for f in group]
    labels = [index for index, group in enumerate(members) for _ in group]
    return files, labels


def _folder_source(path, val_split, check=True, skip_bad=False):
    if not os.path.isdir(path):
        raise DataError(f"dataset folder not found: {path}")
    held_dir = next((os.path.join(path, v) for v in ("val", "validation")
                     if os.path.isdir(os.path.join(path, v))), None)
    if os.path.isdir(os.path.join(path, "train")) and held_dir is not None:
        classes, train_members = _list_class_folder(os.path.join(path, "train"))
        val_classes, val_members = _list_class_folder(held_dir)
        if val_classes != classes:
            raise DataError(f"class folders differ between {path}/train and {held_dir}")
    else:
        classes, members = _list_class_folder(path)
        rng = np.random.default_rng(0)
        train_members, val_members = [], []
        for group in members:  # hold out val_split of each class (at least one), fixed seed
            group = [group[i] for i in rng.permutation(len(group))]
            n_val = max(1, round(len(group) * val_split)) if val_split > 0 and len(group) > 1 else 0
            val_members.append(group[:n_val])
            train_members.append(group[n_val:])
    (train_files, train_labels), (val_files, val_labels) = (
        _flatten(train_members), _flatten(val_members))
    dropped = ""
    if check or skip_bad:
        bad = set(find_all_unreadable(train_files + val_files))
        if bad and not skip_bad:
            names = sorted(bad)
            raise DataError(
                f"{len(bad)} of {len(train_files) + len(val_files)} images in {path} cannot be "
                f"decoded: {', '.join(names[:3])}{', ...' if len(bad) > 3 else ''} (remove them "
                "or pass --skip-bad-images)")
        if bad:
            train_files, train_labels = _without(bad, train_files, train_labels)
            val_files, val_labels = _without(bad, val_files, val_labels)
            dropped = f", {len(bad)} undecodable images skipped"
    if not train_files:
        raise DataError(
            f"no images found in {path}: expected class subfolders holding "
            f"{'/'.join(IMAGE_EXTENSIONS)} files"
        )
    if len(classes) < 2:
        raise DataError(f"dataset {path} has {len(classes)} class folder; need at least 2")
    if not val_files:
        raise DataError(f"dataset {path} has no held-out images (raise val_split or add val/)")

    def make(files, labels):
        ds = tf.data.Dataset.from_tensor_slices((files, np.array(labels, np.int32)))
        return ds.map(lambda f, y: (decode_image(tf.io.read_file(f)), y),
                      num_parallel_calls=tf.data.AUTOTUNE)

    return Source(make(train_files, train_labels), make(val_files, val_labels), len(classes),
                  len(train_files), len(val_files),
                  f"folder {path} ({len(classes)} classes, {len(train_files)} train / "
                  f"{len(val_files)} held out{dropped})", files=train_files + val_files,
                  class_names=classes)


def _tfrecord_files(pattern):
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise DataError(f"no files match tfrecord glob {pattern}")
    return files


def _tfrecord_dataset(files, config):
    spec = {
        config.tfrecord_image_key: tf.io.FixedLenFeature([], tf.string),
        config.tfrecord_label_key: tf.io.FixedLenFeature([], tf.int64),
    }
    offset = config.label_offset

    def parse(record):
        example = tf.io.parse_single_example(record, spec)
        label = tf.cast(example[config.tfrecord_label_key] - offset, tf.int32)
        return example[config.tfrecord_image_key], label

    return tf.data.TFRecordDataset(files).map(parse, num_parallel_calls=tf.data.AUTOTUNE)


def _scan_labels(ds, what):
    """(count, max label) by one pass over the labels."""
    count, top = 0, -1
    try:
        for labels in ds.map(lambda _, y: y).batch(4096).as_numpy_iterator():
            count += len(labels)
            top = max(top, int(labels.max()))
            if labels.min() < 0:
                raise DataError(f"{what} has negative labels (check label_offset)")
    except tf.errors.OpError as e:
        raise DataError(f"cannot read {what}: {first_line(e.message)}") from None
    if count == 0:
        raise DataError(f"{what} holds no examples")
    return count, top


def _tfrecord_source(pattern, config):
    files = _tfrecord_files(pattern)
    ds = _tfrecord_dataset(files, config)
    count, top = None, None
    if config.num_classes is None or config.steps_per_epoch is None:
        count, top = _scan_labels(ds, f"tfrecords {pattern}")
    num_classes = config.num_classes or top + 1
    if config.val_dataset is None:
        if config.val_split <= 0:
            raise DataError(f"tfrecords {pattern} need val_dataset or val_split > 0")
        every = max(2, int(round(1.0 / config.val_split)))
        indexed = ds.enumerate()
        val = indexed.filter(lambda i, _: i % every == 0).map(lambda _, e: e)
        train = indexed.filter(lambda i, _: i % every != 0).map(lambda _, e: e)
        n_val = None if count is None else (count + every - 1) // every
        n_train = None if count is None else count - n_val
    else:
        train, val, n_train, n_val = ds, None, count, None
    train = train.map(lambda b, y: (decode_image(b), y), num_parallel_calls=tf.data.AUTOTUNE)
    if val is not None:
        val = val.map(lambda b, y: (decode_image(b), y), num_parallel_calls=tf.data.AUTOTUNE)
    return Source(train, val, num_classes, n_train, n_val,
                  f"tfrecords {pattern} ({len(files)} files, {num_classes} classes)")


def _tfds_source(spec, config):
    import tensorflow_datasets as tfds

    name, _, split = spec.partition(":")
    split = split or "train"
    try:
        builder = tfds.builder(name, data_dir=config.data_dir)
    except Exception as e:  # noqa: BLE001 - tfds raises many kinds; report one line
        raise DataError(f"unknown tfds dataset {name!r}: {first_line(str(e))}") from None
    if not tf.io.gfile.exists(os.path.join(builder.data_dir, "dataset_info.json")):
        raise DataError(
            f"tfds dataset {name} is not prepared in "
            f"data_dir={config.data_dir or '~/tensorflow_datasets'} (this program never "
            "downloads; prepare it with `tfds build` first)"
        )
    info = builder.info
    if "image" not in info.features or "label" not in info.features:
        raise DataError(f"tfds dataset {name} needs 'image' and 'label' features")
    num_classes = info.features["label"].num_classes
    names = getattr(info.features["label"], "names", None)
    splits = dict(info.splits)
    if split.split("[")[0] not in splits:
        raise DataError(f"tfds dataset {name} has no split {split!r} (has {', '.join(splits)})")
    held_out = next((s for s in ("validation", "test") if s in splits and s != split), None)
    if config.val_dataset is not None:
        train_split, val_split = split, None
    elif held_out is not None:
        train_split, val_split = split, held_out
    else:
        if config.val_split <= 0:
            raise DataError(f"tfds dataset {name} has no held-out split; set val_split > 0")
        cut = int(round(100 * (1 - config.val_split)))
        train_split, val_split = f"{split}[:{cut}%]", f"{split}[{cut}%:]"

    def make(s):
        if s is None:
            return None, None
        ds = builder.as_dataset(split=s, shuffle_files=False)
        count = info.splits[s].num_examples  # tfds resolves sliced splits ("train[:90%]") too
        return ds.map(lambda e: (_to_rgb(e["image"]), tf.cast(e["label"], tf.int32))), count

    (train, n_train), (val, n_val) = make(train_split), make(val_split)
    return Source(train, val, num_classes, n_train, n_val,
                  f"tfds {name} ({train_split} / {val_split or config.val_dataset}, "
                  f"{num_classes} classes)", class_names=list(names) if names else None)


def _open(spec, config):
    kind, _, rest = spec.partition(":")
    if kind == "digits":
        return _digits_source()
    if kind == "fashion_mnist":
        return _fashion_mnist_source(rest, config.val_split)
    if kind == "folder":
        return _folder_source(rest, config.val_split, config.check_images,
                              config.skip_bad_images)
    if kind == "tfrecord":
        return _tfrecord_source(rest, config)
    if kind == "tfds":
        return _tfds_source(rest, config)
    raise DataError(f"unknown dataset {spec!r}")


def load(config):
    """The ``Source`` of ``config.dataset`` (held out: ``config.val_dataset`` when given)."""
    source = _open(config.dataset, config)
    if config.val_dataset is not None:
        held = _open(config.val_dataset, config)
        if held.num_classes != source.num_classes:
            raise DataError(
                f"val_dataset has {held.num_classes} classes, dataset has {source.num_classes}"
            )
        # A separate held-out source: all of its examples (train + held-out parts) evaluate.
        val = held.train if held.val is None else held.train.concatenate(held.val)
        n_val = None if held.num_val is None or held.num_train is None else (
            held.num_train + held.num_val)
        source = dataclasses.replace(source, val=val, num_val=n_val,
                                     files=list(source.files) + list(held.files))
    if source.num_train is not None and source.num_train == 0:
        raise DataError(f"dataset {config.dataset} holds no training examples")
    if config.train_fraction < 1.0:
        source = labeled_fraction(source, config.train_fraction)
    return with_channels(source, config.channels)


def labeled_fraction(source, fraction):
    """``source`` training on a fixed random ``fraction`` of its training examples (seed 0, the
    same subset every pass and every run); held-out and test sets stay whole. For label-efficiency
    experiments: fine-tuning a pre-trained encoder with 10 % of the labels."""
    if source.num_train is None:
        raise DataError("train_fraction needs a dataset of known size (TFRecords: leave "
                        "num_classes or steps_per_epoch unset so that the records are counted)")
    keep = max(1, int(round(source.num_train * fraction)))
    train = source.train.shuffle(source.num_train, seed=0, reshuffle_each_iteration=False)
    return dataclasses.replace(
        source, train=train.take(keep), num_train=keep,
        description=f"{source.description}; training on {keep} of its {source.num_train} "
                    f"training examples (train_fraction={fraction:g})")


def with_channels(source, channels):
    """``source`` with images of ``channels`` channels: 3 as read (RGB, gray replicated), or
    1 (a gray source's one channel, or the luma of RGB), converted before every transform so
    that the pipeline and the model's stem work on one channel only."""
    if channels == 3:
        return source

    def one_channel(image, label):
        image = image[..., :1] if source.gray else tf.image.rgb_to_grayscale(image)
        return image, label

    def convert(ds):
        return None if ds is None else ds.map(one_channel)

    return dataclasses.replace(
        source, train=convert(source.train), val=convert(source.val), test=convert(source.test),
        description=f"{source.description}, 1 channel")


# --------------------------------------------------------------------------------- transforms


def first_line(text):
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def _to_rgb(image):
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8:
        image = tf.image.convert_image_dtype(image, tf.uint8, saturate=True)
    if image.shape.rank == 2:
        image = image[..., None]
    channels = tf.shape(image)[-1]
    image = tf.cond(channels == 1, lambda: tf.repeat(image[..., :1], 3, axis=-1),
                    lambda: image[..., :3])
    image.set_shape([None, None, 3])
    return image


def decode_image(data):
    """Encoded JPEG/PNG bytes -> uint8 RGB (H, W, 3)."""
    image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def find_unreadable(files):
    """The first file that TensorFlow cannot decode and why, or None (diagnoses a failed run)."""
    for path in files:
        try:
            decode_image(tf.io.read_file(path))
        except (tf.errors.OpError, ValueError) as e:
            return path, first_line(getattr(e, "message", str(e)))
    return None


def find_all_unreadable(files):
    """The files TensorFlow cannot decode (as training would), checked in parallel with the
    decoder's own warnings kept off the terminal."""
    from keras_convnext.cli import filtered_stderr

    def shape(path):
        return path, tf.shape(decode_image(tf.io.read_file(path)))

    ds = tf.data.Dataset.from_tensor_slices(list(files) or [""]).take(len(files))
    ds = ds.map(shape, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors(log_warning=False)
    with filtered_stderr(keep=lambda line: False):
        readable = {p.decode() for p, _ in ds.as_numpy_iterator()}
    return [f for f in files if f not in readable]


def _without(bad, files, labels):
    kept = [(f, y) for f, y in zip(files, labels) if f not in bad]
    return [f for f, _ in kept], [y for _, y in kept]


def _resize(image, size, method="bicubic"):
    """Antialiased resize to ``size``, float32 0-255 out. Antialiasing only changes a downscale;
    where the static shapes show an upscale (Fashion-MNIST's 28 to 32 px) the plain kernel gives
    the same values (to float rounding) at a seventh of the cost, so it runs instead."""
    image = tf.cast(image, tf.float32)
    have = image.shape[-3:-1]
    upscale = isinstance(size, (tuple, list)) and all(
        isinstance(d, int) for d in (*have, *size)) and (
        have[0] <= size[0] and have[1] <= size[1])
    resized = tf.image.resize(image, size, method=method, antialias=not upscale)
    return tf.clip_by_value(resized, 0.0, 255.0)


def whole_image_crop(config):
    """Whether the random-resized-crop is the identity: area 1 and aspect 1."""
    return tuple(config.crop_scale) == (1.0, 1.0) and tuple(config.crop_ratio) == (1.0, 1.0)


def train_transform(image, config, seed):
    """Random-resized-crop (area ``crop_scale``, aspect ``crop_ratio``) to ``image_size``, a
    random shift of up to ``translate`` pixels each way (zero-padded: the pad-and-crop of small
    image benchmarks), then a random horizontal flip (``hflip``), all drawn from the stateless
    ``seed``. uint8 in, float32 0-255 out. A crop of area 1 and aspect 1 is the whole image
    (the box sampler falls back to it where no square covers all), so it is not sampled."""
    if whole_image_crop(config):
        crop = image
    else:
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image),
            bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=seed,
            min_object_covered=0.0,
            aspect_ratio_range=tuple(config.crop_ratio),
            area_range=tuple(config.crop_scale),
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        crop = tf.slice(image, begin, size)
        crop.set_shape([None, None, image.shape[-1]])
    out = _resize(crop, (config.image_size, config.image_size))
    if config.translate:
        pad = config.translate
        padded = tf.pad(out, [[pad, pad], [pad, pad], [0, 0]])
        out = tf.image.stateless_random_crop(
            padded, [config.image_size, config.image_size, image.shape[-1]],
            tf.random.experimental.stateless_fold_in(seed, 2))
    if config.hflip:
        out = tf.image.stateless_random_flip_left_right(
            out, tf.random.experimental.stateless_fold_in(seed, 1))
    return out


def batched_train_transform(images, config, seed):
    """``train_transform`` of a batch of equal-size images whose crop is the whole image: one
    resize for the batch, then every image's own shift (``translate``) and flip (``hflip``) as
    one gather per axis, drawn from the batch's stateless ``seed``. Per image the same
    distribution as ``train_transform`` (not the same draws), at a fraction of its per-image
    op overhead: what small in-memory datasets such as Fashion-MNIST are bound by."""
    size = config.image_size
    out = _resize(images, (size, size))
    n = tf.shape(out)[0]
    grid = tf.range(size)
    rows = cols = tf.broadcast_to(grid, [n, size])
    if config.hflip:
        flip = tf.random.stateless_uniform(
            [n, 1], tf.random.experimental.stateless_fold_in(seed, 1)) < 0.5
        cols = tf.where(flip, size - 1 - grid, grid)
    if config.translate:
        pad = config.translate
        out = tf.pad(out, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        offsets = tf.random.stateless_uniform(
            [n, 2], tf.random.experimental.stateless_fold_in(seed, 2), minval=0,
            maxval=2 * pad + 1, dtype=tf.int32)
        rows, cols = rows + offsets[:, :1], cols + offsets[:, 1:]
    out = tf.gather(out, rows, axis=1, batch_dims=1)
    return tf.gather(out, cols, axis=2, batch_dims=1)


def transforms_per_batch(source, config, image_augment=None):
    """Whether ``train_pipeline`` transforms whole batches (``batched_train_transform``): the
    images share one static size, the crop is the whole image and no per-image augmentation
    (RandAugment) follows."""
    shape = source.train.element_spec[0].shape
    return image_augment is None and shape.is_fully_defined() and whole_image_crop(config)


def eval_transform(image, image_size, crop_pct):
    """Resize the short side to ``image_size / crop_pct`` (bicubic), then center-crop
    ``image_size``: the official evaluation transform. uint8 in, float32 0-255 out."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    target = tf.cast(int(image_size / crop_pct), tf.float32)
    scale = target / tf.reduce_min(shape)
    new = tf.cast(tf.math.round(shape * scale), tf.int32)
    new = tf.maximum(new, image_size)
    resized = _resize(image, new)
    top = (new[0] - image_size) // 2
    left = (new[1] - image_size) // 2
    out = resized[top:top + image_size, left:left + image_size, :]
    out.set_shape([image_size, image_size, image.shape[-1]])
    return out


def _options(deterministic):
    options = tf.data.Options()
    # DATA sharding works for every source (in-memory arrays included) under multi-worker runs.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = deterministic
    return options


def train_pipeline(source, config, global_batch, image_augment=None, batch_augment=None,
                   start_step=0):
    """Shuffled, repeated, augmented batches ``(float32 images, one-hot labels)``, from batch
    ``start_step`` on.

    Reproducible and resumable: pass ``p`` over the training set is shuffled with the seed
    ``(seed, p)``, and every random draw of the transforms is stateless, keyed by the image's
    (or batch's) position in the stream, so batch ``n`` is the same whether the stream started
    at 0 or at ``start_step`` (a resumed run), and parallel mapping cannot reorder anything.
    Resuming skips at most one pass's remainder of raw examples. (A source of unknown size
    resumes at a fresh pass ``start_step`` instead: not the unbroken run's batches.)"""
    n = source.num_train
    buffer = SHUFFLE_BUFFER if n is None else min(SHUFFLE_BUFFER, n)
    consumed = start_step * global_batch
    first_pass, offset = (start_step, 0) if n is None else divmod(consumed, max(n, 1))

    def one_pass(p):
        # A tensor seed per pass. tf.data derives (graph seed, op seed) from it and compares the
        # pair with (0, 0) in Python, which a tensor cannot answer under a global seed of 0;
        # without a graph seed the pair is (default, op seed): deterministic all the same.
        graph = tf.compat.v1.get_default_graph()
        global_seed, graph.seed = graph.seed, None
        try:
            return source.train.shuffle(max(buffer, 1), seed=config.seed * 1_000_003 + p,
                                        reshuffle_each_iteration=False)
        finally:
            graph.seed = global_seed

    ds = tf.data.Dataset.range(first_pass, 2**62).flat_map(one_pass).skip(offset)
    num_classes = source.num_classes
    per_batch_transform = transforms_per_batch(source, config, image_augment)

    def per_image(index, example):
        image, label = example
        seed = stateless_seed(config.seed, index)
        image = train_transform(image, config, seed)
        if image_augment is not None:
            image = image_augment(image, tf.random.experimental.stateless_fold_in(seed, 7))
        return image, label

    if not per_batch_transform:
        ds = ds.enumerate(start=consumed).map(per_image, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(global_batch, drop_remainder=True).enumerate(start=start_step)

    def per_batch(index, batch):
        images, labels = batch
        if per_batch_transform:
            images = batched_train_transform(images, config, stateless_seed(config.seed, index))
        labels = tf.one_hot(labels, num_classes, dtype=tf.float32)
        if batch_augment is not None:
            images, labels = batch_augment(images, labels, stateless_seed(config.seed + 1, index))
        # Mixup's w * x + (1 - w) * y can pass 255 by a rounding error
        return tf.clip_by_value(tf.cast(images, tf.float32), 0.0, 255.0), labels

    ds = ds.map(per_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.with_options(_options(True)).prefetch(tf.data.AUTOTUNE)


def stateless_seed(seed, index):
    """The (2,) int64 seed of the stateless random ops for stream position ``index``."""
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(index, tf.int64)])


def eval_pipeline(source, config, global_batch):
    """Center-cropped batches ``(float32 images, one-hot labels)`` of the held-out set."""
    num_classes, size, pct = source.num_classes, config.image_size, config.crop_pct
    ds = source.val.map(
        lambda x, y: (eval_transform(x, size, pct), tf.one_hot(y, num_classes)),
        num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(global_batch)
    return ds.with_options(_options(True)).prefetch(tf.data.AUTOTUNE)
