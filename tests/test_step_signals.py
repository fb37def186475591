"""benchmarks/step_signals.py: the same-batch (Armijo) ratio of a step, the gate that releases
the default's warm-up cap by it, and the cross-batch agreement. The ratio is checked against its
closed form on a quadratic, the gate's opening and the agreement's summaries against exact
values, and the probe's runs against the suite's own."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks import kd_suite, step_signals


@pytest.mark.parametrize("lr_times_curvature", [0.01, 0.5, 1.0, 2.0])
def test_the_ratio_of_a_gradient_step_on_a_quadratic_is_one_minus_half_lr_times_curvature(
    lr_times_curvature: float,
) -> None:
    # L = curvature/2 |theta|^2 and theta' = theta - lr g: the drop is lr c^2 |theta|^2 (1 - lr c
    # / 2), the first-order prediction lr c^2 |theta|^2 -> ratio 1 - lr c / 2 (0 at lr c = 2:
    # the step lands on the other side at the same height)
    curvature = 3.0
    theta = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    loss = 0.5 * curvature * (theta**2).sum()
    (grad,) = torch.autograd.grad(loss, [theta])
    before = [theta.detach().clone()]
    with torch.no_grad():
        theta -= (lr_times_curvature / curvature) * grad
    after = 0.5 * curvature * float((theta.detach() ** 2).sum())
    predicted = step_signals.predicted_drop([grad], [theta], before)
    ratio = step_signals.armijo_ratio(float(loss.detach()) - after, predicted)
    assert ratio == pytest.approx(1 - lr_times_curvature / 2, abs=1e-12)
    assert math.isnan(step_signals.armijo_ratio(0.3, 0.0))  # no predicted drop: no ratio


def test_the_gate_opens_linearly_between_its_thresholds() -> None:
    gate = step_signals.RatioGate()
    assert gate.opening() == 0.0 and gate.length_factor(2.0) == 1.0  # nothing observed yet
    gate.observe(1.0, 1.0)
    assert gate.ratio == pytest.approx(1.0) and gate.opening() == 1.0
    # the averages share their weights: after (0.4, 1.0) the ratio is (0.1 + 0.036) / (0.1 + 0.09)
    gate.observe(0.4, 1.0)
    ratio = (0.9 * 0.1 + 0.1 * 0.4) / (0.9 * 0.1 + 0.1 * 1.0)
    assert gate.ratio == pytest.approx(ratio)
    assert gate.opening() == pytest.approx((ratio - 0.5) / 0.4)
    gate.observe(float("nan"), 1.0)  # ignored
    assert gate.ratio == pytest.approx(ratio)
    # the length: the cap 1 / L_task lifted by the opening; no cap at or below a loss of 1
    opening = gate.opening()
    assert gate.length_factor(4.0) == pytest.approx((0.25 + opening * 0.75) / 0.25)
    assert gate.length_factor(0.7) == 1.0
    for low, high, decay in [(0.9, 0.5, 0.9), (-0.1, 0.5, 0.9), (0.5, 0.9, 1.0)]:
        with pytest.raises(ValueError):
            step_signals.RatioGate(low=low, high=high, decay=decay)


@pytest.mark.parametrize("latch", [False, True])
def test_a_latched_gate_stays_shut_after_one_overshoot(latch: bool) -> None:
    gate = step_signals.RatioGate(latch=latch, decay=0.0)  # decay 0: the last step's ratio
    gate.observe(1.0, 1.0)
    assert gate.opening() == 1.0
    gate.observe(0.2, 1.0)  # an overshooting step
    assert gate.opening() == 0.0
    gate.observe(1.0, 1.0)  # linear again
    assert gate.opening() == (0.0 if latch else 1.0) and gate.closed is latch


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], str]:
    directory = tmp_path_factory.mktemp("step_signals")
    store, out = directory / "suite.json", directory / "runs.json"
    assert (
        step_signals.main(["--quick", "--workers", "1", "--store", str(store), "--json", str(out)])
        == 0
    )
    return json.loads(out.read_text()), str(store)


def test_the_quick_probe_tells_a_low_learning_rate_from_a_high_one(quick_run) -> None:
    runs, _ = quick_run
    measured = {r["lr_scale"]: r for r in runs if r["mode"] == "measure"}
    assert set(measured) == {0.3, 3.0}
    low, high = measured[0.3]["windows"]["0-25"], measured[3.0]["windows"]["0-25"]
    # task and surrogate ratio of the first 25 steps: linear at 0.3x, overshooting at 3x
    assert min(low) > 0.9 and max(high) < 0.6
    gated = {r["gate"]: r for r in runs if r["mode"] == "gates"}
    assert set(gated) == {"off", "latch"}
    assert gated["off"]["mean_opening"] == 0.0 and gated["off"]["capped_steps"] == 0
    assert gated["latch"]["capped_steps"] > 0 and 0 < gated["latch"]["mean_opening"] <= 1


def _quick_probe(store: str, gate: str) -> tuple[kd_suite.Condition, float, dict]:
    """The quick condition, its learning rate and a probe run with ``gate``, on one thread (as
    the suite's workers run)."""
    condition = step_signals._conditions(19)[step_signals.QUICK_CONDITIONS[0]]
    lr = kd_suite.lr_of(condition, kd_suite.Store(Path(store)), True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return condition, lr, step_signals.probe_run(condition, 0, lr, gate, quick=True)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def off_probe(quick_run) -> tuple[kd_suite.Condition, float, dict]:
    return _quick_probe(quick_run[1], "off")


def test_a_probe_run_with_the_gate_off_is_the_suites_own_run(off_probe) -> None:
    # the extra backward and forward passes of the measurement leave the training unchanged:
    # the default's final accuracy equals train_run's on the same seed and learning rate
    condition, lr, probe = off_probe
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the probe ran
    try:
        suite = kd_suite.train_run(condition, kd_suite.CANDIDATES["default"], 0, lr, 1.0, True)
    finally:
        torch.set_num_threads(threads)
    assert probe["final"] == suite["final"] and len(probe["steps"]) == probe["total_steps"]
    with pytest.raises(ValueError, match="gate"):
        step_signals.probe_run(condition, 0, lr, "sometimes", quick=True)  # refused at once


def test_the_probe_refuses_conditions_it_must_not_see(tmp_path) -> None:
    # a round's confirmation conditions are not selection conditions: refused by name
    confirmation = kd_suite.conditions_of_round(19, "confirmation")[0].name.split()[0]
    with pytest.raises(SystemExit):
        step_signals.main(
            ["--gates", "off", "--conditions", confirmation, "--store", str(tmp_path / "s.json")]
        )


def test_cosines_ranks_and_the_cross_batch_share_are_exact() -> None:
    a, b = torch.tensor([3.0, 4.0]), torch.tensor([4.0, 3.0])
    assert step_signals.cosine(a, b) == pytest.approx(24 / 25)
    assert step_signals.cosine(a, torch.zeros(2)) == 0.0
    # Spearman: monotone -> 1, reversed -> -1, ties get average ranks
    assert step_signals.spearman([0.1, 0.3, 0.9], [1.0, 2.0, 5.0]) == pytest.approx(1.0)
    assert step_signals.spearman([0.1, 0.3, 0.9], [5.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert step_signals.spearman([0.1, 0.1, 0.9, 0.5], [1.0, 2.0, 4.0, 3.0]) == pytest.approx(
        0.9486832980505138
    )
    assert math.isnan(step_signals.spearman([0.1, 0.2], [1.0, 2.0]))
    share = step_signals.cross_batch_share
    assert share({"cross_batch_rest": 0.3, "cross_batch_task": 0.1}) == pytest.approx(0.75)
    assert share({"cross_batch_rest": -0.2, "cross_batch_task": 0.1}) == 0.0
    assert share({"cross_batch_rest": -0.2, "cross_batch_task": -0.1}) == 0.0


def test_the_agreement_columns_are_the_cosines_of_the_step_gradients(quick_run, off_probe) -> None:
    # the quick agreement run's summary against the per-step cosines of the same training
    (agreed,) = [r for r in quick_run[0] if r["mode"] == "agreement"]
    summary = agreed["agreement"]
    assert set(summary) == {"same_batch", "cross_batch_rest", "cross_batch_task", "norm_ratio"}
    _, _, probe = off_probe
    rows = probe["agreement"]
    assert len(rows) == probe["total_steps"] - 1
    assert all(-1 <= v <= 1 for row in rows for v in row[:3]) and all(row[3] > 0 for row in rows)
    assert summary["same_batch"] == pytest.approx(sum(r[0] for r in rows) / len(rows))
    assert summary["cross_batch_task"] == pytest.approx(sum(r[2] for r in rows) / len(rows))
    assert summary["norm_ratio"] == pytest.approx(sum(r[3] for r in rows) / len(rows))


def _grid_store(tmp_path: Path, default_final: float) -> tuple[kd_suite.Store, float]:
    """A store with S9's learning-rate grid (best 0.1), the fixed-weight grid (0.3 and 0.5 tie
    best at 95 %) and the default at ``default_final`` with a logged task share of 0.6."""
    condition = step_signals._conditions(19)["S9"]
    store = kd_suite.Store(tmp_path / "s.json")
    lr = 0.1
    grid_condition = kd_suite.Condition("lr grid", "lr", condition.recipe)
    for seed in kd_suite.LR_GRID_SEEDS:
        for grid_lr in kd_suite.LR_GRID[condition.recipe.optimizer]:
            key = kd_suite.run_key(
                "lr", grid_condition, kd_suite.Config("ce", "ce"), seed, grid_lr, 1.0, False
            )
            store.runs[key] = {"final": 0.9 if grid_lr == lr else 0.5, "final_bn_recomputed": None}
    accuracy = {0.1: 0.90, 0.3: 0.95, 0.5: 0.95, 0.7: 0.80, 0.9: 0.10}
    configs = [
        (c, accuracy[c.weight], {}) for c in kd_suite.baseline_configs({None}) if c.kind == "fixed"
    ]
    configs.append((kd_suite.CANDIDATES["default"], default_final, {"task_share": 0.6}))
    for config, final, diagnostics in configs:
        for seed in kd_suite.SEEDS:
            key = kd_suite.run_key("main", condition, config, seed, lr, 1.0, False)
            store.runs[key] = {
                "final": final,
                "final_bn_recomputed": None,  # no BatchNorm: the evaluation falls back to final
                "collapsed": False,
                "seconds": 1.0,
                "diagnostics": diagnostics,
            }
    return store, lr


def test_the_best_fixed_weight_is_read_from_the_stored_grid(tmp_path) -> None:
    # the weight with the best mean wins, a tie goes to the smaller weight, a missing weight
    # gives None
    condition = step_signals._conditions(19)["S9"]
    store, lr = _grid_store(tmp_path, 0.9)
    assert step_signals.best_fixed_weight(condition, store, quick=False) == 0.3
    fixed = [c for c in kd_suite.baseline_configs({None}) if c.kind == "fixed"]
    del store.runs[kd_suite.run_key("main", condition, fixed[-1], 0, lr, 1.0, False)]
    assert step_signals.best_fixed_weight(condition, store, quick=False) is None


def test_the_agreement_table_compares_the_default_with_the_best_weight(tmp_path) -> None:
    # the default 1 point behind a = 0.3; its share 1 - 0.6 = 0.4 against the weight's
    # 0.3 * 4 / (0.7 + 0.3 * 4) = 0.63 at rho = 4: one trailing condition, share below
    assert step_signals.fixed_weight_share(0.3, 4.0) == pytest.approx(1.2 / 1.9)
    assert step_signals.fixed_weight_share(0.9, 0.0) == 0.0
    store, _ = _grid_store(tmp_path, 0.94)
    agreement = {
        "same_batch": 0.5,
        "cross_batch_rest": 0.3,
        "cross_batch_task": 0.1,
        "norm_ratio": 4.0,
    }
    run = {"condition": "S9", "agreement": agreement}
    lines = step_signals.agreement_table([run], store, 19, quick=False).splitlines()
    cells = lines[1].split()
    assert cells[:4] == ["S9", "strong", "0.500", "0.300"]
    assert cells[5:] == ["0.100", "0.75", "0.3", "-1.00", "0.40", "/", "0.63"]
    assert lines[-1].endswith("1, the default's share below the weight's on 1, above on 0")


def test_the_lengthening_reads_the_task_agreement_of_the_update() -> None:
    # g_task = (1, 0), g_kd = (1, 1): the others' part of the update is along g_kd, cos 1/sqrt 2;
    # g_kd = (-1, 1): against the task, no lengthening; no Gram matrix: none either
    from types import SimpleNamespace

    def stats(kd: list[float], weights: list[float]) -> SimpleNamespace:
        g = torch.tensor([[1.0, 0.0], kd], dtype=torch.float64)
        return SimpleNamespace(gram=g @ g.T, weights=torch.tensor(weights))

    agreement = step_signals.agreement_with_task
    assert agreement(stats([1.0, 1.0], [0.5, 0.5])) == pytest.approx(2**-0.5)
    assert agreement(stats([1.0, 1.0], [3.0, 0.2])) == pytest.approx(2**-0.5)  # scale-free
    assert agreement(stats([-1.0, 1.0], [0.5, 0.5])) == 0.0
    assert agreement(stats([1.0, 1.0], [0.5, 0.0])) == 0.0  # no others' part
    assert agreement(SimpleNamespace(gram=None, weights=torch.ones(2))) == 0.0


def test_each_gate_puts_its_factor_on_the_update() -> None:
    factor = step_signals.update_factor
    # inside the warm-up (task loss 2.5, cap 0.4), opening 0.5, agreement 0.6
    assert factor("off", 2.5, 0.5, 0.6) == 1.0
    assert factor("open", 2.5, 0.5, 0.6) == pytest.approx((0.4 + 0.5 * 0.6) / 0.4)
    assert factor("latch", 2.5, 0.0, 0.6) == 1.0  # shut: the default's capped step
    assert factor("lengthen", 2.5, 0.5, 0.6) == pytest.approx(1.3)
    assert factor("uncapped", 2.5, None, 0.0) == pytest.approx(2.5)
    # outside it (no opening): only the lengthening acts, in full
    assert factor("open", 0.8, None, 0.6) == 1.0
    assert factor("lengthen", 0.8, None, 0.6) == pytest.approx(1.6)
    assert factor("uncapped", 0.8, None, 0.0) == 1.0
    with pytest.raises(ValueError, match="gate"):
        factor("sometimes", 2.5, 0.5, 0.6)


@pytest.mark.parametrize("gate", ["lengthen", "uncapped"])
def test_a_gated_probe_run_records_every_step(quick_run, gate: str) -> None:
    # every step recorded (drops and agreement) under a gate that changes the update, and the
    # gate's opening logged only where a ratio gate acts (inside the warm-up)
    _, _, run = _quick_probe(quick_run[1], gate)
    assert (
        len(run["steps"]) == run["total_steps"] and len(run["agreement"]) == run["total_steps"] - 1
    )
    openings = [row[5] for row in run["steps"]]
    capped = [row[0] > 1 for row in run["steps"]]
    if gate == "lengthen":
        assert any(capped) and all((o is not None) == c for o, c in zip(openings, capped))
    else:
        assert all(o is None for o in openings)
