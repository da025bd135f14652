"""A reader for the IDX format of MNIST and Fashion-MNIST (gzip-compressed or not).

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), one
big-endian int32 per dimension, then the values in C order (big-endian for multi-byte types).
``read_idx`` checks every rule and the exact size, so a truncated, padded or foreign file raises
``IdxError`` naming the file and the rule instead of yielding garbage.
"""

import gzip
import os
import zlib

import numpy as np

# type code -> big-endian dtype (Y. LeCun's description of the format)
TYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"


class IdxError(ValueError):
    """A file that is not a valid IDX file; the message names the file and the problem."""


def _read_bytes(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise IdxError(f"cannot read {path}: {e.strerror or e}") from None
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise IdxError(f"{path}: damaged gzip data ({e})") from None
    return raw


def parse_idx(raw, name="<bytes>"):
    """The array held by the (uncompressed) IDX bytes ``raw``."""
    if len(raw) < 4:
        raise IdxError(f"{name}: {len(raw)} bytes, too short for an IDX header")
    if raw[0] != 0 or raw[1] != 0:
        raise IdxError(f"{name}: not an IDX file (magic number {raw[:4].hex()} does not start "
                       "with two zero bytes)")
    code, ndim = raw[2], raw[3]
    if code not in TYPES:
        raise IdxError(f"{name}: unknown IDX type code 0x{code:02x}")
    if ndim == 0:
        raise IdxError(f"{name}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxError(f"{name}: truncated header ({len(raw)} bytes, {ndim} dimensions need "
                       f"{header})")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    dtype = TYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise IdxError(f"{name}: {what}: shape {shape} of {dtype.name} needs {expected} bytes, "
                       f"the file holds {len(raw)}")
    values = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path):
    """The array in the IDX file ``path`` (``.gz`` or not: detected from the bytes)."""
    return parse_idx(_read_bytes(path), name=path)


def find_idx(directory, stem):
    """``directory/stem`` or ``directory/stem.gz``, whichever exists (None if neither)."""
    for name in (stem, stem + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None
