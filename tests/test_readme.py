"""The README's quickstart code runs and does what it says."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _quickstart() -> str:
    text = README.read_text()
    match = re.search(
        r"<!-- quickstart: executed by tests/test_readme.py -->\s*```python\n(.*?)```",
        text,
        re.DOTALL,
    )
    assert match, "README quickstart block not found"
    return match.group(1)


def test_readme_quickstart_runs_and_trains(capsys) -> None:
    namespace: dict = {}
    exec(compile(_quickstart(), str(README), "exec"), namespace)
    stats = namespace["stats"]
    assert stats.names == ("task", "distill")
    assert stats.weights.shape == (2,)
    assert float(namespace["accuracy"]) > 0.9
    assert "student accuracy" in capsys.readouterr().out


def test_readme_states_two_setup_commands_and_ci_calls_the_test_one() -> None:
    text = README.read_text()
    block = re.search(
        r"## Set-up on a fresh machine \(two commands\)\s*```bash\n(.*?)```", text, re.DOTALL
    )
    assert block
    commands = [line.split("#")[0].strip() for line in block.group(1).strip().splitlines()]
    assert commands == ["make demo", "make test"]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci
