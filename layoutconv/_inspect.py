"""What a weight file holds, for ``layoutconv inspect``: Keras, ONNX, PyTorch ``.pt``/``.pth`` and safetensors.

>>> report = inspect_file("conv.onnx")      # doctest: +SKIP
>>> print(report.summary())                 # doctest: +SKIP
>>> report.to_dict()["convs"][0]["stride"]  # doctest: +SKIP
2

Each format is one :class:`Reader` in :data:`READERS`: a name, what it
expects (for error messages), a test on the file's content, and a function
that reads the file into a report with ``summary()``, ``to_dict()``,
``nonfinite()`` and ``load_warnings()``.  Readers are tried in registration
order; the first that claims the file reads it:

=============== ===========================================================================
``keras``       HDF5 signature, or a zip archive with ``config.json`` (``.keras``):
                :class:`layoutconv.legacy.KerasFile`
``torch``       a zip archive with ``<name>/data.pkl`` (``torch.save``'s format): loaded
                with ``torch.load(path, map_location="cpu", weights_only=True)`` only
``safetensors`` suffix ``.safetensors``, or an 8-byte little-endian length followed by ``{``:
                the header is parsed and checked here, with numpy only
``onnx``        suffix ``.onnx``, then a successful protobuf parse; every ``Conv`` node is
                read with :func:`layoutconv.from_onnx`
=============== ===========================================================================

A state_dict does not say which tensors are convolutions: a 3-d floating
``*.weight`` whose sibling ``*.bias`` (if any) is 1-d with the length of
axis 0 is listed as a Conv1d candidate in PyTorch's ``O I K`` layout, and the
report says it is a guess.  Every floating-point array is checked for NaN and
Inf (:mod:`layoutconv._finite`).
"""

from __future__ import annotations

import functools
import json
import os
import re
import textwrap
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, NamedTuple

import numpy as np

from . import layouts
from ._finite import NonFinite, find as find_nonfinite, report_lines
from .errors import ConfigError, FileFormatError, FrameworkMissingError, LayoutError, UnsafeFileError, fail

ZIP_SIGNATURE = b"PK\x03\x04"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: The layout PyTorch and ONNX store a Conv1d kernel in.
TORCH_LAYOUT = "O I K"
#: Suffixes that make an unreadable zip a PyTorch file (for which error message is shown).
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
#: Caps on what a torch.save file may hold: zip members, loaded entries, nesting depth.
MAX_ZIP_MEMBERS = 100_000
MAX_ENTRIES = 1_000_000
MAX_DEPTH = 32
CANDIDATE_RULE = (
    "guessed from the shape and the name: a 3-d '*.weight' whose '*.bias' (if any) has the length of axis 0; "
    "the file stores no layer types"
)


# -- records -------------------------------------------------------------------
@dataclass(frozen=True)
class ConvEntry:
    """One convolution found in a file; geometry fields are ``None`` when the file does not store them."""

    name: str
    kernel: str
    shape: tuple[int, ...]
    layout: str
    source: str
    out_channels: int | None = None
    in_channels_per_group: int | None = None
    kernel_size: int | tuple[int, ...] | None = None
    in_channels: int | None = None
    bias: str | None = None
    stride: int | tuple[int, ...] | None = None
    dilation: int | tuple[int, ...] | None = None
    groups: int | None = None
    padding: Any = None
    padding_mode: str | None = None
    guessed: bool = False
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["shape"] = list(self.shape)
        out["padding"] = _plain(self.padding)
        return out


@dataclass(frozen=True)
class TensorEntry:
    """Any other stored array: name, shape, dtype as the file names it."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class FileReport:
    """What an ONNX, PyTorch or safetensors file holds (Keras files have :class:`layoutconv.legacy.KerasFile`)."""

    path: str
    format: str
    description: str
    facts: tuple[tuple[str, str], ...]
    convs: tuple[ConvEntry, ...]
    tensors: tuple[TensorEntry, ...]
    found: tuple[NonFinite, ...]
    checked: int
    notes: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def nonfinite(self) -> tuple[NonFinite, ...]:
        return self.found

    def load_warnings(self) -> tuple[str, ...]:
        return ()

    def summary(self) -> str:
        lines = [f"File     {self.path}", f"Format   {self.format}: {self.description}"]
        lines += [f"{key:<8} {value}" for key, value in self.facts]
        lines.append("")
        if self.convs:
            rows = [("convolution", "kernel", "kernel shape", "layout", "in", "out", "k", "stride", "dilation", "groups", "padding")]
            for c in self.convs:
                if c.error:
                    rows.append((c.name, c.kernel, _shape(c.shape), "-", "-", "-", "-", "-", "-", "-", "not read (see below)"))
                    continue
                pad = "-" if c.padding is None else _padding_text(c.padding, c.padding_mode)
                inn = str(c.in_channels) if c.in_channels is not None else f"{c.in_channels_per_group} per group"
                rows.append(
                    (c.name, c.kernel, _shape(c.shape), c.layout, inn, str(c.out_channels), str(c.kernel_size),
                     _dash(c.stride), _dash(c.dilation), _dash(c.groups), pad)
                )
            lines += _table(rows)
            lines += [f"{c.name}: {c.error}" for c in self.convs if c.error]
        else:
            lines.append("No convolution found.")
        if self.tensors:
            lines.append("")
            lines.append(f"Other tensors ({len(self.tensors)})")
            shown = self.tensors[:MAX_LISTED]
            lines += ["  " + row for row in _table([("name", "shape", "dtype")] + [(t.name, _shape(t.shape), t.dtype) for t in shown])]
            if len(self.tensors) > MAX_LISTED:
                lines.append(f"  ... and {len(self.tensors) - MAX_LISTED} more (all of them in --json)")
        for note in self.notes:
            lines.append("")
            lines += textwrap.wrap(note, 100, initial_indent="Note     ", subsequent_indent=" " * 9)
        lines.append("")
        lines += report_lines(self.found, self.checked)
        return "\n".join(line.rstrip() for line in lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "format_description": self.description,
            "facts": dict(self.facts),
            "convs": [c.to_dict() for c in self.convs],
            "tensors": [t.to_dict() for t in self.tensors],
            **self.extra,
            "notes": list(self.notes),
            "warnings": list(self.load_warnings()),
            "nonfinite": [r.to_dict() for r in self.found],
            "finite_checked": self.checked,
        }


#: Other tensors listed in the text report (all of them in JSON).
MAX_LISTED = 30


def _shape(shape: Iterable[int]) -> str:
    return str(tuple(shape))


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _plain(padding: Any) -> Any:
    return [list(p) for p in padding] if isinstance(padding, tuple) else padding


def _padding_text(padding: Any, mode: str | None) -> str:
    text = str(padding[0]) if isinstance(padding, tuple) and len(padding) == 1 else str(padding)
    return f"{text} ({mode})" if mode and mode != "zeros" else text


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


# -- detection -----------------------------------------------------------------
class Probe:
    """What detection looks at: the path, its size, its first 16 bytes, its suffix and (zip only) the member names."""

    def __init__(self, path: str) -> None:
        self.path = path
        if not os.path.isfile(path):
            what = "a directory" if os.path.isdir(path) else "no such file"
            raise fail(FileFormatError, f"Cannot open {path}", "a readable weight file", what)
        self.size = os.path.getsize(path)
        if self.size == 0:
            raise fail(FileFormatError, f"{path} is empty", "a weight file", "0 bytes", "Check that the download completed.")
        try:
            with open(path, "rb") as fh:
                self.head = fh.read(16)
        except OSError as exc:
            raise fail(FileFormatError, f"Cannot open {path}", "a readable file", f"{exc.strerror or exc}") from None
        name = os.path.basename(path).lower()
        self.suffix = os.path.splitext(name)[1]

    @property
    def is_zip(self) -> bool:
        return self.head.startswith(ZIP_SIGNATURE)

    @functools.cached_property
    def zip_names(self) -> list[str] | None:
        """The member names of a zip archive; ``None`` when the file is not one or its directory is unreadable."""
        if not self.is_zip:
            return None
        try:
            with zipfile.ZipFile(self.path) as z:
                return z.namelist()[: MAX_ZIP_MEMBERS + 1]
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError):
            return None

    @property
    def safetensors_header_length(self) -> int | None:
        """The declared header length when the file starts like a safetensors file (length, then ``{``)."""
        if len(self.head) < 9 or self.head[8:9] != b"{":
            return None
        n = int.from_bytes(self.head[:8], "little")
        return n if 2 <= n <= self.size - 8 else None


class Reader(NamedTuple):
    name: str
    expects: str
    claims: Callable[[Probe], bool]
    read: Callable[..., Any]
    options: tuple[str, ...] = ()


#: format name -> its reader, in the order detection tries them
READERS: dict[str, Reader] = {}


def reader(name: str, expects: str, claims: Callable[[Probe], bool], options: tuple[str, ...] = ()):
    """Register the function that reads one format; a name registered twice is a bug."""

    def register(read: Callable[..., Any]) -> Callable[..., Any]:
        if name in READERS:
            raise RuntimeError(f"reader {name!r} registered twice")
        READERS[name] = Reader(name, expects, claims, read, options)
        return read

    return register


#: Content no reader claims but that is worth naming: (test, what it is, what to do).
RECOGNISED_REFUSALS: tuple[tuple[Callable[[Probe], bool], Callable[[Probe], str], str], ...] = (
    (
        lambda p: p.head[:1] == b"\x80" and p.head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"),
        lambda p: "a pickle stream: a legacy torch.save file (PyTorch < 1.6) or a plain pickle",
        "layoutconv never unpickles, and reads torch's zip format only. Re-save it with PyTorch >= 1.6: "
        "torch.save(torch.load(path, weights_only=True), 'new.pt').",
    ),
    (
        lambda p: p.head.startswith(b"version https://"),
        lambda p: "a Git LFS pointer (a small text file), not the weights",
        "Fetch the real file, e.g. with `git lfs pull`.",
    ),
    (
        lambda p: p.is_zip,
        lambda p: f"a zip archive with members {(p.zip_names or ['(unreadable directory)'])[:8]}",
        "A .keras archive has config.json and model.weights.h5; a torch.save file has <name>/data.pkl.",
    ),
)


def detect(path: Any) -> Reader:
    """The reader for ``path``, decided by content (and by suffix for ONNX, which has no signature)."""
    probe = Probe(os.fspath(path))
    for r in READERS.values():
        if r.claims(probe):
            return r
    received = f"a file starting with {probe.head[:8]!r}"
    remedy = "Check that the download completed and that this is the weight file, not a JSON or text file."
    for test, what, why in RECOGNISED_REFUSALS:
        if test(probe):
            received, remedy = what(probe), why
            break
    raise fail(
        FileFormatError,
        f"{probe.path} is not a weight file layoutconv reads",
        "one of: " + "; ".join(r.expects for r in READERS.values()),
        received,
        remedy,
    )


def inspect_file(path: Any, **options: Any) -> Any:
    """Read ``path`` with the reader its content calls for; ``options`` (``backend=``) go to readers that take them."""
    r = detect(path)
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(r.options))
    if unknown:
        raise fail(
            ConfigError,
            f"{', '.join(unknown)} does not apply to {r.name} files",
            f"options among {list(r.options) or 'none'} for a {r.name} file",
            ", ".join(f"{k}={given[k]!r}" for k in unknown),
            "--backend only overrides the backend of a Keras file.",
        )
    return r.read(os.fspath(path), **given)


def inspect_text(path: Any, *, as_json: bool = False, **options: Any) -> tuple[str, Any]:
    """The text (or JSON) ``layoutconv inspect`` prints, and the report it came from."""
    report = inspect_file(path, **options)
    if as_json:
        return json.dumps(report.to_dict(), indent=2, default=str), report
    return report.summary(), report


def load_warnings(path: Any, **options: Any) -> tuple[str, ...]:
    """What goes wrong when ``path`` is loaded by its own framework instead of layoutconv (Theano Keras files)."""
    r = detect(path)
    if not r.options:
        return ()  # only Keras files have such warnings; the others need not be read again
    return inspect_file(path, **options).load_warnings()


def _framework(module: str, extra: str) -> Any:
    import importlib
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise fail(
            FrameworkMissingError,
            f"Reading this file needs {module}",
            f"{module} installed",
            "an environment without it",
            f"pip install 'layoutconv[{extra}]'",
        )
    return importlib.import_module(module)


# -- Keras ---------------------------------------------------------------------
def _is_keras(p: Probe) -> bool:
    if p.head[:8] == HDF5_SIGNATURE:
        return True
    if not p.is_zip:
        return False
    names = p.zip_names
    if names is None:  # unreadable directory: the suffix decides whose error message is shown
        return p.suffix not in TORCH_SUFFIXES
    return "config.json" in names or "model.weights.h5" in names


@reader(
    "keras",
    "a Keras weight file (HDF5: .h5, .hdf5, .weights.h5; or a Keras 3 .keras zip archive)",
    _is_keras,
    options=("backend",),
)
def _read_keras(path: str, backend: str | None = None) -> Any:
    from .legacy import open as open_keras

    return open_keras(path, backend=backend)


# -- PyTorch -------------------------------------------------------------------


def _is_torch(p: Probe) -> bool:
    if not p.is_zip:
        return False
    names = p.zip_names
    if names is None:
        return p.suffix in TORCH_SUFFIXES
    return any(n.count("/") == 1 and n.endswith("/data.pkl") for n in names)


def _check_torch_zip(path: str, size: int) -> None:
    """torch.save writes every member uncompressed: refuse compressed members, sizes past the file, duplicates."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise fail(
            FileFormatError,
            f"Cannot read the zip directory of {path}",
            "a complete torch.save file (a zip archive)",
            f"{type(exc).__name__}: {exc}",
            "The file may be truncated; save or download it again.",
        ) from None
    if len(infos) > MAX_ZIP_MEMBERS:
        raise fail(UnsafeFileError, f"{path} has too many zip members", f"at most {MAX_ZIP_MEMBERS}", f"{len(infos)}")
    names = Counter(i.filename for i in infos)
    duplicates = sorted(n for n, c in names.items() if c > 1)
    if duplicates:
        raise fail(UnsafeFileError, f"{path} has duplicate zip members", "each member name once", f"{duplicates[:5]}")
    compressed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
    if compressed:
        raise fail(
            UnsafeFileError,
            f"{path} has compressed members",
            "uncompressed (stored) members only, as torch.save writes them",
            f"{compressed[:5]}",
            "The file was not written by torch.save; re-save it with torch.save(state_dict, path).",
        )
    declared = sum(i.file_size for i in infos)
    if declared > size:
        raise fail(
            UnsafeFileError,
            f"{path} declares more data than it holds",
            f"members totalling at most the file size, {size} bytes",
            f"{declared} bytes declared",
            "The file is truncated or hostile; it was not loaded.",
        )


def _torch_error_line(exc: Exception) -> str:
    """The line of a torch.load error that says what was refused (without torch's advice to allow it)."""
    text = str(exc)
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if match:
        return f"a pickled {match.group(1)} (weights_only=True allows tensors and plain containers only)"
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [type(exc).__name__]
    return lines[0][:300]


def _walk(obj: Any, prefix: str, tensors: list[tuple[str, Any]], others: list[dict[str, str]], torch: Any, depth: int = 0) -> None:
    if len(tensors) + len(others) > MAX_ENTRIES or depth > MAX_DEPTH:
        raise fail(UnsafeFileError, "The loaded object is too large or too deep", f"at most {MAX_ENTRIES} entries and depth {MAX_DEPTH}", f"more, at {prefix!r}")
    if isinstance(obj, torch.Tensor):
        tensors.append((prefix or "(the file's single tensor)", obj))
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _walk(value, f"{prefix}.{key}" if prefix else str(key), tensors, others, torch, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _walk(value, f"{prefix}.{i}" if prefix else str(i), tensors, others, torch, depth + 1)
    else:
        text = repr(obj)
        others.append({"name": prefix or "(root)", "type": type(obj).__name__, "value": text if len(text) <= 80 else text[:77] + "..."})


def _torch_array(t: Any, torch: Any) -> np.ndarray | None:
    """The tensor as numpy for the finiteness check (low-precision floats widened), or None when it cannot be non-finite."""
    if t.layout != torch.strided or t.is_quantized or not (t.is_floating_point() or t.is_complex()):
        return None
    t = t.detach().cpu()
    if t.is_floating_point() and t.dtype not in (torch.float16, torch.float32, torch.float64):
        t = t.to(torch.float32)  # bfloat16 and float8: exact in float32
    return t.numpy()


@reader(
    "torch",
    "a PyTorch state_dict saved by torch.save (.pt/.pth: torch's zip format with <name>/data.pkl)",
    _is_torch,
)
def _read_torch(path: str) -> FileReport:
    _check_torch_zip(path, os.path.getsize(path))
    torch = _framework("torch", "torch")
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise fail(
            UnsafeFileError,
            f"{path} holds objects other than tensors and plain containers",
            "a state_dict (tensors in dicts), which torch.load(..., weights_only=True) accepts",
            _torch_error_line(exc),
            "layoutconv never unpickles arbitrary objects. Save the weights, not the model: "
            "torch.save(model.state_dict(), path).",
        ) from None
    except Exception as exc:  # torch raises RuntimeError, ValueError, ... for damaged archives
        raise fail(
            FileFormatError,
            f"Cannot load {path} with torch.load(weights_only=True)",
            "a complete torch.save file",
            f"{type(exc).__name__}: {_torch_error_line(exc)}",
            "The file may be truncated; save or download it again.",
        ) from None
    tensors: list[tuple[str, Any]] = []
    others: list[dict[str, str]] = []
    _walk(obj, "", tensors, others, torch)
    described = {
        name: (tuple(int(n) for n in t.shape), str(t.dtype).replace("torch.", ""), t.is_floating_point())
        for name, t in tensors
    }
    arrays = {name: _torch_array(t, torch) for name, t in tensors}
    notes = []
    if others:
        listed = ", ".join(f"{o['name']} ({o['type']} {o['value']})" for o in others[:5])
        notes.append(f"Entries that are not tensors: {listed}{' ...' if len(others) > 5 else ''} (all in --json).")
    return _state_dict_report(
        path,
        "torch",
        "PyTorch torch.save file (zip), loaded with torch.load(weights_only=True)",
        [("Torch", f"{len(tensors)} tensors, {len(others)} other entr{'y' if len(others) == 1 else 'ies'}")],
        described,
        arrays,
        notes,
        {"other_entries": others},
    )


def _candidates(described: dict[str, tuple[tuple[int, ...], str, bool]]) -> tuple[list[ConvEntry], list[str], set[str]]:
    """Conv1d candidates of a state_dict, notes about near misses, and the names they use."""
    convs: list[ConvEntry] = []
    notes: list[str] = []
    used: set[str] = set()
    for name, (shape, _dtype, is_float) in described.items():
        if name.rsplit(".", 1)[-1] != "weight" or len(shape) != 3 or not is_float:
            continue
        stem = name[: -len("weight")]
        bias = stem + "bias"
        if bias in described:
            bshape = described[bias][0]
            if len(bshape) != 1 or bshape[0] != shape[0]:
                notes.append(f"{name} is 3-d but {bias} has shape {bshape}, not ({shape[0]},): not listed as a Conv1d.")
                continue
        else:
            bias = None
        out, per_group, k = shape
        convs.append(
            ConvEntry(
                name=stem.rstrip(".") or name,
                kernel=name,
                shape=shape,
                layout=TORCH_LAYOUT,
                source=CANDIDATE_RULE,
                out_channels=out,
                in_channels_per_group=per_group,
                kernel_size=k,
                bias=bias,
                guessed=True,
            )
        )
        used.update(n for n in (name, bias) if n)
    return convs, notes, used


def _state_dict_report(
    path: str,
    fmt: str,
    description: str,
    facts: list[tuple[str, str]],
    described: dict[str, tuple[tuple[int, ...], str, bool]],
    arrays: dict[str, np.ndarray | None],
    notes: list[str],
    extra: dict[str, Any],
) -> FileReport:
    """The report of a name -> tensor mapping (a state_dict or a safetensors file)."""
    convs, near, used = _candidates(described)
    kernels = {c.kernel for c in convs}
    biases = {c.bias for c in convs if c.bias}
    found: list[NonFinite] = []
    checked = 0
    for name, array in arrays.items():
        if array is None:
            continue
        checked += 1
        role = "kernel" if name in kernels else "bias" if name in biases else "tensor"
        record = find_nonfinite(array, name, role=role, layout=TORCH_LAYOUT if name in kernels else None)
        if record is not None:
            found.append(record)
    if convs:
        notes = [
            f"Conv1d candidates are {CANDIDATE_RULE}. Their layout is PyTorch's (out_channels, in_channels // groups, "
            "kernel_size). Stride, dilation, groups and padding are not stored in a state_dict: give them to "
            "layoutconv.Conv1D(kernel, bias, stride=..., padding=...)."
        ] + notes
    tensors = tuple(TensorEntry(n, d[0], d[1]) for n, d in described.items() if n not in used)
    return FileReport(path, fmt, description, tuple(facts), tuple(convs), tensors, tuple(found), checked, tuple(notes + near), extra)


# -- safetensors ---------------------------------------------------------------
#: The largest header accepted (the safetensors library's own limit).
MAX_HEADER_BYTES = 100 * 1024 * 1024
#: safetensors dtype -> (bytes per element, numpy dtype to read it as, widening for the finiteness check or None)
SAFETENSORS_DTYPES: dict[str, tuple[int, str, Callable[[np.ndarray], np.ndarray] | None]] = {
    "BOOL": (1, "|b1", None),
    "U8": (1, "|u1", None),
    "I8": (1, "|i1", None),
    "U16": (2, "<u2", None),
    "I16": (2, "<i2", None),
    "U32": (4, "<u4", None),
    "I32": (4, "<i4", None),
    "U64": (8, "<u8", None),
    "I64": (8, "<i8", None),
    "F16": (2, "<f2", lambda a: a),
    "F32": (4, "<f4", lambda a: a),
    "F64": (8, "<f8", lambda a: a),
    "C64": (8, "<c8", lambda a: a),
    # bfloat16 is the top half of a float32; float8 E5M2 the top half of a float16: both exact.
    "BF16": (2, "<u2", lambda a: (a.astype(np.uint32) << 16).view(np.float32)),
    "F8_E5M2": (1, "|u1", lambda a: (a.astype(np.uint16) << 8).view(np.float16)),
    # E4M3 (fn) has no Inf and one NaN pattern per sign; E8M0 has NaN = 0xFF. Only finiteness is needed.
    "F8_E4M3": (1, "|u1", lambda a: np.where((a & 0x7F) == 0x7F, np.float32(np.nan), np.float32(0))),
    "F8_E8M0": (1, "|u1", lambda a: np.where(a == 0xFF, np.float32(np.nan), np.float32(0))),
}
MAX_RANK = 64


def _is_safetensors(p: Probe) -> bool:
    return p.suffix == ".safetensors" or p.safetensors_header_length is not None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = Counter(k for k, _ in pairs)
    duplicates = sorted(k for k, c in keys.items() if c > 1)
    if duplicates:
        raise fail(
            UnsafeFileError,
            "The safetensors header names a key twice",
            "each tensor name once",
            f"{duplicates[:5]} more than once",
            "Which copy a reader sees depends on the reader; layoutconv refuses such files.",
        )
    return dict(pairs)


class _Entry(NamedTuple):
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def parse_safetensors_header(path: str) -> tuple[int, dict[str, str], list[_Entry]]:
    """Check a safetensors file's header against the bytes present; return (data start, metadata, entries by offset).

    Refused: a header longer than :data:`MAX_HEADER_BYTES` or than the file,
    invalid JSON or UTF-8, duplicate keys, unknown dtypes, negative or
    non-integer dimensions, ``data_offsets`` outside the data area or not
    equal to dtype size x element count, and tensors that overlap or leave
    gaps (the safetensors library refuses those too).
    """
    size = os.path.getsize(path)
    where = f"{path} (safetensors)"
    if size < 8:
        raise fail(FileFormatError, f"{where} is too short", "an 8-byte header length, a JSON header, then the data", f"{size} bytes")
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if n > MAX_HEADER_BYTES:
            raise fail(
                UnsafeFileError,
                f"{where} declares an absurd header length",
                f"at most {MAX_HEADER_BYTES} bytes",
                f"{n} bytes",
                "The file is corrupt or hostile; it was not read.",
            )
        if n > size - 8:
            raise fail(
                FileFormatError,
                f"{where} declares a header longer than the file",
                f"a header length of at most the file size - 8 = {size - 8} bytes",
                f"{n} bytes",
                "The file is truncated, or not a safetensors file; download or save it again.",
            )
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise fail(FileFormatError, f"The header of {where} is not valid JSON", "a UTF-8 JSON object", f"{type(exc).__name__}: {exc}") from None
    except UnsafeFileError as exc:
        raise type(exc)(f"{where}: {exc}") from None
    if not isinstance(header, dict):
        raise fail(FileFormatError, f"The header of {where} is not a JSON object", "{name: {dtype, shape, data_offsets}, ...}", f"a JSON {type(header).__name__}")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise fail(FileFormatError, f"The __metadata__ of {where} is malformed", "a JSON object of strings", f"{str(metadata)[:80]}")
    data_size = size - 8 - n
    entries = [_entry(name, info, where, data_size) for name, info in header.items()]
    entries.sort(key=lambda e: (e.begin, e.end))
    position = 0
    for e in entries:
        if e.begin < position:
            raise fail(
                UnsafeFileError,
                f"Tensor {e.name!r} of {where} overlaps another tensor's data",
                f"data_offsets starting at or after {position}",
                f"data_offsets [{e.begin}, {e.end}]",
                "The file is corrupt or hostile; it was not read.",
            )
        if e.begin > position:
            raise fail(
                FileFormatError,
                f"{where} leaves unused bytes before tensor {e.name!r}",
                f"tensors packed one after another (data_offsets starting at {position})",
                f"data_offsets [{e.begin}, {e.end}]",
                "The safetensors library refuses such files too; save the file again.",
            )
        position = e.end
    if position != data_size:
        raise fail(
            FileFormatError,
            f"{where} has {data_size - position} bytes after its last tensor",
            f"the tensors to end where the file ends ({data_size} data bytes)",
            f"tensors covering {position} bytes",
            "The safetensors library refuses such files too; save the file again.",
        )
    return 8 + n, metadata, entries


def _entry(name: str, info: Any, where: str, data_size: int) -> _Entry:
    def bad(what: str, expected: str, received: str, cls: type[LayoutError] = FileFormatError) -> LayoutError:
        return fail(cls, f"Tensor {name!r} of {where}: {what}", expected, received, "The file is corrupt or hostile; it was not read.")

    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise bad("malformed header entry", "exactly the keys dtype, shape, data_offsets", f"{str(info)[:120]}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in SAFETENSORS_DTYPES:
        raise bad("unknown dtype", f"one of {sorted(SAFETENSORS_DTYPES)}", f"{str(dtype)[:40]!r}")

    def whole(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(whole(d) for d in shape):
        raise bad("invalid shape", f"a list of at most {MAX_RANK} non-negative integers", f"{str(shape)[:120]}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(whole(o) for o in offsets) or offsets[0] > offsets[1]:
        raise bad("invalid data_offsets", "[begin, end] with 0 <= begin <= end", f"{str(offsets)[:120]}")
    begin, end = offsets
    if end > data_size:
        raise bad(
            "data_offsets point past the end of the file",
            f"end <= {data_size} (the data bytes present)",
            f"data_offsets [{begin}, {end}]",
            UnsafeFileError,
        )
    nbytes = SAFETENSORS_DTYPES[dtype][0] * int(np.prod(shape, dtype=object))
    if end - begin != nbytes:
        raise bad(
            "data_offsets disagree with dtype and shape",
            f"{nbytes} bytes ({dtype} x shape {shape})",
            f"{end - begin} bytes (data_offsets [{begin}, {end}])",
        )
    return _Entry(name, dtype, tuple(shape), begin, end)


@reader(
    "safetensors",
    "a safetensors file (.safetensors: 8-byte header length, JSON header, raw data)",
    _is_safetensors,
)
def _read_safetensors(path: str) -> FileReport:
    start, metadata, entries = parse_safetensors_header(path)
    by_name = {e.name: e for e in sorted(entries, key=lambda e: e.name)}
    described = {e.name: (e.shape, e.dtype, SAFETENSORS_DTYPES[e.dtype][2] is not None) for e in by_name.values()}
    arrays: dict[str, np.ndarray | None] = {}
    with open(path, "rb") as fh:
        for e in by_name.values():
            nbytes, np_dtype, widen = SAFETENSORS_DTYPES[e.dtype]
            if widen is None:
                arrays[e.name] = None
                continue
            fh.seek(start + e.begin)
            data = fh.read(e.end - e.begin)
            if len(data) != e.end - e.begin:
                raise fail(FileFormatError, f"{path} changed while it was read", f"{e.end - e.begin} bytes for {e.name!r}", f"{len(data)} bytes")
            arrays[e.name] = widen(np.frombuffer(data, dtype=np_dtype).reshape(e.shape))
    facts = [("Header", f"{start - 8} bytes, {len(entries)} tensors")]
    if metadata:
        facts.append(("Metadata", ", ".join(f"{k}={v}" for k, v in list(metadata.items())[:8])))
    return _state_dict_report(
        path,
        "safetensors",
        "safetensors file (header checked by layoutconv; read with numpy)",
        facts,
        described,
        arrays,
        [],
        {"metadata": metadata},
    )


# -- ONNX ----------------------------------------------------------------------
def _is_onnx(p: Probe) -> bool:
    return p.suffix == ".onnx"


def _text(value: Any) -> str:
    """A protobuf string field: protobuf hands invalid UTF-8 over as bytes."""
    return value.decode("utf8", errors="replace") if isinstance(value, bytes) else str(value)


def _dtype_name(tensor_proto: Any, data_type: int) -> str:
    try:
        return tensor_proto.DataType.Name(data_type).lower()
    except ValueError:
        return f"unknown element type {data_type}"


@reader("onnx", "an ONNX model (.onnx: a serialized ModelProto; recognised by its suffix and a successful parse)", _is_onnx)
def _read_onnx(path: str) -> FileReport:
    onnx = _framework("onnx", "onnx")
    from onnx import TensorProto

    from .adapters.onnx_adapter import _load, _refuse_external_data, checked_array

    model = _load(path)  # size cap, typed error for anything protobuf cannot parse
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise fail(
            FileFormatError,
            f"{path} is not an ONNX model",
            "a ModelProto with an ir_version and a graph",
            f"ir_version={model.ir_version}, graph {'present' if model.HasField('graph') else 'absent'}",
            "The bytes parsed as protobuf but hold no ONNX model; check the file.",
        )
    graph = model.graph
    stored: list[tuple[str, Any]] = [(t.name, t) for t in graph.initializer]
    stored += [(n.output[0], a.t) for n in graph.node if n.op_type == "Constant" and n.output for a in n.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR]
    _refuse_external_data(model)  # the adapter's check: initializers and Constant tensors alike
    from . import from_onnx

    convs: list[ConvEntry] = []
    conv_nodes = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose") and n.domain in ("", "ai.onnx")]
    dims = {name: tuple(int(d) for d in t.dims) for name, t in stored}
    roles: dict[str, tuple[str, str | None]] = {}
    for i, node in enumerate(conv_nodes):
        label = _text(node.name) or f"{node.op_type} #{i}"
        kernel = node.input[1] if len(node.input) > 1 else "?"
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        rank = len(dims.get(kernel, ())) - 2
        transposed = node.op_type == "ConvTranspose"
        layout = layouts.canonical(rank, transposed) if rank in layouts.SPATIAL else TORCH_LAYOUT
        roles[kernel] = ("kernel", layout)
        if bias:
            roles[bias] = ("bias", None)
        source = f"ONNX {node.op_type} node, read with layoutconv.from_onnx"
        try:
            conv = from_onnx(model, node=i)
        except LayoutError as exc:
            convs.append(ConvEntry(label, kernel, dims.get(kernel, ()), layout, source, bias=bias, error=str(exc)))
            continue
        one = (lambda v: v[0]) if conv.spatial_rank == 1 else tuple
        convs.append(
            ConvEntry(
                name=label,
                kernel=kernel,
                shape=tuple(conv.kernel.shape),
                layout=layout,
                source=source,
                out_channels=conv.out_channels,
                in_channels_per_group=conv.in_channels // conv.groups,
                kernel_size=one(conv.kernel_shape),
                in_channels=conv.in_channels,
                bias=bias,
                stride=one(conv.stride),
                dilation=one(conv.dilation),
                groups=conv.groups,
                padding=conv.padding,
                padding_mode=getattr(conv, "padding_mode", "zeros"),
            )
        )
    found: list[NonFinite] = []
    checked = 0
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16, TensorProto.COMPLEX64, TensorProto.COMPLEX128}
    for name, t in stored:
        if t.data_type not in floats:
            continue
        checked += 1
        role, layout = roles.get(name, ("tensor", None))
        record = find_nonfinite(checked_array(t, repr(name)), name, role=role, layout=layout)
        if record is not None:
            found.append(record)
    tensors = tuple(
        TensorEntry(_text(name), dims[name], _dtype_name(TensorProto, t.data_type)) for name, t in stored if name not in roles
    )
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
    ops = Counter(n.op_type for n in graph.node)
    producer = " ".join(_text(x) for x in (model.producer_name, model.producer_version) if x) or "not recorded"
    facts = [
        ("Opset", f"{opsets or 'not recorded'} (IR version {model.ir_version}; producer {producer})"),
        ("Graph", f"{len(graph.node)} node{'s' if len(graph.node) != 1 else ''}: " + ", ".join(f"{op} x{c}" for op, c in ops.most_common())),
    ]
    notes = ["Conv nodes are read as layoutconv.from_onnx reads them: a Pad node feeding a Conv is folded into its padding."] if convs else []
    return FileReport(path, "onnx", "ONNX model (protobuf)", tuple(facts), tuple(convs), tensors, tuple(found), checked, tuple(notes))
