r"""The numpy reference forward pass: the executable definition of every record (:func:`forward`).

Convolution, 1-D (the N-d case applies the same sum over every spatial axis:
``y[n, f, *t] = b[f] + sum_c sum_{*k} W[f, c, *k] * x~[n, g(f) C/g + c, *(s t + d k - p_b)]``).
For an input ``x`` of shape ``(N, C, L)``, a kernel ``W`` of shape
``(O, C // g, K)``, stride ``s``, dilation ``d``, groups ``g`` and pads
``(p_b, p_e)`` resolved for ``L`` (see :meth:`Conv1D.pads`), the output is

.. math::

    y[n, f, t] = b[f] + \sum_{c=0}^{C/g-1} \sum_{k=0}^{K-1}
                 W[f, c, k] \cdot \tilde x[n,\ \gamma(f) \cdot C/g + c,\ s t + d k - p_b]

with ``gamma(f) = f // (O / g)`` the group of filter ``f`` and ``x~`` the
input extended beyond ``[0, L)`` by the padding mode (zeros, reflect,
replicate or circular).  ``t`` runs over ``0 .. floor((L + p_b + p_e - d (K - 1) - 1) / s)``.
This is a cross-correlation: tap ``k`` of the kernel meets input position
``s t + d k - p_b``.  There is no kernel flip.  A fused activation
(:mod:`layoutconv.activations`) is then applied elementwise to ``y``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import threading
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import activations, layers
from . import graph as graph_module
from .chain import Chain
from .graph import Graph
from .conv import Conv, Conv1D
from .transpose import ConvTranspose
from .errors import ConfigError, ShapeError, UnsupportedError, fail

#: The most elements a padded input may have (2**28: 2 GiB in float64), checked before anything is allocated.
MAX_ELEMENTS = 1 << 28

#: padding_mode -> numpy.pad's mode (PyTorch's names on the left)
NUMPY_PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


_AXES = {1: "L", 2: "H, W", 3: "D, H, W"}


def _check_mode_limits(length: int, begin: int, end: int, mode: str) -> None:
    """Refuse pads that PyTorch refuses: reflect needs pads < length, circular pads <= length."""
    limit = {"reflect": length - 1, "circular": length}.get(mode)
    if limit is not None and max(begin, end) > limit:
        raise fail(
            UnsupportedError,
            f"{mode.capitalize()} padding is larger than the input allows",
            f"pads <= {limit} for an input of length {length}",
            f"pads ({begin}, {end})",
            "Use a longer input or another padding mode.",
        )


def pad1d(x: np.ndarray, begin: int, end: int, mode: str) -> np.ndarray:
    """Pad the last axis of ``x`` as PyTorch's ``padding_mode`` does, refusing what PyTorch refuses."""
    return pad(x, ((begin, end),), mode)


def pad(x: np.ndarray, pads: Sequence[tuple[int, int]], mode: str, dtype: Any = None) -> np.ndarray:
    """Pad the last ``len(pads)`` axes of ``x`` as PyTorch's ``padding_mode`` does, refusing what PyTorch refuses.

    With ``dtype``, the result has that dtype (converted in the same pass for zero padding).
    """
    rank = len(pads)
    for size, (begin, end) in zip(x.shape[-rank:], pads):
        _check_mode_limits(size, begin, end, mode)
    if not any(b or e for b, e in pads):
        return x if dtype is None else x.astype(dtype, copy=False)
    if mode == "zeros":
        # np.empty and zeroed borders, not np.zeros: calloc'd memory is zeroed again (or faulted in) page by page
        sizes = x.shape[-rank:]
        out = np.empty(x.shape[:-rank] + tuple(n + b + e for n, (b, e) in zip(sizes, pads)), dtype=x.dtype if dtype is None else dtype)
        lead = (slice(None),) * (x.ndim - rank)
        for axis, (n, (b, e)) in enumerate(zip(sizes, pads)):
            before = (slice(None),) * axis
            out[lead + before + (slice(0, b),)] = 0
            out[lead + before + (slice(b + n, None),)] = 0
        out[lead + tuple(slice(b, b + n) for n, (b, _) in zip(sizes, pads))] = x
        return out
    widths = [(0, 0)] * (x.ndim - rank) + [tuple(p) for p in pads]
    return np.pad(x if dtype is None else x.astype(dtype, copy=False), widths, mode=NUMPY_PAD_MODES[mode])


def check_input(conv: Conv, x: Any) -> tuple[np.ndarray, tuple[tuple[int, int], ...]]:
    """Check that ``x`` is an ``(N, C, *spatial)`` input ``conv`` can run on; return it as an array with its pads.

    The one input check every runner shares (the reference, ``verify`` and the
    adapters' ``run``), so a bad input gives the same error everywhere.
    """
    x = np.asarray(x)
    rank = conv.spatial_rank
    if x.ndim != 2 + rank or x.shape[1] != conv.in_channels:
        if x.ndim == 1 + rank:
            hint = "Add a batch axis with x[None]."
        else:
            order = (0, rank + 1, *range(1, rank + 1))
            hint = f"Transpose a channels-last input with x.transpose{order}."
        raise fail(
            ShapeError,
            "Input does not fit the convolution",
            f"shape (N, {conv.in_channels}, {_AXES[rank]}): batch, channels, {'length' if rank == 1 else 'spatial axes'} (channels first)",
            f"shape {tuple(x.shape)}",
            hint,
        )
    spatial = tuple(int(n) for n in x.shape[2:])
    pads = conv.pads(spatial)
    for axis, (size, (begin, end), span) in enumerate(zip(spatial, pads, conv.receptive_field)):
        if size + begin + end < span:
            where = "length" if rank == 1 else f"size {size} on spatial axis {axis}"
            raise fail(
                ShapeError,
                "Input is shorter than the kernel's receptive field",
                f"padded {'length' if rank == 1 else 'size'} >= dilation * (kernel_size - 1) + 1 = {span}",
                f"{where if rank > 1 else 'length'} {size if rank == 1 else ''}".replace("  ", " ").strip()
                + f" with pads ({begin}, {end})",
            )
        _check_mode_limits(size, begin, end, conv.padding_mode)
    check_size(x.shape[:2], int(np.prod([n + b + e for n, (b, e) in zip(spatial, pads)], dtype=np.int64)))
    return x, pads


def check_size(leading: tuple[int, ...], padded_size: int) -> None:
    """Refuse an input whose padded copy would exceed :data:`MAX_ELEMENTS`, before allocating it."""
    elements = int(np.prod(leading, dtype=np.int64)) * int(padded_size)
    if elements > MAX_ELEMENTS:
        raise fail(
            ShapeError,
            "The padded input is too large for the reference pass",
            f"at most {MAX_ELEMENTS} elements (batch x channels x padded spatial size)",
            f"{elements} elements (leading axes {tuple(leading)}, padded spatial size {padded_size})",
            "Use a smaller batch or a shorter input.",
        )


def forward(record: Any, *inputs: Any, dtype: Any = np.float64, layout: str = "source") -> Any:
    """Apply a record to ``x`` (channels first: ``(N, C, *spatial)``) in plain numpy; the definition of what it means.

    A :class:`~layoutconv.graph.Graph` takes one array per model input, in the
    source framework's layouts (``layout="channels_first"`` for canonical arrays),
    and returns its output (a tuple for several) in the same layouts.

    Inputs and weights are converted to ``dtype`` (float64 by default) before
    any arithmetic, so the result carries no rounding of a framework under
    test.  Vectorised: per block of images and output positions, the taps
    copied into a column matrix and one matrix product (BLAS).  A stride-1 2-D
    convolution instead lays its input out once with each row's channels side
    by side, so that every kernel row reads it through a view (no column copy);
    other stride-1 convolutions with several kernel rows copy the taps of one
    kernel row only and sum the rows' products shifted; a depthwise convolution
    sums its taps over strided views.

    >>> import numpy as np
    >>> from layoutconv import Conv
    >>> conv = Conv(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]))          # a 2x2 kernel, one channel
    >>> forward(conv, np.arange(9.0).reshape(1, 1, 3, 3))
    array([[[[27., 37.],
             [57., 67.]]]])
    """
    if isinstance(record, Graph):
        return graph_module.run(record, inputs, functools.partial(_node_forward, dtype=dtype), layout=layout, donate=True)
    if len(inputs) != 1:
        raise fail(ShapeError, f"A {type(record).__name__} takes one input", "one array (a list of arrays for a merge)", f"{len(inputs)} arguments")
    x = inputs[0]
    for cls in type(record).__mro__:
        if cls in _FORWARD:
            return _FORWARD[cls](record, x, dtype)
    raise fail(
        ConfigError,
        "reference.forward has no definition for this object",
        f"one of {sorted(c.__name__ for c in _FORWARD)}",
        f"{type(record).__name__}",
    )


def _node_forward(record: Any, x: Any, owned: Any, dtype: Any) -> np.ndarray:
    """One node of a graph; ``owned`` says which inputs no other node reads again (see ``graph.run``'s ``donate``).

    Elementwise layers write into an owned input instead of a new array: the same arithmetic, fewer
    passes over memory.
    """
    for cls in type(record).__mro__:
        if cls in _IN_PLACE:
            return _IN_PLACE[cls](record, x, dtype, owned)
    return forward(record, x, dtype=dtype)


def _writable(x: Any, y: np.ndarray, owned: bool) -> bool:
    """May ``y`` (``x`` converted by :func:`_float_input`) be overwritten: a copy made here, or an owned input."""
    return y.flags.writeable and (y is not x or (owned and isinstance(x, np.ndarray)))


def _conv_forward(conv: Conv, x: Any, dtype: Any) -> np.ndarray:
    x, pads = check_input(conv, x)
    n, c = x.shape[:2]
    g, o = conv.groups, conv.out_channels
    if g == 1 and all(k == 1 for k in conv.kernel_shape) and not any(b or e for b, e in pads):
        return activations.apply(conv.activation, _pointwise(conv, x, dtype), overwrite=True)
    padded = tuple(m + b + e for m, (b, e) in zip(x.shape[2:], pads))
    out = tuple((m - r) // s + 1 for m, r, s in zip(padded, conv.receptive_field, conv.stride))
    # kernel and bias stay in their own dtype: each path converts them as it lays them out (one copy, not two)
    kernel, bias = conv.kernel, conv.bias
    y = np.empty((n, o, *out), dtype=np.dtype(dtype))
    if c // g == 1 and g > 1 and o // g <= DEPTHWISE_MULTIPLIER:
        xp = np.ascontiguousarray(pad(x, pads, conv.padding_mode, dtype=dtype))
        grid = _Grid.of(xp, out, conv.stride, conv.dilation, conv.kernel_shape)
        _depthwise(grid, kernel.astype(dtype, copy=False), None if bias is None else bias.astype(dtype, copy=False), y)
    elif (stack := _RowStack.of(n, c, padded, out, conv, y.itemsize)) is not None:
        if conv.padding_mode != "zeros":  # the row stack pads with zeros as it lays the input out
            x, pads = pad(x, pads, conv.padding_mode), ((0, 0),) * len(pads)
        _row_stack_gemm(stack, x, pads, kernel, bias, y, g)
    else:
        xp = np.ascontiguousarray(pad(x, pads, conv.padding_mode, dtype=dtype))
        grid = _Grid.of(xp, out, conv.stride, conv.dilation, conv.kernel_shape)
        if (plan := _RowShift.of(xp.shape, out, conv, y.itemsize)) is not None:
            _row_shift_gemm(plan, xp, kernel, bias, y, g)
        else:
            _im2col_gemm(grid, kernel, bias, y, g)
    return activations.apply(conv.activation, y, overwrite=True)


def _pointwise(conv: Conv, x: np.ndarray, dtype: Any) -> np.ndarray:
    """A 1x1 convolution without padding: ``y[n] = W @ x[n, :, ::s] + b``, the input itself the column matrix.

    No column copy (the im2col path would copy the whole input for its single tap); with a stride,
    only the positions read are copied.
    """
    n, c = x.shape[:2]
    picked = x[(slice(None), slice(None), *(slice(None, None, s) for s in conv.stride))]
    out = picked.shape[2:]
    columns = np.ascontiguousarray(picked, dtype=dtype).reshape(n, c, math.prod(out))  # explicit sizes: N may be 0
    y = np.empty((n, conv.out_channels, math.prod(out)), dtype=columns.dtype)
    np.matmul(conv.kernel.astype(dtype, copy=False).reshape(conv.out_channels, c), columns, out=y)
    if conv.bias is not None:
        y += conv.bias.astype(dtype, copy=False)[:, None]
    return y.reshape(n, conv.out_channels, *out)


#: Bytes of the column matrix (im2col) filled at a time, and of a transposed convolution's per-tap
#: products: bounds the extra memory of the reference whatever the input.  On a quiet machine a block
#: that stays in the last-level cache is fastest (8 MiB: one ResNet-stage image in float32, 20% faster
#: than 32 MiB); on a loaded one fewer, larger BLAS calls are (docs/benchmarks.md).
COLUMN_BYTES = 8 << 20

#: With stride 1, outputs are computed on the padded input's own grid (one contiguous slice per tap and
#: channel) when that grid has at most this many times the output's positions.
FLAT_GRID_WASTE = 1.5

#: Output elements a depthwise convolution sums its taps into at a time: fewer, larger numpy calls (their
#: set-up, not memory, dominates below ~2**16; 2**18 float32 elements fill the 1 MiB L2 cache).
DEPTHWISE_BLOCK = 1 << 18

#: Depthwise convolutions with at most this many outputs per input channel sum their taps; more go through GEMM.
DEPTHWISE_MULTIPLIER = 8

#: Output values per image and group from which, when the grid is the output's own, each image of a block
#: gets its own matrix product written straight into ``y``; below, one product for the whole block (then a
#: copy into ``y``) saves BLAS calls.  The copy costs more than a call from a few ten thousand values on.
GEMM_PER_IMAGE = 1 << 15

#: Stride-1 convolutions whose kernel has more than one row (2-D, 3-D) share the columns of a kernel row
#: between its rows (:func:`_row_shift_gemm`) instead of copying every tap, when a box of positions
#: covers at least ``ROW_SHIFT_HALO`` times the rows it reads below itself (each box computes those too).
ROW_SHIFT_HALO = 4


#: Stride-1 2-D convolutions whose kernel has more than one row (and no dilation between its rows) stack
#: the kernel's rows in the matrix product's inner dimension instead (:func:`_row_stack_gemm`: no column
#: copy at all), when each of its matrix products (one per group and output row) has at least
#: ``ROW_STACK_COLUMNS`` columns (images x padded width) and a group's re-laid kernel at least
#: ``ROW_STACK_WEIGHTS`` values: below either, the many small products cost more than the copies they save.
ROW_STACK_COLUMNS = 256
ROW_STACK_WEIGHTS = 1 << 14

#: Bytes of the row stack's products per block of output rows and images (every tap of a kernel row, and
#: the taps' running sum), read back by the sums right after: on the ResNet stage 2 MiB (four output rows
#: per call in float32, two in float64) measured 1-5% faster than 1 MiB (a core's L2 cache), in both dtypes.
ROW_STACK_BYTES = 2 << 20


class _Grid(NamedTuple):
    """Where a convolution's outputs are computed and where each tap reads them from.

    With stride 1 the outputs live on the padded input's own grid: ``src`` is the padded input
    with its spatial axes flattened, every tap is one contiguous slice of it, and output ``t`` is
    grid position ``sum(t * flat)`` (the positions in between, past the output's edges, are
    computed and dropped).  Otherwise ``src`` is the padded input and the grid is the output's own
    (strided views, ``flat`` is None).  Tap ``j`` at grid position ``q`` reads
    ``src[..., starts[j] + steps * q]``.
    """

    src: np.ndarray
    starts: list  # per tap, a start per axis of ``shape``
    steps: tuple[int, ...]
    shape: tuple[int, ...]  # the grid's positions
    out: tuple[int, ...]  # the output's positions
    flat: tuple[int, ...] | None  # grid position of output t: sum(t * flat); None: the grid is the output

    @classmethod
    def of(cls, xp: np.ndarray, out: tuple[int, ...], stride: Sequence[int], dilation: Sequence[int], kernel_shape: Sequence[int]) -> "_Grid":
        n, c, *padded = xp.shape
        taps = list(itertools.product(*(range(k) for k in kernel_shape)))
        flat = tuple(math.prod(padded[a + 1 :]) for a in range(len(out)))
        span = sum((m - 1) * f for m, f in zip(out, flat)) + 1
        positions = math.prod(out)
        if all(s == 1 for s in stride) and span <= FLAT_GRID_WASTE * positions:
            starts = [(sum(d * k * f for d, k, f in zip(dilation, tap, flat)),) for tap in taps]
            return cls(xp.reshape(n, c, math.prod(padded)), starts, (1,), (span,), out, None if span == positions else flat)
        starts = [tuple(d * k for d, k in zip(dilation, tap)) for tap in taps]
        return cls(xp, starts, tuple(stride), out, out, None)

    def window(self, images: slice, channels: slice, tap: int, box: Sequence[tuple[int, int]]) -> np.ndarray:
        """What tap ``tap`` reads for the positions in ``box``: shape ``(images, channels, *box)``."""
        where = tuple(slice(t + s * lo, t + s * (hi - 1) + 1, s) for t, s, (lo, hi) in zip(self.starts[tap], self.steps, box))
        return self.src[(images, channels, *where)]

    def crop(self, results: np.ndarray, y: np.ndarray) -> None:
        """``y[..., *t] = results[..., sum(t * flat)]``: the output's positions out of results on the flat grid.

        A strided view of ``results``; it reaches grid position ``sum((out - 1) * flat)`` at most, the
        grid's last.
        """
        if self.flat is None or results.shape[-1] < self.shape[0]:
            raise AssertionError(f"crop needs results on the whole flat grid ({self.shape[0]} positions), got {results.shape}")
        step = results.strides[-1]
        y[...] = as_strided(results, results.shape[:-1] + self.out, results.strides[:-1] + tuple(step * f for f in self.flat), writeable=False)


def _boxes(grid: Sequence[int], most: int):
    """Cover ``grid``'s positions (row-major) with boxes of at most ``most`` positions, each contiguous in memory.

    Yields ``(first flat position, ((lo, hi) per axis))``: the axes after the chunked one are whole,
    those before it one index at a time.
    """
    inner, axis = 1, len(grid)
    while axis > 0 and inner * grid[axis - 1] <= most:
        axis -= 1
        inner *= grid[axis]
    if axis == 0:
        yield 0, tuple((0, m) for m in grid)
        return
    cut = axis - 1
    step = max(1, most // inner)
    step = -(-grid[cut] // -(-grid[cut] // step))  # as many chunks, evened out: no sliver at the end
    for lead in itertools.product(*(range(m) for m in grid[:cut])):
        for lo in range(0, grid[cut], step):
            box = tuple((i, i + 1) for i in lead) + ((lo, min(lo + step, grid[cut])),) + tuple((0, m) for m in grid[axis:])
            yield int(np.ravel_multi_index(tuple(b for b, _ in box), grid)), box


def _view(a: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``a.reshape(shape)`` that must be a view: the reference writes through it."""
    v = a.reshape(shape)
    if v.size and not np.may_share_memory(v, a):
        raise AssertionError(f"reshape of {a.shape} {a.strides} to {tuple(shape)} copied")
    return v


def _blocks(n: int, size: int, per_position: int, itemsize: int) -> tuple[int, int]:
    """(images per block, grid positions per box) so that a block's ``per_position`` values fit :data:`COLUMN_BYTES`."""
    budget = max(1, COLUMN_BYTES // itemsize // per_position)  # positions of all images of a block
    block = max(1, min(n, budget // size))
    return block, max(1, min(size, budget // block))


_LOCAL = threading.local()


@contextlib.contextmanager
def _workspace(dtype: np.dtype, *sizes: int):
    """Flat ``dtype`` buffers of ``sizes`` elements, carved from a per-thread workspace kept between calls.

    Big temporaries allocated afresh on every call are handed back to the OS and mapped and zeroed
    again page by page (10 ms of a 47 ms float64 ResNet-stage pass); the workspace (at most
    :data:`COLUMN_BYTES` plus alignment, as the blocks are sized for it) is not.  A nested call
    gets a buffer of its own.
    """
    aligned = [-(-k * dtype.itemsize // 64) * 64 for k in sizes]
    held = getattr(_LOCAL, "workspace", None)
    _LOCAL.workspace = None
    if held is None or held.nbytes < sum(aligned):
        held = np.empty(sum(aligned), np.uint8)
    try:
        starts = np.cumsum([0, *aligned])
        yield [held[a : a + k * dtype.itemsize].view(dtype) for a, k in zip(starts, sizes)]
    finally:
        if held.nbytes <= COLUMN_BYTES + (1 << 12):
            _LOCAL.workspace = held


class _RowShift(NamedTuple):
    """How :func:`_row_shift_gemm` cuts a stride-1 convolution: grid steps, kernel-row offsets, blocks."""

    flat: tuple[int, ...]  # grid position of output t: sum(t * flat) (the padded input's own strides)
    offsets: tuple[int, ...]  # per kernel row (every tap but the last axis'), its grid offset
    step: int  # grid offset between two taps of a kernel row (the last axis' dilation)
    taps: int  # taps per kernel row (the last axis' kernel size)
    block: int  # images per block
    most: int  # output positions per box

    @classmethod
    def of(cls, padded_shape: Sequence[int], out: Sequence[int], conv: Conv, itemsize: int) -> "_RowShift | None":
        """The plan for ``conv`` on a padded input of ``padded_shape``, or None where the column copies serve better."""
        n, c, *padded = padded_shape
        *rows, taps = conv.kernel_shape
        if any(s != 1 for s in conv.stride) or math.prod(rows) < 2:
            return None
        flat = tuple(math.prod(padded[a + 1 :]) for a in range(len(out)))
        positions = math.prod(out)
        span = sum((m - 1) * f for m, f in zip(out, flat)) + 1
        if span > FLAT_GRID_WASTE * positions:
            return None
        offsets = tuple(sum(d * k * f for d, k, f in zip(conv.dilation, row, flat)) for row in itertools.product(*(range(k) for k in rows)))
        halo = offsets[-1]
        # the cost rule: the kernel is re-laid out (a copy as large as the kernel) to save column copies
        g = conv.groups
        if conv.kernel.size >= (c * taps * math.prod(rows) + g) * n * positions - (c * taps + g) * n * (span + halo):
            return None
        per_position = taps * c + 1 + (len(offsets) + 1) * conv.out_channels  # columns, products of every row, their sum
        budget = max(1, COLUMN_BYTES // itemsize // per_position)  # grid positions of a block
        if span + halo <= budget:
            return cls(flat, offsets, conv.dilation[-1], taps, max(1, min(n, budget // (span + halo))), positions)
        if budget - halo < ROW_SHIFT_HALO * halo:
            return None
        # boxes of one image; per output position, a box cut along the first axis spans the most grid positions
        most = max(1, (budget - halo) * math.prod(out[1:]) // flat[0])
        return cls(flat, offsets, conv.dilation[-1], taps, 1, most)

    def extent(self, shape: Sequence[int]) -> int:
        """Grid positions from a box's first output to its last."""
        return sum((m - 1) * f for m, f in zip(shape, self.flat)) + 1

    def crop(self, results: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        """The outputs of a box of ``shape`` out of ``results`` on its grid positions (last axis): a strided view."""
        step = results.strides[-1]
        return as_strided(results, results.shape[:-1] + tuple(shape), results.strides[:-1] + tuple(step * f for f in self.flat), writeable=False)


def _row_shift_gemm(plan: _RowShift, xp: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, y: np.ndarray, groups: int) -> None:
    """``y = b + sum over kernel rows r of W_r @ columns[offsets[r]:]``: the taps of a kernel row share one column matrix.

    Stride 1 only, on the padded input's own grid (``plan.flat``; the positions past the output's
    edges are computed and dropped).  Per block of images and box of positions, the column matrix
    has a row per (tap of a kernel row, input channel), ``taps`` shifted copies of the padded
    input instead of one per tap of the kernel, plus a row of ones that meets the bias, and
    reaches ``halo`` positions past the box.  Kernel row ``r`` at grid position ``q`` reads it at
    ``q + offsets[r]``: one matrix product gives every kernel row's (``W`` stacked by kernel rows,
    ``(rows x O/g, taps x C/g + 1)`` per group), then the rows' shifted products are summed, the
    last one straight into ``y`` with the crop to the output.
    """
    n, c = xp.shape[:2]
    o, cg = kernel.shape[:2]
    og = o // groups
    rows, taps = len(plan.offsets), plan.taps
    inner = taps * cg + (bias is not None)
    src = xp.reshape(n, c, math.prod(xp.shape[2:]))  # no -1: a batch of 0 has shapes too
    out = y.shape[2:]
    w = np.zeros((groups, rows, og, inner), dtype=y.dtype)
    w[..., : taps * cg] = kernel.reshape(groups, og, cg, rows, taps).transpose(0, 3, 1, 4, 2).reshape(groups, rows, og, taps * cg)
    if bias is not None:
        w[:, 0, :, -1] = bias.reshape(groups, og)  # the bias once, with the first kernel row
    w = w.reshape(groups, rows * og, inner)
    halo = plan.offsets[-1]
    boxes = list(_boxes(out, plan.most))
    longest = max((plan.extent([hi - lo for lo, hi in box]) for _, box in boxes), default=1)
    block = plan.block
    sizes = (groups * inner * block * (longest + halo), o * rows * block * (longest + halo), o * block * longest)
    with _workspace(y.dtype, *sizes) as (columns, products, sums):
        for b0 in range(0, n, block):
            images = slice(b0, min(b0 + block, n))
            nb = images.stop - b0
            dest = _view(y[images], (nb, groups, og, *out))
            for _, box in boxes:
                shape = tuple(hi - lo for lo, hi in box)
                first = sum(lo * f for (lo, _), f in zip(box, plan.flat))
                ext = plan.extent(shape)
                width = ext + halo
                buf = columns[: groups * inner * nb * width].reshape(groups, inner, nb, width)
                cols = _view(buf[:, : taps * cg], (groups, taps, cg, nb, width))
                for tap in range(taps):
                    start = first + plan.step * tap
                    cols[:, tap] = src[images, :, start : start + width].reshape(nb, groups, cg, width).transpose(1, 2, 0, 3)
                if bias is not None:
                    buf[:, -1] = 1
                prod = products[: o * rows * nb * width].reshape(groups, rows * og, nb * width)
                np.matmul(w, buf.reshape(groups, inner, nb * width), out=prod)
                prod = prod.reshape(groups, rows, og, nb, width)
                parts = [prod[:, r, ..., at : at + ext] for r, at in enumerate(plan.offsets)]
                if rows > 2:
                    acc = sums[: o * nb * ext].reshape(groups, og, nb, ext)
                    np.add(parts[0], parts[1], out=acc)
                    for part in parts[2:-1]:
                        acc += part
                    parts[:-1] = [acc]
                target = dest[(slice(None),) * 3 + tuple(slice(lo, hi) for lo, hi in box)].transpose(1, 2, 0, *range(3, 3 + len(out)))
                np.add(*(plan.crop(part, shape) for part in parts), out=target)


class _RowStack(NamedTuple):
    """How :func:`_row_stack_gemm` cuts a stride-1 2-D convolution: blocks of images and of output rows."""

    images: int  # images per block
    chunk: int  # output rows whose input is laid out at a time
    rows: int  # output rows per matrix product
    step: int  # columns between two taps of a kernel row (the dilation along a row)

    @classmethod
    def of(cls, n: int, c: int, padded: Sequence[int], out: Sequence[int], conv: Conv, itemsize: int) -> "_RowStack | None":
        """The plan for ``conv`` on ``n`` images of ``padded`` size, or None where another path serves better.

        Besides the sizes (:data:`ROW_STACK_COLUMNS`, :data:`ROW_STACK_WEIGHTS`), a cost rule: the row
        stack copies the kernel (re-laid out) to save the column copies of the tap-by-tap path (``taps x
        C`` values per output position, against ``C/g + 1`` per padded position for its one layout of the
        input); with a big kernel on a tiny input that saves less than the kernel's copy costs.
        """
        if conv.spatial_rank != 2 or any(s != 1 for s in conv.stride) or conv.dilation[0] != 1 or conv.kernel_shape[0] < 2:
            return None
        kh, kw = conv.kernel_shape
        g, og, cg1 = conv.groups, conv.out_channels // conv.groups, c // conv.groups + 1
        (hp, wp), (ho, wo) = padded, out
        if n * wp < ROW_STACK_COLUMNS or kw * og * kh * cg1 < ROW_STACK_WEIGHTS:
            return None
        if conv.kernel.size >= (c * kh * kw + g) * n * ho * wo - g * cg1 * n * hp * wp:
            return None
        per_row = g * (kw + (kw > 2)) * og * wp * itemsize  # products and their running sum, an output row of an image
        per_input_row = g * cg1 * wp * itemsize  # a laid-out row of an image
        images = max(1, min(n, ROW_STACK_BYTES // per_row, (COLUMN_BYTES - ROW_STACK_BYTES) // (per_input_row * kh)))
        rows = max(1, min(ho, ROW_STACK_BYTES // (per_row * images)))
        chunk = max(rows, min(ho, (COLUMN_BYTES - per_row * images * rows) // (per_input_row * images) - (kh - 1)))
        return cls(images, chunk, rows, conv.dilation[1])


def _row_stack_gemm(plan: _RowStack, x: np.ndarray, pads: Sequence[tuple[int, int]], kernel: np.ndarray, bias: np.ndarray | None, y: np.ndarray, groups: int) -> None:
    """``y[., ., i, j] = b + sum over taps t of (A_t @ B_i)[., j + d t]``: the kernel's rows stacked in the inner dimension.

    ``x`` is the input, padded with zeros by ``pads``.  Per block of images and of output rows, its rows
    are laid out once, padded and converted to ``y``'s dtype, as ``z[group, row, channel, image,
    column]``: the group's channels and a channel of ones (which meets the bias), the images, the padded
    columns.  As a row holds its channels one after the other, the matrix ``B_i`` of output row ``i``,
    with a row per (kernel row ``r``, channel ``c``) and a column per (image, padded column), is a
    strided view of ``z``, not a copy: its row ``(r, c)`` is ``z[group, i + r, c]``.  One product per
    group and output row, ``(taps x O/g, rows x (C/g + 1)) @ B_i``, gives every tap of a kernel row at
    once; tap ``t``'s product is read ``d t`` columns further on (``d``: the dilation along a row) and the
    taps are summed, the last one straight into ``y``.  The laid-out rows, the products and their sums
    stay within the workspace (:data:`COLUMN_BYTES`).
    """
    n, _, h, w = x.shape
    o, cg, kh, kw = kernel.shape
    og, cg1 = o // groups, cg + 1
    ho, wo = y.shape[2:]
    (top, _), (left, _) = pads
    images, chunk, rows, d = plan
    shift = (kw - 1) * d  # columns from the first tap to the last
    wp = wo + shift
    # the kernel per group as (tap of a row, filter) x (kernel row, channel), the bias with tap 0 of row 0
    a = np.zeros((groups, kw, og, kh, cg1), dtype=y.dtype)
    a[..., :cg] = kernel.reshape(groups, og, cg, kh, kw).transpose(0, 4, 1, 3, 2)
    if bias is not None:
        a[:, 0, :, 0, cg] = bias.reshape(groups, og)
    a = a.reshape(groups, 1, kw * og, kh * cg1)
    src = x.reshape(n, groups, cg, h, w).transpose(1, 3, 2, 0, 4)  # (group, row, channel, image, column)
    out = _view(y, (n, groups, og, ho, wo)).transpose(1, 3, 2, 0, 4)  # (group, row, filter, image, column)
    sizes = (groups * (chunk + kh - 1) * cg1 * images * wp, groups * rows * kw * og * images * wp, groups * rows * og * images * wp)
    with _workspace(y.dtype, *sizes) as (laid, products, sums):
        for n0 in range(0, n, images):
            nb = min(images, n - n0)
            cols = nb * wp
            z = laid[: groups * (chunk + kh - 1) * cg1 * cols].reshape(groups, chunk + kh - 1, cg1, nb, wp)
            z[:, :, :cg, :, :left] = 0
            z[:, :, :cg, :, left + w :] = 0
            z[:, :, cg] = 1
            for c0 in range(0, ho, chunk):
                depth = min(chunk, ho - c0) + kh - 1  # padded rows laid out for this chunk
                lo = c0 - top  # the input row of the first of them
                first, end = min(max(lo, 0), lo + depth), max(min(lo + depth, h), lo)
                z[:, : first - lo, :cg] = 0
                z[:, max(first, end) - lo : depth, :cg] = 0
                if end > first:
                    z[:, first - lo : end - lo, :cg, :, left : left + w] = src[:, first:end, :, n0 : n0 + nb]
                for q0 in range(c0, c0 + depth - kh + 1, rows):
                    r = min(rows, c0 + depth - kh + 1 - q0)
                    view = as_strided(z[:, q0 - c0, 0], (groups, r, kh * cg1, cols), (z.strides[0], z.strides[1], z.strides[2], z.itemsize), writeable=False)
                    prod = products[: groups * r * kw * og * cols].reshape(groups, r, kw, og * cols)
                    np.matmul(a, view, out=prod.reshape(groups, r, kw * og, cols))
                    grid = (groups, r, og, nb, wp)
                    last = prod[:, :, kw - 1].reshape(grid)[..., shift : shift + wo]
                    target = out[:, q0 : q0 + r, :, n0 : n0 + nb]
                    if kw == 1:
                        target[...] = last
                        continue
                    if kw == 2:
                        head = prod[:, :, 0]
                    else:  # the taps but the last summed flat: what crosses a row's end lands on columns never read
                        span = og * cols - shift
                        head = sums[: groups * r * og * cols].reshape(groups, r, og * cols)
                        np.add(prod[:, :, 0, :span], prod[:, :, 1, d : d + span], out=head[:, :, :span])
                        for t in range(2, kw - 1):
                            head[:, :, :span] += prod[:, :, t, t * d : t * d + span]
                    np.add(head.reshape(grid)[..., :wo], last, out=target)


def _im2col_gemm(grid: _Grid, kernel: np.ndarray, bias: np.ndarray | None, y: np.ndarray, groups: int) -> None:
    """``y = W @ columns + b`` per block of images and positions; the columns are copied tap by tap.

    Per group, the column matrix has a row per (input channel, tap), plus a row of ones that meets
    the bias as ``W``'s last column, and a column per (image, position) of the block: one matrix
    product per group and block (few, large BLAS calls: each call waits for its slowest thread),
    or one per image when that is large (:data:`GEMM_PER_IMAGE`) and can write into ``y`` directly.
    """
    n, c = grid.src.shape[:2]
    o, cg = kernel.shape[:2]
    og = o // groups
    taps = len(grid.starts)
    rows = cg * taps
    w = kernel.reshape(groups, og, rows)
    # the bias as W's last column (a row of ones in the columns) when W is copied anyway (to y's dtype) or is
    # small against the output; else added to y at the end: a big kernel's copy costs more than a pass over y
    fused = bias is not None and (w.dtype != y.dtype or rows < n * math.prod(y.shape[2:]))
    if fused:
        w = np.concatenate([w, bias.reshape(groups, og, 1)], axis=2, dtype=y.dtype)
    else:
        w = w.astype(y.dtype, copy=False)
    inner = w.shape[2]
    size = math.prod(grid.shape)
    block, most = _blocks(n, size, groups * (inner + og), y.itemsize)
    spatial = range(3, 3 + len(grid.shape))  # the box's axes after (image, group, channel)
    boxed = grid.flat is not None and most < size  # results of every box gathered, then cropped
    if boxed:
        canvas = np.empty((groups, og, block, size), dtype=y.dtype)
    with _workspace(y.dtype, groups * inner * block * most, groups * og * block * most) as (columns, products):
        for b0 in range(0, n, block):
            images = slice(b0, min(b0 + block, n))
            nb = images.stop - b0
            for p0, box in _boxes(grid.shape, most):
                shape = tuple(hi - lo for lo, hi in box)
                count = math.prod(shape)
                buf = columns[: groups * inner * nb * count].reshape(groups, inner, nb, count)
                for tap in range(taps):
                    rows_of_tap = _view(buf[:, tap:rows:taps], (groups, cg, nb, *shape))
                    window = grid.window(images, slice(None), tap, box).reshape(nb, groups, cg, *shape)
                    rows_of_tap[...] = window.transpose(1, 2, 0, *spatial)
                if fused:
                    buf[:, rows] = 1
                if grid.flat is None and og * count >= GEMM_PER_IMAGE:
                    # big enough per image: a product per image straight into y (no copy of the results)
                    for b, dest in enumerate(_view(y[images], (nb, groups, og, size))):
                        np.matmul(w, buf[:, :, b], out=dest[..., p0 : p0 + count])
                    continue
                result = products[: groups * og * nb * count].reshape(groups, og, nb * count)
                np.matmul(w, buf.reshape(groups, inner, nb * count), out=result)
                result = result.reshape(groups, og, nb, count)
                if grid.flat is None:
                    _view(y[images], (nb, groups, og, size))[..., p0 : p0 + count] = result.transpose(2, 0, 1, 3)
                elif not boxed:
                    grid.crop(result.transpose(2, 0, 1, 3), _view(y[images], (nb, groups, og, *grid.out)))
                else:
                    canvas[:, :, :nb, p0 : p0 + count] = result
            if boxed:
                grid.crop(canvas[:, :, :nb].transpose(2, 0, 1, 3), _view(y[images], (nb, groups, og, *grid.out)))
    if bias is not None and not fused:
        y += bias.astype(y.dtype, copy=False).reshape((o,) + (1,) * len(grid.out))


def _depthwise(grid: _Grid, kernel: np.ndarray, bias: np.ndarray | None, y: np.ndarray) -> None:
    """One input channel per group: ``y[n, c, j] = b + sum_k W[c, j, k] * x[n, c, window k]``, tap by tap on the grid.

    Per block of images, channels and positions: a product and a sum per tap over contiguous (flat
    grid) or strided views.
    """
    n, c = grid.src.shape[:2]
    o = kernel.shape[0]
    m = o // c
    w = kernel.reshape(c, m, -1)
    size = math.prod(grid.shape)
    channels = max(1, min(c, DEPTHWISE_BLOCK // (m * size)))
    block = max(1, min(n, DEPTHWISE_BLOCK // (m * size * channels)))
    most = max(1, DEPTHWISE_BLOCK // (m * channels * block))
    tmp = np.empty(block * channels * m * min(size, most), dtype=y.dtype)
    if grid.flat is None:
        dest = y.reshape(n, c, m, size)
    else:
        canvas = np.empty((block, channels, m, size), dtype=y.dtype)
    lift = (slice(None), slice(None), None)  # (n, c, *t) -> (n, c, 1, *t)
    for b0 in range(0, n, block):
        images = slice(b0, min(b0 + block, n))
        nb = images.stop - b0
        for c0 in range(0, c, channels):
            chans = slice(c0, min(c0 + channels, c))
            cb = chans.stop - c0
            target = dest[images, chans] if grid.flat is None else canvas[:nb, :cb]
            for p0, box in _boxes(grid.shape, most):
                shape = tuple(hi - lo for lo, hi in box)
                count = math.prod(shape)
                acc = _view(target[..., p0 : p0 + count], (nb, cb, m, *shape))
                part = tmp[: nb * cb * m * count].reshape(nb, cb, m, *shape)
                for tap in range(len(grid.starts)):
                    wt = w[chans, :, tap].reshape(cb, m, *(1,) * len(shape))
                    np.multiply(grid.window(images, chans, tap, box)[lift], wt, out=acc if tap == 0 else part)
                    if tap:
                        acc += part
                if bias is not None:
                    acc += bias.reshape(c, m, *(1,) * len(shape))[chans]
            if grid.flat is not None:
                grid.crop(canvas[:nb, :cb], _view(y[images], (nb, c, m, *grid.out))[:, chans])


def _transpose_forward(t: ConvTranspose, x: Any, dtype: Any) -> np.ndarray:
    """Scatter every kernel tap: ``y[.., s t + d k - p_b] += x[.., t] * W[.., k]``.

    Per block of images and input positions: one matrix product per group gives every tap's
    contribution (``W^T @ x``, a column per (image, position)), then a strided add per tap onto the
    block's full output, which the pads crop.
    """
    x = np.asarray(x)
    rank = t.spatial_rank
    if x.ndim != 2 + rank or x.shape[1] != t.in_channels:
        raise fail(
            ShapeError,
            "Input does not fit the transposed convolution",
            f"shape (N, {t.in_channels}, {_AXES[rank]}) (channels first)",
            f"shape {tuple(x.shape)}",
        )
    n, c, *size = x.shape
    pads = t.pads(tuple(size))
    full = [s * (m - 1) + r + a for m, s, r, a in zip(size, t.stride, t.receptive_field, t.output_padding)]
    check_size((n, t.out_channels), int(np.prod(full, dtype=np.int64)))
    g, o = t.groups, t.out_channels
    og, cg = o // g, c // g
    grown = [f + max(-e, 0) for f, (_, e) in zip(full, pads)]  # a negative end pad appends positions no tap reaches
    crop = tuple(slice(b, m - max(e, 0)) for (b, e), m in zip(pads, grown))
    positions = math.prod(size)
    taps = list(itertools.product(*(range(k) for k in t.kernel_shape)))
    rows = og * len(taps)  # rows of W^T per group: (output channel, tap)
    xg = x.astype(dtype, copy=False).reshape(n, g, cg, positions)
    w = t.kernel.astype(dtype, copy=False).reshape(g, cg, rows).transpose(0, 2, 1)
    y = np.empty((n, o, *(m - b - max(e, 0) for m, (b, e) in zip(grown, pads))), dtype=xg.dtype)
    block, most = _blocks(n, positions, g * (cg + rows), y.itemsize)
    direct = all(b == e == 0 for b, e in pads)
    if not direct:
        canvas = np.empty((block, o, *grown), dtype=y.dtype)
    bias = None if t.bias is None else t.bias.astype(dtype, copy=False).reshape((o,) + (1,) * rank)
    with _workspace(y.dtype, g * cg * block * most, g * rows * block * most) as (inputs, products):
        for b0 in range(0, n, block):
            images = slice(b0, min(b0 + block, n))
            nb = images.stop - b0
            full_out = y[images] if direct else canvas[:nb]
            full_out[...] = 0
            scatter = _view(full_out, (nb, g, og, *grown))
            for p0, box in _boxes(size, most):
                shape = tuple(hi - lo for lo, hi in box)
                count = math.prod(shape)
                xb = inputs[: g * cg * nb * count].reshape(g, cg, nb, count)
                xb[...] = xg[images, :, :, p0 : p0 + count].transpose(1, 2, 0, 3)
                parts = products[: g * rows * nb * count].reshape(g, rows, nb * count)
                np.matmul(w, xb.reshape(g, cg, nb * count), out=parts)
                parts = np.moveaxis(parts.reshape(g, og, *t.kernel_shape, nb, *shape), 2 + rank, 0)  # (nb, g, og, *k, *box)
                for tap in taps:
                    where = tuple(
                        slice(d * k + s * lo, d * k + s * (hi - 1) + 1, s) for d, k, s, (lo, hi) in zip(t.dilation, tap, t.stride, box)
                    )
                    scatter[(slice(None),) * 3 + where] += parts[(slice(None),) * 3 + tap]
            if not direct:
                y[images] = full_out[(slice(None), slice(None)) + crop]
            if bias is not None:
                y[images] += bias
    return activations.apply(t.activation, y)


def _chain_forward(chain: Chain, x: Any, dtype: Any) -> np.ndarray:
    for layer in chain.layers:
        x = forward(layer, x, dtype=dtype)
    return x


# -- the layers around the convolutions (layoutconv.layers); data stays channels first ---------------


def _channels_last(x: np.ndarray) -> np.ndarray:
    """``(N, C, *spatial)`` viewed as ``(N, *spatial, C)`` (a 2-d ``(N, C)`` is left alone)."""
    return np.moveaxis(x, 1, -1) if x.ndim > 2 else x


def _channels_first(x: np.ndarray) -> np.ndarray:
    """``(N, *spatial, C)`` viewed as ``(N, C, *spatial)`` (a 2-d ``(N, C)`` is left alone)."""
    return np.moveaxis(x, -1, 1) if x.ndim > 2 else x


def _float_input(record: Any, x: Any, dtype: Any, min_ndim: int = 2) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < min_ndim or not np.issubdtype(x.dtype, np.number):
        raise fail(
            ShapeError,
            f"Input does not fit the {type(record).__name__} layer",
            f"a numeric array with at least {min_ndim} axes, (N, C, ...) channels first",
            f"shape {tuple(x.shape)}, dtype {x.dtype}",
        )
    return x.astype(dtype, copy=False)


def _channels(record: Any, x: np.ndarray, expected: int) -> None:
    if x.shape[1] != expected:
        raise fail(
            ShapeError,
            f"Input does not fit the {type(record).__name__} layer",
            f"{expected} channels on axis 1 (channels first: (N, C, ...))",
            f"shape {tuple(x.shape)}",
            "A channels-last array needs np.moveaxis(x, -1, 1) first.",
        )


def _dense_forward(dense: layers.Dense, x: Any, dtype: Any) -> np.ndarray:
    x = _float_input(dense, x, dtype)
    _channels(dense, x, dense.in_channels)
    kernel = dense.kernel.astype(dtype, copy=False)
    if x.ndim == 2:  # W x per sample: BLAS streams a big kernel once (x @ W.T first repacks it: 4x slower at 2 samples)
        y = np.ascontiguousarray((kernel @ x.T).T)
    else:
        y = _channels_first(_channels_last(x) @ kernel.T)
    if dense.bias is not None:
        y = y + dense.bias.astype(dtype, copy=False).reshape((1, -1) + (1,) * (x.ndim - 2))
    return activations.apply(dense.activation, y)


def _batch_norm_forward(bn: layers.BatchNorm, x: Any, dtype: Any, owned: bool = False) -> np.ndarray:
    given, x = x, _float_input(bn, x, dtype)
    _channels(bn, x, bn.in_channels)
    # y = (x - mean) / sqrt(var + eps) * scale + offset, as one multiply and one add per element (the
    # frameworks fold it the same way): a = scale / sqrt(var + eps), b = offset - mean * a.
    shape = (1, -1) + (1,) * (x.ndim - 2)
    a = 1 / np.sqrt(bn.variance.astype(dtype, copy=False) + np.dtype(dtype).type(bn.epsilon))
    if bn.scale is not None:
        a = a * bn.scale.astype(dtype, copy=False)
    b = -bn.mean.astype(dtype, copy=False) * a
    if bn.offset is not None:
        b = b + bn.offset.astype(dtype, copy=False)
    y = np.multiply(x, a.reshape(shape), out=x if _writable(given, x, owned) else None)
    y += b.reshape(shape)
    return y


def _layer_norm_forward(ln: layers.LayerNorm, x: Any, dtype: Any) -> np.ndarray:
    x = _float_input(ln, x, dtype)
    if max(ln.axes) >= x.ndim:
        raise fail(ShapeError, "Input does not fit the LayerNorm layer", f"more than {max(ln.axes)} axes", f"shape {tuple(x.shape)}")
    mean = x.mean(axis=ln.axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=ln.axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + np.dtype(dtype).type(ln.epsilon))
    shape = tuple(x.shape[a] if a in ln.axes else 1 for a in range(1, x.ndim))
    for name in ("scale", "offset"):
        value = getattr(ln, name)
        if value is None:
            continue
        if tuple(x.shape[a] for a in ln.axes) != value.shape:
            raise fail(
                ShapeError, "Input does not fit the LayerNorm layer", f"sizes {value.shape} on axes {ln.axes}", f"shape {tuple(x.shape)}"
            )
        value = value.astype(dtype, copy=False).reshape((1,) + shape)
        y = y * value if name == "scale" else y + value
    return y


def _embedding_forward(emb: layers.Embedding, ids: Any, dtype: Any) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim < 1 or not (np.issubdtype(ids.dtype, np.integer) or (ids.dtype.kind == "f" and np.array_equal(ids, np.round(ids)))):
        raise fail(ShapeError, "Input does not fit the Embedding layer", "integer ids of shape (N, ...)", f"shape {ids.shape}, dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    vocabulary = emb.weights.shape[0]
    bad = (ids < 0) | (ids >= vocabulary)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise fail(ShapeError, "An Embedding id is out of range", f"ids in [0, {vocabulary})", f"{int(ids[where])} at index {where}")
    return _channels_first(emb.weights.astype(dtype, copy=False)[ids])


def _activation_forward(act: layers.Activation, x: Any, dtype: Any, owned: bool = False) -> np.ndarray:
    y = _float_input(act, x, dtype, 1)
    return activations.apply(act.activation, y, overwrite=_writable(x, y, owned))


def _softmax_forward(sm: layers.Softmax, x: Any, dtype: Any) -> np.ndarray:
    x = _float_input(sm, x, dtype)
    if sm.axis >= x.ndim:
        raise fail(ShapeError, "Input does not fit the Softmax layer", f"more than {sm.axis} axes", f"shape {tuple(x.shape)}")
    e = np.exp(x - x.max(axis=sm.axis, keepdims=True))
    return e / e.sum(axis=sm.axis, keepdims=True)


def _scale_forward(layer: layers.Scale, x: Any, dtype: Any) -> np.ndarray:
    x = _float_input(layer, x, dtype, 1)
    return x * np.dtype(dtype).type(layer.scale) + np.dtype(dtype).type(layer.offset)


def _identity_forward(layer: layers.Identity, x: Any, dtype: Any) -> np.ndarray:
    x = np.asarray(x)
    return x.astype(dtype, copy=False) if np.issubdtype(x.dtype, np.floating) else x


def _pool_forward(pool: layers.Pool, x: Any, dtype: Any) -> np.ndarray:
    x = _float_input(pool, x, dtype, 2 + pool.spatial_rank)
    rank = pool.spatial_rank
    if x.ndim != 2 + rank:
        raise fail(ShapeError, "Input does not fit the pooling layer", f"shape (N, C, {_AXES[rank]})", f"shape {tuple(x.shape)}")
    spatial = x.shape[2:]
    pads = pool.pads(spatial)
    if any(n + b + e < k for n, (b, e), k in zip(spatial, pads, pool.pool_size)):
        raise fail(ShapeError, "Input is smaller than the pooling window", f"padded sizes >= {pool.pool_size}", f"shape {tuple(x.shape)} with pads {pads}")
    check_size(x.shape[:2], int(np.prod([n + b + e for n, (b, e) in zip(spatial, pads)], dtype=np.int64)))
    widths = [(0, 0), (0, 0), *pads]
    if pool.kind == "max":
        return _tap_reduce(np.pad(x, widths, constant_values=-np.inf), pool, np.maximum)
    total = _tap_reduce(np.pad(x, widths), pool, np.add)
    if pool.count_include_pad:
        return total / np.prod(pool.pool_size)
    ones = np.pad(np.ones(spatial, dtype=dtype), list(pads)).reshape((1, 1) + tuple(n + b + e for n, (b, e) in zip(spatial, pads)))
    return total / _tap_reduce(ones, pool, np.add)


def _tap_reduce(padded: np.ndarray, pool: layers.Pool, op: Any) -> np.ndarray:
    """``op`` over the pooling window, one strided view of ``padded`` per tap (a reduction over small
    window axes is many times slower in numpy)."""
    out = tuple((m - k) // s + 1 for m, k, s in zip(padded.shape[2:], pool.pool_size, pool.stride))
    result = None
    for tap in itertools.product(*(range(k) for k in pool.pool_size)):
        view = padded[(slice(None), slice(None), *(slice(t, t + s * (m - 1) + 1, s) for t, s, m in zip(tap, pool.stride, out)))]
        if result is None:
            result = view.copy()
        else:
            op(result, view, out=result)
    return result


def _global_pool_forward(pool: layers.GlobalPool, x: Any, dtype: Any) -> np.ndarray:
    x = _float_input(pool, x, dtype, 3)
    reduce = np.max if pool.kind == "max" else np.mean
    return reduce(x, axis=tuple(range(2, x.ndim)), keepdims=pool.keepdims)


def _flatten_forward(flat: layers.Flatten, x: Any, dtype: Any) -> np.ndarray:
    x = _float_input(flat, x, dtype)
    view = _channels_last(x) if flat.order == "channels_last" else x
    return view.reshape(x.shape[0], int(np.prod(x.shape[1:], dtype=np.int64)))  # no -1: a batch of 0 has shapes too


def _reshape_forward(layer: layers.Reshape, x: Any, dtype: Any) -> np.ndarray:
    x = _float_input(layer, x, dtype)
    view = _channels_last(x) if layer.order == "channels_last" else x
    size = int(np.prod(x.shape[1:], dtype=np.int64))
    known = int(np.prod([v for v in layer.shape if v != -1], dtype=np.int64))
    if size % known or (-1 not in layer.shape and size != known):
        raise fail(ShapeError, "Input does not fit the Reshape layer", f"samples that reshape to {layer.shape}", f"shape {tuple(x.shape)} ({size} elements per sample)")
    y = view.reshape((x.shape[0],) + tuple(size // known if v == -1 else v for v in layer.shape))  # no -1: see Flatten
    return _channels_first(y) if layer.order == "channels_last" else y


def _permute_forward(layer: layers.Permute, x: Any, dtype: Any) -> np.ndarray:
    x = _float_input(layer, x, dtype)
    if x.ndim != len(layer.dims) + 1:
        raise fail(ShapeError, "Input does not fit the Permute layer", f"{len(layer.dims)} axes after the batch", f"shape {tuple(x.shape)}")
    if layer.order == "channels_first":
        return x.transpose((0,) + layer.dims)
    return _channels_first(_channels_last(x).transpose((0,) + layer.dims))


def _spatial_pairs(layer: Any, x: np.ndarray, pairs: tuple[tuple[int, int], ...]) -> None:
    if x.ndim != 2 + len(pairs):
        raise fail(
            ShapeError, f"Input does not fit the {type(layer).__name__} layer", f"shape (N, C, {_AXES[len(pairs)]})", f"shape {tuple(x.shape)}"
        )


def _pad_forward(layer: layers.Pad, x: Any, dtype: Any) -> np.ndarray:
    x = _float_input(layer, x, dtype)
    _spatial_pairs(layer, x, layer.pads)
    check_size(x.shape[:2], int(np.prod([n + b + e for n, (b, e) in zip(x.shape[2:], layer.pads)], dtype=np.int64)))
    return np.pad(x, [(0, 0), (0, 0), *layer.pads], constant_values=layer.value)


def _crop_forward(layer: layers.Crop, x: Any, dtype: Any) -> np.ndarray:
    x = _float_input(layer, x, dtype)
    _spatial_pairs(layer, x, layer.crops)
    if any(b + e >= n for n, (b, e) in zip(x.shape[2:], layer.crops)):
        raise fail(ShapeError, "Cropping removes the whole input", f"sizes larger than the crops {layer.crops}", f"shape {tuple(x.shape)}")
    return x[(slice(None), slice(None)) + tuple(slice(b, n - e) for n, (b, e) in zip(x.shape[2:], layer.crops))]


_MERGE: dict[str, Callable[[list[np.ndarray]], np.ndarray]] = {
    "add": lambda xs: sum(xs[1:], xs[0]),
    "subtract": lambda xs: xs[0] - xs[1],
    "multiply": lambda xs: np.prod(np.stack(xs), axis=0),
    "average": lambda xs: sum(xs[1:], xs[0]) / len(xs),
    "maximum": lambda xs: np.maximum.reduce(xs),
    "minimum": lambda xs: np.minimum.reduce(xs),
}


def _merge_forward(merge: layers.Merge, xs: Any, dtype: Any, owned: Any = None) -> np.ndarray:
    given, xs = xs, [_float_input(merge, x, dtype) for x in xs]
    if len(xs) < 2 or (merge.op == "subtract" and len(xs) != 2):
        raise fail(
            ShapeError, f"A {merge.op} merge got the wrong number of inputs", "exactly 2" if merge.op == "subtract" else "2 or more", f"{len(xs)}"
        )
    if merge.op == "concatenate":
        shapes = {x.shape[: merge.axis] + x.shape[merge.axis + 1 :] for x in xs}
        if len(shapes) != 1 or merge.axis >= xs[0].ndim:
            raise fail(ShapeError, "Inputs do not fit the concatenation", f"equal shapes except on axis {merge.axis}", f"shapes {[x.shape for x in xs]}")
        return np.concatenate(xs, axis=merge.axis)
    try:
        shape = np.broadcast_shapes(*(x.shape for x in xs))  # Keras broadcasts (squeeze-and-excite: (N, C, 1, 1) * (N, C, H, W))
    except ValueError:
        shape = None
    if shape is None or any(x.ndim != len(shape) for x in xs) or (merge.op == "subtract" and xs[0].shape != xs[1].shape and False):
        raise fail(ShapeError, f"Inputs do not fit the {merge.op} merge", "inputs of one shape (or shapes that broadcast)", f"shapes {[x.shape for x in xs]}")
    if merge.op == "add":  # sum into an input that may be overwritten, if one has the result's shape
        owned = owned if owned is not None else [False] * len(xs)
        into = next((k for k, (g, x, o) in enumerate(zip(given, xs, owned)) if x.shape == shape and _writable(g, x, o)), None)
        if into is not None:
            acc = xs[into]
            for k, x in enumerate(xs):
                if k != into:
                    acc += x
            return acc
    return _MERGE[merge.op]([np.broadcast_to(x, shape) for x in xs])


_FORWARD: dict[type, Callable[[Any, Any, Any], np.ndarray]] = {
    Conv: _conv_forward,
    ConvTranspose: _transpose_forward,
    Chain: _chain_forward,
    layers.Dense: _dense_forward,
    layers.BatchNorm: _batch_norm_forward,
    layers.LayerNorm: _layer_norm_forward,
    layers.Embedding: _embedding_forward,
    layers.Activation: _activation_forward,
    layers.Softmax: _softmax_forward,
    layers.Scale: _scale_forward,
    layers.Identity: _identity_forward,
    layers.Pool: _pool_forward,
    layers.GlobalPool: _global_pool_forward,
    layers.Flatten: _flatten_forward,
    layers.Reshape: _reshape_forward,
    layers.Permute: _permute_forward,
    layers.Pad: _pad_forward,
    layers.Crop: _crop_forward,
    layers.Merge: _merge_forward,
}

from . import recurrent as _recurrent  # noqa: E402  (recurrent layers: SimpleRNN, LSTM, GRU, Bidirectional)

_FORWARD.update(_recurrent.FORWARD)

#: layers that can write into an input no other node reads again: ``(record, x, dtype, owned)``
_IN_PLACE: dict[type, Callable[[Any, Any, Any, Any], np.ndarray]] = {
    layers.BatchNorm: _batch_norm_forward,
    layers.Activation: _activation_forward,
    layers.Merge: _merge_forward,
}


def conv1d(conv: Conv1D, x: Any, *, dtype: Any = np.float64) -> np.ndarray:
    """Apply a :class:`Conv1D` to ``x`` of shape ``(N, C, L)``; return ``(N, O, L_out)`` (see :func:`forward`).

    >>> import numpy as np
    >>> from layoutconv import Conv1D
    >>> conv = Conv1D(np.array([[[1.0, 2.0]]]), np.array([0.5]))
    >>> conv1d(conv, np.array([[[1.0, 10.0, 100.0]]]))
    array([[[ 21.5, 210.5]]])
    """
    if not isinstance(conv, Conv1D):
        raise fail(ShapeError, "reference.conv1d needs a Conv1D", "a layoutconv.Conv1D (reference.forward takes any rank)", f"{type(conv).__name__}")
    return forward(conv, x, dtype=dtype)
