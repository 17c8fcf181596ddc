"""layoutconv._npy.read_npy: what numpy.save writes comes back unchanged; everything else is refused before allocation."""

from __future__ import annotations

import numpy as np
import pytest

from layoutconv import FileFormatError, UnsafeFileError
from layoutconv._npy import MAX_NPY_BYTES, read_npy

ARRAYS = {
    "float32_3d": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
    "float64_fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    "float16": np.linspace(-1, 1, 7).astype(np.float16),
    "big_endian": np.arange(6, dtype=">f4"),
    "int64_scalar": np.array(7, np.int64),
    "uint8": np.arange(5, dtype=np.uint8),
    "empty": np.zeros((0, 3), np.float32),
}


@pytest.mark.parametrize("name", list(ARRAYS))
def test_round_trip(tmp_path, name):
    array = ARRAYS[name]
    np.save(tmp_path / "a.npy", array)
    back = read_npy(tmp_path / "a.npy")
    assert back.dtype == array.dtype and back.shape == array.shape
    assert back.tobytes(order="A") == array.tobytes(order="A") and np.array_equal(back, array)


def header(text: str) -> bytes:
    padded = text + " " * (63 - (10 + len(text)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(padded).to_bytes(2, "little") + padded.encode()


@pytest.mark.parametrize(
    "content, cls, words",
    [
        pytest.param(header("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }") + b"cos\nsystem\n(S'true'\ntR.",
                     UnsafeFileError, ["dtype object", "never loaded"], id="object-dtype"),
        pytest.param(header("{'descr': '<f8', 'fortran_order': False, 'shape': (10**12,), }") + bytes(16),
                     FileFormatError, ["header is invalid"], id="shape-expression"),
        pytest.param(header("{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000,), }") + bytes(16),
                     UnsafeFileError, ["too large", str(MAX_NPY_BYTES)], id="declares-8-terabytes"),
        pytest.param(header("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }") + bytes(12),
                     FileFormatError, ["does not match its size", "16 bytes", "12 bytes"], id="short-data"),
        pytest.param(header("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }") + bytes(20),
                     FileFormatError, ["does not match its size"], id="trailing-bytes"),
        pytest.param(header("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }") + bytes(8),
                     FileFormatError, ["unsupported dtype"], id="structured"),
        pytest.param(header("{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }") + bytes(16),
                     FileFormatError, ["unsupported dtype", "complex64"], id="complex"),
        pytest.param(header("{'descr': '|b1', 'fortran_order': False, 'shape': (2,), }") + bytes(2),
                     FileFormatError, ["unsupported dtype", "bool"], id="bool"),
        pytest.param(b"\x93NUMPY\x01\x00\xff\xff" + b" " * 100, FileFormatError, ["65535 bytes"], id="huge-header"),
        pytest.param(b"\x93NUMPY\x09\x00" + bytes(100), FileFormatError, ["version"], id="unknown-version"),
        pytest.param(b"\x93NUMPY\x01", FileFormatError, ["header is invalid"], id="cut-in-magic"),
        pytest.param(b"PK\x03\x04" + bytes(100), FileFormatError, [".npz"], id="npz"),
        pytest.param(b"not an array at all", FileFormatError, ["not a .npy file"], id="text"),
    ],
)
def test_refused(tmp_path, content, cls, words):
    path = tmp_path / "bad.npy"
    path.write_bytes(content)
    with pytest.raises(cls) as info:
        read_npy(path, "kernel")
    message = str(info.value)
    assert "the kernel from" in message and "bad.npy" in message
    for word in words:
        assert word in message


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileFormatError, match="no such file"):
        read_npy(tmp_path / "missing.npy")
    with pytest.raises(FileFormatError, match="a directory"):
        read_npy(tmp_path)
