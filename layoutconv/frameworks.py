"""The table of frameworks: names, aliases, and which adapter module serves each.

Adapters are imported on first use, never at ``import layoutconv``.  Every
adapter module has the same shape:

``NAME``                 the canonical framework name
``REQUIRES``             top-level modules it imports (for availability checks)
``from_native(obj)``     framework layer -> :class:`~layoutconv.Conv1D`
``to_native(conv, **options)``  :class:`~layoutconv.Conv1D` -> framework layer
``run(native, x)``       apply the layer to ``x`` given as ``(N, C, L)``; return ``(N, O, L_out)`` numpy
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Iterator

from .errors import ConfigError, FrameworkMissingError, fail

#: canonical name -> adapter module
ADAPTERS: dict[str, str] = {
    "keras": "layoutconv.adapters.keras_adapter",
    "tf_keras": "layoutconv.adapters.tf_keras_adapter",
    "torch": "layoutconv.adapters.torch_adapter",
    "onnx": "layoutconv.adapters.onnx_adapter",
}

#: every accepted spelling -> canonical name
ALIASES: dict[str, str] = {
    "keras": "keras",
    "keras3": "keras",
    "keras 3": "keras",
    "tf_keras": "tf_keras",
    "tf.keras": "tf_keras",
    "tf-keras": "tf_keras",
    "keras2": "tf_keras",
    "keras 2": "tf_keras",
    "torch": "torch",
    "pytorch": "torch",
    "pt": "torch",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "ort": "onnx",
}

#: what ``pip install`` brings each framework (for error messages)
INSTALL_HINT: dict[str, str] = {
    "keras": "pip install 'layoutconv[keras]'",
    "tf_keras": "pip install 'layoutconv[keras]'",
    "torch": "pip install 'layoutconv[torch]' -c constraints.txt",
    "onnx": "pip install 'layoutconv[onnx]'",
}

#: top-level modules each framework needs
REQUIRES: dict[str, tuple[str, ...]] = {
    "keras": ("keras", "tensorflow"),
    "tf_keras": ("tf_keras", "tensorflow"),
    "torch": ("torch",),
    "onnx": ("onnx", "onnxruntime"),
}


def canonical_name(name: str) -> str:
    """Normalise a framework alias (``"pt"``, ``"pytorch"``, ``"tf.keras"`` ...)."""
    key = str(name).strip().lower()
    if key not in ALIASES:
        raise fail(
            ConfigError,
            "Unknown framework",
            f"one of {sorted(set(ALIASES))}",
            f"{name!r}",
        )
    return ALIASES[key]


def is_available(name: str) -> bool:
    """True when every module the framework needs can be found (nothing is imported)."""
    return all(importlib.util.find_spec(m) is not None for m in REQUIRES[canonical_name(name)])


def adapter(name: str) -> ModuleType:
    """Import and return the adapter module for a framework, with a clear error if it is missing."""
    canon = canonical_name(name)
    missing = [m for m in REQUIRES[canon] if importlib.util.find_spec(m) is None]
    if missing:
        raise fail(
            FrameworkMissingError,
            f"The {canon} adapter needs {', '.join(missing)}",
            "the framework to be installed",
            "an environment without it",
            f"Install it with: {INSTALL_HINT[canon]}",
        )
    with _quiet_native_stderr(QUIET_IMPORTS and ADAPTERS[canon] not in sys.modules):
        return importlib.import_module(ADAPTERS[canon])


#: Set by the command line: hide what frameworks print from C++ while they are imported.
QUIET_IMPORTS = False


@contextlib.contextmanager
def _quiet_native_stderr(active: bool) -> Iterator[None]:
    """Point file descriptor 2 at /dev/null while a framework is imported.

    TensorFlow's C++ start-up lines ("All log messages before absl::InitializeLog() ...",
    "Could not find cuda drivers ...") ignore TF_CPP_MIN_LOG_LEVEL and go straight to
    the process's stderr; only the command line asks for this, a library caller's
    stderr is left alone.  Python errors still arrive as exceptions.
    """
    if not active:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded interpreter): nothing to hide
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


#: top-level module of an object's class -> framework (tf_keras before keras: "tf_keras" starts with neither)
_OBJECT_ROOTS: dict[str, str] = {"torch": "torch", "tf_keras": "tf_keras", "keras": "keras", "onnx": "onnx"}


def framework_of(obj: object) -> str:
    """The framework a native object belongs to, from its class's module (nothing is imported).

    A class whose method resolution order passes through a framework counts
    (a user's ``torch.nn.Module`` subclass defined in ``__main__`` is ``torch``).
    """
    for cls in type(obj).__mro__:
        module = cls.__module__ or ""
        root = module.split(".")[0]
        if root == "tensorflow" and ".python.keras" in module:
            return "tf_keras"
        if root in _OBJECT_ROOTS:
            return _OBJECT_ROOTS[root]
    raise fail(
        ConfigError,
        "Cannot tell which framework this object belongs to",
        "a torch.nn.Module, a Keras 3 or tf_keras layer or model, or an onnx.ModelProto",
        f"{type(obj).__module__}.{type(obj).__qualname__}",
    )
