"""Streaming conversion (``convert --stream``): whole Keras files to .safetensors / .pt, one layer's weights at a time.

The oracles: the whole-model path's file (same names, dtypes, shapes and bytes,
tensor for tensor), Keras ``predict`` (a GraphModule and a hand-written twin
loading the streamed file), and instrumentation of what the stream holds.
"""

from __future__ import annotations

import gc
import io
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest

import layoutconv
from layoutconv import FileFormatError, OutputError, UnsupportedError
from layoutconv import convert_stream
from layoutconv.convert_model import save_model
from layoutconv.convert_stream import stream_model

from conftest import need

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
nn = torch.nn

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
ROOT = Path(__file__).resolve().parents[1]


def _randomise(model, seed):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if "BatchNormalization" in type(layer).__name__:
            c = weights[0].shape
            layer.set_weights([rng.normal(1, 0.3, c), rng.normal(0, 0.3, c), rng.normal(0, 0.5, c), rng.uniform(0.2, 2.0, c)])
            continue
        layer.set_weights([(rng.normal(size=w.shape) / np.sqrt(max(1, np.prod(w.shape[:-1])))).astype(w.dtype) for w in weights])
    return model


def mixed_model():
    """Two inputs: an image through Conv2D, BatchNorm, Flatten, Dense; ids through Embedding, Conv1D, LSTM; merged."""
    L = keras.layers
    image = keras.Input((9, 7, 3), name="image")
    x = L.Conv2D(5, (3, 2), activation="relu", name="conv2d")(image)
    x = L.BatchNormalization(name="bn")(x)
    x = L.MaxPooling2D(2, name="pool")(x)
    x = L.Flatten(name="flat")(x)
    x = L.Dense(11, activation="tanh", name="fc")(x)
    ids = keras.Input((13,), dtype="int32", name="ids")
    y = L.Embedding(23, 6, name="embed")(ids)
    y = L.Conv1D(7, 3, padding="same", activation="relu", name="conv1d")(y)
    y = L.LSTM(9, name="lstm")(y)
    z = L.Concatenate(name="cat")([x, y])
    out = L.Dense(4, activation="softmax", name="head")(z)
    return _randomise(keras.Model([image, ids], out, name="mixed"), 7)


def mixed_inputs(n=3, seed=5):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, 9, 7, 3)).astype("float32"), rng.integers(0, 23, size=(n, 13)).astype("int32")]


@pytest.fixture(scope="module")
def model():
    return mixed_model()


@pytest.fixture(scope="module")
def files(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("sources")
    model.save(d / "m.keras")
    model.save(d / "m.h5")
    model.save_weights(d / "m.weights.h5")
    (d / "m.json").write_text(model.to_json())
    return {
        "keras": (d / "m.keras", None),
        "h5": (d / "m.h5", None),
        "weights": (d / "m.weights.h5", str(d / "m.json")),
    }


def load(path):
    path = str(path)
    return safetensors_torch.load_file(path) if path.endswith(".safetensors") else torch.load(path, weights_only=True)


def assert_same_file(a, b):
    """Same names, dtypes, shapes and bytes, tensor for tensor."""
    ta, tb = load(a), load(b)
    assert sorted(ta) == sorted(tb)
    for name in ta:
        x, y = ta[name], tb[name]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert x.contiguous().reshape(-1).view(torch.uint8).tolist() == y.contiguous().reshape(-1).view(torch.uint8).tolist(), name


@pytest.mark.parametrize("source", ["keras", "h5", "weights"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_stream_equals_whole_model_path_bit_for_bit(files, tmp_path, source, suffix):
    path, arch = files[source]
    streamed, whole = tmp_path / f"s{suffix}", tmp_path / f"w{suffix}"
    report = stream_model(path, streamed, architecture=arch)
    assert report.passed and report.tensors == len(load(streamed))
    assert save_model(layoutconv.read_model(path, architecture=arch), whole).passed
    assert_same_file(streamed, whole)
    assert sorted(os.listdir(tmp_path)) == sorted([streamed.name, whole.name])  # no temporary left


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_streamed_file_loads_into_graph_module_and_matches_keras(model, files, tmp_path, suffix):
    from layoutconv.adapters.torch_layers import GraphModule
    from layoutconv.graph import flatten_channels_first

    out = tmp_path / f"m{suffix}"
    stream_model(files["keras"][0], out)
    graph = flatten_channels_first(layoutconv.read_model(files["keras"][0]))
    module = GraphModule(graph)
    module.load_state_dict(load(out), strict=True)
    image, ids = mixed_inputs()
    with torch.no_grad():
        got = module(torch.from_numpy(image), torch.from_numpy(ids.astype(np.int64))).numpy()
    np.testing.assert_allclose(got, model.predict([image, ids], verbose=0), rtol=2e-5, atol=2e-6)


class Twin(nn.Module):
    """A hand-written PyTorch model: channels first, x.flatten(1), modules named like the Keras layers."""

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


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_streamed_file_loads_into_a_hand_written_twin(tmp_path, suffix):
    inp = keras.Input((29, 6), name="x")
    x = keras.layers.Conv1D(7, 4, activation="relu", padding="same", name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.MaxPooling1D(2, name="pool")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(5, activation="tanh", name="fc")(x)
    m = _randomise(keras.Model(inp, keras.layers.Dense(2, activation="softmax", name="head")(x)), 3)
    m.save(tmp_path / "twin.keras")
    out = tmp_path / f"twin{suffix}"
    stream_model(tmp_path / "twin.keras", out)
    twin = Twin().eval()
    twin.load_state_dict(load(out), strict=True)
    x = np.random.default_rng(2).normal(size=(3, 29, 6)).astype("float32")
    with torch.no_grad():
        got = twin(torch.from_numpy(x.transpose(0, 2, 1).copy())).numpy()
    np.testing.assert_allclose(got, m.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def recurrent_model():
    L = keras.layers
    inp = keras.Input((7, 3), name="x")
    h = L.Bidirectional(L.LSTM(4, return_sequences=True), name="bi")(inp)
    h = L.GRU(5, return_sequences=True, name="gru")(h)
    h = L.SimpleRNN(3, name="rnn")(h)
    return _randomise(keras.Model(inp, L.Dense(2, name="out")(h)), 8)


def conv_kinds_model():
    L = keras.layers
    inp = keras.Input((12, 10, 4), name="x")
    x = L.SeparableConv2D(6, 3, padding="same", activation="relu", name="sep")(inp)
    x = L.DepthwiseConv2D((3, 2), name="dw")(x)
    x = L.Conv2DTranspose(5, 3, strides=2, padding="same", name="up")(x)
    x = L.LayerNormalization(name="ln")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return _randomise(keras.Model(inp, L.Dense(3, activation="softmax", name="out")(x)), 9)


@pytest.mark.parametrize("make", [recurrent_model, conv_kinds_model], ids=["bidirectional-gru-rnn", "separable-depthwise-transpose-layernorm"])
@pytest.mark.parametrize("save", ["keras", "weights"])
def test_more_layer_kinds_stream_like_the_whole_path(tmp_path, make, save):
    m = make()
    if save == "keras":
        source, arch = tmp_path / "m.keras", None
        m.save(source)
    else:
        source, arch = tmp_path / "m.weights.h5", str(tmp_path / "m.json")
        m.save_weights(source)
        (tmp_path / "m.json").write_text(m.to_json())
    stream_model(source, tmp_path / "s.pt", architecture=arch)
    save_model(layoutconv.read_model(source, architecture=arch), tmp_path / "w.pt")
    assert_same_file(tmp_path / "s.pt", tmp_path / "w.pt")


@pytest.mark.parametrize("make", [mixed_model, recurrent_model, conv_kinds_model], ids=["mixed", "recurrent", "conv-kinds"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_every_array_in_reused_memory_still_streams_like_the_whole_path(tmp_path, monkeypatch, make, suffix):
    """With every array read and every tensor made in the stream's reused buffers (not only those over 1 MiB),
    the file is that of the whole-model path, bit for bit: no buffer was taken again while a record or a module
    still used it.  And the buffers were reused: far fewer than the arrays."""
    monkeypatch.setattr(convert_stream._Memory, "SMALLEST", 0)
    made = []
    real_take = convert_stream._Memory._take

    def take(memory, nbytes):
        before = {id(b) for b in memory._buffers}
        out = real_take(memory, nbytes)
        made.extend([nbytes] if id(out) not in before else [])
        return out

    monkeypatch.setattr(convert_stream._Memory, "_take", take)
    m = make()
    m.save(tmp_path / "m.keras")
    report = stream_model(tmp_path / "m.keras", tmp_path / f"s{suffix}")
    assert report.passed
    save_model(layoutconv.read_model(tmp_path / "m.keras"), tmp_path / f"w{suffix}")
    assert_same_file(tmp_path / f"s{suffix}", tmp_path / f"w{suffix}")
    assert 0 < len(made) < report.tensors


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_tensors_written_in_small_pieces_make_the_same_file(files, tmp_path, monkeypatch, suffix):
    """Writes of WRITE_CHUNK bytes (an odd 1000 here: pieces end inside elements and tensors) give the file
    the whole-model path writes; no single write is larger."""
    from layoutconv import _stream_files

    sizes = []
    real_pwrite = os.pwrite

    def pwrite(fd, data, offset):
        sizes.append(len(data))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(_stream_files, "WRITE_CHUNK", 1000)
    monkeypatch.setattr(_stream_files.os, "pwrite", pwrite)
    assert stream_model(files["keras"][0], tmp_path / f"s{suffix}").passed
    assert_same_file(tmp_path / f"s{suffix}", _whole(files, tmp_path, suffix))
    if suffix == ".safetensors":
        assert sizes and max(sizes) <= 1000


@pytest.mark.parametrize("chunk", [4096, 6], ids=["rows-per-chunk", "rows-larger-than-a-chunk"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_tensors_written_and_read_back_in_small_chunks_make_the_same_file(files, tmp_path, monkeypatch, chunk, suffix):
    """The transposed Dense kernels (views of the arrays read) are copied into C order a few rows at a time, or in
    pieces of one row: the file is still the whole-model path's, byte for byte."""
    from layoutconv import _stream_files

    monkeypatch.setattr(_stream_files, "CHECK_CHUNK", chunk)
    assert stream_model(files["h5"][0], tmp_path / f"s{suffix}").passed
    assert_same_file(tmp_path / f"s{suffix}", _whole(files, tmp_path, suffix))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_chunk_read_back_wrong_fails_and_leaves_nothing(files, tmp_path, monkeypatch, suffix):
    """Each chunk is read back and compared right after it is written: one wrong byte read back stops the stream."""
    from layoutconv import _stream_files

    real_read = _stream_files._pread_to
    calls = []

    def read(fd, out, offset):
        got = real_read(fd, out, offset)
        calls.append(offset)
        if len(calls) == 3 and got.size:
            got[got.size // 2] ^= 0x10
        return got

    monkeypatch.setattr(_stream_files, "_pread_to", read)
    with pytest.raises(layoutconv.VerificationError, match="read back from the file differs"):
        stream_model(files["keras"][0], tmp_path / f"m{suffix}")
    assert len(calls) == 3
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("prefetch", [0, 1 << 30], ids=["one-layer-ahead", "every-layer-ahead"])
@pytest.mark.parametrize("source", ["h5", "keras"])
def test_layers_read_ahead_while_torch_imports_make_the_same_file(files, tmp_path, monkeypatch, prefetch, source):
    """While PyTorch is still importing, layers are read and run by the reference ahead, up to PREFETCH_BYTES; the
    file is the whole-model path's all the same (here the import never ends until the walk does)."""
    monkeypatch.setattr(convert_stream, "_torch_ready", lambda: False)
    monkeypatch.setattr(convert_stream, "PREFETCH_BYTES", prefetch)
    seen = []
    real = convert_stream._Stream._finish

    def finish(self, prepared):
        seen.append((prepared.node.layer, len(self.shapes), prepared.expected is not None))
        real(self, prepared)

    monkeypatch.setattr(convert_stream._Stream, "_finish", finish)
    out = tmp_path / "s.safetensors"
    report = stream_model(files[source][0], out)
    assert report.passed and len(seen) == len(report.layers) > 3
    assert all(ready for _, _, ready in seen)  # each expected output computed while waiting for the import
    edges = [n for _, n, _ in seen]
    if prefetch:
        assert len(set(edges)) == 1  # every layer finished after the walk
    else:
        assert edges == sorted(set(edges))  # each layer finished before the next one was read
    assert_same_file(out, _whole(files, tmp_path, ".safetensors"))


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_half_and_double_models_stream_like_the_whole_path(tmp_path, dtype):
    """A Keras model in float16 or float64 (Conv2D, Flatten, Dense: the transposed, permuted kernel in that dtype)
    streams to the whole-model path's tensors; float64 to .onnx is refused as onnxruntime has no float64 Conv."""
    inp = keras.Input((9, 7, 3), dtype=dtype)
    x = keras.layers.Conv2D(5, 3, padding="same", dtype=dtype, name="c")(inp)
    x = keras.layers.Dense(4, dtype=dtype, name="d")(keras.layers.Flatten(dtype=dtype)(x))
    model = _randomise(keras.Model(inp, x), 11)
    model.save(tmp_path / "m.keras")
    for suffix in (".safetensors", ".pt"):
        report = stream_model(tmp_path / "m.keras", tmp_path / f"s{suffix}")
        assert report.passed and {c.reference_dtype for c in report.layers} == {"float64"}
        save_model(layoutconv.read_model(tmp_path / "m.keras"), tmp_path / f"w{suffix}")
        assert_same_file(tmp_path / f"s{suffix}", tmp_path / f"w{suffix}")
        assert str(load(tmp_path / f"s{suffix}")["d.weight"].dtype) == f"torch.{dtype}"
    if dtype == "float64":
        with pytest.raises(UnsupportedError, match="float64"):
            stream_model(tmp_path / "m.keras", tmp_path / "s.onnx")
        assert not (tmp_path / "s.onnx").exists() and not (tmp_path / "s.onnx.data").exists()
    else:
        assert stream_model(tmp_path / "m.keras", tmp_path / "s.onnx").passed


def test_a_write_failing_while_the_next_chunk_is_copied_stops_the_copying_thread(tmp_path):
    """The chunk copied ahead in a thread: a write that fails mid-tensor raises in the caller, and the thread is
    gone when the error arrives (no thread left filling a buffer, nothing hangs)."""
    import threading

    from layoutconv import _stream_files

    a = np.random.default_rng(2).standard_normal((64, 300)).astype(np.float32).T  # strided: copied chunk by chunk
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    writes = []

    def write(chunk, at):
        writes.append(at)
        if len(writes) == 3:
            raise OSError(28, "No space left on device")
        _stream_files.write_all(fd, memoryview(chunk), at)

    try:
        with pytest.raises(OSError, match="No space"):
            _stream_files.write_checked(a, 0, write, fd, np.empty(1000, np.uint8), np.empty(100, np.uint8), np.empty(1000, np.uint8))
    finally:
        os.close(fd)
    assert len(writes) == 3
    assert not [t for t in threading.enumerate() if t.name == "layoutconv-copy"]


@pytest.mark.parametrize("n", [1, 2, 9, 64])
def test_rows_permuted_in_place_like_fancy_indexing(n):
    """The Flatten order applied to a Keras Dense kernel where it lies: a[i] = a[order[i]], as a[order] gives."""
    rng = np.random.default_rng(n)
    for order in (rng.permutation(n), np.arange(n), np.roll(np.arange(n), 1)):  # random, identity, one long cycle
        a = rng.standard_normal((n, 5)).astype(np.float32)
        expected = a[order]
        convert_stream._permute_rows(a, order)
        assert a.tobytes() == expected.tobytes()


def test_memory_takes_a_buffer_again_only_when_nothing_refers_to_it():
    from layoutconv import layers

    memory = convert_stream._Memory()
    a = memory.empty((512, 1024), np.float32)  # 2 MiB
    b = memory.empty((256, 1024), np.float32)  # 1 MiB: a is in use, so a buffer of its own
    assert not np.shares_memory(a, b) and len(memory._buffers) == 2
    a[...] = 0.5  # uninitialised memory may hold NaN, which a record refuses
    record = layers.Dense(layoutconv.record.hand_over(a), layout="I O")  # the record holds a's memory, not a copy
    assert np.shares_memory(record.kernel, memory._buffers[0])
    del a
    c = memory.empty((512, 1024), np.float32)
    assert not np.shares_memory(c, record.kernel)  # the record still uses the first buffer
    del b
    d = memory.tensor((256, 1024), torch.float32)  # the second one is free again
    assert np.shares_memory(d.numpy(), memory._buffers[1]) and len(memory._buffers) == 3
    del record, c, d
    big = memory.empty((1024, 1024), np.float32)  # 4 MiB: none fits, the idle smaller ones go
    assert len(memory._buffers) == 1 and big.nbytes == memory._buffers[0].nbytes
    assert memory.empty((10,), np.float32).base is None  # small arrays: the ordinary allocator


def test_a_shared_layer_is_written_once_and_kept_until_its_last_call(tmp_path):
    L = keras.layers
    a, b = keras.Input((5,), name="a"), keras.Input((5,), name="b")
    shared = L.Dense(6, activation="relu", name="shared")
    merged = L.Subtract(name="diff")([shared(a), shared(b)])
    m = _randomise(keras.Model([a, b], L.Dense(1, name="out")(merged)), 11)
    m.save(tmp_path / "siamese.keras")
    streamed, whole = tmp_path / "s.safetensors", tmp_path / "w.safetensors"
    stream_model(tmp_path / "siamese.keras", streamed)
    save_model(layoutconv.read_model(tmp_path / "siamese.keras"), whole)
    assert_same_file(streamed, whole)
    assert sorted(load(streamed)) == ["out.bias", "out.weight", "shared.bias", "shared.weight"]


def test_a_flatten_read_by_more_than_its_dense_is_refused_when_streaming(tmp_path):
    L = keras.layers
    inp = keras.Input((6, 4), name="x")
    flat = L.Flatten(name="flat")(L.Conv1D(3, 2, name="conv")(inp))
    out = L.Concatenate(name="cat")([L.Dense(2, name="fc")(flat), flat])
    m = _randomise(keras.Model(inp, out), 2)
    m.save(tmp_path / "m.keras")
    with pytest.raises(UnsupportedError, match="--no-stream"):
        stream_model(tmp_path / "m.keras", tmp_path / "out.pt")
    assert sorted(os.listdir(tmp_path)) == ["m.keras"]
    assert save_model(layoutconv.read_model(tmp_path / "m.keras"), tmp_path / "whole.pt").passed  # the whole-model path decides


def test_free_input_sizes_keep_the_keras_flatten_order_like_the_whole_path(tmp_path):
    L = keras.layers
    inp = keras.Input((None, 3), name="x")
    x = L.Conv1D(4, 3, name="conv")(inp)
    x = L.GlobalMaxPooling1D(name="gmp")(x)
    m = _randomise(keras.Model(inp, L.Dense(2, name="fc")(x)), 4)
    m.save(tmp_path / "free.keras")
    stream_model(tmp_path / "free.keras", tmp_path / "s.pt")
    save_model(layoutconv.read_model(tmp_path / "free.keras"), tmp_path / "w.pt")
    assert_same_file(tmp_path / "s.pt", tmp_path / "w.pt")


def test_the_stream_never_holds_two_layers_arrays(files, tmp_path, monkeypatch):
    """Every array read from the file, and every array of every record, is gone before the next layer is read."""
    from layoutconv import _keras_graph
    from layoutconv.legacy import formats
    from layoutconv.record import Record

    live: list[tuple[str, weakref.ref]] = []
    reads: list[str] = []

    def alive_from_other_layers(name):
        gc.collect()
        return sorted({layer for layer, ref in live if ref() is not None and layer != name})

    real_read = formats.read_arrays

    def read_arrays(path, source, weights):
        weights = list(weights)
        arrays = real_read(path, source, weights)
        name = weights[0].path.split("/")[-2] if weights else "?"
        for a in arrays:
            live.append((reads[-1] if reads else name, weakref.ref(a)))
        return arrays

    def track(reader):
        def read(call):
            reads.append(call.name)
            assert alive_from_other_layers(call.name) == [], f"reading {call.name}"
            record = reader(call)
            for part in record if isinstance(record, tuple) else (record,) if record is not None else ():
                stack = [part]
                while stack:
                    r = stack.pop()
                    for attr in r.ARRAYS:
                        if getattr(r, attr, None) is not None:
                            live.append((call.name, weakref.ref(getattr(r, attr))))
                    for attr in r.FIELDS:
                        v = getattr(r, attr, None)
                        stack += [x for x in (v if isinstance(v, tuple) else (v,)) if isinstance(x, Record)]
            return record
        return read

    monkeypatch.setattr(formats, "read_arrays", read_arrays)
    for cls, reader in list(_keras_graph.READERS.items()):
        monkeypatch.setitem(_keras_graph.READERS, cls, track(reader))
    report = stream_model(files["h5"][0], tmp_path / "m.safetensors")
    assert report.passed
    assert {"conv2d", "bn", "fc", "embed", "conv1d", "lstm", "head"} <= set(reads)
    assert len([1 for _ in live]) >= 12  # the instrumentation saw the arrays
    assert alive_from_other_layers("") == []  # and all are gone at the end


@pytest.mark.parametrize("cut", [0.5, 0.97])
def test_a_short_file_fails_with_a_typed_error_and_leaves_nothing(files, tmp_path, cut):
    data = files["h5"][0].read_bytes()
    short = tmp_path / "short.h5"
    short.write_bytes(data[: int(len(data) * cut)])
    out = tmp_path / "out" / "m.safetensors"
    out.parent.mkdir()
    with pytest.raises(FileFormatError):
        stream_model(short, out)
    assert os.listdir(out.parent) == []


def test_a_corrupt_weight_fails_mid_stream_and_leaves_nothing(files, tmp_path):
    import h5py

    bad = tmp_path / "bad.h5"
    bad.write_bytes(files["h5"][0].read_bytes())
    with h5py.File(bad, "r+") as f:
        names = []
        f["model_weights/head"].visit(names.append)
        d = f["model_weights/head"][next(n for n in names if n.endswith("kernel"))]
        values = d[()]
        values[0, 0] = np.nan  # the last layer: every other layer is written by then
        d[...] = values
    with pytest.raises(layoutconv.ConfigError, match="non-finite"):
        stream_model(bad, tmp_path / "m.pt")
    assert sorted(os.listdir(tmp_path)) == ["bad.h5"]


def test_an_existing_output_is_kept(files, tmp_path):
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"mine")
    with pytest.raises(OutputError, match="already exists"):
        stream_model(files["keras"][0], out)
    assert out.read_bytes() == b"mine" and os.listdir(tmp_path) == ["m.safetensors"]
    stream_model(files["keras"][0], out, overwrite=True)
    assert len(load(out)) > 0


def test_keras_outputs_are_not_streamed(files, tmp_path):  # .onnx is: tests/test_stream_onnx.py
    with pytest.raises(UnsupportedError, match="without --stream"):
        stream_model(files["keras"][0], tmp_path / "m.keras")
    assert os.listdir(tmp_path) == []


def test_big_layers_are_checked_in_float32_with_the_same_tolerance(files, tmp_path, monkeypatch):
    monkeypatch.setattr(convert_stream, "FLOAT64_CHECK_BYTES", 0)
    report = stream_model(files["keras"][0], tmp_path / "m.pt")
    assert report.passed and {c.reference_dtype for c in report.layers} == {"float32"}
    assert {c.tolerance for c in report.layers} == {1.3e-6 * 10}
    assert_same_file(tmp_path / "m.pt", _whole(files, tmp_path, ".pt"))


def _whole(files, tmp_path, suffix):
    out = tmp_path / f"whole{suffix}"
    if not out.exists():
        save_model(layoutconv.read_model(files["keras"][0]), out)
    return out


def test_a_header_that_outgrows_its_room_moves_the_data(files, tmp_path, monkeypatch):
    from layoutconv import _stream_files

    monkeypatch.setattr(_stream_files, "header_room", lambda names, metadata: 8)  # far too small for the header
    out = tmp_path / "m.safetensors"
    stream_model(files["keras"][0], out)
    assert_same_file(out, _whole(files, tmp_path, ".safetensors"))
    with open(out, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
    assert (8 + n) % 8 == 0


def test_the_pt_file_maps_in_place(files, tmp_path):
    out = tmp_path / "m.pt"
    stream_model(files["keras"][0], out)
    mapped = torch.load(out, weights_only=True, mmap=True)
    eager = torch.load(out, weights_only=True)
    assert list(mapped) == list(eager) and all(torch.equal(mapped[k], eager[k]) for k in eager)


# -- the command line --------------------------------------------------------------------------------


def cli(*argv):
    return subprocess.run([sys.executable, "-m", "layoutconv", *map(str, argv)], capture_output=True, text=True, env=ENV, timeout=300)


def test_cli_stream_and_no_stream_write_the_same_tensors(files, tmp_path):
    run = cli("convert", files["keras"][0], tmp_path / "s.safetensors", "--stream")
    assert run.returncode == 0, run.stderr
    assert "streamed 'mixed'" in run.stdout and "PASSED" in run.stdout and run.stderr == ""  # no bar off a terminal
    run = cli("convert", files["keras"][0], tmp_path / "w.safetensors", "--no-stream", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout[run.stdout.index("{"):])["passed"]
    assert_same_file(tmp_path / "s.safetensors", tmp_path / "w.safetensors")


def test_cli_streams_big_files_on_its_own(files, tmp_path, monkeypatch, capsys):
    from layoutconv import cli as cli_module

    argv = ["convert", str(files["weights"][0]), str(tmp_path / "small.pt"), "--architecture", files["weights"][1], "--json"]
    assert cli_module.main(argv) == 0  # a small file: the whole-model path
    assert "streamed" not in json.loads(_json_part(capsys.readouterr().out))
    monkeypatch.setattr(convert_stream, "STREAM_ABOVE", 0)
    argv[2] = str(tmp_path / "big.pt")
    assert cli_module.main(argv) == 0
    report = json.loads(_json_part(capsys.readouterr().out))
    assert report["streamed"] and report["passed"]
    assert_same_file(tmp_path / "small.pt", tmp_path / "big.pt")


def _json_part(text):
    return text[text.index("{"):] if "{" in text else ""


PRELOAD_RUN = r"""
import sys, threading
from layoutconv import convert_stream, FileFormatError
assert "torch" not in sys.modules
try:
    convert_stream.stream_model(sys.argv[1] + ".missing", sys.argv[2])
except FileFormatError:
    pass
assert threading.active_count() == 1  # the importing thread is joined on failure too
report = convert_stream.stream_model(sys.argv[1], sys.argv[2])
assert report.passed and threading.active_count() == 1 and "torch" in sys.modules
print("ok")
"""


def test_torch_is_imported_in_a_thread_joined_before_the_stream_returns_or_fails(files, tmp_path):
    run = subprocess.run([sys.executable, "-c", PRELOAD_RUN, str(files["h5"][0]), str(tmp_path / "m.pt")],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


def test_cli_stream_json_report(files, tmp_path):
    run = cli("convert", files["h5"][0], tmp_path / "m.pt", "--stream", "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["streamed"] and report["passed"] and report["wrote"].endswith("m.pt")
    assert report["tensors"] == len(load(tmp_path / "m.pt")) and report["largest_tensor"] > 0
    assert sorted(c["layer"] for c in report["layers"]) == sorted(["conv2d", "bn", "fc", "embed", "conv1d", "lstm", "head"])


def test_cli_refuses_to_stream_keras(files, tmp_path):
    run = cli("convert", files["keras"][0], tmp_path / "m.keras", "--stream")
    assert run.returncode == 2 and "Streaming conversion does not write keras" in run.stderr
    assert os.listdir(tmp_path) == []


# -- progress ------------------------------------------------------------------------------------------

PTY_RUN = r"""
import fcntl, os, pty, select, struct, sys, termios
argv = sys.argv[1:]
pid, fd = pty.fork()
if pid == 0:
    fcntl.ioctl(1, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal of 100 columns
    os.execvpe(sys.executable, [sys.executable, "-c",
        "import sys; import layoutconv.convert_stream as cs; cs.PROGRESS_DELAY = 0; from layoutconv import cli; "
        "sys.exit(cli.main(sys.argv[1:]))", *argv], os.environ)
out = b""
while True:
    try:
        r, _, _ = select.select([fd], [], [], 120)
        if not r:
            break
        chunk = os.read(fd, 65536)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode("utf-8", "replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def pty_cli(*argv):
    return subprocess.run([sys.executable, "-c", PTY_RUN, *map(str, argv)], capture_output=True, text=True, env=ENV, timeout=300)


def test_progress_bar_on_a_terminal_and_not_with_quiet(files, tmp_path):
    need("tqdm")
    run = pty_cli("convert", files["keras"][0], tmp_path / "a.safetensors", "--stream")
    assert run.returncode == 0, run.stdout
    assert "convert a.safetensors" in run.stdout and "B/s" in run.stdout  # tqdm's bar, on the terminal
    run = pty_cli("convert", files["keras"][0], tmp_path / "b.safetensors", "--stream", "--quiet")
    assert run.returncode == 0, run.stdout
    assert "convert b.safetensors" not in run.stdout and "PASSED" in run.stdout


def test_progress_bar_waits_a_second_and_draws_on_the_stream_given(monkeypatch):
    need("tqdm")
    buf = io.StringIO()
    bar = convert_stream._Progress(3 << 20, True, "convert x", file=buf, delay=0)
    bar.update(1 << 20, "fc1")
    bar.close()
    assert "convert x" in buf.getvalue() and "3.00M" in buf.getvalue()
    quiet = io.StringIO()
    bar = convert_stream._Progress(3 << 20, True, "convert y", file=quiet)  # the default delay: a second
    bar.update(3 << 20)
    bar.close()
    assert quiet.getvalue() == ""


def test_no_tqdm_means_no_bar_and_the_conversion_still_works(files, tmp_path):
    code = (
        "import sys; sys.modules['tqdm'] = None; import layoutconv.convert_stream as cs; cs.PROGRESS_DELAY = 0; "
        "from layoutconv import cli; sys.exit(cli.main(sys.argv[1:]))"
    )
    run = subprocess.run([sys.executable, "-c", code, "convert", str(files["keras"][0]), str(tmp_path / "m.pt"), "--stream"],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert run.returncode == 0 and "PASSED" in run.stdout, run.stderr
    assert convert_stream.progress_wanted(quiet=True) is False
