"""docs/methods.md documents every registered method, and its code blocks run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mokd_optim import methods

DOC = Path(__file__).resolve().parents[1] / "docs" / "methods.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


@pytest.mark.parametrize("name", methods.available())
def test_every_method_has_a_section(name: str) -> None:
    text = DOC.read_text()
    assert f"## `{name}`" in text, f"docs/methods.md has no section for {name!r}"
    table_rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert any(f"`{name}`" in row.split("|")[1] for row in table_rows), (
        f"{name!r} is missing from the tables"
    )


def test_there_are_code_blocks() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_code_block_runs(index: int) -> None:
    exec(compile(BLOCKS[index], f"{DOC}:block{index}", "exec"), {"__name__": "__docs__"})
