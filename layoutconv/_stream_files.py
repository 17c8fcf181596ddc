"""State-dict files written tensor by tensor: ``.safetensors`` and PyTorch's ``.pt`` zip (for :mod:`layoutconv.convert_stream`).

Both writers take one tensor at a time (:meth:`add`), strided or not, and write
its bytes in C order :data:`CHECK_CHUNK` bytes at a time, each chunk read back
from the file and compared before the next (:func:`write_checked`, shared with
the ONNX external-data writer); nothing but the names, shapes and offsets is
kept.  A transposed weight (a Keras ``Dense`` kernel seen as ``nn.Linear``'s) is
copied into C order a chunk at a time, never whole.

``.safetensors`` (https://github.com/huggingface/safetensors, "Format"): 8 bytes
(little-endian header size ``N``), ``N`` bytes of JSON (name -> dtype, shape,
``data_offsets`` relative to the end of the header; ``__metadata__``), then the
data.  The header comes first but is only known once every layer is converted,
so the writer reserves room for it (:func:`header_room`), writes the data after
that room, and finally writes the header padded with spaces to fill the room
exactly (the format allows trailing spaces; the data stays 8-byte aligned).  A
header that outgrows its room moves the data up (a copy; the room is sized so
that this does not happen in practice).

``.pt`` (what ``torch.save`` writes since PyTorch 1.6): a zip of uncompressed
members under one folder (``archive/``): ``data/<key>`` holds the bytes of one
storage (here one tensor each), ``data.pkl`` a pickle of the dict of tensors
whose tensors refer to the storages by key (``torch._utils._rebuild_tensor_v2``
and ``torch.<Type>Storage``, what ``torch.load(weights_only=True)`` accepts),
plus ``byteorder``, ``version`` and ``.format_version``.  Members may come in any
order, so each tensor's member is written as it comes and ``data.pkl`` last.
Storages start on 64-byte boundaries (as ``torch.save`` aligns them), so
``torch.load(mmap=True)`` maps them in place.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import zipfile
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np

#: torch dtype name -> safetensors dtype code
SAFETENSORS_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "int32": "I32",
    "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
}


class Entry(NamedTuple):
    """A tensor written: its name, torch dtype name, shape, and where its bytes are in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute, in the file
    nbytes: int


def tensor_array(tensor: Any) -> np.ndarray:
    """A numpy view of a CPU tensor's elements (strided as the tensor is; ``bfloat16`` seen as ``int16``), no copy."""
    import torch

    t = tensor.detach()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy()


def end_bytes(array: np.ndarray) -> tuple[bytes, bytes]:
    """The bytes of the first and the last element of ``array`` in C order (``b""`` twice when it is empty)."""
    if array.size == 0:
        return b"", b""
    return array[(0,) * array.ndim].tobytes(), array[(-1,) * array.ndim].tobytes()


def _pread_into(fd: int, nbytes: int, offset: int) -> np.ndarray:
    out = np.empty(nbytes, dtype=np.uint8)
    view, done = memoryview(out), 0
    while done < nbytes:
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            raise OSError(f"the file ends {nbytes - done} bytes early")
        done += got
    return out


def _pread_to(fd: int, out: np.ndarray, offset: int) -> np.ndarray:
    """Fill ``out`` (uint8) from ``offset``; return the part filled (shorter only at the end of the file)."""
    view, done = memoryview(out), 0
    while done < out.size:
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            break
        done += got
    return out[:done]


#: Bytes handed to the kernel per write.  Measured on the benchmark machine (ext4 on a virtual machine), 1 GiB of
#: new file written from memory: 0.33-0.6 s of kernel time in writes of 256 KiB or 1 MiB, 2.3-3.8 s in writes of
#: 4 MiB to 256 MiB (the page cache then takes its pages in large blocks, which the host must first provide).
WRITE_CHUNK = 1 << 20


def write_all(fd: int, data: memoryview, offset: int) -> None:
    """Write all of ``data`` (bytes) at ``offset`` of ``fd``, :data:`WRITE_CHUNK` bytes per write."""
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done : done + WRITE_CHUNK], offset + done)


#: Bytes written, then read back and compared, at a time (:func:`write_checked`).
CHECK_CHUNK = 16 << 20
#: Bytes read back into the (cache-sized) buffer at a time, each piece compared while it is in the cache.
READ_BACK = 1 << 20
#: A strided array is copied into C order in tiles this many bytes wide along its last axis: one cache line
#: (a transposed 8192 x 8192 float32 kernel: 0.11-0.13 s per 256 MB, against 0.28 s in tiles of 64 elements
#: and 0.56 s in one copy per chunk, measured on the benchmark machine).
CACHE_LINE = 64


def c_order_chunks(array: np.ndarray, scratch: np.ndarray, spare: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """The little-endian bytes of ``array`` in C order, about ``scratch.nbytes`` bytes at a time (uint8 arrays).

    A C-contiguous array is cut into slices of itself; a strided one (a
    transposed view) is copied into ``scratch`` (uint8, reused: each chunk is
    consumed before the next) a block of whole leading rows at a time.  Given a
    ``spare`` buffer of the same size, the next block is copied into it in a
    thread while the caller uses the current one (:func:`_copied_ahead`).
    """
    chunk = scratch.nbytes
    a = np.asarray(array)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    if a.size == 0:
        return
    if a.ndim == 0 or a.flags.c_contiguous:
        flat = a.reshape(-1).view(np.uint8)
        for start in range(0, flat.size, chunk):
            yield flat[start : start + chunk]
        return
    row = a.nbytes // a.shape[0]
    rows = min(a.shape[0], max(1, chunk // max(1, row)))
    memories = [m if m.nbytes >= rows * row else np.empty(rows * row, np.uint8) for m in (scratch, spare) if m is not None]  # one row over
    buffers = [m[: rows * row].view(a.dtype).reshape((rows, *a.shape[1:])) for m in memories]
    starts = range(0, a.shape[0], rows)
    if len(buffers) == 2 and len(starts) > 1:
        yield from _copied_ahead(a, starts, rows, buffers)
        return
    for start in starts:
        yield _copy_rows(a, start, rows, buffers[0])


def _copy_rows(a: np.ndarray, start: int, rows: int, buffer: np.ndarray) -> np.ndarray:
    """Rows ``start`` to ``start + rows`` of ``a`` copied into ``buffer`` in C order, in tiles one cache line wide
    along the last axis; their bytes."""
    block, out = a[start : start + rows], buffer[: min(rows, a.shape[0] - start)]
    tile = max(1, CACHE_LINE // a.itemsize)
    for t in range(0, a.shape[-1], tile):
        out[..., t : t + tile] = block[..., t : t + tile]
    return out.reshape(-1).view(np.uint8)


def _copied_ahead(a: np.ndarray, starts: range, rows: int, buffers: list[np.ndarray]) -> Iterator[np.ndarray]:
    """:func:`_copy_rows` of each block, in a thread that fills one buffer while the caller writes the other's
    bytes (numpy's copies release the GIL): a transposed 256 MB kernel written, read back and compared in
    0.19-0.31 s instead of 0.30-0.60 s, measured on the benchmark machine."""
    import queue
    import threading

    ready: queue.Queue[Any] = queue.Queue()  # never full: at most two blocks are out at a time
    free = [threading.Event(), threading.Event()]
    stop = threading.Event()
    for event in free:
        event.set()

    def copy() -> None:
        try:
            for i, start in enumerate(starts):
                free[i % 2].wait()
                free[i % 2].clear()
                if stop.is_set():
                    return
                ready.put((i % 2, _copy_rows(a, start, rows, buffers[i % 2])))
            ready.put(None)
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
            ready.put(exc)

    thread = threading.Thread(target=copy, name="layoutconv-copy", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            k, chunk = item
            yield chunk
            free[k].set()  # the caller is done with it: the thread may fill it again
    finally:
        stop.set()
        for event in free:
            event.set()
        thread.join()


def write_checked(array: np.ndarray, offset: int, write: Callable[[np.ndarray, int], None], fd: int, scratch: np.ndarray,
                  back: np.ndarray, spare: np.ndarray | None = None) -> tuple[int, bool]:
    """Write ``array``'s C-order bytes from ``offset`` chunk by chunk (``write(chunk, at)``), read each chunk back
    from ``fd`` into ``back`` (uint8) and compare it with what was written.  Returns (bytes written, all equal).
    ``spare``: a second chunk buffer, for copying a strided array's next chunk meanwhile (:func:`c_order_chunks`)."""
    done, same = 0, True
    chunks = c_order_chunks(array, scratch, spare)
    try:
        for chunk in chunks:
            write(chunk, offset + done)
            for i in range(0, chunk.size, back.size):
                held = chunk[i : i + back.size]
                part = _pread_to(fd, back[: held.size], offset + done + i)
                same = same and part.size == held.size and np.array_equal(part, held)
            done += chunk.size
    finally:
        chunks.close()  # a failed write stops the copying thread now, not when the generator is collected
    return done, same


def read_back_differs(name: str, where: str = "the file") -> Exception:
    """The error for a tensor whose bytes read back from ``where`` are not those written."""
    from .errors import VerificationError, fail

    return fail(VerificationError, f"Tensor {name!r} read back from {where} differs from what was written",
                "the same bytes", "other bytes", "Nothing was written.")


class Scratch:
    """The chunk buffers of a writer (:func:`write_checked`): allocated once, reused for every tensor."""

    def __init__(self, chunk: int | None = None) -> None:
        size = CHECK_CHUNK if chunk is None else chunk
        self.chunk = np.empty(size, np.uint8)
        self.spare = np.empty(size, np.uint8)  # touched only by strided tensors (copied ahead into it)
        self.back = np.empty(min(size, READ_BACK), np.uint8)


# -- safetensors -----------------------------------------------------------------------------------


def header_room(names: list[tuple[str, int]], metadata: dict[str, str]) -> int:
    """Bytes to reserve for a safetensors header, from each layer's name and number of stored arrays.

    Every array may become two tensors and every layer a few more (a batch
    norm's running statistics, a recurrent layer's second bias); each entry
    takes its name (at most the layer's name, a dedup suffix and a parameter
    name) and at most ``SAFETENSORS_ENTRY`` more bytes of JSON.
    """
    room = 1024 + len(json.dumps(metadata))
    for name, arrays in names:
        room += (2 * arrays + 6) * (len(name.encode()) + 48 + SAFETENSORS_ENTRY)
    return -(-room // 8) * 8


#: JSON bytes around one entry's name: dtype, up to 6 dims and two offsets of 20 digits
SAFETENSORS_ENTRY = 220


class SafetensorsWriter:
    """Write a ``.safetensors`` file tensor by tensor (module docs)."""

    def __init__(self, path: str, room: int) -> None:
        self.path = path
        self.room = max(8, -(-room // 8) * 8)
        self.entries: list[Entry] = []
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        self._end = 8 + self.room  # where the next tensor goes
        self.data_start = 8 + self.room
        self._scratch = Scratch()

    def add(self, name: str, tensor: Any) -> Entry:
        """Write ``tensor`` (strided or not), reading each chunk back (:func:`write_checked`); raise if one differs."""
        array = tensor_array(tensor)
        entry = Entry(name, str(tensor.dtype).replace("torch.", ""), tuple(tensor.shape), self._end, array.nbytes)
        if entry.dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"safetensors has no dtype for {entry.dtype}")
        done, same = write_checked(array, self._end, self._write, self._fd, self._scratch.chunk, self._scratch.back, self._scratch.spare)
        self._end += done
        self.entries.append(entry)
        if not same:
            raise read_back_differs(name)
        return entry

    def _write(self, chunk: np.ndarray, at: int) -> None:
        write_all(self._fd, memoryview(chunk), at)

    def header(self, metadata: dict[str, str]) -> bytes:
        table: dict[str, Any] = {"__metadata__": metadata}
        for e in self.entries:
            start = e.offset - self.data_start
            table[e.name] = {"dtype": SAFETENSORS_DTYPES[e.dtype], "shape": list(e.shape), "data_offsets": [start, start + e.nbytes]}
        return json.dumps(table, separators=(",", ":")).encode()

    def finish(self, metadata: dict[str, str]) -> None:
        """Write the header into its room (moving the data up if it does not fit), flush, close."""
        header = self.header(metadata)
        if len(header) > self.room:
            self._move_data(-(-len(header) // 8) * 8)
        header = header + b" " * (self.room - len(header))
        write_all(self._fd, memoryview(struct.pack("<Q", len(header)) + header), 0)
        self.close()

    def _move_data(self, room: int) -> None:
        shift = room - self.room
        length = self._end - self.data_start
        chunk = 64 << 20
        done = 0
        while done < length:  # from the end, so nothing is overwritten before it is moved
            size = min(chunk, length - done)
            start = self.data_start + length - done - size
            write_all(self._fd, memoryview(_pread_into(self._fd, size, start)), start + shift)
            done += size
        self.entries = [e._replace(offset=e.offset + shift) for e in self.entries]
        self.room, self.data_start, self._end = room, self.data_start + shift, self._end + shift

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def header_as_written(self) -> dict[str, Any]:
        """The header read back from the file (JSON parsed)."""
        with open(self.path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            return json.loads(fh.read(n))


# -- PyTorch zip -----------------------------------------------------------------------------------

ARCHIVE = "archive"
ALIGNMENT = 64


class _Storage:
    """Stands for a storage in the pickle: ``persistent_id`` turns it into torch's storage reference."""

    def __init__(self, key: str, dtype: str, numel: int) -> None:
        self.key, self.dtype, self.numel = key, dtype, numel


class _Tensor:
    """Stands for a tensor in the pickle: reduces to ``torch._utils._rebuild_tensor_v2`` as torch's own tensors do."""

    def __init__(self, storage: _Storage, shape: tuple[int, ...]) -> None:
        self.storage, self.shape = storage, shape

    def __reduce_ex__(self, protocol: Any) -> Any:
        import torch

        stride, step = [], 1
        for n in reversed(self.shape):
            stride.append(step)
            step *= n
        return (torch._utils._rebuild_tensor_v2, (self.storage, 0, tuple(self.shape), tuple(reversed(stride)), False, collections.OrderedDict()))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _Storage):
            import torch

            storage_type = getattr(torch, torch.storage._dtype_to_storage_type_map()[getattr(torch, obj.dtype)])
            return ("storage", storage_type, obj.key, "cpu", obj.numel)
        return None


def state_pickle(entries: list[Entry]) -> bytes:
    """``data.pkl`` for ``entries`` (storage ``i`` holds entry ``i``), as ``torch.save`` pickles a dict of tensors."""
    import torch

    state = {}
    for i, e in enumerate(entries):
        itemsize = torch.empty((), dtype=getattr(torch, e.dtype)).element_size()
        state[e.name] = _Tensor(_Storage(str(i), e.dtype, e.nbytes // itemsize), e.shape)
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(state)
    return buf.getvalue()


class TorchZipWriter:
    """Write a ``torch.save``-compatible ``.pt`` file tensor by tensor (module docs)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.entries: list[Entry] = []
        self._file = open(path, "xb")  # a new file (not a truncated one)
        self._zip = zipfile.ZipFile(self._file, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._fd = os.open(path, os.O_RDONLY)
        self._scratch = Scratch()
        self._small(".format_version", b"1")
        self._small(".storage_alignment", str(ALIGNMENT).encode())
        self._small("byteorder", b"little")

    def _small(self, name: str, data: bytes) -> None:
        info = zipfile.ZipInfo(f"{ARCHIVE}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
        self._zip.writestr(info, data)

    def add(self, name: str, tensor: Any) -> Entry:
        """Write ``tensor`` as the next storage member (strided or not), reading each chunk back; raise if one differs."""
        array = tensor_array(tensor)
        member = f"{ARCHIVE}/data/{len(self.entries)}"
        info = zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0))
        info.file_size = array.nbytes
        start = self._zip.fp.tell()
        # local header: 30 bytes, the name, our padding field (4 + pad), the zip64 field (20)
        fixed = start + 30 + len(member.encode()) + 4 + 20
        pad = -fixed % ALIGNMENT
        info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # "FB", as torch.save pads
        with self._zip.open(info, "w", force_zip64=True) as out:

            def write(chunk: np.ndarray, at: int) -> None:  # at: where the zip's file position is anyway
                data = memoryview(chunk)
                for start in range(0, len(data), WRITE_CHUNK):  # small writes (WRITE_CHUNK); the CRC is updated as it goes
                    out.write(data[start : start + WRITE_CHUNK])
                self._zip.fp.flush()  # before the chunk is read back

            done, same = write_checked(array, fixed + pad, write, self._fd, self._scratch.chunk, self._scratch.back, self._scratch.spare)
        self._zip.fp.flush()
        entry = Entry(name, str(tensor.dtype).replace("torch.", ""), tuple(tensor.shape), fixed + pad, done)
        self.entries.append(entry)
        if not same:
            raise read_back_differs(name)
        return entry

    def finish(self) -> None:
        """Write ``data.pkl``, ``version`` and the zip directory; close."""
        self._small("data.pkl", state_pickle(self.entries))
        self._small("version", b"3\n")
        self._small(".data/serialization_id", os.urandom(20).hex().encode())
        self._zip.close()
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._zip.fp is not None:
            self._zip.close()
        self._file.close()
