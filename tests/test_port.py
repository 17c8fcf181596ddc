"""port(): real models into hand-written PyTorch modules.

Oracles: DeepCpf1's published example scores (computed by the authors' Keras
1 / Theano model, tests/fixtures/deepcpf1_example), an independent numpy
implementation of DeepCpf1 written here from h5py arrays, and Keras' own
predict for models built in the tests.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

import layoutconv
from layoutconv import ConfigError, VerificationError

torch = pytest.importorskip("torch")
nn = torch.nn

FIXTURES = Path(__file__).parent / "fixtures"
SEQ_FILE = FIXTURES / "legacy_keras" / "deepcpf1_Seq_deepCpf1_weights_keras1_theano.h5"
FULL_FILE = FIXTURES / "legacy_keras" / "deepcpf1_DeepCpf1_weights_keras1_theano.h5"
F32 = dict(rtol=1.3e-6, atol=1e-5)


def _examples() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One-hot sequences (N, 34, 4), accessibility (N, 1) x 100, and the published scores, as DeepCpf1.py reads them."""
    rows = [line.split("\t") for line in (FIXTURES / "deepcpf1_example" / "output_example.txt").read_text().splitlines()[1:] if line.strip()]
    seq = np.zeros((len(rows), 34, 4), dtype=np.float32)
    for n, row in enumerate(rows):
        for i, base in enumerate(row[1]):
            seq[n, i, "ACGT".index(base.upper())] = 1
    ca = np.array([[int(row[3]) * 100] for row in rows], dtype=np.float32)
    return seq, ca, np.array([float(row[4]) for row in rows]), np.array([float(row[5]) for row in rows])


def _arrays(path: Path) -> dict[str, list[np.ndarray]]:
    with h5py.File(path, "r") as f:
        return {name.decode(): [np.array(f[name.decode()][w]) for w in f[name.decode()].attrs["weight_names"]] for name in f.attrs["layer_names"]}


def _numpy_deepcpf1(path: Path, seq: np.ndarray, ca: np.ndarray | None) -> np.ndarray:
    """DeepCpf1 as its authors' Keras 1 / Theano model computed it, written as loops over the stored arrays.

    Theano's conv2d is a true convolution: tap j of the stored kernel meets input position t + (K - 1 - j).
    """
    w = _arrays(path)
    conv = next(k for k in w if k.startswith("convolution1d"))
    kernel, bias = w[conv][0][:, 0], w[conv][1]  # (5, 4, 80): (filter_length, input_dim, nb_filter)
    dense = sorted((k for k in w if k.startswith("dense") and w[k]), key=lambda k: int(k.split("_")[1]))
    out = []
    for n in range(seq.shape[0]):
        c = np.zeros((30, 80))
        for t in range(30):
            for f in range(80):
                c[t, f] = bias[f] + sum(seq[n, t + 4 - j, ch] * kernel[j, ch, f] for j in range(5) for ch in range(4))
        h = np.maximum(c, 0).reshape(15, 2, 80).mean(axis=1).reshape(-1)  # AveragePooling1D(2), then Keras' Flatten (t, f)
        for name in dense[:3]:
            h = np.maximum(h @ w[name][0] + w[name][1], 0)
        if ca is not None:
            h = h * np.maximum(ca[n] @ w[dense[3]][0] + w[dense[3]][1], 0)
        out.append(h @ w[dense[-1]][0] + w[dense[-1]][1])
    return np.array(out)


class SeqDeepCpf1(nn.Module):
    """A hand-written twin: modules registered in another order than the file, flattening channels first."""

    def __init__(self) -> None:
        super().__init__()
        self.out = nn.Linear(40, 1)
        self.fc3 = nn.Linear(40, 40)
        self.fc2 = nn.Linear(80, 40)
        self.fc1 = nn.Linear(1200, 80)
        self.drop = nn.Dropout(0.3)
        self.pool = nn.AvgPool1d(2)
        self.conv = nn.Conv1d(4, 80, 5)

    def features(self, x):  # x: (N, 4, 34), channels first
        x = self.pool(torch.relu(self.conv(x))).flatten(1)
        x = torch.relu(self.fc1(self.drop(x)))
        x = torch.relu(self.fc2(self.drop(x)))
        return torch.relu(self.fc3(self.drop(x)))

    def forward(self, x):
        return self.out(self.drop(self.features(x)))


class DeepCpf1(SeqDeepCpf1):
    def __init__(self) -> None:
        super().__init__()
        self.ca = nn.Linear(1, 40)

    def forward(self, x, ca):
        gate = torch.relu(self.ca(ca))  # runs before the sequence branch: execution order differs from the file's
        return self.out(self.drop(self.features(x) * gate))


def test_seq_deepcpf1_weights_only_file_into_a_hand_written_module():
    seq, _, published, _ = _examples()
    net = SeqDeepCpf1()
    x = torch.from_numpy(seq.transpose(0, 2, 1).copy())
    report = layoutconv.port(str(SEQ_FILE), net, example_inputs=x)
    assert not report.verified  # weights only: nothing can run the source
    assert [(m.source, m.target) for m in report.mappings] == [
        ("convolution1d_157", "conv"), ("dense_490", "fc1"), ("dense_491", "fc2"), ("dense_492", "fc3"), ("dense_493", "out"),
    ]
    assert any("columns permuted" in n for n in report.mappings[1].notes)
    with torch.no_grad():
        got = net.eval()(x).numpy()[:, 0]
    np.testing.assert_allclose(got, _numpy_deepcpf1(SEQ_FILE, seq, None)[:, 0], **F32)
    # the authors' printed scores (6 decimals, computed in float32 by Theano)
    np.testing.assert_allclose(got, published, rtol=0, atol=5e-5)


def test_deepcpf1_two_inputs_whose_branches_run_in_another_order():
    seq, ca, _, published = _examples()
    x = torch.from_numpy(seq.transpose(0, 2, 1).copy())
    net = DeepCpf1()
    report = layoutconv.port(str(FULL_FILE), net, example_inputs=(x, torch.from_numpy(ca)))
    assert ("dense_8", "ca") in [(m.source, m.target) for m in report.mappings]  # by shape: the module run first
    with torch.no_grad():
        got = net.eval()(x, torch.from_numpy(ca)).numpy()[:, 0]
    np.testing.assert_allclose(got, _numpy_deepcpf1(FULL_FILE, seq, ca)[:, 0], **F32)
    np.testing.assert_allclose(3 * got, published, rtol=0, atol=2e-4)  # DeepCpf1.py prints 3 x the output


def test_a_mapping_pins_pairs_and_a_misfit_names_the_candidates():
    seq, ca, _, _ = _examples()
    x = torch.from_numpy(seq.transpose(0, 2, 1).copy())
    net = DeepCpf1()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ConfigError, match="does not fit") as info:
        layoutconv.port(str(FULL_FILE), net, example_inputs=(x, torch.from_numpy(ca)), mapping={"dense_8": "fc3"})
    assert "fc3" in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # a refused port wrote nothing
    report = layoutconv.port(str(FULL_FILE), net, example_inputs=(x, torch.from_numpy(ca)), mapping={"dense_8": "ca", "dense_7": "fc3"})
    assert [(m.source, m.target) for m in report.mappings][:2] == [("dense_8", "ca"), ("convolution1d_2", "conv")]


# -- Keras models in memory: the source runs, so port verifies ----------------------------------------


@pytest.fixture(scope="module")
def keras_model():
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(7)
    inp = keras.Input((33, 5))
    x = keras.layers.Conv1D(7, 5, activation="relu", padding="same", name="conv1d")(inp)
    x = keras.layers.MaxPooling1D(3, name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(9, activation="tanh", name="dense")(x)
    x = keras.layers.BatchNormalization(name="batch_normalization")(x)
    out = keras.layers.Dense(3, name="dense_1")(x)
    model = keras.Model(inp, out)
    for layer in model.layers:
        layer.set_weights([rng.normal(size=a.shape).astype(a.dtype) * 0.5 for a in layer.get_weights()])
    bn = model.layers[-2]
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([gamma, beta, mean, np.abs(var) + 0.05])  # small variances: epsilon matters
    return model


class Twin(nn.Module):
    def __init__(self, pad=(2, 2)) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(9)  # eps 1e-5: Keras' is 1e-3
        self.conv = nn.Conv1d(5, 7, 5)
        self.head = nn.Linear(9, 3)
        self.fc = nn.Linear(7 * 11, 9)
        self.pad = pad

    def forward(self, x):
        x = torch.relu(self.conv(nn.functional.pad(x, self.pad)))
        x = nn.functional.max_pool1d(x, 3)
        return self.head(self.bn(torch.tanh(self.fc(x.flatten(1)))))


def test_keras_model_into_a_twin_verifies_end_to_end(keras_model):
    x = np.random.default_rng(3).normal(size=(4, 33, 5)).astype(np.float32)
    net = Twin()
    report = layoutconv.port(keras_model, net, example_inputs=torch.from_numpy(x.transpose(0, 2, 1).copy()))
    assert report.verified and report.passed, str(report)
    assert any("eps set to 0.001" in n for m in report.mappings for n in m.notes)
    with torch.no_grad():
        got = net(torch.from_numpy(x.transpose(0, 2, 1).copy())).numpy()
    np.testing.assert_allclose(got, keras_model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_a_twin_that_flattens_channels_last_needs_no_permutation(keras_model):
    class LastTwin(Twin):
        def forward(self, x):
            x = nn.functional.max_pool1d(torch.relu(self.conv(nn.functional.pad(x, self.pad))), 3)
            return self.head(self.bn(torch.tanh(self.fc(x.permute(0, 2, 1).reshape(x.shape[0], -1)))))

    x = np.random.default_rng(4).normal(size=(2, 33, 5)).astype(np.float32)
    net = LastTwin()
    report = layoutconv.port(keras_model, net, example_inputs=torch.from_numpy(x.transpose(0, 2, 1).copy()))
    assert report.passed
    assert not any("columns permuted" in n for m in report.mappings for n in m.notes)


def test_a_missing_activation_fails_names_the_layer_and_leaves_the_module_unchanged(keras_model):
    class NoRelu(Twin):
        def forward(self, x):
            x = nn.functional.max_pool1d(self.conv(nn.functional.pad(x, self.pad)), 3)
            return self.head(self.bn(torch.tanh(self.fc(x.flatten(1)))))

    net = NoRelu()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.from_numpy(np.random.default_rng(5).normal(size=(3, 5, 33)).astype(np.float32))
    with pytest.raises(VerificationError) as info:
        layoutconv.port(keras_model, net, example_inputs=x)
    report = info.value.report
    assert not report.passed
    assert report.first_divergence.source == "dense"
    assert "'relu'" in report.first_divergence.cause and "'conv'" in report.first_divergence.cause
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert net.bn.eps == 1e-5


def test_padding_that_differs_from_keras_same_is_refused_or_caught(keras_model):
    x = torch.from_numpy(np.random.default_rng(6).normal(size=(2, 5, 33)).astype(np.float32))
    with pytest.raises(ConfigError, match="pads differently") as info:
        layoutconv.port(keras_model, Twin(pad=(3, 3)), example_inputs=x)  # 6 pads in total where Keras "same" has 4
    assert "(2, 2)" in str(info.value)
    net = Twin(pad=(1, 3))  # 4 in total, but not where Keras puts them
    with pytest.raises(VerificationError) as caught:
        layoutconv.port(keras_model, net, example_inputs=x)
    first = caught.value.report.first_divergence
    assert first.source == "conv1d" and "before it" in first.cause and "padding" in first.cause


def test_verify_source_against_your_own_module_changes_nothing(keras_model):
    x = torch.from_numpy(np.random.default_rng(8).normal(size=(2, 5, 33)).astype(np.float32))
    net = Twin()
    layoutconv.port(keras_model, net, example_inputs=x)
    report = layoutconv.verify(keras_model, net, x)
    assert report.passed and all(m.notes[0] == "weights equal" for m in report.mappings)
    with torch.no_grad():
        net.fc.bias[0] += 0.25  # one wrong number
    before = {k: v.clone() for k, v in net.state_dict().items()}
    report = layoutconv.verify(keras_model, net, x)
    assert not report.passed
    assert report.first_divergence.source == "dense" and "itself" in report.first_divergence.cause
    assert [m.notes[0] for m in report.mappings if m.source == "dense"] == ["weights differ by up to 0.25"]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_cli_port_into_a_class_from_a_file_and_save(tmp_path, capsys):
    from layoutconv import cli

    (tmp_path / "seqnet.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv1d(4, 80, 5)\n"
        "        self.fc1, self.fc2, self.fc3, self.out = nn.Linear(1200, 80), nn.Linear(80, 40), nn.Linear(40, 40), nn.Linear(40, 1)\n\n"
        "    def forward(self, x):\n"
        "        x = nn.functional.avg_pool1d(torch.relu(self.conv(x)), 2).flatten(1)\n"
        "        return self.out(torch.relu(self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))))\n"
    )
    out = tmp_path / "seq.pt"
    code = cli.main(["port", str(SEQ_FILE), f"{tmp_path / 'seqnet.py'}:Net", "--input-shape", "2,4,34", "--output", str(out)])
    assert code == 0 and "NOT VERIFIED" in capsys.readouterr().out
    net = SeqDeepCpf1()
    state = torch.load(out, weights_only=True)
    net.load_state_dict({"conv.weight": state["conv.weight"], "conv.bias": state["conv.bias"],
                         **{f"{a}.{p}": state[f"{b}.{p}"] for a, b in (("fc1", "fc1"), ("fc2", "fc2"), ("fc3", "fc3"), ("out", "out")) for p in ("weight", "bias")}})
    seq, _, published, _ = _examples()
    with torch.no_grad():
        got = net.eval()(torch.from_numpy(seq.transpose(0, 2, 1).copy())).numpy()[:, 0]
    np.testing.assert_allclose(got, published, rtol=0, atol=5e-5)
    assert cli.main(["port", str(SEQ_FILE), f"{tmp_path / 'seqnet.py'}:Net", "--input-shape", "2,4,34", "--output", str(out)]) == 2  # exists
    assert cli.main(["port", str(SEQ_FILE), f"{tmp_path / 'seqnet.py'}:Nope", "--input-shape", "2,4,34"]) == 2


# -- into a Keras model of your own -------------------------------------------------------------------


class _TorchSource(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 3, padding=1)
        self.bn = nn.BatchNorm1d(6)
        self.fc = nn.Linear(6 * 11, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def _keras_twin(keras, relu=True):
    inp = keras.Input((11, 4))
    h = keras.layers.Conv1D(6, 3, padding="same", name="c")(inp)
    h = keras.layers.BatchNormalization(name="b")(h)
    if relu:
        h = keras.layers.ReLU(name="r")(h)
    return keras.Model(inp, keras.layers.Dense(3, name="d")(keras.layers.Flatten(name="f")(h)))


@pytest.mark.parametrize("flavor", ["keras", "tf_keras"])
def test_pytorch_model_into_your_keras_model(flavor):
    k = pytest.importorskip(flavor)
    torch.manual_seed(1)
    source = _TorchSource().eval()
    with torch.no_grad():
        source.bn.running_mean.normal_()
        source.bn.running_var.uniform_(0.05, 0.2)  # small variances: epsilon 1e-5 vs Keras' 1e-3 matters
    x = torch.randn(3, 4, 11)
    graph = layoutconv.read_model(source, example_inputs=x)
    target = _keras_twin(k)
    x_keras = x.numpy().transpose(0, 2, 1).copy()  # your Keras model takes channels last
    report = layoutconv.port(graph, target, example_inputs=x_keras)
    assert report.passed, str(report)
    notes = {m.target: m.notes for m in report.mappings}
    assert any("epsilon set to 1e-05" in n for n in notes["b"]) and any("columns permuted" in n for n in notes["d"])
    with torch.no_grad():
        np.testing.assert_allclose(target.predict(x_keras, verbose=0), source(x).numpy(), rtol=1e-5, atol=1e-6)


def test_a_keras_target_that_differs_is_restored():
    k = pytest.importorskip("keras")
    torch.manual_seed(2)
    source = _TorchSource().eval()
    x = torch.randn(2, 4, 11)
    graph = layoutconv.read_model(source, example_inputs=x)
    target = _keras_twin(k, relu=False)  # forgets the ReLU
    before = [w.copy() for w in target.get_weights()]
    with pytest.raises(VerificationError) as info:
        layoutconv.port(graph, target, example_inputs=x.numpy().transpose(0, 2, 1).copy())
    assert not info.value.report.passed
    assert all(np.array_equal(a, b) for a, b in zip(before, target.get_weights()))
