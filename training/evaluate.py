"""The final evaluation on a source's official test split (Fashion-MNIST's 10,000 images).

It runs what a user deploys: the exported SavedModel's ``serve_uint8`` signature fed the raw
uint8 test images as the source holds them (28x28, gray replicated to RGB), so the resize to the
training size happens inside the exported graph. The Keras model on the evaluation pipeline is
reported beside it as a cross-check. Results go to ``DIR/test_metrics.json`` (next to
``metrics.csv``): accuracy, per-class accuracy and the confusion matrix (rows: true class).
"""

import dataclasses
import json
import os

import numpy as np

from training import data
from training.checkpoint import atomic_write_text

TEST_METRICS = "test_metrics.json"
BATCH = 256


def confusion_matrix(labels, predictions, num_classes):
    """(num_classes, num_classes) counts; row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


def _raw_batches(dataset):
    for images, labels in dataset.batch(BATCH).as_numpy_iterator():
        yield images, labels


def saved_model_predictions(saved_model_dir, dataset):
    """(labels, predicted classes) of ``serve_uint8`` on the raw uint8 images of ``dataset``."""
    import tensorflow as tf

    serve = tf.saved_model.load(saved_model_dir).signatures["serve_uint8"]
    labels, predicted = [], []
    for images, y in _raw_batches(dataset):
        probabilities = serve(images=tf.constant(images, tf.uint8))["probabilities"]
        predicted.append(np.argmax(probabilities.numpy(), axis=-1))
        labels.append(y)
    return np.concatenate(labels), np.concatenate(predicted)


def keras_predictions(model, source, config):
    """(labels, predicted classes) of the Keras ``model`` on the evaluation transform."""
    test = dataclasses.replace(source, val=source.test)
    labels, predicted = [], []
    for images, one_hot in data.eval_pipeline(test, config, BATCH).as_numpy_iterator():
        predicted.append(np.argmax(model.predict_on_batch(images), axis=-1))
        labels.append(np.argmax(one_hot, axis=-1))
    return np.concatenate(labels), np.concatenate(predicted)


def evaluate_test_set(model, source, config, out_dir, saved_model_dir=None):
    """Evaluates ``source.test``; writes and returns the ``test_metrics.json`` record."""
    labels, predicted = keras_predictions(model, source, config)
    record = {
        "dataset": config.dataset,
        "num_test": int(len(labels)),
        "keras_accuracy": float(np.mean(labels == predicted)),
    }
    if saved_model_dir is not None:
        labels, predicted = saved_model_predictions(saved_model_dir, source.test)
        record["through"] = "saved_model serve_uint8 (raw uint8 images)"
    else:
        record["through"] = "keras model (evaluation transform)"
    matrix = confusion_matrix(labels, predicted, source.num_classes)
    record["accuracy"] = float(np.trace(matrix) / max(matrix.sum(), 1))
    record["class_names"] = list(source.class_names or range(source.num_classes))
    record["per_class_accuracy"] = [
        float(matrix[i, i] / max(matrix[i].sum(), 1)) for i in range(source.num_classes)]
    record["confusion_matrix"] = matrix.tolist()
    atomic_write_text(os.path.join(out_dir, TEST_METRICS), json.dumps(record, indent=1))
    return record


def describe(record):
    """One line for the end of a run."""
    line = (f"Official test set ({record['num_test']} images): accuracy "
            f"{record['accuracy']:.4f} through {record['through']}")
    if record["through"].startswith("saved_model"):
        line += f"; Keras model {record['keras_accuracy']:.4f}"
    return line + "."
