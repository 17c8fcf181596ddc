"""Open HDF5 weight files defensively: check every link and dataset before reading anything.

The rules (documented in ``docs/security.md`` and ``docs/keras-legacy.md``):

* external links are refused (they name another file);
* soft links must resolve, inside the file, through hard links to an existing
  object; dangling soft links and chains through external links are refused;
* datasets with external storage (raw data in other files) and virtual
  datasets (data mapped from other files) are refused;
* a dataset or attribute whose declared size exceeds
  ``64 * file_size + 1 MiB`` bytes is refused (weights are stored at most
  moderately compressed, so a larger declaration is a decompression bomb or a
  corrupt header);
* a group linked twice by hard links (a cycle, or a group reachable by two
  paths) is refused; datasets may be linked more than once;
* at most ``MAX_LINKS`` links are visited;
* before h5py reads a variable-length attribute (a string Keras 2.x and 3
  write with ``str``), or the fill value of a dataset of a variable-length
  type (reading its creation properties converts it), every length its
  descriptors declare must match the global heap object it names
  (:mod:`._h5_headers` parses the object header): HDF5 allocates the declared
  length (up to 4 GiB per string) before it reads the object.  Each global
  heap collection named must also decode the way HDF5 decodes it, each object
  advancing within its collection: HDF5 1.14 loops forever on a free-space
  object of size 0 (``H5HG__cache_heap_deserialize``), in C, where no timeout
  reaches it.  Only collections named by a value that is read are checked:
  HDF5 loads no other (the weights themselves are read only as floats), so the
  file is never scanned whole.

Any other failure of h5py (truncated file, wrong file type, corrupt header)
becomes a :class:`~layoutconv.errors.FileFormatError` naming the file.
h5py is imported inside functions, never at module import.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
from typing import Any, Iterator, NamedTuple

import numpy as np

from ..errors import FileFormatError, LayoutError, UnsafeFileError, UnsupportedError, fail
from ._h5_headers import VLEN, H5Headers

#: A dataset or attribute may declare at most this many bytes per byte of file ...
SIZE_FACTOR = 64
#: ... plus this allowance, so that tiny files may hold small empty-initialised datasets.
SIZE_ALLOWANCE = 1 << 20
#: Links visited before the file is refused as too large to be a weight file.
MAX_LINKS = 1_000_000
#: Soft links followed in a chain before giving up.
MAX_SOFT_DEPTH = 8
#: Attributes split in chunks (``name0``, ``name1``, ...) by Keras: at most this many chunks.
MAX_ATTR_CHUNKS = 10_000

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

_H5_ERRORS = (OSError, KeyError, ValueError, RuntimeError, TypeError, IndexError)


def size_limit(file_size: int) -> int:
    """The largest declared size (bytes) accepted for one dataset or attribute."""
    return SIZE_FACTOR * file_size + SIZE_ALLOWANCE


@contextlib.contextmanager
def guard(label: str, what: str) -> Iterator[None]:
    """Turn h5py's exceptions into a FileFormatError naming the file; let layoutconv errors through."""
    try:
        yield
    except LayoutError:
        raise
    except _H5_ERRORS as exc:
        raise fail(
            FileFormatError,
            f"Cannot read {what} in {label}",
            "a complete, readable HDF5 file",
            f"an h5py error: {exc}",
            "The file may be truncated or corrupt; download or export it again.",
        ) from None


class Span(NamedTuple):
    """An HDF5 file stored inside another file: ``size`` bytes from byte ``offset`` of ``path`` (a stored zip member)."""

    path: str
    offset: int
    size: int


class _SpanFile(io.RawIOBase):
    """A read-only, seekable file over a :class:`Span` (what h5py reads through its file-object driver)."""

    def __init__(self, span: Span) -> None:
        super().__init__()
        self._fd = os.open(span.path, os.O_RDONLY)
        self._offset, self._size, self._pos = span.offset, span.size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = max(0, min(len(view), self._size - self._pos))
        done = 0
        while done < want:
            got = os.preadv(self._fd, [view[done:want]], self._offset + self._pos + done)
            if got <= 0:
                break
            done += got
        self._pos += done
        return done

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


class SafeH5:
    """An HDF5 file opened read-only, checked, and kept open for reading.

    ``source`` is a path, the bytes of an HDF5 file, or a :class:`Span` (an
    HDF5 file stored uncompressed in a zip archive, read in place); ``label``
    names it in messages.

    >>> with SafeH5("weights.h5") as h5:          # doctest: +SKIP
    ...     kernel = h5.dataset("conv1d_1/conv1d_1/kernel:0")
    """

    def __init__(self, source: str | bytes | Span, label: str | None = None) -> None:
        self.label = label or str(source)
        self._source = source
        self.file: Any = None
        self._raw: Any = None
        self._heads: H5Headers | None = None
        if isinstance(source, (bytes, bytearray)):
            self.file_size = len(source)
        elif isinstance(source, Span):
            self.file_size = source.size
        else:
            self.file_size = file_size(source)

    def __enter__(self) -> "SafeH5":
        import h5py

        source = self._source
        if isinstance(source, (bytes, bytearray)):
            head = bytes(source[:8])
        elif isinstance(source, Span):
            head = _read_head(source.path, source.offset) if source.size >= 8 else b""
        else:
            head = _read_head(source)
        if head != HDF5_SIGNATURE:
            raise fail(
                FileFormatError,
                f"{self.label} is not an HDF5 file",
                f"the HDF5 signature {HDF5_SIGNATURE!r} at the start of the file",
                f"{head!r}",
                "Check the file name; Keras weight files end in .h5, .hdf5 or .keras.",
            )
        with guard(self.label, "the HDF5 superblock"):
            if isinstance(source, (bytes, bytearray)):
                self.file = h5py.File(io.BytesIO(bytes(source)), "r")
            elif isinstance(source, Span):
                self._raw = _SpanFile(source)
                try:
                    self.file = h5py.File(self._raw, "r")
                except BaseException:
                    self._raw.close()
                    raise
            else:
                self.file = h5py.File(source, "r", locking=False)
        try:
            check_tree(self.file, self.label, self.file_size, self.headers)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.file is not None:
            with contextlib.suppress(Exception):
                self.file.close()
            self.file = None
        if self._raw is not None:
            self._raw.close()
            self._raw = None
        if self._heads is not None:
            self._heads.close()
            self._heads = None

    def headers(self) -> H5Headers:
        """The file's object headers, parsed on demand (:mod:`._h5_headers`), from the same bytes h5py reads."""
        if self._heads is None:
            source = self._source
            if isinstance(source, (bytes, bytearray)):
                self._heads = H5Headers.of_bytes(bytes(source), self.label)
            elif isinstance(source, Span):
                self._heads = H5Headers.of_file(source.path, self.label, source.offset, source.size)
            else:
                self._heads = H5Headers.of_file(source, self.label, size=self.file_size)
        return self._heads

    # -- reading -----------------------------------------------------------
    def group(self, path: str) -> Any:
        """The group at ``path`` (an error naming the file if it is missing or not a group)."""
        import h5py

        with guard(self.label, f"group {path!r}"):
            obj = self.file.get(path)
        if not isinstance(obj, h5py.Group):
            raise fail(
                FileFormatError,
                f"{self.label} has no group {path!r}",
                "the group Keras writes there",
                "nothing" if obj is None else type(obj).__name__,
                "The file is not the Keras format it claims to be.",
            )
        return obj

    def info(self, path: str) -> tuple[tuple[int, ...], str, str]:
        """``(shape, dtype name, absolute path)`` of the dataset at ``path``, without reading it."""
        dset = self._dataset(path)
        with guard(self.label, f"dataset {path!r}"):
            return tuple(int(n) for n in dset.shape), _dtype_name(dset.dtype), dset.name

    def dataset(self, path: str, into: Any = None) -> np.ndarray:
        """Read a floating-point dataset into a native-byte-order numpy array (values unchanged).

        ``into`` (an object with ``empty(shape, dtype)`` giving a writable
        array) provides the memory for a native-order dataset; otherwise h5py
        allocates it.
        """
        dset = self._dataset(path)
        with guard(self.label, f"dataset {path!r}"):
            dtype = dset.dtype
            if dtype.kind != "f":
                raise fail(
                    FileFormatError,
                    f"Dataset {path!r} in {self.label} does not hold floating-point weights",
                    "float16, float32 or float64",
                    f"dtype {dtype}",
                )
            if into is not None and dtype.isnative and dset.size:
                arr = into.empty(dset.shape, dtype.newbyteorder("="))
                dset.read_direct(arr)
            else:
                arr = np.asarray(dset[()])
        if arr.dtype.byteorder not in ("=", "|"):
            arr = arr.astype(arr.dtype.newbyteorder("="))
        return arr

    def _dataset(self, path: str) -> Any:
        import h5py

        with guard(self.label, f"dataset {path!r}"):
            obj = self.file.get(path)
        if not isinstance(obj, h5py.Dataset):
            raise fail(
                FileFormatError,
                f"{self.label} has no dataset {path!r}",
                "a weight array at the path the file's weight_names attribute lists",
                "nothing" if obj is None else type(obj).__name__,
                "The file is incomplete or not written by Keras.",
            )
        return obj

    def attr(self, obj: Any, name: str, default: Any = None) -> Any:
        """An attribute's value, size-checked first; Keras' chunked attributes (``name0``, ``name1``...) are joined."""
        with guard(self.label, f"attribute {name!r} of {obj.name!r}"):
            attrs = obj.attrs
            if name in attrs:
                return self._read_attr(obj, name)
            if f"{name}0" not in attrs:
                return default
            parts = []
            for i in range(MAX_ATTR_CHUNKS):
                if f"{name}{i}" not in attrs:
                    break
                parts.append(self._read_attr(obj, f"{name}{i}"))
            return np.concatenate([np.atleast_1d(p) for p in parts])

    def _read_attr(self, obj: Any, name: str) -> Any:
        aid = obj.attrs.get_id(name)
        declared = int(np.prod(aid.shape, dtype=np.int64)) * aid.dtype.itemsize if aid.shape is not None else 0
        if declared > size_limit(self.file_size):
            raise fail(
                UnsafeFileError,
                f"Attribute {name!r} of {obj.name!r} in {self.label} declares an absurd size",
                f"at most {SIZE_FACTOR} x file size + 1 MiB = {size_limit(self.file_size)} bytes",
                f"{declared} bytes",
                "The file is corrupt or hostile; it was not read.",
            )
        if aid.dtype.hasobject:  # a variable-length string or sequence (or a reference): HDF5 allocates first
            check_variable_length_attribute(self.headers(), obj, name)
        return obj.attrs[name]

    def strings(self, obj: Any, name: str) -> list[str] | None:
        """An attribute holding one string or a list of strings, decoded; ``None`` when absent."""
        value = self.attr(obj, name)
        if value is None:
            return None
        return [_text(v) for v in np.atleast_1d(np.asarray(value, dtype=object)).ravel() if not _is_number(v)]

    def text(self, obj: Any, name: str) -> str | None:
        """An attribute holding one string, decoded; ``None`` when absent."""
        value = self.attr(obj, name)
        if value is None:
            return None
        if isinstance(value, np.ndarray):
            if value.size != 1:
                raise fail(FileFormatError, f"Attribute {name!r} in {self.label} is not one string", "a string", f"shape {value.shape}")
            value = value.ravel()[0]
        return _text(value)


def file_size(path: str) -> int:
    """The size of a regular file, or a FileFormatError naming it."""
    if not os.path.isfile(path):
        what = "a directory" if os.path.isdir(path) else "no such file"
        raise fail(FileFormatError, f"Cannot open {path}", "a readable weight file", what)
    return os.path.getsize(path)


def _read_head(path: str, offset: int = 0) -> bytes:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(8)
    except OSError as exc:
        raise fail(FileFormatError, f"Cannot open {path}", "a readable file", f"{exc.strerror or exc}") from None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, bool)


def _text(v: Any) -> str:
    if isinstance(v, (bytes, np.bytes_)):
        return bytes(v).decode("utf8", errors="replace")
    return str(v)


def _dtype_name(dtype: np.dtype) -> str:
    return dtype.newbyteorder("=").name if dtype.byteorder not in ("=", "|") else dtype.name


def check_tree(f: Any, label: str, file_size: int, headers: Any) -> None:
    """Visit every link of an open file and refuse what ``docs/keras-legacy.md`` lists as unsafe.

    ``headers()`` gives the file's :class:`H5Headers` (asked for only when a
    dataset has a variable-length type).
    """
    import h5py

    limit = size_limit(file_size)
    stack: list[tuple[str, Any]] = [("/", f)]
    count = 0
    with guard(label, "the HDF5 structure"):
        seen: set[int] = {hash(f["/"].id)}
        group_paths: dict[int, str] = {hash(f["/"].id): "/"}
        while stack:
            path, group = stack.pop()
            for name in group:
                count += 1
                if count > MAX_LINKS:
                    raise fail(
                        UnsafeFileError,
                        f"{label} has too many HDF5 links",
                        f"at most {MAX_LINKS}",
                        "more",
                        "This is not a plausible weight file; it was not read.",
                    )
                full = posixpath.join(path, name)
                link = group.get(name, getlink=True)
                if isinstance(link, h5py.ExternalLink):
                    raise fail(
                        UnsafeFileError,
                        f"{label} contains an HDF5 external link at {full!r}",
                        "links inside the file only",
                        f"a link to {link.path!r} in the file {link.filename!r}",
                        "Reading it would open another file; layoutconv refuses external links.",
                    )
                if isinstance(link, h5py.SoftLink):
                    resolve_soft(f, path, link.path, label, full)
                    continue
                if not isinstance(link, h5py.HardLink):
                    raise fail(
                        UnsafeFileError,
                        f"{label} contains a user-defined HDF5 link at {full!r}",
                        "hard or soft links",
                        f"{type(link).__name__}",
                    )
                obj = group[name]
                key = hash(obj.id)
                if key in seen:
                    if isinstance(obj, h5py.Group):
                        raise fail(
                            UnsafeFileError,
                            f"{label} links the HDF5 group {group_paths.get(key, '?')!r} a second time, at {full!r}",
                            "each group linked once (a tree, as Keras writes it)",
                            "a group reachable by two paths (a hard-link cycle when it contains itself)",
                            "A reader walking the file would visit it again and again; it was not read.",
                        )
                    continue
                seen.add(key)
                if isinstance(obj, h5py.Group):
                    group_paths[key] = full
                    stack.append((full, obj))
                elif isinstance(obj, h5py.Dataset):
                    if obj.dtype.hasobject:  # before check_dataset reads its creation properties
                        check_variable_length_fill(headers(), obj)
                    check_dataset(obj, label, limit)


def header_address(obj: Any, label: str) -> int:
    """The file address of an open h5py object's header (what :class:`H5Headers` parses)."""
    import h5py

    info = h5py.h5o.get_info(obj.id)
    address = getattr(info, "addr", None)
    if not isinstance(address, int):
        raise fail(
            UnsupportedError,
            f"Cannot check the variable-length values of {obj.name!r} in {label}",
            "an h5py that reports object header addresses (h5o.get_info(...).addr, h5py 3)",
            f"h5py {h5py.__version__}",
            "Install h5py 3 or later.",
        )
    return address


def check_variable_length_attribute(heads: H5Headers, obj: Any, name: str) -> None:
    """Refuse the attribute ``name`` of ``obj`` (which h5py reports as variable-length) unless every descriptor
    in its object header matches the heap object it names.  Dense (fractal heap) attribute storage is refused:
    HDF5 would read the attribute from there, where this check does not look."""
    address = header_address(obj, heads.label)
    where = f"attribute {name!r} of {obj.name!r}"
    if heads.dense_attributes(address):
        raise fail(
            UnsafeFileError,
            f"{heads.label} keeps the variable-length {where} in dense attribute storage (a fractal heap)",
            "attributes stored in the object header, as h5py writes them by default (libver='earliest') and every Keras version does",
            f"an attribute info message with a fractal heap in the object header at byte {address}",
            "layoutconv checks a variable-length attribute's declared lengths before h5py reads it and cannot do so "
            "there; copy the file with h5py's default settings (or h5repack) to read it.",
        )
    found = heads.attributes(address).get(name)
    if not found or not all(a.datatype.contains(VLEN) for a in found):
        what = "no attribute message of that name" if not found else f"a {found[0].datatype.name} attribute"
        raise fail(
            UnsafeFileError,
            f"{heads.label} has an {where} that h5py reads as variable-length and its object header does not",
            "a variable-length attribute message of that name in the object header",
            f"{what} in the object header at byte {address}",
            "The file is corrupt or hostile; it was not read.",
        )
    for attr in found:
        heads.check_values(attr.datatype, attr.data, attr.at, attr.elements, f"has the {where}, which")


def check_variable_length_fill(heads: H5Headers, dset: Any) -> None:
    """Refuse a dataset of a variable-length type (which h5py reports as object) whose fill value declares
    lengths its heap objects do not hold: reading the dataset's creation properties converts the fill value."""
    address = header_address(dset, heads.label)
    datatype = heads.datatype(address)
    if datatype is None:
        return  # no datatype message: HDF5 could not have opened it
    for data, at in heads.fill_values(address):
        heads.check_values(datatype, data, at, 1, f"has a fill value for dataset {dset.name!r} that")


def check_dataset(dset: Any, label: str, limit: int) -> None:
    """Refuse virtual datasets, external raw storage and absurd declared sizes."""
    if dset.is_virtual:
        raise fail(
            UnsafeFileError,
            f"{label} contains a virtual dataset at {dset.name!r}",
            "datasets stored in the file itself",
            "a virtual dataset (its data is mapped from other files)",
            "layoutconv refuses virtual datasets.",
        )
    external = dset.id.get_create_plist().get_external_count()
    if external:
        raise fail(
            UnsafeFileError,
            f"{label} contains a dataset with external storage at {dset.name!r}",
            "datasets stored in the file itself",
            f"{external} external raw-data file(s)",
            "Reading it would open other files; layoutconv refuses external storage.",
        )
    declared = int(dset.size or 0) * dset.dtype.itemsize
    if declared > limit:
        raise fail(
            UnsafeFileError,
            f"Dataset {dset.name!r} in {label} declares an absurd size",
            f"at most {SIZE_FACTOR} x file size + 1 MiB = {limit} bytes",
            f"{declared} bytes (shape {tuple(dset.shape)}, dtype {dset.dtype})",
            "The file is corrupt or a decompression bomb; it was not read.",
        )


def resolve_soft(f: Any, base: str, target: str, label: str, where: str, depth: int = 0) -> Any:
    """Resolve a soft link's target through hard links only; refuse dangling or escaping links."""
    import h5py

    def refuse(problem: str) -> LayoutError:
        return fail(
            UnsafeFileError,
            f"{label} contains a soft link at {where!r} that {problem}",
            "soft links to existing objects inside the file",
            f"a link to {target!r}",
            "layoutconv refuses dangling and escaping links.",
        )

    if depth > MAX_SOFT_DEPTH:
        raise refuse(f"starts a chain of more than {MAX_SOFT_DEPTH} soft links")
    path = target if target.startswith("/") else posixpath.join(base, target)
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise refuse("points out of the file ('..')")
    current = f["/"]
    current_path = "/"
    for part in parts:
        if not isinstance(current, h5py.Group):
            raise refuse("is dangling (a path component is not a group)")
        link = current.get(part, getlink=True)
        if link is None:
            raise refuse("is dangling (its target does not exist)")
        if isinstance(link, h5py.ExternalLink):
            raise refuse(f"points out of the file (through an external link to {link.filename!r})")
        if isinstance(link, h5py.SoftLink):
            current = resolve_soft(f, current_path, link.path, label, where, depth + 1)
        elif isinstance(link, h5py.HardLink):
            current = current[part]
        else:
            raise refuse("goes through a user-defined link")
        current_path = posixpath.join(current_path, part)
    return current
