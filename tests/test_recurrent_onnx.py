"""ONNX RNN/LSTM/GRU nodes and the records: models built by hand (as other exporters write them) are read and
compared with the reference (and with per-step loops of the ONNX specification's equations) under onnxruntime;
what to_native writes passes the full checker, runs like the reference and reads back bit-exactly.
Baseline tolerance: torch.testing.assert_close's float32 defaults (rtol 1.3e-6, atol 1e-5), applied with numpy."""

from __future__ import annotations

import numpy as np
import pytest

import layoutconv
from layoutconv import ConfigError, UnsupportedError, reference
from layoutconv import recurrent as R
from layoutconv.tolerance import ASSERT_CLOSE_DEFAULTS, tolerance

import recurrent_oracle as oracle
from conftest import need


@pytest.fixture(scope="module")
def onnx():
    need("onnx", "onnxruntime")
    import onnx

    return onnx


@pytest.fixture(scope="module")
def orr(onnx):
    from layoutconv.adapters import onnx_recurrent

    return onnx_recurrent


def assert_close(actual, expected):
    rtol, atol = ASSERT_CLOSE_DEFAULTS[np.asarray(actual).dtype.name]
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=rtol, atol=atol)


def ort_run(model, feeds):
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def foreign_model(onnx, op, W, R_, B, attrs, outputs=("Y", "Y_h"), extra_inputs=(), layout=0):
    """A model as another exporter writes it: input X (T, N, F) (or (N, T, F) with layout=1), the node's outputs."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R_, "R")]
    inputs = ["X", "W", "R"]
    if B is not None:
        inits.append(numpy_helper.from_array(B, "B"))
        inputs.append("B")
    for name, value in extra_inputs:
        while len(inputs) < {"sequence_lens": 4, "initial_h": 5, "initial_c": 6, "P": 7}[name]:
            inputs.append("")
        if value is not None:
            inits.append(numpy_helper.from_array(value, name))
        inputs.append(name)
    node = helper.make_node(op, inputs, list(outputs), name="rnn_0", layout=layout, **attrs)
    dims = ["N", "T", W.shape[2]] if layout else ["T", "N", W.shape[2]]
    graph = helper.make_graph(
        [node], "foreign", [helper.make_tensor_value_info("X", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs if o], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def f32(rng, *shape):
    return rng.normal(scale=0.5, size=shape).astype(np.float32)


# -- models built by hand ---------------------------------------------------------------
@pytest.mark.parametrize("gate", [("Sigmoid", [], []), ("HardSigmoid", [0.2], [0.5]), ("HardSigmoid", [1 / 6], [0.5])],
                         ids=["sigmoid", "hard_sigmoid_keras2", "hard_sigmoid_keras3"])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_foreign_lstm(onnx, orr, rng, gate, direction):
    d, h, f = (2 if direction == "bidirectional" else 1), 4, 3
    W, R_, B = f32(rng, d, 4 * h, f), f32(rng, d, 4 * h, h), f32(rng, d, 8 * h)
    fn, alpha, beta = gate
    attrs = dict(hidden_size=h, direction=direction, activations=[fn, "Tanh", "Tanh"] * d)
    if alpha:
        attrs.update(activation_alpha=alpha * d, activation_beta=beta * d)
    model = foreign_model(onnx, "LSTM", W, R_, B, attrs, outputs=("Y", ""))
    record = layoutconv.from_onnx(model)  # through the ONNX adapter's hook
    names = {"Sigmoid": "sigmoid", 0.2: "hard_sigmoid_keras2", 1 / 6: "hard_sigmoid_keras3"}
    want_gate = names[alpha[0]] if alpha else "sigmoid"
    layers = (record.forward, record.backward) if d == 2 else (record,)
    assert all(layer.recurrent_activation == want_gate and layer.return_sequences for layer in layers)
    x = rng.normal(size=(2, f, 7)).astype(np.float32)
    xt = np.ascontiguousarray(np.moveaxis(x, 2, 0))  # (T, N, F)
    y = ort_run(model, {"X": xt})[0]  # (T, D, N, H)
    loops = [
        oracle.onnx_lstm(np.moveaxis(x, 1, 2), W[k], R_[k], B[k, : 4 * h], B[k, 4 * h :], f=want_gate, reverse=(k == 1))
        for k in range(d)
    ]
    want = [oracle.channels_first(loops[0], True)]
    if d == 2:
        want.append(oracle.channels_first(loops[1], True)[..., ::-1])  # ONNX aligns the reverse direction with the input
    want = np.concatenate(want, axis=1)
    expected = reference.forward(record, x)
    np.testing.assert_allclose(expected, want, rtol=1e-6, atol=1e-6)  # float32 weights, float64 loops
    assert_close(np.moveaxis(y, (0, 1, 2, 3), (3, 1, 0, 2)).reshape(2, d * h, 7), expected)


@pytest.mark.parametrize("linear_before_reset", [0, 1])
@pytest.mark.parametrize("layout", [0, 1], ids=["time_first", "batch_first"])
def test_foreign_gru_and_reverse_final_state(onnx, orr, rng, linear_before_reset, layout):
    h, f = 4, 3
    W, R_, B = f32(rng, 1, 3 * h, f), f32(rng, 1, 3 * h, h), f32(rng, 1, 6 * h)
    attrs = dict(hidden_size=h, direction="reverse", linear_before_reset=linear_before_reset)
    model = foreign_model(onnx, "GRU", W, R_, B, attrs, outputs=("", "Y_h"), layout=layout)
    record = orr.from_native(model)
    assert record.go_backwards and not record.return_sequences and record.reset_after == bool(linear_before_reset)
    x = rng.normal(size=(2, f, 7)).astype(np.float32)
    want = oracle.onnx_gru(np.moveaxis(x, 1, 2), W[0], R_[0], B[0, : 3 * h], B[0, 3 * h :], linear_before_reset, reverse=True)
    expected = reference.forward(record, x)
    np.testing.assert_allclose(expected, oracle.channels_first(want, False), rtol=1e-6, atol=1e-6)
    if layout:  # established by experiment: onnxruntime 1.32 refuses layout=1 ("Batchwise recurrent operations ... not supported")
        with pytest.raises(Exception, match="layout == 1"):
            ort_run(model, {"X": np.ascontiguousarray(np.moveaxis(x, 1, 2))})
        return
    (y_h,) = ort_run(model, {"X": np.ascontiguousarray(np.moveaxis(x, 2, 0))})
    assert_close(y_h[0], expected)


def test_onnxruntime_gives_alphas_only_to_functions_that_take_them(onnx, orr, rng, monkeypatch):
    # Established by experiment: [HardSigmoid, LeakyRelu, Tanh] with alpha=[0.2, 0.3], beta=[0.5]
    h, f = 3, 2
    W, R_, B = f32(rng, 1, 4 * h, f), f32(rng, 1, 4 * h, h), f32(rng, 1, 8 * h)
    attrs = dict(hidden_size=h, activations=["HardSigmoid", "LeakyRelu", "Tanh"], activation_alpha=[0.2, 0.3], activation_beta=[0.5])
    model = foreign_model(onnx, "LSTM", W, R_, B, attrs, outputs=("Y", ""))
    x = rng.normal(size=(2, f, 5)).astype(np.float32)
    (y,) = ort_run(model, {"X": np.ascontiguousarray(np.moveaxis(x, 2, 0))})
    monkeypatch.setitem(oracle.FUNCTIONS, "leaky_0.3", lambda v: v if v >= 0 else 0.3 * v)
    want = oracle.onnx_lstm(np.moveaxis(x, 1, 2), W[0], R_[0], B[0, : 4 * h], B[0, 4 * h :], f="hard_sigmoid_keras2", g="leaky_0.3")
    np.testing.assert_allclose(np.moveaxis(y[:, 0], 0, 1), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(UnsupportedError, match="not one a record holds"):
        orr.from_native(model)  # LeakyRelu(0.3): no record's activation
    attrs.update(activations=["Sigmoid", "LeakyRelu", "Tanh"], activation_alpha=[0.2])
    del attrs["activation_beta"]
    with pytest.raises(UnsupportedError, match="cell .g. and output .h. activations differ"):
        orr.from_native(foreign_model(onnx, "LSTM", W, R_, B, attrs, outputs=("Y", "")))


# -- what to_native writes -----------------------------------------------------------------
def _records(rng):
    lstm = R.LSTM(f32(rng, 16, 3), f32(rng, 16, 4), f32(rng, 16), f32(rng, 16))
    gru = R.GRU(f32(rng, 12, 3), f32(rng, 12, 4), f32(rng, 12), f32(rng, 12))
    rnn = R.SimpleRNN(f32(rng, 3, 3), f32(rng, 3, 3), f32(rng, 3), None, activation="relu")
    return {
        "lstm": lstm,
        "lstm_hard_sigmoid_keras2_backwards": lstm.replace(recurrent_activation="hard_sigmoid_keras2", go_backwards=True),
        "lstm_hard_sigmoid_keras3": lstm.replace(recurrent_activation="hard_sigmoid_keras3"),
        "lstm_no_biases": lstm.replace(bias=None, recurrent_bias=None),
        "gru_reset_after": gru,
        "gru_reset_before_one_bias": gru.replace(reset_after=False, recurrent_bias=None),
        "gru_backwards_only_recurrent_bias": gru.replace(go_backwards=True, bias=None),
        "rnn_relu_F3_H3": rnn,
        "rnn_linear": rnn.replace(activation="linear"),
    }


CASES = list(_records(np.random.default_rng(0)))


@pytest.mark.parametrize("return_sequences", [True, False], ids=["seq", "last"])
@pytest.mark.parametrize("case", CASES)
def test_to_native_runs_like_the_reference_and_reads_back(onnx, orr, rng, case, return_sequences):
    record = _records(rng)[case].replace(return_sequences=return_sequences)
    model = layoutconv.to_onnx(record)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["x"]
    x = rng.normal(size=(2, record.input_size, 7)).astype(np.float32)
    y = orr.run(model, x)
    assert y.shape == record.output_shape(2, 7)
    assert_close(y, reference.forward(record, x))
    back = layoutconv.from_onnx(model)
    assert back == record and back.same_weights(record)


@pytest.mark.parametrize("merge_mode", R.MERGE_MODES)
@pytest.mark.parametrize("return_sequences", [True, False], ids=["seq", "last"])
@pytest.mark.parametrize("kind", ["lstm", "gru_hard_sigmoid", "rnn"])
def test_bidirectional_to_native(onnx, orr, rng, merge_mode, return_sequences, kind):
    records = _records(rng)
    fw = {"lstm": records["lstm"], "gru_hard_sigmoid": records["gru_reset_after"].replace(recurrent_activation="hard_sigmoid_keras2"),
          "rnn": records["rnn_relu_F3_H3"]}[kind].replace(return_sequences=return_sequences)
    bw = fw.replace(kernel=f32(rng, *fw.kernel.shape), go_backwards=True, bias=None)
    record = R.Bidirectional(fw, bw, merge_mode)
    model = orr.to_native(record)
    x = rng.normal(size=(2, 3, 7)).astype(np.float32)
    assert_close(layoutconv.adapters.onnx_adapter.run(model, x), reference.forward(record, x))  # the adapter's run hands over
    assert orr.from_native(model) == record


def test_float16_within_the_propagated_tolerance(onnx, orr, rng):
    record = _records(rng)["lstm_hard_sigmoid_keras2_backwards"].replace(return_sequences=True)
    record = record.astype("float16")
    x = rng.normal(size=(2, 3, 7)).astype(np.float16)
    y = orr.run(orr.to_native(record), x)
    expected = reference.forward(record, x)
    tol, _, _ = tolerance(record, x, expected)
    assert y.dtype == np.float16 and (np.abs(y.astype(np.float64) - expected) <= tol).all()


def test_verify_passes(onnx, orr, rng):
    record = _records(rng)["gru_reset_before_one_bias"].replace(return_sequences=True, recurrent_activation="hard_sigmoid_keras2")
    x = rng.normal(size=(2, 3, 7)).astype(np.float32)
    report = layoutconv.verify(record, frameworks=["onnx"], x=x)
    assert report.passed, str(report)


# -- refusals ----------------------------------------------------------------------------
def test_refusals(onnx, orr, rng):
    records = _records(rng)
    lstm = records["lstm"]
    with pytest.raises(UnsupportedError, match="no CPU LSTM kernel for float64"):
        orr.run(orr.to_native(lstm.astype("float64")), np.zeros((1, 3, 2)))
    with pytest.raises(UnsupportedError, match="PyTorch"):
        orr.to_native(lstm.replace(activation="gelu"))
    with pytest.raises(UnsupportedError, match="go_backwards=True"):
        orr.to_native(R.Bidirectional(lstm.replace(go_backwards=True), lstm, "sum"))
    with pytest.raises(UnsupportedError, match="different layers"):
        orr.to_native(R.Bidirectional(lstm, records["gru_reset_after"].replace(go_backwards=True), "concat"))
    with pytest.raises(ConfigError, match="opset"):
        orr.to_native(lstm, opset=12)
    h, f = 4, 3
    W, R_, B = f32(rng, 1, 4 * h, f), f32(rng, 1, 4 * h, h), f32(rng, 1, 8 * h)
    bad = {
        "clip": (dict(hidden_size=h, clip=3.0), (), "clips"),
        "input_forget": (dict(hidden_size=h, input_forget=1), (), "input_forget=0"),
        "peepholes": (dict(hidden_size=h), (("P", f32(rng, 1, 3 * h)),), "peephole"),
        "initial_h": (dict(hidden_size=h), (("initial_h", f32(rng, 1, 1, h)),), "initial hidden state"),
    }
    for name, (attrs, extra, words) in bad.items():
        model = foreign_model(onnx, "LSTM", W, R_, B, attrs, extra_inputs=extra)
        with pytest.raises(UnsupportedError, match=words):
            orr.from_native(model)
    zero_peepholes = foreign_model(onnx, "LSTM", W, R_, B, dict(hidden_size=h), extra_inputs=(("P", np.zeros((1, 3 * h), np.float32)),))
    assert isinstance(orr.from_native(zero_peepholes), R.LSTM)
    reverse_y = foreign_model(onnx, "LSTM", W, R_, B, dict(hidden_size=h, direction="reverse"), outputs=("Y", ""))
    with pytest.raises(UnsupportedError, match="aligned with the input"):
        orr.from_native(reverse_y)
    with pytest.raises(UnsupportedError, match="channels first"):
        orr.run(foreign_model(onnx, "LSTM", W, R_, B, dict(hidden_size=h), outputs=("Y", "")), np.zeros((1, 3, 2), np.float32))
    with pytest.raises(ConfigError, match="recurrent nodes"):
        orr.from_native(foreign_model(onnx, "LSTM", W, R_, B, dict(hidden_size=h)), node="nope")


def test_files_and_users_models(onnx, orr, rng, tmp_path):
    from layoutconv.adapters import onnx_adapter

    record = _records(rng)["lstm_hard_sigmoid_keras2_backwards"].replace(return_sequences=True)
    path = tmp_path / "lstm.onnx"
    onnx.save(orr.to_native(record), path)
    x = rng.normal(size=(2, 3, 7)).astype(np.float32)
    assert_close(onnx_adapter.run(str(path), x), reference.forward(record, x))  # the ONNX adapter hands files over too
    assert layoutconv.from_onnx(str(path)) == record
    assert layoutconv.verify(record, native=onnx.load(path), x=x).passed
    onnx.save(orr.to_native(record.astype("float64")), tmp_path / "lstm64.onnx")
    with pytest.raises(UnsupportedError, match="float64"):
        onnx_adapter.run(str(tmp_path / "lstm64.onnx"), x.astype(np.float64))
    # the hint says go_backwards with a sequence, but the Slice putting Y in processing order is gone: refused
    model = orr.to_native(record)
    slice_node = next(n for n in model.graph.node if n.op_type == "Slice")
    for node in model.graph.node:
        node.input[:] = ["Y" if i == "Y_in_order" else i for i in node.input]
    model.graph.node.remove(slice_node)
    with pytest.raises(UnsupportedError, match="aligned with the input"):
        orr.from_native(model)
