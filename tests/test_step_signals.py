"""benchmarks/step_signals.py: the same-batch (Armijo) ratio of a step, the gate that releases
the default's warm-up cap by it, and the cross-batch agreement. The ratio is checked against its
closed form on a quadratic, the gate's opening and the agreement's summaries against exact
values, and the probe's runs against the suite's own."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

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


def _suite_run(condition: kd_suite.Condition, lr: float, candidate: str | kd_suite.Config) -> dict:
    """The suite's own run of ``candidate`` (a name of ``kd_suite.CANDIDATES`` or a
    configuration) on ``condition`` (seed 0, quick), on one thread as the probe ran."""
    config = kd_suite.CANDIDATES[candidate] if isinstance(candidate, str) else candidate
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return kd_suite.train_run(condition, config, 0, lr, 1.0, True)
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
    def stats(kd: list[float], weights: list[float]) -> SimpleNamespace:
        g = torch.tensor([[1.0, 0.0], kd], dtype=torch.float64)
        return SimpleNamespace(gram=g @ g.T, weights=torch.tensor(weights))

    agreement = step_signals.agreement_with_task
    assert agreement(stats([1.0, 1.0], [0.5, 0.5])) == pytest.approx(2**-0.5)
    assert agreement(stats([1.0, 1.0], [3.0, 0.2])) == pytest.approx(2**-0.5)  # scale-free
    assert agreement(stats([-1.0, 1.0], [0.5, 0.5])) == 0.0
    assert agreement(stats([1.0, 1.0], [0.5, 0.0])) == 0.0  # no others' part
    assert agreement(SimpleNamespace(gram=None, weights=torch.ones(2))) == 0.0


def test_the_distillation_share_weighs_each_gradient_by_its_norm() -> None:
    # raw weights (0.5, 0.1) on gradients of norms 1 and 5 (Gram diagonal 1, 25): the update is
    # half the task's unit gradient, half the teacher's
    stats = SimpleNamespace(
        weights=torch.tensor([0.5, 0.1]), gram=torch.tensor([[1.0, 2.0], [2.0, 25.0]])
    )
    assert step_signals.distillation_share(stats) == pytest.approx(0.5)
    three = SimpleNamespace(weights=torch.tensor([0.2, 0.2, 0.4]), gram=torch.diag(torch.ones(3)))
    assert step_signals.distillation_share(three) == pytest.approx(0.75)  # the rest summed
    no_gram = SimpleNamespace(weights=torch.tensor([0.3, 0.1]), gram=None)
    assert step_signals.distillation_share(no_gram) == pytest.approx(0.25)
    zero = SimpleNamespace(weights=torch.zeros(2), gram=torch.eye(2))
    assert step_signals.distillation_share(zero) == 0.0


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
    # the lifted share changes the direction's weights, never the length
    for share_probe in ("lifted", "lowered"):
        assert factor(share_probe, 2.5, 0.5, 0.6) == 1.0 == factor(share_probe, 0.8, None, 0.6)
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


@pytest.mark.parametrize(
    "gate, odds", [("lifted", 2.0), ("lowered", 0.5), ("lifted4", 4.0), ("lifted9", 9.0)]
)
def test_the_share_probes_scale_the_distillation_shares_odds(
    quick_run, off_probe, gate: str, odds: float
) -> None:
    # on the first step (same parameters, same batch) the probe's share has the default's odds
    # times 2 (lifted: 2a / (1 + a)) or 1/2 (lowered: a / (2 - a)); afterwards the runs part,
    # the probe giving the teacher more (less) throughout
    _, _, off = off_probe
    _, _, probe = _quick_probe(quick_run[1], gate)
    a = off["shares"][0]
    assert 0 < a < 1 and probe["shares"][0] == pytest.approx(odds * a / (1 - a + odds * a))
    assert len(probe["shares"]) == probe["total_steps"] == len(off["shares"])
    assert (sum(probe["shares"]) > sum(off["shares"])) is (odds > 1)
    assert all(row[5] is None for row in probe["steps"])  # no ratio gate acts


def test_a_long_probe_reports_each_finished_run(monkeypatch, capsys) -> None:
    # one line per run on stderr, counting up to the total with an estimate of what is left;
    # none with progress off; the summaries come back in the jobs' order either way
    def fake_job(job):
        return {"condition": job[0], "lr_scale": 1.0, "gate": job[3], "seed": job[4], "final": 0.5}

    monkeypatch.setattr(step_signals, "_job", fake_job)
    jobs = [
        ("C10", 19, 0.0, "off", 0, True, "", False),
        ("C60", 19, 0.0, "lifted", 1, True, "", False),
    ]
    results = step_signals.run_all(jobs, workers=1)
    lines = capsys.readouterr().err.strip().splitlines()
    assert [r["condition"] for r in results] == ["C10", "C60"]
    assert lines[0].startswith("[1/2] C10 x1 off seed 0: 50.00 % (eta ")
    assert lines[1].startswith("[2/2] C60 x1 lifted seed 1: 50.00 % (eta 0.0 min)")
    step_signals.run_all(jobs, workers=1, progress=False)
    assert capsys.readouterr().err == ""


def test_the_norm_ratio_course_is_read_against_the_first_steps() -> None:
    # 10 steps at rho 2, then 30 at 4: rho_0 = 2, the quarters (10 steps each) 1, 2, 2, 2
    agreement = [[0.0, 0.0, 0.0, 2.0]] * 10 + [[0.0, 0.0, 0.0, 4.0]] * 30
    start, course = step_signals.norm_ratio_course(agreement)
    assert start == 2.0 and course == [1.0, 2.0, 2.0, 2.0]
    assert step_signals.quarter_means([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]) == [
        1.5,
        3.5,
        5.5,
        7.5,
    ]
    start, course = step_signals.norm_ratio_course([])
    assert math.isnan(start) and all(math.isnan(x) for x in course)


def test_the_gate_table_prints_the_quarters_under_each_line() -> None:
    def run(gate: str, final: float, share: float) -> dict:
        return {
            "condition": "C124", "lr_scale": 0.3, "gate": gate, "seed": 0, "final": final,
            "collapsed": False, "mean_opening": 0.0, "mean_share": share,
            "share_quarters": [share] * 4, "norm_ratio_course": (1.92, [1.03, 0.97, 0.96, 0.94]),
        }  # fmt: skip

    table = step_signals.gate_table([run("off", 0.92, 0.86), run("lifted", 0.93, 0.93)])
    lines = table.splitlines()
    assert lines[3].startswith("C124    0.3x lifted  93.00 collapsed 0/1 opening 0.00 share 0.93")
    assert lines[3].endswith("+1.00 vs off")
    assert lines[4].endswith(
        "share 0.93 0.93 0.93 0.93; rho_0 1.92, rho / rho_0 1.03 0.97 0.96 0.94"
    )


def test_the_gate_summary_counts_with_the_suites_tie_rule(monkeypatch) -> None:
    # two conditions, seeds 0-2; stored ce and fixed weights written by hand. The "lifted" runs
    # trail the best weight on C10 by 0.1 +- 0.0 (a loss: the paired standard error is 0) and
    # tie it within one standard error on C124 (-1, +1, -1); they beat ce on both
    conditions = step_signals._conditions(19)
    rows = {
        "C10": {"ce": [0.80, 0.80, 0.80], "fixed a=0.1": [0.81, 0.81, 0.81],
                "fixed a=0.9": [0.82, 0.82, 0.82]},
        "C124": {"ce": [0.90, 0.90, 0.90], "fixed a=0.1": [0.93, 0.91, 0.92]},
    }  # fmt: skip

    def gather(condition, configs, store, quick, scale=1.0, seeds=None):
        stored = rows[condition.name.split()[0]]
        return {
            c.label: kd_suite.Row(c.label, stored[c.label], 0, 1.0)
            for c in configs
            if c.label in stored
        }

    monkeypatch.setattr(kd_suite, "gather", gather)

    def run(name: str, gate: str, seed: int, final: float) -> dict:
        return {"condition": name, "gate": gate, "seed": seed, "final": final, "collapsed": False}

    results = [
        *(run("C10", "off", s, 0.80) for s in range(3)),
        *(run("C10", "lifted", s, 0.81) for s in range(3)),
        *(run("C124", "off", s, 0.91) for s in range(3)),
        *(run("C124", "lifted", s, f) for s, f in enumerate([0.92, 0.92, 0.91])),
        # three points ahead of "off" on C10: the clipped mean counts them as one
        *(run("C10", "lowered", s, 0.83) for s in range(3)),
        *(run("C124", "lowered", s, f) for s, f in enumerate([0.92, 0.92, 0.91])),
    ]
    lines = step_signals.gate_summary(results, None, 19, False).splitlines()
    assert lines[1] == (
        "off      vs off +0.00 (clipped at +-1: +0.00); best fixed weight 0/2 (-1.50), "
        "cross-entropy 2/2 (+0.50), collapsed 0"
    )
    assert lines[2].startswith(
        "lifted   vs off +0.83 (clipped at +-1: +0.83); best fixed weight 1/2 (-0.67), "
        "cross-entropy 2/2 (+1.33)"
    )
    assert lines[3].startswith(
        "lowered  vs off +1.83 (clipped at +-1: +0.83); best fixed weight 2/2 (+0.33), "
        "cross-entropy 2/2 (+2.33)"
    )
    assert (
        lines[2].endswith(f"vs off by group: x0.3 {(1.0 + 2 / 3) / 2:+.2f} (2)")
        and conditions["C10"].lr_scale == conditions["C124"].lr_scale == 0.3
    )


def test_the_grown_factor_lengthens_by_the_distillation_gradients_growth() -> None:
    grown = step_signals.grown_factor
    start = step_signals.START_STEPS
    assert grown(0.5, 6.0, 2.0, start) == 1.0  # within the first steps: the start is measured
    assert grown(0.5, 6.0, 2.0, start + 1) == pytest.approx(0.5 + 0.5 * 3.0)
    assert grown(0.2, 6.0, 2.0, start + 1) == pytest.approx(0.8 + 0.2 * 3.0)
    assert grown(0.9, 1.0, 2.0, start + 1) == 1.0  # shrunk: never shorter than the default
    assert grown(0.5, 6.0, 0.0, start + 1) == 1.0  # no start to compare with
    # scale-free: a distillation loss times 1000 multiplies rho and rho_0 alike
    assert grown(0.4, 6000.0, 2000.0, 50) == pytest.approx(grown(0.4, 6.0, 2.0, 50))


def test_a_grown_probe_run_takes_longer_steps_only_after_the_start(quick_run, off_probe) -> None:
    # the same first START_STEPS steps as the default (factor 1 while rho_0 is measured), then
    # the runs part; every step still recorded
    _, _, off = off_probe
    _, _, grown = _quick_probe(quick_run[1], "grown")
    start = step_signals.START_STEPS
    assert grown["steps"][:start] == off["steps"][:start]
    assert len(grown["steps"]) == grown["total_steps"]
    assert grown["steps"][start + 5 :] != off["steps"][start + 5 :]


def test_a_unit_probe_hands_the_optimizer_the_direction_at_unit_norm(quick_run, off_probe) -> None:
    # the first step: the default's own update (same parameters, same batch) divided by its norm
    _, _, off = off_probe
    _, _, unit = _quick_probe(quick_run[1], "unit")
    assert unit["factors"][0] == pytest.approx(1 / off["feeds"][0])
    assert all(feed == pytest.approx(1.0, rel=1e-5) for feed in unit["feeds"])
    assert len(unit["feeds"]) == unit["total_steps"]
    # the default's own update drifts over the run (here it shrinks as the task is learnt)
    assert len(set(off["feeds"])) > 1 and min(off["feeds"]) < off["feeds"][0]


def test_the_feed_course_is_read_against_the_first_steps() -> None:
    start = step_signals.START_STEPS
    feeds = [2.0] * start + [1.0] * (40 - start)  # quarters of 10 steps
    assert step_signals.feed_course(feeds) == pytest.approx([1.0, 0.5, 0.5, 0.5])
    feeds = [2.0] * 40
    assert step_signals.feed_course(feeds) == pytest.approx([1.0] * 4)
    assert all(math.isnan(x) for x in step_signals.feed_course([]))
    assert all(math.isnan(x) for x in step_signals.feed_course([0.0] * 12))


def test_the_hypergradient_length_grows_only_at_the_schedules_peak() -> None:
    hyper = step_signals.HyperLength(rate=0.1, ceiling=2.0, peak=0.9)
    # a warm-up: the rate rises, a descending signal does not lengthen
    assert hyper.observe(float("nan"), 0.05) == 1.0
    assert hyper.observe(0.5, 0.1) == 1.0 and hyper.observe(0.5, 0.2) == 1.0
    # at the peak it grows by exp(rate * signal) per step
    assert hyper.observe(0.5, 0.2) == pytest.approx(math.exp(0.05))
    assert hyper.observe(0.5, 0.19) == pytest.approx(math.exp(0.10))  # 0.95 of the peak
    # an annealed rate (below 0.9 of the peak) holds it against a descending signal ...
    assert hyper.observe(1.0, 0.1) == pytest.approx(math.exp(0.10))
    # ... but an overshoot still shortens it, never below the default's step
    assert hyper.observe(-0.5, 0.1) == pytest.approx(math.exp(0.05))
    assert hyper.observe(-1.0, 0.1) == 1.0
    assert hyper.observe(float("nan"), 0.2) == 1.0  # no previous change: unchanged
    for _ in range(20):
        hyper.observe(1.0, 0.2)
    assert hyper.multiplier == pytest.approx(2.0)  # the ceiling
    for bad in ({"rate": 0.0}, {"ceiling": 0.5}, {"peak": 0.0}, {"peak": 1.5}):
        with pytest.raises(ValueError):
            step_signals.HyperLength(**bad)


def test_the_hyper_probe_is_the_library_option(quick_run) -> None:
    # the probe's factor on the update is what MoKD(lengthen="hypergradient") does to its
    # weights: the same run to the last digit of the final accuracy, and not the default's
    condition, lr, probe = _quick_probe(quick_run[1], "hyper")
    default = kd_suite.CANDIDATES["default"]
    hyper = replace(
        default,
        label="mokd (library default), lengthen=hypergradient",
        options=tuple(sorted({**dict(default.options), "lengthen": "hypergradient"}.items())),
    )
    assert probe["final"] == _suite_run(condition, lr, hyper)["final"]
    assert probe["final"] != _suite_run(condition, lr, default)["final"]


def test_a_hyper_probe_run_lengthens_as_the_descent_signal_says(quick_run, off_probe) -> None:
    # the first step has no previous change: the default's step; every later factor is the
    # exponential of the rate times the clipped running sum of the logged signals
    _, _, off = off_probe
    _, _, hyper = _quick_probe(quick_run[1], "hyper")
    assert hyper["steps"][0] == off["steps"][0] and hyper["factors"][0] == 1.0
    assert len(hyper["factors"]) == hyper["total_steps"] == len(hyper["signals"]) + 1
    assert all(-1.0 <= s <= 1.0 for s in hyper["signals"])
    assert all(1.0 <= f <= 4.0 for f in hyper["factors"]) and max(hyper["factors"]) > 1.0
    log_m = 0.0  # the quick condition's schedule is constant: every step is at the peak
    for signal, factor in zip(hyper["signals"], hyper["factors"][1:]):
        log_m = min(math.log(4.0), max(0.0, log_m + 0.03 * signal))
        assert factor == pytest.approx(math.exp(log_m))


def test_a_held_hypergradient_length_only_shrinks() -> None:
    # "hyper-after" holds the factor while the default's warm-up cap acts, as a rising rate
    hyper = step_signals.HyperLength(rate=0.1, ceiling=4.0)
    assert hyper.observe(1.0, 0.1) == pytest.approx(math.exp(0.1))
    assert hyper.observe(1.0, 0.1, held=True) == pytest.approx(math.exp(0.1))
    assert hyper.observe(-0.5, 0.1, held=True) == pytest.approx(math.exp(0.05))
    assert hyper.observe(1.0, 0.1) == pytest.approx(math.exp(0.15))


def test_the_growth_trust_multiplies_the_shares_odds_by_the_norm_ratios_growth() -> None:
    trust = step_signals.growth_trust
    start = step_signals.START_STEPS
    assert trust(6.0, 2.0, start) is None  # within the first steps: the start is measured
    t = trust(6.0, 2.0, start + 1)
    assert t is not None and t / (1 - t) == pytest.approx(3.0)  # odds times rho / rho_0
    shrunk = trust(1.0, 2.0, start + 1)
    assert shrunk is not None and shrunk / (1 - shrunk) == pytest.approx(0.5)  # and below 1
    assert trust(6.0, 0.0, start + 1) is None and trust(0.0, 2.0, start + 1) is None
    # scale-free: a distillation loss times 1000 multiplies rho and rho_0 alike
    assert trust(6000.0, 2000.0, 50) == pytest.approx(trust(6.0, 2.0, 50))


def test_a_grown_odds_probe_run_leaves_the_start_to_the_default(quick_run, off_probe) -> None:
    # no evidence while rho_0 is measured: the default's shares on the first START_STEPS steps
    # (same parameters, same batches); afterwards the odds follow rho's growth and the runs part
    _, _, off = off_probe
    _, _, probe = _quick_probe(quick_run[1], "grown-odds")
    start = step_signals.START_STEPS
    assert probe["shares"][:start] == pytest.approx(off["shares"][:start])
    assert probe["odds"][:start] == [1.0] * start
    assert len(probe["odds"]) == probe["total_steps"] and len(set(probe["odds"][start:])) > 1
    assert probe["shares"][start + 5 :] != off["shares"][start + 5 :]


def test_the_layerwise_share_weighs_each_tensor_by_its_own_cosine() -> None:
    layerwise = step_signals.LayerwiseShare(3, smoothing=0.9)
    agreeing_task, agreeing_rest = torch.tensor([3.0, 0.0]), torch.tensor([0.6, 0.8])  # cos 0.6
    conflicting_task, conflicting_rest = torch.tensor([0.0, 2.0]), torch.tensor([1.0, -1.0])
    head_rest = torch.tensor([0.5, 0.5])  # a tensor the task does not reach
    first = layerwise.update(
        [agreeing_task, conflicting_task, None], [agreeing_rest, conflicting_rest, head_rest], 0.5
    )
    # one step: the bias-corrected average is the cosine itself; each part as long as its task
    # gradient times the length factor
    direction = 0.4 * torch.tensor([1.0, 0.0]) + 0.6 * torch.tensor([0.6, 0.8])
    assert first[0] is not None and torch.allclose(first[0], direction / direction.norm() * 1.5)
    assert first[1] is not None and torch.allclose(first[1], conflicting_task * 0.5)  # no share
    assert first[2] is None  # keeps the default's update
    assert layerwise.shares == [pytest.approx((0.6 + 0.0 + 0.0) / 3)]
    # the next step averages the agreeing tensor's cosine with its first (0.6, then 0.8)
    second = layerwise.update(
        [agreeing_task, conflicting_task, None],
        [torch.tensor([0.8, 0.6]), conflicting_rest, head_rest],
        1.0,
    )
    share = (0.9 * 0.1 * 0.6 + 0.1 * 0.8) / (1 - 0.9**2)
    direction = (1 - share) * torch.tensor([1.0, 0.0]) + share * torch.tensor([0.8, 0.6])
    assert second[0] is not None and torch.allclose(second[0], direction / direction.norm() * 3.0)
    # one gradient per tensor, or an error naming the counts
    with pytest.raises(ValueError, match=r"expected \(3\), got 2 task and 2 distillation"):
        layerwise.update([agreeing_task, conflicting_task], [agreeing_rest, conflicting_rest], 1.0)


def test_a_layerwise_probe_run_keeps_the_defaults_length(quick_run, off_probe) -> None:
    # the first step (same parameters, same batch): every tensor's part as long as its task
    # gradient times min(1, 1 / L_task), so the update's norm is the default's; its shares
    # are the tensors' own, not the default's single one
    _, _, off = off_probe
    _, _, probe = _quick_probe(quick_run[1], "layerwise")
    assert probe["feeds"][0] == pytest.approx(off["feeds"][0], rel=1e-5)
    assert len(probe["shares"]) == probe["total_steps"]
    assert max(abs(a - b) for a, b in zip(probe["shares"], off["shares"])) > 0.01
    # the same length, another direction: the first step lowers the task loss by another amount
    assert probe["steps"][0][1] != pytest.approx(off["steps"][0][1], rel=1e-4)


def test_the_weight_share_update_mixes_the_unit_gradients_by_a_fixed_weights_share() -> None:
    task, rest = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])  # rho = 4/3
    update = step_signals.weight_update(task, rest, task_loss=2.0, weight=0.1)
    share = 0.1 * (4 / 3) / (0.9 + 0.1 * (4 / 3))
    assert float(update.norm()) == pytest.approx(3.0 / 2.0)  # the default's capped length
    assert float(update[1] / update[0]) == pytest.approx(share / (1 - share))
    # not scale-free (a diagnostic): the distillation loss x1000 takes nearly all the share
    scaled = step_signals.weight_update(task, 1000 * rest, task_loss=0.5, weight=0.1)
    assert float(scaled.norm()) == pytest.approx(3.0) and float(scaled[1] / scaled[0]) > 100
    assert torch.equal(step_signals.weight_update(task, torch.zeros(2), 2.0, 0.1), task / 2.0)


def test_the_start_weight_share_reads_the_norm_ratio_against_the_runs_start() -> None:
    task, rest = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])  # rho = 4/3
    # at the starting ratio the share is the weight itself
    update = step_signals.weight_update(task, rest, task_loss=2.0, weight=0.1, rho_start=4 / 3)
    assert float(update.norm()) == pytest.approx(1.5)
    assert float(update[1] / update[0]) == pytest.approx(0.1 / 0.9)
    # the ratio doubled since the start: the odds double, as a fixed weight's would
    doubled = step_signals.weight_update(task, 2 * rest, 2.0, 0.1, rho_start=4 / 3)
    assert float(doubled[1] / doubled[0]) == pytest.approx(0.2 / 0.9)
    # scale-free: the distillation loss x1000 (its start measured in the same units) is the same
    scaled = step_signals.weight_update(task, 1000 * rest, 2.0, 0.1, rho_start=4000 / 3)
    assert torch.allclose(scaled, update, rtol=1e-6)
    with pytest.raises(ValueError, match="rho_start"):
        step_signals.weight_update(task, rest, 2.0, 0.1, rho_start=0.0)


def test_loss_courses_give_each_losss_start_and_quarters() -> None:
    rows = [[float(20 - i), float(i)] for i in range(20)]  # task falls, the other rises
    task, other = step_signals.loss_courses(rows)
    start = step_signals.START_STEPS
    assert task[0] == pytest.approx(sum(20 - i for i in range(start)) / start)
    assert task[1:] == pytest.approx([18.0, 13.0, 8.0, 3.0])  # quarters of five steps
    assert other[1:] == pytest.approx([2.0, 7.0, 12.0, 17.0])
    assert step_signals.loss_courses([]) == []


def test_a_flat_update_is_written_back_in_the_parameters_layout() -> None:
    params = [torch.zeros(2, 3, requires_grad=True), torch.zeros(4, requires_grad=True)]
    flat = torch.arange(10.0)
    step_signals._write_flat(flat, params)
    assert params[0].grad is not None and params[0].grad.shape == (2, 3)
    assert torch.equal(step_signals._flat([p.grad for p in params], params), flat)


def _first_step_gradients(condition: kd_suite.Condition, lr: float) -> tuple[torch.Tensor, ...]:
    """The task and distillation gradients (flat) of the quick condition's first step, seed 0."""
    run = kd_suite.Training.start(condition, 0, lr, True)
    _, batch = next(iter(run.batches()))
    losses = run.losses(batch)
    rest = torch.stack([v for name, v in losses.items() if name != "task"]).sum()
    grads = [
        step_signals._flat(
            torch.autograd.grad(loss, run.params, retain_graph=True, allow_unused=True), run.params
        )
        for loss in (losses["task"], rest)
    ]
    return grads[0], grads[1], losses["task"].detach()


def test_the_weight_diagnostics_hand_the_default_a_fixed_weights_share_or_length(
    quick_run, off_probe
) -> None:
    condition, lr, off = off_probe
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        task, rest, task_loss = _first_step_gradients(condition, lr)
    finally:
        torch.set_num_threads(threads)
    a = step_signals.DIAGNOSTIC_WEIGHT
    # "weight-length": the default's first direction at |(1 - a) g_task + a g_rest|
    _, _, longer = _quick_probe(quick_run[1], "weight-length")
    assert longer["feeds"][0] == pytest.approx(float(((1 - a) * task + a * rest).norm()), rel=1e-4)
    assert longer["shares"][0] == pytest.approx(off["shares"][0])
    # "weight-share": the default's first length, the fixed weight's share on every step
    _, _, shared = _quick_probe(quick_run[1], "weight-share")
    assert shared["feeds"][0] == pytest.approx(off["feeds"][0], rel=1e-4)
    rho = float(rest.norm() / task.norm())
    assert shared["shares"][0] == pytest.approx(a * rho / ((1 - a) + a * rho), rel=1e-5)
    assert off["feeds"][0] == pytest.approx(
        float(task.norm()) / max(float(task_loss), 1.0), rel=1e-4
    )


def test_the_start_weight_probe_gives_a_fixed_weights_share_in_the_runs_own_units(
    quick_run, off_probe
) -> None:
    # "start-weight-share": step 0's share is the weight itself (the ratio is its own start);
    # every later step's is a fixed weight's share at the step's ratio over the mean of the
    # first START_STEPS ratios (of those seen so far before then), at the default's length
    _, _, off = off_probe
    _, _, probe = _quick_probe(quick_run[1], "start-weight-share")
    a, start = step_signals.DIAGNOSTIC_WEIGHT, step_signals.START_STEPS
    rhos, shares = probe["rhos"], probe["shares"]
    assert shares[0] == pytest.approx(a)
    assert probe["feeds"][0] == pytest.approx(off["feeds"][0], rel=1e-4)
    assert len(shares) == len(rhos) > start + 2
    for k in (1, start - 1, start + 2, len(rhos) - 1):
        rho_start = sum(rhos[: min(k + 1, start)]) / min(k + 1, start)
        expected = step_signals.fixed_weight_share(a, rhos[k] / rho_start)
        assert shares[k] == pytest.approx(expected, rel=1e-9)
    # the losses of every step are recorded, the task first
    assert len(probe["losses"]) == len(shares) and probe["losses"][0][0] == pytest.approx(
        off["losses"][0][0]
    )
    # a share that follows the run's own ratio, not the losses' units: it left a on later steps
    assert max(abs(s - a) for s in shares[start:]) > 0.01


def test_the_predictive_share_is_the_best_predictor_of_the_next_task_gradient() -> None:
    # two unit estimates u_t, u_r with cosine c, and a next task gradient g: the share
    # y / (x + y) of the projection of g on their span is the mix with the highest cosine
    torch.manual_seed(0)
    u_t, u_r, g = torch.randn(3, 50, dtype=torch.float64)
    u_r = u_r + 1.5 * u_t  # correlated estimates
    g = g + 0.8 * u_t + 1.2 * u_r
    u_t, u_r = u_t / u_t.norm(), u_r / u_r.norm()
    a, b, c = float(g @ u_t / g.norm()), float(g @ u_r / g.norm()), float(u_t @ u_r)
    rule = step_signals.PredictiveShare(smoothing=0.9)
    rule.observe(a, b, c)
    assert rule.means() == pytest.approx((a, b, c))  # one step, bias-corrected
    shares = torch.linspace(0, 1, 2001, dtype=torch.float64)
    mixes = (1 - shares)[:, None] * u_t + shares[:, None] * u_r
    best = float(shares[int(torch.argmax(mixes @ g / mixes.norm(dim=1)))])
    assert 0 < rule.share() < 1 and rule.share() == pytest.approx(best, abs=1e-3)


def test_the_predictive_share_ends_at_zero_or_one() -> None:
    rule = step_signals.PredictiveShare()
    assert rule.share() == 0.0  # no evidence yet
    rule.observe(0.2, 0.05, 0.5)  # y = 0.05 - 0.1 < 0: the teacher predicts nothing more
    assert rule.share() == 0.0
    other = step_signals.PredictiveShare()
    other.observe(0.05, 0.2, 0.5)  # x = 0.05 - 0.1 < 0 < y: the teacher predicts better
    assert other.share() == 1.0
    # the averages are the run's, bias-corrected: two steps of (0.2, 0.05, 0.5) and one of
    # (0.05, 0.2, 0.5) weigh 0.999^2 : 0.999 : 1
    rule.observe(0.2, 0.05, 0.5)
    rule.observe(0.05, 0.2, 0.5)
    weights = [0.999**2, 0.999, 1.0]
    a = sum(w * v for w, v in zip(weights, (0.2, 0.2, 0.05))) / sum(weights)
    assert rule.means()[0] == pytest.approx(a)


def _replayed_shares(predictions: list) -> list[float]:
    """The share PredictiveShare gives after each of ``predictions`` (observed in order)."""
    replay = step_signals.PredictiveShare()
    shares = []
    for observed in predictions:
        replay.observe(*observed)
        shares.append(replay.share())
    return shares


@pytest.mark.parametrize("gate", ["predictive-share", "predictive-share-10"])
def test_a_predictive_probe_steps_as_the_default_until_its_horizon_then_by_its_cosines(
    quick_run, off_probe, gate: str
) -> None:
    # the gate predicts the task gradient `horizon` steps ahead: the default's own steps (and
    # lengths) until a gradient that far back exists, then the share of the averages of what it
    # observed, at the default's length
    _, _, off = off_probe
    _, _, probe = _quick_probe(quick_run[1], gate)
    horizon = step_signals.PREDICTION_HORIZONS[gate]
    shares, predictions = probe["shares"], probe["predictions"]
    assert shares[:horizon] == off["shares"][:horizon]
    assert probe["feeds"][:horizon] == off["feeds"][:horizon]
    assert len(predictions) == len(shares) - horizon
    assert shares[horizon:] == pytest.approx(_replayed_shares(predictions), abs=1e-12)
    assert len(set(round(x, 6) for x in shares[horizon:])) > 3  # it moves over the run
    if horizon == 1:  # the next batch's cosines are the probe's agreement record, row by row
        # [same batch, next task vs rest, next task vs task] -> (a, b, c)
        assert len(predictions) == len(probe["agreement"])
        for observed, row in zip(predictions, probe["agreement"]):
            assert observed == pytest.approx(tuple(row[2::-1]))


def test_the_first_epoch_predictive_probe_holds_its_share_once_batches_repeat(
    quick_run, off_probe
) -> None:
    # "predictive-share-first-epoch": the one-step prediction while the next batch is unseen
    # (the first epoch), then the share held at its last value, no more cosines observed
    condition, _, off = off_probe
    _, _, probe = _quick_probe(quick_run[1], "predictive-share-first-epoch")
    shares, predictions = probe["shares"], probe["predictions"]
    per_epoch = probe["total_steps"] // condition.recipe.epochs
    assert condition.recipe.epochs >= 2 and len(shares) == probe["total_steps"]
    assert shares[0] == off["shares"][0]
    assert len(predictions) == per_epoch - 1  # steps 1 .. per_epoch - 1
    assert shares[1:per_epoch] == pytest.approx(_replayed_shares(predictions), abs=1e-12)
    held = shares[per_epoch - 1]
    assert all(s == held for s in shares[per_epoch:])
    # the first epoch's cosines are the probe's agreement record, row by row
    for observed, row in zip(predictions, probe["agreement"]):
        assert observed == pytest.approx(tuple(row[2::-1]))


def test_the_held_out_split_keeps_the_first_images_in_place() -> None:
    x, y = torch.arange(40.0).reshape(20, 2), torch.arange(20)
    data = kd_suite.Tensors(x, y, x[:3], y[:3])
    kept, held_x, held_y = step_signals.held_out_split(data, 0.1)
    assert torch.equal(kept.x_train, x[:18]) and torch.equal(kept.y_train, y[:18])
    assert torch.equal(held_x, x[18:]) and torch.equal(held_y, y[18:])
    assert torch.equal(kept.x_test, data.x_test) and len(data.y_train) == 20  # a copy
    assert len(step_signals.held_out_split(data, 0.01)[2]) == 1  # at least one image
    with pytest.raises(ValueError, match="fraction"):
        step_signals.held_out_split(data, 1.0)


def test_a_held_out_gradient_leaves_the_batchnorm_statistics_alone() -> None:
    class Student(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6))
            self.head = torch.nn.Linear(6, 3)

        def forward(self, x: torch.Tensor, features: bool = False):
            h = self.body(x)
            return (self.head(h), [h]) if features else self.head(h)

    torch.manual_seed(0)
    student, x, y = Student(), torch.randn(8, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    params = list(student.parameters())
    norm = student.body[1]
    before = (norm.running_mean.clone(), norm.running_var.clone())
    flat = step_signals.held_out_gradient(student, params, x, y)
    assert torch.equal(norm.running_mean, before[0]) and torch.equal(norm.running_var, before[1])
    assert norm.momentum == 0.1  # restored
    expected = torch.autograd.grad(F.cross_entropy(student(x), y), params)
    assert torch.allclose(flat, torch.cat([g.flatten() for g in expected]))
    student(x)  # a training pass still moves them
    assert not torch.equal(norm.running_mean, before[0])


def test_the_held_out_probe_trains_on_the_rest_and_shares_by_the_held_out_cosines(
    quick_run, off_probe
) -> None:
    # "held-out-share": the last tenth of the images never trained on; every step scores its
    # task and distillation gradients against a held-out batch's task gradient at the same
    # parameters, and the share is PredictiveShare's of those cosines from the first step
    _, _, off = off_probe
    condition, lr, probe = _quick_probe(quick_run[1], "held-out-share")
    shares, predictions = probe["shares"], probe["predictions"]
    assert probe["total_steps"] < off["total_steps"]  # fewer images per epoch
    assert len(shares) == len(predictions) == probe["total_steps"]
    assert shares == pytest.approx(_replayed_shares(predictions), abs=1e-12)
    # the third cosine is the same-batch one the agreement record has (from the second step)
    for observed, row in zip(predictions[1:], probe["agreement"]):
        assert observed[2] == pytest.approx(row[0])
    # the first step's target, recomputed: the first held-out batch's task gradient against the
    # first training batch's, both at the initial parameters
    run = kd_suite.Training.start(condition, 0, lr, True)
    run.data, held_x, held_y = step_signals.held_out_split(run.data)
    _, batch = next(run.batches())
    task = torch.autograd.grad(run.losses(batch)["task"], run.params, allow_unused=True)
    task_flat = step_signals._flat(task, run.params)
    held = step_signals.held_out_gradient(
        run.student, run.params, held_x[: kd_suite.BATCH_SIZE], held_y[: kd_suite.BATCH_SIZE]
    )
    assert predictions[0][0] == pytest.approx(step_signals.cosine(held, task_flat), abs=1e-6)
    assert len(set(round(a, 6) for a, _, _ in predictions)) > 3  # a new batch each step
    # its control trains the default on the same kept images: as many steps, no share rule
    _, _, control = _quick_probe(quick_run[1], "held-out-default")
    assert control["total_steps"] == probe["total_steps"] and control["predictions"] == []
    assert control["shares"] != probe["shares"]  # the default's own share, not the rule's


def test_the_teachers_record_may_only_lower_the_share() -> None:
    assert step_signals.lowering_trust(0.9) == 0.5  # a teacher ahead: the share unchanged
    assert step_signals.lowering_trust(0.2) == 0.2  # a student ahead: odds 1 : 4
    assert step_signals.lowering_trust(0.5) == 0.5


def test_the_trust_probe_is_the_default_until_the_student_wins_the_disagreements(
    quick_run, off_probe
) -> None:
    # "trust-lowers": a trust of 1/2 leaves the default's step as it is, so the two runs are
    # the same step for step until the record first falls below 1/2; the next step's share is
    # then lower than the default's on the same parameters
    _, _, off = off_probe
    _, _, probe = _quick_probe(quick_run[1], "trust-lowers")
    trusts = probe["trusts"]
    assert all(0 < t <= 0.5 for t in trusts) and len(trusts) == len(probe["shares"])
    first = next(k for k, t in enumerate(trusts) if t < 0.5)  # set after step `first`
    assert probe["shares"][: first + 1] == off["shares"][: first + 1]
    assert probe["shares"][first + 1] < off["shares"][first + 1]


def test_the_memory_probe_is_round_22s_candidate(quick_run, off_probe) -> None:
    # "memory-open" trains with the library options of the suite's "long-memory" candidate --
    # the library default since round 22: the probe's run ends where the suite's own run of
    # that candidate does, and is the default's ("off"), step for step; "memory" (the same
    # average, gated as rounds 18-21) and rounds 18-21's rule are not
    condition, lr, off = off_probe
    _, _, probe = _quick_probe(quick_run[1], "memory-open")
    assert probe["final"] == _suite_run(condition, lr, "long-memory")["final"]
    assert probe["shares"] == off["shares"]
    _, _, gated = _quick_probe(quick_run[1], "memory")
    assert gated["shares"] != off["shares"]
    assert probe["final"] != _suite_run(condition, lr, "gated")["final"]
    assert step_signals.OPTION_GATES["memory-open"] == {
        key: value
        for key, value in kd_suite.method_options(kd_suite.CANDIDATES["long-memory"]).items()
        if key in ("agreement_smoothing", "agreement_gate")
    }
    assert set(step_signals.OPTION_GATES) <= set(step_signals.GATES)


def test_the_squared_probe_is_round_25s_candidate(quick_run, off_probe) -> None:
    # "squared" trains with the suite's round-25 candidate's options: its run ends where the
    # suite's own run of "squared" does; its first share is the default's squared (one step's
    # moving average is that step's agreement), and its course differs from the default's
    condition, lr, off = off_probe
    _, _, probe = _quick_probe(quick_run[1], "squared")
    assert probe["final"] == _suite_run(condition, lr, "squared")["final"]
    assert probe["shares"][0] == pytest.approx(off["shares"][0] ** 2, rel=1e-6)
    assert probe["shares"] != off["shares"]
    assert kd_suite.method_options(kd_suite.CANDIDATES["squared"])["conflict"] == "squared"


def test_the_share_growth_probe_is_round_26s_candidate(quick_run, off_probe) -> None:
    # "share-growth" trains with the suite's round-26 candidate's options: its run ends where
    # the suite's own run does; on the first START_STEPS steps its shares are the default's, and
    # "grown-odds" (the same rule computed by the probe from its own gradients) keeps to the
    # library's within rounding while the runs have not parted
    condition, lr, off = off_probe
    _, _, probe = _quick_probe(quick_run[1], "share-growth")
    assert probe["final"] == _suite_run(condition, lr, "share-growth")["final"]
    start = step_signals.START_STEPS
    assert probe["shares"][:start] == pytest.approx(off["shares"][:start], rel=1e-9)
    assert probe["shares"] != off["shares"]
    _, _, grown = _quick_probe(quick_run[1], "grown-odds")
    assert grown["shares"][: start + 5] == pytest.approx(probe["shares"][: start + 5], rel=1e-4)
    assert kd_suite.method_options(kd_suite.CANDIDATES["share-growth"])["share_growth"] is True


def test_capped_growth_raises_a_share_no_higher_than_its_peak() -> None:
    # odds 4 on an agreement of 0.2 would give 0.5; with a peak of 0.4 the share stops there
    # (odds 2/3 against 1/4: a growth of 8/3); below the peak, or when the growth lowers the
    # share, nothing changes; no evidence stays no evidence
    def share(agreement: float, trust: float) -> float:
        odds = agreement / (1 - agreement) * trust / (1 - trust)
        return odds / (1 + odds)

    capped = step_signals.capped_growth_trust(0.8, 0.2, 0.4)
    assert share(0.2, capped) == pytest.approx(0.4, rel=1e-12)
    assert step_signals.capped_growth_trust(0.8, 0.2, 0.9) == pytest.approx(0.8)
    assert step_signals.capped_growth_trust(0.3, 0.2, 0.2) == pytest.approx(0.3)
    assert step_signals.capped_growth_trust(None, 0.2, 0.4) is None
    assert step_signals.capped_growth_trust(0.8, 0.0, 0.4) == pytest.approx(0.8)
    assert step_signals.capped_growth_trust(0.8, 0.4, 0.4) == pytest.approx(0.5)  # at the peak


def test_a_capped_growth_probe_keeps_the_share_under_its_peak(quick_run, off_probe) -> None:
    # on the quick run: the first steps are the default's; no step's share of the update
    # exceeds the highest agreement share of the run up to and including it (the cap is set
    # from the average before the step, which the step's own agreement then moves a little)
    _, _, off = off_probe
    _, _, capped = _quick_probe(quick_run[1], "grown-odds-capped")
    start = step_signals.START_STEPS
    assert capped["shares"][:start] == pytest.approx(off["shares"][:start], rel=1e-9)
    peaks = capped["peaks"]
    assert len(peaks) == len(capped["shares"]) and peaks == sorted(peaks)
    for share, peak in zip(capped["shares"], peaks):
        assert share <= peak + 1e-3
    grown = _quick_probe(quick_run[1], "grown-odds")[2]["shares"]
    assert any(g > p + 1e-3 for g, p in zip(grown, peaks))  # uncapped, it went above


def test_the_jitter_controls_factors_cancel_in_pairs() -> None:
    factors = [step_signals.jitter_factor(step) for step in range(6)]
    assert factors[0] == pytest.approx(math.exp(step_signals.JITTER)) and factors[0] > 1
    assert factors[1] == pytest.approx(math.exp(-step_signals.JITTER)) and factors[1] < 1
    assert factors[::2] == [factors[0]] * 3 and factors[1::2] == [factors[1]] * 3
    assert factors[0] * factors[1] == pytest.approx(1.0, abs=1e-15)


def test_a_jitter_probe_run_is_the_default_with_its_update_jittered(quick_run, off_probe) -> None:
    # the control takes the default's first update times e^{+0.01} (same parameters, same
    # batch), alternates the factor after that, and its run parts from the default's
    _, _, off = off_probe
    _, _, jitter = _quick_probe(quick_run[1], "jitter")
    assert jitter["factors"][:4] == [step_signals.jitter_factor(step) for step in range(4)]
    assert len(jitter["factors"]) == jitter["total_steps"]
    assert jitter["feeds"][0] == pytest.approx(off["feeds"][0] * math.exp(step_signals.JITTER))
    assert jitter["shares"][0] == pytest.approx(off["shares"][0])
    assert jitter["feeds"][1:] != off["feeds"][1:]


def test_the_student_reaches_the_teacher_when_its_window_mean_does() -> None:
    # the teacher right on 0.8 of every batch; the student at 0.5 for 30 steps, then 0.9: with a
    # window of 10 the student's mean first reaches 0.8 at step 38 (three steps of 0.5 left:
    # (3 * 0.5 + 7 * 0.9) / 10 = 0.78 at step 37, (2 * 0.5 + 8 * 0.9) / 10 = 0.82 at 38)
    labels = [[0.8, 0.5]] * 30 + [[0.8, 0.9]] * 30
    assert step_signals.reach_fraction(labels, window=10) == pytest.approx(38 / 60)
    assert step_signals.reach_fraction([[0.8, 0.5]] * 60, window=10) is None
    assert step_signals.reach_fraction([[0.8, 0.8]] * 60, window=10) == pytest.approx(10 / 60)
    assert step_signals.reach_fraction([[0.8, 0.9]] * 5, window=10) is None  # shorter than it


def test_a_probe_run_records_the_teacher_and_the_student_on_the_labels(off_probe) -> None:
    # one row per step; the teacher's column is its accuracy on the step's batch, read from its
    # stored logits: over the run it averages the teacher's accuracy on the batches drawn
    condition, lr, probe = off_probe
    labels = probe["labels"]
    assert len(labels) == probe["total_steps"]
    assert all(0.0 <= t <= 1.0 and 0.0 <= s <= 1.0 for t, s in labels)
    run = kd_suite.Training.start(condition, 0, lr, True)
    right = run.teacher["logits"].argmax(1) == run.data.y_train
    batches = [batch for _, batch in run.batches()]
    expected = [float(right[batch].float().mean()) for batch in batches]
    assert [row[0] for row in labels] == pytest.approx(expected)
    assert len(set(round(row[1], 6) for row in labels)) > 1  # the student's changes as it learns


def test_the_label_line_gives_both_accuracies_by_quarter_and_each_runs_reach() -> None:
    def run(reach: float | None) -> dict:
        return {
            "teacher_accuracy_quarters": [0.8, 0.8, 0.8, 0.8],
            "student_accuracy_quarters": [0.3, 0.6, 0.8, 0.9],
            "student_reaches_teacher": reach,
        }

    line = step_signals.label_line([run(0.6), run(None)])
    assert line.strip() == (
        "on the labels: teacher 0.80 0.80 0.80 0.80, student 0.30 0.60 0.80 0.90; the student "
        "reaches the teacher at 0.60, never of the run"
    )


def test_after_a_round_its_confirmation_conditions_can_be_probed(tmp_path) -> None:
    # round 24's C178 is a confirmation condition: refused by --round 24, known with --after
    assert "C178" not in step_signals._conditions(24)
    assert step_signals._conditions(24, after=True)["C178"].split == "confirmation"
    with pytest.raises(SystemExit):
        step_signals.main(
            [
                "--round",
                "24",
                "--gates",
                "off",
                "--conditions",
                "C178",
                "--store",
                str(tmp_path / "s.json"),
            ]
        )


def test_the_relative_ratio_is_unchanged_when_a_loss_is_rescaled() -> None:
    # |g_rest| / L_rest against |g_task| / L_task: 2 / 4 against 3 / 1.5
    assert step_signals.relative_ratio(3.0, 2.0, 1.5, 4.0) == pytest.approx(0.25)
    for scale in (1e3, 1e-2):  # a loss times c: its gradient times c too
        assert step_signals.relative_ratio(3.0, 2.0 * scale, 1.5, 4.0 * scale) == pytest.approx(
            0.25
        )
        assert step_signals.relative_ratio(3.0 * scale, 2.0, 1.5 * scale, 4.0) == pytest.approx(
            0.25
        )
    assert math.isnan(step_signals.relative_ratio(0.0, 2.0, 1.5, 4.0))
    assert math.isnan(step_signals.relative_ratio(3.0, 2.0, 1.5, 0.0))


def test_the_relative_switch_decides_after_the_first_steps_and_the_guard_sends_it_back() -> None:
    start = step_signals.START_STEPS
    switch = step_signals.RelativeSwitch()
    # the first steps: the default's step while the ratio is measured (mean 1.1, a nan ignored)
    ratios = [1.0, 1.2, float("nan")] + [1.1] * (start - 3)
    assert [switch.observe(r, [2.0, 1.0]) for r in ratios] == [False] * start
    assert switch.chosen is True and switch.start_ratio == pytest.approx(1.1)
    assert switch.starts == [2.0, 1.0]
    # then the fixed weight's course, until a loss passes twice its start (the task's: 4.1 > 4)
    assert switch.observe(1.0, [3.9, 1.9]) is True
    assert switch.observe(1.0, [4.1, 0.5]) is False and switch.reverted_at == start + 2
    assert switch.observe(1.0, [1.0, 0.5]) is False  # for good, though the losses fell again
    # unguarded: never back
    unguarded = step_signals.RelativeSwitch(guarded=False)
    for r in [1.5] * start:
        unguarded.observe(r, [2.0, 1.0])
    assert unguarded.observe(1.5, [100.0, 100.0]) is True and unguarded.reverted_at is None
    # a mean below the pivot: the default's step all run long
    below = step_signals.RelativeSwitch()
    outcomes = [below.observe(0.9, [2.0, 1.0]) for _ in range(start + 5)]
    assert below.chosen is False and not any(outcomes)


def test_a_relative_start_probe_takes_the_weights_course_only_past_the_pivot(
    quick_run, off_probe, monkeypatch
) -> None:
    # with the pivot out of reach the probe is the default itself; with the pivot at 0 every
    # run switches after the first steps, and its shares from then on are the fixed weight's at
    # the run's starting norm ratio (the guard is set out of reach, so the switched run keeps
    # its course to the end)
    _, _, off = off_probe
    monkeypatch.setattr(step_signals, "GUARD_RISE", math.inf)
    monkeypatch.setattr(step_signals, "RELATIVE_PIVOT", math.inf)
    _, _, below = _quick_probe(quick_run[1], "relative-start")
    assert below["switched"] is False and below["final"] == off["final"]
    assert below["shares"] == off["shares"] and below["relative_start"] > 0
    monkeypatch.setattr(step_signals, "RELATIVE_PIVOT", 0.0)
    _, _, above = _quick_probe(quick_run[1], "relative-start")
    start = step_signals.START_STEPS
    assert above["switched"] is True and above["reverted_at"] is None
    assert above["shares"][:start] == off["shares"][:start]
    rho_start = statistics.mean(above["rhos"][:start])
    expected = [step_signals.fixed_weight_share(0.1, rho / rho_start) for rho in above["rhos"]]
    assert above["shares"][start:] == pytest.approx(expected[start:])
    assert above["relative_start"] == pytest.approx(below["relative_start"])  # same first steps
    assert above["final"] != off["final"]


def test_the_recorded_relative_start_and_its_table(monkeypatch) -> None:
    # rho_0 L_task / L_rest from a record's first steps; the table over hand-written records of
    # three conditions at 1x, the baselines and verdicts stubbed: the weak teachers' larger
    # ratio shows as a Spearman of +0.87 with "weak" (the two weak ones tie) and -1 with the
    # best weight
    record = {"norm_ratio_course": [2.0, []], "loss_courses": [[2.4], [1.0], [0.6]]}
    assert step_signals.recorded_relative_start(record) == pytest.approx(3.0)  # 2 * 2.4 / 1.6
    assert math.isnan(step_signals.recorded_relative_start({"norm_ratio_course": [2.0, []]}))
    conditions = step_signals._conditions(26, True)
    strong, weak_a, weak_b = "S9", "C135", "C193"
    assert conditions[strong].teacher == "strong" and conditions[weak_a].teacher == "weak"
    weights = {strong: 0.9, weak_a: 0.3, weak_b: 0.1}
    monkeypatch.setattr(step_signals, "best_fixed_weight", lambda c, *a: weights[c.name.split()[0]])
    monkeypatch.setattr(
        kd_suite, "verdicts", lambda c, *a, **k: {"fixed": {"won": c.name.startswith("S9")}}
    )
    records = [
        {"condition": n, "lr_scale": 1.0, "seed": 0, "norm_ratio_course": [rho, []],
         "loss_courses": [[2.3], [loss]]}
        for n, rho, loss in ((strong, 1.0, 4.6), (weak_a, 1.0, 2.3), (weak_b, 2.0, 2.3))
    ]  # fmt: skip
    table = step_signals.relative_start_table(records, None, 26, False, True)
    first, _, low, middle, high = table.split("\n")
    assert first.startswith("the start's ratio of relative gradients r over 3 conditions")
    assert "Spearman with weak +0.87, with the best fixed weight -1.00" in first
    assert low.split()[1:] == ["0", "0", "0", "0"]
    assert middle.split()[1:] == ["1", "0", "0", "0"]  # r = 0.5: strong, a = 0.9, won
    assert high.split()[1:] == ["2", "2", "1", "2"]  # r = 1 and 2: weak, a = 0.1 once, lost
