"""Every ```python block of the README (and of any docs/*.md) runs as printed.

Each block runs on its own, in a fresh namespace, so a block that leans on a
name defined in an earlier one fails here as it would for a reader pasting it
into a script. A block that needs what a test machine lacks (a dataset under
``--data-root``, a GPU) is marked by a line right above its fence,

    <!-- readme-test: skip (needs CIFAR-10 under ~/data) -->

and is skipped with that reason; an unmarked block always runs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((.+?)\)\s*-->\s*$")


def python_blocks(path: Path) -> list[tuple[str, str, str | None]]:
    """``(id, code, skip reason or None)`` of each ```python block of ``path``; the id is ``file:line``."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in _FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = _SKIP.search(before)
        blocks.append((f"{path.name}:{line}", match.group(1), skip.group(1) if skip else None))
    return blocks


BLOCKS = [block for doc in DOCS for block in python_blocks(doc)]


def test_the_readme_has_python_blocks() -> None:
    # guards the extraction itself: a changed fence style must not silently test nothing
    assert len(python_blocks(ROOT / "README.md")) >= 4


def test_a_marked_block_is_skipped_with_its_reason(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("text\n\n```python\nx = 1\n```\n\n<!-- readme-test: skip (needs a GPU) -->\n"
                   "```python\nraise SystemExit\n```\n\n```bash\nmake demo\n```\n")
    assert python_blocks(doc) == [("doc.md:3", "x = 1\n", None), ("doc.md:8", "raise SystemExit\n", "needs a GPU")]


@pytest.mark.parametrize(("code", "reason"), [(code, reason) for _, code, reason in BLOCKS],
                         ids=[block_id for block_id, _, _ in BLOCKS])
def test_block_runs_as_printed(code: str, reason: str | None, tmp_path: Path, monkeypatch) -> None:
    if reason is not None:
        pytest.skip(reason)
    monkeypatch.chdir(tmp_path)  # whatever a block writes lands here
    exec(compile(code, "<README block>", "exec"), {"__name__": "__readme__"})
