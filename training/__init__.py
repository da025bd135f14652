"""Training program for keras_convnext: ``python -m training.train`` (see training/TRAINING.md)."""
