"""Read a ``.npy`` file safely: its header is checked against the file's bytes and a cap before anything is allocated.

>>> x = read_npy("input.npy", "input")          # doctest: +SKIP

The rules (documented in ``docs/security.md``):

* only the ``.npy`` format (magic ``\\x93NUMPY``, versions 1.0 to 3.0);
  ``.npz`` archives, pickles and anything else are refused;
* the header is at most ``MAX_HEADER_BYTES`` long (checked before it is read)
  and is parsed by :mod:`numpy.lib.format` as a literal, never as code;
* only plain numeric dtypes: floating point and (un)signed integers.
  Structured, object, string, void, bool, complex and datetime dtypes are
  refused, so nothing is ever unpickled (``allow_pickle`` stays ``False``);
* the declared size (elements x item size) must equal the number of bytes
  after the header, and be at most ``MAX_NPY_BYTES``.
"""

from __future__ import annotations

import math
import os
import struct
import tokenize
import warnings
from typing import Any, BinaryIO

import numpy as np

from .errors import FileFormatError, UnsafeFileError, fail

#: Largest array read from one ``.npy`` file, in bytes: one layer's input, output or kernel is far smaller.
MAX_NPY_BYTES = 1 << 30
#: Largest header accepted, in bytes (numpy's own default limit).
MAX_HEADER_BYTES = 10_000
#: dtype kinds accepted: floating point, signed and unsigned integers.
PLAIN_KINDS = "fiu"

_REMEDY = "Save a float or integer array with numpy.save(path, array)."
_HEADER_LENGTH = {(1, 0): "<H", (2, 0): "<I", (3, 0): "<I"}


def read_npy(path: str | os.PathLike[str], what: str = "array") -> np.ndarray:
    """The array stored in the ``.npy`` file ``path``, or a :class:`~layoutconv.FileFormatError` naming it."""
    label = f"the {what} from {os.fspath(path)!r}"
    if not os.path.isfile(path):
        kind = "a directory" if os.path.isdir(path) else "no such file"
        raise fail(FileFormatError, f"Cannot read {label}", "an existing .npy file", kind)
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as fh:
            shape, fortran, dtype = _header(fh, label)
            offset = fh.tell()
            count = _declared_count(shape, dtype, label)
            if count * dtype.itemsize != size - offset:
                raise fail(
                    FileFormatError,
                    f"Cannot read {label}: its header does not match its size",
                    f"{count * dtype.itemsize} bytes of data (shape {shape}, dtype {dtype}) after the {offset}-byte header",
                    f"{size - offset} bytes",
                    "The file is truncated or corrupt; save it again.",
                )
            flat = np.fromfile(fh, dtype=dtype, count=count)
    except OSError as exc:
        raise fail(FileFormatError, f"Cannot read {label}", "a readable file", f"{exc.strerror or exc}") from None
    if flat.size != count:  # the file changed under us
        raise fail(FileFormatError, f"Cannot read {label}", f"{count} elements", f"{flat.size}")
    return flat.reshape(shape, order="F" if fortran else "C")


def _header(fh: BinaryIO, label: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Magic, version and header dict of an open ``.npy`` file; the file is left at the first data byte."""
    from numpy.lib import format as npformat

    prefix = npformat.MAGIC_PREFIX
    head = fh.read(len(prefix) + 2)
    if not head.startswith(prefix):
        zipped = " (a zip archive: .npz files are not read)" if head.startswith(b"PK") else ""
        raise fail(
            FileFormatError,
            f"Cannot read {label}: it is not a .npy file",
            f"a file starting with {prefix!r}",
            f"a file starting with {head[:8]!r}{zipped}",
            _REMEDY,
        )
    try:
        version = (head[len(prefix)], head[len(prefix) + 1]) if len(head) == len(prefix) + 2 else None
        if version not in _HEADER_LENGTH:
            raise ValueError(f"unknown .npy format version {version}")
        length_format = _HEADER_LENGTH[version]
        raw = fh.read(struct.calcsize(length_format))
        if len(raw) != struct.calcsize(length_format):
            raise EOFError("the file ends inside the header")
        (length,) = struct.unpack(length_format, raw)
        if length > MAX_HEADER_BYTES:  # checked before numpy reads and parses that many bytes
            raise ValueError(f"the header declares {length} bytes, more than {MAX_HEADER_BYTES}")
        fh.seek(len(prefix) + 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy warns about headers written by Python 2
            reader = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
            shape, fortran, dtype = reader(fh, max_header_size=MAX_HEADER_BYTES)
    except (ValueError, TypeError, SyntaxError, EOFError, OverflowError, RecursionError, tokenize.TokenError) as exc:
        raise fail(
            FileFormatError,
            f"Cannot read {label}: its .npy header is invalid",
            "a header written by numpy.save (a dict literal with 'descr', 'fortran_order' and 'shape')",
            f"{type(exc).__name__}: {exc}",
            _REMEDY,
        ) from None
    if dtype.kind not in PLAIN_KINDS or dtype.fields is not None or dtype.subdtype is not None or dtype.hasobject:
        pickled = " (Python objects stored as a pickle, never loaded)" if dtype.hasobject else ""
        raise fail(
            UnsafeFileError if dtype.hasobject else FileFormatError,
            f"Cannot read {label}: unsupported dtype",
            "a plain float or integer array",
            f"dtype {dtype}{pickled}",
            _REMEDY,
        )
    return tuple(shape), bool(fortran), dtype


def _declared_count(shape: tuple[Any, ...], dtype: np.dtype, label: str) -> int:
    """The number of elements the header declares, refused above :data:`MAX_NPY_BYTES`."""
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in shape):
        raise fail(FileFormatError, f"Cannot read {label}", "a shape of non-negative integers", f"shape {shape}")
    count = math.prod(shape)  # Python integers: no overflow
    if count * dtype.itemsize > MAX_NPY_BYTES:
        raise fail(
            UnsafeFileError,
            f"Cannot read {label}: it declares too large an array",
            f"at most {MAX_NPY_BYTES} bytes (layoutconv's cap for one .npy array)",
            f"{count * dtype.itemsize} bytes (shape {shape}, dtype {dtype})",
            "One layer's input, output or kernel fits well under the cap; pass a smaller array.",
        )
    return count
