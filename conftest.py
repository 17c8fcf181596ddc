"""Root pytest configuration: docstring examples run as tests (``--doctest-modules`` in pyproject.toml).

A docstring whose every example is marked ``# doctest: +SKIP`` (it needs a
framework object or a file the docstring cannot build) is not collected, so
the run shows no skipped test: in CI every collected test must run.
"""

from __future__ import annotations

import doctest


def pytest_collection_modifyitems(config, items):  # noqa: ARG001 - pytest's hook signature
    from _pytest.doctest import DoctestItem

    items[:] = [
        item
        for item in items
        if not (isinstance(item, DoctestItem) and all(ex.options.get(doctest.SKIP) for ex in item.dtest.examples))
    ]
