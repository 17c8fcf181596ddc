"""Convert a whole Keras model file to ``.safetensors`` or ``.pt`` layer by layer, holding one layer's weights at a time.

:func:`layoutconv.convert_model.save_model` builds the whole model in memory
(every array), writes it, reads it all back and runs the whole model.  For a
checkpoint of gigabytes that takes several copies of every weight.  Here
(:func:`stream_model`, ``layoutconv convert --stream``) the model config is
walked in execution order (:class:`layoutconv._keras_graph.Walk`), and each
layer with weights, when first called, is:

1. read from the file (kept open, checked once: :meth:`~layoutconv.legacy.KerasFile.reading`)
   and made into its record by the same reader as :func:`~layoutconv.read_model`;
2. run by the reference on a small random input (the layer's expected output);
3. turned into its PyTorch module by the same code as
   :class:`~layoutconv.adapters.torch_layers.GraphModule` (a one-layer
   ``GraphModule``), so the tensors have the names, dtypes, layouts and bytes of
   ``GraphModule(graph).state_dict()`` — a ``Dense`` after a Keras-order
   ``Flatten`` with its columns in PyTorch's flatten order, as
   :func:`~layoutconv.graph.flatten_channels_first` gives them.  The module's
   weights are views of the record's arrays (:func:`~layoutconv.adapters.torch_adapter.tensor_views`):
   a Keras ``Dense`` kernel stays where it was read, seen transposed;
4. written in C order a chunk at a time (a transposed view is copied into C
   order one chunk at a time, never whole), each chunk read back from the file
   and compared byte for byte before the next (:func:`layoutconv._stream_files.write_checked`):
   the module's weights are then exactly the bytes in the file;
5. run on the same input and compared with step 2 (tolerance:
   :data:`ASSERT_CLOSE_DEFAULTS` of the dtype, times ``END_TO_END_FACTOR``,
   relative to the largest output);
6. dropped (a shared layer is kept until its last call).

Steps 1 and 2 need no PyTorch (:meth:`_Stream._prepare`): while it is imported,
in a thread, the layers are read and run by the reference ahead of their
conversion, up to :data:`PREFETCH_BYTES` of weights; steps 3 to 6
(:meth:`_Stream._finish`) follow once it is there.  A layer's tensors are
written in a thread while the module computes (numpy, BLAS, torch and file I/O
release the GIL).

Layers without weights are run by the reference only, for the shapes that
follow.  Once every layer is written the file is finished (the safetensors
header, or the ``.pt`` pickle and zip directory) and opened by the framework
(``safetensors.safe_open``, ``torch.load(weights_only=True, mmap=True)``): the
names, dtypes and shapes must be those written and the first and last element
of every tensor those compared in step 4.  Only then is the file renamed into
place; any failure leaves nothing behind.

The whole model is never run: that would need every weight in memory.  The
checks are per layer (see ``docs/verification.md``, "Streaming conversion").

Memory: each array is read into a buffer of :class:`_Memory` and its record
holds it as it is (no copy: :func:`layoutconv.record.hand_over`); the module
views it and the writer copies from it a chunk at a time, so a layer takes
about its weights once (twice for a ``Dense`` whose columns are permuted), and
the buffers serve layer after layer: the process touches fresh memory about
once or twice the largest tensor, not at every layer (on a virtual machine a
first touch is the dearest part of a copy).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import FrameworkMissingError, OutputError, UnsupportedError, VerificationError, fail
from .record import Record

#: ``convert`` streams on its own (no --stream / --no-stream) from this source file size on, to .safetensors, .pt and .onnx.
STREAM_ABOVE = 256 << 20
#: Targets written layer by layer (names of :data:`layoutconv.convert_model.MODEL_TARGETS`; ``onnx``: :mod:`layoutconv._stream_onnx`).
STREAM_TARGETS = ("safetensors", "torch", "onnx")
#: A layer's reference check runs in float64 up to this many bytes of weights; above, in the weights' own float32
#: (a float64 copy of a 1 GiB kernel would take 2 GiB).  The tolerance is the same either way.
FLOAT64_CHECK_BYTES = 64 << 20
#: While PyTorch is being imported, layers are read and run by the reference ahead of their conversion, up to this
#: many bytes of weights (the conversion then waits for the import): the import, 1.5-2 s on the benchmark machine,
#: is no longer all spent waiting.
PREFETCH_BYTES = 256 << 20
#: Samples in each layer's random check input.
CHECK_BATCH = 2
#: Seconds of work before the progress bar shows (shorter conversions show none).
PROGRESS_DELAY = 1.0
#: Free input sizes (``None`` in the config) are taken as ``FREE_SIZE + 2 * axis`` (as verify_model's default inputs).
FREE_SIZE = 17


@dataclass(frozen=True)
class LayerCheck:
    """How one layer with weights went: its tensors, their bytes, and its numeric check."""

    layer: str
    kind: str
    tensors: tuple[str, ...]
    nbytes: int
    max_abs_error: float
    max_rel_error: float
    tolerance: float
    reference_dtype: str
    passed: bool


@dataclass(frozen=True)
class StreamReport:
    """What :func:`stream_model` wrote and checked."""

    model: str
    target: str
    path: str
    input_shapes: tuple[tuple[int, ...], ...]
    layers: tuple[LayerCheck, ...]
    tensors: int
    nbytes: int
    largest_tensor: int
    seconds: float = 0.0
    notes: tuple[str, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.layers)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["passed"] = self.passed
        out["streamed"] = True
        return out

    def __str__(self) -> str:
        lines = [
            f"streamed {self.model!r} to {self.target}: {self.tensors} tensors, {self.nbytes / 2**20:.1f} MiB "
            f"(largest {self.largest_tensor / 2**20:.1f} MiB) in {self.seconds:.1f} s",
            "every tensor read back byte for byte; each layer checked alone on a random input of "
            f"{CHECK_BATCH} samples (inputs {[list(s) for s in self.input_shapes]}, channels first)",
            f"{'layer':<28} {'kind':<14} {'tensors':>7} {'max abs err':>12} {'max rel err':>12} {'tolerance':>10} {'ref':>8}",
        ]
        for c in self.layers:
            lines.append(
                f"{c.layer[:28]:<28} {c.kind[:14]:<14} {len(c.tensors):>7} {c.max_abs_error:>12.3e} {c.max_rel_error:>12.3e} "
                f"{c.tolerance:>10.1e} {c.reference_dtype:>8}" + ("" if c.passed else "  FAILED")
            )
        lines += [f"note: {n}" for n in self.notes]
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)


def _nbytes(record: Any) -> int:
    """Bytes of every array a record holds (its sub-records' too)."""
    total = 0
    for name in getattr(record, "ARRAYS", ()):
        value = getattr(record, name, None)
        if value is not None:
            total += value.nbytes
    for name in getattr(record, "FIELDS", ()):
        value = getattr(record, name, None)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, Record):
                total += _nbytes(v)
    return total


def _weighted(record: Any) -> bool:
    return _nbytes(record) > 0


def hollow(record: Any) -> Any:
    """The same record (class, hyperparameters, array shapes and dtypes) with each array a broadcast zero: no memory.

    Kept by the walk in place of a layer already written, so that later calls of
    a shared layer and the final graph see its kind; never computed with.  A
    matrix keeps which of its axes is the closer in memory (the ONNX writer
    stores a ``Dense`` kernel in the order it is held): one row of zeros.
    """

    def light(value: Any) -> Any:
        if isinstance(value, np.ndarray) and value.ndim == 2 and value.size > 1 and value.strides[0] != value.strides[1]:
            first = abs(value.strides[0]) < abs(value.strides[1])
            row = np.zeros(value.shape[0] if first else value.shape[1], dtype=value.dtype)
            return np.lib.stride_tricks.as_strided(row, value.shape, (row.itemsize, 0) if first else (0, row.itemsize), writeable=False)
        if isinstance(value, np.ndarray):
            return np.broadcast_to(np.zeros((), dtype=value.dtype), value.shape)
        if isinstance(value, Record):
            return hollow(value)
        if isinstance(value, tuple):
            return tuple(light(v) for v in value)
        return value

    out = object.__new__(type(record))
    for cls in type(record).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            if hasattr(record, slot):
                object.__setattr__(out, slot, light(getattr(record, slot)))
    return out


@dataclass
class _Prepared:
    """A layer with weights between :meth:`_Stream._prepare` and :meth:`_Stream._finish`."""

    node: Any
    record: Any
    flatten: Any  # the Keras-order Flatten node before a Dense, or None
    x: np.ndarray  # the check's input
    expected: np.ndarray | None  # the reference's output on it (None: computed in _finish)
    y_shape: tuple[int, ...]  # the output's shape without the batch
    ref_dtype: Any
    only_call: bool  # the layer is called once (its record may go once converted)
    nbytes: int


def _torch_ready() -> bool:
    """PyTorch is imported (or its import failed): no thread of :func:`_torch_in_background` is still importing it."""
    import threading

    return not any(t.name == _IMPORT_THREAD and t.is_alive() for t in threading.enumerate())


_IMPORT_THREAD = "layoutconv-import-torch"


class _Thread:
    """``fn()`` run in a thread; :meth:`join` waits for it and returns its result or raises its error."""

    def __init__(self, fn: Any) -> None:
        import threading

        self._result: Any = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._result = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread by join
                self._error = exc

        self._thread = threading.Thread(target=run, name="layoutconv-write", daemon=True)
        self._thread.start()

    def join(self) -> Any:
        self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self._result


def _permute_rows(a: np.ndarray, order: np.ndarray) -> None:
    """``a[i] = a[order[i]]`` for every row ``i`` of ``a`` (``order`` a permutation), in place with one row of scratch:
    each cycle of the permutation is followed once."""
    seen = np.zeros(len(order), dtype=bool)
    row = np.empty(a.shape[1:], a.dtype)
    for start in range(len(order)):
        if seen[start] or order[start] == start:
            continue
        row[...] = a[start]
        i = start
        while True:
            seen[i] = True
            j = int(order[i])
            if j == start:
                a[i] = row
                break
            a[i] = a[j]
            i = j


def _trim() -> None:
    """Give the memory a layer's work freed back to the system before the next layer is read (glibc keeps freed
    heap pages otherwise: about 30 MB more at the peak, measured on the benchmark model)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def _no_random_init() -> Iterator[None]:
    """Build torch modules without their random initialisation (every layoutconv maker overwrites it).

    ``nn.Linear(16384, 16384)`` fills 1 GiB with random numbers before the
    maker replaces them: skipping that saves a pass over every weight and keeps
    the untouched memory out of the process (``torch.empty`` pages are only
    committed when written).  Deterministic fills (``ones_``, ``zeros_``) are kept.
    """
    from torch.nn import init

    names = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_", "orthogonal_", "sparse_")
    saved = {n: getattr(init, n) for n in names if hasattr(init, n)}
    try:
        for n in saved:
            setattr(init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(init, n, fn)


class _Memory:
    """The memory of a conversion's big arrays, reused from layer to layer instead of allocated anew.

    A 256 MB array allocated afresh costs its first touch: page faults, and on
    a virtual machine that returns freed memory to its host, the host's work to
    give it back (0.2 to 0.5 s per 256 MB measured on the benchmark machine).
    Each big weight needs two arrays (as read, and in PyTorch's layout); taken
    from here, the same buffers serve every layer.  A buffer is taken again only
    when nothing refers to it: every numpy view of it and every torch tensor made
    of one refers to the buffer, so its reference count says when the last is
    gone.  Records may hold its views without a copy
    (:func:`layoutconv.record.lend_memory`).  Arrays under :attr:`SMALLEST`
    bytes come from the ordinary allocator.
    """

    SMALLEST = 1 << 20

    def __init__(self) -> None:
        self._buffers: list[np.ndarray] = []
        self._idle: list[int] = []  # each buffer's reference count when nothing else refers to it

    def _is_idle(self, i: int) -> bool:
        import sys

        return sys.getrefcount(self._buffers[i]) <= self._idle[i]

    def _take(self, nbytes: int) -> np.ndarray:
        import sys

        from .record import lend_memory

        fits = [i for i in range(len(self._buffers)) if self._buffers[i].nbytes >= nbytes and self._is_idle(i)]
        if fits:
            return self._buffers[min(fits, key=lambda i: self._buffers[i].nbytes)]
        # idle buffers too small for this array go back to the system: the peak stays that of the arrays alive
        keep = [i for i in range(len(self._buffers)) if not self._is_idle(i)]
        self._buffers = [self._buffers[i] for i in keep]
        self._idle = [self._idle[i] for i in keep]
        self._buffers.append(lend_memory(np.empty(nbytes, dtype=np.uint8)))
        self._idle.append(sys.getrefcount(self._buffers[-1]))
        return self._buffers[-1]

    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A writable array of ``shape`` and ``dtype`` (uninitialised)."""
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < self.SMALLEST:
            return np.empty(shape, dtype)
        return self._take(nbytes)[:nbytes].view(dtype).reshape(shape)

    def tensor(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """A contiguous torch tensor of ``shape`` and ``dtype`` (uninitialised)."""
        import torch

        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if nbytes < self.SMALLEST:
            return torch.empty(shape, dtype=dtype)
        return torch.from_numpy(self._take(nbytes)[:nbytes]).view(dtype).reshape(shape)

    def clear(self) -> None:
        self._buffers, self._idle = [], []


class _Progress:
    """A progress bar on stderr (tqdm) for conversions that take over a second; nothing when off or tqdm is missing."""

    def __init__(self, total: int, enabled: bool, label: str, *, file: Any = None, delay: float | None = None) -> None:
        import sys

        self._bar = None
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self._bar = tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, leave=False, dynamic_ncols=True,
            delay=PROGRESS_DELAY if delay is None else delay, file=sys.stderr if file is None else file,
        )

    def update(self, n: int, what: str = "") -> None:
        if self._bar is not None:
            if what:
                self._bar.set_postfix_str(what[:40], refresh=False)
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def progress_wanted(quiet: bool) -> bool:
    """A bar only for a person watching: stderr is a terminal and ``--quiet`` was not given."""
    import sys

    return not quiet and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


class _Stream:
    """One streaming conversion (see the module docs); :func:`stream_model` drives it."""

    def __init__(self, kf: Any, writer: Any, target: str, seed: int, memory: _Memory | None = None) -> None:
        from . import _keras_graph
        from .model import _FileSource

        self.kf = kf
        self.writer = writer
        self.target = target
        self.walk = _keras_graph.Walk(kf.model_config, _FileSource(kf))
        self.rng = np.random.default_rng(seed)
        self.fixed = all(s is not None for i in self.walk.inputs for s in i.shape)
        self.shapes: dict[str, tuple[tuple[int, ...], str]] = {}  # edge -> (shape without the batch, channels first; kind)
        for i in self.walk.inputs:
            shape = tuple(FREE_SIZE + 2 * k if s is None else int(s) for k, s in enumerate(i.shape))
            if i.layout == "channels_last" and len(shape) >= 2:
                shape = (shape[-1],) + shape[:-1]
            self.shapes[i.name] = (shape, i.kind)
        self.taken: set[str] = set()
        self.attr: dict[str, str] = {}  # graph layer -> GraphModule attribute (the state_dict prefix)
        self.calls_left: dict[str, int] = {}
        self.permuted: dict[str, str] = {}  # Dense layer -> the Flatten node whose order it was permuted for
        self.checks: list[LayerCheck] = []
        self.kept: dict[str, tuple[bytes, bytes]] = {}  # tensor -> its first and last element's bytes
        self.largest = 0
        self.total = 0
        self.memory = memory if memory is not None else _Memory()

    # -- inputs ----------------------------------------------------------------------------------
    def _sample(self, edge: str, record: Any, dtype: np.dtype) -> np.ndarray:
        from . import layers

        shape, kind = self.shapes[edge]
        size = (CHECK_BATCH,) + shape
        if kind == "int":
            vocab = record.weights.shape[0] if isinstance(record, layers.Embedding) else 2
            return self.rng.integers(0, vocab, size=size)
        return self.rng.standard_normal(size).astype(dtype)

    @staticmethod
    def _dtype(record: Any) -> np.dtype:
        dtype = getattr(record, "dtype", None)
        return np.dtype(dtype) if dtype is not None and np.dtype(dtype).kind == "f" else np.dtype(np.float32)

    # -- the walk --------------------------------------------------------------------------------
    def _named(self, layer: str) -> None:
        """A layer seen for the first time: the attribute (state-dict prefix) it gets in the PyTorch module."""
        from .graph import attribute_name  # (torch_layers uses the same names; PyTorch may still be importing)

        self.attr[layer] = attribute_name(layer, self.taken)

    def run(self, progress: _Progress) -> None:
        walk = self.walk
        waiting: list[Any] = []  # layers read and run by the reference, waiting for PyTorch to be imported
        stored = {layer.name: _layer_bytes(layer) for layer in self.kf.layers}  # from the file's index: nothing read
        for node in walk:
            first = node.layer not in self.calls_left
            if first:
                self._named(node.layer)
                self.calls_left[node.layer] = walk.call_count(node.layer)
                if waiting and sum(p.nbytes for p in waiting) + stored.get(node.layer, 0) > PREFETCH_BYTES:
                    self._finish_waiting(waiting, progress, every=True)  # before this layer is read: at most PREFETCH_BYTES ahead
            weighted = _weighted(walk.layers[node.layer])
            if first and weighted:
                prepared = self._prepare(node)  # takes the record from the walk
                y_shape = prepared.y_shape
                waiting.append(prepared)
                self._finish_waiting(waiting, progress)
            else:
                record = walk.layers[node.layer]
                args = [self._sample(e, record, self._dtype(record)) for e in node.inputs]
                y_shape = self._forward(record, args[0] if len(args) == 1 else args, self._check_dtype(record)).shape[1:]
                del record, args
            self.shapes[node.name] = (tuple(y_shape), "float")
            self.calls_left[node.layer] -= 1
            if self.calls_left[node.layer] == 0 and weighted:
                walk.release(node.layer, hollow(walk.layers[node.layer]))  # a shared layer's arrays go after its last call
        self._finish_waiting(waiting, progress, every=True)

    def _finish_waiting(self, waiting: list[Any], progress: _Progress, every: bool = False) -> None:
        """Convert, write and check the layers prepared so far once PyTorch is imported (all of them if ``every``),
        or as soon as they hold more than :data:`PREFETCH_BYTES` (then the stream waits for the import)."""
        while waiting and (every or _torch_ready() or sum(p.nbytes for p in waiting) > PREFETCH_BYTES):
            prepared = waiting.pop(0)
            self._finish(prepared)
            progress.update(prepared.nbytes, prepared.node.layer)
            del prepared
            _trim()

    @staticmethod
    def _forward(record: Any, x: Any, dtype: Any) -> np.ndarray:
        from . import reference

        return reference.forward(record, x, dtype=dtype)

    @staticmethod
    def _check_dtype(record: Any) -> Any:
        return np.float64 if _nbytes(record) <= FLOAT64_CHECK_BYTES else np.float32

    def _flatten_before(self, node: Any, record: Any) -> Any:
        """The Keras-order Flatten node this Dense reads, when its columns are to be permuted (else None)."""
        from . import layers

        if not self.fixed or not isinstance(record, layers.Dense) or len(node.inputs) != 1:
            return None
        producer = next((n for n in self.walk.nodes if n.name == node.inputs[0]), None)
        if producer is None:
            return None
        flat = self.walk.layers[producer.layer]
        return producer if isinstance(flat, layers.Flatten) and flat.order == "channels_last" else None

    def _prepare(self, node: Any) -> "_Prepared":
        """The numpy half of a layer with weights (before PyTorch is needed): its record read, the check's input,
        the expected output when there is time for it (PyTorch still importing, or a Flatten's order to apply)."""
        record = self.walk.layers[node.layer]
        flatten = self._flatten_before(node, record)
        dtype = self._dtype(record)
        ref_dtype = self._check_dtype(record)
        if flatten is not None:  # checked with the Flatten: Keras' order in the reference, PyTorch's in the module
            x = self._sample(flatten.inputs[0], record, dtype)
            flat_record = self.walk.layers[flatten.layer]
            expected = self._forward(record, self._forward(flat_record, x, ref_dtype), ref_dtype)  # before the kernel is permuted
            y_shape = expected.shape
        else:
            x = self._sample(node.inputs[0], record, dtype)
            # now, while PyTorch is imported; else later, while the layer is written
            expected = self._forward(record, x, ref_dtype) if not _torch_ready() else None
            y_shape = expected.shape if expected is not None else self._forward(record, x[:0], ref_dtype).shape  # no samples: the shape
        return _Prepared(node, record, flatten, x, expected, tuple(y_shape[1:]), ref_dtype, self.calls_left[node.layer] == 1, _nbytes(record))

    def _finish(self, p: "_Prepared") -> None:
        """The PyTorch half: the layer's module, its tensors written and read back, its output checked."""
        import torch

        from . import graph as graph_module, layers
        from .adapters.torch_adapter import tensor_views
        from .adapters.torch_layers import GraphModule, run_graph
        from .graph import Graph, Input, Node
        from ._stream_files import end_bytes, tensor_array

        node, record, flatten, x, expected = p.node, p.record, p.flatten, p.x, p.expected
        p.record = p.expected = None  # the prepared layer lets go of them with this frame
        if flatten is not None:
            mini_layers = {"flatten": layers.Flatten("channels_first"), node.layer: record}
            mini_nodes = [Node("f", "flatten", ("x",), "flat"), Node("y", node.layer, ("f",), "flat")]
            x_shape, kind = self.shapes[flatten.inputs[0]]
        else:
            mini_layers = {node.layer: record}
            mini_nodes = [Node("y", node.layer, ("x",), "channels_first" if len(p.y_shape) > 1 else "flat")]
            x_shape, kind = self.shapes[node.inputs[0]]
        mini = Graph(mini_layers, [Input("x", x_shape, "channels_first" if len(x_shape) >= 2 else "flat", kind)], mini_nodes, ["y"], name=node.layer)
        with _no_random_init(), tensor_views():  # the module's weights are views of the record's arrays (no copy)
            module = GraphModule(mini, layout="channels_first")
        del mini, mini_layers
        kind_name = type(record).__name__
        prefix = module._names[node.layer]
        sub = getattr(module, prefix)
        if flatten is not None:
            if p.only_call:  # the record can go now (the module views its arrays, which stay until the module goes)
                self.walk.release(node.layer, hollow(record))
            column = graph_module.flatten_column(self.shapes[flatten.inputs[0]][0])
            w = sub.weight.detach()
            if p.only_call and w.t().is_contiguous():  # a Keras kernel seen transposed: its columns are rows where it is stored
                _permute_rows(tensor_array(w.t()), column)  # in place (the record is gone): no second copy of the kernel
            else:
                with torch.no_grad():
                    permuted = torch.index_select(w, 1, torch.from_numpy(column), out=self.memory.tensor(tuple(w.shape), w.dtype))
                    sub.weight = torch.nn.Parameter(permuted, requires_grad=False)
                del permuted
            del w
            self.permuted[node.layer] = flatten.name
        tensors = [(f"{self.attr[node.layer]}.{key[len(prefix) + 1:]}", t.detach()) for key, t in module.state_dict().items()]
        # written in C order a chunk at a time (a transposed kernel too), each chunk read back and compared (the
        # writer raises if one differs: the module computes with exactly the bytes in the file), in a thread while
        # the reference and the module compute the layer's output (numpy, BLAS, torch and the file I/O let go of the GIL)
        writing = _Thread(lambda: [self.writer.add(name, t) for name, t in tensors])
        try:
            if expected is None:
                expected = self._forward(record, x, p.ref_dtype)
            got = run_graph(module, [x])
        finally:
            entries = writing.join()
        if flatten is None and p.only_call:
            self.walk.release(node.layer, hollow(record))
        del record, module, sub
        for (_, t), entry in zip(tensors, entries):
            self.total += entry.nbytes
            self.largest = max(self.largest, entry.nbytes)
            self.kept[entry.name] = end_bytes(tensor_array(t))
        del tensors
        names = tuple(e.name for e in entries)
        self._judge(node.layer, kind_name, names, sum(e.nbytes for e in entries), got, expected, p.ref_dtype, "")

    def _judge(self, layer: str, kind_name: str, names: tuple[str, ...], nbytes: int, got: np.ndarray, expected: np.ndarray,
               ref_dtype: Any, where: str) -> tuple[int, ...]:
        """Record how a layer read back from the file compared with the reference; raise if it is off.  Its output shape."""
        from .porting import END_TO_END_FACTOR
        from .tolerance import ASSERT_CLOSE_DEFAULTS

        rtol, atol = ASSERT_CLOSE_DEFAULTS.get(got.dtype.name, ASSERT_CLOSE_DEFAULTS["float32"])
        tol = rtol * END_TO_END_FACTOR
        if got.shape != expected.shape:
            abs_err = rel_err = math.inf
        else:
            abs_err = float(np.max(np.abs(got.astype(np.float64) - expected))) if expected.size else 0.0
            scale = float(np.max(np.abs(expected))) if expected.size else 0.0
            rel_err = abs_err / scale if scale > 0 else abs_err
        passed = rel_err <= tol or abs_err <= atol
        self.checks.append(LayerCheck(layer, kind_name, names, nbytes, abs_err, rel_err, tol, np.dtype(ref_dtype).name, passed))
        if not passed:
            raise fail(
                VerificationError, f"Layer {layer!r} ({kind_name}) read back from the file does not compute the reference's output{where}",
                f"a relative error within {tol:.1e} (or an absolute one within {atol:.0e})",
                f"{rel_err:.3e} relative, {abs_err:.3e} absolute" if got.shape == expected.shape else f"output shape {got.shape}, reference {expected.shape}",
                "Nothing was written.",
            )
        return tuple(expected.shape[1:])

    # -- the end ---------------------------------------------------------------------------------
    def check_flattens(self) -> Any:
        """Compare the Flatten orders chosen on the way with those the whole-model path chooses on the full graph."""
        from . import graph as graph_module

        graph = self.walk.graph()
        wanted = {u.layer: n.name for n, users in graph_module.flatten_users(graph) for u in users} if self.fixed else {}
        if wanted != self.permuted:
            differ = sorted(set(wanted.items()) ^ set(self.permuted.items()))
            raise fail(
                UnsupportedError,
                "A Flatten's output is used by more than the Dense layer read right after it (or a layer is shared), "
                "which is only known at the end of the model",
                "a Dense layer that alone reads its Flatten (then its columns follow PyTorch's flatten order)",
                f"the layers {differ[:6]}",
                "Convert without streaming (--no-stream): the whole-model path decides with the whole graph. Nothing was written.",
            )
        return graph


def _check_file(target: str, path: str, writer: Any, metadata: dict[str, str], kept: dict[str, tuple[bytes, bytes]]) -> None:
    """Open the finished file with the framework: names, dtypes, shapes, and each tensor's first and last element."""
    import torch

    from ._stream_files import SAFETENSORS_DTYPES, tensor_array

    def same(name: str, dtype: str, shape: tuple[int, ...], first: Any, last: Any) -> None:
        entry = entries[name]
        if dtype != entry.dtype or tuple(shape) != entry.shape:
            raise fail(VerificationError, f"Tensor {name!r} in the finished file is not what was written",
                       f"{entry.dtype} {entry.shape}", f"{dtype} {tuple(shape)}", "Nothing was written.")
        if first is not None and (tensor_array(first).tobytes() != kept[name][0] or tensor_array(last).tobytes() != kept[name][1]):
            raise fail(VerificationError, f"Tensor {name!r} in the finished file does not start and end with the bytes written",
                       "the bytes read back after writing", "other bytes", "Nothing was written.")

    entries = {e.name: e for e in writer.entries}
    if target == "safetensors":
        try:
            from safetensors import safe_open
        except ImportError:  # pragma: no cover - checked before writing
            raise fail(FrameworkMissingError, "Reading .safetensors needs the safetensors package", "safetensors installed", "an environment without it") from None
        table = writer.header_as_written()
        if table != {"__metadata__": metadata, **{e.name: {"dtype": SAFETENSORS_DTYPES[e.dtype], "shape": list(e.shape),
                     "data_offsets": [e.offset - writer.data_start, e.offset - writer.data_start + e.nbytes]} for e in writer.entries}}:
            raise fail(VerificationError, "The safetensors header read back is not the one written", "the same JSON", "another", "Nothing was written.")
        codes = {v: k for k, v in SAFETENSORS_DTYPES.items()}
        with safe_open(path, framework="pt") as f:
            if sorted(f.keys()) != sorted(entries) or (f.metadata() or {}) != metadata:
                raise fail(VerificationError, "safetensors does not list the tensors written", f"{len(entries)} tensors", f"{len(list(f.keys()))}", "Nothing was written.")
            for name in f.keys():
                sl = f.get_slice(name)
                shape = tuple(sl.get_shape())
                first = last = None
                if math.prod(shape):
                    if len(shape) == 0:
                        first = last = f.get_tensor(name).reshape(-1)
                    else:
                        first = sl[tuple(slice(0, 1) for _ in shape)].reshape(-1).contiguous()
                        last = sl[tuple(slice(n - 1, n) for n in shape)].reshape(-1).contiguous()
                same(name, codes[sl.get_dtype()], shape, first, last)
        return
    state = torch.load(path, weights_only=True, mmap=True)
    try:
        if list(state) != [e.name for e in writer.entries]:
            raise fail(VerificationError, "torch.load does not list the tensors written", f"{len(entries)} tensors in order", f"{len(state)}", "Nothing was written.")
        for name, t in state.items():
            flat = t.reshape(-1)
            first, last = (flat[:1].contiguous(), flat[-1:].contiguous()) if flat.numel() else (None, None)
            same(name, str(t.dtype).replace("torch.", ""), tuple(t.shape), first, last)
    finally:
        del state  # unmaps the file


def stream_model(
    source: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    to: str | None = None,
    architecture: Any = None,
    backend: str | None = None,
    overwrite: bool = False,
    parents: bool = False,
    progress: bool = False,
    seed: int = 0,
) -> StreamReport:
    """Convert the whole Keras model in ``source`` to ``path`` (``.safetensors`` or ``.pt``) layer by layer (module docs).

    Peak memory is about one copy of the largest layer's weights (the module
    views the arrays read; the writer copies a chunk at a time), up to
    :data:`PREFETCH_BYTES` more while PyTorch imports, above what the
    frameworks take when imported.  ``progress=True`` shows a bar on stderr (with tqdm, for
    conversions over a second).  Returns a :class:`StreamReport`; a failed check
    raises :class:`~layoutconv.VerificationError` and leaves nothing at ``path``.
    """
    from .convert_model import model_target_for

    if model_target_for(path, to).name == "onnx":  # first, and without torch: layoutconv._stream_onnx
        from ._stream_onnx import stream_onnx

        return stream_onnx(source, path, architecture=architecture, backend=backend, overwrite=overwrite, parents=parents, progress=progress, seed=seed)
    with _torch_in_background():
        return _stream_model(source, path, to, architecture, backend, overwrite, parents, progress, seed)


@contextlib.contextmanager
def _torch_in_background() -> Iterator[None]:
    """Import torch (and layoutconv's PyTorch adapters) in a thread while the file is parsed and the first layers
    are read and checked by the reference (``import torch`` is most of the start-up: 1.5-2 s on the benchmark
    machine, where a conversion of 1 GiB may take 2 x cp + 2 s in all; see :data:`PREFETCH_BYTES`).

    Reading, numpy and BLAS release the GIL, so the import goes on meanwhile.
    The main thread's own ``import torch`` waits for this one (or reports its
    error); the thread is joined before the conversion returns or fails.
    """
    import sys
    import threading

    if "torch" in sys.modules:
        yield
        return

    def load() -> None:
        try:
            import torch  # noqa: F401

            from .adapters import torch_layers  # noqa: F401  (and the adapters that write the modules: 0.1 s more)
        except Exception:  # noqa: BLE001 - the main thread's import raises it where it is needed
            pass

    thread = threading.Thread(target=load, name=_IMPORT_THREAD, daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()


def _stream_model(
    source: Any, path: Any, to: str | None, architecture: Any, backend: str | None, overwrite: bool, parents: bool, progress: bool, seed: int,
) -> StreamReport:
    from .convert_model import model_target_for
    from .convert import _check_output, temporary_beside
    from .model import keras_model_file

    start = time.perf_counter()
    target = model_target_for(path, to)
    if target.name not in STREAM_TARGETS:
        raise fail(
            UnsupportedError, f"Streaming conversion does not write {target.name} files yet",
            "an output ending in .safetensors, .pt, .pth or .onnx", f"{str(path)!r}",
            "Convert without --stream: the whole-model path writes it (with every weight in memory).",
        )
    if target.name == "safetensors":
        try:
            import safetensors  # noqa: F401
        except ImportError:
            raise fail(
                FrameworkMissingError, "Writing .safetensors needs the safetensors package", "safetensors installed",
                "an environment without it", "Install it with: pip install 'layoutconv[safetensors]'",
            ) from None
    kf = keras_model_file(source, architecture=architecture, backend=backend)
    final = Path(path)
    _check_output(final, overwrite, parents)
    suffix = final.suffix if final.suffix.lower() in target.suffixes else target.suffixes[0]
    tmp = temporary_beside(final, suffix)
    writer: Any = None
    bar = _Progress(sum(_layer_bytes(layer) for layer in kf.layers), progress, f"convert {final.name}")
    try:
        from . import _keras_graph
        from ._stream_files import SafetensorsWriter, TorchZipWriter, header_room

        if target.name == "safetensors":
            names = [(n, len(_stored(kf, n))) for n in _keras_graph.layer_names(kf.model_config)]
            writer = SafetensorsWriter(tmp, header_room(names, {"written_by": "layoutconv", "model": "x" * 256}))
        else:
            writer = TorchZipWriter(tmp)
        try:
            memory = _Memory()
            # records take the arrays read as they are (the walk keeps no other reference), in memory reused layer by layer
            with kf.reading(hand_over=True, memory=memory):
                stream = _Stream(kf, writer, target.name, seed, memory)
                stream.run(bar)
            memory.clear()
            graph = stream.check_flattens()
            metadata = {"written_by": "layoutconv", "model": graph.name}
            if target.name == "safetensors":
                writer.finish(metadata)
            else:
                writer.finish()
            _check_file(target.name, tmp, writer, metadata, stream.kept)
        except OSError as exc:
            raise fail(OutputError, f"Cannot write {str(final)!r}", "room and permission to write the file", f"{exc.strerror or exc}", "Nothing was written.") from None
        finally:
            if writer is not None:
                writer.close()
        try:
            os.replace(tmp, final)
        except OSError as exc:
            raise fail(OutputError, f"Cannot move the verified file to {str(final)!r}", "a writable path", f"{exc.strerror or exc}", "Nothing was written.") from None
        return StreamReport(
            graph.name, target.name, str(final), tuple(stream.shapes[i.name][0] for i in graph.inputs), tuple(stream.checks),
            len(writer.entries), stream.total, stream.largest, time.perf_counter() - start,
        )
    finally:
        bar.close()
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _layer_bytes(layer: Any) -> int:
    import numpy as np

    return sum(int(np.prod(w.shape, dtype=np.int64)) * np.dtype(w.dtype).itemsize for w in layer.weights if _known_dtype(w.dtype))


def _known_dtype(name: str) -> bool:
    try:
        np.dtype(name)
    except TypeError:
        return False
    return True


def _stored(kf: Any, name: str) -> tuple[Any, ...]:
    for layer in kf.layers:
        if layer.name == name:
            return layer.weights
    return ()


def should_stream(source: str, target: str, stream: bool | None) -> bool:
    """``--stream`` / ``--no-stream`` as given, else stream a Keras file of :data:`STREAM_ABOVE` bytes or more to a streamed format."""
    if stream is not None:
        return stream
    try:
        return target in STREAM_TARGETS and os.path.getsize(source) >= STREAM_ABOVE
    except OSError:
        return False

