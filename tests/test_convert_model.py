"""Whole models to files: .pt and .safetensors state dicts a hand-written PyTorch twin loads as they are."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import layoutconv
from layoutconv import OutputError
from layoutconv.convert_model import save_model

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
nn = torch.nn


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(11)
    inp = keras.Input((29, 6), name="x")
    x = keras.layers.Conv1D(7, 4, activation="relu", padding="same", name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.MaxPooling1D(2, name="pool")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(5, activation="tanh", name="fc")(x)
    m = keras.Model(inp, keras.layers.Dense(2, activation="softmax", name="head")(x))
    for layer in m.layers:
        w = layer.get_weights()
        if layer.name == "bn":
            layer.set_weights([rng.normal(1, 0.2, 7), rng.normal(0, 0.2, 7), rng.normal(0, 0.3, 7), rng.uniform(0.3, 2, 7)])
        elif w:
            layer.set_weights([rng.normal(size=a.shape).astype("float32") * 0.4 for a in w])
    return m


class Twin(nn.Module):
    """What a PyTorch user writes: channels-first input, x.flatten(1), modules named like the Keras layers."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(6, 7, 4)
        self.bn = nn.BatchNorm1d(7, eps=1e-3)
        self.fc = nn.Linear(7 * 14, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        x = self.bn(torch.relu(self.conv(nn.functional.pad(x, (1, 2)))))
        x = nn.functional.max_pool1d(x, 2).flatten(1)
        return torch.softmax(self.head(torch.tanh(self.fc(x))), dim=1)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_state_dict_files_load_into_a_hand_written_twin(model, tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    report = save_model(layoutconv.read_model(model), path)
    assert report.passed
    state = torch.load(path, weights_only=True) if suffix == ".pt" else safetensors_torch.load_file(path)
    twin = Twin().eval()
    twin.load_state_dict(state, strict=True)
    x = np.random.default_rng(2).normal(size=(3, 29, 6)).astype("float32")
    with torch.no_grad():
        got = twin(torch.from_numpy(x.transpose(0, 2, 1).copy())).numpy()
    np.testing.assert_allclose(got, model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_an_existing_output_is_kept_and_nothing_else_is_written(model, tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"mine")
    with pytest.raises(OutputError, match="already exists"):
        save_model(layoutconv.read_model(model), path)
    assert path.read_bytes() == b"mine" and sorted(os.listdir(tmp_path)) == ["model.pt"]


def test_cli_converts_a_whole_keras_file(model, tmp_path):
    source = tmp_path / "m.keras"
    model.save(source)
    out = tmp_path / "m.safetensors"
    run = subprocess.run([sys.executable, "-m", "layoutconv", "convert", str(source), str(out)], capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "PASSED" in run.stdout and out.exists()
    assert sorted(safetensors_torch.load_file(out)) == sorted(Twin().state_dict())


def test_cli_converts_a_pytorch_state_dict_with_its_class(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from layoutconv import cli
    from layoutconv.adapters import onnx_layers

    (tmp_path / "twin.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv, self.bn, self.fc = nn.Conv1d(6, 7, 4), nn.BatchNorm1d(7), nn.Linear(7 * 13, 2)\n\n"
        "    def forward(self, x):\n"
        "        x = nn.functional.max_pool1d(self.bn(torch.relu(self.conv(x))), 2)\n"
        "        return self.fc(x.flatten(1))\n"
    )
    import importlib.util

    spec = importlib.util.spec_from_file_location("twin_for_test", tmp_path / "twin.py")
    twin_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(twin_module)
    torch.manual_seed(4)
    net = twin_module.Net().eval()
    with torch.no_grad():
        net.bn.running_var.uniform_(0.5, 2.0)
    torch.save(net.state_dict(), tmp_path / "net.pt")
    out = tmp_path / "net.onnx"
    assert cli.main(["convert", str(tmp_path / "net.pt"), str(out), "--architecture", f"{tmp_path / 'twin.py'}:Net", "--input-shape", "1,6,29"]) == 0
    x = np.random.default_rng(1).normal(size=(3, 6, 29)).astype("float32")
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    import onnx

    np.testing.assert_allclose(onnx_layers.run(onnx.load(out), x), expected, rtol=1e-5, atol=1e-6)
    assert cli.main(["convert", str(tmp_path / "net.pt"), str(tmp_path / "other.onnx")]) == 2  # no class: refused, nothing written
    assert not (tmp_path / "other.onnx").exists()
