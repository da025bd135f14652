"""FCMAE pre-training throughput, and what the dense masking costs, on every backend.

    python benchmarks/fcmae_speed.py --backends tensorflow,jax,torch --json out.json
    KERAS_BACKEND=jax python benchmarks/fcmae_speed.py --variant v2_atto --size 64 --patch 8

Three training steps (AdamW, ``train_on_batch`` on one batch held in memory), timed interleaved
in one process:

* ``fcmae``: the whole pre-training step (mask, masked encoder, decoder, masked-patch loss),
  i.e. the images/s of ``training.pretrain``;
* ``masked_encoder``: the V2 encoder run as FCMAE runs it (``FCMAE.encode``: the mask applied
  to the input and after every spatial operation), forward and backward;
* ``plain_encoder``: the same encoder as a plain ``ConvNeXtV2`` forward and backward.

``masked_encoder / plain_encoder`` (time per step) is the cost of the dense masking; the V2
issue's bound is 1.3x. Timings, not a test: say which CPU in what you write down.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import harness  # noqa: E402


def _step_models(variant, size, patch):
    """{name: compiled model} for the three steps (each model's output trained towards 0)."""
    import keras

    import keras_convnext
    from keras_convnext import fcmae

    pretrain = fcmae.for_variant(variant, image_size=size, patch_size=patch, seed=0)
    encoder = pretrain.encoder

    class MaskedEncoder(keras.Model):
        """``FCMAE.encode`` as a model of the encoder's weights alone."""

        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def call(self, images, training=False):
            mask = pretrain.sample_mask(keras.ops.shape(images)[0])
            return pretrain.encode(images, mask, training=training)

    plain = keras_convnext.build(variant, include_top=False, input_shape=(size, size, 3))
    models = {"fcmae": pretrain, "masked_encoder": MaskedEncoder(), "plain_encoder": plain}
    for name, model in models.items():
        model.compile(optimizer=keras.optimizers.AdamW(1e-4),
                      loss=None if name == "fcmae" else "mse")
    return models


def measure(variant, size, patch, batch, steps, warmup):
    import keras
    import numpy as np

    images = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32")
    models = _step_models(variant, size, patch)
    targets = {name: np.zeros(tuple(model(images).shape), "float32")  # trained towards 0
               for name, model in models.items() if name != "fcmae"}

    def step(entry):
        model = models[entry.name]
        if entry.name == "fcmae":
            model.train_on_batch(images)
        else:
            model.train_on_batch(images, targets[entry.name])

    entries = [harness.Entry(name, None) for name in models]
    results = harness.interleaved(entries, step, steps, warmup)
    harness.add_throughput(results, batch)
    masked, plain = results["masked_encoder"]["median_s"], results["plain_encoder"]["median_s"]
    return {
        "backend": keras.backend.backend(), "variant": variant, "image_size": size,
        "patch_size": patch, "batch": batch, "results": results,
        "pretrain_images_per_s": results["fcmae"]["img_s"],
        "masked_over_plain_encoder": round(masked / plain, 3),
        "fcmae_over_plain_encoder": round(results["fcmae"]["median_s"] / plain, 3),
        "cpu": harness.cpu_name(), "cores": os.cpu_count(), "load_average": harness.load_average(),
    }


def describe(row):
    """One line of a backend's result."""
    r = row["results"]
    return (f"{row['backend']:>10} {row['variant']} {row['image_size']} px, patch "
            f"{row['patch_size']}, batch {row['batch']}: pre-training {r['fcmae']['img_s']} img/s; "
            f"masked encoder {r['masked_encoder']['img_s']} vs plain {r['plain_encoder']['img_s']}"
            f" img/s -> masking costs {row['masked_over_plain_encoder']}x")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="v2_atto")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds after the first")
    parser.add_argument("--backends", default=None,
                        help="comma list: one process each (default: this process' backend)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.backends:
        forwarded = ["--variant", args.variant, "--size", str(args.size), "--patch",
                     str(args.patch), "--batch", str(args.batch), "--steps", str(args.steps),
                     "--warmup", str(args.warmup)]
        rows = [harness.run_in_backend(__file__, forwarded, b) for b in args.backends.split(",")]
    else:
        rows = [measure(args.variant, args.size, args.patch, args.batch, args.steps, args.warmup)]
    return harness.print_rows(rows, describe, args.json, several=bool(args.backends))


if __name__ == "__main__":
    main()
