"""The object header parser (``layoutconv/legacy/_h5_headers.py``): h5py is the oracle on real files, crafted files are refused.

On every object of every file: the parser finds the attributes h5py lists,
under the same names and shapes; a fixed-size value's stored bytes are the
bytes h5py reads; a variable-length value's descriptors declare the lengths of
the strings and sequences h5py returns, and each names a heap object of exactly
that size.  The files are the real Keras files in ``tests/fixtures``, saves of
the installed tf_keras and Keras 3, and files h5py writes with each layout of
object header (version 1; version 2 with ``libver='latest'``; creation order
tracked).  The crafted files break one rule each (``test_hostile.py`` runs the
same breakages through every entry point).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from layoutconv.errors import UnsafeFileError
from layoutconv.legacy._h5_headers import CONTINUATION, MAX_HEAP_OBJECTS, VLEN, H5Headers

from conftest import need
from test_hostile import (
    h5_address,
    h5_attribute_past_header,
    h5_continuation_loop,
    h5_dense_attributes,
    h5_header_claims_65535_messages,
    h5_vlen_length_2gib,
    h5_vlen_outside_file,
    keras2_file,
    v1_messages,
)

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "legacy_keras").glob("*.h*5"))


@pytest.fixture(scope="module", autouse=True)
def _h5py() -> None:
    need("h5py")


# -- files written for the comparison ---------------------------------------------------------------
def h5py_variety(path: Path, **options) -> None:
    """Every datatype class an attribute can hold, in groups of at most 8 attributes (so that version 2
    headers keep them compact), with attributes of up to 12 KB that push the headers into continuation chunks."""
    import h5py

    with h5py.File(path, "w", **options) as f:
        a, b, c = f.create_group("a"), f.create_group("b"), f.create_group("c")
        a.attrs["backend"] = "tensorflow"
        a.attrs["empty"] = ""
        a.attrs["greek"] = "καλημέρα"  # 8 characters, 16 bytes
        a.attrs["fixed"] = np.bytes_(b"abc")
        a.attrs["names"] = ["conv1d", "", "dense_17"]
        a.attrs["big_endian"] = np.arange(12, dtype=">i4").reshape(3, 4)
        a.attrs["scalar"] = 1.5
        b.attrs["nothing"] = h5py.Empty("f4")
        b.attrs.create("sequences", np.array([np.arange(3, dtype="i2"), np.arange(5, dtype="i2")], dtype=object), dtype=h5py.vlen_dtype("i2"))
        b.attrs["compound"] = np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")])
        b.attrs.create("enum", 1, dtype=h5py.enum_dtype({"RED": 0, "GREEN": 1}, basetype="u1"))
        b.attrs["opaque"] = np.void(b"xyz\x00")
        b.attrs.create("array", np.arange(6, dtype="f4").reshape(2, 3), dtype=np.dtype(("f4", (3,))))
        f["fixed_type"] = np.dtype("S7")
        f["string_type"] = h5py.string_dtype()
        c.attrs.create("committed", np.bytes_(b"1234567"), dtype=f["fixed_type"])
        c.attrs.create("committed_vlen", "hello", dtype=f["string_type"])
        for i in range(5):
            c.attrs[f"long{i}"] = "x" * (i * 3000 + 1)
        d = f.create_dataset("d", data=np.arange(4.0))
        d.attrs["name"] = "a dataset's attribute"
        f.create_dataset("notes", (2,), dtype=h5py.string_dtype(), fillvalue="zz")


def keras_saves(folder: Path) -> list[Path]:
    """A small model saved by the installed tf_keras (``.h5``) and Keras 3 (``.h5``, ``.weights.h5``)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tf_keras

    old = tf_keras.Sequential([tf_keras.layers.Input((20, 4)), tf_keras.layers.Conv1D(8, 3, name="c"), tf_keras.layers.Flatten(), tf_keras.layers.Dense(2)])
    old.save(folder / "tf_keras.h5")
    new = keras.Sequential([keras.layers.Input((20, 4)), keras.layers.Conv1D(8, 3), keras.layers.LSTM(3), keras.layers.Dense(2)])
    new.save(folder / "keras3.h5")
    new.save_weights(folder / "keras3.weights.h5")
    return [folder / "tf_keras.h5", folder / "keras3.h5", folder / "keras3.weights.h5"]


def each_object(f) -> list:
    """The root and every object below it, once each."""
    import h5py

    found, seen = [f], {h5py.h5o.get_info(f.id).addr}

    def visit(name, obj):
        address = h5py.h5o.get_info(obj.id).addr
        if address not in seen:
            seen.add(address)
            found.append(obj)

    f.visititems(visit)
    return found


def expected_lengths(value) -> list[int]:
    """What each variable-length element of ``value`` (as h5py returns it) declares: bytes of a string, elements
    of a sequence."""
    items = np.atleast_1d(np.asarray(value, dtype=object)).ravel() if not isinstance(value, (str, bytes)) else [value]
    return [len(v.encode("utf8")) if isinstance(v, str) else len(v) for v in items]


def parsed(path: Path) -> H5Headers:
    """The parser over the file's bytes (``compare_with_h5py`` and the archive tests read files in place)."""
    return H5Headers.of_bytes(path.read_bytes(), path.name)


def compare_with_h5py(path: Path) -> dict[str, int]:
    """Every attribute of every object of ``path``, parsed and read by h5py; returns what was compared."""
    import h5py

    heads = H5Headers.of_file(str(path), path.name)
    counts = {"attributes": 0, "variable-length": 0, "continuations": 0, "version 2 headers": 0}
    try:
        with h5py.File(path, "r") as f:
            assert heads.superblock.root == h5py.h5o.get_info(f.id).addr
            for obj in each_object(f):
                address = h5py.h5o.get_info(obj.id).addr
                messages = heads.messages(address)
                counts["continuations"] += sum(m.type == CONTINUATION for m in messages)
                counts["version 2 headers"] += heads._read(address, 4) == b"OHDR"
                parsed = heads.attributes(address)
                assert sorted(parsed) == sorted(obj.attrs.keys()), obj.name
                assert not heads.dense_attributes(address)
                for name, found in parsed.items():
                    assert len(found) == 1, (obj.name, name)
                    attr, aid = found[0], obj.attrs.get_id(name)
                    assert attr.shape == aid.shape, (obj.name, name)
                    counts["attributes"] += 1
                    if attr.datatype.contains(VLEN):
                        counts["variable-length"] += 1
                        value = obj.attrs[name]
                        descriptors = heads.descriptors(attr.datatype, attr.data, attr.at, attr.elements)
                        assert [d.length for d in descriptors] == expected_lengths(value), (obj.name, name)
                        base = attr.datatype.base.size
                        claimed = heads.check_values(attr.datatype, attr.data, attr.at, attr.elements, f"has {name!r}, which")
                        assert claimed == base * sum(expected_lengths(value)), (obj.name, name)
                    else:
                        assert attr.datatype.size == aid.get_type().get_size(), (obj.name, name)
                        if aid.shape is None:
                            assert attr.data == b""
                            continue
                        assert np.ascontiguousarray(obj.attrs[name]).tobytes() == attr.data, (obj.name, name)
    finally:
        heads.close()
    return counts


@pytest.mark.parametrize("path", FIXTURES, ids=[p.name for p in FIXTURES])
def test_real_keras_files_parse_as_h5py_reads_them(path):
    counts = compare_with_h5py(path)
    assert counts["attributes"] >= 10


def test_the_keras_2_0_5_fixture_has_variable_length_strings():
    """The one fixture that exercises descriptors: 'backend' and 'keras_version', written by Keras 2.0.5's h5py."""
    path = next(p for p in FIXTURES if "keras2.0.5" in p.name)
    assert compare_with_h5py(path)["variable-length"] == 2


@pytest.mark.parametrize(
    "options, header_version",
    [
        pytest.param({}, "version 1", id="libver-earliest"),
        pytest.param({"libver": "latest"}, "version 2", id="libver-latest"),
        pytest.param({"track_order": True}, "version 2", id="track-order"),
    ],
)
def test_every_attribute_type_parses_as_h5py_reads_it(tmp_path, options, header_version):
    h5py_variety(tmp_path / "variety.h5", **options)
    counts = compare_with_h5py(tmp_path / "variety.h5")
    assert counts["attributes"] == 21 and counts["variable-length"] == 12
    assert counts["continuations"] > 0
    assert (counts["version 2 headers"] > 0) == (header_version == "version 2")


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file:UserWarning")
def test_saves_of_the_installed_keras_parse_as_h5py_reads_them(tmp_path):
    need("keras", "tf_keras", "tensorflow")
    for path in keras_saves(tmp_path):
        counts = compare_with_h5py(path)
        assert counts["variable-length"] > 0, path.name  # tf_keras 2.21 and Keras 3.15 write str attributes


def test_a_fill_value_parses_as_h5py_reads_it(tmp_path):
    import h5py

    h5py_variety(tmp_path / "variety.h5")
    heads = parsed(tmp_path / "variety.h5")
    with h5py.File(tmp_path / "variety.h5", "r") as f:
        assert f["notes"].fillvalue == b"zz"
        address = h5py.h5o.get_info(f["notes"].id).addr
        plain = h5py.h5o.get_info(f["d"].id).addr
    datatype = heads.datatype(address)
    fills = heads.fill_values(address)
    assert datatype.name == "variable-length string" and len(fills) == 2  # the fill value message and its old form
    assert [heads.check_values(datatype, data, at, 1, "has a fill value that") for data, at in fills] == [2, 2]
    assert heads.datatype(plain).name == "floating-point" and heads.fill_values(plain) == []


# -- crafted files: one broken rule each ------------------------------------------------------------
def refused(call, *words: str) -> str:
    with pytest.raises(UnsafeFileError) as info:
        call()
    message = str(info.value)
    for word in words:
        assert word in message, message
    return message


def test_a_continuation_loop_is_refused(tmp_path):
    keras2_file(tmp_path / "clean.h5")
    address = h5_address(tmp_path / "clean.h5", "model_weights")
    h5_continuation_loop(tmp_path, tmp_path / "MARKER")
    heads = parsed(tmp_path / "model.h5")
    refused(lambda: heads.messages(address), "model.h5", f"object header at byte {address}", "(a loop)")


def test_a_continuation_outside_the_file_is_refused(tmp_path):
    keras2_file(tmp_path / "model.h5")
    address = h5_address(tmp_path / "model.h5", "/")
    data = bytearray((tmp_path / "model.h5").read_bytes())
    at = next(at for kind, at, size in v1_messages(data, address) if kind == CONTINUATION)
    data[at + 8 : at + 16] = (1 << 40).to_bytes(8, "little")  # the chunk's length
    heads = H5Headers.of_bytes(bytes(data), "model.h5")
    refused(lambda: heads.messages(address), "continuation outside the file", str(1 << 40))


def test_a_message_running_past_its_chunk_is_refused(tmp_path):
    keras2_file(tmp_path / "model.h5")
    address = h5_address(tmp_path / "model.h5", "model_weights")
    data = bytearray((tmp_path / "model.h5").read_bytes())
    kind, at, size = v1_messages(data, address)[0]
    data[at - 6 : at - 4] = (size + 4096).to_bytes(2, "little")
    heads = H5Headers.of_bytes(bytes(data), "model.h5")
    refused(lambda: heads.messages(address), "message running past its chunk", f"{size + 4096} bytes")


def test_a_wrong_message_count_is_tolerated_as_hdf5_tolerates_it(tmp_path):
    """HDF5 reads a version 1 header whose prefix miscounts its messages (without strict format checks)."""
    keras2_file(tmp_path / "clean.h5")
    address = h5_address(tmp_path / "clean.h5", "/")
    clean = parsed(tmp_path / "clean.h5").messages(address)
    h5_header_claims_65535_messages(tmp_path, tmp_path / "MARKER")
    assert parsed(tmp_path / "model.h5").messages(address) == clean


def test_attribute_data_running_past_its_message_is_refused(tmp_path):
    h5_attribute_past_header(tmp_path, tmp_path / "MARKER")
    address = h5_address(tmp_path / "model.h5", "model_weights")
    heads = parsed(tmp_path / "model.h5")
    refused(lambda: heads.attributes(address), "'layer_names'", "declares more data than the message holds", f"{1 << 20} elements")


def test_a_declared_length_above_the_file_is_refused(tmp_path):
    h5_vlen_length_2gib(tmp_path, tmp_path / "MARKER")
    heads = parsed(tmp_path / "model.h5")
    (attr,) = heads.attributes(heads.superblock.root)["backend"]
    refused(lambda: heads.check_values(attr.datatype, attr.data, attr.at, 1, "has 'backend', which"),
            "more than the file holds", str(0x7FFFFFF0))  # fmt: skip


def test_a_descriptor_pointing_outside_the_file_is_refused(tmp_path):
    h5_vlen_outside_file(tmp_path, tmp_path / "MARKER")
    heads = parsed(tmp_path / "model.h5")
    (attr,) = heads.attributes(heads.superblock.root)["backend"]
    refused(lambda: heads.check_values(attr.datatype, attr.data, attr.at, 1, "has 'backend', which"), "outside the file", str(1 << 40))


def patched_backend(tmp_path: Path, length: int | None = None, index: int | None = None, collection: int | None = None):
    """A Keras 2 file whose 'backend' descriptor (10 bytes, 'tensorflow') is patched; the parsed attribute."""
    keras2_file(tmp_path / "model.h5")
    data = bytearray((tmp_path / "model.h5").read_bytes())
    heap = data.find(b"GCOL")
    at = data.find((10).to_bytes(4, "little") + heap.to_bytes(8, "little"))
    assert at > 0
    if length is not None:
        data[at : at + 4] = length.to_bytes(4, "little")
    if collection is not None:
        data[at + 4 : at + 12] = collection.to_bytes(8, "little")
    if index is not None:
        data[at + 12 : at + 16] = index.to_bytes(4, "little")
    (tmp_path / "model.h5").write_bytes(bytes(data))
    heads = H5Headers.of_bytes(bytes(data), "model.h5")
    (attr,) = heads.attributes(heads.superblock.root)["backend"]
    return heads, attr


def test_a_length_its_heap_object_does_not_hold_is_refused(tmp_path):
    heads, attr = patched_backend(tmp_path, length=9)
    refused(lambda: heads.check_values(attr.datatype, attr.data, attr.at, 1, "has 'backend', which"),
            "heap does not hold", "9 bytes declared", "an object of 10 bytes")  # fmt: skip


def test_a_missing_heap_object_is_refused(tmp_path):
    heads, attr = patched_backend(tmp_path, index=77)
    refused(lambda: heads.check_values(attr.datatype, attr.data, attr.at, 1, "has 'backend', which"), "no such object at index 77")


def test_a_null_descriptor_is_read_as_hdf5_reads_it(tmp_path):
    """A descriptor naming collection 0 is 'nil': HDF5 returns an empty value without reading or allocating."""
    import h5py

    heads, attr = patched_backend(tmp_path, length=0x7FFFFFF0, collection=0)
    assert heads.check_values(attr.datatype, attr.data, attr.at, 1, "has 'backend', which") == 0
    with h5py.File(tmp_path / "model.h5", "r") as f:
        assert f.attrs["backend"] in ("", b"")


def test_descriptors_naming_one_object_again_and_again_are_refused(tmp_path):
    """Each descriptor matches its heap object, but 8 of them name one 3,000-byte string: more than the file."""
    import h5py

    with h5py.File(tmp_path / "model.h5", "w") as f:
        f.attrs["big"] = "b" * 3000
        f.attrs["names"] = [f"layer_{i}" for i in range(8)]  # 7 bytes each
    data = bytearray((tmp_path / "model.h5").read_bytes())
    heads = H5Headers.of_bytes(bytes(data), "model.h5")
    attrs = heads.attributes(heads.superblock.root)
    (big,), (names,) = attrs["big"], attrs["names"]
    for k in range(8):  # every name now points at 'big' with its length
        data[names.at + 16 * k : names.at + 16 * k + 16] = big.data
    assert 8 * 3000 > len(data)
    heads = H5Headers.of_bytes(bytes(data), "model.h5")
    (names,) = heads.attributes(heads.superblock.root)["names"]
    refused(lambda: heads.check_values(names.datatype, names.data, names.at, 8, "has 'names', which"), "more bytes than the file holds")


@pytest.mark.parametrize(
    "dtype, words",
    [
        pytest.param([("name", "string"), ("size", "i4")], ("nests a variable-length type", "compound"), id="vlen-in-compound"),
        pytest.param("vlen of vlen", ("nests a variable-length type",), id="vlen-of-vlen"),
        pytest.param("reference", ("holds references",), id="reference"),
    ],
)
def test_variable_length_parts_it_cannot_locate_are_refused(tmp_path, dtype, words):
    import h5py

    with h5py.File(tmp_path / "model.h5", "w") as f:
        if dtype == "reference":
            f.attrs["value"] = f.ref
        elif dtype == "vlen of vlen":
            inner = h5py.h5t.vlen_create(h5py.h5t.NATIVE_INT8)
            space = h5py.h5s.create(h5py.h5s.SCALAR)
            h5py.h5a.create(f.id, b"value", h5py.h5t.vlen_create(inner), space)
        else:
            fields = [(n, h5py.string_dtype() if t == "string" else t) for n, t in dtype]
            f.attrs["value"] = np.array([("conv1d", 3)], dtype=fields)
    heads = parsed(tmp_path / "model.h5")
    (attr,) = heads.attributes(heads.superblock.root)["value"]
    refused(lambda: heads.check_values(attr.datatype, attr.data, attr.at, attr.elements, "has 'value', which"), *words)


def test_datatypes_nested_too_deeply_are_refused(tmp_path):
    import h5py

    dtype = np.dtype("f4")
    for i in range(20):
        dtype = np.dtype([(f"level{i}", dtype)])
    with h5py.File(tmp_path / "model.h5", "w") as f:
        f.attrs.create("value", np.zeros((), dtype=dtype))
    heads = parsed(tmp_path / "model.h5")
    refused(lambda: heads.attributes(heads.superblock.root), "nests datatypes too deeply")


def test_a_heap_collection_of_too_many_objects_is_refused(tmp_path):
    keras2_file(tmp_path / "model.h5")
    data = (tmp_path / "model.h5").read_bytes()
    n = MAX_HEAP_OBJECTS + 2  # objects of 0 bytes: 16 bytes each
    collection = b"GCOL\x01\x00\x00\x00" + (16 + 16 * n).to_bytes(8, "little") + (b"\x01\x00\x01\x00" + bytes(12)) * n
    heads = H5Headers.of_bytes(data + collection, "model.h5")
    refused(lambda: heads.heap_object_size(len(data), 1), "too many objects", str(MAX_HEAP_OBJECTS))


def test_dense_attribute_storage_is_recognised(tmp_path):
    import h5py

    h5_dense_attributes(tmp_path, tmp_path / "MARKER")
    heads = parsed(tmp_path / "model.h5")
    with h5py.File(tmp_path / "model.h5", "r") as f:
        assert len(f.attrs) == 12
    assert heads.dense_attributes(heads.superblock.root)
    assert heads.attributes(heads.superblock.root) == {}  # none left in the header


@pytest.mark.parametrize(
    "at, value, words",
    [
        pytest.param(8, 7, ("unknown version", "version 7"), id="superblock-version-7"),
        pytest.param(13, 3, ("unusual address sizes", "3 and 8"), id="offsets-of-3-bytes"),
        pytest.param(24, 512, ("base address other than 0", "512"), id="base-address-512"),
    ],
)
def test_a_superblock_it_cannot_read_is_refused(tmp_path, at, value, words):
    keras2_file(tmp_path / "model.h5")
    data = bytearray((tmp_path / "model.h5").read_bytes())
    assert data[8] == 0  # a version 0 superblock: sizes at 13 and 14, base address at 24
    data[at : at + (8 if at == 24 else 1)] = value.to_bytes(8 if at == 24 else 1, "little")
    heads = H5Headers.of_bytes(bytes(data), "model.h5")
    refused(lambda: heads.superblock, "model.h5 has a superblock that", *words)


def test_import_layoutconv_does_not_import_h5py():
    import subprocess
    import sys

    code = "import sys, layoutconv.legacy._h5_headers; print('h5py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))  # fmt: skip
    assert out.stdout.strip() == "False"
