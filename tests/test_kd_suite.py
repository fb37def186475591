"""The condition suite (benchmarks/kd_suite.py): its machinery, not its accuracy numbers.

``--quick`` runs the first selection condition at tiny sizes end to end (learning-rate grid,
baselines, a candidate, the store, the page); the rest checks the protocol's rules: safeguards
shared with the baselines, the split declared up front, the relative bound of the baselines.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from types import SimpleNamespace
from typing import Any, Optional

import pytest
import torch

from benchmarks import kd_suite


def test_quick_run_writes_the_store_and_the_page(tmp_path) -> None:
    store_path, page = tmp_path / "suite.json", tmp_path / "results.md"
    code = kd_suite.main(
        [
            "--quick",
            "--round",
            "2",
            "--candidates",
            "default",
            "--no-progress",
            "--store",
            str(store_path),
            "--page",
            str(page),
        ]
    )
    assert code == 0
    runs = json.loads(store_path.read_text())["runs"].values()
    lr_grid = [r for r in runs if r["stage"] == "lr"]
    main = [r for r in runs if r["stage"] == "main"]
    assert len(lr_grid) == len(kd_suite.LR_GRID["sgd"]) * 2  # two seeds in quick mode
    configs = {r["config"] for r in main}
    assert {"ce", *(f"fixed a={a:g}" for a in kd_suite.FIXED_WEIGHTS)} <= configs
    assert "mokd (library default)" in configs
    for run in main:
        assert 0.0 <= run["final"] <= 1.0 and isinstance(run["collapsed"], bool)
        assert run["seed"] in (0, 1) and math.isfinite(run["seconds"])
    balanced = [r for r in main if r["config"] == "mokd (library default)"]
    assert len(balanced) == 2
    for run in balanced:
        diagnostics = run["diagnostics"]
        assert 0.0 <= diagnostics["task_share"] <= 1.0
        assert len(diagnostics["loss_first"]) == 2  # task and KD
    text = page.read_text()
    assert "## The chosen configuration on the confirmation conditions" in text
    assert "| mokd (library default) |" in text
    assert "S1 fashion-cnn (selection)" in text


def test_split_is_declared_and_both_sides_are_large_enough() -> None:
    splits = [c.split for c in kd_suite.CONDITIONS]
    assert set(splits) == {"selection", "confirmation"}
    assert splits.count("confirmation") >= 5 and len(splits) >= 12
    names = [c.name for c in kd_suite.CONDITIONS]
    assert len(set(names)) == len(names)


def test_each_round_has_fresh_confirmation_conditions() -> None:
    seen: set[str] = set()
    for round_number in sorted(kd_suite.ROUNDS):
        confirmation = kd_suite.conditions_of_round(round_number, "confirmation")
        names = {c.name for c in confirmation}
        assert len(names) >= 5 and not names & seen  # never reused by a later round
        seen |= names
        selection = kd_suite.conditions_of_round(round_number, "selection")
        # earlier selection data stay selection data; a confirmation condition only when a
        # later round names it as reused (it has been looked at), never the round's own
        reused = kd_suite.REUSED_AS_SELECTION.get(round_number, ())
        for condition in selection:
            assert condition.round <= round_number and condition.name not in names
            assert condition.split == "selection" or condition.name.split()[0] in reused
        assert all(c.round < round_number for c in selection if c.split == "confirmation")
        if round_number in kd_suite.FEATURE_ROUNDS:
            assert all("feat" in c.objectives for c in selection + confirmation)
        if round_number == 2:  # the learning-rate criterion: x1 and x0.3 / x3 of one recipe
            scales = {c.lr_scale for c in confirmation if c.recipe == confirmation[0].recipe}
            assert {0.3, 1.0, 3.0} <= scales
    with pytest.raises(ValueError, match="unknown round"):
        kd_suite.conditions_of_round(99)


def test_a_safeguarded_candidate_brings_its_safeguard_to_the_baselines() -> None:
    clipped = kd_suite.CANDIDATES["anchor-clip1"]
    bounded = kd_suite.CANDIDATES["anchor-sb2"]
    assert kd_suite.safeguard_of(clipped) == ("max_norm", 1.0)
    assert kd_suite.safeguard_of(bounded) == ("step_bound", 2.0)
    assert kd_suite.safeguard_of(kd_suite.CANDIDATES["default"]) is None
    labels = [c.label for c in kd_suite.baseline_configs({None, ("max_norm", 1.0)})]
    assert "ce" in labels and "ce, max_norm=1" in labels
    assert "fixed a=0.5" in labels and "fixed a=0.5, max_norm=1" in labels


def test_representation_variants_skip_feature_conditions() -> None:
    variant = kd_suite.CANDIDATES["default-representation"]
    feature = next(c for c in kd_suite.CONDITIONS if "feat" in c.objectives)
    logits_only = next(c for c in kd_suite.CONDITIONS if c.objectives == "kd")
    assert kd_suite.applicable([variant], feature) == []
    assert kd_suite.applicable([variant], logits_only) == [variant]


def test_relative_bound_clips_spikes_against_the_running_average() -> None:
    bound = kd_suite.RelativeBound(2.0)
    p = torch.nn.Parameter(torch.zeros(4))
    for _ in range(20):  # a steady norm of 1 is never clipped
        p.grad = torch.tensor([1.0, 0.0, 0.0, 0.0])
        bound([p])
        assert float(p.grad.norm()) == pytest.approx(1.0)
    p.grad = torch.tensor([100.0, 0.0, 0.0, 0.0])  # a spike: clipped to 2x the average
    bound([p])  # (the average includes the spike, as mokd's step_bound does)
    expected = 2.0 * bound.average / (1 - bound.decay**bound.count)
    assert float(p.grad.norm()) == pytest.approx(expected)
    assert expected < 15.0


def test_mokd_candidates_spell_out_every_option() -> None:
    # a stored run keeps its meaning when the library's defaults change; options added later
    # are spelt out unless they sit at the value that reproduces the earlier behaviour
    from mokd_optim.methods import get

    every = get("mokd").options()
    for config in kd_suite.CANDIDATES.values():
        if config.method == "mokd":
            options = dict(config.options)
            assert set(kd_suite.PREVIOUS_MOKD_DEFAULTS) <= set(options) <= set(every)
            assert set(every) - set(options) <= set(kd_suite.NEUTRAL_MOKD_OPTIONS)
            assert set(kd_suite.method_options(config)) == set(every)
    # the default spells out anchor_vs_rest=True, rest="sum", conflict="agreement" and round
    # 22's agreement_smoothing=0.999 (agreement_gate="off", the neutral value): the same runs
    # as round 22's "long-memory" candidate, not rounds 18-21's ("gated"), round 7's (the
    # per-step share, smoothing left out), round 6's ("project"), round 4's (conflict left
    # out: "pareto") nor round 3's (rest left out: "min-norm")
    assert kd_suite.CANDIDATES["long-memory"].key == kd_suite.CANDIDATES["default"].key
    assert kd_suite.CANDIDATES["gated"].key != kd_suite.CANDIDATES["default"].key
    assert kd_suite.CANDIDATES["agreement"].key != kd_suite.CANDIDATES["default"].key
    assert kd_suite.method_options(kd_suite.CANDIDATES["agreement"])["agreement_smoothing"] == 0
    assert kd_suite.CANDIDATES["project"].key != kd_suite.CANDIDATES["default"].key
    assert kd_suite.CANDIDATES["rest-sum"].key != kd_suite.CANDIDATES["default"].key
    assert kd_suite.method_options(kd_suite.CANDIDATES["rest-sum"])["conflict"] == "pareto"
    assert kd_suite.CANDIDATES["anchor-vs-rest"].key != kd_suite.CANDIDATES["default"].key
    assert kd_suite.method_options(kd_suite.CANDIDATES["anchor-vs-rest"])["rest"] == "min-norm"
    assert kd_suite.method_options(kd_suite.CANDIDATES["default"]) == every


def test_a_candidate_without_a_later_option_runs_at_its_neutral_value() -> None:
    # "eq1-capped-log-anchor" was stored before anchor_vs_rest existed (and before it became the
    # default): its runs must keep meaning anchor_vs_rest=False
    from mokd_optim.methods import get

    config = kd_suite.CANDIDATES["eq1-capped-log-anchor"]
    assert "anchor_vs_rest" not in dict(config.options)
    assert get("mokd").anchor_vs_rest  # the library default differs...
    assert kd_suite.method_options(config)["anchor_vs_rest"] is False  # ...the run does not
    default = kd_suite.CANDIDATES["default"]
    assert kd_suite.method_options(default)["anchor_vs_rest"] is True


def test_seed_ranges_parse_and_bad_ones_are_refused() -> None:
    assert kd_suite.parse_seeds("0-2,5,4-4") == (0, 1, 2, 4, 5)
    assert kd_suite.parse_seeds("3") == (3,)
    for bad in ("a", "1-b", "", "-3"):
        with pytest.raises(ValueError, match="seeds"):
            kd_suite.parse_seeds(bad)


def _store_with_ce_best_lr(tmp_path, condition, best: int) -> tuple[Any, float]:
    """A store holding the cross-entropy learning-rate grid of ``condition``'s recipe, written by
    hand with grid entry ``best`` the winner; returns the store and the condition's lr."""
    store = kd_suite.Store(tmp_path / "store.json")
    recipe_grid = kd_suite.Condition("lr grid", "lr", condition.recipe)
    ce = kd_suite.Config("ce", "ce")
    grid = kd_suite.LR_GRID[condition.recipe.optimizer]
    for lr in grid:
        for seed in kd_suite.LR_GRID_SEEDS:
            key = kd_suite.run_key("lr", recipe_grid, ce, seed, lr, 1.0, False)
            store.runs[key] = {"final": 0.9 if lr == grid[best] else 0.5}
    return store, grid[best] * condition.lr_scale


def test_seed_study_counts_collapses_and_pairs_by_seed(tmp_path) -> None:
    # a stored learning-rate grid and four seeds of ce and one candidate, written by hand: the
    # table's means, collapse counts and paired gaps come from exactly these runs
    condition = kd_suite.CONDITIONS[1]  # S2: lr x3
    store, lr = _store_with_ce_best_lr(tmp_path, condition, best=1)
    ce = kd_suite.Config("ce", "ce")
    candidate = kd_suite.CANDIDATES["project"]
    finals = {"ce": [0.8, 0.1, 0.7, 0.6], candidate.label: [0.85, 0.75, 0.1, 0.7]}
    for config in (ce, candidate):
        for seed, final in enumerate(finals[config.label]):
            key = kd_suite.run_key("main", condition, config, seed, lr, 1.0, False)
            store.runs[key] = {"final": final, "collapsed": final < 0.2, "seconds": 1.0}
    lines = kd_suite.seed_study(condition, [ce, candidate], store, (0, 1, 2, 3))
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ")}
    assert "| 55.00 | 1/4 |" in rows["ce"]
    # paired gaps 5, 65, -60, 10 points: mean +5.00, standard error 25.58 (stdev 51.15 / 2)
    assert "| 60.00 | 1/4 | +5.00 ± 25.58 (3/4) |" in rows[candidate.label]
    # a seed missing for a configuration leaves it out
    assert len(kd_suite.seed_study(condition, [ce, candidate], store, (0, 1, 2, 3, 4))) == 4


def test_behind_ce_study_counts_conditions_beyond_one_standard_error(tmp_path) -> None:
    # two conditions, ce and two candidates on four seeds, written by hand: "project" trails
    # ce on S2 by 2 points with spread 0 (behind) and on S1 by 1 point with a 2.31 standard
    # error (a tie); "default" is behind nowhere; a third condition without runs is "not run"
    s1, s2, s3 = kd_suite.CONDITIONS[0], kd_suite.CONDITIONS[1], kd_suite.CONDITIONS[2]
    store, _ = _store_with_ce_best_lr(tmp_path, s1, best=1)  # S1 and S2 share the recipe
    ce = kd_suite.Config("ce", "ce")
    project, default = kd_suite.CANDIDATES["project"], kd_suite.CANDIDATES["default"]
    finals = {
        s1: {ce: [0.80] * 4, project: [0.75, 0.83, 0.75, 0.83], default: [0.81] * 4},
        s2: {ce: [0.70] * 4, project: [0.68] * 4, default: [0.70, 0.71, 0.70, 0.71]},
    }
    for condition, by_config in finals.items():
        lr = kd_suite.LR_GRID["sgd"][1] * condition.lr_scale
        for config, values in by_config.items():
            for seed, final in enumerate(values):
                key = kd_suite.run_key("main", condition, config, seed, lr, 1.0, False)
                store.runs[key] = {"final": final, "collapsed": False, "seconds": 1.0}
    lines = kd_suite.behind_ce_study([s1, s2, s3], [project, default], store, (0, 1, 2, 3))
    assert lines[0] == ("Behind cross-entropy by more than one paired standard error on seeds 0-3:")
    assert lines[1] == f"- {project.label}: 1 of 2; 1 not run: S2 (-2.00 ± 0.00)"
    assert lines[2] == f"- {default.label}: 0 of 2; 1 not run: none"
    # seeds that are not a range are listed
    assert kd_suite.behind_ce_study([s1], [default], store, (0, 2))[0].endswith("seeds 0, 2:")


def test_the_clipped_criterion_bounds_each_conditions_difference(tmp_path) -> None:
    # three conditions of one recipe (S1, S2, C146), two configurations on seeds 0-2 written
    # by hand: paired mean differences +0.5, -23.3 (a collapsed seed) and +2 points; clipped at
    # 1 they average (0.5 - 1 + 1) / 3, two of three clipped; S3 (nothing stored) is left out
    by_name = {c.name.split()[0]: c for c in kd_suite.CONDITIONS}
    s1, s2, c146, s3 = by_name["S1"], by_name["S2"], by_name["C146"], by_name["S3"]
    store, _ = _store_with_ce_best_lr(tmp_path, s1, best=1)
    for run in store.runs.values():  # C146 picks its rate from the recomputed field
        run["final_bn_recomputed"] = None
    default, candidate = kd_suite.CANDIDATES["default"], kd_suite.CANDIDATES["hypergradient"]
    finals = {
        s1: {default: [0.80, 0.81, 0.82], candidate: [0.805, 0.815, 0.825]},
        s2: {default: [0.80, 0.80, 0.80], candidate: [0.80, 0.10, 0.80]},
        c146: {default: [0.90, 0.90, 0.90], candidate: [0.92, 0.92, 0.92]},
    }
    for condition, by_config in finals.items():
        lr = kd_suite.LR_GRID["sgd"][1] * condition.lr_scale
        for config, values in by_config.items():
            for seed, final in enumerate(values):
                key = kd_suite.run_key("main", condition, config, seed, lr, 1.0, False)
                store.runs[key] = {
                    "final": final,
                    "final_bn_recomputed": None,  # no BatchNorm: C146 reads "final"
                    "collapsed": final < 0.2,
                    "seconds": 1.0,
                }
    conditions = [s1, s2, c146, s3]
    mean, n, clipped = kd_suite.clipped_mean_difference(
        conditions, candidate, default, store, False
    )
    assert (n, clipped) == (3, 2)
    assert mean == pytest.approx((0.5 - 1.0 + 1.0) / 3)
    # unclipped, the one collapsed seed decides: (0.5 - 23.33 + 2) / 3
    unclipped = kd_suite.clipped_mean_difference(conditions, candidate, default, store, False, 99)
    assert unclipped is not None and unclipped[0] == pytest.approx((0.5 - 70.0 / 3 + 2.0) / 3)
    lines = kd_suite.clipped_lines(conditions, [default, candidate], store, False)
    assert lines == [
        f"- {candidate.label} against {default.label}: +0.167 points, each condition's paired "
        "difference clipped at +-1 (3 conditions, 2 clipped)"
    ]
    assert kd_suite.clipped_mean_difference([s3], candidate, default, store, False) is None
    assert kd_suite.clipped_mean([3.0, -0.5, -7.0], clip=1.0) == pytest.approx(-0.5 / 3)
    assert kd_suite.clipped_mean([]) == 0.0


def test_ce_only_seed_study_runs_no_fixed_weight_and_no_stress(tmp_path) -> None:
    condition = next(c for c in kd_suite.CONDITIONS if c.stress)  # S8: stress scales
    store, _ = _store_with_ce_best_lr(tmp_path, condition, best=0)
    candidate = kd_suite.CANDIDATES["lagged"]
    full = kd_suite.condition_jobs([condition], [candidate], store, False, seeds=(3,))
    slim = kd_suite.condition_jobs(
        [condition], [candidate], store, False, seeds=(3,), stress=False, ce_only=True
    )
    assert {j["config"].kind for j in full} >= {"ce", "fixed"}
    assert any(j["scale"] != 1.0 for j in full)
    assert [(j["config"].label, j["scale"]) for j in slim] == [
        ("ce", 1.0),
        (candidate.label, 1.0),
    ]
    with pytest.raises(SystemExit):  # --ce-only is a form of the seed study
        kd_suite.main(["--ce-only", "--store", str(tmp_path / "q.json")])


def test_recomputed_batchnorm_accuracy_uses_the_final_weights_statistics() -> None:
    # a BatchNorm layer whose running statistics are spoilt (mean 50) classifies the test
    # points wrongly as evaluated; recomputed over the training points (mean ~0, var ~1) it
    # classifies them all correctly. A model without BatchNorm gives None.
    torch.manual_seed(0)
    x_train = torch.randn(512, 2)
    x_test = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [1.5, 0.0], [-1.5, 0.0]])
    y_test = torch.tensor([1, 0, 1, 0])
    data = kd_suite.Tensors(x_train, torch.zeros(512, dtype=torch.long), x_test, y_test)
    norm = torch.nn.BatchNorm1d(2)
    linear = torch.nn.Linear(2, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
        linear.bias.zero_()
        norm.running_mean.fill_(50.0)
    model = torch.nn.Sequential(norm, linear)
    assert kd_suite._accuracy(model, x_test, y_test) == 0.5  # everything left of 50: class 0
    assert kd_suite.recomputed_batchnorm_accuracy(model, data) == 1.0
    torch.testing.assert_close(norm.running_mean, x_train.mean(0))
    assert kd_suite.recomputed_batchnorm_accuracy(linear, data) is None


def _bn_run(final: float, recomputed: Optional[float]) -> dict[str, Any]:
    """A stored run evaluated both ways, written by hand (what the suite's runs hold)."""
    return {"final": final, "final_bn_recomputed": recomputed, "collapsed": False, "seconds": 1.0}


def test_batchnorm_study_reports_both_evaluations_paired_with_ce(tmp_path) -> None:
    condition = kd_suite.CONDITIONS[1]  # S2
    store, lr = _store_with_ce_best_lr(tmp_path, condition, best=1)
    ce, candidate = kd_suite.Config("ce", "ce"), kd_suite.CANDIDATES["default"]
    finals = {ce: ([0.90, 0.92], [0.95, 0.95]), candidate: ([0.60, 0.92], [0.97, 0.96])}
    for config, (plain, recomputed) in finals.items():
        for seed in (0, 1):
            key = kd_suite.run_key("bn", condition, config, seed, lr, 1.0, False)
            store.runs[key] = _bn_run(plain[seed], recomputed[seed])
    lines = kd_suite.batchnorm_study([condition], [candidate], store, (0, 1))
    row = next(line for line in lines if f"| {candidate.label} |" in line)
    # as evaluated: gaps -30 and 0 (mean -15, se 15); recomputed: +2 and +1 (mean +1.5, se 0.5)
    assert row == f"| S2 | {candidate.label} | 76.00 | 96.50 | -15.00 ± 15.00 | +1.50 ± 0.50 |"
    assert lines[-1] == (
        f"- {candidate.label}: vs ce -15.00 as evaluated, +1.50 recomputed, over 1 conditions"
    )
    jobs = kd_suite.batchnorm_jobs([condition], [candidate], store, (0, 1))
    assert {(j["stage"], j["config"].label, j["recompute_bn"]) for j in jobs} == {
        ("bn", "ce", True),
        ("bn", candidate.label, True),
    }
    assert all(j["key"] not in store.runs or j["stage"] == "bn" for j in jobs)
    with pytest.raises(SystemExit):  # a study of the full-size runs
        kd_suite.main(["--quick", "--recompute-bn", "--store", str(tmp_path / "q.json")])


def test_a_resnet_run_reports_its_recomputed_batchnorm_accuracy() -> None:
    resnet = next(c for c in kd_suite.CONDITIONS if c.recipe.student == "resnet")
    mlp = next(c for c in kd_suite.CONDITIONS if c.recipe.student == "mlp")
    ce = kd_suite.Config("ce", "ce")
    with_bn = kd_suite.train_run(resnet, ce, 0, 0.01, 1.0, True, recompute_bn=True)
    assert 0.0 <= with_bn["final_bn_recomputed"] <= 1.0
    assert (
        kd_suite.train_run(mlp, ce, 0, 0.01, 1.0, True, recompute_bn=True)["final_bn_recomputed"]
        is None
    )
    assert "final_bn_recomputed" not in kd_suite.train_run(mlp, ce, 0, 0.01, 1.0, True)


def test_held_out_study_picks_the_weight_on_other_seeds(tmp_path) -> None:
    # seeds 0-2 pick a = 0.3 (a lucky 0.90 on seed 0); on seeds 3-5 a = 0.1 is the best of the
    # five, and the candidate is compared with both: behind the same-seed best, ahead of the
    # held-out pick (a = 0.3 is 0.80 there). All finals written by hand.
    condition = kd_suite.CONDITIONS[1]  # S2
    store, lr = _store_with_ce_best_lr(tmp_path, condition, best=1)
    ce = kd_suite.Config("ce", "ce")
    candidate = kd_suite.CANDIDATES["default"]
    fixed = {c.weight: c for c in kd_suite.baseline_configs({None}) if c.kind == "fixed"}
    finals = {ce: [0.70] * 6, candidate: [0.0] * 3 + [0.83, 0.84, 0.85]}
    for config in fixed.values():
        finals[config] = [0.75] * 6
    finals[fixed[0.3]] = [0.90, 0.80, 0.80, 0.80, 0.80, 0.80]
    finals[fixed[0.1]] = [0.82, 0.82, 0.82, 0.85, 0.86, 0.87]
    for config, values in finals.items():
        for seed, final in enumerate(values):
            key = kd_suite.run_key("main", condition, config, seed, lr, 1.0, False)
            store.runs[key] = {"final": final, "collapsed": False, "seconds": 1.0}
    lines = kd_suite.held_out_study([condition], candidate, store, (3, 4, 5))
    row = next(line for line in lines if line.startswith(f"| {condition.name} |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1] == "fixed a=0.3"  # picked on seeds 0-2 (mean 83.3 against 82.0)
    assert cells[2] == "+4.00 ± 0.58"  # 3, 4, 5 points ahead of a = 0.3 on seeds 3-5
    assert cells[3] == "fixed a=0.1"  # the best on seeds 3-5 themselves
    assert cells[4] == "-2.00 ± 0.00 (behind)"
    assert cells[5] == "+14.00 ± 0.58"
    assert lines[-1] == (
        "Ahead of or tied with the held-out pick on 1 of 1 (mean +4.00); with the best weight "
        "on the same seeds on 0 of 1 (mean -2.00)."
    )
    # a condition missing the held-out seeds is left out
    assert len(kd_suite.held_out_study([condition], candidate, store, (3, 4, 5, 6))) == 4
    with pytest.raises(SystemExit):  # a study of full-size runs only
        kd_suite.main(["--quick", "--held-out", "3-5", "--store", str(tmp_path / "q.json")])


def test_scale_study_lists_every_seed_and_the_move_against_x1(tmp_path) -> None:
    # stored finals for x1, x(1 + 1e-6) and x0.01 on S2; the table has one line per scale with
    # the per-seed finals and the mean move against x1, and leaves out a scale missing a seed
    condition = kd_suite.CONDITIONS[1]  # S2
    store, lr = _store_with_ce_best_lr(tmp_path, condition, best=0)
    ce = kd_suite.Config("ce", "ce")
    candidate = kd_suite.CANDIDATES["default"]
    finals = {1.0: [0.90, 0.80, 0.70], 1.000001: [0.91, 0.79, 0.72], 0.01: [0.5, 0.6]}
    for scale, values in finals.items():
        for seed, final in enumerate(values):
            key = kd_suite.run_key("main", condition, candidate, seed, lr, scale, False)
            store.runs[key] = {"final": final, "collapsed": False, "seconds": 1.0}
    lines = kd_suite.scale_study(condition, [candidate], store, (1.000001, 0.01), (0, 1, 2))
    rows = [line for line in lines if line.startswith(f"| {candidate.label} |")]
    assert rows == [
        f"| {candidate.label} | x1 | 90.00, 80.00, 70.00 | 80.00 |  |",
        f"| {candidate.label} | x1.000001 | 91.00, 79.00, 72.00 | 80.67 | +0.67 |",
    ]
    # a configuration without its x1 runs is left out
    assert not any(
        line.startswith("| ce |")
        for line in kd_suite.scale_study(condition, [ce], store, (0.01,), (0,))
    )
    # the latest round's confirmation conditions are not in the (default) selection split
    fresh = kd_suite.conditions_of_round(max(kd_suite.ROUNDS), "confirmation")[0].name.split()[0]
    with pytest.raises(SystemExit):
        kd_suite.main(
            ["--conditions", fresh, "--scales", "0.01", "--store", str(tmp_path / "s.json")]
        )


def test_the_trust_candidate_feeds_the_teachers_record_to_mokd() -> None:
    # round 8: the candidate differs from the round-7 default only by TeacherTrust, its store
    # key by one marker (stored runs of the other candidates keep their keys), and a run
    # records the trust it passed to the method
    trust, agreement = kd_suite.CANDIDATES["trust"], kd_suite.CANDIDATES["agreement"]
    assert trust.trust and not agreement.trust
    assert json.loads(trust.key) == [*json.loads(agreement.key), "trust"]
    condition = next(c for c in kd_suite.CONDITIONS if c.name.startswith("C43 "))
    run = kd_suite.train_run(condition, trust, seed=0, lr=0.003, scale=1.0, quick=True)
    diagnostics = run["diagnostics"]
    assert 0.0 < diagnostics["trust"] < 1.0 and 0.0 < diagnostics["trust_late"] < 1.0
    plain = kd_suite.train_run(condition, agreement, seed=0, lr=0.003, scale=1.0, quick=True)
    assert "trust" not in plain["diagnostics"]
    assert run["final"] != plain["final"] or diagnostics["task_share"] != pytest.approx(
        plain["diagnostics"]["task_share"], abs=1e-9
    )


def test_constant_weights_judge_each_fixed_weight_like_a_candidate(tmp_path) -> None:
    # two conditions written by hand (and a third with ce only, left out): a = 0.1 is the best
    # on S1 and clearly behind on S3; a = 0.5 ties S3's best (a = 0.3) within its standard error
    s1, s3 = kd_suite.CONDITIONS[0], kd_suite.CONDITIONS[2]
    store, lr1 = _store_with_ce_best_lr(tmp_path, s1, best=0)
    store3, lr3 = _store_with_ce_best_lr(tmp_path, s3, best=0)
    store.runs.update(store3.runs)
    finals = {
        s1: {"ce": [0.80] * 3, 0.1: [0.85, 0.86, 0.84], 0.3: [0.70] * 3, 0.5: [0.70] * 3},
        s3: {"ce": [0.90] * 3, 0.1: [0.88] * 3, 0.3: [0.95, 0.96, 0.94], 0.5: [0.949, 0.961, 0.94]},
    }
    for condition, lr in ((s1, lr1), (s3, lr3)):
        values = {**finals[condition], 0.7: [0.5] * 3, 0.9: [0.1] * 3}
        for name, runs in values.items():
            config = (
                kd_suite.Config("ce", "ce")
                if name == "ce"
                else kd_suite.Config(f"fixed a={name:g}", "fixed", weight=name)
            )
            for seed, final in enumerate(runs):
                key = kd_suite.run_key("main", condition, config, seed, lr, 1.0, False)
                store.runs[key] = {"final": final, "collapsed": final < 0.2, "seconds": 1.0}
    s4 = kd_suite.CONDITIONS[3]
    lines = kd_suite.constant_weights([s1, s3, s4], store, quick=False)
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in lines[2:]}
    assert rows["fixed a=0.1"] == ["1/2", "1/2", "1/2", "-3.50", "+1.50 |"]  # (+5 - 2) / 2
    assert rows["fixed a=0.3"][:3] == ["1/2", "1/2", "1/2"]
    assert rows["fixed a=0.5"][:3] == ["0/2", "1/2", "1/2"]
    assert rows["fixed a=0.9"][:3] == ["0/2", "0/2", "0/2"]
    assert kd_suite.constant_weights([s4], store, quick=False) == []  # nothing complete: no table


def _every_condition_won(monkeypatch) -> None:
    """``default_verdict`` without runs: every condition won against both baselines (ahead by
    0.1 points), nothing stored for the learning-rate and loss-scale points."""
    won = {"diff": 0.1, "se": 0.1, "won": True, "label": "fixed a=0.1", "mean": 0.9}
    monkeypatch.setattr(
        kd_suite,
        "verdicts",
        lambda *args, **kwargs: {"mean": 0.9, "collapsed": 0, "ce": won, "fixed": won},
    )
    monkeypatch.setattr(kd_suite, "gather", lambda *args, **kwargs: {})


def test_an_lr_condition_without_its_1x_counterpart_is_reported_as_not_measured(
    monkeypatch,
) -> None:
    # round 7 declared C47 (1x) beside C48 (3x) and C49 (0.3x); round 8's C54 (3x) and C55
    # (0.3x) have no 1x condition, and the page must say so instead of leaving the criterion out
    by_name = {c.name.split()[0]: c for c in kd_suite.CONDITIONS}
    round_7 = kd_suite.conditions_of_round(7, "confirmation")
    round_8 = kd_suite.conditions_of_round(8, "confirmation")
    assert kd_suite.lr_counterpart(by_name["C48"], round_7) == by_name["C47"]
    assert kd_suite.lr_counterpart(by_name["C49"], round_7) == by_name["C47"]
    assert kd_suite.lr_counterpart(by_name["C54"], round_8) is None
    assert kd_suite.lr_counterpart(by_name["C55"], round_8) is None
    _every_condition_won(monkeypatch)
    lines = kd_suite.default_verdict(kd_suite.CANDIDATES["default"], None, False, round_number=8)
    not_measured = [line for line in lines if "not measured" in line]
    assert [line.split(" (")[1].split(")")[0] for line in not_measured] == [
        by_name["C54"].name,
        by_name["C55"].name,
    ]


def test_a_round_without_feature_conditions_says_the_point_was_not_checked(monkeypatch) -> None:
    # round 21 declared no task + KD + feature-head condition: the page says so instead of
    # "none of" an empty list; round 20 (three such conditions) lists them
    _every_condition_won(monkeypatch)
    default = kd_suite.CANDIDATES["default"]
    lines = kd_suite.default_verdict(default, None, False, round_number=21)
    assert lines[-2] == (
        "- task + KD + feature-head conditions: none among these conditions (not checked)"
    )
    lines = kd_suite.default_verdict(default, None, False, round_number=20)
    assert lines[-2].startswith("- task + KD + feature-head conditions won: C149")
    assert lines[-2].endswith(
        "of C149 mnist-cnn const weak +feat T2, C151 mnist-resnet adamw "
        "const weak +feat T2, C153 digits-mlp adamw weak +2feat T2"
    )


def test_the_learning_rate_pairs_study_reads_every_stored_pair(monkeypatch) -> None:
    # C122 (1x) with C123 (3x) and C124 (0.3x), C54 (3x) without a 1x counterpart, C135 (1x,
    # no pair); the candidate's and the x1-best weight's means written by hand: at 3x the
    # candidate drops 1 point against the weight's 5 (met), at 0.3x 2 against 1 (not met)
    by_name = {c.name.split()[0]: c for c in kd_suite.CONDITIONS}
    chosen = tuple(by_name[n] for n in ("C122", "C123", "C124", "C54", "C135"))
    monkeypatch.setattr(kd_suite, "CONDITIONS", chosen)
    candidate_mean = {"C122": 0.95, "C123": 0.94, "C124": 0.93}
    fixed_mean = {"C122": 0.96, "C123": 0.91, "C124": 0.95}

    def verdicts(condition, candidate, store, quick, seeds=None):
        name = condition.name.split()[0]
        if name not in candidate_mean:
            return {}
        # the best weight at 3x / 0.3x differs from x1's (a = 0.9, 99 %): the pick at x1, and
        # its mean there, must be the ones kept
        label = "fixed a=0.1" if name == "C122" else "fixed a=0.9"
        return {
            "mean": candidate_mean[name],
            "fixed": {"label": label, "mean": fixed_mean[name] if name == "C122" else 0.99},
        }

    def gather(condition, configs, store, quick, scale=1.0, seeds=None):
        name = condition.name.split()[0]
        return {
            c.label: SimpleNamespace(mean=fixed_mean[name])
            for c in configs
            if c.label == "fixed a=0.1"
        }

    monkeypatch.setattr(kd_suite, "verdicts", verdicts)
    monkeypatch.setattr(kd_suite, "gather", gather)
    drops = kd_suite.learning_rate_drops(
        by_name["C123"], by_name["C122"], kd_suite.CANDIDATES["default"], None, False
    )
    assert drops is not None and drops[2] == "fixed a=0.1"
    assert drops[0] == pytest.approx(0.01) and drops[1] == pytest.approx(0.05)
    lines = kd_suite.learning_rate_pairs_study(kd_suite.CANDIDATES["default"], None, False)
    pairs = [line for line in lines if line.startswith("- ")]
    assert len(pairs) == 2  # C54 has no counterpart, C135 is a 1x condition
    assert pairs[0].startswith(f"- {by_name['C123'].name} (") and pairs[0].endswith(", met")
    assert "1.00 against 5.00 (fixed a=0.1)" in pairs[0]
    assert pairs[1].endswith("not met") and "2.00 against 1.00" in pairs[1]
    assert lines[-2:] == ["x0.3: met on 0 of 1 stored pairs", "x3: met on 1 of 1 stored pairs"]
    assert kd_suite.main(["--lr-pairs", "--candidates", "default"]) == 0  # runs nothing


def test_the_lengthen_candidate_differs_from_the_default_by_its_step_only() -> None:
    # round 10: the candidate is that round's default (round 7's rule, the candidate
    # "agreement") plus lengthen=True (the default's stored runs keep their key: lengthen=False
    # is a neutral option), and its runs take steps longer than the task gradient where the
    # default's never are
    lengthen, default = kd_suite.CANDIDATES["lengthen"], kd_suite.CANDIDATES["agreement"]
    assert dict(lengthen.options) == {**dict(default.options), "lengthen": True}
    assert "lengthen" not in dict(default.options)
    assert kd_suite.method_options(default)["lengthen"] is False
    condition = next(c for c in kd_suite.CONDITIONS if c.name.startswith("S8 "))
    longer = kd_suite.train_run(condition, lengthen, seed=0, lr=0.1, scale=1.0, quick=True)
    plain = kd_suite.train_run(condition, default, seed=0, lr=0.1, scale=1.0, quick=True)
    assert plain["diagnostics"]["step_over_task_max"] <= 1.0 + 1e-6
    assert 1.0 < longer["diagnostics"]["step_over_task_max"] <= 2.0 + 1e-6


def test_no_two_conditions_train_the_same_way() -> None:
    # a fresh condition is fresh only if no earlier one shares its whole training setting
    # (the run key would repeat an earlier, looked-at condition's runs)
    settings = [c.settings for c in kd_suite.CONDITIONS]
    assert len(set(settings)) == len(settings)
    assert {c.evaluation for c in kd_suite.CONDITIONS} == {"running", "recomputed"}
    # round 16 declared the recomputed evaluation for all its conditions, no earlier round any
    assert all((c.evaluation == "recomputed") == (c.round >= 16) for c in kd_suite.CONDITIONS)


def test_run_value_recomputed_falls_back_only_where_nothing_was_recomputed() -> None:
    recomputed = "final_bn_recomputed"
    assert kd_suite.run_value({"final": 0.4, recomputed: 0.9}, recomputed) == 0.9
    # a student without BatchNorm, or non-finite weights: the evaluated accuracy stands
    assert kd_suite.run_value({"final": 0.1, recomputed: None}, recomputed) == 0.1
    # a run made without the recomputation has no such value: missing, not its "final"
    assert kd_suite.run_value({"final": 0.4}, recomputed) is None
    assert kd_suite.run_value({"final": 0.4, recomputed: 0.9}, "final") == 0.4


def test_a_recomputed_condition_is_judged_on_recomputed_statistics(tmp_path) -> None:
    # C114 (round 16) declares the recomputed evaluation: its verdicts read final_bn_recomputed,
    # the same runs judged "running" read final; an older condition's jobs recompute nothing
    c114 = next(c for c in kd_suite.CONDITIONS if c.name.startswith("C114 "))
    assert c114.evaluation == "recomputed" and c114.recipe.student == "resnet"
    assert "BatchNorm statistics recomputed" in c114.describe()
    store, lr = _store_with_ce_best_lr(tmp_path, c114, best=2)
    default = kd_suite.CANDIDATES["default"]
    # (as evaluated, recomputed) per seed: the default trails ce as evaluated, leads recomputed
    finals = {
        "ce": ([0.80, 0.82, 0.81], [0.95, 0.96, 0.95]),
        default.label: ([0.50, 0.90, 0.60], [0.97, 0.97, 0.96]),
        **{
            c.label: ([0.85, 0.85, 0.85], [0.96, 0.96, 0.96])
            for c in kd_suite.baseline_configs({None})
            if c.kind == "fixed"
        },
    }
    configs = [*kd_suite.baseline_configs({None}), default]
    for config in configs:
        plain, recomputed = finals[config.label]
        for seed in kd_suite.SEEDS:
            key = kd_suite.run_key("main", c114, config, seed, lr, 1.0, False)
            store.runs[key] = _bn_run(plain[seed], recomputed[seed])
    v = kd_suite.verdicts(c114, default, store, False)
    assert v["ce"]["diff"] == pytest.approx(100 * (0.9666667 - 0.9533333), abs=1e-3)
    assert v["ce"]["won"] and v["fixed"]["won"]
    running = kd_suite.replace(c114, evaluation="running")
    v_running = kd_suite.verdicts(running, default, store, False)
    assert v_running["ce"]["diff"] == pytest.approx(100 * (0.6666667 - 0.81), abs=1e-3)
    assert not v_running["ce"]["won"]
    # the page shows both: the recomputed table and the running means beneath it
    section = "\n".join(kd_suite.report_condition(c114, [default], store, False))
    assert "final accuracy, BatchNorm statistics recomputed (%)" in section
    assert "| ce | 95.33 ± 0.58 |" in section
    assert (
        "As evaluated with the BatchNorm running statistics (not the verdict): ce 81.00" in section
    )
    # jobs: a recomputed condition asks for the recomputation, an older one does not; a stored
    # run made without it is run again (the same training, evaluated once more)
    jobs = kd_suite.condition_jobs([c114], [default], store, False)
    assert jobs and all(j["recompute_bn"] for j in jobs)
    assert not any(kd_suite._missing(j, store) for j in jobs if j["scale"] == 1.0)
    job = jobs[0]
    del store.runs[job["key"]]["final_bn_recomputed"]
    assert kd_suite._missing(job, store)
    scaled = kd_suite.scale_jobs([c114], [default], store, (1.000001,), (0,))
    assert [(j["scale"], j["recompute_bn"]) for j in scaled] == [(1.0, True), (1.000001, True)]
    older = kd_suite.CONDITIONS[0]
    store2, _ = _store_with_ce_best_lr(tmp_path, older, best=0)
    assert not any(
        j["recompute_bn"] for j in kd_suite.condition_jobs([older], [default], store2, False)
    )
    # the round's page gives the running verdict of the same runs for the record
    confirmation = kd_suite.conditions_of_round(16, "confirmation")
    store.runs[job["key"]]["final_bn_recomputed"] = 0.95
    recorded = "\n".join(kd_suite._running_record(confirmation, default, store, False, 16))
    assert "evaluated with the BatchNorm running statistics (for the record)" in recorded
    assert f"behind on {c114.name} (-14.33 ± " in recorded
    declared = "\n".join(kd_suite.default_verdict(default, store, False, round_number=16))
    assert (
        "at least cross-entropy everywhere (ties within one paired standard error): **met**"
        in declared
    )
    older_round = kd_suite.conditions_of_round(15, "confirmation")
    assert kd_suite._running_record(older_round, default, store, False, 15) == []


def test_a_condition_can_pick_its_learning_rate_with_recomputed_statistics(tmp_path) -> None:
    # the grid's runs, written by hand: as evaluated 0.3 wins (a lucky BatchNorm draw),
    # recomputed 0.1 does; each condition reads the grid the way it declares
    c114 = next(c for c in kd_suite.CONDITIONS if c.name.startswith("C114 "))
    picked = kd_suite.replace(c114, name="C999 probe", lr_evaluation="recomputed")
    assert c114.lr_evaluation == "running"
    assert "the learning rate picked the same way" in picked.describe()
    store = kd_suite.Store(tmp_path / "store.json")
    grid_condition = kd_suite.Condition("lr grid", "lr", c114.recipe)
    ce = kd_suite.Config("ce", "ce")
    finals = {0.01: (0.80, 0.90), 0.03: (0.70, 0.91), 0.1: (0.75, 0.96), 0.3: (0.93, 0.95)}
    for lr, (plain, recomputed) in finals.items():
        for seed in kd_suite.LR_GRID_SEEDS:
            key = kd_suite.run_key("lr", grid_condition, ce, seed, lr, 1.0, False)
            store.runs[key] = {"final": plain, "final_bn_recomputed": recomputed}
    assert kd_suite.lr_of(c114, store, False) == 0.3
    assert kd_suite.lr_of(picked, store, False) == 0.1
    assert kd_suite.lr_of(kd_suite.replace(picked, lr_scale=3.0), store, False) == 0.1 * 3.0
    # the same runs judged as evaluated (the page's record) keep the learning rate they ran with
    record = kd_suite.replace(picked, evaluation="running")
    assert kd_suite.lr_of(record, store, False) == 0.1 and record.result_value == "final"
    # the grid's jobs recompute only where some condition of the recipe picks that way
    assert {j["recompute_bn"] for j in kd_suite.lr_grid_jobs([c114], False)} == {False}
    assert {j["recompute_bn"] for j in kd_suite.lr_grid_jobs([c114, picked], False)} == {True}
    # a grid stored without the recomputation cannot pick for it (and is run again)
    for run in store.runs.values():
        del run["final_bn_recomputed"]
    with pytest.raises(RuntimeError, match="has not run"):
        kd_suite.lr_of(picked, store, False)
    assert all(kd_suite._missing(j, store) for j in kd_suite.lr_grid_jobs([picked], False))
    with pytest.raises(ValueError, match="must be 'running' or 'recomputed'"):
        kd_suite.replace(c114, evaluation="precise")


def test_a_drawn_selection_is_seeded_counted_per_student_and_in_pool_order() -> None:
    pool = kd_suite.conditions_of_round(16, "selection")
    counts = {"mlp": 5, "cnn": 3, "resnet": 2}
    first = kd_suite.draw_selection(pool, counts, seed=17)
    assert first == kd_suite.draw_selection(pool, counts, seed=17)  # the seed fixes the draw
    assert first != kd_suite.draw_selection(pool, counts, seed=18)
    kinds = [c.recipe.student for c in first]
    assert {kind: kinds.count(kind) for kind in counts} == counts
    order = [c.name for c in pool]
    assert [order.index(c.name) for c in first] == sorted(order.index(c.name) for c in first)
    with pytest.raises(ValueError, match="cannot draw"):
        kd_suite.draw_selection(pool, {"mlp": 5, "cnn": 3, "resnet": 999}, seed=17)
    with pytest.raises(ValueError, match="each student kind"):
        kd_suite.draw_selection(pool, {"mlp": 5}, seed=17)


def test_round_17_judges_its_drawn_selection_recomputed() -> None:
    # round 17 declared a draw of 44 selection conditions and the recomputed evaluation (and
    # learning-rate pick) for all of them; the conditions themselves stay as declared
    selection = kd_suite.conditions_of_round(17, "selection")
    kinds = [c.recipe.student for c in selection]
    assert {k: kinds.count(k) for k in set(kinds)} == kd_suite.SELECTION_DRAWS[17][1]
    assert all(c.evaluation == c.lr_evaluation == "recomputed" for c in selection)
    declared = {c.name: c for c in kd_suite.CONDITIONS}
    assert any(declared[c.name].evaluation == "running" for c in selection)
    assert all(
        replace(c, evaluation="running", lr_evaluation="running")
        == replace(declared[c.name], evaluation="running", lr_evaluation="running")
        for c in selection
    )
    confirmation = kd_suite.conditions_of_round(17, "confirmation")
    assert len(confirmation) == 8
    assert all(c.evaluation == c.lr_evaluation == "recomputed" for c in confirmation)
    # round 16's selection is not drawn and keeps each condition's own evaluation
    assert len(kd_suite.conditions_of_round(16, "selection")) == 120
    assert dict(kd_suite.CANDIDATES["blended"].options)["agreement_gate"] == "blend"


def test_round_18_keeps_round_17s_draw_and_adds_its_confirmation_conditions() -> None:
    # a round repeating an earlier draw: the same drawn conditions, plus those that became
    # eligible after the draw (round 17's looked-at confirmation conditions), all recomputed
    round_17 = [c.name for c in kd_suite.conditions_of_round(17, "selection")]
    round_18 = kd_suite.conditions_of_round(18, "selection")
    added = [c.name for c in kd_suite.conditions_of_round(17, "confirmation")]
    assert [c.name for c in round_18] == round_17 + added
    assert all(c.evaluation == c.lr_evaluation == "recomputed" for c in round_18)
    assert not {c.name for c in round_18} & {
        c.name for c in kd_suite.conditions_of_round(18, "confirmation")
    }


def _fresh_after_the_previous_round(
    round_number: int, first: int, selection_count: Optional[int] = None
) -> list[kd_suite.Condition]:
    """Rounds 19 on repeat round 17's draw: a round's selection data are the previous round's
    selection and confirmation conditions (``selection_count`` of them, when given), judged with
    recomputed BatchNorm statistics; its eight confirmation conditions ``C<first>`` on are its
    own, judged the same way. Returns them."""
    previous = [c.name for c in kd_suite.conditions_of_round(round_number - 1, "all")]
    selection = kd_suite.conditions_of_round(round_number, "selection")
    assert [c.name for c in selection] == previous
    assert selection_count is None or len(selection) == selection_count
    assert all(c.evaluation == c.lr_evaluation == "recomputed" for c in selection)
    confirmation = kd_suite.conditions_of_round(round_number, "confirmation")
    assert [c.name.split()[0] for c in confirmation] == [f"C{n}" for n in range(first, first + 8)]
    assert all(c.round == round_number and c.evaluation == "recomputed" for c in confirmation)
    return confirmation


def test_round_19_selects_on_round_18s_conditions_and_confirms_on_fresh_ones() -> None:
    # round 19 repeats round 17's draw: its selection data are round 18's selection and
    # confirmation conditions (60), all recomputed; its confirmation conditions C138-C145 are
    # new and judged the same way
    confirmation = _fresh_after_the_previous_round(19, first=138)
    assert {c.lr_scale for c in confirmation} == {0.3, 1.0, 3.0}
    assert sum("feat" in c.objectives for c in confirmation) >= 2


def test_round_20_selects_on_round_19s_conditions_and_confirms_on_fresh_ones() -> None:
    # round 20 repeats round 17's draw: its selection data are round 19's selection and
    # confirmation conditions (68), all recomputed; C146-C153 are new, with a 0.3x / 3x triple
    # on a recipe never used for 0.3x before, and judged the same way
    confirmation = _fresh_after_the_previous_round(20, first=146, selection_count=68)
    triple = [c for c in confirmation if c.recipe == kd_suite.FASHION_CNN_SGD_COS]
    assert sorted(c.lr_scale for c in triple) == [0.3, 1.0, 3.0]
    earlier = [c for c in kd_suite.CONDITIONS if c.round < 20 and c.lr_scale == 0.3]
    assert kd_suite.FASHION_CNN_SGD_COS not in {c.recipe for c in earlier}
    assert sum("feat" in c.objectives for c in confirmation) >= 2
    assert any(c.stress for c in confirmation) and any(c.objectives == "dkd" for c in confirmation)


def test_round_21_checks_the_default_on_fresh_pairs_of_temperatures() -> None:
    # round 21 (no candidate): selection = round 20's conditions (76, recomputed); C154-C161 are
    # four recipe-teacher pairs that differ only in the KD temperature, T = 2 and T = 8, with
    # the loss-scale stress on one of them
    confirmation = _fresh_after_the_previous_round(21, first=154, selection_count=76)
    pairs: dict[tuple, list[float]] = {}
    for c in confirmation:
        key = (c.recipe, c.teacher, c.lr_scale, c.objectives)
        pairs.setdefault(key, []).append(c.temperature)
    assert len(pairs) == 4 and all(sorted(t) == [2.0, 8.0] for t in pairs.values())
    assert {c.teacher for c in confirmation} == {"strong", "weak"}
    assert {c.recipe.optimizer for c in confirmation} == {"sgd", "adamw"}
    assert sum(bool(c.stress) for c in confirmation) == 1


def test_round_22_selects_on_round_21s_conditions_and_confirms_on_fresh_ones() -> None:
    # round 22: selection = round 21's conditions (84, recomputed); C162-C169 are new, a 0.3x /
    # 3x triple on a digits MLP with a weak teacher (the candidate's case) with the loss-scale
    # stress at x1, weak teachers on six of eight, feature heads on three, one DKD condition
    confirmation = _fresh_after_the_previous_round(22, first=162, selection_count=84)
    triple = [c for c in confirmation if c.recipe == kd_suite.DIGITS_MLP_ADAMW_CONST]
    assert sorted(c.lr_scale for c in triple) == [0.3, 1.0, 3.0]
    assert [c.stress for c in confirmation if c.stress] == [(1e3, 1e-2)]
    assert sum(c.teacher == "weak" for c in confirmation) == 6
    assert sum("feat" in c.objectives for c in confirmation) == 3
    assert any(c.objectives == "dkd" for c in confirmation)


def _drawn_as_declared(round_number: int, first: int, selection_count: int) -> None:
    """Rounds 23 on: the round's selection data are the previous round's conditions
    (``selection_count``, recomputed) and its confirmation conditions ``C<first>`` on are the
    seeded draw of ``draw_fresh_settings(round_number, every earlier condition)``, in the draw's
    order: the x1 / x3 / x0.3 triple (x1 with the loss-scale stress), then five more at x1."""
    confirmation = _fresh_after_the_previous_round(round_number, first, selection_count)
    earlier = [c for c in kd_suite.CONDITIONS if c.round < round_number]
    triple, others = kd_suite.draw_fresh_settings(round_number, earlier)
    assert [c.settings[:2] + c.settings[3:] for c in confirmation] == [triple] * 3 + others
    assert [c.lr_scale for c in confirmation] == [1.0, 3.0, 0.3] + [1.0] * 5
    assert [c.stress for c in confirmation] == [(1e3, 1e-2)] + [()] * 7


def test_round_23_confirms_on_conditions_drawn_not_picked() -> None:
    # round 23: selection = round 22's conditions (92); C170-C177 drawn
    _drawn_as_declared(23, first=170, selection_count=92)


def test_round_24_confirms_on_conditions_drawn_not_picked() -> None:
    # round 24 (a check, no candidate): selection = round 23's conditions (100); C178-C185
    # drawn, judged on ten seeds as declared -- the first round to declare them
    _drawn_as_declared(24, first=178, selection_count=100)
    assert kd_suite.VERDICT_SEEDS[24] == tuple(range(10))
    assert not any(r in kd_suite.VERDICT_SEEDS for r in range(1, 24))  # none declared it before


def test_round_25_confirms_on_conditions_drawn_not_picked() -> None:
    # round 25 ("squared" against the default): selection = round 24's conditions and
    # C178-C185 (108); C186-C193 drawn, judged on ten seeds as declared
    _drawn_as_declared(25, first=186, selection_count=108)
    assert kd_suite.VERDICT_SEEDS[25] == tuple(range(10))
    squared = dict(kd_suite.CANDIDATES["squared"].options)
    default = dict(kd_suite.CANDIDATES["default"].options)
    assert squared == {**default, "conflict": "squared"}  # the one option that differs


def test_round_26_confirms_on_conditions_drawn_not_picked() -> None:
    # round 26 ("share-growth" against the default): selection = round 25's conditions and
    # C186-C193 (116); C194-C201 drawn, judged on ten seeds as declared
    _drawn_as_declared(26, first=194, selection_count=116)
    assert kd_suite.VERDICT_SEEDS[26] == tuple(range(10))
    grown = dict(kd_suite.CANDIDATES["share-growth"].options)
    default = dict(kd_suite.CANDIDATES["default"].options)
    assert grown == {**default, "share_growth": True}  # the one option that differs
    # the neutral value keeps every stored run of the default under its key
    assert "share_growth" not in default
    assert kd_suite.method_options(kd_suite.CANDIDATES["default"])["share_growth"] is False


def test_round_27_confirms_on_conditions_drawn_not_picked() -> None:
    # round 27 ("relative-start" against the default): selection = round 26's conditions and
    # C194-C201 (124); C202-C209 drawn, judged on ten seeds as declared
    _drawn_as_declared(27, first=202, selection_count=124)
    assert kd_suite.VERDICT_SEEDS[27] == tuple(range(10))
    switching = dict(kd_suite.CANDIDATES["relative-start"].options)
    default = dict(kd_suite.CANDIDATES["default"].options)
    assert switching == {**default, "relative_start": True}  # the one option that differs
    assert "relative_start" not in default  # the default's stored runs keep their key
    assert kd_suite.method_options(kd_suite.CANDIDATES["default"])["relative_start"] is False


def test_round_28_selects_on_its_own_weak_teacher_draw_and_confirms_on_a_fresh_one() -> None:
    # round 28 (round 27's candidate again): its selection data are only S15-S30, drawn among
    # weak teachers by draw_fresh_settings(280, ...) -- the x1 / x3 / x0.3 triple and 13 more --
    # and its confirmation conditions C210-C217 are draw_fresh_settings(28, ...) over every
    # earlier condition and those sixteen; all judged with recomputed statistics, on ten seeds
    earlier = [c for c in kd_suite.CONDITIONS if c.round < 28]
    selection = kd_suite.conditions_of_round(28, "selection")
    assert [c.name.split()[0] for c in selection] == [f"S{n}" for n in range(15, 31)]
    triple, others = kd_suite.draw_fresh_settings(280, earlier, others=13, teachers=("weak",))
    assert [c.settings[:2] + c.settings[3:] for c in selection] == [triple] * 3 + others
    assert [c.lr_scale for c in selection] == [1.0, 3.0, 0.3] + [1.0] * 13
    assert {c.teacher for c in selection} == {"weak"} and not any(c.stress for c in selection)
    assert all(c.evaluation == c.lr_evaluation == "recomputed" for c in selection)
    confirmation = kd_suite.conditions_of_round(28, "confirmation")
    assert [c.name.split()[0] for c in confirmation] == [f"C{n}" for n in range(210, 218)]
    triple, others = kd_suite.draw_fresh_settings(28, [*earlier, *selection])
    assert [c.settings[:2] + c.settings[3:] for c in confirmation] == [triple] * 3 + others
    assert [c.stress for c in confirmation] == [(1e3, 1e-2)] + [()] * 7
    assert kd_suite.VERDICT_SEEDS[28] == tuple(range(10))
    # the rounds before it keep their selection data (S15-S30 are not theirs)
    assert len(kd_suite.conditions_of_round(27, "selection")) == 124
    with pytest.raises(ValueError, match="teachers must be some of"):
        kd_suite.draw_fresh_settings(28, earlier, teachers=("tiny",))
    with pytest.raises(ValueError, match="teachers must be some of"):
        kd_suite.draw_fresh_settings(28, earlier, teachers=())


def test_a_learning_rate_drop_is_written_as_a_loss_or_a_gain() -> None:
    # round 24's 0.3x condition ended above its 1x one: "lost -0.23 points" read as a loss
    assert kd_suite.drop_words(0.0047) == "lost 0.47 points"
    assert kd_suite.drop_words(-0.0023) == "gained 0.23 points"
    assert kd_suite.drop_words(0.0) == "lost 0.00 points"


def test_a_round_with_verdict_seeds_is_judged_on_them_first(tmp_path, monkeypatch) -> None:
    # C181 (round 24, an MLP: its recomputed value falls back to the evaluated one), written by
    # hand: on seeds 0-2 the default trails ce by 2 points on every seed (not met); on seeds 3-9
    # it leads by 2 on each, so over seeds 0-9 it leads by 0.8 (met). Round 24 declared seeds
    # 0-9: its page gives that verdict first and the suite's seeds after it, for the record
    c181 = next(c for c in kd_suite.CONDITIONS if c.name.startswith("C181 "))
    monkeypatch.setattr(kd_suite, "conditions_of_round", lambda *args, **kwargs: [c181])
    store, lr = _store_with_ce_best_lr(tmp_path, c181, best=1)
    for grid_run in store.runs.values():  # an MLP's grid: nothing to recompute
        grid_run["final_bn_recomputed"] = None
    default = kd_suite.CANDIDATES["default"]
    for config in [*kd_suite.baseline_configs({None}), default]:
        for seed in range(10):
            final = 0.90
            if config.label == default.label:
                final = 0.88 if seed < 3 else 0.92
            key = kd_suite.run_key("main", c181, config, seed, lr, 1.0, False)
            store.runs[key] = _bn_run(final, None)
    lines = kd_suite.declared_verdict(default, store, False, round_number=24)
    text = "\n".join(lines)
    assert lines[0] == "The round declared its verdict on seeds 0-9 (the verdict):"
    first, record = text.split("The same criteria on the suite's seeds 0-2 (for the record):")
    assert f"for {default.label}, seeds 0-9:" in first
    assert "everywhere (ties within one paired standard error): **met**" in first
    assert "against the best tuned fixed weight: mean +0.80 points (met)" in first
    assert f"**not met**, behind on {c181.name} (-2.00 ± 0.00)" in record
    # a round without declared seeds: the suite's seeds only, as before
    assert kd_suite.declared_verdict(default, store, False, round_number=23) == (
        kd_suite.default_verdict(default, store, False, round_number=23)
    )


def test_a_fresh_draw_is_new_seeded_and_refuses_an_exhausted_space() -> None:
    # the space is every recipe the suite has used, each once
    assert {c.recipe for c in kd_suite.CONDITIONS} == set(kd_suite.RECIPES)
    assert len(set(kd_suite.RECIPES)) == len(kd_suite.RECIPES)
    earlier = [c for c in kd_suite.CONDITIONS if c.round <= 22]
    taken = {c.settings for c in earlier}
    triple, others = kd_suite.draw_fresh_settings(23, earlier)
    recipe, teacher, objectives, temperature = triple
    for scale in (1.0, 3.0, 0.3):
        assert (recipe, teacher, scale, objectives, temperature) not in taken
    for other_recipe, other_teacher, other_objectives, other_temperature in others:
        assert (other_recipe, other_teacher, 1.0, other_objectives, other_temperature) not in taken
    assert len(set(others)) == 5 and triple not in others
    assert kd_suite.draw_fresh_settings(23, earlier) == (triple, others)
    assert kd_suite.draw_fresh_settings(24, earlier) != (triple, others)
    # a setting already taken at x3 keeps its recipe out of the triple, not out of the rest
    blocked = replace(earlier[0], recipe=recipe, teacher=teacher, lr_scale=3.0)
    blocked = replace(blocked, objectives=objectives, temperature=temperature)
    assert kd_suite.draw_fresh_settings(23, [*earlier, blocked])[0] != triple
    everything = [
        kd_suite.Condition("X", "selection", r, t, lr_scale=1.0, objectives=o, temperature=temp)
        for r in kd_suite.RECIPES
        for t in kd_suite.DRAW_TEACHERS
        for o in kd_suite.DRAW_OBJECTIVES
        for temp in kd_suite.DRAW_TEMPERATURES
    ]
    with pytest.raises(ValueError, match="too few new settings"):
        kd_suite.draw_fresh_settings(23, everything)


def test_the_hypergradient_candidate_is_the_new_default_plus_the_factor() -> None:
    candidate, default = kd_suite.CANDIDATES["hypergradient"], kd_suite.CANDIDATES["default"]
    assert kd_suite.method_options(candidate) == {
        **kd_suite.method_options(default),
        "lengthen": "hypergradient",
    }
    assert kd_suite.CANDIDATES["long-memory"].key == default.key


def test_the_long_memory_candidate_is_the_default_with_a_longer_ungated_average() -> None:
    candidate, default = kd_suite.CANDIDATES["long-memory"], kd_suite.CANDIDATES["gated"]
    options = kd_suite.method_options(candidate)
    assert options == {
        **kd_suite.method_options(default),
        "agreement_smoothing": 0.999,
        "agreement_gate": "off",
    }


def test_a_conditions_settings_are_what_its_runs_are_keyed_by() -> None:
    # same settings under another name and split: the same run key; any one setting changed:
    # another key
    c = kd_suite.CONDITIONS[0]
    config = kd_suite.CANDIDATES["default"]
    renamed = replace(c, name="X other name", split="confirmation", round=99)
    assert renamed.settings == c.settings == (
        c.recipe, c.teacher, c.lr_scale, c.objectives, c.temperature
    )  # fmt: skip
    key = kd_suite.run_key("main", c, config, 0, 0.1, 1.0, False)
    assert kd_suite.run_key("main", renamed, config, 0, 0.1, 1.0, False) == key
    for changed in (
        replace(c, recipe=kd_suite.DIGITS_MLP_SGD_COS),
        replace(c, teacher="weak"),
        replace(c, objectives="dkd"),
        replace(c, temperature=2.0),
    ):
        assert changed.settings != c.settings
        assert kd_suite.run_key("main", changed, config, 0, 0.1, 1.0, False) != key


def test_every_rounds_fresh_conditions_are_new_settings() -> None:
    # the store keys runs by a condition's settings, not its name: a confirmation condition
    # with the settings of a selection condition or of an earlier round's condition would be
    # one that was looked at (round 20 first declared four such; amended before its runs)
    for c in kd_suite.CONDITIONS:
        if c.split != "confirmation":
            continue
        seen = [
            o.name
            for o in kd_suite.CONDITIONS
            if o is not c
            and (o.split == "selection" or o.round < c.round)
            and o.settings == c.settings
        ]
        assert seen == [], f"{c.name} repeats {seen}"


def test_the_hypergradient_candidate_is_the_default_plus_the_factor() -> None:
    candidate, default = kd_suite.CANDIDATES["gated-hypergradient"], kd_suite.CANDIDATES["gated"]
    assert dict(candidate.options) == {**dict(default.options), "lengthen": "hypergradient"}


def test_the_while_short_candidate_is_the_default_plus_the_gated_lengthening() -> None:
    candidate, default = kd_suite.CANDIDATES["gated-while-short"], kd_suite.CANDIDATES["gated"]
    assert dict(candidate.options) == {**dict(default.options), "lengthen": "while-short"}
    probe = kd_suite.CANDIDATES["gated-after-warmup"]
    assert dict(probe.options) == {**dict(default.options), "lengthen": "after-warmup"}


def test_the_update_shares_weigh_each_gradient_by_its_norm() -> None:
    # weights (0.5, -0.1) on gradients of norms 1 and 5: each contributes 0.5 of the update
    # (the sign does not count); a zero update has zero shares, not NaNs
    gram = torch.tensor([[1.0, 0.0], [0.0, 25.0]], dtype=torch.float64)
    shares = kd_suite.update_shares(torch.tensor([0.5, -0.1], dtype=torch.float64), gram)
    assert shares.tolist() == pytest.approx([0.5, 0.5])
    assert kd_suite.update_shares(torch.zeros(2, dtype=torch.float64), gram).tolist() == [0, 0]


def _scorecard_store(tmp_path, monkeypatch) -> Any:
    """Round 21 (before the default's round) and round 24 (after it, verdict on seeds 0-9), each
    with one confirmation condition written by hand; every other round has none. On C160
    (round 21, seeds 0-2) the default trails ce and every fixed weight by 1 point on each seed;
    on C181 (round 24, verdict on seeds 0-9) it trails both by 2 points on seeds 0-8 and seed 9
    collapsed (0.10 against 0.90)."""
    by_name = {c.name.split()[0]: c for c in kd_suite.CONDITIONS}
    c160, c181 = by_name["C160"], by_name["C181"]
    monkeypatch.setattr(
        kd_suite,
        "conditions_of_round",
        lambda round_number, split: (
            {21: [c160], 24: [c181]}.get(round_number, []) if split == "confirmation" else []
        ),
    )
    store, lr_181 = _store_with_ce_best_lr(tmp_path, c181, best=1)
    grid = kd_suite.LR_GRID[c160.recipe.optimizer]
    lr_160 = grid[1] * c160.lr_scale
    ce = kd_suite.Config("ce", "ce")
    for lr in grid:  # C160's recipe grid, by hand as for C181
        for seed in kd_suite.LR_GRID_SEEDS:
            key = kd_suite.run_key(
                "lr", kd_suite.Condition("grid", "lr", c160.recipe), ce, seed, lr, 1.0, False
            )
            store.runs[key] = {"final": 0.9 if lr == grid[1] else 0.5}
    for grid_run in store.runs.values():  # MLP grids: nothing to recompute
        grid_run["final_bn_recomputed"] = None
    default = kd_suite.CANDIDATES["default"]
    for config in [*kd_suite.baseline_configs({None}), default]:
        mine = config.label == default.label
        for seed in range(10):
            final = 0.88 if mine else 0.90
            run = _bn_run(0.10 if mine and seed == 9 else final, None)
            run["collapsed"] = mine and seed == 9
            store.runs[kd_suite.run_key("main", c181, config, seed, lr_181, 1.0, False)] = run
            if seed < 3:
                key = kd_suite.run_key("main", c160, config, seed, lr_160, 1.0, False)
                store.runs[key] = _bn_run(0.89 if mine else 0.90, None)
    return store


def test_the_scorecard_marks_rounds_seen_before_the_choice_and_counts_only_fresh_ones(
    tmp_path, monkeypatch
) -> None:
    store = _scorecard_store(tmp_path, monkeypatch)
    default = kd_suite.CANDIDATES["default"]
    record = kd_suite.done_record(default, store, False, 24, seeds=range(10))
    # seeds 0-8 at -2, seed 9 collapsed at 0.10 (-80): mean (-18 - 80) / 10 = -9.8, its
    # standard error 7.8: behind both baselines
    assert (record.conditions, record.won_ce, record.won_fixed) == (1, 0, 0)
    assert (record.collapsed, record.runs) == (1, 10)
    assert [p.point for p in record.points] == ["ce", "fixed mean", "fixed count", "feature heads"]
    assert record.points[0].cell == "0 of 1, C181 -9.80"
    assert record.points[1].cell == "-9.80" and record.points[1].met is False
    lines = kd_suite.scorecard(default, store, False, chosen_in=22)
    rows = [line for line in lines if line.startswith("| 2")]
    assert rows == [
        "| 21 (seen) | 0-2 | 1 | **not met**: 0 of 1, C160 -1.00 | **not met**: -1.00 | "
        "**not met**: 0 of 1 | -- | -- | -- | not measured: none declared | 0 of 3 | 0 of 3 |",
        "| 24 | 0-9 | 1 | **not met**: 0 of 1, C181 -9.80 | **not met**: -9.80 | "
        "**not met**: 0 of 1 | -- | -- | -- | not measured: none declared | 1 of 10 | 0 of 3 |",
    ]
    record_line = next(line for line in lines if line.startswith("Over the"))
    # round 21 is seen: only round 24 counts
    assert record_line.startswith(
        "Over the 1 sets from round 22 on (fresh when judged): ahead of or tied with "
        "cross-entropy on 0 of 1 conditions, with the best fixed weight on 0 of 1; collapsed 1 of "
        "10 runs."
    )
    assert "cross-entropy, every condition 0 of 1" in record_line
    # chosen earlier, round 21 counts too; nothing stored, no table
    assert "on 0 of 2 conditions" in "\n".join(kd_suite.scorecard(default, store, False, 21))
    empty = kd_suite.Store(tmp_path / "empty.json")
    assert kd_suite.scorecard(default, empty, False) == []


def test_rewriting_the_scorecard_from_an_empty_store_keeps_every_row_of_the_page(
    tmp_path,
) -> None:
    # a new machine starts with an empty store (the runs are not committed): rewriting
    # docs/results.md from it carries each table's rows and pooled record over unchanged
    page = tmp_path / "results.md"
    before = kd_suite.SCORECARD_PAGE.read_text()
    page.write_text(before)
    empty = str(tmp_path / "empty.json")
    assert kd_suite.main(["--scorecard", "--store", empty, "--page", str(page)]) == 0
    after = page.read_text()

    def kept(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith(("| ", "Over the", "**"))]

    assert kept(after) == kept(before) and kept(before)
    assert after.count("are carried from the page as written before") == 2
    rows = kd_suite.carried_scorecard_rows(before)
    default_rows = rows[kd_suite.CANDIDATES["default"].label]
    assert min(default_rows) == 2 and len(rows) == 2
    # a page that does not exist yet has nothing to carry
    fresh_page = tmp_path / "new.md"
    assert kd_suite.main(["--scorecard", "--store", empty, "--page", str(fresh_page)]) == 0
    assert "No confirmation condition has the default's runs" in fresh_page.read_text()


def test_a_carried_row_yields_to_the_store_only_when_the_store_has_as_many_conditions(
    tmp_path, monkeypatch
) -> None:
    store = _scorecard_store(tmp_path, monkeypatch)  # round 21: C160; round 24: C181 (1 each)
    default = kd_suite.CANDIDATES["default"]
    header = "| round | seeds | conditions | x | x | x | x | x | x | x | collapsed runs | points |"
    row_22 = (
        "| 22 | 0-2 | 8 | **not met**: 6 of 8, C167 -0.20, C168 -0.59 | **not met**: -0.35 | "
        "**not met**: 2 of 8 | met: x1000 +0.00; x0.01 +0.00 | met: -0.20 vs +0.00 | "
        "**not met**: +1.00 vs +1.00 | met: 1 of 3 | 0 of 24 | 3 of 7 |"
    )
    row_24 = (
        "| 24 | 0-9 | {n} | met: {n} of {n} | met: +1.00 | met: {n} of {n} | -- | -- | -- | "
        "not measured: none declared | 0 of {runs} | 3 of 3 |"
    )

    def page(n_24: int) -> dict[int, kd_suite.CarriedRow]:
        text = "\n".join(
            [
                f"**{default.label}**",
                "",
                header,
                "|---|",
                row_22,
                row_24.format(n=n_24, runs=10 * n_24),
                "",
                "**other**",
                row_22,
            ]
        )
        tables = kd_suite.carried_scorecard_rows(text)
        assert sorted(tables) == sorted([default.label, "other"])
        return tables[default.label]

    carried = page(2)
    assert carried[22].record == kd_suite.DoneRecord(8, 6, 2, 0, 24, ())
    assert carried[22].met["ce"] is False and carried[22].met["loss scale"] is True
    assert carried[22].met["feature heads"] is True and carried[24].met["lr x3"] is None
    lines = kd_suite.scorecard(default, store, False, chosen_in=22, carried=carried)
    rows = [line for line in lines if line.startswith("| 2")]
    # 21 from the store; 22 only on the page; 24's page row has 2 conditions, the store 1
    assert rows[0].startswith("| 21 (seen) | 0-2 | 1 | **not met**: 0 of 1, C160 -1.00")
    assert rows[1:] == [row_22, row_24.format(n=2, runs=20)]
    assert "Rows of rounds 22, 24 are carried from the page" in "\n".join(lines)
    record_line = next(line for line in lines if line.startswith("Over the"))
    assert record_line.startswith(
        "Over the 2 sets from round 22 on (fresh when judged): ahead of or tied with "
        "cross-entropy on 8 of 10 conditions, with the best fixed weight on 4 of 10; "
        "collapsed 0 of 44 runs. Each point met in: cross-entropy, every condition 1 of 2;"
    )
    # a row of a round the suite no longer declares is kept as printed
    undeclared = max(kd_suite.ROUNDS) + 1
    far = dict(carried)
    far[undeclared] = carried[22]
    lines = kd_suite.scorecard(default, store, False, chosen_in=22, carried=far)
    assert row_22.replace("| 22 |", f"| {undeclared} |") in lines
    # a page row with no more conditions than the store gives way to the store's row
    lines = kd_suite.scorecard(default, store, False, chosen_in=22, carried=page(1))
    rows = [line for line in lines if line.startswith("| 2")]
    assert rows[2].startswith("| 24 | 0-9 | 1 | **not met**: 0 of 1, C181 -9.80")
    assert "Rows of round 22 are carried" in "\n".join(lines)


def test_a_scorecard_cell_joins_every_instance_and_is_met_only_when_all_are() -> None:
    point = kd_suite.DonePoint
    met, missed = (
        point("loss scale", True, "", "x1000 +0.10"),
        point("loss scale", False, "", "x0.01 -0.40"),
    )
    assert kd_suite._scorecard_cell([met, missed]) == (
        "**not met**: x1000 +0.10; x0.01 -0.40",
        False,
    )
    assert kd_suite._scorecard_cell([met]) == ("met: x1000 +0.10", True)
    unmeasured = point("lr x3", None, "", "no 1x pair")
    assert kd_suite._scorecard_cell([unmeasured]) == ("not measured: no 1x pair", None)
    assert kd_suite._scorecard_cell([]) == ("--", None)


def test_the_scorecard_page_is_written_from_the_store_and_says_when_it_is_empty(
    tmp_path, monkeypatch
) -> None:
    store = _scorecard_store(tmp_path, monkeypatch)
    store.save()
    page = tmp_path / "results.md"
    assert kd_suite.main(["--scorecard", "--store", str(store.path), "--page", str(page)]) == 0
    text = page.read_text()
    assert "generated by benchmarks/kd_suite.py --scorecard" in text
    assert "**mokd (library default)**" in text and "**fixed a=0.1**" in text
    # a = 0.1 is the best fixed weight on both conditions (all weights tie): it ties itself
    assert "| 24 | 0-9 | 1 | met: 1 of 1 | met: +0.00 | met: 1 of 1 |" in text
    assert "[26](results_round26.md)" in text and "[1](results_round1.md)" in text
    empty_page = tmp_path / "empty.md"
    kd_suite.main(
        ["--scorecard", "--store", str(tmp_path / "none.json"), "--page", str(empty_page)]
    )
    assert (
        "No confirmation condition has the default's runs in this store." in empty_page.read_text()
    )
