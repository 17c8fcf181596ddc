"""Whole models in: :func:`read_model` turns a Keras model or file, or a PyTorch module, into a :class:`~layoutconv.graph.Graph`.

>>> graph = layoutconv.read_model("model.h5")                                  # doctest: +SKIP
>>> graph = layoutconv.read_model(torch_module, example_inputs=x)              # doctest: +SKIP
>>> graph = layoutconv.read_model("weights.h5", architecture="model.json")     # doctest: +SKIP
>>> graph = layoutconv.read_model(keras_model)                                 # doctest: +SKIP
>>> y = layoutconv.reference.forward(graph, x)          # numpy, in Keras' layout  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

from . import frameworks
from .errors import ConfigError, FileFormatError, UnsupportedError, fail
from .graph import Graph
from .record import Record

#: The largest model.json accepted (bytes).
MAX_ARCHITECTURE_BYTES = 64 << 20


class _FileSource:
    """Weights of a Keras file (any version) for :func:`layoutconv._keras_graph.build`."""

    def __init__(self, kf: Any) -> None:
        self.kf = kf
        self.generation = kf.generation
        self.backend = kf.backend
        self._names = {layer.name for layer in kf.layers}

    def arrays(self, layer: str) -> list[np.ndarray]:
        return self.kf.weights(layer) if layer in self._names else []

    def conv(self, layer: str) -> Record:
        return self.kf.conv(layer)

    def recurrent(self, layer: str, class_name: str, config: dict, arrays: list[np.ndarray]) -> Record:
        if self.generation == 3:  # Keras 3 names its arrays vars/0, vars/1 ...: they come in get_weights order
            return _recurrent(3, class_name, config, arrays, layer)
        names = [w.name for w in self.kf.layer(layer).weights]
        return _recurrent(self.generation, class_name, config, dict(zip(names, arrays)), layer)


class _LiveSource:
    """Weights of a Keras model in memory (Keras 3 or tf_keras)."""

    def __init__(self, model: Any, flavour: str) -> None:
        self.model = model
        self.flavour = flavour
        self.generation = 3 if flavour == "keras" else 2
        self.backend = "tensorflow"

    def arrays(self, layer: str) -> list[np.ndarray]:
        return [np.asarray(w) for w in self.model.get_layer(layer).get_weights()]

    def conv(self, layer: str) -> Record:
        return frameworks.adapter(self.flavour).from_native(self.model.get_layer(layer))

    def recurrent(self, layer: str, class_name: str, config: dict, arrays: list[np.ndarray]) -> Record:
        return _recurrent(self.generation, class_name, config, arrays, layer)


def _recurrent(generation: int, class_name: str, config: dict, arrays: Any, layer: str) -> Record:
    """A recurrent layer from its Keras config and arrays (a list in stored order, or ``{weight name: array}``)."""
    from .legacy import recurrent

    if generation == 1:
        return recurrent.from_keras1_weights(class_name, config, arrays)
    return recurrent.from_keras2_weights(class_name, config, arrays, generation=generation)


def _keras_flavour(obj: Any) -> str | None:
    module = type(obj).__module__ or ""
    if not hasattr(obj, "get_config") or not hasattr(obj, "layers"):
        return None
    if module.startswith("tf_keras") or ".python.keras" in module:
        return "tf_keras"
    if module.startswith("keras"):
        return "keras"
    return None


def _is_torch_module(obj: Any) -> bool:
    """True for a ``torch.nn.Module`` (torch is never imported here: a module exists only once torch is)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def _live_config(model: Any) -> dict:
    try:
        config = model.get_config()
    except NotImplementedError:
        raise fail(
            UnsupportedError,
            f"The Keras model {getattr(model, 'name', '?')!r} has no config (a subclassed Model)",
            "a Sequential or functional model",
            f"a {type(model).__name__}",
            "Rebuild it as a functional model, or port its weights into it with layoutconv.port.",
        ) from None
    return {"class_name": type(model).__name__ if type(model).__name__ == "Sequential" else "Functional", "config": config}


def _architecture(architecture: Any) -> Any:
    """A model config from a path to model.json, a JSON string, a parsed dict, or a Keras model."""
    if isinstance(architecture, dict):
        return architecture
    if _keras_flavour(architecture):
        return _live_config(architecture)
    if isinstance(architecture, (str, os.PathLike)):
        text = str(architecture)
        if not text.lstrip().startswith("{"):
            try:
                size = os.path.getsize(text)
            except OSError as exc:
                raise fail(FileFormatError, "The architecture file cannot be read", "a model.json path", f"{text!r} ({exc.strerror})") from None
            if size > MAX_ARCHITECTURE_BYTES:
                raise fail(FileFormatError, "The architecture file is too large", f"at most {MAX_ARCHITECTURE_BYTES} bytes", f"{size} bytes")
            with open(text, encoding="utf-8") as f:
                text = f.read()
        from .legacy.formats import _json

        return _json(text, str(architecture)[:80], "architecture")
    raise fail(ConfigError, "Invalid value for argument `architecture`", "a model.json path, JSON text, a dict or a Keras model", f"a {type(architecture).__name__}")


def _is_onnx(source: Any) -> bool:
    """An ``onnx.ModelProto`` (recognised without importing onnx) or a path ending in ``.onnx``."""
    if type(source).__name__ == "ModelProto" and (type(source).__module__ or "").startswith("onnx"):
        return True
    return isinstance(source, (str, os.PathLike)) and os.fspath(source).lower().endswith(".onnx")


def keras_model_file(path: str | os.PathLike[str], *, architecture: Any = None, backend: str | None = None) -> Any:
    """The :class:`~layoutconv.legacy.KerasFile` of a whole model: a full save, or weights with ``architecture``."""
    from .legacy import open as open_keras_file

    kf = open_keras_file(path, backend=backend)
    if architecture is not None:
        kf = kf.with_architecture(_architecture(architecture))
    if kf.model_config is None:
        weighted = [layer.name for layer in kf.layers if layer.weights]
        raise fail(
            ConfigError,
            f"{kf.path} holds weights only ({kf.format}): it does not say how the layers connect",
            "a full model save, or architecture= (the model.json from model.to_json(), or the Keras model)",
            f"the weighted layers {weighted[:20]}",
            "Pass architecture=..., or port the weights into your own model with layoutconv.port(path, model).",
        )
    return kf


def read_model(source: Any, *, architecture: Any = None, backend: str | None = None, example_inputs: Any = None) -> Graph:
    """A whole model as a :class:`~layoutconv.graph.Graph`: a Keras model (Keras 3 or tf_keras), a Keras file, a PyTorch module, or ONNX.

    An ONNX model (``onnx.ModelProto`` or a ``.onnx`` path) is read node by node without
    running any of it (see :mod:`layoutconv.adapters.onnx_layers`).

    ``source`` is a built Keras ``Sequential`` or functional model, or the path of
    a Keras file of any version: a full save (``.h5`` with ``model_config``,
    ``.keras``) or a weights-only file together with ``architecture=`` (the path
    of the ``model.json`` written by ``model.to_json()``, its text, or a Keras
    model with the same layers).  Theano-trained convolutions are flipped as
    :meth:`~layoutconv.legacy.KerasFile.conv` does; ``backend`` overrides the
    file's (see :func:`layoutconv.open`).

    A ``torch.nn.Module`` is traced with ``torch.fx`` and needs
    ``example_inputs`` (a tensor, or a tuple with one per ``forward`` argument,
    batch first), which fix every shape in the graph; see
    :mod:`layoutconv.adapters.torch_read` for what is read and how.
    """
    from . import _keras_graph

    if isinstance(source, Graph):
        return source
    if _is_onnx(source):
        if architecture is not None or backend is not None or example_inputs is not None:
            raise fail(ConfigError, "An ONNX model carries its own architecture", "no architecture=, backend= or example_inputs=", "one of them")
        frameworks.adapter("onnx")  # FrameworkMissingError with the install hint when onnx is missing
        from .adapters.onnx_layers import read_model as read_onnx

        return read_onnx(source)
    if _is_torch_module(source):
        if example_inputs is None:
            raise fail(
                ConfigError,
                f"Reading the PyTorch model {type(source).__name__} needs example inputs",
                "example_inputs=<a tensor, or a tuple with one tensor per forward argument, batch first>",
                "example_inputs=None",
                "torch.fx gives the operations; the shapes (the rank of a BatchNorm input, the target of a view) "
                "come from running the model once on them.",
            )
        from .adapters import torch_read

        return torch_read.read_module(source, example_inputs)
    if example_inputs is not None:
        raise fail(
            ConfigError,
            "example_inputs is only for PyTorch models",
            "example_inputs=None for a Keras model or file (their configs give every shape)",
            f"example_inputs for a {type(source).__name__}",
        )
    flavour = _keras_flavour(source)
    if flavour is not None:
        config = _live_config(source) if architecture is None else _architecture(architecture)
        return _keras_graph.build(config, _LiveSource(source, flavour), name=getattr(source, "name", None))
    if isinstance(source, (str, os.PathLike)):
        kf = keras_model_file(source, architecture=architecture, backend=backend)
        return _keras_graph.build(kf.model_config, _FileSource(kf))
    raise fail(
        UnsupportedError,
        "read_model cannot read this object yet",
        "a Keras model (Keras 3 or tf_keras), a Keras file path, a torch.nn.Module, an ONNX model or .onnx path, or a layoutconv Graph",
        f"a {type(source).__module__}.{type(source).__name__}",
    )
