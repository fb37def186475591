"""The package metadata builds without deprecation warnings and says what it should."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = """
import sys, warnings
warnings.simplefilter("error")  # a deprecated field (e.g. license = {text = ...}) fails
from setuptools import build_meta
print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))
"""


def test_metadata_builds_without_warnings_with_an_spdx_licence(tmp_path: Path) -> None:
    """Regression: `license = {text = "Apache-2.0"}` made every build warn (setuptools removes
    the table form after 2027-02-18)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source)
    shutil.copytree(ROOT / "mokd_optim", source / "mokd_optim")
    done = subprocess.run(
        [sys.executable, "-c", BUILD, str(tmp_path)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Deprecat" not in done.stderr, done.stderr[-3000:]
    metadata = (tmp_path / done.stdout.strip().splitlines()[-1] / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata
    assert "Provides-Extra: examples" in metadata
    assert 'Requires-Dist: scikit-learn>=1.3; extra == "examples"' in metadata
