"""PyTorch models in: a ``torch.nn.Module`` traced by ``torch.fx`` becomes a :class:`~layoutconv.graph.Graph`.

:func:`read_module` (what ``layoutconv.read_model(module, example_inputs=x)``
calls) traces the module with ``torch.fx`` (``symbolic_trace``'s rules:
standard ``torch.nn`` modules and layoutconv's own modules are leaves,
everything else is followed into its ``forward``), runs the traced module on
``example_inputs`` and on a batch one sample larger to learn every tensor's
shape and to make sure no operation mixes samples, and turns each fx node into
records (:mod:`layoutconv.layers`, :class:`~layoutconv.Conv` ...).  A layer's
name is the module's qualified name (``features.0``, ``classifier.1``); a
function call is named after its fx node (``add``, ``cat_1``, ``flatten``).

**Layouts.**  The graph's data is channels first, and PyTorch's tensors mostly
are too: an edge whose torch tensor *is* the canonical array is
``"channels_first"`` (``"flat"`` for 2-d).  Some torch tensors hold the channel
axis last: the output of ``nn.Embedding`` (``(N, T, D)``), or a convolution's
output after ``x.transpose(1, 2)``.  Those edges are ``"channels_last"``: the
canonical array is the torch tensor with its last axis moved to 1, so the
``(N, T, D)`` of an embedding is the canonical ``(N, D, T)``, exactly what a
Keras model holds as ``(N, T, D)``.  Every reader states the layout it needs
(a convolution the channels first; ``nn.Linear`` and ``nn.LayerNorm`` act on
the last torch axis, so they need it last) and a ``Permute`` node
(``<layer>.channels_first`` / ``.channels_last``) moves the data where they
differ.  A ``permute``/``transpose`` that only moves the channel axis to the
end (or back) moves no data: it is an ``Identity`` node whose edge changes layout.
``Flatten``, ``Reshape`` and ``Permute`` records carry the layout of the edge
they read as their ``order``, so they list elements as PyTorch does.

Read as:

============================================  =========================================================
PyTorch                                       record
============================================  =========================================================
``nn.Conv1d/2d/3d``, ``nn.ConvTranspose*``,   :class:`~layoutconv.Conv` / ``ConvTranspose``
layoutconv's ``Padded*``/``Cropped*``         (:func:`torch_adapter.from_native`); a reflection,
                                              replication or circular pad module whose only user
                                              is a convolution is folded into it
``nn.Linear``                                 ``Dense`` (on the last axis)
``nn.BatchNorm1d/2d/3d``                      ``BatchNorm`` (running statistics, ``eps``)
``nn.LayerNorm``                              ``LayerNorm`` over the trailing axes
``nn.Embedding``                              ``Embedding`` (output ``"channels_last"``)
activation modules, ``F.relu``, ...           ``Activation`` (names of :mod:`layoutconv.activations`)
``nn.Softmax``, ``F.softmax``                 ``Softmax`` (axis mapped)
``nn.MaxPool*``/``AvgPool*``, ``F.*_pool*``   ``Pool`` (``ceil_mode`` only where it changes nothing)
``nn.AdaptiveAvg/MaxPool*``                   ``GlobalPool(keepdims=True)`` for output size 1,
                                              ``Pool`` when the input divides evenly
``x.mean([2, 3])``, ``x.amax(...)``           ``GlobalPool`` (over every spatial axis)
``nn.Flatten``, ``torch.flatten``, ``view``,  ``Flatten`` / ``Reshape`` with the edge's ``order``
``reshape``, ``unsqueeze``, ``squeeze``
``permute``, ``transpose``                    ``Permute`` (or a layout change, above)
``+ - *``, ``torch.add/sub/mul/cat``,         ``Merge`` (inputs of one shape; no broadcasting)
``torch.maximum/minimum``
``nn.ZeroPad*``, ``nn.ConstantPad*``,         ``Pad`` (``Crop`` for negative pads)
``F.pad(mode="constant")``
``nn.Dropout*``, ``nn.Identity``,             nothing: the edge passes through
``F.dropout(training=False)``, ``contiguous``
============================================  =========================================================

Anything else is an :class:`~layoutconv.UnsupportedError` naming the fx node,
its target and the module it sits in.
"""

from __future__ import annotations

import operator
import os
import traceback
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from .. import layers
from ..errors import ConfigError, LayoutError, ShapeError, UnsupportedError, fail
from ..graph import Graph, Input, Node
from ..record import Record
from . import torch_adapter as base
from . import torch_layers

# -- tracing ------------------------------------------------------------------------------------------

#: layoutconv's own modules: leaves of the trace (their forward computes a record)
_LEAVES: tuple[type, ...] = (
    base._Padded,
    base._CroppedTranspose,
    torch_layers.Activation,
    torch_layers.Flatten,
    torch_layers.Reshape,
    torch_layers.Permute,
    torch_layers.Pad,
    torch_layers.Crop,
    torch_layers.Merge,
    torch_layers.GlobalPool,
    torch_layers.Pool,
    torch_layers.Linear,
    torch_layers.BatchNorm,
)

_TORCH_DIR = os.path.dirname(torch.__file__)
_THIS_FILE = os.path.abspath(__file__)


class _Tracer(fx.Tracer):
    """``symbolic_trace``'s tracer, with layoutconv's modules as leaves and the path of the module being traced."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.failed_in: str | None = None  # the innermost module being traced when an error went up

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        self.stack.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self.stack[-1]
            raise
        finally:
            self.stack.pop()


def _user_frame(exc: BaseException) -> str:
    """``file:line in function`` of the innermost frame outside torch and this module, or ''."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = os.path.abspath(frame.filename)
        if not path.startswith(_TORCH_DIR) and path != _THIS_FILE:
            return f"{os.path.basename(frame.filename)}:{frame.lineno} in {frame.name}" + (f": {frame.line.strip()}" if frame.line else "")
    return ""


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def trace(module: nn.Module) -> fx.GraphModule:
    """``module`` as an ``fx.GraphModule`` (layoutconv's modules kept whole), or an UnsupportedError naming what stopped it."""
    tracer = _Tracer()
    try:
        graph = tracer.trace(module)
    except Exception as exc:  # fx raises TraceError, TypeError, NotImplementedError ... from user code
        inner = tracer.failed_in or ""
        where = f"in submodule {inner!r} ({type(module.get_submodule(inner)).__name__})" if inner else f"in {type(module).__name__}.forward"
        frame = _user_frame(exc)
        raise fail(
            UnsupportedError,
            f"torch.fx cannot trace {type(module).__name__}: it stopped {where}" + (f" at {frame}" if frame else ""),
            "a forward that torch.fx.symbolic_trace can follow (no Python control flow on tensor values, "
            "no len() or int() of tensors, no iteration over tensors)",
            f"{type(exc).__name__}: {_first_line(exc)}",
            "Rewrite that part without data-dependent control flow, or read the traceable parts of the model separately.",
        ) from exc
    name = type(module).__name__
    return fx.GraphModule(tracer.root, graph, name)


class _Value(NamedTuple):
    """What one fx node gave on an example run: a tensor's shape and dtype, or a plain value."""

    shape: tuple[int, ...] | None
    dtype: torch.dtype | None
    holds_tensors: bool = False


def _describe(value: Any) -> _Value:
    if isinstance(value, torch.Tensor):
        return _Value(tuple(int(n) for n in value.shape), value.dtype)

    def has_tensor(v: Any, depth: int = 0) -> bool:
        if isinstance(v, torch.Tensor):
            return True
        if depth < 8 and isinstance(v, (list, tuple)):
            return any(has_tensor(i, depth + 1) for i in v)
        if depth < 8 and isinstance(v, dict):
            return any(has_tensor(i, depth + 1) for i in v.values())
        return False

    return _Value(None, None, has_tensor(value))


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[str, _Value] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n.name] = _describe(out)
        return out


def _run(gm: fx.GraphModule, inputs: Sequence[torch.Tensor], what: str) -> dict[str, _Value]:
    recorder = _Recorder(gm)
    try:
        with torch.no_grad():
            recorder.run(*inputs)
    except Exception as exc:
        frame = _user_frame(exc)
        raise fail(
            ShapeError,
            f"The traced model failed on {what}" + (f" at {frame}" if frame else ""),
            "inputs the model runs on, batch first, with any batch size (the model is also run on one sample more)",
            f"shapes {[tuple(t.shape) for t in inputs]}: {type(exc).__name__}: {_first_line(exc)}",
            "A model that fixes its batch size (x.view(8, -1)) cannot be read: use x.view(x.size(0), -1) or x.flatten(1).",
        ) from exc
    return recorder.values


def _example_tensors(example_inputs: Any) -> list[torch.Tensor]:
    items = list(example_inputs) if isinstance(example_inputs, (list, tuple)) else [example_inputs]
    out = []
    for item in items:
        if isinstance(item, np.ndarray):
            item = torch.from_numpy(np.ascontiguousarray(item))
        if not isinstance(item, torch.Tensor) or item.dim() < 2 or item.shape[0] < 1:
            raise fail(
                ConfigError,
                "Invalid value for argument `example_inputs`",
                "a tensor (or a tuple of tensors, one per forward argument) with a batch axis and at least one sample: (N, ...)",
                f"{type(item).__name__}" + (f" of shape {tuple(item.shape)}" if hasattr(item, "shape") else ""),
            )
        out.append(item)
    return out


# -- the reader ---------------------------------------------------------------------------------------


class Edge(NamedTuple):
    """A graph edge as PyTorch holds it: the edge's name, its layout, and the torch shape (batch included)."""

    name: str
    layout: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def rank(self) -> int:
        return len(self.shape)


class _Sequences(NamedTuple):
    """What a plain ``nn.RNN/LSTM/GRU`` returns: ``(output, states)``; only ``output`` (element 0) is a graph edge."""

    edge: Edge


class _Pending(NamedTuple):
    """A padding module waiting for the convolution it is folded into."""

    edge: Edge
    pad: nn.Module


def _layout(rank: int, layout: str) -> str:
    return "flat" if rank == 2 else layout


def _axis_name(node: fx.Node) -> str:
    target = node.target
    if node.op == "call_module":
        return f"module {target!r}"
    if node.op == "call_method":
        return f"method .{target}()"
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or repr(target)
    module = getattr(target, "__module__", None) or ""
    if module.startswith("_operator"):
        module = "operator"
    return f"function {module + '.' if module else ''}{name}"


class Reader:
    """Turns one traced module into records and nodes (see the module documentation)."""

    def __init__(self, module: nn.Module, gm: fx.GraphModule, values: dict[str, _Value], more: dict[str, _Value], batch: int) -> None:
        self.module = module
        self.gm = gm
        self.values = values
        self.more = more  # the same run with one sample more: a per-sample shape must not change
        self.batch = batch
        self.layers: dict[str, Record] = {}
        self.nodes: list[Node] = []
        self.edges: dict[fx.Node, Any] = {}
        self.calls: dict[str, int] = {}
        self.node: fx.Node | None = None

    # -- errors ------------------------------------------------------------------------------------
    def where(self, node: fx.Node | None = None) -> str:
        node = node or self.node
        if node is None:
            return type(self.module).__name__
        text = f"fx node {node.name!r} ({_axis_name(node)})"
        if node.op == "call_module":
            text += f", a {type(self.gm.get_submodule(str(node.target))).__name__}"
        return text

    def refuse(self, why: str, expected: str, received: str, remedy: str = "") -> LayoutError:
        return fail(UnsupportedError, f"{self.where()} cannot be read: {why}", expected, received, remedy)

    # -- edges ---------------------------------------------------------------------------------------
    def edge(self, arg: Any, what: str = "input") -> Edge:
        """The edge an argument of the current node names, or a refusal (constants, parameters, plain values)."""
        found = self.edges.get(arg) if isinstance(arg, fx.Node) else None
        if isinstance(found, _Pending):
            raise self.refuse(
                f"it reads the output of a {type(found.pad).__name__}, which layoutconv folds only into a convolution",
                "reflection, replication and circular padding modules whose only user is a convolution",
                f"{type(found.pad).__name__} feeding {_axis_name(self.node)}" if self.node is not None else type(found.pad).__name__,
                "Pad with zeros (nn.ZeroPad*d), or let the convolution pad (padding_mode=...).",
            )
        if isinstance(found, Edge):
            return found
        if isinstance(arg, fx.Node) and arg.op == "get_attr":
            raise self.refuse(
                f"its {what} is the tensor {arg.target!r} stored on the module (a parameter or buffer), not a layer's output",
                "operations between layer outputs (a tensor kept on the module is no layer layoutconv has)",
                f"get_attr {arg.target!r}",
                "Put the weight in a standard layer (nn.Linear, nn.Conv*d ...).",
            )
        if isinstance(arg, fx.Node):
            raise self.refuse(f"its {what} is not a tensor", "a tensor made by the model's layers", f"{arg.name!r}, a {arg.op} node giving a plain value")
        raise self.refuse(
            f"its {what} is a constant ({type(arg).__name__})",
            "operations between tensors made by the model's layers (no constants, no broadcasting scalars)",
            f"{arg!r}"[:80],
        )

    def out_shape(self) -> tuple[int, ...]:
        assert self.node is not None
        value = self.values[self.node.name]
        assert value.shape is not None
        return value.shape

    def name_for(self, preferred: str, record: Record) -> str:
        """``preferred`` when free or holding an equal record (a shared module), else a fresh variant."""
        name, i = preferred, 1
        while name in self.layers and not (self.layers[name] == record):
            name = f"{preferred}_{i}"
            i += 1
        return name

    def emit(self, layer: str, record: Record, inputs: Sequence[Edge], layout: str, shape: tuple[int, ...]) -> Edge:
        """A node applying ``record`` (as layer ``layer``, shared when an equal record already has the name)."""
        layer = self.name_for(layer, record)
        self.layers.setdefault(layer, record)
        count = self.calls.get(layer, 0)
        self.calls[layer] = count + 1
        edge = layer if count == 0 else f"{layer}:{count}"
        layout = _layout(len(shape), layout)
        self.nodes.append(Node(edge, layer, tuple(e.name for e in inputs), layout))
        return Edge(edge, layout, tuple(shape), inputs[0].dtype if inputs else torch.float32)

    def relayout(self, edge: Edge, want: str, layer: str) -> Edge:
        """``edge`` with the canonical data rearranged so that its layout is ``want`` (torch's tensor is unchanged)."""
        if edge.rank < 3 or edge.layout == want:
            return edge
        r = edge.rank
        if want == "channels_last":  # canonical = torch tensor; want canonical' = moveaxis(torch, -1, 1)
            dims = (r - 1,) + tuple(range(1, r - 1))
        else:  # canonical' = torch tensor = moveaxis(canonical, 1, -1)
            dims = tuple(range(2, r)) + (1,)
        return self.emit(f"{layer}.{want}", layers.Permute(dims, "channels_first"), [edge], want, edge.shape)

    def current_layer(self) -> str:
        assert self.node is not None
        return str(self.node.target) if self.node.op == "call_module" else self.node.name

    def canonical_axis(self, edge: Edge, axis: int) -> int:
        """The canonical (channels-first) axis number of torch axis ``axis`` of ``edge``."""
        r = edge.rank
        a = int(axis) + r if int(axis) < 0 else int(axis)
        if not 0 <= a < r:
            raise self.refuse("an axis is out of range", f"an axis of a {r}-d tensor", f"dim={axis}")
        if a == 0:
            raise self.refuse("it works across the batch axis", "an axis other than 0 (each sample is computed on its own)", f"dim={axis}")
        if edge.layout != "channels_last":
            return a
        return 1 if a == r - 1 else a + 1

    # -- the walk --------------------------------------------------------------------------------------
    def read(self, example: list[torch.Tensor]) -> Graph:
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != len(example):
            raise fail(
                ConfigError,
                f"{type(self.module).__name__}.forward takes {len(placeholders)} argument(s)",
                f"one example input per argument: {[n.target for n in placeholders]}",
                f"{len(example)} example input(s)",
            )
        inputs: list[Input] = []
        outputs: list[str] = []
        for node in self.gm.graph.nodes:
            self.node = node
            if node.op == "placeholder":
                inputs.append(self._placeholder(node, example[len(inputs)]))
            elif node.op == "get_attr":
                self.edges[node] = None  # refused by whoever reads it as a tensor
            elif node.op == "output":
                outputs = self._outputs(node)
            else:
                self._call(node)
        self.node = None
        return Graph(self.layers, inputs, self.nodes, outputs, name=type(self.module).__name__)

    def _placeholder(self, node: fx.Node, x: torch.Tensor) -> Input:
        shape = tuple(int(n) for n in x.shape)
        if x.dtype in (torch.bool, torch.complex64, torch.complex128):
            raise self.refuse("its dtype is not a number layoutconv carries", "a float or integer input", f"dtype {x.dtype}")
        integer = not x.dtype.is_floating_point
        if integer and len(shape) > 2:
            raise self.refuse(
                "integer inputs (Embedding ids) with more than one axis per sample have no channel axis to lay out",
                "ids of shape (N, T)", f"shape {shape}",
            )
        layout = "flat" if len(shape) == 2 else "channels_first"
        self.edges[node] = Edge(node.name, layout, shape, x.dtype)
        return Input(node.name, shape[1:], layout, "int" if integer else "float")

    def _outputs(self, node: fx.Node) -> list[str]:
        result = node.args[0]
        items = list(result) if isinstance(result, (list, tuple)) else [result]
        if isinstance(result, dict) or any(isinstance(i, (list, tuple, dict)) for i in items):
            raise self.refuse("the model returns a nested structure", "a tensor or a tuple of tensors", f"{type(result).__name__}")
        return [self.edge(i, "output").name for i in items]

    def _call(self, node: fx.Node) -> None:
        if node.op == "call_module" and isinstance(self.gm.get_submodule(str(node.target)), nn.RNNBase):
            self.edges[node] = _rnn_module(self, node)
            return
        if node.op == "call_function" and node.target is operator.getitem and isinstance(self.edges.get(node.args[0]), _Sequences):
            self.edges[node] = _rnn_output(self, node)
            return
        value = self.values[node.name]
        if value.shape is None:
            if value.holds_tensors:
                raise self.refuse(
                    "it returns several tensors (a tuple or list)",
                    "operations that return one tensor",
                    f"a {node.op} node giving a container of tensors",
                )
            self.edges[node] = None  # shape arithmetic (x.size(0) ...): read by the reshape that uses it
            return
        more = self.more[node.name]
        if value.shape[0] != self.batch or more.shape is None or more.shape[0] != self.batch + 1 or more.shape[1:] != value.shape[1:]:
            raise self.refuse(
                "its output does not keep one row per sample",
                f"batch axis first with the batch size (shape ({self.batch}, ...) for {self.batch} samples, "
                f"({self.batch + 1}, ...) for {self.batch + 1})",
                f"shapes {value.shape} and {more.shape}",
                "Operations that fold or mix the batch (x.view(-1, k), x.sum(0)) have no per-sample equivalent.",
            )
        reader = self._reader(node)
        if reader is None:
            raise self.refuse(
                "no reader for this operation",
                "one of the modules and functions in layoutconv.adapters.torch_read's table",
                _axis_name(node),
                "Rewrite it with supported operations, or read the parts around it separately.",
            )
        result = reader(self, node)
        if isinstance(result, (Edge, _Pending)):
            self.edges[node] = result
        else:  # a passthrough returns the edge it passes
            raise AssertionError(f"reader for {node.name} returned {result!r}")

    def _reader(self, node: fx.Node) -> Callable[["Reader", fx.Node], Any] | None:
        if node.op == "call_module":
            module = self.gm.get_submodule(str(node.target))
            for cls in type(module).__mro__:
                if cls in MODULE_READERS:
                    return MODULE_READERS[cls]
            if isinstance(module, nn.modules.conv._ConvNd):
                return _conv
            return None
        if node.op == "call_method":
            return METHOD_READERS.get(str(node.target))
        if node.op == "call_function":
            try:
                return FUNCTION_READERS.get(node.target)
            except TypeError:  # an unhashable target
                return None
        return None

    # -- helpers for readers ---------------------------------------------------------------------------
    def module_of(self, node: fx.Node) -> nn.Module:
        return self.gm.get_submodule(str(node.target))

    def bind(self, node: fx.Node, params: Sequence[str], defaults: dict[str, Any], skip_self: bool = True) -> dict[str, Any]:
        """The call's arguments by name: ``params`` in positional order (the first is the input tensor)."""
        args = list(node.args)
        if len(args) > len(params):
            raise self.refuse("it has more arguments than expected", f"at most {len(params)}: {list(params)}", f"{len(args)}")
        bound = dict(defaults)
        bound.update(zip(params, args))
        unknown = sorted(set(node.kwargs) - set(params))
        if unknown:
            raise self.refuse("it has arguments layoutconv does not read", f"arguments among {list(params)}", f"{unknown}")
        bound.update(node.kwargs)
        missing = [p for p in params if p not in bound]
        if missing:
            raise self.refuse("an argument is missing", f"{missing}", "a call without them")
        return bound


# -- readers: weighted modules -------------------------------------------------------------------------

Read = Callable[[Reader, fx.Node], Any]


def _spatial_input(r: Reader, node: fx.Node, edge: Edge, rank: int, what: str) -> Edge:
    if edge.rank != rank + 2:
        raise r.refuse(
            f"a {what} with {rank} spatial axes needs a batched input",
            f"a {rank + 2}-d input (N, C, {', '.join('DHW'[3 - rank:]) if rank > 1 else 'L'})",
            f"shape {edge.shape}",
            "Unbatched inputs are not read: add the batch axis.",
        )
    return r.relayout(edge, "channels_first", r.current_layer())


def _conv(r: Reader, node: fx.Node) -> Edge:
    module = r.module_of(node)
    if len(node.args) != 1 or node.kwargs:
        raise r.refuse("a convolution takes one input", "module(x)", f"{len(node.args)} positional, {sorted(node.kwargs)} keyword")
    source = r.edges.get(node.args[0])
    try:
        if isinstance(source, _Pending):
            record = base.from_native(nn.Sequential(source.pad, module))
            edge = source.edge
        else:
            record = base.from_native(module)
            edge = r.edge(node.args[0])
    except UnsupportedError as exc:
        raise r.refuse(str(exc), "a convolution layoutconv reads", type(module).__name__) from None
    edge = _spatial_input(r, node, edge, record.spatial_rank, type(module).__name__)
    return r.emit(r.current_layer(), record, [edge], "channels_first", r.out_shape())


def _lazy(r: Reader, module: nn.Module) -> None:
    if any(nn.parameter.is_lazy(p) for p in module.parameters()):
        raise fail(
            ConfigError, f"{r.where()}: a lazy module has no weights yet", "an initialised module", f"{type(module).__name__} with uninitialised weights",
            "Run the model once (or load a state dict) first.",
        )


def _one_input(r: Reader, node: fx.Node) -> Edge:
    if len(node.args) != 1 or node.kwargs:
        raise r.refuse("the module is called with more than one argument", "module(x)", f"{len(node.args)} positional, {sorted(node.kwargs)} keyword")
    return r.edge(node.args[0])


def _linear(r: Reader, node: fx.Node) -> Edge:
    module = r.module_of(node)
    _lazy(r, module)
    edge = _one_input(r, node)
    activation = getattr(module, "activation", "linear") if isinstance(module, torch_layers.Linear) else "linear"
    record = layers.Dense(
        base.to_numpy(module.weight), None if module.bias is None else base.to_numpy(module.bias), activation=activation
    )
    edge = r.relayout(edge, "channels_last", r.current_layer())  # nn.Linear acts on the last torch axis
    return r.emit(r.current_layer(), record, [edge], "channels_last", r.out_shape())


def _batch_norm(r: Reader, node: fx.Node) -> Edge:
    module = r.module_of(node)
    _lazy(r, module)
    edge = _one_input(r, node)
    if not module.track_running_stats or module.running_mean is None or module.running_var is None:
        raise r.refuse(
            "it normalises with the statistics of each batch (track_running_stats=False)",
            "a BatchNorm with running statistics", "track_running_stats=False",
        )
    affine = module.affine
    record = layers.BatchNorm(
        base.to_numpy(module.running_mean),
        base.to_numpy(module.running_var),
        base.to_numpy(module.weight) if affine else None,
        base.to_numpy(module.bias) if affine else None,
        epsilon=module.eps,
    )
    edge = r.relayout(edge, "channels_first", r.current_layer())
    return r.emit(r.current_layer(), record, [edge], "channels_first", r.out_shape())


def _layer_norm(r: Reader, node: fx.Node) -> Edge:
    module = r.module_of(node)
    edge = _one_input(r, node)
    k = len(module.normalized_shape)
    weight = base.to_numpy(module.weight) if module.weight is not None else None
    bias = base.to_numpy(module.bias) if module.bias is not None else None
    if k == 1:
        # the last torch axis: the channel axis of a channels-last edge (Keras' LayerNormalization(axis=-1))
        edge = r.relayout(edge, "channels_last", r.current_layer())
        record = layers.LayerNorm(weight, bias, axes=(1,), epsilon=module.eps)
        return r.emit(r.current_layer(), record, [edge], "channels_last", r.out_shape())
    if k >= edge.rank:
        raise r.refuse("it normalises over the batch axis", f"fewer normalised axes than {edge.rank}", f"normalized_shape={tuple(module.normalized_shape)}")
    edge = r.relayout(edge, "channels_first", r.current_layer())
    record = layers.LayerNorm(weight, bias, axes=tuple(range(edge.rank - k, edge.rank)), epsilon=module.eps)
    return r.emit(r.current_layer(), record, [edge], "channels_first", r.out_shape())


def _embedding(r: Reader, node: fx.Node) -> Edge:
    module = r.module_of(node)
    edge = _one_input(r, node)
    if module.max_norm is not None:
        raise r.refuse("max_norm renormalises the rows it looks up", "max_norm=None", f"max_norm={module.max_norm}")
    if edge.dtype.is_floating_point or edge.rank > 2:
        raise r.refuse("it needs integer ids of shape (N,) or (N, T)", "integer ids (N, T)", f"{edge.dtype} of shape {edge.shape}")
    record = layers.Embedding(base.to_numpy(module.weight))
    out = r.out_shape()
    return r.emit(r.current_layer(), record, [edge], "channels_last", out)._replace(dtype=module.weight.dtype)


# -- readers: recurrent layers ----------------------------------------------------------------------


def _rnn_module(r: Reader, node: fx.Node) -> _Sequences:
    """A plain ``nn.RNN/LSTM/GRU`` (batch first): one record per stacked layer, each returning its sequence."""
    from . import torch_recurrent

    module = r.module_of(node)
    if not module.batch_first:
        raise r.refuse("it takes (T, N, F) (batch_first=False)", "batch_first=True", "batch_first=False", "Build it with batch_first=True.")
    if len(node.args) != 1 or node.kwargs:
        raise r.refuse("it is given initial states", "module(x): zero initial states", f"{len(node.args)} positional arguments")
    edge = r.relayout(r.edge(node.args[0]), "channels_last", r.current_layer())  # (N, T, F): features last
    units = module.hidden_size * (2 if module.bidirectional else 1)
    for k, record in enumerate(torch_recurrent.stacked_layers(module)):
        name = r.current_layer() if k == 0 else f"{r.current_layer()}.layer{k}"
        edge = r.emit(name, record, [edge], "channels_last", edge.shape[:2] + (units,))
    return _Sequences(edge)


def _rnn_output(r: Reader, node: fx.Node) -> Edge | None:
    index = node.args[1]
    if index != 0 and not node.users:
        return None  # `out, _ = self.lstm(x)`: the states are unpacked and never used
    if index != 0:
        raise r.refuse(
            "it reads the final states of a recurrent module",
            "the output sequence (element 0)",
            f"element {index!r}",
            "Use the sequence, e.g. output[:, -1] for the last step, or build the layer with layoutconv.to_torch(record).",
        )
    return r.edges[node.args[0]].edge


def _recurrent_layer(r: Reader, node: fx.Node) -> Edge:
    """layoutconv's own recurrent modules: ``(N, T, F)`` in, one tensor out."""
    from . import torch_recurrent

    record = torch_recurrent.from_native(r.module_of(node))
    edge = r.relayout(_one_input(r, node), "channels_last", r.current_layer())
    out = r.out_shape()
    return r.emit(r.current_layer(), record, [edge], "channels_last" if len(out) > 2 else "flat", out)


# -- readers: activations, softmax, identity ----------------------------------------------------------


def _activation_module(r: Reader, node: fx.Node) -> Edge:
    module = r.module_of(node)
    edge = _one_input(r, node)
    if isinstance(module, torch_layers.Activation):
        name: str | None = module.activation
    else:
        read = base._ACTIVATION_MODULES.get(type(module))
        name = read(module) if read is not None else None
    if name is None:
        raise r.refuse(
            "its parameters differ from every activation a layoutconv record holds",
            "default parameters (ELU alpha 1, GELU approximate='none', LeakyReLU(0.2) as in Keras, Softplus beta 1 threshold >= 20)",
            f"{module!r}",
        )
    return r.emit(r.current_layer(), layers.Activation(name), [edge], edge.layout, r.out_shape())


def _passthrough(r: Reader, node: fx.Node) -> Edge:
    if not node.args:
        raise r.refuse("it has no input", "one tensor argument", "none")
    return r.edge(node.args[0])


def _dropout_function(r: Reader, node: fx.Node) -> Edge:
    bound = r.bind(node, ("input", "p", "training", "inplace"), {"p": 0.5, "training": True, "inplace": False})
    if bound["training"] is not False:
        raise r.refuse(
            "it drops values at inference too (training=True is F.dropout's default)",
            "F.dropout(x, p, training=self.training), read in eval mode", f"training={bound['training']!r}",
        )
    return r.edge(bound["input"])


def _softmax_with(r: Reader, edge: Edge, dim: Any) -> Edge:
    if dim is None:
        raise r.refuse("softmax without dim picks an axis by an old heuristic", "an explicit dim", "dim=None")
    return r.emit(r.current_layer(), layers.Softmax(r.canonical_axis(edge, dim)), [edge], edge.layout, r.out_shape())


def _softmax_module(r: Reader, node: fx.Node) -> Edge:
    return _softmax_with(r, _one_input(r, node), r.module_of(node).dim)


def _softmax_function(r: Reader, node: fx.Node) -> Edge:
    bound = r.bind(node, ("input", "dim", "_stacklevel", "dtype"), {"dim": None, "_stacklevel": 3, "dtype": None})
    if bound["dtype"] is not None:
        raise r.refuse("it casts before the softmax", "dtype=None", f"dtype={bound['dtype']}")
    return _softmax_with(r, r.edge(bound["input"]), bound["dim"])


class _Act(NamedTuple):
    """An activation function: its canonical name, parameter names after the input, and required values."""

    name: str
    params: tuple[str, ...] = ()
    required: dict[str, Any] = {}
    defaults: dict[str, Any] = {}


def _activation_function(spec: _Act) -> Read:
    def read(r: Reader, node: fx.Node) -> Edge:
        bound = r.bind(node, ("input",) + spec.params, dict(spec.defaults))
        for key, want in spec.required.items():
            value = bound.get(key)
            ok = want(value) if callable(want) else value == want
            if not ok:
                raise r.refuse(
                    f"{spec.name} with non-default {key}",
                    f"{key} as in layoutconv.activations ({spec.name}: {want if not callable(want) else 'the default'})",
                    f"{key}={value!r}",
                )
        edge = r.edge(bound["input"])
        return r.emit(r.current_layer(), layers.Activation(spec.name), [edge], edge.layout, r.out_shape())

    return read


# -- readers: pooling -----------------------------------------------------------------------------------


def _tuple(value: Any, rank: int, name: str, r: Reader) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)):
        return (int(value),) * rank
    values = tuple(int(v) for v in value)
    if len(values) == 1:
        return values * rank
    if len(values) != rank:
        raise r.refuse(f"{name} has the wrong number of values", f"{rank}", f"{name}={value!r}")
    return values


def _pool(
    r: Reader, edge: Edge, kind: str, rank: int, kernel: Any, stride: Any, padding: Any, dilation: Any,
    ceil_mode: bool, count_include_pad: bool,
) -> Edge:
    k = _tuple(kernel, rank, "kernel_size", r)
    s = k if stride is None or (isinstance(stride, (list, tuple)) and not stride) else _tuple(stride, rank, "stride", r)
    p = _tuple(padding, rank, "padding", r)
    if any(d != 1 for d in _tuple(dilation, rank, "dilation", r)):
        raise r.refuse("dilated pooling has no record", "dilation=1", f"dilation={dilation!r}")
    edge = _spatial_input(r, r.node, edge, rank, f"{kind} pooling")
    pads: Any = "valid" if not any(p) else tuple((v, v) for v in p)
    try:
        record = layers.Pool(kind, k, s, padding=pads, count_include_pad=count_include_pad, rank=rank)
    except ConfigError as exc:
        raise r.refuse(str(exc), "a pooling layoutconv represents", f"kernel_size={k}, stride={s}, padding={p}") from None
    out = r.out_shape()
    if tuple(out[2:]) != record.output_shape(edge.shape[2:]):
        raise r.refuse(
            "ceil_mode=True adds a partial window at the end for this input size",
            f"ceil_mode=False, or an input size where it changes nothing (output {record.output_shape(edge.shape[2:])})",
            f"ceil_mode={ceil_mode}, output {tuple(out[2:])}",
        )
    return r.emit(r.current_layer(), record, [edge], "channels_first", out)


_POOL_RANKS = {
    nn.MaxPool1d: ("max", 1), nn.MaxPool2d: ("max", 2), nn.MaxPool3d: ("max", 3),
    nn.AvgPool1d: ("avg", 1), nn.AvgPool2d: ("avg", 2), nn.AvgPool3d: ("avg", 3),
}


def _pool_module(r: Reader, node: fx.Node) -> Edge:
    module = r.module_of(node)
    edge = _one_input(r, node)
    kind, rank = _POOL_RANKS[type(module)]
    if kind == "max":
        if module.return_indices:
            raise r.refuse("it returns indices too", "return_indices=False", "return_indices=True")
        return _pool(r, edge, kind, rank, module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode, False)
    if getattr(module, "divisor_override", None) is not None:
        raise r.refuse("a divisor_override divides by a fixed number", "divisor_override=None", f"divisor_override={module.divisor_override}")
    return _pool(r, edge, kind, rank, module.kernel_size, module.stride, module.padding, 1, module.ceil_mode, module.count_include_pad)


def _pool_function(kind: str, rank: int) -> Read:
    def read(r: Reader, node: fx.Node) -> Edge:
        if kind == "max":
            b = r.bind(
                node, ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
                {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False},
            )
            if b["return_indices"]:
                raise r.refuse("it returns indices too", "return_indices=False", "return_indices=True")
            return _pool(r, r.edge(b["input"]), kind, rank, b["kernel_size"], b["stride"], b["padding"], b["dilation"], b["ceil_mode"], False)
        params = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad") + (("divisor_override",) if rank > 1 else ())
        b = r.bind(node, params, {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True, "divisor_override": None})
        if b["divisor_override"] is not None:
            raise r.refuse("a divisor_override divides by a fixed number", "divisor_override=None", f"divisor_override={b['divisor_override']}")
        return _pool(r, r.edge(b["input"]), kind, rank, b["kernel_size"], b["stride"], b["padding"], 1, b["ceil_mode"], bool(b["count_include_pad"]))

    return read


def _adaptive(r: Reader, edge: Edge, kind: str, rank: int) -> Edge:
    edge = _spatial_input(r, r.node, edge, rank, "adaptive pooling")
    out = r.out_shape()
    sizes, targets = edge.shape[2:], out[2:]
    if all(t == 1 for t in targets):
        return r.emit(r.current_layer(), layers.GlobalPool(kind, keepdims=True), [edge], "channels_first", out)
    if all(n % t == 0 for n, t in zip(sizes, targets)):
        k = tuple(n // t for n, t in zip(sizes, targets))
        if all(v == 1 for v in k):
            return edge
        return r.emit(r.current_layer(), layers.Pool(kind, k, k, rank=rank), [edge], "channels_first", out)
    raise r.refuse(
        "adaptive pooling to a size that does not divide the input uses windows of different sizes",
        "an output size of 1, or one that divides the input size", f"input {sizes} -> output {targets}",
    )


_ADAPTIVE_RANKS = {
    nn.AdaptiveAvgPool1d: ("avg", 1), nn.AdaptiveAvgPool2d: ("avg", 2), nn.AdaptiveAvgPool3d: ("avg", 3),
    nn.AdaptiveMaxPool1d: ("max", 1), nn.AdaptiveMaxPool2d: ("max", 2), nn.AdaptiveMaxPool3d: ("max", 3),
}


def _adaptive_module(r: Reader, node: fx.Node) -> Edge:
    module = r.module_of(node)
    if getattr(module, "return_indices", False):
        raise r.refuse("it returns indices too", "return_indices=False", "return_indices=True")
    kind, rank = _ADAPTIVE_RANKS[type(module)]
    return _adaptive(r, _one_input(r, node), kind, rank)


def _adaptive_function(kind: str, rank: int) -> Read:
    def read(r: Reader, node: fx.Node) -> Edge:
        params = ("input", "output_size") + (("return_indices",) if kind == "max" else ())
        b = r.bind(node, params, {"return_indices": False})
        if b.get("return_indices"):
            raise r.refuse("it returns indices too", "return_indices=False", "return_indices=True")
        return _adaptive(r, r.edge(b["input"]), kind, rank)

    return read


def _reduce(kind: str) -> Read:
    """``x.mean(dims)`` / ``x.amax(dims)`` over every spatial axis: a global pooling."""

    def read(r: Reader, node: fx.Node) -> Edge:
        b = r.bind(node, ("input", "dim", "keepdim", "dtype") if kind == "avg" else ("input", "dim", "keepdim"), {"dim": None, "keepdim": False, "dtype": None})
        edge = r.edge(b["input"])
        if b.get("dtype") is not None:
            raise r.refuse("it casts before reducing", "dtype=None", f"dtype={b['dtype']}")
        dims = b["dim"]
        dims = [dims] if isinstance(dims, int) else list(dims or [])
        spatial = set(range(2, edge.rank))
        if edge.rank < 3 or {r.canonical_axis(edge, d) for d in dims} != spatial or len(dims) != len(spatial):
            raise r.refuse(
                "only a reduction over every spatial axis (a global pooling) is read",
                f"dim = the {edge.rank - 2} spatial axes of a {edge.rank}-d tensor" if edge.rank >= 3 else "a tensor with spatial axes",
                f"dim={b['dim']!r} on shape {edge.shape} ({edge.layout})",
            )
        keep = bool(b["keepdim"])
        return r.emit(r.current_layer(), layers.GlobalPool(kind, keepdims=keep), [edge], edge.layout if keep else "flat", r.out_shape())

    return read


# -- readers: shapes -----------------------------------------------------------------------------------


def _reshaped(r: Reader, edge: Edge) -> Edge:
    """The current node as a reshape of ``edge`` to the node's output shape (per sample), in PyTorch's order."""
    out = r.out_shape()
    if out == edge.shape and (edge.rank == 2 or len(out) == edge.rank):
        return edge
    order = "channels_last" if edge.layout == "channels_last" else "channels_first"
    if len(out) == 2:
        return r.emit(r.current_layer(), layers.Flatten(order), [edge], "flat", out)
    return r.emit(r.current_layer(), layers.Reshape(out[1:], order), [edge], order, out)


def _reshape_any(r: Reader, node: fx.Node) -> Edge:
    """view, reshape, flatten, unsqueeze, squeeze, nn.Flatten, nn.Unflatten: the shapes come from the example run."""
    if not node.args:
        raise r.refuse("it has no input", "a tensor", "none")
    return _reshaped(r, r.edge(node.args[0]))


def _permuted(r: Reader, edge: Edge, dims: Sequence[int]) -> Edge:
    rank = edge.rank
    p = tuple(int(d) + rank if int(d) < 0 else int(d) for d in dims)
    if sorted(p) != list(range(rank)):
        raise r.refuse("the dims are not a permutation", f"a permutation of 0..{rank - 1}", f"dims={tuple(dims)}")
    if p[0] != 0:
        raise r.refuse("it moves the batch axis", "the batch axis left first", f"dims={p}")
    if p == tuple(range(rank)):
        return edge
    last = (0,) + tuple(range(2, rank)) + (1,)  # channels first -> channels last
    first = (0, rank - 1) + tuple(range(1, rank - 1))  # channels last -> channels first
    if edge.layout == "channels_first" and p == last or edge.layout == "channels_last" and p == first:
        # the canonical data is unchanged, only the way torch holds it
        target = "channels_last" if edge.layout == "channels_first" else "channels_first"
        return r.emit(r.current_layer(), layers.Identity("permute"), [edge], target, r.out_shape())
    order = "channels_last" if edge.layout == "channels_last" else "channels_first"
    return r.emit(r.current_layer(), layers.Permute(p[1:], order), [edge], order, r.out_shape())


def _permute(r: Reader, node: fx.Node) -> Edge:
    if node.op == "call_function":
        b = r.bind(node, ("input", "dims"), {})
        return _permuted(r, r.edge(b["input"]), b["dims"])
    args = node.args[1:]
    dims = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
    if node.kwargs:
        dims = node.kwargs.get("dims", dims)
    return _permuted(r, r.edge(node.args[0]), dims)


def _transpose(r: Reader, node: fx.Node) -> Edge:
    b = r.bind(node, ("input", "dim0", "dim1"), {})
    edge = r.edge(b["input"])
    p = list(range(edge.rank))
    a, c = (int(d) + edge.rank if int(d) < 0 else int(d) for d in (b["dim0"], b["dim1"]))
    p[a], p[c] = p[c], p[a]
    return _permuted(r, edge, p)


# -- readers: padding ----------------------------------------------------------------------------------


def _padded(r: Reader, edge: Edge, flat: Sequence[int], value: float) -> Edge:
    flat = [int(v) for v in flat]
    if len(flat) % 2:
        raise r.refuse("the pad list has an odd length", "(begin, end) pairs, last axis first", f"pad={flat}")
    k = len(flat) // 2
    if edge.rank - 2 < k:
        raise r.refuse("it pads the channel or batch axis", f"at most {edge.rank - 2} padded (spatial) axes", f"{k} pairs for shape {edge.shape}")
    edge = r.relayout(edge, "channels_first", r.current_layer())
    spatial = edge.rank - 2
    pairs = ((0, 0),) * (spatial - k) + tuple((flat[2 * i], flat[2 * i + 1]) for i in range(k))[::-1]
    if not any(b or e for b, e in pairs):
        return edge
    if all(b >= 0 and e >= 0 for b, e in pairs):
        return r.emit(r.current_layer(), layers.Pad(pairs, value), [edge], "channels_first", r.out_shape())
    if all(b <= 0 and e <= 0 for b, e in pairs):
        return r.emit(r.current_layer(), layers.Crop(tuple((-b, -e) for b, e in pairs)), [edge], "channels_first", r.out_shape())
    raise r.refuse("it pads some axes and crops others", "pads all >= 0 or all <= 0", f"pad={flat}")


_CONSTANT_PADS = tuple(getattr(nn, f"{k}{n}d") for k in ("ZeroPad", "ConstantPad") for n in (1, 2, 3))
_OTHER_PADS = tuple(getattr(nn, f"{k}{n}d") for k in ("ReflectionPad", "ReplicationPad", "CircularPad") for n in (1, 2, 3))


def _pad_module(r: Reader, node: fx.Node) -> Any:
    module = r.module_of(node)
    edge = _one_input(r, node)
    if isinstance(module, _OTHER_PADS):
        users = list(node.users)
        user = users[0] if len(users) == 1 else None
        conv = r.gm.get_submodule(str(user.target)) if user is not None and user.op == "call_module" else None
        if isinstance(conv, nn.modules.conv._ConvNd) and not conv.transposed and len(user.args) == 1:
            return _Pending(r.relayout(edge, "channels_first", r.current_layer()), module)
        raise r.refuse(
            f"{type(module).__name__} is read only in front of a convolution, which then pads by {type(module).__name__[:-5].lower()}",
            "a reflection/replication/circular padding module whose only user is a Conv*d",
            f"users {[u.name for u in users]}",
            "Or give the convolution padding_mode='reflect' (or 'replicate', 'circular').",
        )
    value = float(getattr(module, "value", 0.0))
    return _padded(r, edge, module.padding, value)


def _pad_function(r: Reader, node: fx.Node) -> Edge:
    b = r.bind(node, ("input", "pad", "mode", "value"), {"mode": "constant", "value": None})
    if b["mode"] != "constant":
        raise r.refuse(
            f"F.pad(mode={b['mode']!r}) is not read", "mode='constant'", f"mode={b['mode']!r}",
            "Use the convolution's padding_mode, or an nn.ReflectionPad*d module in front of the convolution.",
        )
    return _padded(r, r.edge(b["input"]), b["pad"], float(b["value"] or 0.0))


# -- readers: merges -------------------------------------------------------------------------------------


def _merged(r: Reader, op: str, args: Sequence[Any], axis: int | None = None) -> Edge:
    edges = [r.edge(a, "operand") for a in args]
    first = edges[0]
    edges = [first] + [r.relayout(e, first.layout, f"{r.current_layer()}.{i}") for i, e in enumerate(edges[1:], 1)]
    if op != "concatenate" and len({e.shape for e in edges}) != 1:
        raise r.refuse(
            "its operands have different shapes (broadcasting)",
            "operands of one shape (a merge layer adds tensors elementwise)",
            f"shapes {[e.shape for e in edges]}",
        )
    record = layers.Merge(op, 1 if axis is None else r.canonical_axis(first, axis))
    return r.emit(r.current_layer(), record, edges, first.layout, r.out_shape())


def _binary(op: str) -> Read:
    def read(r: Reader, node: fx.Node) -> Edge:
        params = ("input", "other", "alpha") if op in ("add", "subtract") and node.target not in (operator.add, operator.iadd, operator.sub, operator.isub) else ("input", "other")
        b = r.bind(node, params, {"alpha": 1})
        if b.get("alpha", 1) != 1:
            raise r.refuse("alpha scales the second operand", "alpha=1", f"alpha={b['alpha']!r}")
        return _merged(r, op, [b["input"], b["other"]])

    return read


def _cat(r: Reader, node: fx.Node) -> Edge:
    b = r.bind(node, ("tensors", "dim"), {"dim": 0})
    tensors = b["tensors"]
    if not isinstance(tensors, (list, tuple)) or len(tensors) < 2:
        if isinstance(tensors, (list, tuple)) and len(tensors) == 1:
            return r.edge(tensors[0])
        raise r.refuse("it needs a list of tensors", "torch.cat([a, b, ...], dim)", f"{type(tensors).__name__}")
    return _merged(r, "concatenate", tensors, b["dim"])


# -- the tables ------------------------------------------------------------------------------------------


def _record_module(make: Callable[[nn.Module], Record]) -> Read:
    """layoutconv's own parameterless modules: they compute their record on the channels-first tensor they get."""

    def read(r: Reader, node: fx.Node) -> Edge:
        module = r.module_of(node)
        record = make(module)
        edges = [r.edge(a) for a in node.args]
        if not edges or node.kwargs:
            raise r.refuse("the module is called without a tensor", "module(x)", f"{node.args}")
        edges = [r.relayout(e, "channels_first", f"{r.current_layer()}.{i}" if i else r.current_layer()) for i, e in enumerate(edges)]
        return r.emit(r.current_layer(), record, edges, "channels_first", r.out_shape())

    return read


MODULE_READERS: dict[type, Read] = {
    nn.Linear: _linear,
    nn.BatchNorm1d: _batch_norm,
    nn.BatchNorm2d: _batch_norm,
    nn.BatchNorm3d: _batch_norm,
    nn.LayerNorm: _layer_norm,
    nn.Embedding: _embedding,
    nn.Softmax: _softmax_module,
    nn.Flatten: _reshape_any,
    nn.Unflatten: _reshape_any,
    torch_layers.Activation: _activation_module,
    torch_layers.Flatten: _record_module(lambda m: layers.Flatten(m.order)),
    torch_layers.Reshape: _record_module(lambda m: layers.Reshape(m.shape, m.order)),
    torch_layers.Permute: _record_module(lambda m: layers.Permute(m.dims, m.order)),
    torch_layers.Pad: _record_module(lambda m: layers.Pad(m.pads, m.value)),
    torch_layers.Crop: _record_module(lambda m: layers.Crop(m.crops)),
    torch_layers.Merge: _record_module(lambda m: layers.Merge(m.op, m.axis)),
    torch_layers.GlobalPool: _record_module(lambda m: layers.GlobalPool(m.kind, keepdims=m.keepdims)),
    torch_layers.Pool: _record_module(lambda m: m.record),
}
for _cls in base._ACTIVATION_MODULES:
    MODULE_READERS.setdefault(_cls, _activation_module)


def _register_recurrent() -> None:
    from . import torch_recurrent

    for cls in (torch_recurrent.RecurrentLayer, torch_recurrent.BidirectionalLayer, torch_recurrent.LoopRNN):
        MODULE_READERS[cls] = _recurrent_layer


_register_recurrent()
for _cls in (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout):
    MODULE_READERS[_cls] = _passthrough
for _cls in _POOL_RANKS:
    MODULE_READERS[_cls] = _pool_module
for _cls in _ADAPTIVE_RANKS:
    MODULE_READERS[_cls] = _adaptive_module
for _cls in _CONSTANT_PADS + _OTHER_PADS:
    MODULE_READERS[_cls] = _pad_module

_GELU = _Act("gelu", ("approximate",), {"approximate": "none"}, {"approximate": "none"})
_ACT_FUNCTIONS: dict[Any, _Act] = {
    F.relu: _Act("relu", ("inplace",)),
    torch.relu: _Act("relu"),
    F.relu6: _Act("relu6", ("inplace",)),
    F.leaky_relu: _Act("leaky_relu", ("negative_slope", "inplace"), {"negative_slope": 0.2}, {"negative_slope": 0.01}),
    torch.sigmoid: _Act("sigmoid"),
    F.sigmoid: _Act("sigmoid"),
    torch.tanh: _Act("tanh"),
    F.tanh: _Act("tanh"),
    F.elu: _Act("elu", ("alpha", "inplace"), {"alpha": 1.0}, {"alpha": 1.0}),
    F.selu: _Act("selu", ("inplace",)),
    torch.selu: _Act("selu"),
    F.gelu: _GELU,
    F.silu: _Act("swish", ("inplace",)),
    F.softplus: _Act("softplus", ("beta", "threshold"), {"beta": 1.0, "threshold": lambda t: t >= 20}, {"beta": 1.0, "threshold": 20.0}),
    F.softsign: _Act("softsign"),
    F.mish: _Act("mish", ("inplace",)),
    F.hardsigmoid: _Act("hard_sigmoid_keras3", ("inplace",)),
    F.hardswish: _Act("hard_silu", ("inplace",)),
}

FUNCTION_READERS: dict[Any, Read] = {fn: _activation_function(spec) for fn, spec in _ACT_FUNCTIONS.items()}
FUNCTION_READERS.update({
    F.softmax: _softmax_function,
    torch.softmax: _softmax_function,
    F.dropout: _dropout_function,
    F.dropout1d: _dropout_function,
    F.dropout2d: _dropout_function,
    F.dropout3d: _dropout_function,
    F.alpha_dropout: _dropout_function,
    F.feature_alpha_dropout: _dropout_function,
    F.pad: _pad_function,
    torch.flatten: _reshape_any,
    torch.reshape: _reshape_any,
    torch.unsqueeze: _reshape_any,
    torch.squeeze: _reshape_any,
    torch.permute: _permute,
    torch.transpose: _transpose,
    torch.mean: _reduce("avg"),
    torch.amax: _reduce("max"),
    torch.clone: _passthrough,
    torch.cat: _cat,
    torch.concat: _cat,
    torch.concatenate: _cat,
    operator.add: _binary("add"),
    operator.iadd: _binary("add"),
    torch.add: _binary("add"),
    operator.sub: _binary("subtract"),
    operator.isub: _binary("subtract"),
    torch.sub: _binary("subtract"),
    operator.mul: _binary("multiply"),
    operator.imul: _binary("multiply"),
    torch.mul: _binary("multiply"),
    torch.maximum: _binary("maximum"),
    torch.minimum: _binary("minimum"),
})
for _rank in (1, 2, 3):
    FUNCTION_READERS[getattr(F, f"max_pool{_rank}d")] = _pool_function("max", _rank)
    FUNCTION_READERS[getattr(F, f"avg_pool{_rank}d")] = _pool_function("avg", _rank)
    FUNCTION_READERS[getattr(F, f"adaptive_avg_pool{_rank}d")] = _adaptive_function("avg", _rank)
    FUNCTION_READERS[getattr(F, f"adaptive_max_pool{_rank}d")] = _adaptive_function("max", _rank)

METHOD_READERS: dict[str, Read] = {
    "relu": _activation_function(_Act("relu")),
    "relu_": _activation_function(_Act("relu")),
    "sigmoid": _activation_function(_Act("sigmoid")),
    "sigmoid_": _activation_function(_Act("sigmoid")),
    "tanh": _activation_function(_Act("tanh")),
    "tanh_": _activation_function(_Act("tanh")),
    "softmax": _softmax_function,
    "view": _reshape_any,
    "reshape": _reshape_any,
    "flatten": _reshape_any,
    "unsqueeze": _reshape_any,
    "squeeze": _reshape_any,
    "permute": _permute,
    "transpose": _transpose,
    "mean": _reduce("avg"),
    "amax": _reduce("max"),
    "contiguous": _passthrough,
    "clone": _passthrough,
    "detach": _passthrough,
    "add": _binary("add"),
    "add_": _binary("add"),
    "sub": _binary("subtract"),
    "sub_": _binary("subtract"),
    "mul": _binary("multiply"),
    "mul_": _binary("multiply"),
    "maximum": _binary("maximum"),
    "minimum": _binary("minimum"),
}


# -- the entry point ---------------------------------------------------------------------------------------


def read_module(module: nn.Module, example_inputs: Any) -> Graph:
    """A PyTorch module as a :class:`~layoutconv.graph.Graph` (see the module documentation).

    ``example_inputs`` (a tensor, or a tuple with one tensor per ``forward``
    argument, batch first) fixes every shape in the graph; the module is run on
    it in eval mode (its training flags are restored afterwards) and on the same
    batch with one sample more.  Weights are copied with their dtype and bytes.
    """
    if not isinstance(module, nn.Module):
        raise fail(ConfigError, "read_module needs a torch.nn.Module", "a torch.nn.Module", f"a {type(module).__name__}")
    example = _example_tensors(example_inputs)
    flags = {m: m.training for m in module.modules()}
    module.eval()
    try:
        gm = trace(module)
        batch = int(example[0].shape[0])
        if any(int(t.shape[0]) != batch for t in example):
            raise fail(ShapeError, "The example inputs have different batch sizes", "one batch size", f"shapes {[tuple(t.shape) for t in example]}")
        values = _run(gm, example, "the example inputs")
        bigger = [torch.cat([t, t[:1]]) for t in example]
        more = _run(gm, bigger, f"a batch of {batch + 1} (the example inputs and a copy of their first sample)")
        return Reader(module, gm, values, more, batch).read(example)
    finally:
        for m, flag in flags.items():
            m.training = flag
