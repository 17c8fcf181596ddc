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
