"""Every ```python block in README.md and docs/*.md runs as written, each in a fresh namespace.

A block is skipped only when the line directly before its opening fence is
``<!-- skip-test -->``. Each block runs in its own namespace with a temporary working
directory, so it must be self-contained: it defines the helpers it calls (``train`` ...).
"""

from __future__ import annotations

import linecache
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP_MARK = "<!-- skip-test -->"
_FENCE = re.compile(r"^```python[ \t]*$")


def python_blocks(path: Path) -> list[tuple[int, str, bool]]:
    """``(line number of the opening fence, code, skipped)`` for each ```python block of ``path``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        if _FENCE.match(lines[i].strip()) and not lines[i].startswith((" ", "\t")):
            start = i
            skipped = i > 0 and lines[i - 1].strip() == SKIP_MARK
            i += 1
            body = []
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            if i == len(lines):
                raise ValueError(f"{path}:{start + 1}: ```python block is never closed")
            blocks.append((start + 1, "\n".join(body) + "\n", skipped))
        i += 1
    return blocks


def _doc_files() -> list[Path]:
    files = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
    return [f for f in files if f.exists()]


def _cases() -> list:
    params = []
    for path in _doc_files():
        for line, code, skipped in python_blocks(path):
            rel = path.relative_to(ROOT).as_posix()
            marks = [pytest.mark.skip(reason=f"{SKIP_MARK} before the block")] if skipped else []
            params.append(pytest.param(rel, line, code, id=f"{rel}:{line}", marks=marks))
    return params


@pytest.mark.parametrize("rel, line, code", _cases())
def test_doc_block_runs(rel: str, line: int, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # blocks that write relative paths write into a temp dir
    filename = f"{rel}:{line}"
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)  # readable tracebacks
    namespace = {"__name__": f"doc_block_{line}"}
    exec(compile(code, filename, "exec"), namespace)


def test_block_extraction_finds_marked_and_unmarked_blocks(tmp_path: Path) -> None:
    doc = tmp_path / "page.md"
    doc.write_text(
        "text\n```python\nx = 1\n```\n\n<!-- skip-test -->\n```python\nraise SystemExit\n```\n"
        "```bash\necho no\n```\n  ```python\nindented = True\n  ```\n",
        encoding="utf-8",
    )
    assert python_blocks(doc) == [(2, "x = 1\n", False), (7, "raise SystemExit\n", True)]


def test_unclosed_block_is_an_error(tmp_path: Path) -> None:
    doc = tmp_path / "page.md"
    doc.write_text("```python\nx = 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"page.md:1: ```python block is never closed"):
        python_blocks(doc)


def test_docs_have_blocks_to_run() -> None:
    assert any(not skipped for path in _doc_files() for _l, _c, skipped in python_blocks(path))
