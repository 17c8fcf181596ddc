"""Read members of a Keras 3 ``.keras`` archive by name, with limits; never extract.

The rules (documented in ``docs/security.md`` and ``docs/keras-legacy.md``):

* members are read by name into memory; nothing is written to disk;
* an archive with two members of the same name, an absolute member name
  (``/x``, ``\\x``, ``C:x``) or a ``..`` path component is refused;
* a member whose declared uncompressed size exceeds ``MAX_MEMBER_BYTES`` is
  refused, and so is a compressed member above ``RATIO_FLOOR`` bytes whose
  compression ratio exceeds ``MAX_RATIO`` (a decompression bomb);
* reads are capped (``MAX_JSON_BYTES`` for JSON members) and a member that
  yields more bytes than it declares is refused;
* symbolic-link members (Unix mode ``S_IFLNK`` in the external attributes) are refused;
* encrypted members and archives with more than ``MAX_MEMBERS`` members are refused;
* a member stored without compression (what Keras 3 writes) can be read in place,
  without a copy (:meth:`SafeZip.stored_span`): its local header must agree with the
  directory (signature, name, method) and its bytes must lie inside the file.  Its
  CRC-32 is then not checked (as when Keras seeks in the member).
"""

from __future__ import annotations

import collections
import re
import stat
import struct
import zipfile
from typing import Any

from ..errors import FileFormatError, UnsafeFileError, fail
from ._safe_h5 import file_size

MAX_MEMBERS = 10_000
MAX_MEMBER_BYTES = 4 << 30  # 4 GiB: the largest weights member read into memory
MAX_JSON_BYTES = 16 << 20  # 16 MiB for config.json / metadata.json
MAX_RATIO = 200
RATIO_FLOOR = 1 << 20  # members below 1 MiB may compress as well as they like
_CHUNK = 1 << 20

ZIP_SIGNATURE = b"PK\x03\x04"


class SafeZip:
    """A zip archive opened for reading members by name after its directory was checked.

    >>> with SafeZip("model.keras") as z:          # doctest: +SKIP
    ...     config = z.read("config.json", cap=MAX_JSON_BYTES)
    """

    def __init__(self, path: str) -> None:
        self.label = str(path)
        self.path = path
        self.file_size = file_size(path)
        self._zip: zipfile.ZipFile | None = None
        self.members: dict[str, zipfile.ZipInfo] = {}

    def __enter__(self) -> "SafeZip":
        try:
            self._zip = zipfile.ZipFile(self.path, "r")
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
            raise fail(
                FileFormatError,
                f"Cannot read the zip archive {self.label}",
                "a complete zip archive (a Keras 3 .keras file)",
                f"{type(exc).__name__}: {exc}",
                "The file may be truncated; save or download it again.",
            ) from None
        try:
            self.members = check_members(infos, self.label)
        except BaseException:
            self._zip.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def names(self) -> list[str]:
        return list(self.members)

    def _member(self, name: str, cap: int) -> zipfile.ZipInfo:
        info = self.members.get(name)
        if info is None:
            raise fail(
                FileFormatError,
                f"{self.label} has no member {name!r}",
                f"a Keras 3 archive with {name!r}",
                f"the members {sorted(self.members)[:12]}",
                "The file is not a Keras 3 .keras archive.",
            )
        if info.file_size > cap:
            raise fail(
                UnsafeFileError,
                f"Member {name!r} of {self.label} is too large",
                f"at most {cap} bytes",
                f"{info.file_size} bytes declared",
                "It was not read.",
            )
        return info

    def stored_span(self, name: str, cap: int = MAX_MEMBER_BYTES) -> tuple[int, int] | None:
        """``(offset, size)`` of member ``name``'s bytes in the archive when it is stored uncompressed, else ``None``.

        The member can then be read in place (no copy in memory); its local header
        is checked against the directory first.
        """
        info = self._member(name, cap)
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            return None
        try:
            with open(self.path, "rb") as fh:
                fh.seek(info.header_offset)
                head = fh.read(30)
                if len(head) == 30:
                    sig, _, _, method, _, _, _, _, _, name_len, extra_len = struct.unpack("<4s5H3L2H", head)
                    stored_name = fh.read(name_len)
                else:
                    sig = method = name_len = extra_len = None
                    stored_name = b""
        except OSError as exc:
            raise fail(FileFormatError, f"Cannot read {self.label}", "a readable file", f"{exc.strerror or exc}") from None
        encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
        if sig != b"PK\x03\x04" or method != zipfile.ZIP_STORED or stored_name != info.orig_filename.encode(encoding, "replace"):
            raise fail(
                FileFormatError,
                f"The local header of member {name!r} of {self.label} does not match the archive's directory",
                "a local header with the same name and method as the directory entry",
                f"signature {sig!r}, method {method}, name {stored_name[:80]!r}",
                "The archive is corrupt; save or download it again.",
            )
        start = info.header_offset + 30 + int(name_len) + int(extra_len)
        if start + info.file_size > self.file_size:
            raise fail(
                FileFormatError,
                f"Member {name!r} of {self.label} runs past the end of the file",
                f"{info.file_size} bytes from byte {start} (a file of at least {start + info.file_size} bytes)",
                f"a file of {self.file_size} bytes",
                "The file is truncated; save or download it again.",
            )
        return start, info.file_size

    def read(self, name: str, cap: int = MAX_MEMBER_BYTES) -> bytes:
        """The bytes of member ``name``, at most ``cap`` of them."""
        info = self._member(name, cap)
        assert self._zip is not None
        out = bytearray()
        try:
            with self._zip.open(info, "r") as fh:
                while len(out) <= info.file_size:
                    chunk = fh.read(min(_CHUNK, info.file_size + 1 - len(out)))
                    if not chunk:
                        break
                    out += chunk
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError, NotImplementedError) as exc:
            raise fail(
                FileFormatError,
                f"Cannot read member {name!r} of {self.label}",
                "an intact, unencrypted member",
                f"{type(exc).__name__}: {exc}",
                "The archive is corrupt; save or download it again.",
            ) from None
        if len(out) != info.file_size:
            raise fail(
                UnsafeFileError,
                f"Member {name!r} of {self.label} does not match its declared size",
                f"{info.file_size} bytes",
                f"{'more' if len(out) > info.file_size else len(out)} bytes",
                "The archive is corrupt or hostile; it was not read.",
            )
        return bytes(out)


def _unsafe_name(name: str) -> str | None:
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    if ".." in re.split(r"[\\/]", name):
        return "has a '..' path component"
    if "\x00" in name:
        return "contains a NUL character"
    return None


def check_members(infos: list[zipfile.ZipInfo], label: str) -> dict[str, zipfile.ZipInfo]:
    """Validate an archive's directory; return its members by name."""
    if len(infos) > MAX_MEMBERS:
        raise fail(UnsafeFileError, f"{label} has too many members", f"at most {MAX_MEMBERS}", f"{len(infos)}")
    counts = collections.Counter(i.filename for i in infos)
    duplicates = sorted(n for n, c in counts.items() if c > 1)
    if duplicates:
        raise fail(
            UnsafeFileError,
            f"{label} has duplicate member names",
            "each member name once",
            f"{duplicates[:5]} more than once",
            "Which copy a reader sees depends on the reader; layoutconv refuses such archives.",
        )
    for info in infos:
        problem = _unsafe_name(info.filename)
        if problem:
            raise fail(
                UnsafeFileError,
                f"Member {info.filename!r} of {label} {problem}",
                "relative member names without '..'",
                f"{info.filename!r}",
                "layoutconv refuses archives that could write outside a directory.",
            )
        if stat.S_ISLNK(info.external_attr >> 16):
            raise fail(
                UnsafeFileError,
                f"Member {info.filename!r} of {label} is a symbolic link",
                "regular file members",
                f"Unix mode {oct(info.external_attr >> 16)} (S_IFLNK)",
                "layoutconv refuses archives with links (an extracting tool would follow them out of its directory).",
            )
        if info.flag_bits & 0x1:
            raise fail(FileFormatError, f"Member {info.filename!r} of {label} is encrypted", "unencrypted members", "an encrypted member")
        if info.file_size > MAX_MEMBER_BYTES:
            raise fail(
                UnsafeFileError,
                f"Member {info.filename!r} of {label} declares an absurd size",
                f"at most {MAX_MEMBER_BYTES} bytes uncompressed",
                f"{info.file_size} bytes",
                "It was not read.",
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > RATIO_FLOOR and ratio > MAX_RATIO:
            raise fail(
                UnsafeFileError,
                f"Member {info.filename!r} of {label} looks like a decompression bomb",
                f"a compression ratio of at most {MAX_RATIO} for members over {RATIO_FLOOR} bytes",
                f"{info.file_size} bytes from {info.compress_size} (ratio {ratio:.0f})",
                "It was not read.",
            )
    return {i.filename: i for i in infos}
