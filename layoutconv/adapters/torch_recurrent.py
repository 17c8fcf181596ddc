"""PyTorch modules for the recurrent records (:class:`~layoutconv.recurrent.SimpleRNN`, ``LSTM``, ``GRU``, ``Bidirectional``).

:func:`to_native` returns a module that takes a batch-first input ``(N, T, F)``
and returns **one** tensor: ``(N, T, C)`` with ``return_sequences``, else the
last step ``(N, C)`` (``C`` = units, or the merged units of both directions).
Inside it is ``torch.nn.RNN/LSTM/GRU(batch_first=True)`` whenever that module
computes the record exactly, else a :class:`LoopRNN`, an explicit cell loop
written in torch that computes exactly what the record says:

==========================================================  ==============================================
record                                                      inner module
==========================================================  ==============================================
SimpleRNN, activation tanh or relu                          ``nn.RNN(nonlinearity=...)``
LSTM, activation tanh, recurrent_activation sigmoid         ``nn.LSTM``
GRU, tanh, sigmoid, ``reset_after=True``                    ``nn.GRU``
any other activation (``hard_sigmoid_keras2`` ...),         :class:`LoopRNN` (no ``torch.nn`` module
GRU ``reset_after=False``                                   computes these)
``go_backwards``                                            the same, on ``torch.flip(x, (1,))``
Bidirectional, both directions ``nn``-exact, same kind,     one ``nn.LSTM(bidirectional=True)`` (...)
units and activations, forward not ``go_backwards``
any other Bidirectional                                     one :class:`RecurrentLayer` per direction
==========================================================  ==============================================

Parameters keep PyTorch's names (``weight_ih_l0``, ``weight_hh_l0``,
``bias_ih_l0``, ``bias_hh_l0``, ``..._reverse``) in :class:`LoopRNN` too, so
a ``state_dict`` loads into the ``nn`` module of the same shape.  A record
without one of the two biases gets zeros there; the wrapper remembers which
biases the record had (``stored_biases``), so reading it back gives ``None``
again and every round trip is bit-exact.

:func:`from_native` reads these modules, and also plain ``nn.RNN/LSTM/GRU``
(a plain module's first output is the whole sequence, so ``return_sequences=True``;
``bidirectional=True`` gives a :class:`~layoutconv.recurrent.Bidirectional` with
``merge_mode="concat"``).  ``num_layers > 1`` is refused there; :func:`stacked_layers`
gives one record per layer.  ``proj_size > 0`` is refused.

Facts established by experiment (torch 2.13, CPU): ``nn.RNN/LSTM/GRU`` run in
float16, bfloat16, float32 and float64; the backward half of a bidirectional
module's output at step ``t`` belongs to input step ``t`` (its final state is
at step 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import registry
from ..errors import ConfigError, ShapeError, UnsupportedError, fail
from ..recurrent import GRU, LSTM, RECORDS, Bidirectional, Recurrent, SimpleRNN, check_input
from .torch_adapter import TORCH_ACTIVATIONS, _numpy_dtype, _torch_dtype, _view, to_numpy, to_tensor

NAME = "torch"

#: record kind -> torch.nn class
NN_MODULES: dict[str, type] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
_KINDS = {v: k for k, v in NN_MODULES.items()}
_ACCEPTED = (
    "torch.nn.RNN/LSTM/GRU (one or more layers, either direction), or a module made by "
    "layoutconv's to_torch for a recurrent record (RecurrentLayer, BidirectionalLayer, LoopRNN)"
)


def _nn_exact(layer: Recurrent) -> bool:
    """True when ``torch.nn.RNN/LSTM/GRU`` computes this record's cell exactly."""
    if isinstance(layer, SimpleRNN):
        return layer.activation in ("tanh", "relu")
    exact = layer.activation == "tanh" and layer.recurrent_activation == "sigmoid"  # type: ignore[attr-defined]
    return exact and (not isinstance(layer, GRU) or layer.reset_after)


def _why_loop(layer: Recurrent) -> str:
    if isinstance(layer, GRU) and not layer.reset_after:
        return "reset_after=False (the reset gate before the recurrent product) has no torch.nn.GRU equivalent"
    return f"torch.nn.{NN_MODULES[layer.KIND].__name__} has no option for these activations"


# -- modules -------------------------------------------------------------------
class LoopRNN(nn.Module):
    """An explicit recurrent cell loop over the steps, for cells ``torch.nn`` cannot compute.

    Same parameter names, shapes and gate order as ``nn.RNN/LSTM/GRU`` (one layer,
    one direction), same call: ``output, h_n = module(x)`` with ``x`` batch-first
    ``(N, T, F)``, ``output`` ``(N, T, H)`` and ``h_n`` ``(1, N, H)``.  The formulas
    are those of :mod:`layoutconv.recurrent` (docs/layouts.md, "Recurrent layers"):
    any activation of :mod:`layoutconv.activations`, and GRU ``reset_after`` either way.
    """

    def __init__(
        self,
        kind: str,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        activation: str = "tanh",
        recurrent_activation: str | None = "sigmoid",
        reset_after: bool = True,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        if kind not in NN_MODULES:
            raise fail(ConfigError, "Unknown recurrent kind", f"one of {sorted(NN_MODULES)}", f"{kind!r}")
        gates = {"rnn": 1, "lstm": 4, "gru": 3}[kind]
        self.kind, self.input_size, self.hidden_size = kind, int(input_size), int(hidden_size)
        self.activation = activation
        self.recurrent_activation = None if kind == "rnn" else recurrent_activation
        self.reset_after = bool(reset_after) if kind == "gru" else None
        self.batch_first = True
        self.weight_ih_l0 = nn.Parameter(torch.zeros(gates * hidden_size, input_size, dtype=dtype))
        self.weight_hh_l0 = nn.Parameter(torch.zeros(gates * hidden_size, hidden_size, dtype=dtype))
        if bias:
            self.bias_ih_l0 = nn.Parameter(torch.zeros(gates * hidden_size, dtype=dtype))
            self.bias_hh_l0 = nn.Parameter(torch.zeros(gates * hidden_size, dtype=dtype))
        else:
            self.register_parameter("bias_ih_l0", None)
            self.register_parameter("bias_hh_l0", None)

    @property
    def bias(self) -> bool:
        return self.bias_ih_l0 is not None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        act = TORCH_ACTIVATIONS[self.activation]
        gate = TORCH_ACTIVATIONS[self.recurrent_activation] if self.recurrent_activation else None
        u, rb = self.weight_hh_l0, self.bias_hh_l0
        xw = F.linear(x, self.weight_ih_l0, self.bias_ih_l0)  # every step's input part: (N, T, G*H)
        h = x.new_zeros(x.shape[0], self.hidden_size)
        c = torch.zeros_like(h)
        outputs = []
        for t in range(x.shape[1]):
            if self.kind == "rnn":
                h = act(xw[:, t] + F.linear(h, u, rb))
            elif self.kind == "lstm":
                i, f, g, o = (xw[:, t] + F.linear(h, u, rb)).chunk(4, dim=1)
                c = gate(f) * c + gate(i) * act(g)
                h = gate(o) * act(c)
            else:
                xr, xz, xn = xw[:, t].chunk(3, dim=1)
                if self.reset_after:
                    hr, hz, hn = F.linear(h, u, rb).chunk(3, dim=1)
                    r, z = gate(xr + hr), gate(xz + hz)
                    n = act(xn + r * hn)
                else:
                    u_r, u_z, u_n = u.chunk(3, dim=0)
                    rb_r, rb_z, rb_n = rb.chunk(3) if rb is not None else (None, None, None)
                    r, z = gate(xr + F.linear(h, u_r, rb_r)), gate(xz + F.linear(h, u_z, rb_z))
                    n = act(xn + F.linear(r * h, u_n, rb_n))
                h = (1 - z) * n + z * h
            outputs.append(h)
        return torch.stack(outputs, dim=1), h.unsqueeze(0)

    def extra_repr(self) -> str:
        text = f"{self.kind}, {self.input_size}, {self.hidden_size}, bias={self.bias}, activation={self.activation!r}"
        if self.recurrent_activation:
            text += f", recurrent_activation={self.recurrent_activation!r}"
        if self.kind == "gru":
            text += f", reset_after={self.reset_after}"
        return text


def _merge(mode: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if mode == "concat":
        return torch.cat([a, b], dim=-1)
    if mode == "sum":
        return a + b
    if mode == "mul":
        return a * b
    return (a + b) / 2


class RecurrentLayer(nn.Module):
    """One recurrent record as a module: batch-first ``(N, T, F)`` in, one tensor out (Keras' conventions).

    ``rnn`` is ``nn.RNN/LSTM/GRU(batch_first=True)`` or a :class:`LoopRNN`.  With
    ``go_backwards`` the input is read from its last step and the outputs stay in
    that order; without ``return_sequences`` only the last output ``(N, H)`` is returned.
    ``stored_biases`` says which of ``(bias, recurrent_bias)`` the record had
    (a missing one is zeros in ``rnn``).
    """

    def __init__(self, rnn: nn.Module, *, return_sequences: bool, go_backwards: bool, stored_biases: tuple[bool, bool] = (True, True)) -> None:
        super().__init__()
        self.rnn = rnn
        self.return_sequences = bool(return_sequences)
        self.go_backwards = bool(go_backwards)
        self.stored_biases = tuple(bool(b) for b in stored_biases)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.go_backwards:
            x = torch.flip(x, (1,))
        y = self.rnn(x)[0]
        return y if self.return_sequences else y[:, -1]

    def extra_repr(self) -> str:
        return f"return_sequences={self.return_sequences}, go_backwards={self.go_backwards}, stored_biases={self.stored_biases}"


class BidirectionalLayer(nn.Module):
    """A :class:`~layoutconv.recurrent.Bidirectional` record as a module: ``(N, T, F)`` in, one merged tensor out.

    Either one bidirectional ``rnn`` (``nn.LSTM(bidirectional=True)``, ...) or two
    :class:`RecurrentLayer` (``forward_layer``, ``backward_layer``); the backward
    outputs are put back in input order before they are merged (``merge_mode``).
    """

    def __init__(
        self,
        merge_mode: str,
        return_sequences: bool,
        *,
        rnn: nn.Module | None = None,
        forward_layer: RecurrentLayer | None = None,
        backward_layer: RecurrentLayer | None = None,
        stored_biases: tuple[tuple[bool, bool], tuple[bool, bool]] = ((True, True), (True, True)),
    ) -> None:
        super().__init__()
        if (rnn is None) == (forward_layer is None or backward_layer is None):
            raise fail(
                ConfigError,
                "BidirectionalLayer needs either one bidirectional rnn or two layers",
                "rnn=nn.LSTM(..., bidirectional=True) or forward_layer= and backward_layer=",
                f"rnn={type(rnn).__name__}, forward_layer={type(forward_layer).__name__}, backward_layer={type(backward_layer).__name__}",
            )
        self.merge_mode = merge_mode
        self.return_sequences = bool(return_sequences)
        if rnn is not None:
            self.rnn = rnn
            self.stored_biases = tuple(tuple(bool(v) for v in pair) for pair in stored_biases)
        else:
            self.forward_layer = forward_layer
            self.backward_layer = backward_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if "rnn" in self._modules:
            y = self.rnn(x)[0]
            units = self.rnn.hidden_size
            a, b = y[..., :units], y[..., units:]
            if not self.return_sequences:  # the backward direction ends at step 0
                a, b = a[:, -1], b[:, 0]
            return _merge(self.merge_mode, a, b)
        a, b = self.forward_layer(x), self.backward_layer(x)
        if self.return_sequences:
            b = torch.flip(b, (1,))
        return _merge(self.merge_mode, a, b)

    def extra_repr(self) -> str:
        return f"merge_mode={self.merge_mode!r}, return_sequences={self.return_sequences}"


# -- writing -------------------------------------------------------------------
def _fill(rnn: nn.Module, layer: Recurrent, suffix: str) -> None:
    dtype = _torch_dtype(layer.dtype, "Kernel")
    zeros = torch.zeros(layer.kernel.shape[0], dtype=dtype)
    with torch.no_grad():  # copied straight from the record's arrays: no intermediate tensor
        getattr(rnn, f"weight_ih_l0{suffix}").copy_(_view(layer.kernel))
        getattr(rnn, f"weight_hh_l0{suffix}").copy_(_view(layer.recurrent_kernel))
        if rnn.bias:
            getattr(rnn, f"bias_ih_l0{suffix}").copy_(zeros if layer.bias is None else _view(layer.bias))
            getattr(rnn, f"bias_hh_l0{suffix}").copy_(zeros if layer.recurrent_bias is None else _view(layer.recurrent_bias))


def _has_bias(layer: Recurrent) -> bool:
    return layer.bias is not None or layer.recurrent_bias is not None


def _stored(layer: Recurrent) -> tuple[bool, bool]:
    return (layer.bias is not None, layer.recurrent_bias is not None)


def _inner(layer: Recurrent, *, bidirectional: bool = False, bias: bool | None = None) -> nn.Module:
    dtype = _torch_dtype(layer.dtype, "Kernel")
    bias = _has_bias(layer) if bias is None else bias
    if _nn_exact(layer):
        options: dict[str, Any] = dict(batch_first=True, bias=bias, bidirectional=bidirectional, dtype=dtype)
        if isinstance(layer, SimpleRNN):
            options["nonlinearity"] = layer.activation
        return NN_MODULES[layer.KIND](layer.input_size, layer.units, **options)
    return LoopRNN(
        layer.KIND, layer.input_size, layer.units, bias,
        activation=layer.activation, recurrent_activation=getattr(layer, "recurrent_activation", None),
        reset_after=getattr(layer, "reset_after", True), dtype=dtype,
    )  # fmt: skip


def _layer_module(layer: Recurrent) -> RecurrentLayer:
    rnn = _inner(layer)
    _fill(rnn, layer, "")
    return RecurrentLayer(rnn, return_sequences=layer.return_sequences, go_backwards=layer.go_backwards, stored_biases=_stored(layer))


def _one_module(record: Bidirectional) -> bool:
    """True when one ``nn`` module with ``bidirectional=True`` computes both directions exactly."""
    fw, bw = record.forward, record.backward
    same = type(fw) is type(bw) and fw.units == bw.units and fw.FIELDS == bw.FIELDS
    same = same and all(getattr(fw, f) == getattr(bw, f) for f in fw.FIELDS if f != "go_backwards")
    return same and _nn_exact(fw) and not fw.go_backwards


def to_native(record: Recurrent | Bidirectional) -> nn.Module:
    """A module in eval mode computing ``record`` on batch-first ``(N, T, F)`` input (see the module documentation)."""
    if isinstance(record, Recurrent):
        return _layer_module(record).eval()
    if not isinstance(record, Bidirectional):
        raise fail(ConfigError, "to_native needs a recurrent record", "a SimpleRNN, LSTM, GRU or Bidirectional", f"{type(record).__name__}")
    if _one_module(record):
        fw, bw = record.forward, record.backward
        rnn = _inner(fw, bidirectional=True, bias=_has_bias(fw) or _has_bias(bw))
        _fill(rnn, fw, "")
        _fill(rnn, bw, "_reverse")
        module = BidirectionalLayer(record.merge_mode, record.return_sequences, rnn=rnn, stored_biases=(_stored(fw), _stored(bw)))
    else:
        module = BidirectionalLayer(
            record.merge_mode, record.return_sequences,
            forward_layer=_layer_module(record.forward), backward_layer=_layer_module(record.backward),
        )  # fmt: skip
    return module.eval()


# -- reading -------------------------------------------------------------------
def _unsupported(module: Any, why: str = "") -> Exception:
    return fail(
        UnsupportedError,
        "Not a recurrent module layoutconv can read" + (f": {why}" if why else ""),
        _ACCEPTED + " (subclasses must not override forward)",
        f"{type(module).__module__}.{type(module).__qualname__}",
    )


def _base_of(module: Any) -> type | None:
    return next((base for base in type(module).__mro__ if base in _KINDS), None)


def _plain(module: Any) -> bool:
    """An ``nn.RNN/LSTM/GRU`` or a subclass that computes the same (does not override ``forward``)."""
    base = _base_of(module)
    return base is not None and type(module).forward is base.forward


def reads(module: Any) -> bool:
    """True for the modules :func:`from_native` reads (the torch adapter's ``from_native`` and ``run`` hand them here)."""
    return isinstance(module, (nn.RNNBase, LoopRNN, RecurrentLayer, BidirectionalLayer))


def _array(module: nn.Module, name: str) -> np.ndarray | None:
    value = getattr(module, name, None)
    return None if value is None else to_numpy(value)


def _read_direction(rnn: nn.Module, layer: int, suffix: str, stored: tuple[bool, bool], **fields: Any) -> Recurrent:
    if isinstance(rnn, LoopRNN):
        kind = rnn.kind
        fields.setdefault("activation", rnn.activation)
        if kind != "rnn":
            fields.setdefault("recurrent_activation", rnn.recurrent_activation)
        if kind == "gru":
            fields.setdefault("reset_after", rnn.reset_after)
    else:
        kind = _KINDS[_base_of(rnn)]
        if kind == "rnn":
            fields.setdefault("activation", rnn.nonlinearity)
    key = f"l{layer}{suffix}"
    kernel, recurrent = _array(rnn, f"weight_ih_{key}"), _array(rnn, f"weight_hh_{key}")
    bias, recurrent_bias = _array(rnn, f"bias_ih_{key}"), _array(rnn, f"bias_hh_{key}")
    # a bias the record did not have was written as zeros: read it back as None (only if still all zeros)
    if bias is not None and not stored[0] and not bias.any():
        bias = None
    if recurrent_bias is not None and not stored[1] and not recurrent_bias.any():
        recurrent_bias = None
    return RECORDS[kind](kernel, recurrent, bias, recurrent_bias, **fields)


def _check_nn(rnn: nn.Module) -> None:
    if isinstance(rnn, LoopRNN):
        return
    if not _plain(rnn):
        raise _unsupported(rnn)
    if getattr(rnn, "proj_size", 0):
        raise fail(
            UnsupportedError,
            f"nn.LSTM with proj_size={rnn.proj_size} projects its hidden state",
            "proj_size=0 (Keras and ONNX have no projected LSTM)",
            f"proj_size={rnn.proj_size}",
        )
    if nn.parameter.is_lazy(rnn.weight_ih_l0):  # pragma: no cover - torch has no lazy RNN today
        raise fail(ConfigError, "Recurrent module has no weights yet", "an initialised module", "lazy weights")


def _read_layer(rnn: nn.Module, layer: int) -> Recurrent | Bidirectional:
    """Layer ``layer`` of a plain ``nn.RNN/LSTM/GRU`` or a :class:`LoopRNN`: its output is the whole sequence."""
    fw = _read_direction(rnn, layer, "", (True, True), return_sequences=True)
    if not getattr(rnn, "bidirectional", False):
        return fw
    bw = _read_direction(rnn, layer, "_reverse", (True, True), return_sequences=True, go_backwards=True)
    return Bidirectional(fw, bw, "concat")


def stacked_layers(module: Any) -> list[Recurrent | Bidirectional]:
    """Every layer of a plain ``nn.RNN/LSTM/GRU`` (``num_layers >= 1``) as a record, first layer first.

    Each returns its whole sequence, which is the next one's input (PyTorch's
    inter-layer ``dropout`` only acts in training).
    """
    if not isinstance(module, (nn.RNNBase, LoopRNN)):
        raise _unsupported(module, "stacked_layers reads a plain nn.RNN/LSTM/GRU")
    _check_nn(module)
    return [_read_layer(module, k) for k in range(int(getattr(module, "num_layers", 1)))]


def from_native(module: Any) -> Recurrent | Bidirectional:
    """A recurrent module as a record (see the module documentation); weights keep their dtype and bytes."""
    if isinstance(module, RecurrentLayer):
        _check_nn(module.rnn)
        if getattr(module.rnn, "bidirectional", False) or getattr(module.rnn, "num_layers", 1) != 1:
            raise _unsupported(module, "a RecurrentLayer holds one layer in one direction")
        return _read_direction(
            module.rnn, 0, "", module.stored_biases, return_sequences=module.return_sequences, go_backwards=module.go_backwards
        )
    if isinstance(module, BidirectionalLayer):
        rs = module.return_sequences
        if "rnn" in module._modules:
            _check_nn(module.rnn)
            if not getattr(module.rnn, "bidirectional", False) or module.rnn.num_layers != 1:
                raise _unsupported(module, "its rnn must be one bidirectional layer")
            fw_stored, bw_stored = module.stored_biases
            fw = _read_direction(module.rnn, 0, "", fw_stored, return_sequences=rs)
            bw = _read_direction(module.rnn, 0, "_reverse", bw_stored, return_sequences=rs, go_backwards=True)
        else:
            fw, bw = from_native(module.forward_layer), from_native(module.backward_layer)
        return Bidirectional(fw, bw, module.merge_mode)
    if isinstance(module, (nn.RNNBase, LoopRNN)):
        _check_nn(module)
        stacked = int(getattr(module, "num_layers", 1))
        if stacked != 1:
            raise fail(
                UnsupportedError,
                f"{type(module).__name__} stacks {stacked} layers; a record describes one",
                "num_layers=1",
                f"num_layers={stacked}",
                "Read every layer with layoutconv.adapters.torch_recurrent.stacked_layers(module) (a list of records, "
                "each returning its whole sequence to the next).",
            )
        return _read_layer(module, 0)
    raise _unsupported(module)


# -- running ---------------------------------------------------------------------
def run(native: Any, x: Any) -> np.ndarray:
    """Apply ``native`` to a canonical ``x`` ``(N, F, T)``; return canonical numpy ``(N, C, T)`` or ``(N, C)``.

    ``x`` is cast to the module's dtype and given to it batch-first (time-first
    for a plain module built with ``batch_first=False``).  A plain
    ``nn.RNN/LSTM/GRU`` returns its whole output sequence.
    """
    if not reads(native):
        raise _unsupported(native)
    record = stacked_layers(native)[0] if isinstance(native, nn.RNNBase) else from_native(native)
    x = check_input(record, x)
    first = next(iter(native.parameters()))
    tensor = to_tensor(np.ascontiguousarray(np.moveaxis(x, 2, 1)).astype(_numpy_dtype(first.dtype, "Module"), copy=False))
    time_first = isinstance(native, nn.RNNBase) and not native.batch_first
    if time_first:
        tensor = tensor.transpose(0, 1)
    try:
        with torch.no_grad():
            y = native(tensor)
    except RuntimeError as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise fail(
            UnsupportedError,
            f"torch {torch.__version__} could not run {type(native).__name__} in {first.dtype}",
            "the module to run on this machine",
            f"{type(exc).__name__}: {first_line}",
        ) from exc
    if isinstance(y, tuple):  # a plain module: (output, state)
        y = y[0]
        if time_first:
            y = y.transpose(0, 1)
    out = to_numpy(y)
    if out.ndim == 3:  # (N, T, C) -> (N, C, T)
        out = np.ascontiguousarray(np.moveaxis(out, 2, 1))
    if out.ndim not in (2, 3):
        raise fail(ShapeError, "The module returned an unexpected shape", "(N, T, C) or (N, C)", f"{tuple(out.shape)}")
    return out


for _kind in (Recurrent, Bidirectional):
    registry.register(_kind, NAME, to_native=to_native, run=run)
