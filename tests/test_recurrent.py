"""Recurrent records without any framework: gate orders as data, the reference pass against independent
per-step loops (each in a framework's own gate order), the tolerance, Keras' bias form, and every refusal."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest

from layoutconv import ConfigError, ShapeError, reference
from layoutconv import recurrent as R
from layoutconv.tolerance import ASSERT_CLOSE_DEFAULTS, tolerance

import recurrent_oracle as oracle

#: (N, F, T, H): odd T; F != H and F == H
SHAPES = {"F3_H4_T7": (2, 3, 7, 4), "F5_H5_T5": (3, 5, 5, 5), "F6_H2_T9": (1, 6, 9, 2)}


def close64(actual, expected):
    """torch.testing.assert_close's float64 defaults (rtol 1e-7, atol 1e-7), elementwise."""
    rtol, atol = ASSERT_CLOSE_DEFAULTS["float64"][0], ASSERT_CLOSE_DEFAULTS["float64"][1]
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def nrm(rng, *shape, scale=0.6):
    return rng.normal(scale=scale, size=shape)


def batch_first(x):
    return np.moveaxis(x, 1, 2)


# -- gate orders as data -------------------------------------------------------
@pytest.mark.parametrize(
    "kind, source, target, perm",
    [
        ("lstm", "keras", "torch", (0, 1, 2, 3)),  # i f c o == i f g o
        ("lstm", "onnx", "torch", (0, 2, 3, 1)),  # i o f c -> i f g o
        ("lstm", "torch", "onnx", (0, 3, 1, 2)),
        ("lstm", "keras1", "keras", (0, 2, 1, 3)),  # stored i c f o -> computed i f c o
        ("gru", "keras", "torch", (1, 0, 2)),  # z r h -> r z n
        ("gru", "onnx", "keras", (0, 1, 2)),
        ("rnn", "keras", "onnx", (0,)),
        ("lstm", "i c f o", "torch", (0, 2, 1, 3)),  # gate names instead of a framework
    ],
)
def test_gate_permutations_come_from_the_names(kind, source, target, perm):
    assert R.gate_permutation(kind, source, target) == perm


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("order", ["torch", "keras", "keras1", "onnx"])
@pytest.mark.parametrize("layout", ["(G H) I", "I (G H)", "G I H", "H G I"])
def test_layouts_round_trip_bit_exactly(rng, kind, order, layout):
    g = len(R.CANONICAL_ORDER[kind].split())
    canonical = rng.normal(size=(g * 3, 5)).astype(np.float32)
    written = R.from_canonical(canonical, layout, kind, order)
    back = R.to_canonical(written, layout, kind, order)
    assert back.dtype == canonical.dtype and back.tobytes() == canonical.tobytes()


def test_keras_kernel_columns_are_gates_then_units():
    # Keras LSTM kernel (F, 4H): column g*H + j is gate g ("i f c o") of unit j
    f, h = 2, 3
    kernel = np.zeros((f, 4 * h))
    for gi, gate in enumerate("ifco"):
        for j in range(h):
            kernel[:, gi * h + j] = 10 * gi + j
    canonical = R.to_canonical(kernel, "I (G H)", "lstm", "keras")  # (4H, F), rows i f g o
    assert canonical.shape == (4 * h, f)
    assert canonical[:, 0].tolist() == kernel[0].tolist()  # i f c o is i f g o
    gru = R.to_canonical(np.arange(6.0), "(G H)", "gru", "keras")  # z z r r h h -> r r z z n n
    assert gru.tolist() == [2.0, 3.0, 0.0, 1.0, 4.0, 5.0]


# -- the reference against independent loops ------------------------------------
@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
@pytest.mark.parametrize("go_backwards", [False, True], ids=["fwd", "go_backwards"])
@pytest.mark.parametrize("return_sequences", [True, False], ids=["seq", "last"])
@pytest.mark.parametrize("gate", ["sigmoid", "hard_sigmoid_keras2", "hard_sigmoid_keras3"])
def test_lstm_reference_matches_keras_equations(rng, shape, go_backwards, return_sequences, gate):
    n, f, t, h = SHAPES[shape]
    kernel, recurrent, bias = nrm(rng, f, 4 * h), nrm(rng, h, 4 * h), nrm(rng, 4 * h)
    lstm = R.LSTM(kernel, recurrent, bias, recurrent_activation=gate, return_sequences=return_sequences,
                  go_backwards=go_backwards, layout="I (G H)", gate_order="keras")
    x = nrm(rng, n, f, t, scale=1.0)
    want = oracle.keras_lstm(batch_first(x), kernel, recurrent, bias, recurrent_activation=gate, go_backwards=go_backwards)
    close64(reference.forward(lstm, x), oracle.channels_first(want, return_sequences))


@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
@pytest.mark.parametrize("reset_after", [True, False], ids=["reset_after", "reset_before"])
@pytest.mark.parametrize("go_backwards", [False, True], ids=["fwd", "go_backwards"])
@pytest.mark.parametrize("gate", ["sigmoid", "hard_sigmoid_keras2"])
def test_gru_reference_matches_keras_equations(rng, shape, reset_after, go_backwards, gate):
    n, f, t, h = SHAPES[shape]
    kernel, recurrent = nrm(rng, f, 3 * h), nrm(rng, h, 3 * h)
    bias = nrm(rng, 2, 3 * h) if reset_after else nrm(rng, 3 * h)
    biases = (bias[0], bias[1]) if reset_after else (bias, None)
    gru = R.GRU(kernel, recurrent, *biases, recurrent_activation=gate, reset_after=reset_after, return_sequences=True,
                go_backwards=go_backwards, layout="I (G H)", gate_order="keras")
    x = nrm(rng, n, f, t, scale=1.0)
    want = oracle.keras_gru(batch_first(x), kernel, recurrent, bias, reset_after, recurrent_activation=gate, go_backwards=go_backwards)
    close64(reference.forward(gru, x), oracle.channels_first(want, True))


@pytest.mark.parametrize("activation", ["tanh", "relu", "softsign"])
@pytest.mark.parametrize("go_backwards", [False, True], ids=["fwd", "go_backwards"])
def test_simple_rnn_reference_matches_keras_equations(rng, activation, go_backwards):
    n, f, t, h = SHAPES["F3_H4_T7"]
    kernel, recurrent, bias = nrm(rng, f, h), nrm(rng, h, h), nrm(rng, h)
    rnn = R.SimpleRNN(kernel, recurrent, bias, activation=activation, return_sequences=True, go_backwards=go_backwards,
                      layout="I (G H)", gate_order="keras")
    x = nrm(rng, n, f, t, scale=1.0)
    want = oracle.keras_simple_rnn(batch_first(x), kernel, recurrent, bias, activation, go_backwards)
    close64(reference.forward(rnn, x), oracle.channels_first(want, True))


@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
def test_reference_matches_pytorch_equations_with_both_biases(rng, shape):
    n, f, t, h = SHAPES[shape]
    x = nrm(rng, n, f, t, scale=1.0)
    for kind, g, loop in (("rnn", 1, oracle.torch_rnn), ("lstm", 4, oracle.torch_lstm), ("gru", 3, oracle.torch_gru)):
        w_ih, w_hh, b_ih, b_hh = nrm(rng, g * h, f), nrm(rng, g * h, h), nrm(rng, g * h), nrm(rng, g * h)
        record = R.RECORDS[kind](w_ih, w_hh, b_ih, b_hh, return_sequences=True)
        close64(reference.forward(record, x), oracle.channels_first(loop(batch_first(x), w_ih, w_hh, b_ih, b_hh), True))


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_reference_matches_onnx_equations(rng, reverse):
    n, f, t, h = SHAPES["F3_H4_T7"]
    x = nrm(rng, n, f, t, scale=1.0)
    W, Rm, Wb, Rb = nrm(rng, 4 * h, f), nrm(rng, 4 * h, h), nrm(rng, 4 * h), nrm(rng, 4 * h)
    lstm = R.LSTM(W, Rm, Wb, Rb, recurrent_activation="hard_sigmoid_keras2", go_backwards=reverse, gate_order="onnx")
    want = oracle.onnx_lstm(batch_first(x), W, Rm, Wb, Rb, f="hard_sigmoid_keras2", reverse=reverse)
    close64(reference.forward(lstm, x), oracle.channels_first(want, False))
    for lbr in (0, 1):
        W, Rm, Wb, Rb = nrm(rng, 3 * h, f), nrm(rng, 3 * h, h), nrm(rng, 3 * h), nrm(rng, 3 * h)
        gru = R.GRU(W, Rm, Wb, Rb, reset_after=bool(lbr), return_sequences=True, go_backwards=reverse, gate_order="onnx")
        want = oracle.onnx_gru(batch_first(x), W, Rm, Wb, Rb, lbr, reverse=reverse)
        close64(reference.forward(gru, x), oracle.channels_first(want, True))


@pytest.mark.parametrize("merge_mode", R.MERGE_MODES)
@pytest.mark.parametrize("return_sequences", [True, False], ids=["seq", "last"])
def test_bidirectional_reference_flips_the_backward_sequence_back(rng, merge_mode, return_sequences):
    n, f, t, h = SHAPES["F3_H4_T7"]
    x = nrm(rng, n, f, t, scale=1.0)
    kf, rf, bf = nrm(rng, f, 4 * h), nrm(rng, h, 4 * h), nrm(rng, 4 * h)
    kb, rb, bb = nrm(rng, f, 4 * h), nrm(rng, h, 4 * h), nrm(rng, 4 * h)
    common = dict(return_sequences=return_sequences, layout="I (G H)", gate_order="keras")
    bi = R.Bidirectional(R.LSTM(kf, rf, bf, **common), R.LSTM(kb, rb, bb, go_backwards=True, **common), merge_mode)
    yf = oracle.keras_lstm(batch_first(x), kf, rf, bf)
    yb = oracle.keras_lstm(batch_first(x), kb, rb, bb, go_backwards=True)
    a, b = oracle.channels_first(yf, return_sequences), oracle.channels_first(yb, return_sequences)
    if return_sequences:
        b = b[..., ::-1]
    want = {"concat": np.concatenate([a, b], 1), "sum": a + b, "mul": a * b, "ave": (a + b) / 2}[merge_mode]
    y = reference.forward(bi, x)
    assert y.shape == bi.output_shape(n, t)
    close64(y, want)


def test_go_backwards_outputs_stay_in_processing_order(rng):
    rnn = R.SimpleRNN(np.array([[1.0]]), np.array([[0.0]]), activation="linear", return_sequences=True, go_backwards=True)
    assert reference.forward(rnn, np.array([[[1.0, 2.0, 3.0]]])).tolist() == [[[3.0, 2.0, 1.0]]]


def test_reference_dtype_argument_and_float32_input(rng):
    lstm = R.LSTM(nrm(rng, 8, 3).astype(np.float32), nrm(rng, 8, 2).astype(np.float32), return_sequences=True)
    x = nrm(rng, 2, 3, 5).astype(np.float32)
    assert reference.forward(lstm, x).dtype == np.float64
    assert reference.forward(lstm, x, dtype=np.float32).dtype == np.float32


# -- the tolerance ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_tolerance_admits_float32_rounding_and_rejects_a_wrong_gate_order(rng, kind):
    g = len(R.CANONICAL_ORDER[kind].split())
    h, f = 4, 3
    arrays = [nrm(rng, g * h, f), nrm(rng, g * h, h), nrm(rng, g * h), nrm(rng, g * h)]
    record = R.RECORDS[kind](*[a.astype(np.float32) for a in arrays], return_sequences=True)
    x = nrm(rng, 2, f, 7, scale=1.0).astype(np.float32)
    expected = reference.forward(record, x)
    tol, rtol, atol = tolerance(record, x, expected)
    assert (rtol, atol) == ASSERT_CLOSE_DEFAULTS["float32"] and tol.shape == expected.shape
    in_float32 = reference.forward(record, x, dtype=np.float32)  # a framework's rounding, roughly
    assert (np.abs(in_float32 - expected) <= tol).all()
    if kind != "rnn":  # the kernels read in another framework's gate order: off by orders of magnitude
        other = "onnx" if kind == "lstm" else "keras"
        wrong = record.replace(
            kernel=R.from_canonical(record.kernel, "(G H) I", kind, other),
            recurrent_kernel=R.from_canonical(record.recurrent_kernel, "(G H) I", kind, other),
        )
        err = np.abs(reference.forward(wrong, x) - expected)
        assert (err / tol).max() > 100


def test_tolerance_of_a_bidirectional_has_the_output_shape(rng):
    fw = R.GRU(nrm(rng, 6, 3), nrm(rng, 6, 2), nrm(rng, 6), return_sequences=True)
    for mode in R.MERGE_MODES:
        bi = R.Bidirectional(fw, fw.replace(go_backwards=True), mode)
        x = nrm(rng, 2, 3, 5)
        tol, _, _ = tolerance(bi, x)
        assert tol.shape == reference.forward(bi, x).shape and (tol > 0).all()


# -- Keras' single bias ---------------------------------------------------------------
def test_keras_form_folds_the_recurrent_bias_exactly_where_keras_has_one_bias(rng):
    b, rb = nrm(rng, 8).astype(np.float32), nrm(rng, 8).astype(np.float32)
    lstm = R.LSTM(nrm(rng, 8, 3).astype(np.float32), nrm(rng, 8, 2).astype(np.float32), b, rb)
    folded = R.keras_form(lstm)
    assert folded.recurrent_bias is None
    assert folded.bias.tobytes() == (b.astype(np.float64) + rb.astype(np.float64)).astype(np.float32).tobytes()
    x = nrm(rng, 2, 3, 5)
    close64(reference.forward(folded, x), reference.forward(lstm.replace(bias=folded.bias.astype(np.float32), recurrent_bias=None), x))
    only_recurrent = lstm.replace(bias=None)
    assert R.keras_form(only_recurrent).bias.tobytes() == rb.tobytes()
    assert R.keras_form(folded) is folded
    gru_before = R.GRU(nrm(rng, 6, 3), nrm(rng, 6, 2), nrm(rng, 6), nrm(rng, 6), reset_after=False)
    close64(reference.forward(R.keras_form(gru_before), x), reference.forward(gru_before, x))  # b_rn is outside r
    gru_after = R.GRU(nrm(rng, 6, 3), nrm(rng, 6, 2), nrm(rng, 6), reset_after=True)
    form = R.keras_form(gru_after)
    assert form.recurrent_bias is not None and not form.recurrent_bias.any() and form.bias.tobytes() == gru_after.bias.tobytes()


# -- records: immutability, pickling, equality ---------------------------------------------
def test_records_are_immutable_pickle_and_compare(rng):
    gru = R.GRU(nrm(rng, 6, 3), nrm(rng, 6, 2), nrm(rng, 6), reset_after=False, return_sequences=True)
    with pytest.raises(AttributeError):
        gru.units = 3  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(gru)) == gru
    bi = R.Bidirectional(gru, gru.replace(go_backwards=True), "ave")
    assert pickle.loads(pickle.dumps(bi)) == bi and bi.same_weights(bi)
    assert gru != gru.replace(reset_after=True)
    assert gru.hyperparameters()["reset_after"] is False and gru.kernel.flags.writeable is False


# -- refusals: typed errors saying what, expected, received (and a remedy) ------------------
def _raises(cls, fn, *words):
    with pytest.raises(cls) as info:
        fn()
    text = str(info.value)
    assert "Expected" in text and "Received" in text, text
    for word in words:
        assert word in text, text
    return text


def test_refusals(rng):
    k, r = nrm(rng, 8, 3), nrm(rng, 8, 2)
    _raises(ShapeError, lambda: R.LSTM(nrm(rng, 3, 8), r), "(4*H, F)", "layout='I (G H)'")  # a Keras kernel without its layout
    _raises(ShapeError, lambda: R.LSTM(k, nrm(rng, 8, 3)), "recurrent_kernel", "(8, 2)")
    _raises(ShapeError, lambda: R.LSTM(k, r, nrm(rng, 4)), "bias", "(8,)")
    _raises(ShapeError, lambda: R.GRU(nrm(rng, 6, 3), nrm(rng, 6, 2), nrm(rng, 2, 6)), "(2, 3H)")
    _raises(ConfigError, lambda: R.LSTM(k.astype(np.float32), r), "different dtypes", "Cast")
    _raises(ConfigError, lambda: R.LSTM(k, r, recurrent_activation="hard_sigmoid"), "hard_sigmoid_keras2", "hard_sigmoid_keras3")
    _raises(ConfigError, lambda: R.LSTM(k, r, return_sequences=1), "True or False")
    _raises(ConfigError, lambda: R.LSTM(k, r, gate_order="i f f o"), "gate order", "'i f g o'")
    _raises(ShapeError, lambda: R.LSTM(k, r, layout="(G H) X"), "layout")
    lstm = R.LSTM(k, r, return_sequences=True)
    _raises(ConfigError, lambda: R.Bidirectional(lstm, lstm.replace(go_backwards=True), None), "two tensors", "go_backwards=True")
    _raises(ConfigError, lambda: R.Bidirectional(lstm, lstm.replace(go_backwards=True), "max"), "merge_mode")
    _raises(ConfigError, lambda: R.Bidirectional(lstm, lstm, "concat"), "go_backwards", "replace(")
    other = R.LSTM(nrm(rng, 12, 3), nrm(rng, 12, 3), go_backwards=True, return_sequences=True)
    _raises(ConfigError, lambda: R.Bidirectional(lstm, other, "sum"), "units 2 != 3")
    assert R.Bidirectional(lstm, other, "concat").out_channels == 5
    _raises(ConfigError, lambda: R.Bidirectional(lstm, "not a record"), "SimpleRNN, LSTM or GRU")
    _raises(ShapeError, lambda: reference.forward(lstm, nrm(rng, 2, 7, 3)), "(N, 3, T)", "transpose(0, 2, 1)")
    _raises(ShapeError, lambda: reference.forward(lstm, nrm(rng, 3, 7)), "x[None]")


def test_import_of_the_records_and_the_reference_loads_no_framework():
    code = (
        "import sys, json, numpy as np, layoutconv\n"
        "from layoutconv import recurrent, reference, tolerance\n"
        "r = recurrent.LSTM(np.zeros((8, 3)), np.zeros((8, 2)))\n"
        "reference.forward(r, np.zeros((1, 3, 4))); tolerance.tolerance(r, np.zeros((1, 3, 4)))\n"
        "from layoutconv.legacy.recurrent import from_keras1_weights\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(__import__("json").loads(out.stdout.strip().splitlines()[-1]))
    assert not loaded & {"tensorflow", "keras", "tf_keras", "torch", "onnx", "onnxruntime", "h5py"}
