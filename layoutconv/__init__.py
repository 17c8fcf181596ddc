"""layoutconv: move trained convolution weights between Keras, PyTorch and ONNX, and prove nothing changed.

>>> import layoutconv                                   # imports numpy only
>>> conv = layoutconv.from_keras(keras_layer)           # doctest: +SKIP
>>> module = layoutconv.to_torch(conv)                  # doctest: +SKIP
>>> print(layoutconv.verify(conv))                      # doctest: +SKIP

No framework is imported until an adapter that needs it is called, and
``import layoutconv`` itself loads only the exceptions and ``verify``: records,
the reference pass, layers, graphs, the legacy readers, explain and diagnose
load on first use (module ``__getattr__``, :data:`_LAZY`).
"""

from __future__ import annotations

import importlib as _importlib
from typing import Any

# Eager: the exceptions (tiny) and verify.  verify is both a function and a
# submodule; importing the submodule here, once, lets the function keep the name
# (an import of layoutconv.verify later would otherwise rebind it to the module).
# layoutconv/verify.py imports its heavier helpers on first call.
from .errors import (
    ConfigError,
    FileFormatError,
    FrameworkMissingError,
    LayoutError,
    OutputError,
    ShapeError,
    UnsafeFileError,
    UnsupportedError,
    VerificationError,
)
from .verify import Report, Result, verify

__version__ = "0.1.0"

__all__ = [
    "Conv",
    "Conv1D",
    "Conv2D",
    "Conv3D",
    "Chain",
    "ConvTranspose",
    "ConvTranspose1D",
    "ConvTranspose2D",
    "ConvTranspose3D",
    "PADDING_MODES",
    "PADDING_RULES",
    "LayoutError",
    "ConfigError",
    "ShapeError",
    "UnsupportedError",
    "FrameworkMissingError",
    "FileFormatError",
    "UnsafeFileError",
    "OutputError",
    "VerificationError",
    "from_keras",
    "from_torch",
    "from_onnx",
    "to_keras",
    "to_torch",
    "to_onnx",
    "verify",
    "save",
    "read_model",
    "port",
    "Graph",
    "SimpleRNN",
    "LSTM",
    "GRU",
    "Bidirectional",
    "recurrent",
    "layers",
    "open",
    "from_keras1",
    "explain",
    "diagnose",
    "Explanation",
    "Diagnosis",
    "Convention",
    "CONVENTIONS",
    "Report",
    "Result",
    "activations",
    "layouts",
    "reference",
]


def _keras_flavor(layer: Any) -> str:
    module = type(layer).__module__ or ""
    return "tf_keras" if module.startswith("tf_keras") or ".python.keras" in module else "keras"


def from_keras(layer: Any) -> Any:
    """A built Keras convolution (Keras 3 or tf_keras, any ``data_format``) as a record.

    ``Conv1D/2D/3D`` and ``DepthwiseConv*D`` give a :class:`Conv`, ``Conv*DTranspose`` a
    :class:`ConvTranspose`, ``SeparableConv*D`` a :class:`Chain`; a fused activation is kept.
    """
    from .frameworks import adapter

    return adapter(_keras_flavor(layer)).from_native(layer)


def from_torch(module: Any) -> Any:
    """A PyTorch ``nn.Conv1d/2d/3d`` or ``nn.ConvTranspose1d/2d/3d`` (or a module made by :func:`to_torch`) as a record."""
    from .frameworks import adapter

    return adapter("torch").from_native(module)


def from_onnx(model_or_path: Any, node: str | int | None = None) -> Any:
    """A ``Conv`` or ``ConvTranspose`` node of an ONNX model (a ``ModelProto`` or a path) as a record.

    ``node`` picks a node by name or index among those nodes (in graph order); it may be
    omitted when the graph has exactly one.  The file's sub-graphs are never executed.
    """
    from .frameworks import adapter

    return adapter("onnx").from_native(model_or_path, node=node)


def to_keras(conv: Any, flavor: str = "keras", data_format: str = "channels_last", **options: Any) -> Any:
    """A built Keras layer (or small model, when a padding layer is needed) with the weights set.

    A :class:`~layoutconv.graph.Graph` becomes a functional model computing channels last
    inside and taking its inputs as the source did (``layout="source"``; see
    :mod:`layoutconv.adapters.keras_layers`).

    ``flavor`` is ``"keras"`` (Keras 3) or ``"tf_keras"`` (Keras 2).  The result is
    callable on a numpy array in ``data_format``.  Note that TensorFlow without a
    GPU has no ``channels_first`` convolution kernel: call such a layer through
    ``tf.function(layer, jit_compile=True)`` on a CPU (``verify`` does).
    ``length`` (keyword) fixes the input length for ``same_lower`` padding with a
    stride above 1, which Keras cannot express for every length.
    """
    from .registry import converter

    return converter(conv, flavor).to_native(conv, data_format=data_format, **options)


def to_torch(record: Any, **options: Any) -> Any:
    """A PyTorch module in eval mode: any record runs on ``(N, C, *spatial)``; a :class:`Graph` gives a whole model.

    A graph's module takes its inputs in the source model's layouts (a Keras
    model's twin takes ``(N, steps, channels)``); ``layout="channels_first"``
    makes it take PyTorch's.
    """
    from .registry import converter

    return converter(record, "torch").to_native(record, **options)


def to_onnx(conv: Any, **options: Any) -> Any:
    """An ONNX ``ModelProto`` that passes the full checker: a convolution (input ``x``, ``(N, C, *spatial)``, dynamic
    sizes), a layer record, or a whole graph (inputs and outputs named and laid out as in the source model)."""
    from .registry import converter

    return converter(conv, "onnx").to_native(conv, **options)


#: public name -> (module, attribute), imported on first use; ``None`` as attribute: the module itself
_LAZY: dict[str, tuple[str, str | None]] = {
    **{name: ("layoutconv.conv", name) for name in ("Conv", "Conv1D", "Conv2D", "Conv3D", "PADDING_MODES", "PADDING_RULES")},
    **{name: ("layoutconv.transpose", name) for name in ("ConvTranspose", "ConvTranspose1D", "ConvTranspose2D", "ConvTranspose3D")},
    "Chain": ("layoutconv.chain", "Chain"),
    "Convention": ("layoutconv.conventions", "Convention"),
    "CONVENTIONS": ("layoutconv.conventions", "CONVENTIONS"),
    "explain": ("layoutconv._explain", "explain"),
    "Explanation": ("layoutconv._explain", "Explanation"),
    "diagnose": ("layoutconv._diagnose", "diagnose"),
    "Diagnosis": ("layoutconv._diagnose", "Diagnosis"),
    "open": ("layoutconv.legacy", "open"),
    "from_keras1": ("layoutconv.legacy", "from_keras1"),
    "save": ("layoutconv.convert", "save"),
    "read_model": ("layoutconv.model", "read_model"),
    "port": ("layoutconv.porting", "port"),
    "Graph": ("layoutconv.graph", "Graph"),
    **{name: ("layoutconv.recurrent", name) for name in ("SimpleRNN", "LSTM", "GRU", "Bidirectional")},
    # submodules: the public ones, and those `import layoutconv` used to load (still reachable as attributes)
    **{
        name: (f"layoutconv.{name}", None)
        for name in (
            "activations", "layers", "layouts", "reference", "recurrent", "legacy", "graph",
            "conv", "chain", "conventions", "transpose", "record", "registry", "tolerance", "frameworks",
        )
    },
}


def __getattr__(name: str) -> Any:
    # PEP 562: called only for names not (yet) in this module's namespace
    if name not in _LAZY:
        raise AttributeError(f"module 'layoutconv' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = _importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_LAZY))
