"""`import layoutconv` must stay light: no framework is imported until an adapter is used."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("tensorflow", "keras", "tf_keras", "torch", "onnx", "onnxruntime", "h5py", "ml_dtypes")


def modules_after(code: str) -> list[str]:
    script = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_loads_no_framework():
    loaded = modules_after("import layoutconv")
    assert [m for m in HEAVY if m in loaded] == []


def test_public_api_without_frameworks_loads_none():
    code = (
        "import numpy as np, layoutconv\n"
        "c = layoutconv.Conv1D(np.random.default_rng(0).normal(size=(4, 3, 5)), padding='same_upper', stride=2)\n"
        "layoutconv.reference.conv1d(c, np.random.default_rng(1).normal(size=(1, 3, 11)))\n"
        "layoutconv.Conv1D(np.zeros((5, 3, 4)), layout='K I O')\n"
    )
    loaded = modules_after(code)
    assert [m for m in HEAVY if m in loaded] == []


def test_cli_help_loads_no_framework():
    loaded = modules_after("import sys; sys.argv=['layoutconv']\nimport layoutconv.cli as c\nc.build_parser()")
    assert [m for m in HEAVY if m in loaded] == []


#: what `import layoutconv` may load of the package: the exceptions, and verify (a function and a module of the
#: same name: the module is imported once, here, so the function keeps the name) with the framework table it uses
EAGER = {"layoutconv", "layoutconv.errors", "layoutconv.frameworks", "layoutconv.verify"}
#: loaded on first use (module __getattr__), never by `import layoutconv`
LAZY = (
    "layoutconv.conv", "layoutconv.reference", "layoutconv.layers", "layoutconv.graph", "layoutconv.activations",
    "layoutconv.registry", "layoutconv.recurrent", "layoutconv.tolerance", "layoutconv.layouts", "layoutconv.record",
    "layoutconv.legacy", "layoutconv._explain", "layoutconv._diagnose", "layoutconv.model", "layoutconv.porting",
    "layoutconv.convert", "layoutconv._workers", "layoutconv.cli",
)


def test_import_loads_only_what_the_top_level_names_need():
    loaded = modules_after("import layoutconv")
    assert {m for m in loaded if m.split(".")[0] == "layoutconv"} == EAGER
    assert [m for m in LAZY if m in loaded] == []


def test_every_public_name_loads_on_first_use():
    code = (
        "import layoutconv, types\n"
        "assert set(layoutconv.__all__) <= set(dir(layoutconv)), set(layoutconv.__all__) - set(dir(layoutconv))\n"
        "for name in layoutconv.__all__:\n"
        "    getattr(layoutconv, name)\n"
        "from layoutconv import *\n"
        "from layoutconv import Conv1D, LSTM, reference, verify as v\n"
        "import layoutconv.verify\n"
        "from layoutconv.verify import compare, tolerance, ASSERT_CLOSE_DEFAULTS\n"
        "assert isinstance(layoutconv.verify, types.FunctionType) and layoutconv.verify is v\n"
        "assert layoutconv.Conv1D is layoutconv.conv.Conv1D and layoutconv.LSTM is layoutconv.recurrent.LSTM\n"
        "assert layoutconv.reference.forward and layoutconv.layers.Dense and layoutconv.CONVENTIONS['torch']\n"
        "for module in ('conv', 'chain', 'conventions', 'transpose', 'record', 'registry', 'tolerance', 'frameworks'):\n"
        "    assert isinstance(getattr(layoutconv, module), types.ModuleType), module\n"
        "try:\n"
        "    layoutconv.no_such_name\n"
        "except AttributeError as exc:\n"
        "    assert 'no_such_name' in str(exc)\n"
        "else:\n"
        "    raise AssertionError('no AttributeError')\n"
    )
    loaded = modules_after(code)
    assert "layoutconv.reference" in loaded
    assert [m for m in HEAVY if m in loaded] == []


def test_inspect_of_a_keras_file_loads_h5py_and_nothing_heavy():
    import os

    path = os.path.join(os.path.dirname(__file__), "fixtures", "legacy_keras", "deepcpf1_Seq_deepCpf1_weights_keras1_theano.h5")
    code = (
        "import contextlib, io\n"
        "from layoutconv import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert cli.main(['inspect', {path!r}]) == 0\n"
    )
    loaded = modules_after(code)
    assert "h5py" in loaded
    assert [m for m in HEAVY if m in loaded and m != "h5py"] == []
    # the reference pass, layer records, graphs and recurrent layers are not needed to list a file's convolutions
    assert [m for m in ("layoutconv.reference", "layoutconv.layers", "layoutconv.graph", "layoutconv.recurrent") if m in loaded] == []
