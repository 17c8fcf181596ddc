"""Read what HDF5 will allocate for a variable-length value, before h5py asks HDF5 to read it.

HDF5 stores a variable-length string or sequence (datatype class 9) as a
descriptor: the sequence length (4 bytes), then the global heap ID of its
bytes, the address of a heap collection (size of offsets, 8 bytes in practice)
and the index of an object in it (4 bytes).  Reading one, HDF5 allocates and
zeroes ``length x element size`` bytes first (``H5T__conv_vlen``), then reads
the heap object and only then compares its size with the length
(``H5VL__native_blob_get``): an 11 KB file declaring 2 GiB made h5py allocate
2.3 GB.  Reading a dataset's creation properties converts its fill value the
same way.

This module reads, without h5py and read-only, only what is needed to see those
descriptors first: the superblock (versions 0 to 3), object headers (version 1,
and version 2 ``OHDR`` with ``OCHK`` continuation chunks), their attribute
(0x000C, versions 1 to 3), attribute info (0x0015), datatype (0x0003, every
class), fill value (0x0004, 0x0005) and continuation (0x0010) messages, and
global heap collections.  :class:`H5Headers` checks every descriptor of an
attribute, or of a dataset's fill value, against the heap object it names:
the object must exist and hold exactly ``length x element size`` bytes (what
HDF5 checks after allocating), and all of one value's descriptors together may
claim at most the file's size.  What it cannot check it refuses, naming it:
attributes in dense storage (a fractal heap; h5py's default
``libver='earliest'`` never writes one, and no Keras file checked has one), shared (SOHM) messages, a
variable-length type inside a compound or another variable-length type, and
references.

Every structure is bounded before it is followed: header chunks inside the
file, at most :data:`MAX_CHUNKS` of them and no chunk visited twice (a
continuation loop), at most :data:`MAX_MESSAGES` messages and
:data:`MAX_HEADER_BYTES` bytes per header, datatypes nested at most
:data:`MAX_TYPE_DEPTH` deep, at most :data:`MAX_HEAP_OBJECTS` objects stepped
through per heap collection.  A violation is an
:class:`~layoutconv.errors.UnsafeFileError` that names the file, the object
and what was found.  Nothing here imports h5py.

>>> import io, h5py                                   # doctest: +SKIP
>>> buf = io.BytesIO()                                # doctest: +SKIP
>>> with h5py.File(buf, "w") as f:                    # doctest: +SKIP
...     f.attrs["backend"] = "tensorflow"
>>> heads = H5Headers.of_bytes(buf.getvalue(), "weights.h5")     # doctest: +SKIP
>>> heads.attributes(heads.superblock.root)["backend"][0].datatype.cls   # doctest: +SKIP
9
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple

from ..errors import UnsafeFileError, fail

#: Chunks (the first plus its continuations) of one object header.
MAX_CHUNKS = 1_000
#: Messages in one object header, over all its chunks (version 1 counts them in 2 bytes: 65,535 at most).
MAX_MESSAGES = 100_000
#: Bytes of one object header, over all its chunks (a message holds at most 64 KiB: Keras splits a long
#: ``layer_names`` into parts that fit one each, so a header stays far below).
MAX_HEADER_BYTES = 64 << 20
#: Nesting of datatypes (a vlen of an array of a compound ...): h5py writes 2 or 3 levels.
MAX_TYPE_DEPTH = 16
#: Objects stepped through in one global heap collection (an object index has 16 bits).
MAX_HEAP_OBJECTS = 1 << 16

ATTRIBUTE, ATTRIBUTE_INFO, CONTINUATION, DATATYPE, FILL_OLD, FILL = 0x000C, 0x0015, 0x0010, 0x0003, 0x0004, 0x0005
VLEN, ARRAY, COMPOUND, ENUM, REFERENCE = 9, 10, 6, 8, 7
CLASS_NAMES = ("fixed-point", "floating-point", "time", "string", "bitfield", "opaque", "compound", "reference",
               "enumeration", "variable-length", "array")  # fmt: skip

_MSG_SHARED = 0x02  # object header message flag: the message is stored elsewhere (a shared-message heap)


def _u16(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 2], "little")


class Superblock(NamedTuple):
    version: int
    offsets: int  # "size of offsets": bytes of a file address
    lengths: int  # "size of lengths": bytes of a size
    root: int  # address of the root group's object header


class Message(NamedTuple):
    type: int
    flags: int
    data: bytes
    at: int  # file position of ``data``


class Datatype(NamedTuple):
    """One decoded datatype: what is needed to find variable-length descriptors in data of this type."""

    cls: int  # 0..10 (CLASS_NAMES)
    version: int
    size: int  # declared bytes of one element
    bits: int  # the class bit field (vlen: 0 sequence, 1 string)
    base: "Datatype | None" = None  # of a vlen, array or enumeration
    count: int = 1  # elements of an array
    members: "tuple[Datatype, ...]" = ()  # of a compound

    def contains(self, cls: int) -> bool:
        return self.cls == cls or any(t.contains(cls) for t in (self.base, *self.members) if t is not None)

    @property
    def name(self) -> str:
        kind = CLASS_NAMES[self.cls] if self.cls < len(CLASS_NAMES) else f"class {self.cls}"
        if self.cls == VLEN:
            if self.bits & 0x0F == 1:
                return "variable-length string"
            return f"variable-length sequence of {self.base.name if self.base else '?'}"
        if self.cls == ARRAY and self.base is not None:
            return f"array of {self.count} {self.base.name}"
        return kind


class Attribute(NamedTuple):
    name: str
    version: int
    datatype: Datatype
    shape: tuple[int, ...] | None  # None: a null dataspace (no elements)
    data: bytes  # the raw elements, as stored (descriptors for variable-length types)
    at: int  # file position of ``data``

    @property
    def elements(self) -> int:
        if self.shape is None:
            return 0
        n = 1
        for d in self.shape:
            n *= d
        return n


class Descriptor(NamedTuple):
    """A variable-length element as stored: its length, and the global heap object holding its bytes."""

    length: int  # elements of the base type (bytes, for a string)
    collection: int  # address of the global heap collection; 0 for a null (empty) value
    index: int  # object index in the collection
    at: int  # file position of the descriptor


class _Bad(Exception):
    """Raised inside the parser; :class:`H5Headers` turns it into an UnsafeFileError naming file and object."""

    def __init__(self, problem: str, expected: str, received: str) -> None:
        super().__init__(problem)
        self.problem, self.expected, self.received = problem, expected, received


class _Cursor:
    """Little-endian reads from one message's bytes; running off the end is a :class:`_Bad`."""

    def __init__(self, data: bytes, what: str, start: int = 0) -> None:
        self.data, self.what, self.pos = data, what, start

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _Bad(f"has a {self.what} that runs past its end", f"{self.what} fields inside its {len(self.data)} bytes",
                       f"{n} more bytes needed at byte {self.pos}")  # fmt: skip
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little")

    def skip(self, n: int) -> None:
        self.take(n)

    def left(self) -> int:
        return len(self.data) - self.pos


class _FileBytes:
    """``read(pos, n)`` of an HDF5 file held in memory, or in a file (at an offset: a zip member), through a
    64 KiB window so that stepping through small structures costs one ``pread`` per window."""

    WINDOW = 64 << 10

    def __init__(self, size: int, data: bytes | None = None, path: str | None = None, offset: int = 0) -> None:
        self.size, self._data, self._path, self._offset = size, data, path, offset
        self._fd: int | None = None
        self._window: tuple[int, bytes] = (0, b"")

    def read(self, pos: int, n: int) -> bytes:
        """Up to ``n`` bytes from ``pos`` (fewer at the end of the file)."""
        if pos < 0 or n <= 0 or pos >= self.size:
            return b""
        n = min(n, self.size - pos)
        if self._data is not None:
            return bytes(self._data[pos : pos + n])
        start, held = self._window
        if start <= pos and pos + n <= start + len(held):
            return held[pos - start : pos - start + n]
        if n > self.WINDOW:
            return self._pread(pos, n)
        held = self._pread(pos, min(self.WINDOW, self.size - pos))
        self._window = (pos, held)
        return held[:n]

    def _pread(self, pos: int, n: int) -> bytes:
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDONLY)  # type: ignore[arg-type]
        out = bytearray()
        while len(out) < n:
            got = os.pread(self._fd, n - len(out), self._offset + pos + len(out))
            if not got:
                break
            out += got
        return bytes(out)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class H5Headers:
    """The object headers, attributes and heap objects of one HDF5 file, parsed on demand and bounded.

    ``read(pos, n)`` returns up to ``n`` bytes of the file from ``pos``;
    ``size`` is the file's size; ``label`` names it in messages.
    """

    def __init__(self, read: Callable[[int, int], bytes], size: int, label: str, close: Callable[[], None] | None = None) -> None:
        self._read, self.size, self.label, self._close = read, size, label, close
        self._superblock: Superblock | None = None
        self._heaps: dict[int, dict[int, int]] = {}  # collection address -> {object index: size}
        self._parsed: dict[int, list[Message]] = {}  # the last few object headers parsed, by address

    @classmethod
    def of_bytes(cls, data: bytes, label: str) -> "H5Headers":
        source = _FileBytes(len(data), data=data)
        return cls(source.read, source.size, label)

    @classmethod
    def of_file(cls, path: str, label: str, offset: int = 0, size: int | None = None) -> "H5Headers":
        """The HDF5 file ``path``, or the ``size`` bytes from ``offset`` of it (an uncompressed zip member)."""
        total = os.path.getsize(path) - offset if size is None else size
        source = _FileBytes(total, path=path, offset=offset)
        return cls(source.read, source.size, label, close=source.close)

    def close(self) -> None:
        if self._close is not None:
            self._close()

    # -- refusing ---------------------------------------------------------------
    def _refuse(self, where: str, bad: _Bad) -> Exception:
        return fail(
            UnsafeFileError,
            f"{self.label} {where} {bad.problem}",
            bad.expected,
            bad.received,
            "The file is corrupt or hostile; h5py was not asked to read it.",
        )

    def _exact(self, pos: int, n: int, what: str) -> bytes:
        if pos < 0 or n < 0 or pos + n > self.size:
            raise _Bad(f"points outside the file ({what})", f"{what} inside the file's {self.size} bytes",
                       f"{n} bytes at byte {pos}")  # fmt: skip
        data = self._read(pos, n)
        if len(data) != n:
            raise _Bad(f"points past the end of the file ({what})", f"{n} bytes at byte {pos}", f"{len(data)} bytes")
        return data

    # -- superblock -------------------------------------------------------------
    @property
    def superblock(self) -> Superblock:
        if self._superblock is None:
            try:
                self._superblock = self._parse_superblock()
            except _Bad as bad:
                raise self._refuse("has a superblock that", bad) from None
        return self._superblock

    def _parse_superblock(self) -> Superblock:
        head = self._read(0, 128)
        if head[:8] != b"\x89HDF\r\n\x1a\n" or len(head) < 9:
            raise _Bad("does not start with the HDF5 signature", "the HDF5 signature at byte 0", repr(head[:8]))
        version = head[8]
        if version in (0, 1):
            sizes_at, fixed = 13, 24 if version == 0 else 28  # versions, sizes, group K values, flags (+ indexed storage K)
        elif version in (2, 3):
            sizes_at, fixed = 9, 12  # version, sizes, flags
        else:
            raise _Bad("has an unknown version", "superblock version 0, 1, 2 or 3", f"version {version}")
        cur = _Cursor(head, "superblock")
        cur.skip(sizes_at)
        offsets, lengths = cur.uint(1), cur.uint(1)
        if offsets not in (2, 4, 8) or lengths not in (2, 4, 8):
            raise _Bad("declares unusual address sizes", "size of offsets and of lengths 2, 4 or 8",
                       f"{offsets} and {lengths}")  # fmt: skip
        cur.pos = fixed
        base = cur.uint(offsets)
        if version in (0, 1):
            cur.skip(3 * offsets)  # free-space info, end of file, driver info addresses
            cur.skip(offsets)  # the root group's symbol table entry: link name offset, then ...
            root = cur.uint(offsets)  # ... its object header address
        else:
            cur.skip(2 * offsets)  # superblock extension, end of file addresses
            root = cur.uint(offsets)
        if base != 0:
            # with the signature at byte 0 every address is relative to 0; a file that says otherwise is read
            # by HDF5 one way or the other, and this parser would not know which
            raise _Bad("declares a base address other than 0", "base address 0 (the superblock at the start of the file)",
                       f"base address {base}")  # fmt: skip
        return Superblock(version, offsets, lengths, root)

    # -- object headers -----------------------------------------------------------
    def messages(self, address: int) -> list[Message]:
        """Every message of the object header at ``address``, over all its chunks, in the order HDF5 reads them."""
        if address not in self._parsed:
            try:
                parsed = self._messages(address)
            except _Bad as bad:
                raise self._refuse(f"has an object header at byte {address} that", bad) from None
            if len(self._parsed) >= 8:
                del self._parsed[next(iter(self._parsed))]
            self._parsed[address] = parsed
        return self._parsed[address]

    def _messages(self, address: int) -> list[Message]:
        sb = self.superblock
        undefined = (1 << (8 * sb.offsets)) - 1
        first = self._exact(address, 4, "object header")
        if first == b"OHDR":
            version, (start, size, flags) = 2, self._v2_prefix(address)
        elif first[0] == 1:
            # version 1, reserved, number of messages (HDF5 tolerates a wrong count: not checked), reference
            # count, size of the first chunk, 4 bytes of padding; the messages start 16 bytes in
            prefix = _Cursor(self._exact(address, 16, "object header prefix"), "object header prefix")
            prefix.skip(8)
            version, start, size, flags = 1, address + 16, prefix.uint(4), 0
        else:
            raise _Bad("is not an object header", "version 1, or the signature 'OHDR'", f"bytes {first!r}")
        chunks = [(start, size)]
        out: list[Message] = []
        visited: set[int] = set()
        total = 0
        i = 0
        while i < len(chunks):
            start, size = chunks[i]
            if start in visited:
                raise _Bad("continues into a chunk it has already read (a loop)", "each continuation chunk once",
                           f"chunk at byte {start} again")  # fmt: skip
            visited.add(start)
            total += size
            if total > MAX_HEADER_BYTES:
                raise _Bad("is too large", f"at most {MAX_HEADER_BYTES} bytes in all its chunks", f"{total} bytes or more")
            data = self._exact(start, size, "object header chunk")
            for msg in self._chunk_messages(data, start, version, flags, i > 0):
                if len(out) >= MAX_MESSAGES:
                    raise _Bad("has too many messages", f"at most {MAX_MESSAGES}", "more")
                out.append(msg)
                if msg.type == CONTINUATION:
                    cur = _Cursor(msg.data, "continuation message")
                    where, length = cur.uint(sb.offsets), cur.uint(sb.lengths)
                    if where == undefined or where + length > self.size or length <= 0:
                        raise _Bad("has a continuation outside the file", "a chunk inside the file",
                                   f"{length} bytes at byte {where}")  # fmt: skip
                    if len(chunks) >= MAX_CHUNKS:
                        raise _Bad("has too many continuation chunks", f"at most {MAX_CHUNKS}", "more")
                    chunks.append((where, length))
            i += 1
        return out

    def _v2_prefix(self, address: int) -> tuple[int, int, int]:
        """(start, size, flags) of the first chunk of a version 2 header: 'OHDR', version, flags, four times
        (flag 0x20), attribute phase change values (flag 0x10), the chunk's size in 1, 2, 4 or 8 bytes (flags
        0x03); its messages follow, then a 4-byte checksum."""
        head = _Cursor(self._exact(address, 6, "object header prefix"), "object header prefix")
        head.skip(4)
        version, flags = head.uint(1), head.uint(1)
        if version != 2:
            raise _Bad("has an unknown version", "object header version 2 after 'OHDR'", f"version {version}")
        n = 6 + (16 if flags & 0x20 else 0) + (4 if flags & 0x10 else 0)
        width = 1 << (flags & 0x03)
        size = int.from_bytes(self._exact(address + n, width, "object header prefix"), "little")
        return address + n + width, size, flags

    def _chunk_messages(self, data: bytes, start: int, version: int, flags: int, continuation: bool) -> list[Message]:
        out = []
        if version == 1:
            p, end, hdr = 0, len(data), 8
        else:
            if continuation:
                if data[:4] != b"OCHK":
                    raise _Bad("continues into a chunk without the signature 'OCHK'", "'OCHK'", repr(data[:4]))
                p = 4
            else:
                p = 0
            end = len(data) - (4 if continuation else 0)  # the first chunk's checksum lies after its declared size
            hdr = 4 + (2 if flags & 0x04 else 0)
        while p + hdr <= end:
            if version == 1:  # type (2 bytes), size (2), flags (1), reserved (3)
                mtype, size, mflags = int.from_bytes(data[p : p + 2], "little"), _u16(data, p + 2), data[p + 4]
            else:  # type (1 byte), size (2), flags (1), creation order (2, when tracked)
                mtype, size, mflags = data[p], _u16(data, p + 1), data[p + 3]
            body = p + hdr
            if body + size > end:
                raise _Bad("has a message running past its chunk", f"message data inside the chunk's {end} bytes",
                           f"message type {mtype:#06x} of {size} bytes at byte {start + body}")  # fmt: skip
            out.append(Message(mtype, mflags, data[body : body + size], start + body))
            p = body + size
        return out

    # -- attributes ---------------------------------------------------------------
    def attributes(self, address: int) -> dict[str, list[Attribute]]:
        """The attributes stored in the object header at ``address``, by name (a corrupt file may repeat a name)."""
        out: dict[str, list[Attribute]] = {}
        for msg in self.messages(address):
            if msg.type != ATTRIBUTE:
                continue
            where = f"has an attribute message at byte {msg.at} that"
            if msg.flags & _MSG_SHARED:
                shared = _Bad("is shared (kept in a shared-message heap)", "attributes stored in the object header", "a shared attribute")
                raise self._refuse(where, shared)
            try:
                attr = self._attribute(msg)
            except _Bad as bad:
                raise self._refuse(where, bad) from None
            out.setdefault(attr.name, []).append(attr)
        return out

    def dense_attributes(self, address: int) -> bool:
        """Whether the object keeps its attributes in dense storage (an attribute info message with a fractal heap)."""
        sb = self.superblock
        for msg in self.messages(address):
            if msg.type == ATTRIBUTE_INFO:
                try:
                    cur = _Cursor(msg.data, "attribute info message")
                    cur.skip(1)
                    flags = cur.uint(1)
                    if flags & 0x01:
                        cur.skip(2)
                    heap = cur.uint(sb.offsets)
                except _Bad as bad:
                    raise self._refuse(f"has an attribute info message at byte {msg.at} that", bad) from None
                if heap != (1 << (8 * sb.offsets)) - 1:
                    return True
        return False

    def _attribute(self, msg: Message) -> Attribute:
        sb = self.superblock
        cur = _Cursor(msg.data, "attribute message")
        version, flags = cur.uint(1), cur.uint(1)
        if version not in (1, 2, 3):
            raise _Bad("has an unknown version", "attribute message version 1, 2 or 3", f"version {version}")
        if version == 1:
            flags = 0  # a reserved byte, which HDF5 skips
        elif flags & ~0x03:
            raise _Bad("has unknown flags", "flags 0 to 3 (shared datatype, shared dataspace)", f"flags {flags:#x}")
        name_size, type_size, space_size = cur.uint(2), cur.uint(2), cur.uint(2)
        if version == 3:
            cur.skip(1)  # the name's character set
        pad = (lambda n: -(-n // 8) * 8) if version == 1 else (lambda n: n)  # version 1 pads each part to 8 bytes
        raw_name = cur.take(name_size)
        name = raw_name.split(b"\x00", 1)[0].decode("utf8", errors="replace")
        cur.skip(pad(name_size) - name_size)
        type_bytes = cur.take(type_size)
        cur.skip(pad(type_size) - type_size)
        if flags & 0x01:
            datatype = self._committed_datatype(type_bytes)
        else:
            datatype = _datatype(_Cursor(type_bytes, "datatype"), 0)
        if flags & 0x02:
            raise _Bad("has a shared dataspace", "a dataspace stored in the attribute", "a shared (SOHM) dataspace")
        shape = _dataspace(_Cursor(cur.take(space_size), "dataspace"), sb.lengths)
        cur.skip(pad(space_size) - space_size)
        attr = Attribute(name, version, datatype, shape, b"", 0)
        need = attr.elements * element_size(datatype, sb.offsets)
        if need > cur.left():
            raise _Bad(f"({name!r}) declares more data than the message holds", f"at most {cur.left()} bytes of data",
                       f"{attr.elements} elements of {element_size(datatype, sb.offsets)} bytes = {need} bytes")  # fmt: skip
        data = cur.take(need)
        return attr._replace(data=data, at=msg.at + cur.pos - need)

    def _committed_datatype(self, pointer: bytes) -> Datatype:
        """The datatype a shared-datatype pointer names: a committed datatype's object header (one level only)."""
        sb = self.superblock
        cur = _Cursor(pointer, "shared datatype pointer")
        version, kind = cur.uint(1), cur.uint(1)
        if version == 1:
            cur.skip(6 + sb.lengths)
        elif version == 3 and kind == 1:
            raise _Bad("has a datatype in a shared-message heap", "a datatype stored in the attribute or committed",
                       "a shared (SOHM) datatype")  # fmt: skip
        elif version not in (2, 3):
            raise _Bad("has an unknown shared datatype pointer", "version 1, 2 or 3", f"version {version}")
        address = cur.uint(sb.offsets)
        for msg in self._messages(address):
            if msg.type == DATATYPE:
                if msg.flags & _MSG_SHARED:
                    raise _Bad("names a committed datatype that is itself shared", "the datatype in the committed object",
                               f"a shared datatype message at byte {msg.at}")  # fmt: skip
                return _datatype(_Cursor(msg.data, "datatype"), 0)
        raise _Bad("names a committed datatype without a datatype message", "a datatype message at the address",
                   f"none in the object header at byte {address}")  # fmt: skip

    def datatype(self, address: int) -> Datatype | None:
        """The datatype of the dataset (or committed datatype) whose object header is at ``address``."""
        for msg in self.messages(address):
            if msg.type == DATATYPE:
                try:
                    if msg.flags & _MSG_SHARED:
                        return self._committed_datatype(msg.data)
                    return _datatype(_Cursor(msg.data, "datatype"), 0)
                except _Bad as bad:
                    raise self._refuse(f"has a datatype message at byte {msg.at} that", bad) from None
        return None

    def fill_values(self, address: int) -> list[tuple[bytes, int]]:
        """The fill values (raw bytes and file position) that the dataset at ``address`` defines, if any."""
        out = []
        for msg in self.messages(address):
            if msg.type not in (FILL, FILL_OLD) or not msg.data:
                continue
            try:
                cur = _Cursor(msg.data, "fill value message")
                if msg.flags & _MSG_SHARED:
                    raise _Bad("is shared", "a fill value stored in the dataset", "a shared (SOHM) fill value message")
                if msg.type == FILL:
                    version = cur.uint(1)
                    if version in (1, 2):
                        cur.skip(2)  # space allocation time, fill value write time
                        defined = cur.uint(1)
                        if version == 2 and not defined:
                            continue
                    elif version == 3:
                        if not cur.uint(1) & 0x20:
                            continue
                    else:
                        raise _Bad("has an unknown version", "fill value message version 1, 2 or 3", f"version {version}")
                size = cur.uint(4)
                if size:
                    out.append((cur.take(size), msg.at + cur.pos - size))
            except _Bad as bad:
                raise self._refuse(f"has a fill value message at byte {msg.at} that", bad) from None
        return out

    # -- variable-length values -----------------------------------------------------
    def descriptors(self, datatype: Datatype, data: bytes, at: int, elements: int) -> list[Descriptor]:
        """The variable-length descriptors in ``elements`` values of ``datatype`` stored as ``data`` (at file position
        ``at``); empty when the type has none.  Types whose descriptors this cannot locate are refused."""
        try:
            return self._descriptors(datatype, data, at, elements)
        except _Bad as bad:
            raise self._refuse(f"has a value at byte {at} that", bad) from None

    def _descriptors(self, datatype: Datatype, data: bytes, at: int, elements: int) -> list[Descriptor]:
        offsets = self.superblock.offsets
        layout = _vlen_layout(datatype, offsets)
        if layout is None:
            return []
        per_element, _ = layout
        step = 4 + offsets + 4
        out = []
        for k in range(elements * per_element):
            p = k * step
            if p + step > len(data):
                raise _Bad("holds fewer descriptors than it declares", f"{elements * per_element} descriptors of {step} bytes",
                           f"{len(data)} bytes")  # fmt: skip
            length, collection = int.from_bytes(data[p : p + 4], "little"), int.from_bytes(data[p + 4 : p + 4 + offsets], "little")
            out.append(Descriptor(length, collection, int.from_bytes(data[p + 4 + offsets : p + step], "little"), at + p))
        return out

    def check_values(self, datatype: Datatype, data: bytes, at: int, elements: int, where: str) -> int:
        """Refuse a value whose variable-length descriptors claim what their heap objects do not hold.

        Returns the bytes HDF5 will read for it (0 when the type has no
        variable-length part).  ``where`` names the value in messages (``"attribute 'backend' of '/'"``).
        """
        try:
            layout = _vlen_layout(datatype, self.superblock.offsets)
            if layout is None:
                return 0
            _, base = layout
            total = 0
            for d in self._descriptors(datatype, data, at, elements):
                if d.collection == 0:
                    continue  # HDF5 reads a null descriptor as an empty value, whatever its length
                claimed = d.length * base
                if claimed > self.size:
                    raise _Bad(f"declares a {datatype.name} of {claimed} bytes, more than the file holds",
                               f"at most the file's {self.size} bytes (HDF5 allocates a declared length before it reads the value)",
                               f"{d.length} x {base} bytes declared at byte {d.at}")  # fmt: skip
                held = self._heap_object_size(d.collection, d.index)
                if held is None or held != claimed:
                    what = "no such object" if held is None else f"an object of {held} bytes"
                    raise _Bad(f"declares a {datatype.name} of {d.length} x {base} bytes that its heap does not hold",
                               "the length of the global heap object it names (HDF5 allocates the declared length first)",
                               f"{claimed} bytes declared at byte {d.at}; {what} at index {d.index} "
                               f"of the collection at byte {d.collection}")  # fmt: skip
                total += claimed
                if total > self.size:
                    raise _Bad("declares more bytes than the file holds", f"at most the file's {self.size} bytes in all",
                               f"{total} bytes or more (descriptors naming the same heap object again and again)")  # fmt: skip
            return total
        except _Bad as bad:
            raise self._refuse(where, bad) from None

    def heap_object_size(self, collection: int, index: int) -> int | None:
        """The size of object ``index`` of the global heap collection at ``collection`` (None if it has none)."""
        try:
            return self._heap_object_size(collection, index)
        except _Bad as bad:
            raise self._refuse("has a value that", bad) from None

    def _heap_object_size(self, collection: int, index: int) -> int | None:
        if collection not in self._heaps:
            self._heaps[collection] = self._heap_objects(collection)
        return self._heaps[collection].get(index) if index > 0 else None

    def _heap_objects(self, address: int) -> dict[int, int]:
        """Object index -> size in the collection at ``address``, stepped through the way HDF5 does
        (``H5HG__cache_heap_deserialize``): a later object with the same index replaces an earlier one."""
        lengths = self.superblock.lengths
        hdr = 8 + lengths
        head = self._exact(address, hdr, "global heap collection")
        if head[:4] != b"GCOL" or head[4] != 1:
            raise _Bad("names a global heap collection that is not one", "the signature 'GCOL', version 1",
                       f"{head[:5]!r} at byte {address}")  # fmt: skip
        size = int.from_bytes(head[8:hdr], "little")
        if size < hdr or address + size > self.size:
            raise _Bad("names a global heap collection that does not fit the file",
                       f"a collection inside the file's {self.size} bytes", f"{size} bytes at byte {address}")  # fmt: skip
        objects: dict[int, int] = {}
        p, end = address + hdr, address + size
        for _ in range(MAX_HEAP_OBJECTS + 1):
            if p + hdr > end:
                return objects
            obj = self._exact(p, hdr, "global heap object")
            index, declared = int.from_bytes(obj[:2], "little"), int.from_bytes(obj[8:hdr], "little")
            step = hdr + -(-declared // 8) * 8 if index else declared
            if step <= 0 or p + step > end:
                raise _Bad("names a corrupt global heap collection",
                           "heap objects that each take at least one byte and end inside their collection",
                           f"object {index} at byte {p} taking {step} bytes of the {end - p} left")  # fmt: skip
            if index:
                objects[index] = declared
            p += step
        raise _Bad("names a global heap collection with too many objects", f"at most {MAX_HEAP_OBJECTS}", "more")


def element_size(datatype: Datatype, offsets: int) -> int:
    """Bytes of one element as HDF5 stores it: a variable-length descriptor is ``4 + offsets + 4`` bytes whatever
    size the type declares (``H5T__vlen_set_loc``); an array of them is that times its element count."""
    if datatype.cls == VLEN:
        return 4 + offsets + 4
    if datatype.cls == ARRAY and datatype.base is not None and datatype.base.cls == VLEN:
        return datatype.count * (4 + offsets + 4)
    return datatype.size


def _vlen_layout(datatype: Datatype, offsets: int) -> tuple[int, int] | None:
    """``(descriptors per element, bytes per sequence element)`` for a vlen or an array of vlens; None for a type
    without variable-length parts; a :class:`_Bad` for what HDF5 would convert but this parser cannot locate."""
    if datatype.contains(REFERENCE):
        raise _Bad("holds references", "numbers or strings (Keras writes no references)", f"a {datatype.name}")
    if not datatype.contains(VLEN):
        return None
    vlen, per_element = datatype, 1
    if datatype.cls == ARRAY and datatype.base is not None and datatype.base.cls == VLEN:
        vlen, per_element = datatype.base, datatype.count
    if vlen.cls != VLEN or vlen.base is None or vlen.base.contains(VLEN):
        raise _Bad("nests a variable-length type", "a variable-length string or sequence, or an array of them",
                   f"a {datatype.name} with a variable-length part inside")  # fmt: skip
    if vlen.size != 4 + offsets + 4 or (vlen is not datatype and datatype.size != per_element * vlen.size):
        raise _Bad("declares a size other than its stored descriptor's", f"{4 + offsets + 4} bytes per descriptor",
                   f"a {datatype.name} of {datatype.size} bytes")  # fmt: skip
    return per_element, vlen.base.size


def _skip_name(cur: _Cursor, version: int, what: str) -> None:
    """Step over a NUL-terminated name in a datatype message (padded to 8 bytes before version 3)."""
    name_end = cur.data.find(b"\x00", cur.pos)
    if name_end < 0:
        raise _Bad(f"has {what} without its end", "a NUL-terminated name", "none")
    n = name_end - cur.pos + 1
    cur.skip(n if version >= 3 else -(-n // 8) * 8)


def _datatype(cur: _Cursor, depth: int) -> Datatype:
    """Decode one datatype (``H5O__dtype_decode_helper``), advancing ``cur`` past it."""
    if depth > MAX_TYPE_DEPTH:
        raise _Bad("nests datatypes too deeply", f"at most {MAX_TYPE_DEPTH} levels", "more")
    head = cur.uint(4)
    cls, version, bits = head & 0x0F, (head >> 4) & 0x0F, head >> 8
    size = cur.uint(4)
    if not 1 <= version <= 5 or size == 0:
        raise _Bad("has an invalid datatype", "datatype version 1 to 5 and a size above 0", f"version {version}, size {size}")
    if cls in (0, 4):  # fixed-point, bitfield: bit offset, precision
        cur.skip(4)
    elif cls == 1:  # floating-point: bit offset, precision, exponent and mantissa location and size, exponent bias
        cur.skip(12)
    elif cls == 2:  # time: precision
        cur.skip(2)
    elif cls in (3, REFERENCE):
        pass
    elif cls == 5:  # opaque: the tag, its length (a multiple of 8) in the bit field
        cur.skip(bits & 0xFF)
    elif cls == COMPOUND:
        members = []
        count = bits & 0xFFFF
        offset_bytes = max(1, (size.bit_length() + 7) // 8)
        for _ in range(count):
            _skip_name(cur, version, "a compound member name")
            cur.skip(offset_bytes if version >= 3 else 4)
            if version == 1:
                cur.skip(1 + 3 + 4 + 4 + 16)  # dimensionality, reserved, permutation, reserved, 4 dimension sizes
            members.append(_datatype(cur, depth + 1))
        return Datatype(cls, version, size, bits, members=tuple(members))
    elif cls == ENUM:
        base = _datatype(cur, depth + 1)
        count = bits & 0xFFFF
        for _ in range(count):
            _skip_name(cur, version, "an enumeration name")
        cur.skip(count * base.size)
        return Datatype(cls, version, size, bits, base=base)
    elif cls == VLEN:
        return Datatype(cls, version, size, bits, base=_datatype(cur, depth + 1))
    elif cls == ARRAY:
        rank = cur.uint(1)
        if version < 3:
            cur.skip(3)
        count = 1
        for _ in range(rank):
            count *= cur.uint(4)
        if version < 3:
            cur.skip(4 * rank)  # permutation indices
        return Datatype(cls, version, size, bits, base=_datatype(cur, depth + 1), count=count)
    else:
        raise _Bad("has a datatype of an unknown class", "classes 0 to 10", f"class {cls}")
    return Datatype(cls, version, size, bits)


def _dataspace(cur: _Cursor, lengths: int) -> tuple[int, ...] | None:
    """Decode a dataspace message: its dimensions (``()`` for a scalar), None for a null dataspace."""
    version, rank, flags = cur.uint(1), cur.uint(1), cur.uint(1)
    if version not in (1, 2) or rank > 32:
        raise _Bad("has an invalid dataspace", "dataspace version 1 or 2, rank at most 32", f"version {version}, rank {rank}")
    kind = 1 if rank else 0  # version 1: simple, or scalar when the rank is 0
    if version == 2:
        kind = cur.uint(1)
    else:
        cur.skip(5)  # reserved
    dims = tuple(cur.uint(lengths) for _ in range(rank))
    if kind == 2:
        return None
    return dims
