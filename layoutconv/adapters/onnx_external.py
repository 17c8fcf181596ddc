"""ONNX external data: a model's weights in a file beside it (``model.onnx.data``), written and read back safely.

A protobuf message cannot reach 2 GiB, so large ONNX models keep their weights
outside the model: a ``TensorProto`` with ``data_location = EXTERNAL`` and
``external_data`` entries ``location`` (a file name, relative to the model's
directory), ``offset`` and ``length`` (bytes, as decimal strings).

Writing (:class:`DataWriter`).  Each weight of :data:`EXTERNAL_MIN_BYTES` or
more (onnx's own ``size_threshold``) is written to the data file at an offset
that is a multiple of :data:`ALIGNMENT` (``onnx.proto``: "offset values SHOULD
be multiples of 4096 (page size) to enable mmap support"; the gap is zeros);
smaller ones stay inside the model.  Only the names, shapes and offsets are
kept in memory.  The model and its data file are written into a temporary
directory beside the target (:class:`Pair`), verified there, and moved into
place data file first, then the model.

Reading (:func:`load_external`, used by :func:`onnx_adapter._load` for every
``.onnx`` path layoutconv reads).  External data is followed only when every
reference is safe, all checked before a byte is read: ``location`` a plain file
name (no ``/`` or ``\\``, no ``..``, not absolute, no ``:``, no NUL) naming a
regular file (not a symbolic link) in the model's directory; ``offset`` and
``length`` decimal integers with ``offset + length`` inside the file and
``length`` the bytes the tensor's dims and type declare; ranges of one file not
overlapping (one region read twice would multiply the memory a small file
costs); at most :data:`MAX_EXTERNAL_BYTES` in all; only the keys ``location``,
``offset``, ``length`` and ``checksum``.  Only initializers and ``Constant``
tensors of the main graph are followed.  Anything else raises
:class:`~layoutconv.UnsafeFileError` (a missing or short file:
:class:`~layoutconv.FileFormatError`).  A model given as a ``ModelProto`` has no
directory: its external data is refused as before.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper

from .._stream_files import Scratch, read_back_differs, write_all, write_checked
from ..errors import FileFormatError, OutputError, UnsafeFileError, UnsupportedError, fail
from ..record import Record

#: Weights of at least this many bytes go to the data file; smaller ones stay in the model (onnx's ``size_threshold``).
EXTERNAL_MIN_BYTES = 1024
#: Offsets in the data file are multiples of this (``onnx.proto``: the page size, for mmap).
ALIGNMENT = 4096
#: ``save_model`` / ``convert`` to ``.onnx`` store weights as external data on their own from this many weight bytes.
EXTERNAL_ABOVE = 1536 << 20
#: ``to_onnx`` of a graph held in memory refuses more weight bytes than this (protobuf's 2 GiB, less room for the rest).
INLINE_LIMIT = (2 << 30) - (128 << 20)
#: Most bytes of external data read for one model (after every reference is checked against its file).
MAX_EXTERNAL_BYTES = 64 << 30
#: The ``external_data`` keys read (``basepath``, which onnx also knows, would move the directory: refused).
KEYS = ("location", "offset", "length", "checksum")


def data_name(model_name: str) -> str:
    """The data file's name for a model file name: ``model.onnx`` -> ``model.onnx.data``."""
    return f"{model_name}.data"


def plain_name(location: str) -> bool:
    """A file name alone: no directory part, no parent, not absolute, nothing Windows reads as a drive or stream."""
    return (
        bool(location) and location not in (".", "..") and not any(c in location for c in "/\\:\0")
        and not os.path.isabs(location) and os.path.basename(location) == location
    )


# -- sizes -------------------------------------------------------------------------------------------


def record_bytes(record: Any) -> int:
    """Bytes of every array a record holds (its sub-records' too)."""
    total = 0
    for name in getattr(record, "ARRAYS", ()):
        value = getattr(record, name, None)
        if isinstance(value, np.ndarray):
            total += value.nbytes
    for name in getattr(record, "FIELDS", ()):
        value = getattr(record, name, None)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, Record):
                total += record_bytes(v)
    return total


def weight_bytes(graph: Any) -> int:
    """Bytes of all the weights of a :class:`~layoutconv.graph.Graph` (each layer once)."""
    return sum(record_bytes(r) for r in graph.layers.values())


# -- writing -----------------------------------------------------------------------------------------


def external_tensor(name: str, dtype: np.dtype, shape: tuple[int, ...], location: str, offset: int, length: int) -> TensorProto:
    """A ``TensorProto`` whose data is ``length`` bytes at ``offset`` of ``location``."""
    t = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(np.dtype(dtype).newbyteorder("=")), dims=list(shape))
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def external_fields(t: TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


class DataWriter:
    """Write weights to an ONNX external data file one at a time (module docs); :meth:`store` is a builder's ``store``."""

    def __init__(self, path: str | os.PathLike[str], location: str) -> None:
        self.path, self.location = os.fspath(path), location
        self.tensors: dict[str, TensorProto] = {}  # the name each emitter asked for -> its initializer
        self.largest = self.total = 0
        self._end = 0
        self.external = True  # False: every weight stays in the model (a writer that only records)
        self._scratch = Scratch()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)

    def store(self, requested: str, name: str, array: np.ndarray) -> TensorProto:
        from .onnx_adapter import _tensor

        array = np.asarray(array)
        if array.nbytes < EXTERNAL_MIN_BYTES or not self.external:
            t = _tensor(name, array)
        else:
            offset = -(-self._end // ALIGNMENT) * ALIGNMENT
            # in chunks (a transposed view is never copied whole), each read back from the file and compared
            written, same = write_checked(array, offset, self._write, self._fd, self._scratch.chunk, self._scratch.back, self._scratch.spare)
            done = self._end = offset + written
            t = external_tensor(name, array.dtype, array.shape, self.location, offset, array.nbytes)
            if done - offset != array.nbytes or not same:
                raise read_back_differs(name, repr(self.location))
            self.largest = max(self.largest, array.nbytes)
            self.total += array.nbytes
        self.tensors[requested] = t
        return t

    def _write(self, chunk: np.ndarray, at: int) -> None:
        write_all(self._fd, memoryview(chunk), at)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Pair:
    """A model and its data file under their final names in a hidden temporary directory beside the target.

    :meth:`commit` moves the data file into place, then the model (each ``os.replace`` is atomic; a reader
    never finds the new model without its data).  :meth:`cleanup` removes whatever is left of the directory.
    """

    def __init__(self, final: Path, overwrite: bool) -> None:
        self.final = final
        self.name = final.name
        self.data_name = data_name(final.name)
        if not plain_name(self.data_name):
            raise fail(UnsupportedError, "The output's name cannot name an ONNX external data file", "a plain file name",
                       f"{final.name!r}", "Choose another output name.")
        self.final_data = final.parent / self.data_name
        if (self.final_data.exists() or self.final_data.is_symlink()) and not overwrite:
            raise fail(
                OutputError, f"The external data file {str(self.final_data)!r} already exists",
                "a path that does not exist yet, or overwrite=True (--force on the command line)", "a file",
                "Nothing was written.",
            )
        if self.final_data.is_dir() and not self.final_data.is_symlink():
            raise fail(OutputError, f"{str(self.final_data)!r} is a directory", "a free name for the external data file",
                       "a directory", "Nothing was written.")
        try:
            self.dir = tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent)
        except OSError as exc:
            raise fail(OutputError, f"Cannot write into {str(final.parent)!r}", "a writable directory", f"{exc.strerror or exc}",
                       "Choose another output path; nothing was written.") from None
        self.model = os.path.join(self.dir, self.name)
        self.data = os.path.join(self.dir, self.data_name)

    def commit(self, with_data: bool = True) -> None:
        """Move the data file (``with_data``), then the model, into place."""
        had_data = os.path.lexists(self.final_data)
        try:
            if with_data:
                os.replace(self.data, self.final_data)
            os.replace(self.model, self.final)
        except OSError as exc:
            if with_data and not had_data and not os.path.lexists(self.data) and os.path.lexists(self.final_data):
                os.unlink(self.final_data)  # ours, moved before the model failed to move
            raise fail(OutputError, f"Cannot move the verified files to {str(self.final)!r}", "a writable path",
                       f"{exc.strerror or exc}", "Nothing was written.") from None

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def save(model: onnx.ModelProto, path: str) -> None:
    """Serialize a model whose large weights are already external stubs (no data in the message)."""
    with open(path, "xb") as f:
        f.write(model.SerializeToString())


def check_path(path: str, what: str) -> None:
    """``onnx.checker.check_model`` on the file (it follows the external data: present, inside the directory)."""
    try:
        onnx.checker.check_model(path, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as exc:
        raise fail(UnsupportedError, f"The ONNX checker refuses {what}", "a model the ONNX checker accepts",
                   f"the checker's complaint: {str(exc)[:600]}", "Nothing was written.") from None


# -- reading -----------------------------------------------------------------------------------------


def _tensors(model: onnx.ModelProto) -> Iterator[tuple[TensorProto, bool]]:
    """Every tensor of the model, and whether layoutconv reads it (main-graph initializers and node tensors)."""

    def attributes(nodes: Any, top: bool) -> Iterator[tuple[TensorProto, bool]]:
        for n in nodes:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    yield a.t, top
                for t in a.tensors:
                    yield t, False
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    yield from graph(sub, False)

    def graph(g: onnx.GraphProto, top: bool) -> Iterator[tuple[TensorProto, bool]]:
        for t in g.initializer:
            yield t, top
        for s in g.sparse_initializer:
            yield s.values, False
            yield s.indices, False
        yield from attributes(g.node, top)

    yield from graph(model.graph, True)
    for f in model.functions:
        yield from attributes(f.node, False)


def has_external(model: onnx.ModelProto) -> bool:
    return any(t.data_location == TensorProto.EXTERNAL for t, _ in _tensors(model))


def _refuse(t: TensorProto, what: str, received: str, cls: type = UnsafeFileError) -> Exception:
    return fail(
        cls, f"Tensor {t.name!r} {what}", "external data in a regular file beside the model, named by a plain file name, "
        "inside that file", received,
        "layoutconv follows external data only when it is safe (docs/security.md); check where the file came from.",
    )


def _number(t: TensorProto, key: str, value: str | None, default: int | None) -> int | None:
    if value is None:
        return default
    if not value.isascii() or not value.isdigit() or len(value) > 20:
        raise _refuse(t, f"has an external-data {key} that is not a decimal number", f"{key}={value[:40]!r}")
    return int(value)


def plan(model: onnx.ModelProto, base_dir: str) -> list[tuple[TensorProto, str, int, int]]:
    """Every external tensor checked against its file (module docs): ``(tensor, path, offset, length)``; nothing read."""
    from .onnx_adapter import _READ_TYPES

    out: list[tuple[TensorProto, str, int, int]] = []
    files: dict[str, os.stat_result] = {}
    ranges: dict[str, list[tuple[int, int, str]]] = {}
    total = 0
    for t, read in _tensors(model):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        if not read:
            raise _refuse(t, "keeps its data in an external file where layoutconv does not read it",
                          "external data in a subgraph, a function, a sparse tensor or a list of tensors")
        fields: dict[str, str] = {}
        for e in t.external_data:
            if e.key not in KEYS or e.key in fields:
                raise _refuse(t, "has an external-data key layoutconv does not read",
                              f"{'a repeated' if e.key in fields else 'the'} key {e.key[:40]!r} (read: {', '.join(KEYS)})")
            fields[e.key] = e.value
        location = fields.get("location", "")
        if not plain_name(location):
            raise _refuse(t, "names its external data file by something other than a plain file name in the model's directory",
                          f"data_location=EXTERNAL, location={location[:200]!r}")
        if t.data_type not in _READ_TYPES or t.HasField("segment") or t.HasField("raw_data"):
            raise _refuse(t, "is external data of a kind layoutconv does not read",
                          f"element type {t.data_type}{', a segment' if t.HasField('segment') else ''}"
                          f"{', raw_data as well' if t.HasField('raw_data') else ''}", UnsupportedError)
        if any(d < 0 for d in t.dims):
            raise _refuse(t, "has a negative dimension", f"dims {list(t.dims)}", FileFormatError)
        count = 1
        for d in t.dims:
            count *= int(d)
        expected = count * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        path = os.path.join(base_dir, location)
        if location not in files:
            try:
                st = os.lstat(path)
            except OSError as exc:
                raise _refuse(t, "keeps its data in an external file that cannot be found", f"{location!r}: {exc.strerror or exc}",
                              FileFormatError) from None
            if stat.S_ISLNK(st.st_mode):
                raise _refuse(t, "keeps its data in a symbolic link", f"location={location!r} is a symbolic link")
            if not stat.S_ISREG(st.st_mode):
                raise _refuse(t, "keeps its data in something that is not a regular file", f"location={location!r}")
            files[location] = st
        size = files[location].st_size
        offset = _number(t, "offset", fields.get("offset"), 0) or 0
        length = _number(t, "length", fields.get("length"), None)
        if offset > size:
            raise _refuse(t, "points past the end of its external data file", f"offset {offset} in {location!r} of {size} bytes")
        if length is None:
            length = size - offset
        if offset + length > size:
            raise _refuse(t, "points past the end of its external data file",
                          f"offset {offset} + length {length} in {location!r} of {size} bytes")
        if length != expected:
            raise _refuse(t, "does not hold the data its dims declare", f"length {length} for dims {list(t.dims)} "
                          f"({expected} bytes)", FileFormatError)
        total += length
        if total > MAX_EXTERNAL_BYTES:
            raise _refuse(t, "takes the model's external data beyond the cap", f"more than {MAX_EXTERNAL_BYTES} bytes in all")
        ranges.setdefault(location, []).append((offset, length, t.name))
        out.append((t, path, offset, length))
    for location, spans in ranges.items():
        spans.sort()
        for (o1, n1, a), (o2, _, b) in zip(spans, spans[1:]):
            if o1 + n1 > o2:
                raise fail(
                    UnsafeFileError, f"Tensors {a!r} and {b!r} share bytes of the external data file {location!r}",
                    "each tensor its own bytes", f"{a!r} at {o1}+{n1}, {b!r} at {o2}",
                    "layoutconv follows external data only when it is safe (docs/security.md); check where the file came from.",
                )
    return out


def load_external(model: onnx.ModelProto, base_dir: str) -> None:
    """Read every external tensor of ``model`` (after :func:`plan` checked them all) into its ``raw_data``."""
    for t, path, offset, length in plan(model, base_dir):
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            raise _refuse(t, "keeps its data in an external file that cannot be opened", f"{exc.strerror or exc}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size < offset + length:
                raise _refuse(t, "keeps its data in an external file that changed while it was read", f"{os.path.basename(path)!r}")
            with os.fdopen(os.dup(fd), "rb", buffering=0) as f:
                f.seek(offset)
                data = f.read(length) if length else b""
            if len(data) != length:
                raise _refuse(t, "keeps its data in an external file that ends early", f"{len(data)} of {length} bytes", FileFormatError)
        finally:
            os.close(fd)
        t.raw_data = data
        del data
        t.data_location = TensorProto.DEFAULT
        del t.external_data[:]
