"""StatsLogger (CSV, TensorBoard) and plot_log."""

from __future__ import annotations

import csv
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from mokd_optim import MultiObjectiveOptimizer
from mokd_optim.diagnostics import StatsLogger, plot_log, read_log, smooth
from tests.helpers import forbid_host_sync
from tests.models import TwoHeadMLP, kd_kl


def _steps(count: int):
    """``count`` training steps of a 3-objective MoKD run; yields (step, stats, lr)."""
    torch.manual_seed(0)
    model = TwoHeadMLP()
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), "mokd")
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for step in range(count):
        generator = torch.Generator().manual_seed(step)
        x = torch.rand(16, 1, 8, 8, generator=generator)
        y = torch.randint(0, 10, (16,), generator=generator)
        logits, projected, _ = model(x)
        losses = {
            "task": F.cross_entropy(logits, y),
            "kd": kd_kl(logits, 3 * torch.randn(16, 10, generator=generator)),
            "feat": F.mse_loss(projected, torch.randn(16, 48, generator=generator)),
        }
        opt.zero_grad()
        stats = opt.backward(losses)
        lr = scheduler.get_last_lr()[0]
        opt.step()
        scheduler.step()
        yield step, stats, lr


def test_csv_has_the_expected_columns_and_values(tmp_path) -> None:
    path = tmp_path / "log.csv"
    expected = {}
    with StatsLogger(path, log_every=2) as logger:
        for step, stats, lr in _steps(6):
            record = logger.log(step, stats, lr=lr, loss_total=stats.losses.sum())
            if step % 2:
                assert record is None
            else:
                expected[step] = {**stats.to_dict(), "lr": lr}
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    header = list(rows[0])
    assert header[0] == "step" and header[-2:] == ["lr", "loss_total"]
    for name in ("task", "kd", "feat"):
        for prefix in ("loss", "weight", "grad_norm", "simplex_weights"):
            assert f"{prefix}/{name}" in header
    for key in (
        "cosine/task|kd",
        "cosine/task|feat",
        "cosine/kd|feat",
        "conflict",
        "dominance",
        "combined_norm",
    ):
        assert key in header
    assert [int(row["step"]) for row in rows] == [0, 2, 4]
    for row in rows:
        values = expected[int(row["step"])]
        for key, value in values.items():
            assert float(row[key]) == value  # repr() round-trips floats exactly
        assert float(row["loss_total"]) == pytest.approx(
            values["loss/task"] + values["loss/kd"] + values["loss/feat"]
        )
    assert [float(row["lr"]) for row in rows] == [0.1, 0.05, 0.025]


def test_steps_that_are_not_logged_read_nothing_on_the_host(tmp_path) -> None:
    _, stats, _ = next(_steps(1))
    with StatsLogger(tmp_path / "log.csv", log_every=10) as logger, forbid_host_sync():
        assert logger.log(3, stats, accuracy=torch.tensor(0.5)) is None
        assert not logger.should_log(7) and logger.should_log(20)


def test_late_columns_widen_the_file_and_append_resumes(tmp_path) -> None:
    path = tmp_path / "log.csv"
    with StatsLogger(path) as logger:
        logger.log(0, loss=1.0)
        logger.log(1, loss=0.5, accuracy=0.7)
    with StatsLogger(path, append=True) as logger:
        logger.log(2, loss=0.25, accuracy=0.8)
    columns = read_log(path)
    assert columns["step"] == [0.0, 1.0, 2.0]
    assert columns["loss"] == [1.0, 0.5, 0.25]
    assert math.isnan(columns["accuracy"][0]) and columns["accuracy"][1:] == [0.7, 0.8]


def test_tensorboard_receives_the_same_scalars(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    weights = []
    with StatsLogger(tensorboard=tmp_path / "tb") as logger:
        for step, stats, lr in _steps(3):
            logger.log(step, stats, lr=lr)
            weights.append(float(stats.weights[0]))
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert "weight/task" in events.Tags()["scalars"] and "lr" in events.Tags()["scalars"]
    logged = events.Scalars("weight/task")
    assert [e.step for e in logged] == [0, 1, 2]
    assert [e.value for e in logged] == pytest.approx(weights, rel=1e-6)  # stored as float32


def test_missing_tensorboard_gives_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        StatsLogger(tensorboard=tmp_path / "tb")
    with pytest.raises(ValueError, match="csv_path, tensorboard"):
        StatsLogger()
    with pytest.raises(ValueError, match="log_every"):
        StatsLogger(tmp_path / "x.csv", log_every=0)


def _legend_outside(axis) -> bool:
    """The axis's legend lies right of its data area (never over a curve)."""
    figure = axis.figure
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    legend = axis.get_legend()
    return legend.get_window_extent(renderer).x0 >= axis.get_window_extent(renderer).x1


def test_plot_log_panels_losses_shares_cosine_dominance(tmp_path) -> None:
    path = tmp_path / "log.csv"
    with StatsLogger(path) as logger:
        for step, stats, lr in _steps(5):
            logger.log(step, stats, lr=lr)
    png = tmp_path / "plots" / "curves.png"
    figure = plot_log(path, png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert len(figure.axes) == 4  # lr is not an evaluation: no evaluation panel
    losses_axis, weights_axis, cosine_axis, dominance_axis = figure.axes
    log = read_log(path)
    assert losses_axis.get_ylabel() == "loss" and losses_axis.get_yscale() == "log"
    assert [line.get_label() for line in losses_axis.get_lines()] == [
        "loss/task",
        "loss/kd",
        "loss/feat",
    ]
    assert list(losses_axis.get_lines()[0].get_ydata()) == pytest.approx(log["loss/task"])
    # shares by default: the curves sum to 1 at every step, whatever the raw weights are
    assert weights_axis.get_ylabel() == "share" and len(weights_axis.get_lines()) == 3
    totals = [sum(v) for v in zip(*(line.get_ydata() for line in weights_axis.get_lines()))]
    assert totals == pytest.approx([1.0] * 5)
    raw = sum(log[f"weight/{n}"][0] for n in ("task", "kd", "feat"))
    assert weights_axis.get_lines()[0].get_ydata()[0] == pytest.approx(log["weight/task"][0] / raw)
    assert (
        cosine_axis.get_ylabel() == "cosine" and len(cosine_axis.get_lines()) == 3 + 1
    )  # 3 pairs + the 0 line
    assert dominance_axis.get_yscale() == "log" and dominance_axis.get_xlabel() == "step"
    plotted = dominance_axis.get_lines()[0].get_ydata()
    assert list(plotted) == pytest.approx(log["dominance"])
    assert all(_legend_outside(axis) for axis in figure.axes)
    # raw weights on request
    raw_axis = plot_log(path, normalize_weights=False).axes[1]
    assert raw_axis.get_ylabel() == "weight"
    assert list(raw_axis.get_lines()[0].get_ydata()) == pytest.approx(log["weight/task"])


def test_plot_log_evaluation_panel_and_smoothing(tmp_path) -> None:
    path, eval_path = tmp_path / "train_log.csv", tmp_path / "eval_log.csv"
    with StatsLogger(path) as logger:
        for step in range(50):
            logger.log(step, **{"loss/task": 2.0 - step / 50 + (-1) ** step * 0.3})
    with StatsLogger(eval_path) as logger:
        for epoch, step in enumerate((24, 49), start=1):
            logger.log(step, epoch=epoch, **{"val/top1": 40.0 + 10 * epoch})
    figure = plot_log(path, eval_path=eval_path, smoothing=5)
    losses_axis, evaluation_axis = figure.axes[:2]
    assert len(figure.axes) == 5 and evaluation_axis.get_title().startswith("evaluation")
    (val,) = evaluation_axis.get_lines()
    assert val.get_label() == "val/top1" and val.get_marker() == "o"
    assert list(val.get_xdata()) == [24.0, 49.0] and list(val.get_ydata()) == [50.0, 60.0]
    assert [t.get_text() for t in evaluation_axis.texts] == ["60"]  # the last value, written
    faint, smoothed = losses_axis.get_lines()
    assert faint.get_alpha() == 0.25 and smoothed.get_label() == "loss/task"
    raw = read_log(path)["loss/task"]
    assert list(faint.get_ydata()) == pytest.approx(raw)
    assert smoothed.get_ydata()[10] == pytest.approx(sum(raw[8:13]) / 5)
    # the zig-zag of +-0.3 is averaged out: the smoothed curve is much calmer than the raw one
    spread = max(abs(a - b) for a, b in zip(smoothed.get_ydata()[1:], smoothed.get_ydata()))
    assert spread < 0.2
    assert smooth([1.0, math.nan, 3.0], 3) == [1.0, 2.0, 3.0]


def test_plot_log_without_gradient_statistics(tmp_path) -> None:
    path = tmp_path / "log.csv"
    with StatsLogger(path) as logger:
        logger.log(0, accuracy=1.0)
        logger.log(1, accuracy=0.5)
    figure = plot_log(path)
    # a one-objective run: its scalar goes to the evaluation panel, the rest says "no data"
    assert len(figure.axes) == 5
    assert [len(axis.get_lines()) for axis in figure.axes] == [0, 1, 0, 1, 0]  # cosine: 0 line
    assert all(axis.texts for axis in figure.axes[2:] if axis is not figure.axes[3])
    with pytest.raises(ValueError, match="not a StatsLogger CSV"):
        (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
        plot_log(tmp_path / "bad.csv")
