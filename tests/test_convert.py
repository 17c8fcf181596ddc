"""`layoutconv.save` / `layoutconv convert`: write, read back with the framework, verify, then keep."""

from __future__ import annotations

import os

import numpy as np
import pytest

import layoutconv
from layoutconv import ConfigError, Conv1D, UnsupportedError
from layoutconv import cli
from conftest import need

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "legacy_keras", "deepcpf1_Seq_deepCpf1_weights_keras1_theano.h5")
NEEDS = {"onnx": ("onnx", "onnxruntime"), "keras": ("keras", "tensorflow"), "torch": ("torch",)}
SUFFIX = {"onnx": ".onnx", "keras": ".keras", "torch": ".pt"}


def conv_with(rng, padding, stride=1, mode="zeros"):
    # kernel_size == in_channels == filters: a wrong permutation would still fit
    return Conv1D(rng.standard_normal((3, 3, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32),
                  stride=stride, padding=padding, padding_mode=mode)


@pytest.mark.parametrize("target", list(SUFFIX))
@pytest.mark.parametrize("padding, stride", [("valid", 1), ("causal", 1), ((2, 0), 1), ("same_upper", 2)],
                         ids=["valid", "causal", "explicit", "same-s2"])
def test_written_file_holds_the_conv(tmp_path, rng, target, padding, stride):
    need(*NEEDS[target])
    conv = conv_with(rng, padding, stride)
    out = tmp_path / f"layer{SUFFIX[target]}"
    report = layoutconv.save(conv, out)
    assert report.passed and out.exists()
    assert sorted(os.listdir(tmp_path)) == [out.name]  # no temporary left behind
    back = layoutconv.convert.target_for(out).read(str(out), conv)
    assert back.same_weights(conv) and back.equivalent(conv, spatial=17)


def test_torch_file_loads_with_weights_only(tmp_path, rng):
    need("torch")
    import torch

    conv = conv_with(rng, "valid")
    out = tmp_path / "w.pt"
    layoutconv.save(conv, out)
    state = torch.load(out, weights_only=True)
    assert sorted(state) == ["bias", "weight"]
    assert state["weight"].numpy().tobytes() == conv.kernel.tobytes()


def test_unsupported_writes_nothing(tmp_path, rng):
    need("keras", "tensorflow")
    conv = conv_with(rng, (1, 1), mode="reflect")
    with pytest.raises(UnsupportedError, match="reflect"):
        layoutconv.save(conv, tmp_path / "m.keras")
    assert os.listdir(tmp_path) == []


def test_unverifiable_dtype_writes_nothing(tmp_path, rng):
    need("onnx", "onnxruntime")
    conv = Conv1D(rng.standard_normal((3, 2, 4)))  # float64: onnxruntime has no CPU Conv for it
    with pytest.raises(UnsupportedError, match="Nothing was written"):
        layoutconv.save(conv, tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


def test_unknown_suffix(tmp_path, rng):
    with pytest.raises(ConfigError, match=r"suffix '\.bin'"):
        layoutconv.save(conv_with(rng, "valid"), tmp_path / "m.bin")


def test_cli_convert_legacy_theano_file_to_torch(tmp_path, capsys):
    need("h5py")
    need("torch")
    import torch

    out = tmp_path / "seq.pt"
    assert cli.main(["convert", FIXTURE, str(out)]) == 0
    assert "PASSED" in capsys.readouterr().out
    # The file holds the Theano kernel reversed along K, in PyTorch's (O, I, K) layout.
    raw = layoutconv.open(FIXTURE).weights("convolution1d_157")
    kernel = next(w for w in raw if w.ndim == 4)  # (K, 1, I, O)
    state = torch.load(out, weights_only=True)
    np.testing.assert_array_equal(state["weight"].numpy(), kernel[::-1, 0].transpose(2, 1, 0))


# -- output paths: nothing is created or changed that was not asked for ---------------------
def _tree(folder):
    return sorted((str(p.relative_to(folder)), p.is_symlink(), p.read_bytes() if p.is_file() and not p.is_symlink() else None)
                  for p in folder.rglob("*"))


def test_missing_directory_is_refused_unless_parents(tmp_path, rng):
    need("onnx", "onnxruntime")
    conv = conv_with(rng, "causal")
    out = tmp_path / "new" / "deeper" / "layer.onnx"
    with pytest.raises(layoutconv.OutputError, match=r"does not exist.*parents=True"):
        layoutconv.save(conv, out)
    assert _tree(tmp_path) == []
    assert layoutconv.save(conv, out, parents=True).passed and out.is_file()


def test_existing_file_needs_overwrite(tmp_path, rng):
    need("onnx", "onnxruntime")
    conv = conv_with(rng, "valid")
    out = tmp_path / "layer.onnx"
    out.write_bytes(b"keep me")
    with pytest.raises(layoutconv.OutputError, match=r"already exists.*overwrite=True.*--force"):
        layoutconv.save(conv, out)
    assert out.read_bytes() == b"keep me" and _tree(tmp_path) == [("layer.onnx", False, b"keep me")]
    layoutconv.save(conv, out, overwrite=True)
    assert layoutconv.from_onnx(out).same_weights(conv)


def test_symlink_output_is_replaced_and_its_target_left_alone(tmp_path, rng):
    need("onnx", "onnxruntime")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = elsewhere / "precious.onnx"
    victim.write_bytes(b"precious")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    link = out_dir / "layer.onnx"
    link.symlink_to(victim)
    conv = conv_with(rng, "valid")
    with pytest.raises(layoutconv.OutputError, match="symbolic link"):
        layoutconv.save(conv, link)
    layoutconv.save(conv, link, overwrite=True)
    assert victim.read_bytes() == b"precious" and not link.is_symlink() and link.is_file()


@pytest.mark.parametrize("case", ["directory", "read-only file", "read-only directory"])
def test_unwritable_outputs_are_refused_with_a_typed_error(tmp_path, rng, case):
    need("onnx", "onnxruntime")
    # (CI runs as root, which the OS lets write anywhere: layoutconv honours the read-only bits itself)
    conv = conv_with(rng, "valid")
    target = tmp_path / "layer.onnx"
    if case == "directory":
        target.mkdir()
    elif case == "read-only file":
        target.write_bytes(b"old")
        target.chmod(0o444)
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        target = ro / "layer.onnx"
        ro.chmod(0o555)
    before = _tree(tmp_path)
    try:
        with pytest.raises(layoutconv.OutputError) as info:
            layoutconv.save(conv, target, overwrite=True)
        assert ".layer.onnx." not in str(info.value)  # never names the hidden temporary file
        assert _tree(tmp_path) == before
    finally:
        for p in tmp_path.rglob("*"):
            p.chmod(0o755)


def test_failed_verification_is_a_named_error_and_exit_status_1(capsys):
    assert issubclass(layoutconv.VerificationError, layoutconv.LayoutError)

    def fails(args):
        raise layoutconv.VerificationError("The torch model written to 'x.pt' does not compute the reference's outputs")

    cli.COMMANDS["_fails"] = cli.Command("test only", lambda p: None, fails)
    try:
        assert cli.main(["_fails"]) == 1
    finally:
        del cli.COMMANDS["_fails"]
    assert "does not compute" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".pt", ".keras"])
def test_2d_record_is_saved_and_verified(tmp_path, rng, suffix):
    need(*NEEDS["torch" if suffix == ".pt" else "keras"])
    conv = layoutconv.Conv(rng.standard_normal((5, 3, 3, 5)).astype(np.float32), rng.standard_normal(5).astype(np.float32),
                           stride=(2, 1), padding="same_upper", activation="relu")
    out = tmp_path / f"c2d{suffix}"
    report = layoutconv.save(conv, out)
    assert report.passed and report.input_shape[2] != report.input_shape[3]
    assert sorted(os.listdir(tmp_path)) == [out.name]


def test_chain_report_is_json(rng):
    import json

    need("torch")
    chain = layoutconv.Chain((layoutconv.Conv(rng.standard_normal((6, 1, 3, 3)), groups=3),
                              layoutconv.Conv(rng.standard_normal((4, 6, 1, 1)))))
    data = json.loads(json.dumps(layoutconv.verify(chain, frameworks=["torch"]).to_dict()))
    assert data["passed"] and [layer["kind"] for layer in data["conv"]["layers"]] == ["Conv2D", "Conv2D"]
