"""Hostile and broken files are refused with a layoutconv error naming the file and the problem.

Every hostile file is otherwise a valid Keras 2 weight file, so the refusal
can only come from the safety checks (docs/keras-legacy.md, "Safety").
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

import layoutconv
from layoutconv.errors import FileFormatError, UnsafeFileError
from layoutconv.legacy import _safe_zip

from conftest import need

FIXTURE = Path(__file__).parent / "fixtures" / "legacy_keras" / "deepcpf1_DeepCpf1_weights_keras2.0.5_theano.h5"


@pytest.fixture(scope="module", autouse=True)
def _h5py() -> None:
    need("h5py")


def keras2_file(path: Path, extra=None) -> Path:
    """A small valid Keras 2 weight file; ``extra(f)`` adds the hostile part."""
    import h5py

    rng = np.random.default_rng(7)
    with h5py.File(path, "w") as f:
        f.attrs["backend"] = "tensorflow"
        f.attrs["keras_version"] = "2.2.4"
        f.attrs["layer_names"] = np.array([b"conv1d_1"])
        g = f.create_group("conv1d_1")
        g.attrs["weight_names"] = np.array([b"conv1d_1/kernel:0", b"conv1d_1/bias:0"])
        g["conv1d_1/kernel:0"] = rng.normal(size=(3, 2, 4)).astype(np.float32)
        g["conv1d_1/bias:0"] = rng.normal(size=4).astype(np.float32)
        if extra is not None:
            extra(f, path.parent)
    return path


def external_link(f, folder):
    import h5py

    keras2_file(folder / "target.h5")
    f["conv1d_1/elsewhere"] = h5py.ExternalLink(str(folder / "target.h5"), "/conv1d_1")


def soft_link_out(f, folder):
    import h5py

    f["conv1d_1/escape"] = h5py.SoftLink("/conv1d_1/../../etc")


def soft_link_dangling(f, folder):
    import h5py

    f["conv1d_1/ghost"] = h5py.SoftLink("/no/such/object")


def external_dataset(f, folder):
    (folder / "raw.bin").write_bytes(np.arange(8, dtype=np.float32).tobytes())
    f.create_dataset("conv1d_1/outside", shape=(8,), dtype=np.float32, external=[(str(folder / "raw.bin"), 0, 32)])


def virtual_dataset(f, folder):
    import h5py

    with h5py.File(folder / "source.h5", "w") as src:
        src["data"] = np.arange(6, dtype=np.float32)
    layout = h5py.VirtualLayout(shape=(6,), dtype=np.float32)
    layout[:] = h5py.VirtualSource(str(folder / "source.h5"), "data", shape=(6,))
    f.create_virtual_dataset("conv1d_1/mapped", layout)


def absurd_size(f, folder):
    f.create_dataset("conv1d_1/huge", shape=(1 << 30,), dtype=np.float64, chunks=(1 << 16,), compression="gzip")


@pytest.mark.parametrize(
    "extra, words",
    [
        pytest.param(external_link, ["external link", "/conv1d_1/elsewhere", "target.h5"], id="external-link"),
        pytest.param(soft_link_out, ["soft link", "points out of the file"], id="soft-link-out"),
        pytest.param(soft_link_dangling, ["soft link", "dangling", "/no/such/object"], id="soft-link-dangling"),
        pytest.param(external_dataset, ["external storage", "/conv1d_1/outside"], id="external-dataset"),
        pytest.param(virtual_dataset, ["virtual dataset", "/conv1d_1/mapped"], id="virtual-dataset"),
        pytest.param(absurd_size, ["absurd size", "8589934592 bytes"], id="absurd-declared-size"),
    ],
)
def test_hostile_hdf5_refused(tmp_path, extra, words):
    path = keras2_file(tmp_path / "hostile.h5", extra)
    with pytest.raises(UnsafeFileError) as info:
        layoutconv.open(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_clean_file_opens(tmp_path):
    import h5py

    def inner_soft_link(f, folder):
        f["conv1d_1/alias"] = h5py.SoftLink("/conv1d_1/conv1d_1")

    kf = layoutconv.open(keras2_file(tmp_path / "clean.h5", inner_soft_link))
    assert kf.conv1d().kernel.shape == (4, 2, 3)


def test_truncated_file(tmp_path):
    data = FIXTURE.read_bytes()
    path = tmp_path / "truncated.h5"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError) as info:
        layoutconv.open(path)
    assert not isinstance(info.value, UnsafeFileError)
    assert str(path) in str(info.value) and "truncated" in str(info.value)


def test_text_file_named_h5(tmp_path):
    path = tmp_path / "weights.h5"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 431904\n")
    with pytest.raises(FileFormatError, match="neither an HDF5 file nor a zip archive") as info:
        layoutconv.open(path)
    assert str(path) in str(info.value)


# -- zip archives ----------------------------------------------------------------
def valid_members() -> dict[str, bytes]:
    config = {"class_name": "Sequential", "config": {"name": "s", "layers": [{"class_name": "Conv1D", "config": {"name": "conv1d", "filters": 4, "kernel_size": [3], "strides": [1], "padding": "valid", "dilation_rate": [1], "use_bias": True}}]}}
    return {
        "metadata.json": json.dumps({"keras_version": "3.0.0"}).encode(),
        "config.json": json.dumps(config).encode(),
        "model.weights.h5": _keras3_weights_bytes(),
    }


def _keras3_weights_bytes() -> bytes:
    import h5py

    rng = np.random.default_rng(3)
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f["layers/conv1d/vars/0"] = rng.normal(size=(3, 2, 4)).astype(np.float32)
        f["layers/conv1d/vars/1"] = rng.normal(size=4).astype(np.float32)
        f.create_group("vars")
    return buf.getvalue()


def write_zip(path: Path, members: list[tuple[str, bytes]], compression=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names warn
        for name, data in members:
            z.writestr(name, data)
    return path


def test_valid_archive_opens(tmp_path):
    kf = layoutconv.open(write_zip(tmp_path / "ok.keras", list(valid_members().items())))
    assert kf.format == "keras3-archive" and kf.keras_version == "3.0.0"
    assert kf.conv1d().kernel.shape == (4, 2, 3)


@pytest.mark.parametrize(
    "extra, words",
    [
        pytest.param(("../outside.txt", b"x"), ["'../outside.txt'", "'..' path component"], id="dotdot-member"),
        pytest.param(("/etc/cron.d/job", b"x"), ["'/etc/cron.d/job'", "absolute path"], id="absolute-member"),
        pytest.param(("config.json", b"{}"), ["duplicate member names", "config.json"], id="duplicate-names"),
    ],
)
def test_hostile_archive_names_refused(tmp_path, extra, words):
    path = write_zip(tmp_path / "bad.keras", list(valid_members().items()) + [extra])
    with pytest.raises(UnsafeFileError) as info:
        layoutconv.open(path)
    assert str(path) in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_decompression_bomb_refused(tmp_path):
    bomb = bytes(8 << 20)  # 8 MiB of zeros deflate to about 8 KiB: ratio ~1000
    path = write_zip(tmp_path / "bomb.keras", list(valid_members().items()) + [("assets/zeros.bin", bomb)], zipfile.ZIP_DEFLATED)
    with pytest.raises(UnsafeFileError, match="decompression bomb") as info:
        layoutconv.open(path)
    assert str(path) in str(info.value) and "assets/zeros.bin" in str(info.value)


def test_read_cap_and_declared_size(tmp_path, monkeypatch):
    path = write_zip(tmp_path / "big.keras", list(valid_members().items()))
    monkeypatch.setattr(_safe_zip, "MAX_MEMBER_BYTES", 1000)  # smaller than model.weights.h5
    with pytest.raises(UnsafeFileError, match="absurd size") as info:
        layoutconv.open(path)
    assert "model.weights.h5" in str(info.value)


def test_truncated_archive(tmp_path):
    data = write_zip(tmp_path / "full.keras", list(valid_members().items())).read_bytes()
    path = tmp_path / "cut.keras"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match="Cannot read the zip archive") as info:
        layoutconv.open(path)
    assert str(path) in str(info.value)


def test_hostile_weights_member_refused(tmp_path):
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f["layers/conv1d/vars/0"] = np.zeros((3, 2, 4), np.float32)
        f["layers/conv1d/vars/1"] = h5py.ExternalLink("/etc/passwd", "/x")
    members = valid_members()
    members["model.weights.h5"] = buf.getvalue()
    path = write_zip(tmp_path / "inner.keras", list(members.items()))
    with pytest.raises(UnsafeFileError, match="external link") as info:
        layoutconv.open(path)
    assert f"{path}!model.weights.h5" in str(info.value)


def _weights_naming_conv1d(length: int | None = None) -> bytes:
    """Keras 3 weights whose ``vars`` group is named by a ``str`` attribute (a variable-length string, as Keras 3
    writes it), its declared length optionally replaced."""
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f["layers/conv1d/vars/0"] = np.random.default_rng(4).normal(size=(3, 2, 4)).astype(np.float32)
        f["layers/conv1d/vars/1"] = np.random.default_rng(5).normal(size=4).astype(np.float32)
        f["layers/conv1d/vars"].attrs["name"] = "conv1d"
    data = bytearray(buf.getvalue())
    if length is not None:
        heap = data.find(b"GCOL")
        at = data.find((6).to_bytes(4, "little") + heap.to_bytes(8, "little"))  # len("conv1d"), the heap's address
        assert at > 0
        data[at : at + 4] = length.to_bytes(4, "little")
    return bytes(data)


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["read-in-place", "read-into-memory"])
def test_a_string_declaring_2gib_in_an_archive_is_refused(tmp_path, compression):
    """The check reads the weights member where h5py reads it: in place in the archive, or from memory."""
    members = valid_members()
    members["model.weights.h5"] = _weights_naming_conv1d()
    clean = write_zip(tmp_path / "clean.keras", list(members.items()), compression)
    assert [layer.name for layer in layoutconv.open(clean).layers] == ["conv1d"]
    members["model.weights.h5"] = _weights_naming_conv1d(length=0x7FFFFFF0)
    path = write_zip(tmp_path / "hostile.keras", list(members.items()), compression)
    with pytest.raises(UnsafeFileError, match="more than the file holds") as info:
        layoutconv.open(path)
    assert f"{path}!model.weights.h5 has the attribute 'name' of '/layers/conv1d/vars'" in str(info.value)


# -- bounded work on hostile structure ----------------------------------------------------------
def keras3_weights_file(path: Path, extra) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        f["layers/conv1d/vars/0"] = np.zeros((3, 2, 4), np.float32)
        f["layers/conv1d/vars/1"] = np.zeros(4, np.float32)
        extra(f)
    return path


def test_group_linked_twice_is_refused(tmp_path):
    """Hard links from two children back to /layers: 2**32 paths for a walk that does not remember where it was."""

    def cycle(f):
        for child in ("a", "b"):
            f[f"layers/{child}/layers"] = f["layers"]

    path = keras3_weights_file(tmp_path / "cycle.weights.h5", cycle)
    with pytest.raises(UnsafeFileError, match="links the HDF5 group '/layers' a second time") as info:
        layoutconv.open(path)
    assert str(path) in str(info.value)


def test_soft_links_fanning_out_are_walked_once(tmp_path):
    import h5py

    def fan_out(f):
        for child in ("a", "b"):
            f[f"layers/{child}/layers"] = h5py.SoftLink("/layers")

    kf = layoutconv.open(keras3_weights_file(tmp_path / "fan.weights.h5", fan_out))
    assert len(kf.layers) == 1 and kf.conv1d().kernel.shape == (4, 2, 3)


def test_symlink_member_is_refused(tmp_path):
    members = valid_members()
    link = zipfile.ZipInfo("model.weights.h5")
    link.create_system = 3
    link.external_attr = 0o120777 << 16
    path = tmp_path / "link.keras"
    with zipfile.ZipFile(path, "w") as z:
        for name in ("metadata.json", "config.json"):
            z.writestr(name, members[name])
        z.writestr(link, "/etc/passwd")
    with pytest.raises(UnsafeFileError, match="'model.weights.h5' .* is a symbolic link"):
        layoutconv.open(path)


def model_file(path: Path, layers: list) -> Path:
    import h5py

    keras2_file(path)
    with h5py.File(path, "a") as f:
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": {"name": "s", "layers": layers}})
        f.attrs["layer_names"] = np.array([b"conv1d_1"])
    return path


def conv_layer(**config) -> dict:
    return {"class_name": "Conv1D", "config": {"name": "conv1d_1", "filters": 4, "kernel_size": [3], "use_bias": True, **config}}


def test_config_nesting_is_capped(tmp_path):
    from layoutconv.legacy.formats import MAX_JSON_DEPTH, json_depth

    deep: list = []
    for _ in range(600):
        deep = [deep]
    assert json_depth(deep) == MAX_JSON_DEPTH + 1  # counting stops above the cap
    assert json_depth({"a": [1, {"b": []}]}) == 4 and json_depth(7) == 0
    dense = {"class_name": "Dense", "config": {"name": "d", "kernel_regularizer": deep}}
    with pytest.raises(FileFormatError, match=f"nested too deeply. Expected lists and objects nested at most {MAX_JSON_DEPTH}"):
        layoutconv.open(model_file(tmp_path / "deep.h5", [conv_layer(), dense]))


def test_padding_rules_compared_without_enumerating_lengths(tmp_path):
    """The largest stride layoutconv accepts: comparing 'same' with the config used to try 4 * s * r lengths."""
    import time

    kf = layoutconv.open(model_file(tmp_path / "wide.h5", [conv_layer(strides=[1 << 24], padding="same")]))
    start = time.perf_counter()
    assert kf.conv1d(padding="same_upper").stride == (1 << 24,)
    with pytest.raises(layoutconv.ConfigError, match="contradicts the file's config"):
        kf.conv1d(padding="same_lower")
    assert time.perf_counter() - start < 1


def test_inspect_reports_an_absurd_dilation(tmp_path):
    kf = layoutconv.open(model_file(tmp_path / "absurd.h5", [conv_layer(dilation_rate=[10**9], padding="same")]))
    assert "conv1d_1: Invalid value for argument `dilation`" in kf.summary()
    with pytest.raises(layoutconv.ConfigError, match="dilation"):
        kf.conv1d()
