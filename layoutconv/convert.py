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
from .errors import ConfigError, LayoutError, UnsupportedError, fail
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

    native = to_keras(conv, flavor="keras")  # channels_last: inputs (N, L, C)
    if not isinstance(native, keras.Model):
        native = keras.Sequential([keras.Input(shape=(None, conv.in_channels), dtype=conv.dtype.name), native])
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


def target_for(path: str | os.PathLike[str], to: str | None = None) -> Target:
    """The target named by ``to``, or the one the output path's suffix implies."""
    if to is not None:
        if to not in TARGETS:
            raise fail(ConfigError, "Unknown conversion target", f"one of {sorted(TARGETS)}", f"{to!r}")
        return TARGETS[to]
    suffix = Path(path).suffix.lower()
    for target in TARGETS.values():
        if suffix in target.suffixes:
            return target
    known = ", ".join(s for t in TARGETS.values() for s in t.suffixes)
    raise fail(
        ConfigError,
        f"Cannot tell the output format of {str(path)!r}",
        f"a file name ending in one of {known}",
        f"suffix {suffix!r}",
        "Rename the output or pass to='onnx' / 'keras' / 'torch'.",
    )


def save(conv: Conv1D, path: str | os.PathLike[str], *, to: str | None = None, x: Any = None) -> Report:
    """Write ``conv`` to ``path``, read it back, verify it, and only then keep the file.

    Returns the verification report of the framework that reads the file.
    Raises a :class:`~layoutconv.LayoutError` (and writes nothing) when the file
    would not hold ``conv`` exactly or the framework's outputs differ from the
    reference.
    """
    target = target_for(path, to)
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = final.suffix if final.suffix.lower() in target.suffixes else target.suffixes[0]
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix, dir=final.parent)
    os.close(fd)
    try:
        os.unlink(tmp)  # some writers refuse to overwrite; they create the file themselves
        target.write(conv, tmp)
        back = target.read(tmp, conv)
        if not (back.same_weights(conv) and back.equivalent(conv, spatial=_probe_length(conv))):
            raise fail(
                LayoutError,
                f"The {target.framework} file does not hold the convolution that was written",
                f"{conv!r} with the same weight bytes",
                f"{back!r}",
                "This is a bug in layoutconv; please report it with the configuration.",
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
                LayoutError,
                f"The {target.framework} model written to {str(final)!r} does not compute the reference's outputs",
                "every element within tolerance",
                "\n" + str(report),
            )
        os.replace(tmp, final)
        return report
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _probe_length(conv: Conv1D) -> int:
    return 2 * conv.receptive_field[0] + 3 * conv.stride[0] + 1
