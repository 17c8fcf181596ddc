"""The `layoutconv` command: help everywhere, exit status, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import need
from layoutconv import cli


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_help_for_every_command(name, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([name, "--help"])
    assert exc.value.code == 0
    assert name in capsys.readouterr().out


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "layoutconv.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for name in cli.COMMANDS:
        assert name in out.stdout


def test_verify_passes_and_reports_json(capsys):
    need("torch")
    need("onnx", "onnxruntime")
    code = cli.main(
        ["verify", "--frameworks", "torch,onnx", "--in-channels", "4", "--filters", "4", "--kernel-size", "4",
         "--stride", "3", "--padding", "same_upper", "--json"]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["passed"]
    assert [r["framework"] for r in report["results"]] == ["torch", "onnx"]
    assert all(r["status"] == "pass" for r in report["results"])
    assert report["conv"]["padding"] == "same_upper" and report["conv"]["stride"] == [3]


def test_bad_configuration_exits_2_with_message(capsys):
    code = cli.main(["verify", "--frameworks", "torch", "--in-channels", "3", "--groups", "2"])
    err = capsys.readouterr().err
    assert code == 2
    assert "groups=2" in err and "--in-channels=3" in err


def test_unknown_framework_exits_2(capsys):
    code = cli.main(["verify", "--frameworks", "caffe"])
    assert code == 2
    assert "'caffe'" in capsys.readouterr().err


def test_demo_passes(capsys):
    for modules in (("keras", "tensorflow"), ("tf_keras",), ("torch",), ("onnx", "onnxruntime")):
        need(*modules)
    code = cli.main(["demo"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "DEMO PASSED" in out
    assert "W1[::-1, 0, :, f]" in out


FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures" / "legacy_keras"
DEEPCPF1 = str(FIXTURES / "deepcpf1_DeepCpf1_weights_keras1_theano.h5")


def test_inspect_json(capsys):
    need("h5py")
    assert cli.main(["inspect", DEEPCPF1, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backend"]["value"] == "theano" and info["backend"]["inferred"] is True


def test_explain_from_legacy_file_uses_its_convention(capsys):
    need("h5py")
    assert cli.main(["explain", "--file", DEEPCPF1, "--index", "0,3,7", "--length", "34"]) == 0
    out = capsys.readouterr().out
    assert "W[::-1, 0, :, 3]" in out  # the Keras 1 Theano kernel is used reversed


def test_verify_from_legacy_file(capsys):
    need("h5py")
    need("torch")
    assert cli.main(["verify", "--file", DEEPCPF1, "--frameworks", "torch", "--length", "34"]) == 0
    assert "PASSED" in capsys.readouterr().out


def test_unsafe_or_missing_file_exits_2(tmp_path, capsys):
    need("h5py")
    bad = tmp_path / "notes.h5"
    bad.write_text("not an HDF5 file")
    assert cli.main(["inspect", str(bad)]) == 2
    assert "notes.h5" in capsys.readouterr().err
    assert cli.main(["inspect", str(tmp_path / "missing.h5")]) == 2


def test_diagnose_from_npy_files(tmp_path, rng, capsys):
    import numpy as np

    W = rng.standard_normal((4, 1, 3, 5)).astype(np.float32)  # Keras 1.1 layout, K=4, C=3, F=5
    b = rng.standard_normal(5).astype(np.float32)
    x = rng.standard_normal((1, 11, 3)).astype(np.float32)
    # Theano (flipped) by a direct loop: y[0, t, f] = b[f] + sum_k sum_c x[0, t + k, c] * W[3 - k, 0, c, f]
    y = np.array([[[b[f] + sum(x[0, t + k, c] * W[3 - k, 0, c, f] for k in range(4) for c in range(3))
                    for f in range(5)] for t in range(8)]], dtype=np.float32)
    for name, arr in dict(W=W, b=b, x=x, y=y).items():
        np.save(tmp_path / f"{name}.npy", arr)
    code = cli.main(["diagnose", "--kernel", str(tmp_path / "W.npy"), "--bias", str(tmp_path / "b.npy"),
                     "--x", str(tmp_path / "x.npy"), "--y", str(tmp_path / "y.npy"), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [m["conventions"] for m in result["matches"]][0] == ["keras1.1-theano"]


def test_bad_npy_exits_2(tmp_path, capsys):
    bad = tmp_path / "W.npy"
    bad.write_bytes(b"\x93NUMPY garbage")
    code = cli.main(["diagnose", "--kernel", str(bad), "--x", str(bad), "--y", str(bad)])
    assert code == 2
    assert "W.npy" in capsys.readouterr().err


# -- weights-only files: every hyperparameter the file lacks is an option, and assumptions are said -----
DEEPCPF1_K1 = str(__import__("pathlib").Path(__file__).parent / "fixtures" / "legacy_keras" / "deepcpf1_DeepCpf1_weights_keras1_theano.h5")


def test_verify_file_honours_padding_and_says_what_it_assumed(capsys):
    need("torch")
    code = cli.main(["verify", "--file", DEEPCPF1_K1, "--padding", "same", "--activation", "relu", "--frameworks", "torch"])
    out = capsys.readouterr().out
    assert code == 0
    note = out.splitlines()[0]
    assert note.startswith("note: ") and "assumed stride=1, dilation=1, groups=1" in note
    assert "padding" not in note.split("assumed")[1] and "activation" not in note.split("assumed")[1]
    # Theano's 'same' for a 5-tap kernel: (2, 2), and the relu is applied
    assert "padding=(2, 2)" in out and "activation='relu'" in out


def test_verify_file_json_carries_every_source(capsys):
    need("torch")
    code = cli.main(["verify", "--file", DEEPCPF1_K1, "--stride", "2", "--frameworks", "torch", "--json"])
    report = json.loads(capsys.readouterr().out)  # nothing but JSON on stdout
    assert code == 0 and report["conv"]["stride"] == [2]
    assert report["hyperparameters"]["stride"] == {"value": 2, "source": "argument"}
    assert report["hyperparameters"]["padding"] == {"value": "valid", "source": "default"}
    assert report["hyperparameters"]["activation"] == {"value": "linear", "source": "default"}


def test_explain_file_honours_padding(capsys):
    code = cli.main(["explain", "--file", DEEPCPF1_K1, "--padding", "same", "--index", "0,3,0", "--length", "34"])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("note: ") and "pads (2, 2)" in out


def test_convert_file_takes_hyperparameters_and_refuses_to_overwrite(tmp_path, capsys):
    need("torch")
    out = tmp_path / "conv.pt"
    assert cli.main(["convert", DEEPCPF1_K1, str(out), "--padding", "same", "--activation", "relu"]) == 0
    text = capsys.readouterr().out
    assert "note: " in text and "padding=(2, 2)" in text and "activation='relu'" in text
    assert cli.main(["convert", DEEPCPF1_K1, str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["convert", DEEPCPF1_K1, str(out), "--force", "--stride", "2"]) == 0


def test_contradicting_a_recorded_value_is_bad_input(tmp_path, capsys):
    need("onnx", "onnxruntime")
    import layoutconv

    conv = layoutconv.Conv1D(np.random.default_rng(2).normal(size=(3, 3, 3)).astype(np.float32), stride=2)
    path = tmp_path / "c.onnx"
    layoutconv.save(conv, path)
    assert cli.main(["verify", "--file", str(path), "--stride", "1", "--frameworks", "onnx"]) == 2
    assert "contradict" in capsys.readouterr().err
    assert cli.main(["verify", "--file", str(path), "--stride", "2", "--frameworks", "onnx"]) == 0


def test_tensorflow_start_up_lines_stay_off_the_terminal(tmp_path):
    need("keras", "tensorflow")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("TF_")}
    out = subprocess.run(
        [sys.executable, "-m", "layoutconv.cli", "verify", "--frameworks", "keras", "--in-channels", "3", "--filters", "5",
         "--kernel-size", "3"],
        capture_output=True, text=True, env=env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert "absl" not in out.stdout and "cuda" not in out.stdout.lower()


def test_verify_in_workers_prints_the_one_process_report_and_no_start_up_lines():
    for modules in (("keras", "tensorflow"), ("tf_keras",), ("torch",), ("onnx", "onnxruntime")):
        need(*modules)
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("TF_", "LAYOUTCONV_"))}
    command = [sys.executable, "-m", "layoutconv", "verify", "--in-channels", "3", "--filters", "5", "--kernel-size", "3",
               "--stride", "2", "--padding", "same_upper"]
    together = subprocess.run(command, capture_output=True, text=True, env=env)  # default: one worker per framework
    alone = subprocess.run(command, capture_output=True, text=True, env={**env, "LAYOUTCONV_WORKERS": "1"})
    assert together.returncode == alone.returncode == 0, together.stderr + alone.stderr
    assert together.stderr == alone.stderr == ""  # TensorFlow's C++ start-up lines stay hidden in the workers too
    assert together.stdout == alone.stdout
    assert [line.split()[0] for line in together.stdout.splitlines()[3:7]] == ["keras", "tf_keras", "torch", "onnx"]


@pytest.mark.parametrize("given", [["--workers", "0"], ["--workers", "-2"], "LAYOUTCONV_WORKERS=0", "LAYOUTCONV_WORKERS=many"])
def test_workers_must_be_positive(given, capsys, monkeypatch):
    argv = ["verify", "--frameworks", "torch"]
    if isinstance(given, str):
        monkeypatch.setenv(*given.split("=", 1))
    else:
        argv += given
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("layoutconv verify: error: Invalid number of workers.") and "Expected a positive integer" in err
    assert (given[1] if isinstance(given, list) else given.split("=", 1)[1]) in err


# -- 2-D layers of weights-only files: per-axis options -------------------------------------
def _keras1_2d_file(tmp_path, kernel_shape=(4, 3, 3, 5), bias=4, name="convolution2d_1", seed=5):
    """A Keras 1 save_weights file (Theano names) with one 2-D layer; its stored kernel."""
    need("h5py")
    from test_legacy_keras1_2d import write_keras1

    rng = np.random.default_rng(seed)
    w = rng.normal(size=kernel_shape).astype(np.float32)
    b = rng.normal(size=bias).astype(np.float32)
    return write_keras1(tmp_path / "k1.h5", [("input_1", []), (name, [(f"{name}_W", w), (f"{name}_b", b)])]), w


def test_verify_2d_file_takes_per_axis_stride_and_dilation(tmp_path, capsys):
    need("torch")
    path, _ = _keras1_2d_file(tmp_path)  # 'th' (4 filters, 3 channels, 3x5): the bias length settles the ordering
    code = cli.main(["verify", "--file", str(path), "--stride", "2,1", "--dilation", "1,2", "--padding", "same",
                     "--frameworks", "torch", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["passed"]
    assert report["conv"]["stride"] == [2, 1] and report["conv"]["dilation"] == [1, 2]
    assert report["conv"]["padding"] == [[1, 1], [4, 4]]  # Theano's 'same' per axis: r = (3, 9)
    assert report["hyperparameters"]["stride"] == {"value": [2, 1], "source": "argument"}
    assert report["hyperparameters"]["groups"] == {"value": 1, "source": "default"}


def test_explain_2d_file_writes_the_sum_in_keras1_terms(tmp_path, capsys):
    path, _ = _keras1_2d_file(tmp_path)
    code = cli.main(["explain", "--file", str(path), "--stride", "2,1", "--index", "0,1,2,3"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("note: ") and "assumed padding='valid', dilation=(1, 1)" in out
    assert "keras1-th2d-theano" in out and "W[1, :, ::-1, ::-1] * X[0, :, 4:7, 3:8]" in out


def test_convert_2d_file_with_per_axis_options(tmp_path, capsys):
    need("torch")
    import torch

    path, w = _keras1_2d_file(tmp_path)
    out = tmp_path / "conv.pt"
    assert cli.main(["convert", str(path), str(out), "--stride", "2,1", "--padding", "same"]) == 0
    text = capsys.readouterr().out
    assert "stride=(2, 1)" in text and "padding=((1, 1), (2, 2))" in text and "assumed dilation=(1, 1)" in text
    state = torch.load(out, weights_only=True)
    assert np.array_equal(state["weight"].numpy(), w[:, :, ::-1, ::-1])  # Theano: reversed along both spatial axes


def test_per_axis_option_errors(tmp_path, capsys):
    path, _ = _keras1_2d_file(tmp_path, kernel_shape=(4, 3, 5, 4))  # both orderings fit a bias of 4
    with pytest.raises(SystemExit) as exc:
        cli.main(["verify", "--file", str(path), "--stride", "2,x"])
    assert exc.value.code == 2 and "comma-separated integers" in capsys.readouterr().err
    assert cli.main(["verify", "--file", str(path), "--frameworks", "torch"]) == 2
    assert "--dim-ordering on the command line" in capsys.readouterr().err
    assert cli.main(["verify", "--file", str(path), "--stride", "2,1,1", "--dim-ordering", "th", "--frameworks", "torch"]) == 2
    assert "Wrong number of per-axis values" in capsys.readouterr().err
    assert cli.main(["verify", "--dim-ordering", "th", "--frameworks", "torch"]) == 2
    assert "only for Keras 1 files" in capsys.readouterr().err


def test_deconvolution_from_weights_only_file_takes_output_shape(tmp_path, capsys):
    need("torch")
    path, _ = _keras1_2d_file(tmp_path, kernel_shape=(3, 2, 3, 4), bias=3, name="deconvolution2d_1")
    args = ["verify", "--file", str(path), "--backend", "tensorflow", "--stride", "2", "--frameworks", "torch"]
    assert cli.main(args) == 2
    assert "--output-shape ROWS,COLS" in capsys.readouterr().err
    assert cli.main(args + ["--output-shape", "12,14", "--padding", "same", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["conv"]["output_padding"] == [0, 0] and report["conv"]["in_channels"] == 2
    assert report["hyperparameters"]["output_padding"] == {"value": [0, 0], "source": "argument"}


def test_explain_keras2_theano_2d_file_in_its_own_terms(tmp_path, capsys):
    need("h5py")
    import h5py

    rng = np.random.default_rng(8)
    path = tmp_path / "k2.h5"
    with h5py.File(path, "w") as f:
        f.attrs["backend"], f.attrs["keras_version"] = b"theano", b"2.0.5"
        f.attrs["layer_names"] = [b"conv2d_1"]
        g = f.create_group("conv2d_1")
        g.attrs["weight_names"] = [b"conv2d_1/kernel:0", b"conv2d_1/bias:0"]
        g["conv2d_1/kernel:0"] = rng.normal(size=(3, 5, 4, 2)).astype(np.float32)  # (H, W, I, O)
        g["conv2d_1/bias:0"] = rng.normal(size=2).astype(np.float32)
    assert cli.main(["explain", "--file", str(path), "--stride", "1,2", "--padding", "same", "--index", "0,1,2,3"]) == 0
    out = capsys.readouterr().out
    assert "keras2d-theano" in out and "W[::-1, ::-1, :, 1] * X[0, 1:4, 4:9, :]" in out and "agree" in out


def test_a_closed_pipe_stops_quietly(monkeypatch, capsys):
    """`layoutconv inspect model | head -1`: the reader leaves early; no 'Broken pipe' error, exit 0."""
    from pathlib import Path

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    fixtures = Path(__file__).parent / "fixtures" / "legacy_keras"
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    code = cli.main(["inspect", str(fixtures / "factornet_FOXA1_onePeak_DGF_final_model.hdf5")])
    assert code == 0
    assert capsys.readouterr().err == ""
