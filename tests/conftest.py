"""Shared test helpers.

In CI (``CI=true``) a test that skips is a failure: every framework must be
installed there and every framework test must run.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_skipped: list[str] = []


def need(*modules: str) -> None:
    """Skip the calling test when a framework module is missing (a failure in CI)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        message = f"needs {', '.join(missing)}"
        if IN_CI:
            pytest.fail(f"{message}, which CI must have installed")
        pytest.skip(message)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):  # an expected failure is not a skip
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if IN_CI and _skipped:
        print(f"\nCI: {len(_skipped)} test(s) skipped, which CI does not allow:")
        for nodeid in _skipped[:20]:
            print(f"  {nodeid}")
        session.exitstatus = 1


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261129)


def np_dtype(name: str) -> np.dtype:
    """numpy dtype by name, bfloat16 included (from ml_dtypes)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)
