"""training.data and training.augment: the sources, the transforms and the Keras augmentation
layers inside tf.data (on every backend: the pipeline feeds all three)."""

import io
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import run_once_across_backends
from training import augment, data
from training.config import make_config


def _config(**values):
    return make_config({}, {"dataset": "digits", **values})


def _png(array, fmt="PNG"):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def _write_folder(root, classes=3, per_class=4, size=(20, 24)):
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            fmt, ext = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
            (root / f"class_{c}" / f"{i}.{ext}").write_bytes(_png(image, fmt))


def test_digits_come_from_the_package_file_not_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # importing sklearn would now fail
    images, labels = data.load_digits_arrays()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8 and images.max() == 16
    assert sorted(np.unique(labels)) == list(range(10))
    train, val = data.digits_split(labels)
    assert len(train) + len(val) == 1797 and not set(train) & set(val) and len(val) == 359
    assert np.array_equal(val, data.digits_split(labels)[1])  # fixed
    for c in range(10):  # stratified: 20 % of every class
        assert abs(np.sum(labels[val] == c) - 0.2 * np.sum(labels == c)) <= 0.5
    source = data.load(_config())
    assert (source.num_classes, source.num_train, source.num_val) == (10, 1438, 359)
    assert list(source.class_names) == [str(d) for d in range(10)]
    image, label = next(iter(source.train))
    assert image.shape == (8, 8, 3) and image.dtype == tf.uint8


def test_eval_transform_resizes_short_side_and_center_crops():
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, 30:] = 255  # right half white: the center crop straddles the edge
    out = data.eval_transform(tf.constant(image), 32, 0.8).numpy()  # short side -> 40, crop 32
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
    assert out[:, :14].max() < 1 and out[:, 18:].min() > 254
    same = data.eval_transform(tf.constant(image[:32, 14:46]), 32, 1.0).numpy()
    np.testing.assert_allclose(same, image[:32, 14:46], atol=1e-3)


def test_translate_shifts_by_at_most_n_pixels_into_a_zero_border():
    image = np.random.default_rng(0).integers(1, 255, (32, 32, 1), dtype=np.uint8)
    plain = data.train_transform(tf.constant(image), _config(crop_scale=(1, 1), hflip=False,
                                                             channels=1), tf.constant([0, 0]))
    padded = np.pad(plain.numpy(), [(3, 3), (3, 3), (0, 0)])
    config = _config(crop_scale=(1, 1), hflip=False, channels=1, translate=3)
    shifts = set()
    for i in range(12):
        out = data.train_transform(tf.constant(image), config, tf.constant([i, 7])).numpy()
        assert out.shape == (32, 32, 1)
        found = [(dy, dx) for dy in range(7) for dx in range(7)
                 if np.array_equal(padded[dy:dy + 32, dx:dx + 32], out)]
        assert len(found) == 1, "the output is not a shifted copy of the plain crop"
        shifts.add(found[0])
    assert len(shifts) > 3  # the seed draws the shift
    with pytest.raises(ValueError, match="translate=16"):
        _config(translate=16)


@pytest.mark.parametrize("shape", [(28, 28, 1), (20, 24, 3)])
def test_a_whole_image_crop_is_not_sampled_and_gives_the_samplers_result(shape, monkeypatch):
    """crop_scale (1, 1) with crop_ratio (1, 1) is the whole image (square or not: the box
    sampler falls back to it): the transform skips the sampler and gives its very numbers."""
    image = np.random.default_rng(1).integers(0, 255, shape, dtype=np.uint8)
    config = _config(crop_scale=(1, 1), crop_ratio=(1, 1), hflip=True, translate=2,
                     channels=shape[-1])
    seeds = [tf.constant([i, 3], tf.int64) for i in range(6)]
    fast = [data.train_transform(tf.constant(image), config, s).numpy() for s in seeds]
    # the sampler's path: a crop "range" the shortcut does not recognize, of the same area
    sampled = _config(crop_scale=(1, 1), crop_ratio=(1, 1.0 + 1e-7), hflip=True, translate=2,
                      channels=shape[-1])
    for s, out in zip(seeds, fast):
        np.testing.assert_array_equal(
            out, data.train_transform(tf.constant(image), sampled, s).numpy())
    calls = []
    real = tf.image.stateless_sample_distorted_bounding_box
    monkeypatch.setattr(tf.image, "stateless_sample_distorted_bounding_box",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    data.train_transform(tf.constant(image), config, seeds[0])
    assert calls == []
    data.train_transform(tf.constant(image), sampled, seeds[0])
    assert calls == [1]


@pytest.mark.parametrize("translate,hflip", [(0, False), (2, False), (0, True), (2, True)])
def test_the_batched_transform_shifts_and_flips_each_image_of_the_one_resize(translate, hflip):
    """Every image of the batch is the per-image path's plain resize, shifted by at most
    ``translate`` pixels into a zero border and flipped or not, each by its own draw."""
    images = np.random.default_rng(2).integers(1, 255, (24, 28, 28, 1), dtype=np.uint8)
    config = _config(crop_scale=(1, 1), hflip=hflip, channels=1, translate=translate)
    out = data.batched_train_transform(tf.constant(images), config, tf.constant([5, 9])).numpy()
    assert out.shape == (24, 32, 32, 1) and out.dtype == np.float32
    plain = _config(crop_scale=(1, 1), hflip=False, channels=1)
    draws = set()
    for image, got in zip(images, out):
        ref = data.train_transform(tf.constant(image), plain, tf.constant([0, 0])).numpy()
        padded = np.pad(ref, [(translate, translate)] * 2 + [(0, 0)])
        side = 2 * translate + 1
        found = [(dy, dx, f) for dy in range(side) for dx in range(side) for f in (0, 1)
                 if np.allclose(got, (lambda c: c[:, ::-1] if f else c)(
                     padded[dy:dy + 32, dx:dx + 32]), atol=1e-4)]
        assert found, "an output image is not a shifted (flipped) copy of the plain resize"
        draws.add(found[0])
    assert {f for _, _, f in draws} == ({0, 1} if hflip else {0})
    shifts = {(dy, dx) for dy, dx, _ in draws}
    assert len(shifts) > 3 if translate else shifts == {(0, 0)}


def test_equal_size_images_with_the_whole_image_as_crop_are_transformed_per_batch(monkeypatch):
    """The pipeline takes the batched path exactly when it applies (one static size, whole-image
    crop, no RandAugment), and a stream started at batch k gives the unbroken stream's batch k."""
    config = _config(crop_scale=(1, 1), crop_ratio=(1, 1), translate=2, hflip=True,
                     random_erasing=0.25)
    source = data.load(config)
    assert data.transforms_per_batch(source, config)
    assert not data.transforms_per_batch(source, config, augment.image_augment(
        _config(rand_augment_ops=2)))
    assert not data.transforms_per_batch(source, _config(crop_scale=(0.5, 1)))
    calls = []
    real = data.batched_train_transform
    monkeypatch.setattr(data, "batched_train_transform",
                        lambda *a: calls.append(1) or real(*a))
    ds = data.train_pipeline(source, config, 16, None, augment.batch_augment(config))
    unbroken = list(ds.take(4).as_numpy_iterator())
    assert calls  # traced once for the map
    resumed = next(iter(data.train_pipeline(source, config, 16, None,
                                            augment.batch_augment(config), start_step=3)))
    np.testing.assert_array_equal(resumed[0], unbroken[3][0])
    np.testing.assert_array_equal(resumed[1], unbroken[3][1])
    images, labels = unbroken[0]
    assert images.shape == (16, 32, 32, 3) and 0 <= images.min() and images.max() <= 255
    assert not np.array_equal(unbroken[0][0], unbroken[1][0])


def test_train_pipeline_batches_augmented_images_and_soft_labels():
    config = _config(mixup=0.8, cutmix=1.0, mixup_prob=1.0, random_erasing=0.5,
                     rand_augment_ops=2, rand_augment_factor=0.5, hflip=True)
    source = data.load(config)
    ds = data.train_pipeline(source, config, 16, augment.image_augment(config),
                             augment.batch_augment(config))
    batches = list(ds.take(3).as_numpy_iterator())
    for images, labels in batches:
        assert images.shape == (16, 32, 32, 3) and images.dtype == np.float32
        assert 0 <= images.min() and images.max() <= 255
        np.testing.assert_allclose(labels.sum(-1), 1.0, rtol=1e-5)
    soft = np.concatenate([labels for _, labels in batches]).max(-1) < 0.999
    assert soft.mean() > 0.5  # most rows are mixed targets


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixup_and_cutmix_mix_pairs_of_the_batch(kind):
    """Each output image is a mix of the batch's images in exactly the proportions its soft
    label gives: image i is the constant 10 * i and has class i, so the label predicts the
    mixed pixels (Mixup: their value; CutMix: the share of pixels from each image)."""
    config = _config(mixup=0.8 if kind == "mixup" else 0.0, cutmix=1.0 if kind == "cutmix" else 0,
                     random_erasing=0.0, mixup_prob=1.0)
    images = tf.constant(np.stack([np.full((32, 32, 3), 10.0 * i) for i in range(8)]), tf.float32)
    labels = tf.one_hot(tf.range(8), 8)
    out_images, out_labels = augment.batch_augment(config)(images, labels)
    out_images, out_labels = out_images.numpy(), out_labels.numpy()
    np.testing.assert_allclose(out_labels.sum(-1), 1.0, rtol=1e-5)
    assert (out_labels.max(-1) < 0.999).mean() >= 0.5  # most rows really are mixed
    classes = 10.0 * np.arange(8)
    for image, label in zip(out_images, out_labels):
        if kind == "mixup":  # a constant image of the label-weighted value
            np.testing.assert_allclose(image, label @ classes, rtol=1e-4, atol=1e-3)
        else:  # pixels come from exactly the labelled images, in the labelled shares
            shares = np.array([(image[..., 0] == c).mean() for c in classes])
            assert shares.sum() == pytest.approx(1.0)
            np.testing.assert_allclose(shares, label, atol=0.05)


def test_random_erasing_probability_and_randaugment_range():
    config = _config(random_erasing=1.0, mixup=0.0, cutmix=0.0, rand_augment_ops=2,
                     rand_augment_factor=0.5)
    images = tf.fill((8, 32, 32, 3), 128.0)
    erased, _ = augment.batch_augment(config)(images, tf.one_hot(tf.range(8), 8))
    changed = np.any(erased.numpy() != 128.0, axis=(1, 2, 3))
    assert changed.all()
    assert augment.batch_augment(_config(random_erasing=0.0, mixup=0.0, cutmix=0.0)) is None
    rand = augment.image_augment(config)
    out = rand(tf.constant(np.random.default_rng(0).integers(0, 255, (32, 32, 3)), tf.float32))
    assert out.shape == (32, 32, 3) and 0 <= float(tf.reduce_min(out)) <= float(
        tf.reduce_max(out)) <= 255
    assert augment.image_augment(_config(rand_augment_ops=0)) is None


@run_once_across_backends()
def test_folder_source_split_and_errors(tmp_path):
    _write_folder(tmp_path / "flat", per_class=5)
    source = data.load(_config(dataset=f"folder:{tmp_path / 'flat'}", val_split=0.2))
    assert (source.num_classes, source.num_train, source.num_val) == (3, 12, 3)
    labels = sorted(int(y) for _, y in source.val)
    assert labels == [0, 1, 2]  # one held out per class
    for image, _ in source.train.take(3):
        assert image.shape == (20, 24, 3) and image.dtype == tf.uint8

    _write_folder(tmp_path / "split" / "train")
    _write_folder(tmp_path / "split" / "val", per_class=2)
    source = data.load(_config(dataset=f"folder:{tmp_path / 'split'}"))
    assert (source.num_train, source.num_val) == (12, 6)

    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir()
    for spec, words in ((f"folder:{tmp_path / 'empty'}", "no images found"),
                        (f"folder:{tmp_path / 'nowhere'}", "dataset folder not found")):
        with pytest.raises(data.DataError, match=words):
            data.load(_config(dataset=spec))

    bad = tmp_path / "flat" / "class_1" / "9.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    assert data.find_unreadable(sorted(map(str, (tmp_path / "flat").rglob("*.*"))))[0] == str(bad)


@run_once_across_backends("tf.data only")
def test_folder_images_are_checked_up_front_or_skipped(tmp_path):
    _write_folder(tmp_path / "flat", per_class=4)
    source = data.load(_config(dataset=f"folder:{tmp_path / 'flat'}", val_split=0.25))
    assert source.class_names == ["class_0", "class_1", "class_2"]
    bad = [tmp_path / "flat" / f"class_{c}" / f"bad{i}.{ext}"
           for c, i, ext in ((0, 0, "jpg"), (1, 1, "png"), (2, 2, "jpg"), (2, 3, "png"))]
    for path in bad:
        path.write_bytes(b"\xff\xd8\xff\xe0 truncated" if path.suffix == ".jpg" else b"\x89PNG")
    spec = f"folder:{tmp_path / 'flat'}"
    with pytest.raises(data.DataError) as info:
        data.load(_config(dataset=spec, val_split=0.25))
    message = str(info.value)
    assert message.startswith(f"4 of 16 images in {tmp_path / 'flat'} cannot be decoded: ")
    assert str(sorted(bad)[0]) in message and message.endswith(", ... (remove them or pass "
                                                               "--skip-bad-images)")
    assert "\n" not in message
    source = data.load(_config(dataset=spec, val_split=0.25, skip_bad_images=True))
    assert source.num_train + source.num_val == 12
    assert "4 undecodable images skipped" in source.description
    assert sum(1 for _ in source.train) == source.num_train  # nothing left to fail in training
    unchecked = data.load(_config(dataset=spec, val_split=0.25, check_images=False))
    assert unchecked.num_train + unchecked.num_val == 16  # found in training, as before


@run_once_across_backends()
def test_tfrecord_source(tmp_path):
    rng = np.random.default_rng(0)
    for shard in range(2):
        with tf.io.TFRecordWriter(str(tmp_path / f"train-{shard}.tfrecord")) as writer:
            for i in range(10):
                image = _png(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
                example = tf.train.Example(features=tf.train.Features(feature={
                    "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
                    "image/class/label": tf.train.Feature(
                        int64_list=tf.train.Int64List(value=[1 + (i % 4)])),
                }))
                writer.write(example.SerializeToString())
    config = _config(dataset=f"tfrecord:{tmp_path}/train-*.tfrecord", label_offset=1,
                     val_split=0.25)
    source = data.load(config)
    assert (source.num_classes, source.num_train, source.num_val) == (4, 15, 5)
    assert sum(1 for _ in source.train) == 15 and sum(1 for _ in source.val) == 5
    image, label = next(iter(source.train))
    assert image.shape == (16, 16, 3) and 0 <= int(label) < 4
    with pytest.raises(data.DataError, match="no files match"):
        data.load(_config(dataset=f"tfrecord:{tmp_path}/none-*"))


@run_once_across_backends()
def test_tfds_source_from_a_prepared_data_dir(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    images = np.random.default_rng(0).integers(0, 255, (9, 12, 12, 1), dtype=np.uint8)

    def split(n):
        return tf.data.Dataset.from_tensor_slices({"image": images[:n], "label": np.arange(n) % 3})

    tfds.dataset_builders.store_as_tfds_dataset(
        name="tiny_gray", version="1.0.0", data_dir=str(tmp_path),
        split_datasets={"train": split(9), "test": split(6)},
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 1)),
            "label": tfds.features.ClassLabel(num_classes=3)}),
    )
    source = data.load(_config(dataset="tfds:tiny_gray", data_dir=str(tmp_path)))
    assert (source.num_classes, source.num_train, source.num_val) == (3, 9, 6)
    image, _ = next(iter(source.train))
    assert image.shape == (12, 12, 3) and image.dtype == tf.uint8  # grayscale -> RGB
    assert source.class_names == ["0", "1", "2"]  # the ClassLabel's names
    with pytest.raises(data.DataError, match="tfds"):
        data.load(_config(dataset="tfds:not_a_dataset_here", data_dir=str(tmp_path)))


def test_one_channel_runs_feed_gray_images_from_the_start():
    config = _config(channels=1, random_erasing=0.5, mixup=0.8)
    source = data.load(config)
    image, _ = next(iter(source.train))
    assert image.shape == (8, 8, 1) and "1 channel" in source.description
    rgb_image, _ = next(iter(data.load(_config()).train))
    np.testing.assert_array_equal(image.numpy()[..., 0], rgb_image.numpy()[..., 0])
    images, labels = next(iter(data.train_pipeline(
        source, config, 4, augment.image_augment(config), augment.batch_augment(config))))
    assert images.shape == (4, 32, 32, 1) and labels.shape == (4, 10)
    held, _ = next(iter(data.eval_pipeline(source, config, 4)))
    assert held.shape == (4, 32, 32, 1)


def test_rgb_folders_become_their_luma_with_one_channel(tmp_path):
    _write_folder(tmp_path / "images")
    config = make_config({}, {"dataset": f"folder:{tmp_path / 'images'}", "channels": 1,
                              "rand_augment_ops": 0})
    image, _ = next(iter(data.load(config).train))
    assert image.shape[-1] == 1


def test_one_channel_is_refused_with_randaugment():
    from training.config import ConfigError

    with pytest.raises(ConfigError, match="channels=1 with RandAugment"):
        _config(channels=1, rand_augment_ops=2)
    with pytest.raises(ConfigError, match="channels=2"):
        _config(channels=2)


def _examples(ds):
    return [(image.tobytes(), int(label)) for image, label in ds.as_numpy_iterator()]


@run_once_across_backends("tf.data only")
def test_train_fraction_trains_on_the_same_fixed_part_and_keeps_the_held_out_set():
    whole = data.load(_config())
    part = data.load(_config(train_fraction=0.1))
    assert part.num_train == round(whole.num_train * 0.1) and part.num_val == whole.num_val
    first, again = _examples(part.train), _examples(part.train)
    assert len(first) == part.num_train and first == again  # the same subset every pass
    assert first == _examples(data.load(_config(train_fraction=0.1)).train)  # and every run
    assert set(first) <= set(_examples(whole.train))
    assert len({label for _, label in first}) == 10  # a random subset, every class still there
    assert _examples(part.val) == _examples(whole.val)
    assert "training on 144 of its 1438" in part.description
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="train_fraction"):
            _config(train_fraction=bad)


@run_once_across_backends("TensorFlow ops only")
@pytest.mark.parametrize("method", ["bicubic", "bilinear"])
def test_upscales_skip_antialiasing_with_the_same_values_and_downscales_keep_it(method):
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (4, 28, 28, 3)), tf.uint8)
    antialiased = lambda size: tf.clip_by_value(tf.image.resize(  # noqa: E731
        tf.cast(images, tf.float32), size, method=method, antialias=True), 0.0, 255.0).numpy()
    np.testing.assert_allclose(data._resize(images, (32, 32), method).numpy(),
                               antialiased((32, 32)), atol=0.01)
    np.testing.assert_array_equal(data._resize(images, (20, 20), method).numpy(),
                                  antialiased((20, 20)))


def _erased_boxes(before, after):
    """(which images changed, each changed image's changed share) of a random erasing, checking
    that what changed is one filled rectangle: every pixel inside its bounding box."""
    changed = np.any(after != before, axis=-1)
    shares = []
    for mask in changed[changed.any(axis=(1, 2))]:
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all(), "not one solid box"
        shares.append(mask.mean())
    return changed.any(axis=(1, 2)), np.array(shares)


@run_once_across_backends("TensorFlow ops only")
def test_random_erasing_draws_what_the_keras_layer_draws():
    """Against ``keras.layers.RandomErasing`` itself: the same share of erased images and the
    same box sizes (2-33 % of the image, 16 % on average), noise within 0-255, nothing changed
    outside the box; the stateless draws repeat for a seed and differ between seeds."""
    import keras

    before = np.full((1500, 32, 32, 3), 128.0, np.float32)
    seed = tf.constant([3, 4], tf.int64)
    ours = augment.random_erasing(before, 0.25, seed).numpy()
    layer = keras.layers.RandomErasing(factor=(0.25, 0.25), value_range=(0, 255), seed=1)
    theirs = keras.ops.convert_to_numpy(layer(before, training=True))
    (our_hit, our_share), (their_hit, their_share) = (
        _erased_boxes(before, ours), _erased_boxes(before, theirs))
    assert abs(our_hit.mean() - 0.25) < 0.04 and abs(their_hit.mean() - 0.25) < 0.04
    assert abs(our_share.mean() - their_share.mean()) < 0.025
    assert 0.13 < our_share.mean() < 0.19
    assert our_share.min() >= 0.01 and our_share.max() <= 0.40
    assert 0.0 <= ours.min() and ours.max() <= 255.0
    erased = ours[our_hit]
    assert (erased == 0).mean() > 0.05 and (erased == 255).mean() > 0.01  # the clipped noise
    np.testing.assert_array_equal(augment.random_erasing(before, 0.25, seed).numpy(), ours)
    assert not np.array_equal(augment.random_erasing(before, 0.25, seed + 1).numpy(), ours)
    untouched = augment.random_erasing(before, 0.0, seed).numpy()
    np.testing.assert_array_equal(untouched, before)
