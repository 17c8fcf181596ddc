"""PyTorch and the recurrent records: nn modules built by hand are read and compared with the reference (and
with per-step loops of PyTorch's own equations); what to_native writes runs like the reference; round trips
are bit-exact.  Baseline tolerance: torch.testing.assert_close's defaults for the dtype (float32: rtol 1.3e-6,
atol 1e-5; float64: rtol 1e-7, atol 1e-7)."""

from __future__ import annotations

import numpy as np
import pytest

import layoutconv
from layoutconv import UnsupportedError, reference
from layoutconv import recurrent as R
from layoutconv.tolerance import tolerance

import recurrent_oracle as oracle
from conftest import need


@pytest.fixture(scope="module")
def torch():
    need("torch")
    import torch

    torch.manual_seed(7)
    return torch


@pytest.fixture(scope="module")
def tr(torch):
    from layoutconv.adapters import torch_recurrent

    return torch_recurrent


DTYPES = ["float32", "float64"]


def assert_close(torch, actual, expected):
    """torch.testing.assert_close with its defaults for the dtype of ``actual`` (the reference is float64)."""
    a = torch.from_numpy(np.ascontiguousarray(actual))
    torch.testing.assert_close(a, torch.from_numpy(np.ascontiguousarray(expected)).to(a.dtype))


def randomise(torch, module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return module.eval()


def params(module, suffix=""):
    get = lambda name: getattr(module, name).detach().double().numpy()  # noqa: E731
    return get(f"weight_ih_l0{suffix}"), get(f"weight_hh_l0{suffix}"), get(f"bias_ih_l0{suffix}"), get(f"bias_hh_l0{suffix}")


def x_for(rng, f, t=7, n=2, dtype="float64"):
    return rng.normal(size=(n, f, t)).astype(dtype)


# -- modules built by hand ----------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
@pytest.mark.parametrize("sizes", [(3, 4), (5, 5)], ids=["F3_H4", "F5_H5"])
def test_plain_module_read_matches_pytorch_equations(torch, tr, rng, dtype, kind, sizes):
    f, h = sizes
    cls = {"rnn_tanh": torch.nn.RNN, "rnn_relu": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
    options = {"nonlinearity": "relu"} if kind == "rnn_relu" else {}
    module = randomise(torch, cls(f, h, batch_first=True, dtype=getattr(torch, dtype), **options))
    record = layoutconv.from_torch(module)  # through the torch adapter's hook
    assert isinstance(record, R.RECORDS[kind[:3] if kind != "lstm" else "lstm"]) and record.return_sequences
    x = x_for(rng, f, dtype=dtype)
    loop = {"lstm": oracle.torch_lstm, "gru": oracle.torch_gru}.get(kind, oracle.torch_rnn)
    args = params(module) + (({"nonlinearity": options.get("nonlinearity", "tanh")}) if loop is oracle.torch_rnn else {},)
    want = oracle.channels_first(loop(np.moveaxis(x, 1, 2), *args[:4], **args[4]), True)
    expected = reference.forward(record, x)
    np.testing.assert_allclose(expected, want, rtol=1e-7, atol=1e-7)  # reference == PyTorch's equations
    assert_close(torch, tr.run(module, x), expected)  # the module itself == the reference
    with torch.no_grad():
        direct = module(torch.from_numpy(np.moveaxis(x, 1, 2).copy()))[0].numpy()
    assert np.array_equal(np.moveaxis(direct, 2, 1), tr.run(module, x))


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_bidirectional_module_and_time_first(torch, tr, rng, kind):
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
    module = randomise(torch, cls(3, 4, bidirectional=True, dtype=torch.float64))  # batch_first=False
    record = tr.from_native(module)
    assert isinstance(record, R.Bidirectional) and record.merge_mode == "concat" and record.backward.go_backwards
    x = x_for(rng, 3)
    loop = {"lstm": oracle.torch_lstm, "gru": oracle.torch_gru, "rnn": oracle.torch_rnn}[kind]
    fw = loop(np.moveaxis(x, 1, 2), *params(module))
    bw = loop(np.moveaxis(x, 1, 2), *params(module, "_reverse"), go_backwards=True)[:, ::-1]
    want = np.concatenate([oracle.channels_first(fw, True), oracle.channels_first(bw, True)], axis=1)
    np.testing.assert_allclose(reference.forward(record, x), want, rtol=1e-7, atol=1e-7)
    assert_close(torch, tr.run(module, x), want)


# -- what to_native writes -----------------------------------------------------------------
def _lstm(rng, dtype="float32", h=4, f=3, **fields):
    g = lambda *s: rng.normal(scale=0.5, size=s).astype(dtype)  # noqa: E731
    return R.LSTM(g(4 * h, f), g(4 * h, h), g(4 * h), g(4 * h), **fields)


def _gru(rng, dtype="float32", h=4, f=3, **fields):
    g = lambda *s: rng.normal(scale=0.5, size=s).astype(dtype)  # noqa: E731
    return R.GRU(g(3 * h, f), g(3 * h, h), g(3 * h), g(3 * h), **fields)


def _rnn(rng, dtype="float32", h=4, f=3, **fields):
    g = lambda *s: rng.normal(scale=0.5, size=s).astype(dtype)  # noqa: E731
    return R.SimpleRNN(g(h, f), g(h, h), g(h), None, **fields)


CASES = {
    # name: (factory, fields, inner module class name)
    "lstm": (_lstm, {}, "LSTM"),
    "lstm_hard_sigmoid_keras2": (_lstm, {"recurrent_activation": "hard_sigmoid_keras2"}, "LoopRNN"),
    "lstm_hard_sigmoid_keras3_go_backwards": (_lstm, {"recurrent_activation": "hard_sigmoid_keras3", "go_backwards": True}, "LoopRNN"),
    "lstm_go_backwards_last": (_lstm, {"go_backwards": True, "return_sequences": False}, "LSTM"),
    "gru_reset_after": (_gru, {"reset_after": True}, "GRU"),
    "gru_reset_before": (_gru, {"reset_after": False}, "LoopRNN"),
    "gru_reset_before_hard_sigmoid": (_gru, {"reset_after": False, "recurrent_activation": "hard_sigmoid_keras2"}, "LoopRNN"),
    "rnn_relu": (_rnn, {"activation": "relu"}, "RNN"),
    "rnn_softsign": (_rnn, {"activation": "softsign"}, "LoopRNN"),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("return_sequences", [True, False], ids=["seq", "last"])
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_to_native_runs_like_the_reference_and_reads_back_bit_exactly(torch, tr, rng, dtype, return_sequences, case):
    factory, fields, inner = CASES[case]
    fields = {"return_sequences": return_sequences, **fields}
    record = factory(rng, dtype, **fields)
    module = tr.to_native(record)
    assert isinstance(module, tr.RecurrentLayer) and type(module.rnn).__name__ == inner and not module.training
    plain = tr.NN_MODULES[record.KIND](record.input_size, record.units, batch_first=True, dtype=getattr(torch, dtype))
    plain.load_state_dict(module.rnn.state_dict())  # LoopRNN keeps torch's parameter names and shapes
    x = x_for(rng, record.input_size, dtype=dtype)
    y = tr.run(module, x)
    assert y.dtype == np.dtype(dtype) and y.shape == record.output_shape(2, 7)
    assert_close(torch, y, reference.forward(record, x))
    back = tr.from_native(module)
    assert back == record and back.same_weights(record)


@pytest.mark.parametrize("merge_mode", R.MERGE_MODES)
@pytest.mark.parametrize("return_sequences", [True, False], ids=["seq", "last"])
@pytest.mark.parametrize("pair", ["lstm_one_module", "gru_hard_sigmoid_two_layers", "mixed_kinds", "forward_goes_backwards"])
def test_bidirectional_to_native(torch, tr, rng, merge_mode, return_sequences, pair):
    rs = {"return_sequences": return_sequences}
    if pair == "lstm_one_module":
        fw, bw = _lstm(rng, **rs), _lstm(rng, go_backwards=True, **rs)
    elif pair == "gru_hard_sigmoid_two_layers":
        hs = {"recurrent_activation": "hard_sigmoid_keras2", "reset_after": False}
        fw, bw = _gru(rng, **hs, **rs), _gru(rng, go_backwards=True, **hs, **rs)
    elif pair == "mixed_kinds":
        fw, bw = _lstm(rng, **rs), _gru(rng, go_backwards=True, **rs)
    else:
        fw, bw = _rnn(rng, go_backwards=True, **rs), _rnn(rng, **rs)
    record = R.Bidirectional(fw, bw, merge_mode)
    module = tr.to_native(record)
    assert ("rnn" in module._modules) == (pair == "lstm_one_module")
    x = x_for(rng, 3, dtype="float32")
    assert_close(torch, tr.run(module, x), reference.forward(record, x))
    assert tr.from_native(module) == record


def test_missing_biases_come_back_as_none(torch, tr, rng):
    lstm = _lstm(rng, "float64")
    for bias, recurrent_bias in ((None, None), (lstm.bias, None), (None, lstm.recurrent_bias)):
        record = lstm.replace(bias=bias, recurrent_bias=recurrent_bias)
        module = tr.to_native(record)
        assert module.rnn.bias == (bias is not None or recurrent_bias is not None)
        assert tr.from_native(module).same_weights(record)
    bi = R.Bidirectional(lstm.replace(recurrent_bias=None), lstm.replace(bias=None, go_backwards=True))
    assert tr.from_native(tr.to_native(bi)).same_weights(bi)


def test_torch_to_record_to_torch_is_bit_exact(torch, tr, rng):
    for module in (
        randomise(torch, torch.nn.LSTM(3, 4, batch_first=True, bidirectional=True)),
        randomise(torch, torch.nn.GRU(3, 4, batch_first=True, dtype=torch.float64)),
        randomise(torch, torch.nn.RNN(3, 4, batch_first=True, bias=False, nonlinearity="relu")),
    ):
        again = tr.to_native(tr.from_native(module))
        inner = again.rnn
        assert type(inner) is type(module)
        theirs, ours = module.state_dict(), inner.state_dict()
        assert theirs.keys() == ours.keys()
        assert all(theirs[k].dtype == ours[k].dtype and theirs[k].numpy().tobytes() == ours[k].numpy().tobytes() for k in theirs)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_within_the_propagated_tolerance(torch, tr, rng, dtype):
    record = _lstm(rng, "float32", return_sequences=True).astype(dtype)
    x = x_for(rng, 3).astype(record.dtype)
    y = tr.run(tr.to_native(record), x)
    expected = reference.forward(record, x)
    tol, _, _ = tolerance(record, x, expected)
    assert (np.abs(y.astype(np.float64) - expected) <= tol).all()


def test_verify_passes_for_records_and_for_a_users_module(torch, tr, rng):
    record = _gru(rng, reset_after=False, return_sequences=True, recurrent_activation="hard_sigmoid_keras2")
    x = x_for(rng, 3, dtype="float32")
    assert layoutconv.verify(record, frameworks=["torch"], x=x).passed
    report = layoutconv.verify(record.replace(return_sequences=False), frameworks=["torch"])  # its own (N, F, T) input
    assert report.passed and report.input_shape == (2, 3, 7)
    mine = randomise(torch, torch.nn.LSTM(3, 4, batch_first=True))
    assert layoutconv.verify(layoutconv.from_torch(mine), native=mine, x=x).passed


def test_stacked_and_projected_modules(torch, tr, rng):
    stacked = randomise(torch, torch.nn.GRU(3, 4, num_layers=2, batch_first=True, dtype=torch.float64, bidirectional=True))
    with pytest.raises(UnsupportedError) as info:
        tr.from_native(stacked)
    assert "num_layers=2" in str(info.value) and "stacked_layers" in str(info.value)
    layers = tr.stacked_layers(stacked)
    assert [type(r).__name__ for r in layers] == ["Bidirectional", "Bidirectional"] and layers[1].input_size == 8
    x = x_for(rng, 3)
    y = x
    for layer in layers:
        y = reference.forward(layer, y)
    assert_close(torch, tr.run(stacked, x), y)
    with pytest.raises(UnsupportedError, match="proj_size=2"):
        tr.from_native(torch.nn.LSTM(3, 4, proj_size=2))

    class Custom(torch.nn.LSTM):
        def forward(self, x, hx=None):  # computes something else
            return super().forward(x * 2, hx)

    with pytest.raises(UnsupportedError, match="override forward"):
        tr.from_native(Custom(3, 4))
