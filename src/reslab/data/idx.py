"""The IDX file format of MNIST and Fashion-MNIST: read (gzip or not) with exact checks, and write (for tests).

Layout (http://yann.lecun.com/exdb/mnist/): a 4-byte magic number `00 00 TT NN` (TT the element type, 0x08 for
unsigned bytes; NN the number of dimensions), then NN big-endian uint32 sizes, then the data, row-major.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from reslab.atomic import write_bytes
from reslab.errors import DataError

UBYTE = 0x08  # the only element type Fashion-MNIST uses
_GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: str | Path) -> bytes:
    """The file's content, decompressed when it is gzip (judged by its first bytes, not its name)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    return decompress(raw, path) if raw.startswith(_GZIP_MAGIC) else raw


def decompress(raw: bytes, name: str | Path) -> bytes:
    """gzip data -> its content; DataError names `name` when it is truncated or corrupt."""
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise DataError(f"{name}: truncated gzip file (the compressed data ends early; {len(raw):,} bytes)") from None
    except (gzip.BadGzipFile, zlib.error, OSError) as e:
        raise DataError(f"{name}: corrupt gzip data ({e})") from None


def parse_idx(data: bytes, *, name: str | Path = "<bytes>", ndim: int | None = None) -> np.ndarray:
    """Parse IDX bytes into a read-only uint8 array, checking the magic number and the exact length.

    `ndim`, when given, is the number of dimensions the caller expects (3 for images, 1 for labels).
    """
    if len(data) < 4:
        raise DataError(f"{name}: too short for an IDX file: expected at least 4 bytes, found {len(data)}")
    zero, dtype, found_ndim = struct.unpack_from(">HBB", data)
    if zero != 0 or dtype != UBYTE or (ndim is not None and found_ndim != ndim):
        want = f"{UBYTE:02x}{ndim:02x}" if ndim is not None else f"{UBYTE:02x}.."
        raise DataError(
            f"{name}: not an IDX file of unsigned bytes{'' if ndim is None else f' with {ndim} dimension(s)'}: "
            f"expected magic number 0x0000{want}, found 0x{data[:4].hex()}"
        )
    header = 4 + 4 * found_ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated header: expected {header} bytes, found {len(data)}")
    shape = struct.unpack_from(f">{found_ndim}I", data, 4)
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "trailing data after the items"
        dims = "x".join(f"{s:,}" for s in shape)
        raise DataError(
            f"{name}: {what}: expected {expected:,} bytes ({header}-byte header + {dims} items), found {len(data):,}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(path: str | Path, *, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (gzip or not) into a read-only uint8 array; DataError names the file if anything is wrong."""
    return parse_idx(read_bytes(path), name=path, ndim=ndim)


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(f">HBB{array.ndim}I", 0, UBYTE, array.ndim, *array.shape)
    return header + array.tobytes()


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file, gzip-compressed when the name ends in .gz."""
    path = Path(path)
    data = idx_bytes(array)
    if path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=1, mtime=0)
    return write_bytes(path, data)
