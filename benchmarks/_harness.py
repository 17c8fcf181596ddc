"""Shared machinery for the benchmarks: timing, the engines, and what the machine was doing.

Every engine runs in this process on the same float32 input:

* the numpy reference pass, ``reference.forward(record, x)`` in float64 (its
  default) and with ``dtype=np.float32``;
* PyTorch: the module :func:`layoutconv.adapters.torch_adapter.to_native` writes,
  called directly on a prepared tensor under ``torch.no_grad()`` with PyTorch's
  default threads (so the adapter's input checks and numpy conversions are not timed);
* onnxruntime: a one-node ``Conv`` / ``ConvTranspose`` model built here with
  ``onnx.helper`` (explicit pads, float32), run in a session with **default**
  ``SessionOptions`` (intra-op threads 0: onnxruntime picks one per physical core).
  Optionally also a one-thread session, which is what the package's ONNX adapter
  uses and what the first recorded benchmark compared against.

Each timing is the median of ``runs`` calls after ``warmup`` untimed calls.
"""

from __future__ import annotations

import compileall
import ctypes
import glob
import os
import platform
import shutil
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from layoutconv import ConvTranspose, reference


# -- timing ---------------------------------------------------------------------
def median_seconds(fn: Callable[[], Any], runs: int = 7, warmup: int = 1) -> float:
    """Median wall time of ``runs`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# -- the machine ----------------------------------------------------------------
def _numpy_openblas() -> ctypes.CDLL | None:
    """numpy's bundled scipy-openblas, loaded by ctypes (no threadpoolctl needed)."""
    libs = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "libscipy_openblas*.so")
    for path in glob.glob(libs):
        try:
            return ctypes.CDLL(path)
        except OSError:
            pass
    return None


def blas_info() -> str:
    """numpy's BLAS: library, the kernel OpenBLAS picked for this CPU, and its thread count."""
    lib = _numpy_openblas()
    if lib is None:
        return "numpy BLAS: unknown (not a bundled scipy-openblas)"
    out = []
    for suffix in ("64_", ""):
        try:
            config = getattr(lib, f"scipy_openblas_get_config{suffix}")
            core = getattr(lib, f"scipy_openblas_get_corename{suffix}")
            threads = getattr(lib, f"scipy_openblas_get_num_threads{suffix}")
        except AttributeError:
            continue
        config.restype = core.restype = ctypes.c_char_p
        out = [config().decode().strip(), f"kernel {core().decode()}", f"{threads()} threads"]
        break
    env = ", ".join(f"{k}={os.environ[k]}" for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS") if k in os.environ)
    return "numpy BLAS: " + "; ".join(out or ["scipy-openblas (no introspection)"]) + f"; env: {env or 'no OPENBLAS_* set'}"


def cpu_name() -> str:
    """The CPU's model name and count (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0]} x {len(names)}" if names else platform.processor() or platform.machine() or "unknown CPU"


def machine_info() -> list[str]:
    import onnxruntime as ort
    import torch

    cpu = cpu_name()
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return [
        f"machine: {cpu}; os.cpu_count() = {os.cpu_count()}; load average (1, 5, 15 min) at start: {load}",
        f"numpy {np.__version__}, torch {torch.__version__}, onnxruntime {ort.__version__}",
        blas_info(),
        f"torch threads: {torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op (defaults)",
        "onnxruntime: default SessionOptions (intra_op_num_threads=0: one thread per physical core), CPUExecutionProvider",
    ]


def load_now() -> float:
    return os.getloadavg()[0]


def _busy_seconds() -> float | None:
    """CPU seconds every process on the machine has used (from /proc/stat), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class OthersLoad:
    """How much of the machine other processes used while a block ran: ``with OthersLoad() as o: ...; o.share``.

    ``share`` is the CPU time of everything but this process divided by wall time
    times the number of CPUs (0: the machine was ours; 0.5: others used half of it).
    """

    def __enter__(self) -> "OthersLoad":
        self.share = float("nan")
        self._busy, self._mine, self._wall = _busy_seconds(), sum(os.times()[:2]), time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        busy = _busy_seconds()
        if busy is None or self._busy is None:
            return
        wall = time.perf_counter() - self._wall
        mine = sum(os.times()[:2]) - self._mine
        self.share = max(0.0, (busy - self._busy - mine) / (wall * (os.cpu_count() or 1)))


def wait_quiet(limit: float, timeout: float = 600.0, window: float = 5.0) -> float:
    """Wait until other processes use less than ``limit`` of the machine over ``window`` seconds; return their share."""
    deadline = time.monotonic() + timeout
    while True:
        with OthersLoad() as others:
            time.sleep(window)
        if others.share < limit or time.monotonic() > deadline:
            return others.share


# -- engines ---------------------------------------------------------------------
def onnx_model_bytes(record: Any, spatial: tuple[int, ...]) -> bytes:
    """A one-node float32 ONNX model of ``record`` with its pads made explicit for ``spatial``."""
    from onnx import TensorProto, helper, numpy_helper

    transposed = isinstance(record, ConvTranspose)
    pads = record.pads(spatial)
    attrs: dict[str, Any] = dict(
        kernel_shape=list(record.kernel_shape),
        strides=list(record.stride),
        dilations=list(record.dilation),
        group=record.groups,
        pads=[b for b, _ in pads] + [e for _, e in pads],
    )
    if transposed and any(record.output_padding):
        attrs["output_padding"] = list(record.output_padding)
    inits = [numpy_helper.from_array(np.asarray(record.kernel, np.float32), "W")]
    inputs = ["x", "W"]
    if record.bias is not None:
        inits.append(numpy_helper.from_array(np.asarray(record.bias, np.float32), "B"))
        inputs.append("B")
    if record.activation != "linear":
        raise ValueError("the benchmark's ONNX models carry no activation")
    node = helper.make_node("ConvTranspose" if transposed else "Conv", inputs, ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, record.in_channels, *spatial])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = helper.find_min_ir_version_for(model.opset_import)
    return model.SerializeToString()


def onnx_runner(record: Any, x: np.ndarray, threads: int | None = None) -> Callable[[], np.ndarray]:
    """``session.run`` on ``x``; ``threads=None`` leaves onnxruntime's default SessionOptions alone."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = threads
    session = ort.InferenceSession(onnx_model_bytes(record, x.shape[2:]), options, providers=["CPUExecutionProvider"])
    x = np.ascontiguousarray(x, np.float32)
    return lambda: session.run(None, {"x": x})[0]


def torch_runner(record: Any, x: np.ndarray) -> Callable[[], np.ndarray]:
    """The module ``to_native`` writes, called under ``torch.no_grad()`` on a prepared tensor."""
    import torch

    from layoutconv.adapters import torch_adapter

    module = torch_adapter.to_native(record)
    tensor = torch.from_numpy(np.ascontiguousarray(x, np.float32))

    def run() -> np.ndarray:
        with torch.no_grad():
            return module(tensor)

    return lambda: run().numpy()


def reference_runner(record: Any, x: np.ndarray, dtype: Any) -> Callable[[], np.ndarray]:
    return lambda: reference.forward(record, x, dtype=dtype)


# -- one case ---------------------------------------------------------------------
@dataclass
class Case:
    name: str
    record: Any  # a Conv or ConvTranspose with float32 weights
    x_shape: tuple[int, ...]
    issue9: bool = False


ENGINES = ("ref64", "ref32", "torch", "ort")


def measure(case: Case, runs: int, rng: np.random.Generator, ort_one_thread: bool = False) -> dict[str, float]:
    """Median seconds of every engine on ``case``; checks first that they all compute the same thing."""
    x = rng.standard_normal(case.x_shape).astype(np.float32)
    runners = {
        "ref64": reference_runner(case.record, x, np.float64),
        "ref32": reference_runner(case.record, x, np.float32),
        "torch": torch_runner(case.record, x),
        "ort": onnx_runner(case.record, x),
    }
    if ort_one_thread:
        runners["ort1"] = onnx_runner(case.record, x, threads=1)
    truth = runners["ref64"]()
    scale = float(np.max(np.abs(truth))) or 1.0
    for name, run in runners.items():
        got = np.asarray(run(), np.float64)
        if got.shape != truth.shape or not np.allclose(got, truth, rtol=0, atol=1e-4 * scale):
            raise AssertionError(f"{case.name}: {name} disagrees with the float64 reference")
    with OthersLoad() as others:
        times = {name: median_seconds(run, runs=runs) for name, run in runners.items()}
    times["others"] = others.share
    return times


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f} ms" if ms < 1 else f"{ms:.2f} ms" if ms < 100 else f"{ms:.0f} ms"


def package_copy(package: str, where: str, compiled: bool) -> str:
    """A copy of the ``package`` directory (layoutconv) in ``where``, its bytecode compiled when asked (as
    ``pip install`` does); the directory to put on PYTHONPATH."""
    shutil.copytree(package, os.path.join(where, "layoutconv"), ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if compiled:
        compileall.compile_dir(os.path.join(where, "layoutconv"), quiet=1)
    return where


def environment(path: str, compiled: bool) -> dict[str, str]:
    """The environment of a child process that imports the copy at ``path`` (run it with ``cwd=path``: ``python -c``
    puts the working directory first on sys.path)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAYOUTCONV_", "PYTHONPYCACHEPREFIX"))}
    env["PYTHONPATH"] = path
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if compiled:
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # read the .pyc files compileall wrote (nothing new to write)
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # the copy has no .pyc and gets none: every run compiles the package
    return env
