"""Independent per-step oracles for recurrent layers, written from each framework's documented equations.

Nothing here imports layoutconv: every function takes the arrays exactly as the
framework stores them (its own gate order and axis order) and a batch-first
input ``(N, T, F)``, and loops over the batch, the steps and the units one by
one in float64.  The tests compare the reference pass (and every framework)
with these loops.

Sources of the equations: PyTorch's ``nn.RNN``/``nn.LSTM``/``nn.GRU`` docs, the
ONNX operator specification (``RNN``, ``LSTM``, ``GRU``), Keras 3's
``LSTMCell``/``GRUCell``/``SimpleRNNCell`` docstrings and Keras 1's ``step`` methods.
"""

from __future__ import annotations

import math

import numpy as np


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


FUNCTIONS = {
    "tanh": math.tanh,
    "sigmoid": sigmoid,
    "relu": lambda v: max(v, 0.0),
    "linear": lambda v: v,
    "hard_sigmoid_keras2": lambda v: min(max(0.2 * v + 0.5, 0.0), 1.0),
    "hard_sigmoid_keras3": lambda v: min(max(v / 6.0 + 0.5, 0.0), 1.0),
    "softsign": lambda v: v / (1.0 + abs(v)),
}


def _dot(row_weights, vector) -> float:
    return float(sum(float(w) * float(v) for w, v in zip(row_weights, vector)))


def _run(x, go_backwards, step):
    """Loop over batch and steps; ``step(x_t, state) -> (output, state)``; outputs in processing order."""
    x = np.asarray(x, dtype=np.float64)
    out = []
    for n in range(x.shape[0]):
        steps = range(x.shape[1] - 1, -1, -1) if go_backwards else range(x.shape[1])
        state = None
        seq = []
        for t in steps:
            y, state = step(list(x[n, t]), state)
            seq.append(y)
        out.append(seq)
    return np.array(out)  # (N, T, H)


# -- PyTorch: weight_ih (G*H, F), gates (RNN) / i f g o (LSTM) / r z n (GRU) -------------
def torch_rnn(x, w_ih, w_hh, b_ih, b_hh, nonlinearity="tanh", go_backwards=False):
    """h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)"""
    H = w_hh.shape[1]
    act = FUNCTIONS[nonlinearity]

    def step(xt, h):
        h = h or [0.0] * H
        new = [act(_dot(w_ih[j], xt) + b_ih[j] + _dot(w_hh[j], h) + b_hh[j]) for j in range(H)]
        return new, new

    return _run(x, go_backwards, step)


def torch_lstm(x, w_ih, w_hh, b_ih, b_hh, go_backwards=False):
    """i, f, g, o = chunks of W_ih x + b_ih + W_hh h + b_hh; c = f c + i g; h = o tanh(c)"""
    H = w_hh.shape[1]

    def step(xt, state):
        h, c = state or ([0.0] * H, [0.0] * H)
        pre = [_dot(w_ih[j], xt) + b_ih[j] + _dot(w_hh[j], h) + b_hh[j] for j in range(4 * H)]
        i = [sigmoid(v) for v in pre[0:H]]
        f = [sigmoid(v) for v in pre[H : 2 * H]]
        g = [math.tanh(v) for v in pre[2 * H : 3 * H]]
        o = [sigmoid(v) for v in pre[3 * H :]]
        c = [f[j] * c[j] + i[j] * g[j] for j in range(H)]
        h = [o[j] * math.tanh(c[j]) for j in range(H)]
        return h, (h, c)

    return _run(x, go_backwards, step)


def torch_gru(x, w_ih, w_hh, b_ih, b_hh, go_backwards=False):
    """r = s(W_ir x + b_ir + W_hr h + b_hr); z likewise; n = tanh(W_in x + b_in + r (W_hn h + b_hn)); h = (1-z) n + z h"""
    H = w_hh.shape[1]

    def step(xt, h):
        h = h or [0.0] * H
        gi = [_dot(w_ih[j], xt) + b_ih[j] for j in range(3 * H)]
        gh = [_dot(w_hh[j], h) + b_hh[j] for j in range(3 * H)]
        r = [sigmoid(gi[j] + gh[j]) for j in range(H)]
        z = [sigmoid(gi[H + j] + gh[H + j]) for j in range(H)]
        n = [math.tanh(gi[2 * H + j] + r[j] * gh[2 * H + j]) for j in range(H)]
        new = [(1 - z[j]) * n[j] + z[j] * h[j] for j in range(H)]
        return new, new

    return _run(x, go_backwards, step)


# -- Keras 2/3: kernel (F, G*H), recurrent (H, G*H), gates i f c o / z r h ------------------
def _col(matrix, j):
    return [row[j] for row in matrix]


def keras_simple_rnn(x, kernel, recurrent, bias, activation="tanh", go_backwards=False):
    """output = act(x W + b + h U)"""
    H = recurrent.shape[0]
    act = FUNCTIONS[activation]
    b = bias if bias is not None else np.zeros(H)

    def step(xt, h):
        h = h or [0.0] * H
        new = [act(_dot(_col(kernel, j), xt) + b[j] + _dot(_col(recurrent, j), h)) for j in range(H)]
        return new, new

    return _run(x, go_backwards, step)


def keras_lstm(x, kernel, recurrent, bias, activation="tanh", recurrent_activation="sigmoid", go_backwards=False):
    """z = x W + h U + b; i, f, c~, o = split(z); c = f c + i act(c~); h = o act(c)"""
    H = recurrent.shape[0]
    act, gate = FUNCTIONS[activation], FUNCTIONS[recurrent_activation]
    b = bias if bias is not None else np.zeros(4 * H)

    def step(xt, state):
        h, c = state or ([0.0] * H, [0.0] * H)
        z = [_dot(_col(kernel, j), xt) + _dot(_col(recurrent, j), h) + b[j] for j in range(4 * H)]
        i, f = [gate(v) for v in z[:H]], [gate(v) for v in z[H : 2 * H]]
        cc, o = [act(v) for v in z[2 * H : 3 * H]], [gate(v) for v in z[3 * H :]]
        c = [f[j] * c[j] + i[j] * cc[j] for j in range(H)]
        h = [o[j] * act(c[j]) for j in range(H)]
        return h, (h, c)

    return _run(x, go_backwards, step)


def keras_gru(x, kernel, recurrent, bias, reset_after, activation="tanh", recurrent_activation="sigmoid", go_backwards=False):
    """Keras GRUCell: gates z r h; reset_after: hh = act(x W_h + b_h + r (h U_h + b_rh)), else act(x W_h + b_h + (r h) U_h);
    h = z h_prev + (1 - z) hh.  ``bias`` is (3H,) or, with reset_after, (2, 3H)."""
    H = recurrent.shape[0]
    act, gate = FUNCTIONS[activation], FUNCTIONS[recurrent_activation]
    if bias is None:
        b_in, b_rec = np.zeros(3 * H), np.zeros(3 * H)
    elif np.ndim(bias) == 2:
        b_in, b_rec = bias[0], bias[1]
    else:
        b_in, b_rec = bias, np.zeros(3 * H)

    def step(xt, h):
        h = h or [0.0] * H
        xz = [_dot(_col(kernel, j), xt) + b_in[j] for j in range(3 * H)]
        if reset_after:
            rec = [_dot(_col(recurrent, j), h) + b_rec[j] for j in range(3 * H)]
            z = [gate(xz[j] + rec[j]) for j in range(H)]
            r = [gate(xz[H + j] + rec[H + j]) for j in range(H)]
            hh = [act(xz[2 * H + j] + r[j] * rec[2 * H + j]) for j in range(H)]
        else:
            z = [gate(xz[j] + _dot(_col(recurrent, j), h)) for j in range(H)]
            r = [gate(xz[H + j] + _dot(_col(recurrent, H + j), h)) for j in range(H)]
            rh = [r[j] * h[j] for j in range(H)]
            hh = [act(xz[2 * H + j] + _dot(_col(recurrent, 2 * H + j), rh)) for j in range(H)]
        new = [z[j] * h[j] + (1 - z[j]) * hh[j] for j in range(H)]
        return new, new

    return _run(x, go_backwards, step)


# -- Keras 1: one (W, U, b) per gate ---------------------------------------------------
def keras1_lstm(x, gates, inner_activation="hard_sigmoid_keras2", activation="tanh", go_backwards=False):
    """``gates``: {"i": (W_i, U_i, b_i), "f": ..., "c": ..., "o": ...} (Keras 1 LSTM.step, consume_less='mem')."""
    H = gates["i"][1].shape[0]
    act, inner = FUNCTIONS[activation], FUNCTIONS[inner_activation]

    def part(name, xt, h, j):
        W, U, b = gates[name]
        return _dot(_col(W, j), xt) + b[j] + _dot(_col(U, j), h)

    def step(xt, state):
        h, c = state or ([0.0] * H, [0.0] * H)
        i = [inner(part("i", xt, h, j)) for j in range(H)]
        f = [inner(part("f", xt, h, j)) for j in range(H)]
        c = [f[j] * c[j] + i[j] * act(part("c", xt, h, j)) for j in range(H)]
        o = [inner(part("o", xt, h, j)) for j in range(H)]
        h = [o[j] * act(c[j]) for j in range(H)]
        return h, (h, c)

    return _run(x, go_backwards, step)


def keras1_gru(x, gates, inner_activation="hard_sigmoid_keras2", activation="tanh", go_backwards=False):
    """``gates``: {"z": (W_z, U_z, b_z), "r": ..., "h": ...} (Keras 1 GRU.step): hh = act(x W_h + b_h + (r h) U_h)."""
    H = gates["z"][1].shape[0]
    act, inner = FUNCTIONS[activation], FUNCTIONS[inner_activation]

    def step(xt, h):
        h = h or [0.0] * H
        Wz, Uz, bz = gates["z"]
        Wr, Ur, br = gates["r"]
        Wh, Uh, bh = gates["h"]
        z = [inner(_dot(_col(Wz, j), xt) + bz[j] + _dot(_col(Uz, j), h)) for j in range(H)]
        r = [inner(_dot(_col(Wr, j), xt) + br[j] + _dot(_col(Ur, j), h)) for j in range(H)]
        rh = [r[j] * h[j] for j in range(H)]
        hh = [act(_dot(_col(Wh, j), xt) + bh[j] + _dot(_col(Uh, j), rh)) for j in range(H)]
        new = [z[j] * h[j] + (1 - z[j]) * hh[j] for j in range(H)]
        return new, new

    return _run(x, go_backwards, step)


# -- ONNX: W (G*H, F) per direction, gates i o f c (LSTM), z r h (GRU) --------------------
def onnx_lstm(x, W, R, Wb, Rb, f="sigmoid", g="tanh", h="tanh", reverse=False):
    """it = f(Xt Wi^T + Ht-1 Ri^T + Wbi + Rbi); ot, ft likewise; ct = g(...); Ct = ft Ct-1 + it ct; Ht = ot h(Ct)"""
    H = R.shape[1]
    F, G, Hf = FUNCTIONS[f], FUNCTIONS[g], FUNCTIONS[h]

    def step(xt, state):
        hp, cp = state or ([0.0] * H, [0.0] * H)
        pre = [_dot(W[j], xt) + _dot(R[j], hp) + Wb[j] + Rb[j] for j in range(4 * H)]
        i, o = [F(v) for v in pre[:H]], [F(v) for v in pre[H : 2 * H]]
        fg, c = [F(v) for v in pre[2 * H : 3 * H]], [G(v) for v in pre[3 * H :]]
        C = [fg[j] * cp[j] + i[j] * c[j] for j in range(H)]
        Ht = [o[j] * Hf(C[j]) for j in range(H)]
        return Ht, (Ht, C)

    return _run(x, reverse, step)


def onnx_gru(x, W, R, Wb, Rb, linear_before_reset, f="sigmoid", g="tanh", reverse=False):
    """zt = f(Xt Wz^T + Ht-1 Rz^T + Wbz + Rbz); rt likewise; ht = g(Xt Wh^T + (rt Ht-1) Rh^T + Rbh + Wbh) or, with
    linear_before_reset, g(Xt Wh^T + rt (Ht-1 Rh^T + Rbh) + Wbh); Ht = (1 - zt) ht + zt Ht-1"""
    H = R.shape[1]
    F, G = FUNCTIONS[f], FUNCTIONS[g]

    def step(xt, hp):
        hp = hp or [0.0] * H
        z = [F(_dot(W[j], xt) + _dot(R[j], hp) + Wb[j] + Rb[j]) for j in range(H)]
        r = [F(_dot(W[H + j], xt) + _dot(R[H + j], hp) + Wb[H + j] + Rb[H + j]) for j in range(H)]
        if linear_before_reset:
            hh = [G(_dot(W[2 * H + j], xt) + r[j] * (_dot(R[2 * H + j], hp) + Rb[2 * H + j]) + Wb[2 * H + j]) for j in range(H)]
        else:
            rh = [r[j] * hp[j] for j in range(H)]
            hh = [G(_dot(W[2 * H + j], xt) + _dot(R[2 * H + j], rh) + Rb[2 * H + j] + Wb[2 * H + j]) for j in range(H)]
        new = [(1 - z[j]) * hh[j] + z[j] * hp[j] for j in range(H)]
        return new, new

    return _run(x, reverse, step)


def channels_first(y_nth: np.ndarray, return_sequences: bool) -> np.ndarray:
    """An oracle's (N, T, H) outputs in layoutconv's layout: (N, H, T), or the last step (N, H)."""
    return np.moveaxis(y_nth, 2, 1) if return_sequences else y_nth[:, -1]
