"""Which bounds a training run: the input pipeline or the training step? Both in images/s.

    KERAS_BACKEND=tensorflow python benchmarks/data_speed.py --dataset fashion_mnist
    python benchmarks/data_speed.py --dataset digits --backends tensorflow,jax,torch --json out.json

For the dataset's preset (``training.config``; any ``--flag`` of ``training.train`` overrides it):

* the input pipeline alone: ``TrainingSession.datasets()``'s training pipeline (decode, crop,
  flip, RandAugment, erasing, Mixup/CutMix as configured, batching) drained for ``--batches``
  batches after a warm-up, nothing else running;
* the training step alone: the compiled model (the run's optimizer, loss, EMA and dtype policy:
  ``--set mixed_precision bf16``) trained with
  ``train_on_batch`` on one batch from that pipeline held in memory, so no input work is timed.

The run goes at about the slower of the two (tf.data prefetches in parallel, but on a 2-core
machine both share the same cores, so the sum of the times per batch is the pessimistic bound).
Timings, not a test: say which CPU in what you write down (the JSON records it).
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import harness  # noqa: E402


def measure(flag_values, batches, steps):
    import keras

    from training import config as config_lib, data, strategy
    from training.session import TrainingSession
    from training.train import model_builder

    config = config_lib.make_config(flag_values=flag_values)
    runtime = strategy.select("default", None)
    source = data.load(config)
    session = TrainingSession(config, runtime, source)
    train_ds, _ = session.datasets()
    batch = session.schedule.global_batch
    iterator = iter(train_ds)
    for _ in range(3):
        first = next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    pipeline = batches * batch / (time.perf_counter() - start)

    model = session.compile(model_builder(config, source.num_classes))
    images, labels = (keras.ops.convert_to_numpy(t) for t in first)
    model.train_on_batch(images, labels)  # compile, first call
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(images, labels)
    step = steps * batch / (time.perf_counter() - start)
    return {
        "backend": keras.backend.backend(),
        "dataset": config.dataset, "model": config.model, "image_size": config.image_size,
        "global_batch": batch, "dtype_policy": model.dtype_policy.name,
        "pipeline_images_per_s": round(pipeline, 1),
        "train_step_images_per_s": round(step, 1),
        "bound_by": "input pipeline" if pipeline < step else "training step",
        "both_on_shared_cores_images_per_s": round(1.0 / (1.0 / pipeline + 1.0 / step), 1),
        "cpu": harness.cpu_name(), "cores": os.cpu_count(), "load_average": harness.load_average(),
    }


def describe(row):
    """One line of a backend's result."""
    return (f"{row['backend']:>10} {row['dataset']} {row['model']} {row['image_size']} px, "
            f"batch {row['global_batch']}, {row['dtype_policy']}: pipeline {row['pipeline_images_per_s']} img/s, "
            f"train step {row['train_step_images_per_s']} img/s -> bound by {row['bound_by']}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--backends", default=None,
                        help="comma list: one process each (default: this process' backend)")
    parser.add_argument("--batches", type=int, default=60, help="pipeline batches timed")
    parser.add_argument("--steps", type=int, default=20, help="training steps timed")
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="a training.train config value, e.g. --set image_size 64")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.backends:
        rows = []
        for backend in args.backends.split(","):
            forwarded = ["--dataset", args.dataset, "--batches", str(args.batches),
                         "--steps", str(args.steps)]
            for key, value in args.set:
                forwarded += ["--set", key, value]
            rows.append(harness.run_in_backend(__file__, forwarded, backend))
    else:
        flags = {"dataset": args.dataset, **{k: v for k, v in args.set}}
        rows = [measure(flags, args.batches, args.steps)]
    return harness.print_rows(rows, describe, args.json, several=bool(args.backends))


if __name__ == "__main__":
    main()
