"""int8 beside fp32 on real held-out images: a trained run's model, Keras' own
``model.quantize("int8")``, and LiteRT full-integer export, on the run's test (or held-out) set.

    python benchmarks/int8_accuracy.py runs/fashion_mnist --json out.json

The run folder is one that ``training.train`` wrote (``model.keras``, ``config.json``). Every
variant is evaluated on the same images, through the evaluation transform (resize to the run's
size, float 0-255): the Keras fp32 model, the Keras int8 model (every Dense layer int8: the pointwise convs and head;
the rest fp32), and, where ``ai-edge-litert`` is installed, LiteRT fp32 and LiteRT full-integer
int8 (calibrated on ``--calibration`` training images). Reports accuracy and agreement with fp32.
"""

import argparse
import dataclasses
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import harness  # noqa: E402


def _arrays(dataset, limit=None):
    import numpy as np

    images, labels = [], []
    for x, y in dataset.as_numpy_iterator():
        images.append(x)
        labels.append(np.argmax(y, axis=-1))
        if limit and sum(len(i) for i in images) >= limit:
            break
    images, labels = np.concatenate(images), np.concatenate(labels)
    return (images[:limit], labels[:limit]) if limit else (images, labels)


def measure(run_dir, calibration=200, limit=None, out_dir=None):
    import keras
    import numpy as np

    from keras_convnext import export as ex
    from training import data
    from training.config import make_config

    with open(os.path.join(run_dir, "config.json")) as f:
        saved = json.load(f)
    config = make_config({}, {k: v for k, v in saved.items() if k != "weights"})
    source = data.load(config)
    held = source if source.test is None else dataclasses.replace(source, val=source.test)
    images, labels = _arrays(data.eval_pipeline(held, config, 256), limit)
    calib = dataclasses.replace(source, val=source.train)
    representative, _ = _arrays(data.eval_pipeline(calib, config, 256), calibration)

    model_path = os.path.join(run_dir, "model.keras")
    fp32 = keras.models.load_model(model_path)
    int8 = keras.models.load_model(model_path)
    int8.quantize("int8")
    dense = [layer for layer in int8._flatten_layers() if isinstance(layer, keras.layers.Dense)]
    int8_layers = sum(layer.quantization_mode == "int8" for layer in dense)
    if int8_layers != len(dense):
        raise SystemExit(f"model.quantize('int8') quantized {int8_layers} of {len(dense)} Dense layers")
    outputs = {"keras fp32": fp32.predict(images, batch_size=256, verbose=0),
               "keras int8": int8.predict(images, batch_size=256, verbose=0)}
    if ex.writable("litert"):
        out_dir = out_dir or os.path.join(run_dir, "int8_check")
        os.makedirs(out_dir, exist_ok=True)
        for name, quantized in (("litert fp32", False), ("litert int8", True)):
            path = os.path.join(out_dir, name.replace(" ", "_") + ".tflite")
            ex.export_model(fp32, "litert", path, int8=quantized,
                            representative=representative if quantized else None)
            outputs[name] = ex.load(path, "litert")(images)
    reference = outputs["keras fp32"].argmax(-1)
    rows = {name: {"accuracy": round(float(np.mean(p.argmax(-1) == labels)), 4),
                   "agreement_with_fp32": round(float(np.mean(p.argmax(-1) == reference)), 4)}
            for name, p in outputs.items()}
    return {"run": run_dir, "dataset": config.dataset, "model": config.model,
            "image_size": config.image_size, "images": int(len(labels)),
            "split": "test" if source.test is not None else "held-out",
            "backend": keras.backend.backend(), "int8_dense_layers": int8_layers,
            "results": rows, "cpu": harness.cpu_name()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a training.train run folder")
    parser.add_argument("--calibration", type=int, default=200,
                        help="training images calibrating LiteRT's int8 ranges")
    parser.add_argument("--limit", type=int, default=None, help="evaluate this many images")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    report = measure(args.run, args.calibration, args.limit)
    print(f"{report['dataset']} {report['model']} {report['image_size']} px, {report['images']} "
          f"{report['split']} images ({report['backend']}; keras int8: "
          f"{report['int8_dense_layers']} Dense layers int8):")
    for name, row in report["results"].items():
        print(f"  {name:>12}: accuracy {row['accuracy']:.2%}, "
              f"top-1 agreement with fp32 {row['agreement_with_fp32']:.2%}")
    return harness.write_report(report, args.json)


if __name__ == "__main__":
    main()
