"""Checkpoint loading: ``load_weights(model, path_or_name)``.

Reads, telling the format from the file itself:

- facebookresearch/ConvNeXt ``.pth`` files (``{"model": ...}``; EMA weights with ``ema=True``);
- timm checkpoints, ``.safetensors`` and ``.pth``/``.bin``;
- Hugging Face transformers ConvNext ``model.safetensors`` and ``pytorch_model.bin``;
- keras.applications ConvNeXt ``.h5`` files and ``.weights.h5`` saved from those models;
- keras_convnext ``.weights.h5`` files.

Safetensors and Keras files are read with numpy and h5py alone; PyTorch pickles need torch.
Loading is strict (see ``keras_convnext.weights.assign``). ``"imagenet"`` and
``"imagenet22k"`` name the published checkpoints (``keras_convnext.weights.presets``).
One module per format (``official``, ``timm``, ``hf``, ``keras_applications``, ``native``),
``formats`` tells them apart, ``files`` reads bytes, ``assign`` sets the variables.
"""

from keras_convnext.weights import assign, files, native, presets
from keras_convnext.weights.assign import architecture
from keras_convnext.weights.files import CheckpointError
from keras_convnext.weights.formats import read as read_checkpoint


def load_weights(model, weights, *, skip_mismatched_head=False, ema=False):
    """Loads ``weights`` into ``model`` (a keras_convnext model) and returns the model.

    Args:
        model: a model built by ``keras_convnext.ConvNeXt`` or a variant constructor, at any
            input resolution, with or without its head (``include_top``).
        weights: the path of a checkpoint file in any supported format, or ``"imagenet"`` /
            ``"imagenet22k"`` for the published checkpoint of the model's variant
            (downloaded, converted and cached on first use).
        skip_mismatched_head: when the checkpoint's classifier does not fit the model's
            (other ``classes``, or a checkpoint without a head), keep the model's freshly
            initialized head, with a warning, instead of failing: the fine-tuning workflow.
        ema: load the EMA weights of a training checkpoint ("model_ema" / "state_dict_ema").

    Raises:
        CheckpointError: the file is unreadable or does not fit the model; the message lists
            missing, unexpected and mis-shaped tensors and the variant the file looks like.
        ImportError: a PyTorch file and no torch installed.
        OSError: a published checkpoint could not be downloaded (the message says which
            file to fetch and where to put it).
    """
    if isinstance(weights, str) and weights in presets.TAGS:
        weights = presets.fetch(presets.find(model, weights))
    if not native.has_convnext_variables(model):
        # Not ConvNeXt's layers (an early roadmap step): only its own Keras weights files fit.
        try:
            model.load_weights(weights)
        except files.READ_ERRORS as e:
            raise CheckpointError(f"{weights}: cannot read this weights file: {e}") from None
        return model
    converted = read_checkpoint(weights, ema=ema)
    return assign.assign(model, converted, skip_mismatched_head=skip_mismatched_head)


__all__ = [
    "CheckpointError",
    "architecture",
    "load_weights",
    "read_checkpoint",
]
