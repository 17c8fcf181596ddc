"""Concurrent verify (layoutconv/_workers.py): worker processes report exactly what one process reports.

Every test runs the real frameworks in real spawned processes.  The report of
``verify(..., workers=N)`` must equal the one-process report field by field
(statuses, messages, errors, tolerances), for passes, unsupported
configurations and errors alike; a worker that dies becomes an ``error`` for
its frameworks only; an exception that is not layoutconv's reaches the caller
as the one-process path raises it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import layoutconv
from conftest import need
from layoutconv import _workers
from layoutconv.verify import run_one
from unreadable_input import Unreadable

ALL = (("keras", "tensorflow"), ("tf_keras",), ("torch",), ("onnx", "onnxruntime"))


def _need_all() -> None:
    for modules in ALL:
        need(*modules)


def _conv(rng, *shape, **options):
    return layoutconv.Conv(rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape[0]).astype(np.float32), **options)


RECORDS = {
    # Keras pads with zeros only: unsupported in both Keras flavours, in the workers as in one process
    "conv1d circular": lambda rng: _conv(rng, 4, 3, 5, stride=2, padding="same_lower", padding_mode="circular"),
    "conv2d groups": lambda rng: _conv(rng, 4, 2, 3, 3, groups=2, dilation=(1, 2), padding="same_upper"),
    "lstm": lambda rng: layoutconv.LSTM(
        rng.standard_normal((4 * 5, 3)).astype(np.float32), rng.standard_normal((4 * 5, 5)).astype(np.float32),
        rng.standard_normal(4 * 5).astype(np.float32),
    ),
}


# (record, workers): 2 workers are fewer than the 3 groups of 4 frameworks (one worker runs two groups in turn).
# Each case starts fresh workers that import every framework (~10 s on a loaded 2-core machine), so the records
# are a few kinds (a convolution that Keras cannot pad, 2-D with groups, a recurrent layer), not a grid: the
# grids are in the framework tests, and the worker path does not depend on the record.
@pytest.mark.parametrize("record, workers", [("conv1d circular", 4), ("conv2d groups", 2), ("lstm", 4)], ids=str)
def test_report_with_workers_equals_the_one_process_report(rng, record, workers):
    _need_all()
    conv = RECORDS[record](rng)
    alone = layoutconv.verify(conv, workers=1)
    together = layoutconv.verify(conv, workers=workers)
    assert together == alone
    assert [r.framework for r in together.results] == ["keras", "tf_keras", "torch", "onnx"]
    assert str(together) == str(alone)


def test_errors_in_a_worker_are_the_one_process_results(rng):
    need("keras", "tensorflow")
    need("torch")
    conv = _conv(rng, 4, 3, 5)
    alone = layoutconv.verify(conv, frameworks=["keras", "torch"], keras_data_format="bogus", workers=1)
    together = layoutconv.verify(conv, frameworks=["keras", "torch"], keras_data_format="bogus", workers=2)
    assert together == alone
    assert together["keras"].status == "error" and "data_format" in together["keras"].message
    assert together["torch"].passed


def test_keras_flavours_share_one_worker():
    assert _workers.groups(["keras", "torch", "tf_keras", "onnx"]) == [["keras", "tf_keras"], ["torch"], ["onnx"]]
    assert _workers.groups(["onnx", "tf_keras"]) == [["onnx"], ["tf_keras"]]


@pytest.mark.parametrize(
    "workers, expected",
    [
        (1, [[["keras", "tf_keras"], ["torch"], ["onnx"]]]),
        (2, [[["keras", "tf_keras"]], [["torch"], ["onnx"]]]),  # TensorFlow alone; the lighter imports share the other
        (3, [[["keras", "tf_keras"]], [["torch"]], [["onnx"]]]),
        (8, [[["keras", "tf_keras"]], [["torch"]], [["onnx"]]]),  # never more workers than groups
    ],
)
def test_plan_gives_the_costliest_import_a_worker_of_its_own(workers, expected):
    assert _workers.plan(["keras", "tf_keras", "torch", "onnx"], workers) == expected


def test_a_worker_that_dies_is_an_error_for_its_frameworks_only(rng):
    need("torch")
    need("onnx", "onnxruntime")
    conv = _conv(rng, 4, 3, 5)
    x = rng.standard_normal((2, 3, 17)).astype(np.float32)
    with _workers.Concurrent(conv, ["torch", "onnx"], x, "channels_last", workers=2) as running:
        torch_worker = next(process for share, process, _ in running._running if share == [["torch"]])
        os.kill(torch_worker.pid, signal.SIGKILL)
        outputs = running.outputs()
    died = outputs["torch"]
    assert died.status == "error" and died.framework == "torch"
    assert "ended without an answer" in died.message and f"exit code -{int(signal.SIGKILL)}" in died.message
    assert "workers=1" in died.message
    np.testing.assert_array_equal(outputs["onnx"], run_one(conv, "onnx", x))


def test_an_unexpected_exception_in_a_worker_is_raised_here(rng):
    need("onnx", "onnxruntime")
    need("torch")
    conv = _conv(rng, 4, 3, 5)
    with pytest.raises(RuntimeError, match="this input cannot be read") as alone:
        run_one(conv, "onnx", Unreadable())
    with pytest.raises(RuntimeError, match="this input cannot be read") as together:
        with _workers.Concurrent(conv, ["onnx", "torch"], Unreadable(), "channels_last", workers=2) as running:
            running.outputs()
    assert type(together.value) is type(alone.value)
    assert any("in the worker process that ran onnx" in note for note in together.value.__notes__)


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_workers_must_be_a_positive_integer(rng, workers):
    with pytest.raises(layoutconv.ConfigError, match="Invalid number of workers"):
        layoutconv.verify(_conv(rng, 4, 3, 5), frameworks=["torch"], workers=workers)


def test_frameworks_of_one_group_run_in_this_process():
    need("keras", "tensorflow")
    need("tf_keras")
    # in a fresh interpreter: Keras 3 and tf_keras share TensorFlow, so a worker would only add its start-up;
    # they run here, which imports their adapters into this process (a worker would leave them out)
    code = (
        "import sys, numpy as np, layoutconv\n"
        "if __name__ == '__main__':\n"
        "    conv = layoutconv.Conv1D(np.random.default_rng(0).standard_normal((4, 3, 5)).astype('float32'))\n"
        "    assert layoutconv.verify(conv, frameworks=['keras', 'tf_keras'], workers=4).passed\n"
        "    print(sorted(m for m in sys.modules if m.startswith('layoutconv.adapters.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "layoutconv.adapters.keras_adapter" in out.stdout and "layoutconv.adapters.tf_keras_adapter" in out.stdout
