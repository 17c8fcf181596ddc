"""Concurrent :func:`layoutconv.verify`: the frameworks convert and run in worker processes, side by side.

A fresh ``layoutconv verify`` spends most of its time importing TensorFlow and
PyTorch; in separate processes those imports run at the same time.  Workers are
started with ``spawn`` (a fresh interpreter: no forked framework state, no
threads copied mid-lock) and receive the record and the input by pickle
(records rebuild through ``__init__``, so a worker's copy is validated like
the original).  Each worker runs :func:`layoutconv.verify.run_one` for its
frameworks and sends back the output arrays; the parent, which computes the
reference meanwhile, compares them, so a report is the same whether it was
made with workers or in one process.

* Frameworks that share their heaviest import share a worker
  (:data:`SHARED_IMPORT`): Keras 3 and tf_keras both import TensorFlow, which
  costs more than either Keras and would otherwise be imported twice on the
  same cores.
* With fewer workers than such groups, :func:`plan` gives the costliest
  import (:data:`IMPORT_SECONDS`) a worker of its own and packs the others
  into the rest: every worker is an interpreter that imports numpy and
  layoutconv (about 0.2 s of CPU), so on a 2-core machine two workers
  (TensorFlow; PyTorch then onnxruntime) finish sooner than three.
* A worker leaves with ``os._exit`` once it has sent its answer: tearing down
  TensorFlow or PyTorch at interpreter exit takes most of a second, and nothing
  in a worker needs it.
* A worker that dies (a crash in a framework's native code, the out-of-memory
  killer) becomes an ``error`` result for its frameworks; the other workers
  still report.  An exception that is not a :class:`~layoutconv.LayoutError`
  is raised again in the parent, as the one-process path raises it, with the
  worker's traceback as a note.
* ``workers=1`` (``LAYOUTCONV_WORKERS=1`` or ``--workers 1`` on the command
  line) runs everything in one process, one framework after the other, for
  debugging.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sys
import traceback
from multiprocessing.connection import wait
from typing import Any

import numpy as np

from . import frameworks as _fw
from .errors import LayoutError, fail

#: framework -> the import it shares with others; frameworks with the same key run in one worker, one after the other
SHARED_IMPORT: dict[str, str] = {"keras": "tensorflow", "tf_keras": "tensorflow", "torch": "torch", "onnx": "onnx"}

#: CPU seconds to import each (measured on the benchmark machine, docs/benchmarks.md); only their order
#: matters: it decides which groups share a worker when there are fewer workers than groups
IMPORT_SECONDS: dict[str, float] = {"tensorflow": 3.0, "torch": 1.5, "onnx": 0.3}


def groups(names: list[str]) -> list[list[str]]:
    """Frameworks that share an import, together, in the order of ``names`` (a group sits where its first member was)."""
    by_import: dict[str, list[str]] = {}
    for name in names:
        by_import.setdefault(SHARED_IMPORT.get(name, name), []).append(name)
    return list(by_import.values())


def plan(names: list[str], workers: int) -> list[list[list[str]]]:
    """The groups each worker runs: at most ``workers`` workers, the costliest group first to the least loaded.

    >>> plan(["keras", "tf_keras", "torch", "onnx"], 2)
    [[['keras', 'tf_keras']], [['torch'], ['onnx']]]
    >>> plan(["keras", "tf_keras", "torch", "onnx"], 4)
    [[['keras', 'tf_keras']], [['torch']], [['onnx']]]
    """
    todo = groups(names)
    cost = {id(g): IMPORT_SECONDS.get(SHARED_IMPORT.get(g[0], g[0]), 1.0) for g in todo}
    bins: list[list[list[str]]] = [[] for _ in range(max(1, min(int(workers), len(todo))))]
    load = [0.0] * len(bins)
    for group in sorted(todo, key=lambda g: -cost[id(g)]):  # stable: equal costs keep the order of names
        i = load.index(min(load))
        bins[i].append(group)
        load[i] += cost[id(group)]
    return bins


def _worker(connection: Any, conv: Any, plan: list[list[str]], x: np.ndarray, keras_data_format: str, quiet: bool) -> None:
    """In a worker process: for each group send ``("ok", [output or Result per name])`` or ``("raised", exception)``, then leave."""
    try:
        from .verify import run_one

        _fw.QUIET_IMPORTS = quiet  # the command line's choice: TensorFlow's C++ start-up lines stay hidden here too
        for names in plan:
            try:
                answer: tuple[str, Any] = ("ok", [run_one(conv, name, x, keras_data_format) for name in names])
            except Exception as exc:  # noqa: BLE001 - handed to the parent, which raises it as the one-process path would
                answer = ("raised", _portable(exc, names))
            connection.send(answer)
            if answer[0] == "raised":
                break
        connection.close()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # skip the framework's interpreter teardown (most of a second for TensorFlow or PyTorch)


def _portable(exc: Exception, names: list[str]) -> Exception:
    """``exc`` with the worker's traceback as a note, or a RuntimeError with its text if it cannot be pickled."""
    note = "in the worker process that ran " + ", ".join(names) + ":\n" + "".join(traceback.format_exception(exc))
    try:
        exc.add_note(note)
        pickle.dumps(exc)
        return exc
    except Exception:  # noqa: BLE001 - an exception that cannot travel is sent as its text
        text = RuntimeError(f"{type(exc).__name__}: {exc}")
        text.add_note(note)
        return text


class Concurrent:
    """Start the workers on entry; :meth:`outputs` waits for their answers; exit reaps them.

    At most ``workers`` processes (:func:`plan`); each runs its groups one after
    the other and answers group by group.

    >>> with Concurrent(conv, ["keras", "torch"], x, "channels_last", workers=2) as running:   # doctest: +SKIP
    ...     expected = reference.forward(conv, x)      # meanwhile, in this process
    ...     outputs = running.outputs()                # {"keras": array or Result, "torch": ...}
    """

    def __init__(self, conv: Any, names: list[str], x: np.ndarray, keras_data_format: str, workers: int) -> None:
        self.conv, self.x, self.keras_data_format = conv, x, keras_data_format
        self.plan = plan(names, workers)
        self._running: list[tuple[list[list[str]], Any, Any]] = []  # (groups still to answer, process, connection)

    def __enter__(self) -> "Concurrent":
        context = multiprocessing.get_context("spawn")
        quiet = _fw.QUIET_IMPORTS
        try:
            for share in self.plan:
                receive, send = context.Pipe(duplex=False)
                process = context.Process(
                    target=_worker, args=(send, self.conv, share, self.x, self.keras_data_format, quiet),
                    name="layoutconv verify " + " ".join("+".join(g) for g in share), daemon=True,
                )
                process.start()
                send.close()  # the parent keeps only the receiving end: EOF once the worker is gone
                self._running.append((list(share), process, receive))
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def outputs(self) -> dict[str, Any]:
        """Each framework's output array or :class:`~layoutconv.Result`, by name, once every worker has answered."""
        out: dict[str, Any] = {}
        while self._running:
            ready = wait([connection for _, _, connection in self._running])
            for entry in [e for e in self._running if e[2] in ready]:
                share, process, connection = entry
                try:
                    status, payload = connection.recv()
                except (EOFError, OSError):  # gone without a word: every group it still owed is an error
                    process.join()
                    for group in share:
                        out.update((name, _died(name, process.exitcode)) for name in group)
                    share.clear()
                else:
                    if status == "raised":
                        raise payload
                    out.update(zip(share.pop(0), payload))
                if not share:
                    self._running.remove(entry)
                    connection.close()
                    process.join()
        return out

    def __exit__(self, *exc: Any) -> None:
        for _, process, connection in self._running:
            connection.close()
            if process.is_alive():
                process.terminate()
            process.join()
        self._running.clear()


def _died(name: str, exitcode: int | None) -> Any:
    from .verify import Result

    error = fail(
        LayoutError,
        f"The worker process that ran {name} ended without an answer",
        "its output or an error",
        f"nothing (exit code {exitcode}: it crashed or was killed, e.g. out of memory)",
        "Run with workers=1 (command line: --workers 1 or LAYOUTCONV_WORKERS=1) to see what it printed.",
    )
    return Result(framework=name, status="error", message=str(error))
