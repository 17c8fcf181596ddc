"""Write a :class:`~layoutconv.Conv1D` to a framework's file format, then prove the file holds it.

:func:`save` writes to a temporary file beside the target, reads that file
back with the framework, checks that the weights are the same bytes and the
padding the same computation, runs the framework on a symmetry-breaking input
against the reference, and only then moves the file into place.  A failure at
any step leaves no output file behind.

======== ============================ ==========================================
target   suffix                       what the file holds
======== ============================ ==========================================
onnx     ``.onnx``                    the model from :func:`layoutconv.to_onnx`
keras    ``.keras``                   a Keras 3 model from :func:`layoutconv.to_keras`
torch    ``.pt``, ``.pth``            the ``state_dict`` of the ``nn.Conv1d`` that holds
                                      the weights (plain tensors: loads with
                                      ``torch.load(path, weights_only=True)``)
======== ============================ ==========================================

A ``.pt`` state dict carries no padding: :func:`save` returns the report,
whose ``conv`` says how to build the module (``layoutconv.to_torch(conv)``
builds it, including any padding PyTorch cannot spell itself).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, NamedTuple

from .conv import Conv1D
from .errors import ConfigError, OutputError, UnsupportedError, VerificationError, fail
from .verify import Report, verify


class Target(NamedTuple):
    framework: str
    suffixes: tuple[str, ...]
    write: Callable[[Conv1D, str], None]
    read: Callable[[str, Conv1D], Conv1D]  # read(path, written) -> what the file holds


def _write_onnx(conv: Conv1D, path: str) -> None:
    import onnx

    from . import to_onnx

    onnx.save(to_onnx(conv), path)


def _read_onnx(path: str, written: Conv1D) -> Conv1D:
    from . import from_onnx

    return from_onnx(path)


def _write_keras(conv: Conv1D, path: str) -> None:
    import keras

    from . import to_keras

    native = to_keras(conv, flavor="keras")  # channels_last: inputs (N, *spatial, C)
    if not isinstance(native, keras.Model):
        shape = (None,) * conv.spatial_rank + (conv.in_channels,)
        native = keras.Sequential([keras.Input(shape=shape, dtype=conv.dtype.name), native])
    native.save(path)


def _read_keras(path: str, written: Conv1D) -> Conv1D:
    import keras

    from . import from_keras

    model = keras.saving.load_model(path, compile=False, safe_mode=True)
    return from_keras(model)


def _write_torch(conv: Conv1D, path: str) -> None:
    import torch

    from .adapters.torch_adapter import conv1d_module, to_native

    torch.save(conv1d_module(to_native(conv)).state_dict(), path)


def _read_torch(path: str, written: Conv1D) -> Conv1D:
    import torch

    from .adapters.torch_adapter import conv1d_module, from_native, to_native

    state = torch.load(path, map_location="cpu", weights_only=True)
    module = to_native(written)  # the same geometry, then the file's tensors in place of the weights
    with torch.no_grad():
        for p in conv1d_module(module).parameters():
            p.zero_()
    conv1d_module(module).load_state_dict(state, strict=True)
    return from_native(module)


TARGETS: dict[str, Target] = {
    "onnx": Target("onnx", (".onnx",), _write_onnx, _read_onnx),
    "keras": Target("keras", (".keras",), _write_keras, _read_keras),
    "torch": Target("torch", (".pt", ".pth"), _write_torch, _read_torch),
}


def target_for(path: str | os.PathLike[str], to: str | None = None, table: dict[str, Any] | None = None) -> Any:
    """The target named by ``to``, or the one the output path's suffix implies (in ``table``: :data:`TARGETS` by default)."""
    table = TARGETS if table is None else table
    if to is not None:
        if to not in table:
            raise fail(ConfigError, "Unknown conversion target", f"one of {sorted(table)}", f"{to!r}")
        return table[to]
    suffix = Path(path).suffix.lower()
    for target in table.values():
        if suffix in target.suffixes:
            return target
    known = ", ".join(s for t in table.values() for s in t.suffixes)
    raise fail(
        ConfigError,
        f"Cannot tell the output format of {str(path)!r}",
        f"a file name ending in one of {known}",
        f"suffix {suffix!r}",
        f"Rename the output or pass to= one of {', '.join(map(repr, sorted(table)))}.",
    )


def _writable(path: Path) -> bool:
    """Writable for this user *and* not marked read-only (root ignores permission bits; layoutconv does not)."""
    return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)


def _check_output(final: Path, overwrite: bool, parents: bool) -> None:
    """Refuse an output path that cannot be written as asked, before any work is done."""
    if final.is_dir() and not final.is_symlink():
        raise fail(
            OutputError,
            f"The output path {str(final)!r} is a directory",
            "a file name (e.g. model.onnx)",
            "a directory",
            f"Write into it with a file name: {str(final / ('model' + final.suffix if final.suffix else 'model.onnx'))!r}.",
        )
    if final.exists() or final.is_symlink():
        if not overwrite:
            what = "a symbolic link" if final.is_symlink() else "a file"
            raise fail(
                OutputError,
                f"The output {str(final)!r} already exists",
                "a path that does not exist yet, or overwrite=True (--force on the command line)",
                what,
                "Nothing was written.",
            )
        if not final.is_symlink() and not _writable(final):
            raise fail(
                OutputError,
                f"The output {str(final)!r} is read-only",
                "a writable file to overwrite",
                "a file without write permission",
                "Make it writable or remove it first; nothing was written.",
            )
    parent = final.parent
    if not parent.is_dir():
        if not parents:
            raise fail(
                OutputError,
                f"The output directory {str(parent)!r} does not exist",
                "an existing directory, or parents=True to create it",
                "no such directory" if not parent.exists() else "a path that is not a directory",
                "Create it first (mkdir -p), or pass parents=True.",
            )
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise fail(
                OutputError, f"Cannot create the output directory {str(parent)!r}", "a directory that can be created",
                f"{exc.strerror or exc}",
            ) from None
    if not (_writable(parent) and os.access(parent, os.X_OK)):
        raise fail(
            OutputError,
            f"The output directory {str(parent)!r} is not writable",
            "a directory this user can write to",
            "a read-only directory",
            "Choose another output path; nothing was written.",
        )


def temporary_beside(final: Path, suffix: str) -> str:
    """A free temporary name beside ``final`` (hidden, same directory, so the final rename is atomic); the file is
    not left behind: writers create it themselves."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix, dir=final.parent)
    except OSError as exc:
        raise fail(
            OutputError, f"Cannot write into {str(final.parent)!r}", "a writable directory", f"{exc.strerror or exc}",
            "Choose another output path; nothing was written.",
        ) from None
    os.close(fd)
    os.unlink(tmp)  # some writers refuse to overwrite, and rewriting a truncated file makes ext4 flush it on close
    return tmp


def save(
    conv: Conv1D,
    path: str | os.PathLike[str],
    *,
    to: str | None = None,
    x: Any = None,
    overwrite: bool = False,
    parents: bool = False,
) -> Report:
    """Write ``conv`` to ``path``, read it back, verify it, and only then keep the file.

    Returns the verification report of the framework that reads the file.
    Nothing is written (and no temporary file is left) when anything fails:

    - an existing ``path`` is refused unless ``overwrite=True``; a missing parent
      directory is refused unless ``parents=True`` (it is then created);
      both as :class:`~layoutconv.OutputError`;
    - a file that does not hold ``conv`` exactly, or whose framework's outputs differ
      from the reference, raises :class:`~layoutconv.VerificationError`;
    - a configuration the framework cannot express or run raises
      :class:`~layoutconv.UnsupportedError`.

    An existing symbolic link at ``path`` is replaced by the file (with
    ``overwrite=True``); the file it pointed to is never touched.
    """
    target = target_for(path, to)
    final = Path(path)
    _check_output(final, overwrite, parents)
    suffix = final.suffix if final.suffix.lower() in target.suffixes else target.suffixes[0]
    tmp = temporary_beside(final, suffix)
    try:
        try:
            target.write(conv, tmp)
            back = target.read(tmp, conv)
        except OSError as exc:
            raise fail(
                OutputError, f"Cannot write {str(final)!r}", "room and permission to write the file",
                f"{exc.strerror or exc}", "Nothing was written.",
            ) from None
        if not (back.same_weights(conv) and back.equivalent(conv, spatial=_probe_length(conv))):
            raise fail(
                VerificationError,
                f"The {target.framework} file does not hold the convolution that was written",
                f"{conv!r} with the same weight bytes",
                f"{back!r}",
                "This is a bug in layoutconv; please report it with the configuration. Nothing was written.",
            )
        report = verify(conv, frameworks=[target.framework], x=x)
        result = report[target.framework]
        if result.status == "unsupported":
            raise fail(
                UnsupportedError,
                f"{target.framework} cannot run this convolution, so the file could not be verified",
                "a configuration the framework runs",
                result.message,
                "Nothing was written.",
            )
        if not report.passed:
            raise fail(
                VerificationError,
                f"The {target.framework} model written to {str(final)!r} does not compute the reference's outputs",
                "every element within tolerance",
                "\n" + str(report),
                "Nothing was written.",
            )
        try:
            os.replace(tmp, final)
        except OSError as exc:
            raise fail(
                OutputError, f"Cannot move the verified file to {str(final)!r}", "a writable path",
                f"{exc.strerror or exc}", "Nothing was written.",
            ) from None
        return report
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _probe_length(conv: Conv1D) -> int:
    return 2 * conv.receptive_field[0] + 3 * conv.stride[0] + 1
