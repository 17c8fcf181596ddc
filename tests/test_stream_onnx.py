"""``convert --stream`` to ``.onnx``: the structure from the Keras config, the weights streamed into ``<name>.onnx.data``.

Oracles: the whole-model path with external data (the same two files, byte for
byte), Keras ``predict`` on the streamed model run by onnxruntime from the
files, and layoutconv's reader (every weight bit for bit).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import layoutconv
from layoutconv import ConfigError, convert_stream
from layoutconv.convert_model import save_model
from layoutconv.convert_stream import stream_model

keras = pytest.importorskip("keras")
onnx = pytest.importorskip("onnx")
pytest.importorskip("torch")  # the helpers below come from the .safetensors/.pt stream's tests
from test_convert_stream import conv_kinds_model, files, mixed_inputs, mixed_model, model, recurrent_model  # noqa: E402,F401 (fixtures: model, files)

from layoutconv.adapters import onnx_layers as L  # noqa: E402

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def assert_same_files(a, b):
    """The model and its data file, byte for byte."""
    assert a.read_bytes() == b.read_bytes()
    assert (a.parent / f"{a.name}.data").read_bytes() == (b.parent / f"{b.name}.data").read_bytes()


def streamed_and_whole(source, arch, tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "w").mkdir()
    streamed, whole = tmp_path / "s" / "m.onnx", tmp_path / "w" / "m.onnx"
    report = stream_model(source, streamed, architecture=arch)
    assert report.passed and report.target == "onnx"
    assert save_model(layoutconv.read_model(source, architecture=arch), whole, external_data=True).passed
    return report, streamed, whole


@pytest.mark.parametrize("source", ["keras", "h5", "weights"])
def test_stream_equals_whole_model_path_byte_for_byte(files, tmp_path, source):
    path, arch = files[source]
    report, streamed, whole = streamed_and_whole(path, arch, tmp_path)
    assert_same_files(streamed, whole)
    assert sorted(os.listdir(streamed.parent)) == ["m.onnx", "m.onnx.data"]  # no temporary left
    stored = onnx.load(str(streamed), load_external_data=False)
    external = [t for t in stored.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and report.tensors == len([t for t in stored.graph.initializer if "." in t.name])
    assert sorted(c.layer for c in report.layers) == sorted(["conv2d", "bn", "fc", "embed", "conv1d", "lstm", "head"])


def test_streamed_onnx_matches_keras_and_reads_back_bit_for_bit(model, files, tmp_path):
    out = tmp_path / "m.onnx"
    stream_model(files["keras"][0], out)
    xs = mixed_inputs(n=4)
    want = np.asarray(model.predict(xs, verbose=0))
    got = L.run(str(out), [xs[0], xs[1].astype(np.int64)])
    assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))
    back, source = layoutconv.read_model(out), layoutconv.read_model(files["keras"][0])
    for name, record in source.layers.items():
        for a in getattr(record, "ARRAYS", ()):
            v = getattr(record, a, None)
            if isinstance(v, np.ndarray):
                w = getattr(back.layers[name], a)
                assert w.dtype == v.dtype and w.tobytes() == v.tobytes(), (name, a)


@pytest.mark.parametrize("make", [recurrent_model, conv_kinds_model], ids=["bidirectional-gru-rnn", "separable-depthwise-transpose-layernorm"])
def test_more_layer_kinds_stream_like_the_whole_path(tmp_path, make, monkeypatch):
    from layoutconv.adapters import onnx_external

    monkeypatch.setattr(onnx_external, "EXTERNAL_MIN_BYTES", 0)  # every weight in the data file, however small
    m = make()
    m.save(tmp_path / "m.keras")
    _, streamed, whole = streamed_and_whole(tmp_path / "m.keras", None, tmp_path)
    assert_same_files(streamed, whole)
    stored = onnx.load(str(streamed), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in stored.graph.initializer if "." in t.name)
    x = np.random.default_rng(2).standard_normal((3, *m.input_shape[1:])).astype(np.float32)
    want = np.asarray(m.predict(x, verbose=0))
    assert np.max(np.abs(L.run(str(streamed), [x]) - want)) <= 1e-5 * np.max(np.abs(want))


def test_a_corrupt_weight_fails_mid_stream_and_leaves_nothing(files, tmp_path):
    import h5py

    bad = tmp_path / "bad.h5"
    bad.write_bytes(files["h5"][0].read_bytes())
    with h5py.File(bad, "r+") as f:
        names = []
        f["model_weights/head"].visit(names.append)
        d = f["model_weights/head"][next(n for n in names if n.endswith("kernel"))]
        values = d[()]
        values[0, 0] = np.nan  # the last layer: every other layer is in the data file by then
        d[...] = values
    with pytest.raises(ConfigError, match="non-finite"):
        stream_model(bad, tmp_path / "m.onnx")
    assert sorted(os.listdir(tmp_path)) == ["bad.h5"]


def cli(*argv):
    return subprocess.run([sys.executable, "-m", "layoutconv", *map(str, argv)], capture_output=True, text=True, env=ENV, timeout=300)


def test_cli_streams_onnx_and_reports_json(files, tmp_path):
    run = cli("convert", files["h5"][0], tmp_path / "m.onnx", "--stream", "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["streamed"] and report["passed"] and report["target"] == "onnx" and report["wrote"].endswith("m.onnx")
    run = cli("convert", files["h5"][0], tmp_path / "n.onnx", "--stream", "--no-external-data")
    assert run.returncode == 2 and "external data" in run.stderr and not (tmp_path / "n.onnx").exists()
    run = cli("inspect", tmp_path / "m.onnx")
    assert run.returncode == 0, run.stderr


def test_cli_streams_big_files_to_onnx_on_its_own(files, tmp_path, monkeypatch, capsys):
    from layoutconv import cli as cli_module

    monkeypatch.setattr(convert_stream, "STREAM_ABOVE", 0)
    assert cli_module.main(["convert", str(files["keras"][0]), str(tmp_path / "big.onnx"), "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):])["streamed"]
    assert cli_module.main(["convert", str(files["keras"][0]), str(tmp_path / "inside.onnx"), "--no-external-data", "--json"]) == 0
    out = capsys.readouterr().out
    assert "streamed" not in json.loads(out[out.index("{"):])
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data", "inside.onnx"]


PEAK = r"""
import sys
from layoutconv import cli
code = cli.main(sys.argv[1:]) if len(sys.argv) > 1 else 0
if len(sys.argv) == 1:
    import layoutconv._stream_onnx, layoutconv.adapters.onnx_layers, layoutconv.adapters.onnx_external, h5py, onnx, onnxruntime
with open("/proc/self/status") as f:
    print("VMHWM_KB", next(int(line.split()[1]) for line in f if line.startswith("VmHWM")))
sys.exit(code)
"""


def _peak(*argv):
    run = subprocess.run([sys.executable, "-c", PEAK, *map(str, argv)], capture_output=True, text=True, env=ENV, timeout=300)
    assert run.returncode == 0, run.stderr
    return int(run.stdout.rsplit("VMHWM_KB", 1)[1].split()[0]) << 10


def test_the_stream_holds_two_copies_of_the_largest_tensor_at_most(tmp_path):
    """Peak RSS of `convert --stream` to .onnx, over a process that only imports what it imports: within two copies of
    the largest tensor (144 MB, transposed for ONNX) and 128 MiB (measured: two copies and 36 MiB; a third copy held at the peak would fail)."""
    L = keras.layers
    inp = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(16, 3, name="conv")(inp)
    x = L.Flatten(name="flat")(x)
    x = L.Dense(6000, name="fc1")(x)  # 576 x 6000: 14 MB
    x = L.Dense(6000, name="fc2")(x)  # 6000 x 6000: 144 MB, the largest
    out = L.Dense(7, name="head")(x)
    keras.Model(inp, out).save(tmp_path / "m.keras")
    largest = 6000 * 6000 * 4
    peak = _peak("convert", tmp_path / "m.keras", tmp_path / "m.onnx", "--stream", "--quiet")
    base = _peak()
    assert (tmp_path / "m.onnx.data").stat().st_size > largest
    print(f"peak {peak >> 20} MiB, imports {base >> 20} MiB, largest {largest >> 20} MiB")
    assert peak - base <= 2 * largest + (128 << 20), (peak >> 20, base >> 20, largest >> 20)
