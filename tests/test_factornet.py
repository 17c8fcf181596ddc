"""FactorNet, a published Keras 1.1 / Theano model, read from its weights-only file and model.json.

It has all the traps: a shared Theano Conv1D (flipped kernels), TimeDistributed
Dense, max pooling, a Bidirectional LSTM with Keras 1's hard_sigmoid and its
12 separate matrices per direction, a Keras-order Flatten, and an averaging
Merge of two inputs (a sequence and its reverse complement).

The expected output is computed here, independently: numpy over the arrays as
h5py reads them, following Keras 1.1's own step equations
(tests/recurrent_oracle.py for the LSTM cell), not layoutconv's code.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

import layoutconv
from layoutconv import reference

from recurrent_oracle import keras1_lstm

FIXTURES = Path(__file__).parent / "fixtures" / "legacy_keras"
WEIGHTS = FIXTURES / "factornet_FOXA1_onePeak_DGF_final_model.hdf5"
ARCHITECTURE = FIXTURES / "factornet_FOXA1_onePeak_DGF_model.json"


def _inputs(n: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One-hot DNA (A, C, G, T) plus a DNase signal channel; the second input is the reverse complement."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 1002, 5), dtype=np.float32)
    for i in range(n):
        x[i, np.arange(1002), rng.integers(0, 4, 1002)] = 1
    x[:, :, 4] = rng.gamma(1.0, 0.5, size=(n, 1002))
    return x, x[:, ::-1, [3, 2, 1, 0, 4]].copy()


def _factornet(x: np.ndarray) -> np.ndarray:
    """One branch of FactorNet, as Keras 1.1 on Theano computed it, in float64."""
    with h5py.File(WEIGHTS, "r") as f:
        w = {name: np.array(f[group][name], dtype=np.float64) for group in f.attrs["layer_names"] for name in f[group].attrs["weight_names"]}
        w = {k.decode() if isinstance(k, bytes) else k: v for k, v in w.items()}
    kernel = w["convolution1d_1_W"][:, 0]  # (filter_length 34, input_dim 5, nb_filter 32)
    length = x.shape[1] - 34 + 1
    conv = np.zeros((x.shape[0], length, 32)) + w["convolution1d_1_b"]
    for j in range(34):  # Theano convolves: tap j meets position t + 33 - j
        conv += x[:, 33 - j : 33 - j + length, :].astype(np.float64) @ kernel[j]
    h = np.maximum(conv, 0)
    h = np.maximum(h @ w["dense_1_W"] + w["dense_1_b"], 0)  # TimeDistributed(Dense(32, relu))
    steps = length // 17
    h = h[:, : steps * 17].reshape(x.shape[0], steps, 17, 32).max(axis=2)  # MaxPooling1D(17)

    def gates(prefix: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        return {g: (w[f"{prefix}_W_{g}"], w[f"{prefix}_U_{g}"], w[f"{prefix}_b_{g}"]) for g in "icfo"}

    forward = np.array(keras1_lstm(h, gates("forward_lstm_1")))
    backward = np.array(keras1_lstm(h, gates("backward_lstm_1"), go_backwards=True))[:, ::-1]  # K.reverse(Y_rev, 1)
    h = np.concatenate([forward, backward], axis=-1).reshape(x.shape[0], -1)  # Flatten (t, units)
    h = np.maximum(h @ w["dense_2_W"] + w["dense_2_b"], 0)
    return 1 / (1 + np.exp(-(h @ w["dense_3_W"] + w["dense_3_b"])))


@pytest.fixture(scope="module")
def graph():
    return layoutconv.read_model(str(WEIGHTS), architecture=str(ARCHITECTURE))


@pytest.fixture(scope="module")
def expected():
    x1, x2 = _inputs()
    return (_factornet(x1) + _factornet(x2)) / 2  # Merge(mode='ave')


def test_graph_shape_of_factornet(graph):
    assert [i.name for i in graph.inputs] == ["input_1", "input_2"]
    assert len(graph.nodes) == 15 and len(graph.layers) == 8  # every layer shared by the two branches but the merge
    conv = graph.layers["convolution1d_1"]
    with h5py.File(WEIGHTS, "r") as f:
        stored = np.array(f["convolution1d_1"]["convolution1d_1_W"])
    assert np.array_equal(conv.kernel, np.ascontiguousarray(stored[::-1, 0].transpose(2, 1, 0)))  # Theano flip, O I K


def test_reference_matches_an_independent_keras1_implementation(graph, expected):
    x1, x2 = _inputs()
    np.testing.assert_allclose(reference.forward(graph, x1, x2), expected, rtol=1e-7, atol=1e-9)


def test_pytorch_matches(graph, expected):
    torch = pytest.importorskip("torch")
    x1, x2 = _inputs()
    module = layoutconv.to_torch(graph)
    with torch.no_grad():
        got = module(torch.from_numpy(x1), torch.from_numpy(x2)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)  # float32, a 34x5 conv and 57 LSTM steps
    assert layoutconv.verify(graph, frameworks=["torch"], x=list(_inputs(seed=3))).passed


def test_cli_inspect_lists_every_layer_of_the_model(capsys):
    import json

    from layoutconv import cli

    assert cli.main(["inspect", str(WEIGHTS), "--architecture", str(ARCHITECTURE), "--json"]) == 0
    model = json.loads(capsys.readouterr().out)["model"]
    kinds = [n["record"]["kind"] for n in model["nodes"]]
    assert kinds.count("Bidirectional") == 2 and kinds[-1] == "Merge"
    lstm = next(n for n in model["nodes"] if n["record"]["kind"] == "Bidirectional")["record"]["forward"]
    assert lstm["recurrent_activation"] == "hard_sigmoid_keras2" and lstm["units"] == 32
    assert [n["layout"] for n in model["nodes"][:2]] == ["channels_last", "channels_last"]


def test_onnxruntime_matches(graph, expected):
    pytest.importorskip("onnxruntime")
    from layoutconv.adapters import onnx_layers

    x1, x2 = _inputs()
    proto = layoutconv.to_onnx(graph)
    assert [n.op_type for n in proto.graph.node].count("LSTM") == 2  # one bidirectional node per branch
    np.testing.assert_allclose(onnx_layers.run(proto, [x1, x2]), expected, rtol=1e-5, atol=1e-6)
    back = layoutconv.read_model(proto)
    np.testing.assert_array_equal(reference.forward(back, x1, x2), reference.forward(graph, x1, x2))  # same weights, same records
