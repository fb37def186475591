"""CollapseWatch: a dead network (finite losses, task loss back at its start, vanished gradients)
is reported once; healthy training, plateaus and recoveries are not."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mokd_optim import MultiObjectiveOptimizer
from mokd_optim.diagnostics import (
    COLLAPSE_GRADIENT_DROP,
    COLLAPSE_LOSS_FRACTION,
    COLLAPSE_PATIENCE,
    CollapseWatch,
    StepStats,
)
from tests.helpers import forbid_host_sync


def _feed(watch: CollapseWatch, sequence) -> list[bool]:
    return [watch.observe(loss, norms) for loss, norms in sequence]


def test_a_dead_run_is_flagged_after_patience_observations_and_warned_once() -> None:
    watch = CollapseWatch(patience=4)
    alive = [(2.3 - 0.1 * i, [3.0, 9.0]) for i in range(5)]  # largest norms 3 and 9
    dead = [(2.31, [0.2, 0.5])] * 10  # loss back at the start, norms < 0.1 of their largest
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flags = _feed(watch, alive + dead[:3])
    assert not any(flags) and not watch.collapsed
    with pytest.warns(RuntimeWarning, match="training looks collapsed .*'0' loss is back at 2.31"):
        assert watch.observe(*dead[3])
    assert watch.collapsed and watch.step == len(alive) + 4
    with warnings.catch_warnings():  # once only
        warnings.simplefilter("error")
        assert all(_feed(watch, dead[4:]))
    assert watch.step == len(alive) + 4 and watch.observations == len(alive) + len(dead)


def test_healthy_training_plateaus_and_recoveries_are_not_flagged() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # convergence: the gradients vanish, but the loss falls with them
        converging = [(2.3 * 0.97**i, [5.0 * 0.95**i]) for i in range(200)]
        assert not any(_feed(CollapseWatch(patience=3), converging))
        # a plateau at the start: the loss stays, the gradients stay
        assert not any(
            _feed(CollapseWatch(patience=3), [(2.3, [1.0 + 0.1 * (i % 3)]) for i in range(100)])
        )
        # gradients below the drop on patience - 1 observations at a time: the count restarts
        bursts = ([(2.3, [10.0])] + [(2.3, [0.5])] * 2) * 20
        assert not any(_feed(CollapseWatch(patience=3), bursts))
        # one objective's gradient still alive: not dead
        one_alive = [(2.3, [4.0, 4.0])] + [(2.3, [0.1, 3.0])] * 50
        assert not any(_feed(CollapseWatch(patience=3), one_alive))
        # a non-finite loss is not a silent collapse (the optimizer refuses it)
        assert not any(_feed(CollapseWatch(patience=1), [(2.3, [4.0]), (math.nan, [0.0])] * 3))


def test_the_tests_are_ratios_so_rescaling_changes_nothing() -> None:
    sequence = [(2.3, [4.0, 0.3])] * 3 + [(2.2 - 0.05 * i, [2.0, 0.2]) for i in range(5)]
    sequence += [(2.25, [0.1, 0.01])] * 30
    steps = []
    for loss_scale, norm_scale in ((1.0, 1.0), (1e6, 1e-4), (1e-3, 1e5)):
        watch = CollapseWatch(patience=5, warn=False)
        for loss, norms in sequence:
            watch.observe(loss * loss_scale, [n * norm_scale for n in norms])
        steps.append(watch.step)
    assert steps[0] is not None and steps == [steps[0]] * 3
    # the thresholds mean what they say: 0.9 of the first loss, 0.1 of the largest norm
    assert (COLLAPSE_LOSS_FRACTION, COLLAPSE_GRADIENT_DROP) == (0.9, 0.1)
    edge = CollapseWatch(patience=1, warn=False)
    assert not edge.observe(10.0, [1.0])
    assert not edge.observe(8.9, [0.01])  # below 0.9 of the first loss
    assert not edge.observe(9.0, [0.1])  # not below 0.1 of the largest norm
    assert edge.observe(9.0, [0.099])


def _relu_digits_run(lr: float, watch: CollapseWatch, steps: int = 300) -> float:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)
    )
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9), "mokd")
    soft = torch.softmax(3 * torch.randn(len(y), 10), dim=1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = torch.randint(0, len(y), (64,), generator=generator)
        logits = model(x[batch])
        losses = {
            "task": F.cross_entropy(logits, y[batch]),
            "kd": F.kl_div(F.log_softmax(logits, 1), soft[batch], reduction="batchmean"),
        }
        opt.zero_grad()
        stats = opt.backward(losses)
        opt.step()
        watch.update(stats)
    return float((model(x).argmax(1) == y).float().mean())


def test_a_real_dead_network_is_flagged_and_a_live_one_is_not() -> None:
    # a ReLU MLP on the 8x8 digits through MultiObjectiveOptimizer: at lr 3 it dies (chance
    # accuracy, finite losses; round 7's per-step share died at lr 1 already, rounds 18-21's
    # 100-step average at lr 2, where round 22's longer memory limps on at 17 %); at lr 0.1 it
    # trains. Read every 5th step, as a trainer would.
    dead = CollapseWatch(every=5)
    with pytest.warns(RuntimeWarning, match="'task' loss is back"):
        accuracy = _relu_digits_run(3.0, dead)
    assert accuracy < 0.2 and dead.collapsed and dead.step is not None
    assert COLLAPSE_PATIENCE <= dead.step < 60  # observations, one per 5 steps
    alive = CollapseWatch(every=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _relu_digits_run(0.1, alive) > 0.9
    assert not alive.collapsed and alive.observations == 60


def test_update_reads_the_host_only_every_nth_call() -> None:
    gram = torch.tensor([[4.0, 1.0], [1.0, 9.0]])
    stats = StepStats(("task", "kd"), torch.tensor([2.3, 1.0]), torch.ones(2), "loop", gram)
    watch = CollapseWatch(every=3)
    watch.update(stats)  # the first call reads
    with forbid_host_sync():
        watch.update(stats)
        watch.update(stats)
    assert watch.observations == 1
    watch.update(stats)
    assert watch.observations == 2


def test_update_skips_what_has_no_parameter_gradients_and_combines_groups() -> None:
    losses = torch.tensor([2.3, 1.0])
    watch = CollapseWatch(patience=1, warn=False)
    assert not watch.update(StepStats(("a", "b"), losses, torch.ones(2), "amortized", None))
    features = StepStats(("a", "b"), losses, torch.ones(2), "representation", torch.eye(2))
    assert not watch.update(features) and watch.observations == 0
    # balance="per_group": one Gram matrix per group; the norms are those of all groups together
    per_group = torch.stack(
        [torch.diag(torch.tensor([9.0, 16.0])), torch.diag(torch.tensor([16.0, 9.0]))]
    )
    watch.update(StepStats(("a", "b"), losses, torch.ones(2, 2), "loop", per_group))
    assert watch._largest == pytest.approx([5.0, 5.0])
    with pytest.raises(ValueError, match="number of gradient norms changed"):
        watch.update(StepStats(("a",), losses[:1], torch.ones(1), "loop", torch.eye(1)))
    with pytest.raises(ValueError, match="anchor 2 is not one of the 2"):
        CollapseWatch(anchor=2).update(
            StepStats(("a", "b"), losses, torch.ones(2), "loop", torch.eye(2))
        )


@pytest.mark.parametrize(
    ("option", "value"),
    [("loss_fraction", 0.0), ("loss_fraction", 1.5), ("gradient_drop", 1.0), ("gradient_drop", 0.0),
     ("patience", 0), ("patience", 2.5), ("every", 0), ("every", True)],
)  # fmt: skip
def test_bad_arguments_raise_naming_them(option: str, value) -> None:
    with pytest.raises(ValueError, match=option):
        CollapseWatch(**{option: value})
    watch = CollapseWatch()
    watch.observe(1.0, [1.0])
    with pytest.raises(ValueError, match="number of gradient norms changed"):
        watch.observe(1.0, [1.0, 2.0])
    watch.reset()
    assert watch.observations == 0 and not watch.collapsed and watch.step is None


def test_the_example_trainers_log_step_feeds_the_runs_watch(tmp_path) -> None:
    # examples/trainer_utils.log_train_step (every trainer's logged step) passes the statistics
    # to run.watch on the main process: 20 logged steps of a dead network warn once
    from types import SimpleNamespace

    from examples.trainer_utils import log_train_step
    from mokd_optim.diagnostics import StatsLogger

    def stats(norm: float) -> StepStats:
        gram = torch.diag(torch.tensor([norm**2, norm**2]))
        return StepStats(("task", "kd"), torch.tensor([2.3, 1.0]), torch.ones(2), "loop", gram)

    for main_process, warned in ((True, True), (False, False)):
        run = SimpleNamespace(
            step=0, epoch_fraction=0.0, main_process=main_process, watch=CollapseWatch(),
            show_losses=lambda losses: None,
        )  # fmt: skip
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        losses = {"task": torch.tensor(2.3)}
        with (
            StatsLogger(tmp_path / f"log{main_process}.csv") as logger,
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("always")
            log_train_step(run, logger, optimizer, stats(5.0), losses, torch.tensor(10.0))
            for run.step in range(1, 1 + COLLAPSE_PATIENCE):
                log_train_step(run, logger, optimizer, stats(0.1), losses, torch.tensor(10.0))
            log_train_step(run, logger, optimizer, None, losses, torch.tensor(10.0))  # baseline
        collapse = [w for w in caught if "training looks collapsed" in str(w.message)]
        assert len(collapse) == int(warned) and run.watch.collapsed is warned


def test_the_calibration_benchmark_scores_replayed_traces(tmp_path) -> None:
    # benchmarks/collapse_watch.py: a collapsed run's trace flagged is a hit (lateness = step of
    # the flag over the run's length), a live run flagged a false alarm
    from benchmarks import collapse_watch

    dead = {"collapsed": True, "trace": [(2.3, [4.0])] * 10 + [(2.31, [0.1])] * 30}
    live = {"collapsed": False, "trace": [(2.3 * 0.9**i, [4.0 * 0.9**i]) for i in range(40)]}
    missed = {"collapsed": True, "trace": [(2.3, [4.0])] * 40}  # dead but gradients intact
    score = collapse_watch.score([dead, live, missed], patience=5)
    assert score == {"hits": 1, "misses": 1, "alarms": 0, "live": 1, "median_lateness": 15 / 40}
    assert collapse_watch.replay(dead, patience=5) == 15
    # the quick form end to end (its own stores): every run scored in every row of the table
    traces, store = tmp_path / "traces.json", tmp_path / "suite.json"
    assert (
        collapse_watch.main(
            ["--quick", "--workers", "1", "--traces", str(traces), "--store", str(store)]
        )
        == 0
    )
    records = list(json.loads(traces.read_text())["runs"].values())  # the suite's store format
    assert len(records) == 2 * 7 and all(r["trace"] for r in records)
    table = collapse_watch.report({str(i): r for i, r in enumerate(records)}).splitlines()
    rows = [line for line in table if line.startswith("| 0.")]
    assert len(rows) == 3 * 4 * 3 and sum("(default)" in row for row in rows) == 1
    collapsed = sum(r["collapsed"] for r in records)
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        hits, total = cells[3].split("/")
        assert int(total) == collapsed and int(hits) + int(cells[4]) == collapsed
