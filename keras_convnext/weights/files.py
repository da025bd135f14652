"""Reading checkpoint files into plain numpy: safetensors (no torch), PyTorch pickles, Keras HDF5.

Nothing here knows ConvNeXt; it only turns bytes into ``name -> numpy array`` (torch formats)
or a list of ``H5Entry`` (Keras formats). ``sniff`` tells the container from the file's first
bytes, never from its name. ``load_keras_model`` opens a whole ``.keras`` file. Whatever the
container's library raises on damaged bytes (h5py's bare RuntimeError/OSError/KeyError, zip CRC
errors, a truncated archive) comes out as one ``CheckpointError`` naming the file; a
``<file>.sha256`` sidecar (``sha256sum`` format, written by the training program) is verified
when present, since HDF5 has no checksum and zeroed blocks can otherwise load silently.
"""

import dataclasses
import hashlib
import json
import os
import struct
import zipfile

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model it is loaded into."""


HDF5, SAFETENSORS, TORCH_ZIP, TORCH_PICKLE = "hdf5", "safetensors", "torch-zip", "torch-pickle"
SIDECAR = ".sha256"
# What h5py, zipfile and Keras raise on damaged or truncated bytes.
READ_ERRORS = (OSError, RuntimeError, KeyError, ValueError, EOFError, zipfile.BadZipFile)


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def file_sha256(path):
    """The hex sha256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_sidecar(path, digest):
    """Records ``digest`` (of ``path``) in ``path.sha256``, as ``sha256sum`` writes it."""
    tmp = f"{path}{SIDECAR}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{digest}  {os.path.basename(path)}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path + SIDECAR)


def verify_sidecar(path):
    """Raises ``CheckpointError`` when ``path.sha256`` exists and does not match the file."""
    sidecar = path + SIDECAR
    if not os.path.isfile(sidecar):
        return
    with open(sidecar, encoding="utf-8") as f:
        expected = f.read().split()[:1]
    if expected != [file_sha256(path)]:
        raise CheckpointError(f"{path} is damaged: its sha256 differs from {sidecar}")


def load_keras_model(path, **kwargs):
    """``keras.saving.load_model(path, **kwargs)`` for a ``.keras`` file whose damage (a zip CRC
    error, a truncated archive, a sidecar mismatch) is one ``CheckpointError`` naming it."""
    import keras

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"model file not found: {path}")
    verify_sidecar(path)
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except READ_ERRORS as e:
        raise CheckpointError(f"{path}: not a readable .keras archive (truncated or corrupt?): "
                              f"{_first_line(e)}") from None
    if bad is not None:
        raise CheckpointError(f"{path} is damaged: {bad} inside it fails its CRC check")
    try:
        return keras.saving.load_model(path, **kwargs)
    except READ_ERRORS as e:
        raise CheckpointError(f"{path}: cannot load this .keras model: {_first_line(e)}") from None

TORCH_INSTALL_HINT = (
    'install the torch extra (pip install "keras_convnext[torch]"), or convert the file once '
    "on a machine that has torch: python -m keras_convnext.convert SRC DST.weights.h5"
)


def sniff(path):
    """The container format of ``path`` from its leading bytes, or None if unknown."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return HDF5
    if head.startswith(b"PK\x03\x04"):
        return TORCH_ZIP
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in range(2, 6):
        return TORCH_PICKLE
    if len(head) >= 9:
        (header_size,) = struct.unpack("<Q", head[:8])
        if 2 <= header_size < os.path.getsize(path) and head[8:9] == b"{":
            return SAFETENSORS
    return None


# ---------------------------------------------------------------------------------------------
# safetensors, read with numpy only (safetensors.numpy cannot read bfloat16 without torch).

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": "bf16",
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}


def read_safetensors(path):
    """``{name: numpy array}`` from a .safetensors file; bfloat16 becomes float32."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        try:
            (header_size,) = struct.unpack("<Q", f.read(8))
            if header_size > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(f.read(header_size))
        except (struct.error, ValueError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    header.pop("__metadata__", None)
    data_start = 8 + header_size
    buffer = np.memmap(path, dtype=np.uint8, mode="r") if size > data_start else None
    arrays = {}
    for name, info in header.items():
        try:
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(
                f"{path}: tensor {name!r} has an unsupported or malformed entry {info!r}"
            ) from e
        itemsize = 2 if dtype == "bf16" else np.dtype(dtype).itemsize
        count = int(np.prod(shape, dtype=np.int64))
        if end - begin != count * itemsize or data_start + end > size or begin < 0:
            raise CheckpointError(
                f"{path}: tensor {name!r} lies outside the file or has the wrong size "
                "(truncated or corrupt file?)"
            )
        raw = buffer[data_start + begin : data_start + end]
        if dtype == "bf16":
            array = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            array = raw.view(np.dtype(dtype).newbyteorder("<"))
        arrays[name] = np.array(array.reshape(shape))
    return arrays


# ---------------------------------------------------------------------------------------------
# PyTorch .pth / .bin / .pt


def import_torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"reading a PyTorch checkpoint needs torch: {TORCH_INSTALL_HINT}") from e
    return torch


def read_torch(path):
    """The object in a PyTorch checkpoint, tensors turned into numpy (loaded with weights_only)."""
    torch = import_torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(
                f"{path} holds pickled Python objects besides tensors (a training checkpoint?) "
                "and is not loaded with arbitrary unpickling. If you trust it, save only its "
                "state dict: torch.save(torch.load(path, weights_only=False)['model'], "
                f"'clean.pth'). torch said: {e}"
            ) from e
        raise CheckpointError(f"{path}: cannot read this PyTorch file (corrupt?): {e}") from e

    def to_numpy(value):
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            if value.dtype == torch.bfloat16:
                value = value.float()
            return value.numpy()
        if isinstance(value, dict):
            return {k: to_numpy(v) for k, v in value.items()}
        return value

    return to_numpy(obj)


# ---------------------------------------------------------------------------------------------
# Keras HDF5: Keras 3 ``.weights.h5`` and the legacy layout (``layer_names``) of Keras 2 files.


@dataclasses.dataclass(frozen=True)
class H5Entry:
    """One weight of a Keras file: the names of the layers holding it (outermost first), its
    short name when the file records one (``kernel``, ``gamma``; legacy files only), its
    position among its layer's weights, and where it is in the file."""

    layers: tuple
    name: object
    index: int
    array: np.ndarray
    source: str


def read_keras_h5(path):
    """All weights of a Keras weights file as ``H5Entry``s, whichever Keras wrote it."""
    import h5py

    verify_sidecar(path)
    try:
        with h5py.File(path, "r") as f:
            if "layer_names" in f.attrs:
                return _read_legacy(f)
            if "model_weights" in f and "layer_names" in f["model_weights"].attrs:
                return _read_legacy(f["model_weights"])
            if "layers" in f or "vars" in f:
                entries = []
                _walk_keras3(f, (), entries)
                return entries
    except CheckpointError:
        raise
    except READ_ERRORS as e:  # h5py: OSError, a bare RuntimeError (bad B-tree/symbol table), ...
        raise CheckpointError(
            f"{path}: cannot read this HDF5 file (corrupt or truncated?): {_first_line(e)}"
        ) from None
    raise CheckpointError(
        f"{path} is an HDF5 file but not a Keras weights file (no 'layers' group and no "
        "'layer_names' attribute)"
    )


def _decode(value):
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _read_legacy(group):
    entries, counts = [], {}
    for layer_name in (_decode(n) for n in group.attrs["layer_names"]):
        layer_group = group[layer_name]
        for weight_name in (_decode(n) for n in layer_group.attrs.get("weight_names", [])):
            parts = weight_name.split("/")
            layers = tuple(parts[:-1]) or (layer_name,)
            index = counts.get(layers, 0)
            counts[layers] = index + 1
            entries.append(
                H5Entry(
                    layers=layers,
                    name=parts[-1].split(":")[0],
                    index=index,
                    array=np.asarray(layer_group[weight_name]),
                    source=f"{layer_name}/{weight_name}",
                )
            )
    return entries


def _walk_keras3(group, layers, entries):
    # Keras 3 nests a group per layer (its key is a generic, per-class name in recent versions)
    # whose "vars" subgroup holds the variables as "0", "1", ... and the layer's real name as
    # an attribute; "layers" groups are plain containers.
    for key in group:
        child = group[key]
        if key == "vars":
            for index in sorted(child, key=int):
                entries.append(
                    H5Entry(layers, None, int(index), np.asarray(child[index]), child[index].name)
                )
        elif key == "layers":
            _walk_keras3(child, layers, entries)
        elif hasattr(child, "keys"):
            name = key
            if "vars" in child and "name" in child["vars"].attrs:
                name = _decode(child["vars"].attrs["name"])
            _walk_keras3(child, layers + (name,), entries)
