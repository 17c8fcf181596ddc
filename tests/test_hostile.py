"""A hostile corpus, generated at test time: every crafted file is refused with a typed error, in bounded time and memory.

Each case builds one crafted file in a directory of its own (plus the clean files
its entry points need).  One subprocess per case then runs every entry point that
reads that kind of file (``DRIVER`` below: the CLI through ``layoutconv.cli.main``
and the API calls, one JSON line each), under a wall-clock timeout and an
address-space limit, and without the capabilities that let root ignore
file permissions when the tests run as root (so that read-only paths mean something).  For every entry point the test asserts exit
status 2 and one line on stderr without a traceback (a :class:`LayoutError` for
the API), or, for a file that is valid apart from the payload it carries, a
clean read.  For every case: the marker file the payloads would create does not
exist, and nothing in the case's directory was created or changed except the
requested output.

The payloads are real: ``test_payloads_are_live`` runs each one the way a
careless reader would and checks that it does create the marker.
See ``docs/security.md``.
"""

from __future__ import annotations

import codecs
import ctypes
import hashlib
import importlib.util
import json
import marshal
import os
import pickle
import resource
import stat
import subprocess
import sys
import types
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from conftest import need

ROOT = Path(__file__).resolve().parents[1]
#: Seconds for all entry points of one case (each takes well under 5 s; a hang is what this catches).
TIMEOUT = 60
#: Address-space limit of the subprocess.  Measured: importing TensorFlow peaks at 1.4 GB of
#: virtual memory and a full ``verify`` over every framework at 2.5 GB, both fine under 4 GiB,
#: while the 30 GB that a 10**9 dilation asks for fails at once.
MEMORY_LIMIT = 4 << 30
#: Peak resident memory allowed for all entry points of one case (``ru_maxrss`` of the subprocess).
#: Measured: 34 MB for a refused zip, under 100 MB for a file read and verified in onnxruntime, 222 MB
#: for inspect of a .pt (it imports torch).  RLIMIT_AS alone would let a 2 GiB allocation pass unnoticed.
MEMORY_BUDGET = 512 << 20
#: The file every payload creates if it ever runs.
MARKER = "PWNED"
#: Capabilities dropped from the subprocess when the tests run as root, so that it obeys file
#: permissions like any user: CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER (linux/capability.h).
ROOT_CAPABILITIES = (1, 2, 3)
PR_CAPBSET_DROP = 24

KERNEL = np.random.default_rng(7).normal(size=(3, 2, 4)).astype(np.float32)  # Keras (K, I, O)
BIAS = np.random.default_rng(8).normal(size=4).astype(np.float32)
ONNX_KERNEL = np.random.default_rng(9).normal(size=(4, 3, 3)).astype(np.float32)  # ONNX (O, I, K)


# -- payloads: each creates the marker if it ever runs -----------------------------------------------
def shell(marker: Path) -> str:
    return f"touch {marker}"


def pickle_payload(marker: Path) -> bytes:
    """Pickle protocol 0, written by hand: ``os.system('touch <marker>')`` when unpickled."""
    return f"cos\nsystem\n(S'{shell(marker)}'\ntR.".encode()


def lambda_code(marker: Path) -> str:
    """A Keras ``Lambda`` function as Keras stores it: the marshalled code object, base64-encoded."""
    source = f"lambda x: (__import__('os').system({shell(marker)!r}), x)[1]"
    code = compile(source, "<payload>", "eval").co_consts[0]
    return codecs.encode(marshal.dumps(code), "base64").decode("ascii")


# -- Keras files -----------------------------------------------------------------------------------
def conv_config(**overrides: Any) -> dict:
    cfg = {"name": "conv1d_1", "filters": 4, "kernel_size": [3], "strides": [1], "padding": "valid",
           "dilation_rate": [1], "use_bias": True, "activation": "linear"}  # fmt: skip
    cfg.update(overrides)
    return {"class_name": "Conv1D", "config": cfg}


def keras2_file(path: Path, layers: list | None = None, extra: Callable | None = None, config: bool = True, kernel: np.ndarray = KERNEL,
                libver: str | None = None) -> str:  # fmt: skip
    """A Keras 2 ``Model.save`` file: ``model_config`` (a Sequential of ``layers``) and one Conv1D's weights."""
    import h5py

    with h5py.File(path, "w", libver=libver) as f:
        f.attrs["keras_version"] = "2.2.4"
        f.attrs["backend"] = "tensorflow"
        if config:
            layers = layers if layers is not None else [conv_config()]
            f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": {"name": "s", "layers": layers}})
        weights = f.create_group("model_weights")
        weights.attrs["layer_names"] = np.array([b"conv1d_1"])
        g = weights.create_group("conv1d_1")
        g.attrs["weight_names"] = np.array([b"conv1d_1/kernel:0", b"conv1d_1/bias:0"])
        g["conv1d_1/kernel:0"] = kernel
        g["conv1d_1/bias:0"] = np.resize(BIAS, kernel.shape[-1])
        if extra is not None:
            extra(f, path.parent)
    return path.name


def keras3_conv() -> dict:
    cfg = conv_config(name="conv1d")["config"]
    return {"module": "keras.layers", "class_name": "Conv1D", "config": cfg, "registered_name": None}


def keras3_weights(path: Path | None = None, extra: Callable | None = None) -> bytes:
    """A Keras 3 ``.weights.h5`` (written to ``path``, or returned as bytes)."""
    import io

    import h5py

    target: Any = path if path is not None else io.BytesIO()
    with h5py.File(target, "w") as f:
        f["layers/conv1d/vars/0"] = KERNEL
        f["layers/conv1d/vars/1"] = BIAS
        f["layers/conv1d/vars"].attrs["name"] = "conv1d"
        f.create_group("vars")
        if extra is not None:
            extra(f)
    return b"" if path is not None else target.getvalue()


def keras3_archive(path: Path, layers: list | None = None, members: list | None = None, compression: int = zipfile.ZIP_STORED) -> str:
    config = {"module": "keras", "class_name": "Sequential",
              "config": {"name": "sequential", "layers": layers if layers is not None else [keras3_conv()]}}  # fmt: skip
    default = [("metadata.json", json.dumps({"keras_version": "3.0.0"}).encode()),
               ("config.json", json.dumps(config).encode()), ("model.weights.h5", keras3_weights())]  # fmt: skip
    write_zip(path, members if members is not None else default, compression)
    return path.name


def write_zip(path: Path, members: list, compression: int = zipfile.ZIP_STORED) -> None:
    import warnings

    with zipfile.ZipFile(path, "w", compression=compression) as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names warn
        for member in members:
            if isinstance(member, zipfile.ZipInfo):
                z.writestr(member, member.comment)  # the member's data rides in its comment (see zip_symlink)
                continue
            z.writestr(*member)


def cut(data: bytes) -> bytes:
    return data[: len(data) // 2]


def noise(head: bytes, size: int = 4096) -> bytes:
    return head + np.random.default_rng(5).bytes(size)


def deep_list(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


# -- HDF5 cases ----------------------------------------------------------------------------------------
def h5_external_link(work: Path, marker: Path) -> str:
    import h5py

    keras2_file(work / "target.h5")

    def extra(f, folder):
        f["model_weights/conv1d_1/elsewhere"] = h5py.ExternalLink(str(folder / "target.h5"), "/model_weights")

    return keras2_file(work / "model.h5", extra=extra)


def h5_soft_link_loop(work: Path, marker: Path) -> str:
    import h5py

    def extra(f, folder):
        f["model_weights/conv1d_1/a"] = h5py.SoftLink("/model_weights/conv1d_1/b")
        f["model_weights/conv1d_1/b"] = h5py.SoftLink("/model_weights/conv1d_1/a")

    return keras2_file(work / "model.h5", extra=extra)


def h5_external_storage(work: Path, marker: Path) -> str:
    (work / "raw.bin").write_bytes(np.arange(8, dtype=np.float32).tobytes())

    def extra(f, folder):
        f.create_dataset("model_weights/conv1d_1/outside", shape=(8,), dtype=np.float32, external=[(str(folder / "raw.bin"), 0, 32)])

    return keras2_file(work / "model.h5", extra=extra)


def h5_virtual_dataset(work: Path, marker: Path) -> str:
    import h5py

    with h5py.File(work / "source.h5", "w") as src:
        src["data"] = np.arange(6, dtype=np.float32)

    def extra(f, folder):
        layout = h5py.VirtualLayout(shape=(6,), dtype=np.float32)
        layout[:] = h5py.VirtualSource(str(folder / "source.h5"), "data", shape=(6,))
        f.create_virtual_dataset("model_weights/conv1d_1/mapped", layout)

    return keras2_file(work / "model.h5", extra=extra)


def h5_gzip_bomb(work: Path, marker: Path) -> str:
    def extra(f, folder):  # 32 MiB of zeros, gzip level 9: a file of about 100 KB
        f.create_dataset("model_weights/conv1d_1/zeros", data=np.zeros(4 << 20), chunks=(1 << 17,), compression="gzip", compression_opts=9)

    return keras2_file(work / "model.h5", extra=extra)


def h5_pickle_attribute(work: Path, marker: Path) -> str:
    def extra(f, folder):
        f.attrs["model_config"] = np.void(pickle_payload(marker))

    return keras2_file(work / "model.h5", config=False, extra=extra)


def h5_global_heap_loop(work: Path, marker: Path) -> str:
    """The free-space object of the global heap (where the string attributes live) made to take 0 bytes.

    HDF5 steps through a collection object by object; this object does not move
    it, so reading any string attribute spins forever in C (found by fuzzing).
    """
    keras2_file(work / "model.h5")
    data = bytearray((work / "model.h5").read_bytes())
    start = data.find(b"GCOL")
    end, p = start + int.from_bytes(data[start + 8 : start + 16], "little"), start + 16
    while p + 16 <= end:
        index, size = int.from_bytes(data[p : p + 2], "little"), int.from_bytes(data[p + 8 : p + 16], "little")
        if index == 0:
            data[p + 8 : p + 16] = bytes(8)
            break
        p += 16 + -(-size // 8) * 8
    else:
        raise AssertionError("no free-space object in the global heap")
    (work / "model.h5").write_bytes(bytes(data))
    return "model.h5"


def h5_vlen_length_2gib(work: Path, marker: Path) -> str:
    """The string attribute 'backend' made to declare 2 GiB (its heap reference pointed at garbage).

    HDF5 allocates and zeroes a variable-length string's declared length before it
    reads the string and finds the reference broken (found by fuzzing).
    """
    keras2_file(work / "model.h5")
    data = bytearray((work / "model.h5").read_bytes())
    heap = data.find(b"GCOL")
    at = data.find((10).to_bytes(4, "little") + heap.to_bytes(8, "little"))  # len("tensorflow"), the heap's address
    assert at > 0 and heap > 0
    data[at : at + 12] = (0x7FFFFFF0).to_bytes(4, "little") + (heap + 8).to_bytes(8, "little")
    (work / "model.h5").write_bytes(bytes(data))
    return "model.h5"


def h5_address(path: Path, name: str) -> int:
    """The address of the object header of ``name`` in the file, as HDF5 reports it."""
    import h5py

    with h5py.File(path, "r") as f:
        return h5py.h5o.get_info(f[name].id).addr


def v1_messages(data: bytes, address: int) -> list[tuple[int, int, int]]:
    """(type, position of its data, size) of each message in the first chunk of the version 1 object header at
    ``address``: walked here, by the format, independently of the parser under test."""
    end, p, out = address + 16 + int.from_bytes(data[address + 8 : address + 12], "little"), address + 16, []
    while p + 8 <= end:
        kind, size = int.from_bytes(data[p : p + 2], "little"), int.from_bytes(data[p + 2 : p + 4], "little")
        out.append((kind, p + 8, size))
        p += 8 + size
    return out


def vlen_layer_names(f, folder) -> None:
    """``layer_names`` as tf_keras 2.21 and Keras 3.15 write it: a list of ``str`` (variable-length strings)."""
    f["model_weights"].attrs["layer_names"] = ["conv1d_1"]


def h5_continuation_loop(work: Path, marker: Path) -> str:
    """The group ``model_weights`` continues its object header into its own first chunk: a reader that follows
    continuations without remembering them never stops.  HDF5 refuses it when h5py opens the group (before any
    attribute is read); layoutconv's own parser refuses it too (``test_h5_headers``)."""
    keras2_file(work / "model.h5")
    data = bytearray((work / "model.h5").read_bytes())
    address = h5_address(work / "model.h5", "model_weights")
    at = next(at for kind, at, size in v1_messages(data, address) if kind == 0x0010)
    first = int.from_bytes(data[address + 8 : address + 12], "little")
    data[at : at + 16] = (address + 16).to_bytes(8, "little") + first.to_bytes(8, "little")
    (work / "model.h5").write_bytes(bytes(data))
    return "model.h5"


def h5_header_claims_65535_messages(work: Path, marker: Path) -> str:
    """The root group's object header prefix declares 65,535 messages; its chunks hold 8 (HDF5 tolerates a wrong
    count, and so must a parser: it walks the bytes, never the count)."""
    keras2_file(work / "model.h5")
    data = bytearray((work / "model.h5").read_bytes())
    address = h5_address(work / "model.h5", "/")
    assert data[address] == 1
    data[address + 2 : address + 4] = (65535).to_bytes(2, "little")
    (work / "model.h5").write_bytes(bytes(data))
    return "model.h5"


def h5_attribute_past_header(work: Path, marker: Path) -> str:
    """``layer_names`` (variable-length strings, as Keras 3 writes it) declares 2**20 elements: 16 MiB of
    descriptors in a message of 88 bytes.  HDF5 1.14 refuses it while it looks the attribute up; layoutconv's
    own parser refuses it too (``test_h5_headers``)."""
    keras2_file(work / "model.h5", extra=vlen_layer_names)
    data = bytearray((work / "model.h5").read_bytes())
    name = data.find(b"layer_names\x00")
    one = (1).to_bytes(8, "little")
    dims = data.find(b"\x01\x01\x01\x00\x00\x00\x00\x00" + one + one, name)  # dataspace v1, rank 1, size [1], max [1]
    assert name > 0 and 0 < dims - name < 64
    data[dims + 8 : dims + 24] = (1 << 20).to_bytes(8, "little") * 2
    (work / "model.h5").write_bytes(bytes(data))
    return "model.h5"


def h5_vlen_outside_file(work: Path, marker: Path) -> str:
    """The string attribute 'backend' keeps its length (10) and names a heap collection 1 TiB into an 11 KB file."""
    keras2_file(work / "model.h5")
    data = bytearray((work / "model.h5").read_bytes())
    heap = data.find(b"GCOL")
    at = data.find((10).to_bytes(4, "little") + heap.to_bytes(8, "little"))  # len("tensorflow"), the heap's address
    assert at > 0 and heap > 0
    data[at + 4 : at + 12] = (1 << 40).to_bytes(8, "little")
    (work / "model.h5").write_bytes(bytes(data))
    return "model.h5"


def h5_vlen_fill_value_2gib(work: Path, marker: Path) -> str:
    """A string dataset beside the weights whose fill value ('zz') declares 2 GiB: reading the dataset's creation
    properties (``dset.is_virtual`` does) converts the fill value, and HDF5 allocates the declared length first."""
    import h5py

    def extra(f, folder):
        f.create_dataset("model_weights/conv1d_1/notes", (2,), dtype=h5py.string_dtype(), fillvalue="zz")

    keras2_file(work / "model.h5", extra=extra)
    data = bytearray((work / "model.h5").read_bytes())
    heap = data.find(b"GCOL")
    descriptor = (2).to_bytes(4, "little") + heap.to_bytes(8, "little")  # len("zz"), the heap's address
    found = [i for i in range(len(data)) if data.startswith(descriptor, i)]
    assert found, "no fill value descriptor"
    for at in found:  # the fill value message and its old form
        data[at : at + 4] = (0x7FFFFFF0).to_bytes(4, "little")
    (work / "model.h5").write_bytes(bytes(data))
    return "model.h5"


def h5_dense_attributes(work: Path, marker: Path) -> str:
    """A valid file written with ``libver='latest'`` whose root holds 12 attributes: HDF5 keeps them in dense
    storage (a fractal heap), where the check of a variable-length attribute's lengths does not look."""

    def extra(f, folder):
        for i in range(9):
            f.attrs[f"note{i}"] = i

    keras2_file(work / "model.h5", extra=extra, libver="latest")
    return "model.h5"


def h5_truncated(work: Path, marker: Path) -> str:
    keras2_file(work / "full.h5")
    (work / "model.h5").write_bytes(cut((work / "full.h5").read_bytes()))
    (work / "full.h5").unlink()
    return "model.h5"


def h5_random(work: Path, marker: Path) -> str:
    (work / "model.h5").write_bytes(noise(b"\x89HDF\r\n\x1a\n"))
    return "model.h5"


def keras3_hard_link_cycle(work: Path, marker: Path) -> str:
    def extra(f):  # two children of /layers link back to it: 2**32 paths for a walk without a visited set
        for child in ("a", "b"):
            f[f"layers/{child}/layers"] = f["layers"]

    keras3_weights(work / "model.weights.h5", extra)
    return "model.weights.h5"


def keras3_soft_link_fan_out(work: Path, marker: Path) -> str:
    import h5py

    def extra(f):  # soft links to an existing group are allowed; the walk must still visit each group once
        for child in ("a", "b"):
            f[f"layers/{child}/layers"] = h5py.SoftLink("/layers")

    keras3_weights(work / "model.weights.h5", extra)
    return "model.weights.h5"


def keras2_config_nested(work: Path, marker: Path) -> str:
    dense = {"class_name": "Dense", "config": {"name": "dense_1", "units": 2, "kernel_regularizer": deep_list(600)}}
    return keras2_file(work / "model.h5", layers=[conv_config(), dense])


def keras2_lambda(work: Path, marker: Path) -> str:
    fn = {"class_name": "Lambda", "config": {"name": "lambda_1", "function": [lambda_code(marker), None, None],
                                             "function_type": "lambda", "module": "__main__"}}  # fmt: skip
    return keras2_file(work / "model.h5", layers=[fn, conv_config()])


def keras2_dilation(work: Path, marker: Path) -> str:
    return keras2_file(work / "model.h5", layers=[conv_config(dilation_rate=[10**9], padding="same")])


def keras2_stride(work: Path, marker: Path) -> str:
    # 5 filters, not 4: with 4, verify.default_input spends ~10**12 steps looking for a length whose
    # output length (4 for every length near 3 * stride) differs from out_channels -- a hang the cap removes.
    kernel = np.resize(KERNEL, (3, 2, 5))
    return keras2_file(work / "model.h5", layers=[conv_config(strides=[10**12], padding="same", filters=5)], kernel=kernel)


# -- zip cases ---------------------------------------------------------------------------------------
def zip_with(extra: tuple[str, bytes]) -> Callable[[Path, Path], str]:
    def build(work: Path, marker: Path) -> str:
        keras3_archive(work / "model.keras")
        members = read_members(work / "model.keras") + [extra]
        write_zip(work / "model.keras", members)
        return "model.keras"

    return build


def read_members(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as z:
        return [(n, z.read(n)) for n in z.namelist()]


def zip_symlink(work: Path, marker: Path) -> str:
    keras3_archive(work / "model.keras")
    members: list = [m for m in read_members(work / "model.keras") if m[0] != "model.weights.h5"]
    link = zipfile.ZipInfo("model.weights.h5")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    link.comment = b"/etc/passwd"
    members.append(link)
    write_zip(work / "model.keras", members)
    return "model.keras"


def zip_bomb(work: Path, marker: Path) -> str:
    keras3_archive(work / "model.keras")
    members = read_members(work / "model.keras") + [("assets/zeros.bin", bytes(8 << 20))]  # ratio about 1000
    write_zip(work / "model.keras", members, zipfile.ZIP_DEFLATED)
    return "model.keras"


def zip_truncated(work: Path, marker: Path) -> str:
    keras3_archive(work / "full.keras")
    (work / "model.keras").write_bytes(cut((work / "full.keras").read_bytes()))
    (work / "full.keras").unlink()
    return "model.keras"


def zip_random(work: Path, marker: Path) -> str:
    (work / "model.keras").write_bytes(noise(b"PK\x03\x04"))
    return "model.keras"


def torch_pickle(work: Path, marker: Path) -> str:
    """A PyTorch ``.pt`` (a zip around ``data.pkl``) whose pickle runs the payload under ``torch.load(weights_only=False)``."""
    write_zip(work / "model.pt", [("archive/data.pkl", pickle_payload(marker)), ("archive/version", b"3\n"), ("archive/byteorder", b"little")])
    return "model.pt"


def keras3_lambda(work: Path, marker: Path) -> str:
    fn = {"module": "keras.layers", "class_name": "Lambda", "registered_name": None,
          "config": {"name": "lambda", "function": {"class_name": "__lambda__",
                                                    "config": {"code": lambda_code(marker), "defaults": None, "closure": None}}}}  # fmt: skip
    return keras3_archive(work / "model.keras", layers=[fn, keras3_conv()])


def keras3_os_system(work: Path, marker: Path) -> str:
    evil = {"module": "os", "class_name": "system", "registered_name": "os.system", "config": {"name": "system", "command": shell(marker)}}
    return keras3_archive(work / "model.keras", layers=[evil, keras3_conv()])


def keras3_custom_class(work: Path, marker: Path) -> str:
    """A config naming a class from a module that sits in the working directory, which is on ``sys.path``."""
    (work / "evil_pkg.py").write_text(f"import os\nos.system({shell(marker)!r})\nclass Evil: pass\n")
    evil = {"module": "evil_pkg", "class_name": "Evil", "registered_name": "evil_pkg>Evil", "config": {"name": "evil"}}
    return keras3_archive(work / "model.keras", layers=[evil, keras3_conv()])


# -- ONNX cases -----------------------------------------------------------------------------------------
def onnx_model(path: Path, nodes: list = (), inits: list = (), data: str = "x", weight: Any = None, **conv_attrs: Any) -> str:
    from onnx import TensorProto, helper, numpy_helper

    w = weight if weight is not None else numpy_helper.from_array(ONNX_KERNEL, "W")
    conv = helper.make_node("Conv", [data, "W"], ["y"], name="conv", **conv_attrs)
    graph = helper.make_graph(
        list(nodes) + [conv], "hostile", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "L"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w] + list(inits),
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path.name


def huge_weight(**data: Any) -> Any:
    from onnx import TensorProto

    return TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20, 3], **data)


def onnx_pad_from_loop(work: Path, marker: Path) -> str:
    from onnx import TensorProto, helper, numpy_helper

    vi = helper.make_tensor_value_info
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])], "spin",
        [vi("i", TensorProto.INT64, []), vi("c_in", TensorProto.BOOL, []), vi("v_in", TensorProto.INT64, [6])],
        [vi("c_out", TensorProto.BOOL, []), vi("v_out", TensorProto.INT64, [6])],
    )  # fmt: skip
    inits = [numpy_helper.from_array(np.array(10**12, np.int64), "trip"), numpy_helper.from_array(np.array(True), "go"),
             numpy_helper.from_array(np.array([0, 0, 1, 0, 0, 1], np.int64), "pads0")]  # fmt: skip
    nodes = [helper.make_node("Loop", ["trip", "go", "pads0"], ["pads"], body=body, name="spin"),
             helper.make_node("Pad", ["x", "pads"], ["xp"], name="pad")]  # fmt: skip
    return onnx_model(work / "model.onnx", nodes, inits, data="xp")


def onnx_pad_from_constant_of_shape(work: Path, marker: Path) -> str:
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(np.array([1 << 37], np.int64), "tib"),  # 2**37 int64 = 1 TiB
             numpy_helper.from_array(np.array([0], np.int64), "start"), numpy_helper.from_array(np.array([6], np.int64), "stop")]  # fmt: skip
    nodes = [helper.make_node("ConstantOfShape", ["tib"], ["zeros"], name="terabyte",
                              value=numpy_helper.from_array(np.array([0], np.int64))),
             helper.make_node("Slice", ["zeros", "start", "stop"], ["pads"], name="six"),
             helper.make_node("Pad", ["x", "pads"], ["xp"], name="pad")]  # fmt: skip
    return onnx_model(work / "model.onnx", nodes, inits, data="xp")


def onnx_pad_long_chain(work: Path, marker: Path) -> str:
    from onnx import helper, numpy_helper

    nodes = [helper.make_node("Identity", [f"p{i}"], [f"p{i + 1}"], name=f"id{i}") for i in range(5000)]
    nodes.append(helper.make_node("Pad", ["x", "p5000"], ["xp"], name="pad"))
    return onnx_model(work / "model.onnx", nodes, [numpy_helper.from_array(np.array([0, 0, 1, 0, 0, 1], np.int64), "p0")], data="xp")


def onnx_huge_dims_raw(work: Path, marker: Path) -> str:
    return onnx_model(work / "model.onnx", weight=huge_weight(raw_data=bytes(12)))


def onnx_huge_dims_typed(work: Path, marker: Path) -> str:
    return onnx_model(work / "model.onnx", weight=huge_weight(float_data=[0.0, 0.0, 0.0]))


def external_weight(location: str, offset: int) -> Any:
    from onnx import TensorProto

    t = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=list(ONNX_KERNEL.shape), data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(ONNX_KERNEL.nbytes))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def onnx_external_outside(work: Path, marker: Path) -> str:
    return onnx_model(work / "model.onnx", weight=external_weight("../../../../../../etc/passwd", 0))


def onnx_external_past_end(work: Path, marker: Path) -> str:
    (work / "weights.bin").write_bytes(bytes(16))
    return onnx_model(work / "model.onnx", weight=external_weight("weights.bin", 1 << 30))


def onnx_conv_without_weight(work: Path, marker: Path) -> str:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Conv", ["x"], ["y"], name="conv")], "hostile",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "L"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])  # fmt: skip
    (work / "model.onnx").write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return "model.onnx"


def onnx_truncated(work: Path, marker: Path) -> str:
    onnx_model(work / "full.onnx")
    (work / "model.onnx").write_bytes(cut((work / "full.onnx").read_bytes()))
    (work / "full.onnx").unlink()
    return "model.onnx"


def onnx_random(work: Path, marker: Path) -> str:
    (work / "model.onnx").write_bytes(noise(b""))
    return "model.onnx"


def onnx_dilation(work: Path, marker: Path) -> str:
    hint = "layoutconv: padding_mode=zeros padding=same_upper"
    return onnx_model(work / "model.onnx", dilations=[10**9], pads=[10**9, 10**9], doc_string=hint)


# -- .npy cases -----------------------------------------------------------------------------------------
def npy(header: str, data: bytes) -> bytes:
    """A version 1.0 ``.npy`` file with this header text (padded as numpy pads it)."""
    text = header + " " * (63 - (10 + len(header)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1") + data


def npy_writer(header: str, data: Callable[[Path], bytes]) -> Callable[[Path, Path], str]:
    def build(work: Path, marker: Path) -> str:
        (work / "hostile.npy").write_bytes(npy(header.replace("MARKER", str(marker)), data(marker)))
        return "hostile.npy"

    return build


def npy_zip_bomb(work: Path, marker: Path) -> str:
    write_zip(work / "hostile.npy", [("arr_0.npy", bytes(8 << 20))], zipfile.ZIP_DEFLATED)
    return "hostile.npy"


def npy_truncated(work: Path, marker: Path) -> str:
    np.save(work / "full.npy", np.ones((1, 3, 40), np.float32))
    (work / "hostile.npy").write_bytes(cut((work / "full.npy").read_bytes()))
    (work / "full.npy").unlink()
    return "hostile.npy"


def npy_random(work: Path, marker: Path) -> str:
    (work / "hostile.npy").write_bytes(noise(b"\x93NUMPY\x01\x00"))
    return "hostile.npy"


# -- safetensors cases --------------------------------------------------------------------------------------
def safetensors(header: Any, data: bytes = b"", length: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return (len(text) if length is None else length).to_bytes(8, "little") + text + data


def st_writer(make: Callable[[], bytes]) -> Callable[[Path, Path], str]:
    def build(work: Path, marker: Path) -> str:
        (work / "model.safetensors").write_bytes(make())
        return "model.safetensors"

    return build


def st_valid() -> bytes:
    return safetensors({"w": {"dtype": "F32", "shape": [4, 3, 3], "data_offsets": [0, 144]}}, bytes(144))


ST_CASES = {
    "st-header-length-2e63": lambda: safetensors(b'{"w": {}}', length=1 << 63),
    "st-offsets-past-end": lambda: safetensors({"w": {"dtype": "F32", "shape": [250000000000], "data_offsets": [0, 10**12]}}, bytes(16)),
    "st-overlapping-tensors": lambda: safetensors({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                                                   "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, bytes(16)),  # fmt: skip
    "st-duplicate-keys": lambda: safetensors(b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                                             b'"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', bytes(4)),  # fmt: skip
    "st-header-nested-900": lambda: safetensors(b'{"__metadata__": ' + b"[" * 900 + b"]" * 900 + b"}"),
    "st-object-dtype": lambda: safetensors({"w": {"dtype": "O", "shape": [1], "data_offsets": [0, 8]}}, pickle_payload(Path("/nonexistent"))[:8]),
    "st-truncated": lambda: cut(st_valid()),
    "st-random-bytes": lambda: noise(b""),
}


# -- hostile output paths ---------------------------------------------------------------------------------
def out_symlink(work: Path, marker: Path) -> str:
    (work.parent / "elsewhere").mkdir()
    (work.parent / "elsewhere" / "victim.onnx").write_bytes(b"precious")
    (work / "out.onnx").symlink_to("../elsewhere/victim.onnx")
    return "out.onnx"


def out_read_only_file(work: Path, marker: Path) -> str:
    (work / "out.onnx").write_bytes(b"precious")
    (work / "out.onnx").chmod(0o444)
    return "out.onnx"


def out_directory(work: Path, marker: Path) -> str:
    (work / "out.onnx").mkdir()
    (work / "out.onnx" / "keep.txt").write_text("precious")
    return "out.onnx"


def out_read_only_dir(work: Path, marker: Path) -> str:
    (work / "ro").mkdir()
    (work / "ro" / "keep.txt").write_text("precious")
    (work / "ro").chmod(0o555)
    return "ro/out.onnx"


# -- entry points ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One way in: CLI arguments (``{file}`` is the hostile file) or an API call the driver knows."""

    name: str
    argv: tuple[str, ...] = ()
    api: str = ""
    output: str = ""  # what a successful run writes (allowed to appear in the case's directory)


ENTRIES: dict[str, tuple[Entry, ...]] = {
    "keras": (
        Entry("inspect", ("inspect", "{file}")),
        Entry("verify --file", ("verify", "--file", "{file}", "--frameworks", "onnx")),
        Entry("explain --file", ("explain", "--file", "{file}")),
        Entry("convert", ("convert", "{file}", "out.onnx"), output="out.onnx"),
        Entry("open().conv1d()", api="open"),
    ),
    "onnx": (
        Entry("inspect", ("inspect", "{file}")),
        Entry("verify --file", ("verify", "--file", "{file}", "--frameworks", "onnx")),
        Entry("explain --file", ("explain", "--file", "{file}")),
        Entry("convert", ("convert", "{file}", "out.onnx"), output="out.onnx"),
        Entry("from_onnx()", api="from_onnx"),
    ),
    "npy": (
        Entry("explain --input", ("explain", "--input", "{file}", "--in-channels", "3", "--kernel-size", "3")),
        Entry("diagnose --kernel", ("diagnose", "--kernel", "{file}", "--x", "x.npy", "--y", "y.npy")),
        Entry("diagnose --x", ("diagnose", "--kernel", "W.npy", "--x", "{file}", "--y", "y.npy")),
        Entry("verify --kernel", ("verify", "--kernel", "{file}", "--frameworks", "onnx")),
    ),
    "safetensors": (
        Entry("inspect", ("inspect", "{file}")),
        Entry("convert", ("convert", "{file}", "out.onnx")),
    ),
    "output": (  # without and then with permission to replace an existing output
        Entry("convert", ("convert", "model.h5", "{file}")),
        Entry("save()", api="save"),
        Entry("convert --force", ("convert", "model.h5", "{file}", "--force"), output="{file}"),
        Entry("save(overwrite=True)", api="save_overwrite", output="{file}"),
    ),
}


def npy_helpers(work: Path) -> None:
    """The clean arrays the .npy entry points need besides the hostile one."""
    rng = np.random.default_rng(3)
    np.save(work / "W.npy", rng.normal(size=(4, 3, 3)).astype(np.float32))
    np.save(work / "x.npy", rng.normal(size=(1, 3, 12)).astype(np.float32))
    np.save(work / "y.npy", rng.normal(size=(1, 4, 10)).astype(np.float32))


# -- the corpus -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One crafted file: how to build it, which entry points read it, what a refusal must say."""

    id: str
    kind: str  # a key of ENTRIES
    build: Callable[[Path, Path], str]  # (work directory, marker path) -> the file's name in the work directory
    words: tuple[str, ...] = ()  # every refusal message contains each of these ("a|b": either)
    reads: tuple[str, ...] = ()  # entry points that read it successfully: a valid file whose payload is mere data
    waits: tuple[str, ...] = ()  # entry points ("*" for all) that wait for a fix outside the reading code ...
    waits_for: str = ""  # ... namely this one: they are expected to fail until it lands, then the test says so
    trigger: Callable[[Path], Any] | None = None  # runs the payload as a careless reader would


ALL_KERAS = tuple(e.name for e in ENTRIES["keras"])


def unpickle_attr(path: Path) -> Any:
    import h5py

    with h5py.File(path, "r") as f:
        return pickle.loads(f.attrs["model_config"].tobytes())


def run_lambda(code_b64: str) -> Any:
    code = marshal.loads(codecs.decode(code_b64.encode("ascii"), "base64"))
    return types.FunctionType(code, {"__builtins__": __builtins__})(1)


def keras2_lambda_trigger(path: Path) -> Any:
    import h5py

    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["model_config"])
    return run_lambda(config["config"]["layers"][0]["config"]["function"][0])


def keras3_config(path: Path) -> dict:
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("config.json"))


def keras3_deserialize_first(path: Path) -> Any:
    """What a deserializer without a safe mode does with the first layer: import its module, call its class."""
    layer = keras3_config(path)["config"]["layers"][0]
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.find_spec(layer["module"])
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    target = getattr(module, layer["class_name"])
    return target(layer["config"]["command"]) if "command" in layer["config"] else target()


CASES = [
    # HDF5: links, storage, bombs, corruption, payloads
    Case("h5-external-link", "keras", h5_external_link, ("external link", "target.h5")),
    Case("h5-soft-link-loop", "keras", h5_soft_link_loop, ("soft link", "chain")),
    Case("h5-external-storage", "keras", h5_external_storage, ("external storage",)),
    Case("h5-virtual-dataset", "keras", h5_virtual_dataset, ("virtual dataset",)),
    Case("h5-gzip-bomb", "keras", h5_gzip_bomb, ("absurd size",)),
    Case("h5-pickle-attribute", "keras", h5_pickle_attribute, ("model_config", "not valid JSON"), trigger=unpickle_attr),
    Case("h5-global-heap-loop", "keras", h5_global_heap_loop, ("corrupt global heap collection",)),
    Case("h5-vlen-length-2gib", "keras", h5_vlen_length_2gib, ("model.h5", "more than the file holds")),
    Case("h5-vlen-outside-file", "keras", h5_vlen_outside_file, ("model.h5", "outside the file")),
    Case("h5-vlen-fill-value-2gib", "keras", h5_vlen_fill_value_2gib, ("model.h5", "fill value", "more than the file holds")),
    Case("h5-header-continuation-loop", "keras", h5_continuation_loop, ("model.h5",)),
    Case("h5-header-claims-65535-messages", "keras", h5_header_claims_65535_messages, reads=ALL_KERAS),
    Case("h5-attribute-past-header", "keras", h5_attribute_past_header, ("model.h5",)),
    Case("h5-dense-attributes", "keras", h5_dense_attributes, ("model.h5", "dense attribute storage")),
    Case("h5-truncated", "keras", h5_truncated, ("model.h5",)),
    Case("h5-random-bytes", "keras", h5_random, ("model.h5",)),
    Case("keras3-hard-link-cycle", "keras", keras3_hard_link_cycle, ("second time",)),
    Case("keras3-soft-link-fan-out", "keras", keras3_soft_link_fan_out, reads=ALL_KERAS),
    Case("keras2-config-nested-600", "keras", keras2_config_nested, ("nested too deeply",)),
    Case("keras2-lambda-marshal", "keras", keras2_lambda, reads=ALL_KERAS, trigger=keras2_lambda_trigger),
    Case("keras2-dilation-1e9", "keras", keras2_dilation, ("dilation",), reads=("inspect",)),
    Case("keras2-stride-1e12", "keras", keras2_stride, ("stride",), reads=("inspect",)),
    # zip archives
    Case("zip-slip", "keras", zip_with(("../../evil.txt", b"x")), ("'..' path component",)),
    Case("zip-absolute-member", "keras", zip_with(("/tmp/evil.txt", b"x")), ("absolute path",)),
    Case("zip-duplicate-member", "keras", zip_with(("config.json", b"{}")), ("duplicate member",)),
    Case("zip-symlink-member", "keras", zip_symlink, ("symbolic link",)),
    Case("zip-bomb", "keras", zip_bomb, ("decompression bomb",)),
    Case("zip-truncated", "keras", zip_truncated, ("model.keras",)),
    Case("zip-random-bytes", "keras", zip_random, ("model.keras",)),
    Case("torch-pt-pickle", "keras", torch_pickle, ("model.pt", "objects other than tensors|not a Keras 3 .keras file"),
         trigger=lambda p: pickle.loads(zipfile.ZipFile(p).read("archive/data.pkl"))),  # fmt: skip
    Case("keras3-lambda-marshal", "keras", keras3_lambda, reads=ALL_KERAS,
         trigger=lambda p: run_lambda(keras3_config(p)["config"]["layers"][0]["config"]["function"]["config"]["code"])),  # fmt: skip
    Case("keras3-config-os-system", "keras", keras3_os_system, reads=ALL_KERAS, trigger=keras3_deserialize_first),
    Case("keras3-config-custom-class", "keras", keras3_custom_class, reads=ALL_KERAS, trigger=keras3_deserialize_first),
    # ONNX
    Case("onnx-pad-from-loop-1e12", "onnx", onnx_pad_from_loop, ("Loop",), reads=("inspect",)),
    Case("onnx-pad-constant-of-shape-1tib", "onnx", onnx_pad_from_constant_of_shape, ("ConstantOfShape",), reads=("inspect",)),
    Case("onnx-pad-chain-5000-nodes", "onnx", onnx_pad_long_chain, ("more than 64 nodes",), reads=("inspect",)),
    Case("onnx-huge-dims-raw-data", "onnx", onnx_huge_dims_raw, ("does not hold the data its dims declare",)),
    Case("onnx-huge-dims-float-data", "onnx", onnx_huge_dims_typed, ("does not hold the data its dims declare",)),
    Case("onnx-external-data-outside", "onnx", onnx_external_outside, ("external",)),
    Case("onnx-external-data-past-end", "onnx", onnx_external_past_end, ("external",)),
    Case("onnx-conv-without-weight", "onnx", onnx_conv_without_weight, ("weight input",), reads=("inspect",)),
    Case("onnx-truncated", "onnx", onnx_truncated, ("model.onnx",)),
    Case("onnx-random-bytes", "onnx", onnx_random, ("model.onnx",)),
    Case("onnx-dilation-1e9", "onnx", onnx_dilation, ("dilation",), reads=("inspect",)),
    # .npy
    Case("npy-pickle-object", "npy", npy_writer("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", pickle_payload),
         ("dtype object",), trigger=lambda p: np.load(p, allow_pickle=True)),  # fmt: skip
    Case("npy-declares-1e12-elements", "npy", npy_writer("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }",
         lambda m: bytes(16)), ("too large",)),  # fmt: skip
    Case("npy-structured-dtype", "npy", npy_writer("{'descr': [('a', '<f4'), ('b', '<i4')], 'fortran_order': False, 'shape': (1, 3, 5), }",
         lambda m: bytes(120)), ("unsupported dtype",)),  # fmt: skip
    Case("npy-header-code", "npy", npy_writer("{'descr': __import__('os').system('touch MARKER'), 'fortran_order': False, 'shape': (3,), }",
         lambda m: bytes(12)), ("header is invalid",), trigger=lambda p: eval(p.read_bytes()[10:].split(b"\n")[0])),  # fmt: skip
    Case("npy-huge-header", "npy", lambda w, m: (w / "hostile.npy").write_bytes(b"\x93NUMPY\x01\x00\xff\xff" + b" " * 65535) and "hostile.npy",
         ("65535 bytes",)),  # fmt: skip
    Case("npy-zip-bomb", "npy", npy_zip_bomb, ("not a .npy file", ".npz")),
    Case("npy-truncated", "npy", npy_truncated, ("does not match its size",)),
    Case("npy-random-bytes", "npy", npy_random, ("hostile.npy",)),
    # safetensors (read by inspect)
    *[Case(name, "safetensors", st_writer(make), ("model.safetensors",)) for name, make in ST_CASES.items()],
    # output paths
    Case("out-symlink-to-elsewhere", "output", out_symlink, reads=("convert --force", "save(overwrite=True)")),
    Case("out-read-only-file", "output", out_read_only_file, ("out.onnx",)),
    Case("out-existing-directory", "output", out_directory, ("out.onnx",)),
    Case("out-read-only-directory", "output", out_read_only_dir, ("'ro' is not writable",)),
]


# -- the driver: runs every entry point of one case in one process, one JSON line each ----------------------
DRIVER = r"""
import json, os, sys, time, traceback
spec = json.loads(sys.argv[1])
results = os.fdopen(os.dup(1), "w")
import numpy as np
import layoutconv
from layoutconv import cli


def call(api, path):
    if api == "open":
        return repr(layoutconv.open(path).conv1d())
    if api == "from_onnx":
        return repr(layoutconv.from_onnx(path))
    if api in ("save", "save_overwrite"):
        conv = layoutconv.Conv1D(np.arange(6, dtype=np.float32).reshape(2, 1, 3))
        return str(layoutconv.save(conv, path, overwrite=api == "save_overwrite").passed)
    raise ValueError(api)


for i, entry in enumerate(spec["entries"]):
    names = {s: os.path.join(spec["capture"], f"{i}.{s}") for s in ("out", "err")}
    sys.stdout.flush(); sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fds = [os.open(names[s], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) for s in ("out", "err")]
    os.dup2(fds[0], 1); os.dup2(fds[1], 2)
    result = {"name": entry["name"]}
    start = time.monotonic()
    try:
        if entry["argv"]:
            result["code"] = cli.main(entry["argv"])
        else:
            result["value"] = call(entry["api"], entry["file"])
            result["code"] = 0
    except SystemExit as exc:
        result["code"] = exc.code
    except BaseException as exc:
        result["error"], result["message"] = type(exc).__name__, str(exc)[:3000]
        if entry["argv"] or not isinstance(exc, layoutconv.LayoutError):
            result["crash"] = traceback.format_exc()[-3000:]
    finally:
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(saved[0], 1); os.dup2(saved[1], 2)
        for fd in (*fds, *saved):
            os.close(fd)
    result["seconds"] = round(time.monotonic() - start, 3)
    for s in ("out", "err"):
        with open(names[s], errors="replace") as fh:
            result["std" + s] = fh.read()[-3000:]
    print(json.dumps(result), file=results, flush=True)

# VmHWM, not ru_maxrss: ru_maxrss keeps the size of the process this one was forked from (a pytest that
# has imported TensorFlow) across exec, VmHWM counts this program's own memory only
with open("/proc/self/status") as fh:
    peak = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
print(json.dumps({"peak_rss": peak}), file=results, flush=True)
"""


def _limit() -> None:
    """In the child before exec: cap its address space; as root, drop the capabilities that bypass permissions."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in ROOT_CAPABILITIES:  # root's capabilities after exec are its bounding set
            if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` (links not followed): type, permissions, size, mtime, link target, content hash.

    Directory mtimes are left out: a temporary file created and removed again
    changes them without leaving anything behind.
    """
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            kind = stat.S_IFMT(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                out[str(p.relative_to(root))] = (kind, stat.S_IMODE(st.st_mode))
                continue
            link = os.readlink(p) if stat.S_ISLNK(st.st_mode) else None
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None
            out[str(p.relative_to(root))] = (kind, stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns, link, digest)
    return out


@dataclass
class Run:
    case: Case
    entries: list[Entry]
    results: list[dict]
    before: dict[str, tuple]
    after: dict[str, tuple]
    marker: Path
    work: Path
    file: str
    failure: str = ""  # the subprocess timed out or died
    peak_rss: int = 0  # bytes


def run_case(case: Case, base: Path) -> Run:
    """Build the case, run the driver in a limited subprocess, and collect what happened."""
    root = base / case.id  # snapshot root: the work directory and any victims beside it
    # HOME and TMPDIR live outside the snapshot root: frameworks write their own state there
    # (onnxruntime's telemetry SDK drops a '.ses' session file into TMPDIR on first launch).
    work, capture, home, tmp = root / "work", base / f"{case.id}.capture", base / f"{case.id}.home", base / f"{case.id}.tmp"
    for d in (work, tmp, capture, home):
        d.mkdir(parents=True)
    marker = root / MARKER
    if case.kind == "npy":
        npy_helpers(work)
    if case.kind == "output":
        keras2_file(work / "model.h5", config=False)
    name = case.build(work, marker)
    entries = list(ENTRIES[case.kind])
    spec = {
        "capture": str(capture),
        "entries": [{"name": e.name, "argv": [a.replace("{file}", name) for a in e.argv], "api": e.api, "file": name} for e in entries],
    }
    before = snapshot(root)
    env = dict(os.environ, PYTHONPATH=str(ROOT), HOME=str(home), TMPDIR=str(tmp),
               TF_CPP_MIN_LOG_LEVEL="3", PYTHONDONTWRITEBYTECODE="1",
               LAYOUTCONV_DEBUG="1")  # the CLI re-raises what it would call "unexpected": the driver records a crash  # fmt: skip
    failure, stdout = "", ""
    try:
        proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(spec)], cwd=work, env=env, capture_output=True,
                              text=True, timeout=TIMEOUT, preexec_fn=_limit)  # fmt: skip
        stdout = proc.stdout
        if proc.returncode != 0:
            failure = f"the driver exited with {proc.returncode}:\n{proc.stderr[-3000:]}"
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        failure = f"timed out after {TIMEOUT} s"
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    results = [r for r in lines if "name" in r]
    peak = max((r["peak_rss"] for r in lines if "peak_rss" in r), default=0)
    return Run(case, entries, results, before, snapshot(root), marker, work, name, failure, peak)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    need("h5py", "onnx", "onnxruntime")
    return tmp_path_factory.mktemp("hostile")


def problems_of(run: Run) -> list[tuple[str, str]]:
    """Everything that went wrong in one case: (entry point, or "*" for the whole case; a readable line)."""
    case, problems = run.case, []
    if run.failure:
        problems.append(("*", f"{case.id}: {run.failure}; finished: {[r['name'] for r in run.results]}"))
    by_name = {r["name"]: r for r in run.results}
    for entry in run.entries:
        r = by_name.get(entry.name)
        where = f"{case.id} / {entry.name}"

        def problem(text: str) -> None:
            problems.append((entry.name, f"{where}: {text}"))

        if r is None:
            problem("did not finish")
            continue
        if "crash" in r:
            problem(f"crashed with {r['error']}:\n{r['crash']}")
            continue
        if "Traceback" in r["stderr"]:
            problem(f"a traceback on stderr:\n{r['stderr']}")
        if entry.name in case.reads:
            missing = [w for w in case.words if not any(alternative in r["stdout"] for alternative in w.split("|"))]
            if r["code"] != 0 or r["stderr"].strip():
                problem(f"should read the file; exit {r['code']}, stderr {r['stderr']!r}, {r.get('message', '')}")
            elif missing:  # a report (inspect) must still name what it refused to read
                problem(f"the report lacks {missing}:\n{r['stdout']}")
            continue
        if entry.api:
            message = r.get("message")
            if message is None:
                problem(f"returned {r.get('value')!r} instead of raising a LayoutError")
                continue
        else:
            lines = r["stderr"].strip().splitlines()
            command = entry.argv[0]
            if r["code"] != 2 or len(lines) != 1 or not lines[0].startswith(f"layoutconv {command}: error: "):
                problem(f"expected exit 2 and one line 'layoutconv {command}: error: ...'; got exit {r['code']}, stderr {r['stderr']!r}")
                continue
            message = lines[0]
        missing = [w for w in case.words if not any(alternative in message for alternative in w.split("|"))]
        if missing:
            problem(f"the message lacks {missing}: {message}")
        if case.kind == "output" and f".{Path(run.file).name}." in message:
            problem(f"the message names the hidden temporary file: {message}")
    if run.peak_rss > MEMORY_BUDGET:
        problems.append(("*", f"{case.id}: peak memory {run.peak_rss / 2**20:.0f} MiB, over the {MEMORY_BUDGET / 2**20:.0f} MiB budget"))
    if run.marker.exists():
        problems.append(("*", f"{case.id}: THE PAYLOAD RAN: {run.marker} exists"))
    allowed = {str(Path("work") / e.output.replace("{file}", run.file)) for e in run.entries if e.name in case.reads and e.output}
    changed = sorted(p for p in set(run.before) | set(run.after) if run.before.get(p) != run.after.get(p) and p not in allowed)
    if changed:
        problems.append(("*", f"{case.id}: created or changed outside the requested output: {changed}"))
    return problems


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_hostile_file_is_refused(case, base):
    run = run_case(case, base)
    problems = problems_of(run)
    waiting = [text for where, text in problems if where in case.waits or "*" in case.waits]
    others = [text for where, text in problems if not (where in case.waits or "*" in case.waits)]
    assert not others, "\n".join(others)
    if waiting:  # an expected failure, reported as such (conftest does not count it as a skip)
        pytest.xfail(f"waits for {case.waits_for}:\n" + "\n".join(waiting))
    assert not case.waits, f"{case.id}: {list(case.waits)} pass now; remove waits= from the case (it waited for {case.waits_for})"


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES if c.trigger is not None])
def test_payloads_are_live(case, tmp_path):
    """The payloads are real: read carelessly, each one creates the marker (so its absence above means something)."""
    need("h5py")
    work = tmp_path / "work"
    work.mkdir()
    marker = tmp_path / MARKER
    name = case.build(work, marker)
    try:
        case.trigger(work / name)
    except Exception:
        pass  # the payload ran (or not) before whatever the careless reader did next failed
    assert marker.exists(), f"{case.id}: the payload did not run, so its test proves nothing"


def test_the_global_heap_case_hangs_h5py_alone(tmp_path):
    """Without layoutconv's check, h5py never returns from reading a string attribute of that file."""
    need("h5py")
    name = h5_global_heap_loop(tmp_path, tmp_path / MARKER)
    code = f"import h5py; h5py.File({str(tmp_path / name)!r}, 'r').attrs['backend']"
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run([sys.executable, "-c", code], timeout=3, capture_output=True, preexec_fn=_limit)


def test_corpus_covers_every_kind():
    kinds = {c.id.split("-")[0] for c in CASES}
    assert {"h5", "keras2", "keras3", "zip", "torch", "onnx", "npy", "out"} <= kinds
    assert len({c.id for c in CASES}) == len(CASES)
