"""`layoutconv inspect` on every format: ONNX, PyTorch .pt, safetensors and Keras; NaN/Inf; Theano warnings.

Files are written by the real frameworks (onnx.helper, torch.save, Keras) or,
for safetensors (not a dependency), by the small writer below that follows
the format: an 8-byte little-endian header length, a JSON header, raw data.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import layoutconv
from layoutconv import cli
from layoutconv._inspect import MAX_HEADER_BYTES, READERS, detect, inspect_file

from conftest import need

FIXTURES = Path(__file__).parent / "fixtures" / "legacy_keras"
KERAS2_THEANO = FIXTURES / "deepcpf1_DeepCpf1_weights_keras2.0.5_theano.h5"
KERAS1_THEANO = FIXTURES / "deepcpf1_DeepCpf1_weights_keras1_theano.h5"


def run(capsys, *argv):
    code = cli.main(["inspect", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv):
    code, out, err = run(capsys, *argv, "--json")
    assert err == ""
    return code, json.loads(out)


def assert_one_line_error(code, out, err, *needles):
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for needle in needles:
        assert needle in err, err


# -- the registry ----------------------------------------------------------------
def test_every_format_has_one_reader():
    assert list(READERS) == ["keras", "torch", "safetensors", "onnx"]
    assert all(r.expects for r in READERS.values())


# -- ONNX --------------------------------------------------------------------------
def onnx_model(rng, nan_at=None):
    """Two chained Conv1D nodes (explicit pads + stride; groups + dilation + VALID), a 2-D Conv, and a Mul."""
    need("onnx", "onnxruntime")
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    wa = rng.standard_normal((8, 6, 5)).astype(np.float32)
    if nan_at is not None:
        wa[nan_at] = np.nan
    ba = rng.standard_normal(8).astype(np.float32)
    wb = rng.standard_normal((4, 4, 3)).astype(np.float32)
    w2d = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    scale = rng.standard_normal((1, 4, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "Wa", "Ba"], ["ya"], name="conv_a", strides=[2], pads=[1, 2]),
        helper.make_node("Conv", ["ya", "Wb"], ["yb"], name="conv_b", group=2, dilations=[2], auto_pad="VALID"),
        helper.make_node("Mul", ["yb", "scale"], ["y"], name="mul"),
        helper.make_node("Conv", ["x2", "W2d"], ["y2"], name="conv_2d"),
    ]
    inits = [numpy_helper.from_array(a, n) for n, a in (("Wa", wa), ("Ba", ba), ("Wb", wb), ("W2d", w2d), ("scale", scale))]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, "L"]),
         helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["N", 3, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "M"]),
         helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["N", 2, 7, 7])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_onnx_lists_every_conv_as_from_onnx_reads_it(tmp_path, rng, capsys):
    import onnx

    model = onnx_model(rng)
    path = tmp_path / "two.onnx"
    onnx.save(model, str(path))
    code, info = run_json(capsys, path)
    assert code == 0 and info["format"] == "onnx"
    a, b, c2d = info["convs"]
    assert (a["name"], a["kernel"], a["bias"], a["shape"], a["layout"]) == ("conv_a", "Wa", "Ba", [8, 6, 5], "O I K")
    assert (a["in_channels"], a["out_channels"], a["kernel_size"]) == (6, 8, 5)
    assert (a["stride"], a["dilation"], a["groups"], a["padding"], a["padding_mode"]) == (2, 1, 1, [[1, 2]], "zeros")
    assert (b["in_channels"], b["in_channels_per_group"], b["out_channels"], b["kernel_size"]) == (8, 4, 4, 3)
    assert (b["stride"], b["dilation"], b["groups"], b["padding"], b["bias"]) == (1, 2, 2, "valid", None)
    for entry, index in ((a, 0), (b, 1)):  # exactly what from_onnx says
        conv = layoutconv.from_onnx(model, node=index)
        assert (entry["stride"], entry["dilation"], entry["groups"]) == (conv.stride[0], conv.dilation[0], conv.groups)
        assert not entry["guessed"] and entry["error"] is None
    assert c2d["name"] == "conv_2d" and c2d["error"] is None  # from_onnx reads 2-d Conv nodes since onnx-nd
    assert [t["name"] for t in info["tensors"]] == ["scale"]
    assert info["nonfinite"] == [] and info["finite_checked"] == 5 and info["warnings"] == []

    code, text, _ = run(capsys, path)
    assert code == 0
    row = next(line for line in text.splitlines() if line.startswith("conv_a"))
    assert row.split() == ["conv_a", "Wa", "(8,", "6,", "5)", "O", "I", "K", "6", "8", "5", "2", "1", "1", "(1,", "2)"]
    assert "conv_2d" in text and "Weights  all finite (5 floating-point arrays checked)" in text


def test_onnx_nan_is_reported_in_the_file_layout(tmp_path, rng, capsys):
    import onnx

    path = tmp_path / "nan.onnx"
    onnx.save(onnx_model(rng, nan_at=(7, 2, 4)), str(path))
    code, info = run_json(capsys, path)
    assert code == 1
    (record,) = info["nonfinite"]
    assert (record["tensor"], record["index"], record["layout"], record["count"]) == ("Wa", [7, 2, 4], "O I K", 1)
    assert "non-finite" in info["convs"][0]["error"]  # and the Conv1D cannot be built from it
    code, text, _ = run(capsys, path)
    assert code == 1
    assert "kernel Wa has NaN at (7, 2, 4) in the file's (O, I, K) layout; 1 non-finite value (1 NaN)" in text


def test_onnx_garbage_is_a_clear_error(tmp_path, capsys):
    need("onnx")
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\xff\xff\xff\xff not protobuf \x00" * 3)
    assert_one_line_error(*run(capsys, bad), "is not an ONNX model", "model.onnx", "ModelProto")


def test_onnx_external_data_outside_the_folder_is_refused(tmp_path, rng, capsys):
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    model = onnx_model(rng)
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    (tmp_path / "model").mkdir()
    onnx.save(model, str(tmp_path / "model" / "ext.onnx"))  # writes model/weights.bin
    model = onnx.load(str(tmp_path / "model" / "ext.onnx"), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../model/weights.bin"  # the same file, reached through the parent
    (tmp_path / "model" / "ext.onnx").write_bytes(model.SerializeToString())
    assert_one_line_error(*run(capsys, tmp_path / "model" / "ext.onnx"), "external data file", "../model/weights.bin")


def test_onnx_external_data_beside_the_model_is_read(tmp_path, rng, capsys):
    """Since external data became readable (docs/security.md): onnx's own external-data files inspect like any other."""
    import onnx

    model = onnx_model(rng)
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    code, out, err = run(capsys, tmp_path / "ext.onnx")
    assert code == 0 and err == "" and "Weights  all finite" in out


# -- PyTorch -------------------------------------------------------------------------
def torch_state(rng):
    need("torch")
    import torch

    torch.manual_seed(int(rng.integers(1 << 31)))
    model = torch.nn.Sequential(
        torch.nn.Conv1d(4, 6, 5),
        torch.nn.ReLU(),
        torch.nn.Conv1d(6, 2, 3, groups=2, bias=False),
        torch.nn.Flatten(),
        torch.nn.Linear(14, 3),
    )
    return model.state_dict()


def test_pt_state_dict_lists_conv1d_candidates(tmp_path, rng, capsys):
    import torch

    sd = torch_state(rng)
    sd["odd.weight"] = torch.randn(3, 2, 2)
    sd["odd.bias"] = torch.randn(7)  # not the length of axis 0: not a Conv1d
    path = tmp_path / "ckpt.pth"
    torch.save({"model": sd, "epoch": 3}, path)
    code, info = run_json(capsys, path)
    assert code == 0 and info["format"] == "torch"
    first, second = info["convs"]
    assert (first["name"], first["kernel"], first["bias"], first["shape"]) == ("model.0", "model.0.weight", "model.0.bias", [6, 4, 5])
    assert (first["out_channels"], first["in_channels_per_group"], first["kernel_size"], first["layout"]) == (6, 4, 5, "O I K")
    assert first["guessed"] and "guessed from the shape and the name" in first["source"]
    assert first["in_channels"] is None and first["groups"] is None and first["stride"] is None
    assert (second["kernel"], second["bias"], second["shape"]) == ("model.2.weight", None, [2, 3, 3])
    assert sorted(t["name"] for t in info["tensors"]) == ["model.4.bias", "model.4.weight", "model.odd.bias", "model.odd.weight"]
    assert info["other_entries"] == [{"name": "epoch", "type": "int", "value": "3"}]
    assert any("model.odd.weight is 3-d but model.odd.bias has shape (7,)" in n for n in info["notes"])
    _, text, _ = run(capsys, path)
    assert "guessed from the shape and the name" in text and "4 per group" in text


def test_pt_nan_and_inf_are_reported(tmp_path, rng, capsys):
    import torch

    sd = torch_state(rng)
    sd["0.weight"][5, 3, 1] = float("nan")
    sd["0.weight"][0, 0, 0] = float("-inf")
    sd["4.bias"][2] = float("inf")
    path = tmp_path / "nan.pt"
    torch.save(sd, path)
    code, text, _ = run(capsys, path)
    assert code == 1
    assert "kernel 0.weight has -Inf at (0, 0, 0) in the file's (O, I, K) layout; 2 non-finite values (1 NaN, 1 -Inf)" in text
    assert "tensor 4.bias has +Inf at (2,); 1 non-finite value (1 +Inf)" in text


def test_pt_bfloat16_nan_is_found(tmp_path, capsys):
    need("torch")
    import torch

    w = torch.randn(3, 2, 5, dtype=torch.bfloat16)
    w[1, 1, 3] = float("nan")
    torch.save({"c.weight": w}, tmp_path / "bf16.pt")
    code, info = run_json(capsys, tmp_path / "bf16.pt")
    assert code == 1 and info["nonfinite"][0]["index"] == [1, 1, 3] and info["convs"][0]["kernel"] == "c.weight"


def test_pt_whole_module_is_refused_without_unpickling(tmp_path, capsys):
    need("torch")
    import torch

    torch.save(torch.nn.Conv1d(2, 3, 4), tmp_path / "module.pt")
    assert_one_line_error(
        *run(capsys, tmp_path / "module.pt"), "holds objects other than tensors", "torch.nn.modules.conv.Conv1d", "state_dict()"
    )


def test_pt_legacy_pickle_format_is_refused(tmp_path, capsys):
    need("torch")
    import torch

    torch.save({"w": torch.randn(2)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    assert_one_line_error(*run(capsys, tmp_path / "old.pt"), "a pickle stream", "never unpickles")


def test_pt_with_compressed_members_is_refused(tmp_path, rng, capsys):
    import torch

    torch.save(torch_state(rng), tmp_path / "stored.pt")
    with zipfile.ZipFile(tmp_path / "stored.pt") as z, zipfile.ZipFile(tmp_path / "deflated.pt", "w", zipfile.ZIP_DEFLATED) as out:
        for info in z.infolist():
            out.writestr(info.filename, z.read(info))
    assert_one_line_error(*run(capsys, tmp_path / "deflated.pt"), "compressed members")


def test_pt_declaring_more_than_it_holds_is_refused(tmp_path, rng, capsys):
    import torch

    path = tmp_path / "big.pt"
    torch.save(torch_state(rng), path)
    data = bytearray(path.read_bytes())
    first = data.index(b"PK\x01\x02")  # the first central-directory entry: raise its uncompressed size
    struct.pack_into("<I", data, first + 24, 1 << 30)
    path.write_bytes(bytes(data))
    assert_one_line_error(*run(capsys, path), "big.pt declares more data than it holds", "bytes declared")


# -- safetensors ---------------------------------------------------------------------
DT = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I64": "<i8"}


def bf16(a):
    return (np.asarray(a, np.float32).view(np.uint32) >> 16).astype("<u2")


def write_safetensors(path, tensors, metadata=None):
    """name -> (dtype, array holding the little-endian bytes); offsets packed in the given order."""
    header, chunks, offset = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dtype, array) in tensors.items():
        raw = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": dtype, "shape": list(np.shape(array)), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    write_raw(path, json.dumps(header).encode(), b"".join(chunks))


def write_raw(path, header: bytes, data: bytes, declared: int | None = None):
    header += b" " * (-len(header) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(header) if declared is None else declared) + header + data)


def test_safetensors_conv_candidates_and_nan_in_bf16(tmp_path, rng, capsys):
    w = rng.standard_normal((6, 4, 5)).astype("<f4")
    w[2, 3, 4] = np.inf
    emb = rng.standard_normal((3, 7)).astype(np.float32)
    emb[1, 6] = np.nan
    path = tmp_path / "model.safetensors"
    write_safetensors(
        path,
        {
            "steps": ("I64", np.array([7], "<i8")),
            "emb.weight": ("BF16", bf16(emb)),
            "conv.weight": ("F32", w),
            "conv.bias": ("F32", rng.standard_normal(6).astype("<f4")),
        },
        metadata={"format": "pt"},
    )
    code, info = run_json(capsys, path)
    assert code == 1 and info["format"] == "safetensors" and info["metadata"] == {"format": "pt"}
    (conv,) = info["convs"]
    assert (conv["name"], conv["shape"], conv["layout"], conv["bias"], conv["guessed"]) == ("conv", [6, 4, 5], "O I K", "conv.bias", True)
    found = {r["tensor"]: r for r in info["nonfinite"]}
    assert found["conv.weight"]["index"] == [2, 3, 4] and found["conv.weight"]["value"] == "+Inf"
    assert found["emb.weight"]["index"] == [1, 6] and found["emb.weight"]["value"] == "NaN"
    assert info["finite_checked"] == 3  # the I64 tensor cannot hold NaN
    assert sorted(t["name"] for t in info["tensors"]) == ["emb.weight", "steps"]


def test_safetensors_needs_no_framework(tmp_path, rng):
    path = tmp_path / "w.safetensors"
    write_safetensors(path, {"c.weight": ("F16", rng.standard_normal((2, 3, 4)).astype("<f2"))})
    code = (
        "import sys, json\nfrom layoutconv import cli\n"
        f"code = cli.main(['inspect', {str(path)!r}, '--json'])\n"
        "heavy = [m for m in ('torch', 'onnx', 'h5py', 'tensorflow', 'keras', 'ml_dtypes') if m in sys.modules]\n"
        "print(json.dumps([code, heavy]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [0, []]


def test_safetensors_is_recognised_by_content_whatever_the_suffix(tmp_path, rng):
    path = tmp_path / "weights.bin"
    write_safetensors(path, {"c.weight": ("F32", rng.standard_normal((2, 3, 4)).astype("<f4"))})
    assert detect(path).name == "safetensors"
    assert inspect_file(path).convs[0].shape == (2, 3, 4)


GOOD = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}


@pytest.mark.parametrize(
    "header, data, declared, error, needle",
    [
        pytest.param(GOOD, bytes(24), MAX_HEADER_BYTES + 1, layoutconv.UnsafeFileError, "absurd header length", id="header-over-100MB"),
        pytest.param(GOOD, bytes(24), 10_000, layoutconv.FileFormatError, "header longer than the file", id="header-past-eof"),
        pytest.param({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 1 << 40]}}, bytes(24), None,
                     layoutconv.UnsafeFileError, "past the end of the file", id="offsets-past-eof"),
        pytest.param({"a": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 24]}}, bytes(24), None,
                     layoutconv.FileFormatError, "disagree with dtype and shape", id="offsets-vs-shape"),
        pytest.param({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},
                      "b": {"dtype": "F32", "shape": [3], "data_offsets": [8, 20]}}, bytes(24), None,
                     layoutconv.UnsafeFileError, "overlaps", id="overlap"),
        pytest.param({"a": {"dtype": "F32", "shape": [3], "data_offsets": [4, 16]}}, bytes(16), None,
                     layoutconv.FileFormatError, "unused bytes", id="gap"),
        pytest.param({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}}, bytes(20), None,
                     layoutconv.FileFormatError, "after its last tensor", id="trailing-bytes"),
        pytest.param({"a": {"dtype": "Q4", "shape": [3], "data_offsets": [0, 12]}}, bytes(12), None,
                     layoutconv.FileFormatError, "unknown dtype", id="dtype"),
        pytest.param({"a": {"dtype": "F32", "shape": [-3], "data_offsets": [0, 12]}}, bytes(12), None,
                     layoutconv.FileFormatError, "invalid shape", id="negative-dim"),
        pytest.param(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
                     bytes(4), None, layoutconv.UnsafeFileError, "names a key twice", id="duplicate-key"),
        pytest.param(b'{"a": ', bytes(4), None, layoutconv.FileFormatError, "not valid JSON", id="bad-json"),
        pytest.param(b'[1, 2]', b"", None, layoutconv.FileFormatError, "not a JSON object", id="not-an-object"),
    ],
)
def test_safetensors_refusals(tmp_path, capsys, header, data, declared, error, needle):
    path = tmp_path / "bad.safetensors"
    write_raw(path, header if isinstance(header, bytes) else json.dumps(header).encode(), data, declared)
    with pytest.raises(error, match=needle):
        inspect_file(path)
    assert_one_line_error(*run(capsys, path), "bad.safetensors", needle)


# -- detection -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, content, needle",
    [
        pytest.param("notes.txt", b"just some text, not weights", "a file starting with", id="text"),
        pytest.param("model.pt", b"version https://git-lfs.github.com/spec/v1\noid sha256:00\n", "Git LFS pointer", id="lfs"),
        pytest.param("x.bin", b"\x00\x01\x02\x03" * 8, "a file starting with", id="binary"),
    ],
)
def test_unknown_content_names_every_expected_format(tmp_path, capsys, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content)
    code, out, err = run(capsys, path)
    assert_one_line_error(code, out, err, name, needle, "Keras weight file", "torch.save", "safetensors", "ONNX model")


def test_a_zip_that_is_neither_keras_nor_torch(tmp_path, capsys):
    with zipfile.ZipFile(tmp_path / "x.zip", "w") as z:
        z.writestr("readme.txt", "hello")
    assert_one_line_error(*run(capsys, tmp_path / "x.zip"), "zip archive with members ['readme.txt']", "data.pkl")


def test_content_wins_over_the_suffix(tmp_path, rng):
    shutil.copy(KERAS2_THEANO, tmp_path / "really_keras.pt")
    assert detect(tmp_path / "really_keras.pt").name == "keras"
    need("torch")
    import torch

    torch.save(torch_state(rng), tmp_path / "really_torch.keras")
    assert detect(tmp_path / "really_torch.keras").name == "torch"


def test_backend_applies_to_keras_files_only(tmp_path, rng, capsys):
    path = tmp_path / "w.safetensors"
    write_safetensors(path, {"c.weight": ("F32", rng.standard_normal((2, 3, 4)).astype("<f4"))})
    assert_one_line_error(*run(capsys, path, "--backend", "theano"), "backend does not apply to safetensors files")


# -- Keras: NaN/Inf --------------------------------------------------------------------
def poisoned_copy(tmp_path, source, edits):
    need("h5py")
    import h5py

    path = tmp_path / source.name
    shutil.copy(source, path)
    with h5py.File(path, "r+") as f:
        for dataset, index, value in edits:
            data = f[dataset][()]
            data[index] = value
            f[dataset][...] = data
    return path


def test_keras2_nan_index_is_in_the_file_layout(tmp_path, capsys):
    path = poisoned_copy(
        tmp_path,
        KERAS2_THEANO,
        [("conv1d_2/conv1d_2/kernel", (3, 0, 17), np.nan), ("conv1d_2/conv1d_2/kernel", (4, 3, 79), np.inf),
         ("dense_5/dense_5/kernel", (1000, 3), -np.inf)],
    )
    code, text, _ = run(capsys, path)
    assert code == 1
    assert "kernel conv1d_2/kernel has NaN at (3, 0, 17) in the file's (K, I, O) layout; 2 non-finite values (1 NaN, 1 +Inf)" in text
    assert "weight dense_5/kernel has -Inf at (1000, 3); 1 non-finite value (1 -Inf)" in text
    assert "Weights  NOT FINITE: 2 of 12 arrays" in text
    code, info = run_json(capsys, path)
    assert code == 1
    assert [(r["tensor"], r["index"], r["layout"]) for r in info["nonfinite"]] == [
        ("conv1d_2/kernel", [3, 0, 17], "K I O"),
        ("dense_5/kernel", [1000, 3], None),
    ]
    with pytest.raises(layoutconv.ConfigError, match="non-finite"):  # building the Conv1D still refuses it
        layoutconv.open(path).conv1d()


def test_keras1_nan_index_is_in_the_keras1_layout(tmp_path, capsys):
    path = poisoned_copy(tmp_path, KERAS1_THEANO, [("convolution1d_2/convolution1d_2_W", (2, 0, 3, 10), np.nan)])
    code, text, _ = run(capsys, path)
    assert code == 1
    assert "kernel convolution1d_2_W has NaN at (2, 0, 3, 10) in the file's (K, 1, I, O) layout" in text


def test_clean_keras_file_reports_the_check(capsys):
    code, text, _ = run(capsys, KERAS2_THEANO)
    assert code == 0 and "Weights  all finite (12 floating-point arrays checked)" in text
    code, info = run_json(capsys, KERAS2_THEANO)
    assert code == 0 and info["nonfinite"] == [] and info["finite_checked"] == 12


def test_keras3_archive_nan(tmp_path, rng, capsys):
    need("keras", "tensorflow")
    import keras

    model = keras.Sequential([keras.layers.Input((11, 3)), keras.layers.Conv1D(4, 3, name="c")])
    kernel = rng.standard_normal((3, 3, 4)).astype(np.float32)
    kernel[1, 2, 3] = np.nan
    model.layers[0].set_weights([kernel, rng.standard_normal(4).astype(np.float32)])
    model.save(tmp_path / "m.keras")
    code, text, _ = run(capsys, tmp_path / "m.keras")
    assert code == 1
    assert "kernel c/vars/0 has NaN at (1, 2, 3) in the file's (K, I, O) layout; 1 non-finite value" in text


# -- Theano: inspect and convert say that tf.keras / Keras 3 load it wrongly ------------------
THEANO_WORDS = ("tf.keras", "Keras 3", "wrong outputs", "not flip", "layoutconv flips")


@pytest.mark.parametrize("path", [KERAS2_THEANO, KERAS1_THEANO], ids=["keras2.0.5", "keras1"])
def test_inspect_warns_about_theano_files(path, capsys):
    code, text, _ = run(capsys, path)
    warning = " ".join(line[9:] for line in text.splitlines() if line.startswith(("Warning  ", "         ")))
    assert code == 0
    for words in THEANO_WORDS:
        assert words in " ".join(warning.split()), warning
    code, info = run_json(capsys, path)
    (json_warning,) = info["warnings"]
    assert all(words in json_warning for words in THEANO_WORDS)


def test_no_theano_warning_for_other_backends(tmp_path, rng, capsys):
    code, text, _ = run(capsys, KERAS1_THEANO, "--backend", "tensorflow")
    assert code == 0 and "Warning" not in text
    code, info = run_json(capsys, KERAS1_THEANO, "--backend", "tensorflow")
    assert info["warnings"] == []


def test_convert_says_tf_keras_would_be_wrong(tmp_path, capsys):
    need("onnx", "onnxruntime")
    code = cli.main(["convert", str(KERAS2_THEANO), str(tmp_path / "c.onnx")])
    out = capsys.readouterr().out
    assert code == 0 and (tmp_path / "c.onnx").exists()
    (note,) = [line for line in out.splitlines() if line.startswith("note: ") and "Theano" in line]
    assert all(words in note for words in THEANO_WORDS)
    # an ONNX source carries no such note
    code = cli.main(["convert", str(tmp_path / "c.onnx"), str(tmp_path / "d.onnx")])
    out = capsys.readouterr().out
    assert code == 0 and "note:" not in out


def test_onnx_2d_conv_and_transpose_are_listed_with_their_layouts(tmp_path, capsys):
    need("onnx", "onnxruntime")
    import layoutconv

    rng = np.random.default_rng(4)
    conv = layoutconv.Conv(rng.standard_normal((5, 3, 3, 5)).astype(np.float32), stride=(2, 1), padding="same_upper")
    t = layoutconv.ConvTranspose(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), stride=2, padding=((1, 1), (0, 0)))
    for record, name in ((conv, "c.onnx"), (t, "t.onnx")):
        layoutconv.save(record, tmp_path / name)
    code, text, _ = run(capsys, tmp_path / "c.onnx")
    assert code == 0 and "O I H W" in text and "(3, 5)" in text and "(2, 1)" in text
    code, info = run_json(capsys, tmp_path / "t.onnx")
    (entry,) = info["convs"]
    assert entry["layout"] == "I O H W" and entry["kernel_size"] == [3, 3] and entry["in_channels"] == 3
