"""The demo's comparison figure: a collapsed run does not squeeze the others, final numbers are
in the figure, epoch ticks are integers and legends do not cover data. Synthetic logs (no
training): the end-to-end demo runs in tests/test_scripts.py."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import pytest

from mokd_optim.diagnostics import StatsLogger

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo() -> Any:
    spec = importlib.util.spec_from_file_location("demo", ROOT / "examples" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _log(path: Path, kd_share: float) -> Path:
    with StatsLogger(path) as logger:
        for step in range(0, 500, 25):
            logger.log(
                step,
                **{
                    "weight/task": 1 - kd_share,
                    "weight/kd": kd_share,
                    "cosine/task|kd": math.cos(step / 100),
                    "dominance": 1.5 + (step % 50) / 50,
                },
            )
    return path


def test_collapsed_run_is_listed_not_drawn_and_the_axis_zooms(demo: Any, tmp_path: Path) -> None:
    results = {
        "ce": {"accuracy_per_epoch": [0.84, 0.86, 0.8692]},
        "kd (a=0.5)": {"accuracy_per_epoch": [0.10, 0.10, 0.10], "collapsed": True},
        "mokd max_norm=1": {"accuracy_per_epoch": [0.85, 0.88, 0.8920]},
    }
    logs = {
        "kd (a=0.5)": _log(tmp_path / "kd.csv", 0.5),
        "mokd max_norm=1": _log(tmp_path / "mokd.csv", 0.2),
    }
    from matplotlib.figure import Figure

    captured: list[Figure] = []
    original = Figure.savefig

    def keep(self: Figure, *args: Any, **kwargs: Any) -> None:
        captured.append(self)
        original(self, *args, **kwargs)

    Figure.savefig = keep  # type: ignore[method-assign]
    try:
        demo.plot_comparison(logs, results, tmp_path / "comparison.png")
    finally:
        Figure.savefig = original  # type: ignore[method-assign]
    assert (tmp_path / "comparison.png").stat().st_size > 20_000
    accuracy_axis = captured[0].axes[0]
    low, high = accuracy_axis.get_ylim()
    assert 80 < low < 84 and 89.2 < high < 92  # zoomed on the 84-89 % band, not 10-90 %
    labels = [line.get_label() for line in accuracy_axis.get_lines()]
    assert labels == [
        "ce: 86.92 %",
        "kd (a=0.5): 10.00 % (collapsed, not drawn)",
        "mokd max_norm=1: 89.20 %",
    ]
    assert len(accuracy_axis.get_lines()[1].get_xdata()) == 0
    assert list(accuracy_axis.get_xticks()) == [1.0, 2.0, 3.0]
    canvas = captured[0].canvas
    canvas.draw()
    renderer = canvas.get_renderer()
    for axis in captured[0].axes:
        legend = axis.get_legend()
        assert legend is not None
        assert legend.get_window_extent(renderer).x0 >= axis.get_window_extent(renderer).x1
