"""Which format a checkpoint file is in, told from its bytes and its tensor names, and the
converter for it. ``read(path)`` is the one entry: file -> ``Converted`` (our paths, our layout).
"""

import os
import zipfile

import numpy as np

from keras_convnext.weights import hf, keras_applications, native, official, timm
from keras_convnext.weights.files import (
    HDF5,
    SAFETENSORS,
    TORCH_PICKLE,
    TORCH_ZIP,
    CheckpointError,
    read_keras_h5,
    read_safetensors,
    read_torch,
    sniff,
)

TORCH_LAYOUTS = (hf, official, timm)
KERAS_LAYOUTS = (native, keras_applications)
SUPPORTED = (
    "facebookresearch/ConvNeXt .pth (hierarchical and isotropic), facebookresearch/ConvNeXt-V2 "
    ".pt, timm .safetensors/.pth/.bin (V1 and V2), Hugging Face transformers ConvNext/ConvNextV2 "
    "model.safetensors/pytorch_model.bin, keras.applications .h5/.weights.h5, keras_convnext "
    ".weights.h5"
)
_FOLDER_FILES = ("model.safetensors", "pytorch_model.bin")
_WRAPPERS = ("model", "state_dict")
_EMA_WRAPPERS = ("model_ema", "state_dict_ema")


def read(path, *, ema=False):
    """Reads any supported checkpoint file and converts it to our variable paths."""
    path = os.fspath(path)
    if os.path.isdir(path):  # a save_pretrained folder
        found = [n for n in _FOLDER_FILES if os.path.isfile(os.path.join(path, n))]
        if not found:
            raise FileNotFoundError(f"no {' or '.join(_FOLDER_FILES)} in the folder {path}")
        path = os.path.join(path, found[0])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    kind = sniff(path)
    if kind == HDF5:
        entries = read_keras_h5(path)
        for layout in KERAS_LAYOUTS:
            if layout.matches(entries):
                return _from(path, layout.convert(entries))
        names = sorted({e.layers[-1] for e in entries if e.layers})[:8]
        raise CheckpointError(
            f"{path}: a Keras weights file, but not of a ConvNeXt this package knows "
            f"(layers {names}); supported: {SUPPORTED}"
        )
    if kind == SAFETENSORS:
        state = read_safetensors(path)
    elif kind in (TORCH_ZIP, TORCH_PICKLE):
        if kind == TORCH_ZIP and _is_keras_archive(path):
            raise CheckpointError(
                f"{path} is a whole .keras model; load it with keras.saving.load_model, or "
                "pass a weights file"
            )
        state = read_torch(path)
    else:
        raise CheckpointError(f"{path}: unknown or corrupt checkpoint file; supported: {SUPPORTED}")
    state = select_state_dict(state, ema=ema, path=path)
    for layout in TORCH_LAYOUTS:
        if layout.matches(state):
            return _from(path, layout.convert(state))
    raise CheckpointError(
        f"{path}: tensors named like none of the known ConvNeXt layouts (first keys: "
        f"{list(state)[:6]}); supported: {SUPPORTED}"
    )


def _from(path, converted):
    converted.origin = path
    return converted


def describe_format(converted):
    layout = {m.NAME: m for m in TORCH_LAYOUTS + KERAS_LAYOUTS}.get(converted.format)
    return layout.DESCRIPTION if layout else converted.format


def select_state_dict(obj, *, ema=False, path="checkpoint"):
    """The ``name -> array`` dict inside a checkpoint: the file itself, or its "model" /
    "state_dict" entry (its "model_ema" / "state_dict_ema" with ``ema=True``, or when the file
    holds nothing else). DataParallel's "module." prefix is removed."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    candidates = _EMA_WRAPPERS if ema else _WRAPPERS + _EMA_WRAPPERS
    inner = next((obj[name] for name in candidates if isinstance(obj.get(name), dict)), None)
    if inner is not None:
        obj = inner
    elif ema:
        raise CheckpointError(
            f"ema=True but {path} has no EMA weights ({' or '.join(_EMA_WRAPPERS)}); "
            f"its top-level keys: {list(obj)[:8]}"
        )
    state = {k: v for k, v in obj.items() if isinstance(v, np.ndarray)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _is_keras_archive(path):
    try:
        with zipfile.ZipFile(path) as z:
            return "config.json" in z.namelist() and "model.weights.h5" in z.namelist()
    except zipfile.BadZipFile:
        return False
