"""ONNX external data (``model.onnx.data``): written by the whole-model writer, read back safely, hostile files refused.

Oracles: ``layoutconv.to_onnx`` of the same graph held in memory (the model must
be that one, with the weights moved out), onnx's own loader, onnxruntime on
both, and the numpy reference.  Small models with external data forced; the
>2 GiB case is measured by hand (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import layoutconv
from layoutconv import FileFormatError, OutputError, UnsafeFileError, UnsupportedError, layers
from layoutconv.convert_model import save_model
from layoutconv.graph import Graph, Input, Node

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from layoutconv.adapters import onnx_external as E  # noqa: E402
from layoutconv.adapters import onnx_layers as L  # noqa: E402
from layoutconv import _stream_files as SF  # noqa: E402

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def odd_graph(seed=3, dtype=np.float32):
    """Conv1D (same, stride 2) -> BatchNorm -> Flatten -> Dense -> Dense: odd sizes, random values, weights of 52 B to 12 kB."""
    rng = np.random.default_rng(seed)
    r = lambda *s: rng.standard_normal(s).astype(dtype)  # noqa: E731
    conv = layoutconv.Conv(r(13, 5, 7), r(13), stride=2, padding="same_upper", activation="relu")
    bn = layers.BatchNorm(r(13), rng.uniform(0.5, 2, 13).astype(dtype), r(13), r(13))
    return Graph(
        {"conv": conv, "bn": bn, "flat": layers.Flatten("channels_first"), "fc": layers.Dense(r(37, 13 * 12), r(37), activation="tanh"),
         "head": layers.Dense(r(3, 37), r(3))},
        [Input("x", (5, 23), "channels_first")],
        [Node("c", "conv", ("x",), "channels_first"), Node("b", "bn", ("c",), "channels_first"), Node("f", "flat", ("b",), "flat"),
         Node("d", "fc", ("f",), "flat"), Node("y", "head", ("d",), "flat")],
        ["y"], name="odd",
    )  # fmt: skip


def weights_of(graph):
    out = {}
    for name, record in graph.layers.items():
        for a in getattr(record, "ARRAYS", ()):
            v = getattr(record, a, None)
            if isinstance(v, np.ndarray):
                out[f"{name}.{a}"] = v
    return out


def assert_same_weights(a, b):
    wa, wb = weights_of(a), weights_of(b)
    assert sorted(wa) == sorted(wb)
    for k in wa:
        assert wa[k].dtype == wb[k].dtype and wa[k].shape == wb[k].shape and wa[k].tobytes() == wb[k].tobytes(), k


# -- writing -----------------------------------------------------------------------------------------


def test_whole_model_with_external_data_is_the_in_memory_model_with_its_weights_moved_out(tmp_path):
    graph = odd_graph()
    path = tmp_path / "m.onnx"
    report = save_model(graph, path, external_data=True)
    assert report.passed
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data"]  # no temporary left
    stored = onnx.load(str(path), load_external_data=False)
    external = {t.name: E.external_fields(t) for t in stored.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    inline = {t.name: len(t.raw_data) for t in stored.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL}
    assert sorted(external) == ["conv.weight", "fc.weight"]  # at least 1024 bytes each; the rest stays in the model
    assert all(n < E.EXTERNAL_MIN_BYTES for n in inline.values())
    for fields in external.values():
        assert fields["location"] == "m.onnx.data" and int(fields["offset"]) % E.ALIGNMENT == 0
    assert os.path.getsize(tmp_path / "m.onnx.data") == max(int(f["offset"]) + int(f["length"]) for f in external.values())

    # onnx's own loader: the in-memory model, tensor for tensor and node for node
    back, memory = onnx.load(str(path)), layoutconv.to_onnx(graph)
    for t in back.graph.initializer:
        t.ClearField("data_location")
    assert back.SerializeToString() == memory.SerializeToString()

    # layoutconv's reader: every weight bit for bit; onnxruntime from the files: the in-memory model's outputs exactly
    assert_same_weights(layoutconv.read_model(path), graph)
    x = np.random.default_rng(8).standard_normal((4, 5, 23)).astype(np.float32)
    y = L.run(str(path), [x])
    assert np.array_equal(y, L.run(memory, [x]))
    expected = layoutconv.reference.forward(graph, x)
    assert np.max(np.abs(y - expected)) <= 1e-5 * np.max(np.abs(expected))


def test_float16_and_float64_weights_round_trip_bit_for_bit(tmp_path):
    for dtype in (np.float16, np.float64):
        graph = odd_graph(seed=4, dtype=dtype)
        path = tmp_path / f"{np.dtype(dtype).name}.onnx"
        model = L.write_graph(graph, store=E.DataWriter(tmp_path / f"{path.name}.data", f"{path.name}.data").store, check=False)
        E.save(model, str(path))
        E.check_path(str(path), "it")
        assert_same_weights(layoutconv.read_model(path), graph)


def test_large_weights_go_external_on_their_own_and_can_be_kept_inside(tmp_path, monkeypatch):
    graph = odd_graph()
    monkeypatch.setattr(E, "EXTERNAL_ABOVE", 1000)
    save_model(graph, tmp_path / "auto.onnx")
    save_model(graph, tmp_path / "inside.onnx", external_data=False)
    assert sorted(os.listdir(tmp_path)) == ["auto.onnx", "auto.onnx.data", "inside.onnx"]
    monkeypatch.setattr(E, "INLINE_LIMIT", 1000)
    with pytest.raises(UnsupportedError, match=r"too many weight bytes.*save_model"):
        layoutconv.to_onnx(graph)


def test_existing_data_file_is_kept_unless_forced(tmp_path):
    (tmp_path / "m.onnx.data").write_bytes(b"mine")
    with pytest.raises(OutputError, match=r"m\.onnx\.data.*already exists"):
        save_model(odd_graph(), tmp_path / "m.onnx", external_data=True)
    assert os.listdir(tmp_path) == ["m.onnx.data"] and (tmp_path / "m.onnx.data").read_bytes() == b"mine"
    save_model(odd_graph(), tmp_path / "m.onnx", external_data=True, overwrite=True)
    assert_same_weights(layoutconv.read_model(tmp_path / "m.onnx"), odd_graph())


def test_a_model_that_fails_its_check_leaves_nothing(tmp_path):
    graph = odd_graph(dtype=np.float64)  # onnxruntime has no float64 Conv: the file cannot be verified
    with pytest.raises(UnsupportedError, match="could not be verified"):
        save_model(graph, tmp_path / "m.onnx", external_data=True)
    assert os.listdir(tmp_path) == []


def test_inspect_and_cli_convert_read_and_write_external_data(tmp_path):
    path = tmp_path / "m.onnx"
    save_model(odd_graph(), path, external_data=True)
    run = subprocess.run([sys.executable, "-m", "layoutconv", "inspect", str(path), "--json"], capture_output=True, text=True, env=ENV, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "fc.weight" in run.stdout and "conv.weight" in run.stdout
    run = subprocess.run([sys.executable, "-m", "layoutconv", "verify", "--file", str(path), "--layer", "c", "--frameworks", "onnx,torch", "--workers", "1"],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert run.returncode == 0 and "PASSED" in run.stdout, run.stdout + run.stderr
    run = subprocess.run([sys.executable, "-m", "layoutconv", "convert", str(path), str(tmp_path / "again.onnx"), "--model", "--external-data", "--json"],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout[run.stdout.index("{"):])["passed"]
    assert (tmp_path / "again.onnx.data").read_bytes() == (tmp_path / "m.onnx.data").read_bytes()


# -- reading hostile files ---------------------------------------------------------------------------


def _with_external(tmp_path, fields, data=None, second=None):
    """A one-Dense model whose weight is external with ``fields``; ``data`` the bytes of the file it names."""
    graph = Graph({"fc": layers.Dense(np.arange(24 * 20, dtype=np.float32).reshape(24, 20))}, [Input("x", (20,), "flat")],
                  [Node("y", "fc", ("x",), "flat")], ["y"], name="one")  # fmt: skip
    model = layoutconv.to_onnx(graph)
    w = model.graph.initializer[0]
    good = w.raw_data
    w.ClearField("raw_data")
    w.data_location = onnx.TensorProto.EXTERNAL
    for key, value in fields.items():
        entry = w.external_data.add()
        entry.key, entry.value = key, str(value)
    if second is not None:
        t = onnx.TensorProto()
        t.CopyFrom(w)
        t.name = "fc.second"
        del t.external_data[:]
        for key, value in second.items():
            entry = t.external_data.add()
            entry.key, entry.value = key, str(value)
        model.graph.initializer.append(t)
    if data is not None:
        (tmp_path / "w.data").write_bytes(good if data == "good" else data)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path, good


def test_the_hostile_file_helper_makes_a_readable_file(tmp_path):
    path, good = _with_external(tmp_path, {"location": "w.data", "offset": 0, "length": 1920}, "good")
    assert layoutconv.read_model(path).layers["fc"].kernel.tobytes() == good


NBYTES = 24 * 20 * 4


@pytest.mark.parametrize(
    "fields, setup, cls, words",
    [
        pytest.param({"location": "../w.data"}, None, UnsafeFileError, ["plain file name", "../w.data"], id="parent"),
        pytest.param({"location": "/etc/passwd"}, None, UnsafeFileError, ["plain file name"], id="absolute"),
        pytest.param({"location": "sub/w.data"}, "sub", UnsafeFileError, ["plain file name"], id="subfolder"),
        pytest.param({"location": "..\\w.data"}, None, UnsafeFileError, ["plain file name"], id="backslash"),
        pytest.param({"location": "C:w.data"}, None, UnsafeFileError, ["plain file name"], id="drive"),
        pytest.param({"location": ""}, None, UnsafeFileError, ["plain file name"], id="no-location"),
        pytest.param({"location": "link.data"}, "symlink", UnsafeFileError, ["symbolic link"], id="symlink"),
        pytest.param({"location": "fifo.data"}, "fifo", UnsafeFileError, ["not a regular file"], id="fifo-never-read"),
        pytest.param({"location": "dir.data"}, "dir", UnsafeFileError, ["not a regular file"], id="directory"),
        pytest.param({"location": "w.data", "offset": 1 << 30, "length": NBYTES}, None, UnsafeFileError, ["past the end", "offset 1073741824"], id="offset-beyond"),
        pytest.param({"location": "w.data", "offset": 0, "length": 10**18}, None, UnsafeFileError, ["past the end"], id="absurd-length"),
        pytest.param({"location": "w.data", "offset": 4, "length": NBYTES}, None, UnsafeFileError, ["past the end"], id="last-bytes-missing"),
        pytest.param({"location": "w.data", "offset": 0, "length": 16}, None, FileFormatError, ["does not hold the data its dims declare"], id="length-not-dims"),
        pytest.param({"location": "w.data", "offset": "-4"}, None, UnsafeFileError, ["not a decimal number"], id="negative-offset"),
        pytest.param({"location": "w.data", "offset": "0x10"}, None, UnsafeFileError, ["not a decimal number"], id="hex-offset"),
        pytest.param({"location": "w.data", "basepath": "/etc"}, None, UnsafeFileError, ["key", "basepath"], id="basepath"),
        pytest.param({"location": "missing.data"}, None, FileFormatError, ["cannot be found"], id="missing"),
    ],
)
def test_hostile_external_data_is_refused_before_anything_is_read(tmp_path, fields, setup, cls, words):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "w.data").write_bytes(bytes(NBYTES))  # beside the folder: what '../w.data' would reach
    path, _ = _with_external(folder, fields, "good")
    if setup == "sub":
        (folder / "sub").mkdir()
        (folder / "sub" / "w.data").write_bytes(bytes(NBYTES))
    elif setup == "symlink":
        os.symlink(folder / "w.data", folder / "link.data")
    elif setup == "fifo":
        os.mkfifo(folder / "fifo.data")  # reading it would block: the check must come first
    elif setup == "dir":
        (folder / "dir.data").mkdir()
    for read in (layoutconv.read_model, layoutconv.from_onnx):
        with pytest.raises(cls) as info:
            read(path)
        for word in words:
            assert word in str(info.value)


def test_overlapping_tensors_and_in_memory_models_are_refused(tmp_path):
    path, _ = _with_external(tmp_path, {"location": "w.data", "offset": 0, "length": NBYTES}, "good",
                             second={"location": "w.data", "offset": 0, "length": NBYTES})
    with pytest.raises(UnsafeFileError, match="share bytes"):
        layoutconv.read_model(path)
    path, _ = _with_external(tmp_path, {"location": "w.data", "offset": 0, "length": NBYTES}, "good")
    with pytest.raises(UnsafeFileError, match="no directory"):
        layoutconv.read_model(onnx.load(str(path), load_external_data=False))


def test_the_total_is_capped(tmp_path, monkeypatch):
    path, _ = _with_external(tmp_path, {"location": "w.data", "offset": 0, "length": NBYTES}, "good")
    monkeypatch.setattr(E, "MAX_EXTERNAL_BYTES", NBYTES - 1)
    with pytest.raises(UnsafeFileError, match="beyond the cap"):
        layoutconv.read_model(path)


def test_cli_inspect_refuses_traversal_in_one_line(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    path, _ = _with_external(folder, {"location": "../../../../etc/passwd"})
    run = subprocess.run([sys.executable, "-m", "layoutconv", "inspect", str(path)], capture_output=True, text=True, env=ENV, timeout=300)
    assert run.returncode == 2 and run.stdout == "" and len(run.stderr.strip().splitlines()) == 1
    assert "plain file name" in run.stderr and "etc/passwd" in run.stderr


def test_onnxruntime_runs_external_data_from_a_path_only(tmp_path):
    path, _ = _with_external(tmp_path, {"location": "w.data", "offset": 0, "length": NBYTES}, "good")
    x = np.ones((2, 20), np.float32)
    assert L.run(str(path), [x]).shape == (2, 24)
    with pytest.raises(UnsafeFileError, match="no directory"):
        L.run(onnx.load(str(path), load_external_data=False), [x])


@pytest.mark.parametrize("chunk", [1 << 20, 96, 7], ids=["one-chunk", "rows-per-chunk", "rows-larger-than-a-chunk"])
def test_strided_weights_are_written_in_chunks_bit_for_bit(tmp_path, monkeypatch, chunk):
    """Transposed and sliced views (as records hold Keras kernels) written in chunks: the bytes of their C-order copy."""
    monkeypatch.setattr(SF, "CHECK_CHUNK", chunk)
    rng = np.random.default_rng(5)
    arrays = {
        "t2": rng.standard_normal((37, 29)).astype(np.float32).T,
        "t4": rng.standard_normal((3, 2, 11, 13)).astype(np.float64).transpose(3, 2, 0, 1),
        "sliced": rng.standard_normal((40, 70)).astype(np.float16)[::2, 3:67],
        "big-endian": rng.standard_normal((37, 9)).astype(">f4"),  # 1332 bytes: external
        "contiguous": rng.standard_normal((300,)).astype(np.float32),
    }
    writer = E.DataWriter(tmp_path / "w.data", "w.data")
    stored = {k: writer.store(k, k, a) for k, a in arrays.items()}
    writer.close()
    data = (tmp_path / "w.data").read_bytes()
    for k, a in arrays.items():
        f = E.external_fields(stored[k])
        start, n = int(f["offset"]), int(f["length"])
        assert start % E.ALIGNMENT == 0 and n == a.nbytes
        assert data[start : start + n] == np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes(), k
        assert b"".join(c.tobytes() for c in SF.c_order_chunks(a, np.empty(chunk, np.uint8))) == data[start : start + n], k
        ahead = SF.c_order_chunks(a, np.empty(chunk, np.uint8), np.empty(chunk, np.uint8))  # the next chunk copied in a thread
        assert b"".join(c.tobytes() for c in ahead) == data[start : start + n], k
