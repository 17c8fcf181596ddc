"""The worked example in docs/why-my-by-hand-conv1d-differs.md runs, and prints what the page shows.

Each ```python block is executed in one shared namespace; when a plain ``` block
follows it, that block is the output the page claims, and it must match what
the code printed (timings aside).
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "why-my-by-hand-conv1d-differs.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
TIMING = re.compile(r"\(\d+\.\d+ s\)")


def blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def normalise(text: str) -> list[str]:
    return [TIMING.sub("(<time> s)", line.rstrip()) for line in text.strip().splitlines()]


def test_worked_example_prints_what_the_page_shows():
    text = DOC.read_text()
    found = blocks(text[text.index("## A reproducible example"):])  # the question's own snippet is not runnable
    namespace: dict = {}
    checked = 0
    for i, (lang, body) in enumerate(found):
        if lang != "python":
            continue
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(body, f"{DOC.name}[block {i}]", "exec"), namespace)
        if i + 1 < len(found) and found[i + 1][0] == "":
            assert normalise(out.getvalue()) == normalise(found[i + 1][1]), f"block {i} output differs from the page"
            checked += 1
    assert checked >= 4  # the page's examples really were compared
