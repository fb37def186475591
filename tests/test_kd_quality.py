"""benchmarks/kd_quality.py: the quick form runs every configuration of the protocol on real
data, writes a page, plots and JSON whose numbers are consistent, and resumes from its store."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from itertools import product
from pathlib import Path
from typing import Any

import pytest

from benchmarks.environment import as_text
from benchmarks.kd_quality import (
    BALANCED,
    BALANCED_TEMPERATURE,
    CE_LRS,
    CHECK_PREFIX,
    DEFAULT_LABEL,
    DEFAULT_RULE,
    KD_TEMPERATURES,
    KD_WEIGHTS,
    STRESS_RULES,
    STRESS_SCALES,
    aggregate,
    paired,
    verdicts,
)

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("fashion-mnist", "mnist-5k")


def _run(tmp: Path) -> tuple[dict[str, Any], str]:
    env = {**os.environ, "MOKD_OPTIM_CACHE": str(tmp / "cache"), "PYTHONPATH": str(ROOT)}
    args = [
        "benchmarks/kd_quality.py",
        "--quick",
        "--out",
        str(tmp / "r.json"),
        "--page",
        str(tmp / "page" / "results.md"),
    ]
    completed = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return json.loads((tmp / "r.json").read_text()), completed.stdout


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, dict[str, Any]]:
    """The quick report, its folder, and the report of a second run over the same store."""
    tmp = tmp_path_factory.mktemp("kd_quality")
    first, _ = _run(tmp)
    second, _ = _run(tmp)
    return first, tmp, second


def _rows(report: dict[str, Any], dataset: str, group: str) -> list[dict[str, Any]]:
    return [row for row in report["datasets"][dataset]["rows"] if row["group"] == group]


def _finite_everywhere(value: Any, where: str = "report") -> None:
    if isinstance(value, float):
        assert math.isfinite(value), where
    elif isinstance(value, dict):
        for key, item in value.items():
            _finite_everywhere(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _finite_everywhere(item, f"{where}[{index}]")


@pytest.mark.slow
def test_every_required_configuration_is_present(quick) -> None:
    report, _, _ = quick
    assert set(report["datasets"]) == set(DATASETS)
    for name in DATASETS:
        ds = report["datasets"][name]
        ce = _rows(report, name, "ce")
        assert [row["lr"] for row in ce] == list(CE_LRS)
        best = max(ce, key=lambda row: row["final_mean"])
        assert ds["best_ce_lr"] == best["lr"]
        index = CE_LRS.index(best["lr"])
        assert ds["kd_lrs"] == [best["lr"], CE_LRS[index - 1] if index else CE_LRS[1]]

        fixed = _rows(report, name, "fixed")
        grid = {(row["weight"], row["temperature"], row["lr"]) for row in fixed}
        assert len(fixed) == len(grid) == len(KD_WEIGHTS) * len(KD_TEMPERATURES) * 2
        assert grid == set(product(KD_WEIGHTS, KD_TEMPERATURES, ds["kd_lrs"]))
        for row in fixed:
            assert row["method"] == "weighted" and row["method_options"] == {
                "weights": [1 - row["weight"], row["weight"]]
            }

        balanced = _rows(report, name, "balanced")
        assert [row["label"] for row in balanced] == [c["label"] for c in BALANCED]
        assert {row["method"] for row in balanced} == {"mokd", "mokd-amortized", "mgda", "pcgrad"}
        mokd = [row for row in balanced if row["method"] == "mokd"]
        assert {(row["method_options"]["step"], row["max_norm"]) for row in mokd} == set(
            product(("anchor", "convex", "log"), (None, 1.0))
        )
        for row in balanced:  # the ce recipe, untouched
            assert (
                row["lr"] == ds["best_ce_lr"]
                and row["temperature"] == BALANCED_TEMPERATURE
                and row["kd_scale"] == 1.0
            )
            if row["method"] == "mokd-amortized":
                assert (
                    row["method_options"]["step"] in ("log", "convex") and row["max_norm"] is None
                )
            elif row["method"] != "mokd":
                assert row["method_options"] == {} and row["max_norm"] is None

        best_fixed = max(fixed, key=lambda row: row["final_mean"])
        assert ds["best_fixed_label"] == best_fixed["label"]
        stress = _rows(report, name, "stress")
        assert {(row["method"], row["kd_scale"]) for row in stress} == set(
            product(("weighted", "mokd"), STRESS_SCALES)
        )
        for row in stress:
            if row["method"] == "weighted":  # the best fixed configuration, only the scale changed
                assert (row["weight"], row["temperature"], row["lr"]) == (
                    best_fixed["weight"],
                    best_fixed["temperature"],
                    best_fixed["lr"],
                )
            else:
                assert (
                    row["method_options"]["step"] in STRESS_RULES
                    and row["lr"] == ds["best_ce_lr"]
                    and row["max_norm"] is None
                )

    # Fashion-MNIST reruns the key configurations on more training images.
    check = _rows(report, "fashion-mnist", "check")
    labels = {row["label"].removeprefix(CHECK_PREFIX) for row in check}
    assert {
        DEFAULT_LABEL,
        report["datasets"]["fashion-mnist"]["best_fixed_label"],
        f"ce, lr {report['datasets']['fashion-mnist']['best_ce_lr']:g}",
    } <= labels
    assert (
        report["datasets"]["fashion-mnist"]["check_images"]
        > report["datasets"]["fashion-mnist"]["train_images"]
    )
    assert not _rows(report, "mnist-5k", "check")


@pytest.mark.slow
def test_numbers_are_finite_and_consistent(quick) -> None:
    report, _, _ = quick
    _finite_everywhere(report)
    for name in DATASETS:
        ds = report["datasets"][name]
        assert 0.3 < ds["teacher_accuracy"] <= 1.0  # a tiny quick teacher, but well above chance
        seeds = ds["protocol"]["seeds"]
        assert seeds == 2
        for row in ds["rows"]:
            assert row["seeds"] == list(range(seeds)) and len(row["runs"]) == seeds
            for run, final, best in zip(row["runs"], row["finals"], row["bests"]):
                assert 0.0 <= final <= best <= 1.0
                assert final == run["accuracy_per_epoch"][-1] and best == max(
                    run["accuracy_per_epoch"]
                )
                assert len(run["accuracy_per_epoch"]) == ds["protocol"]["epochs"] or run["diverged"]
                assert run["seconds"] > 0
            assert row["final_mean"] == pytest.approx(statistics.mean(row["finals"]))
            assert row["final_std"] == pytest.approx(statistics.stdev(row["finals"]))
            assert row["collapsed"] == sum(
                r["diverged"] or r["final_accuracy"] < 0.2 for r in row["runs"]
            )
            if row["method"] == "ce":  # no KD gradient to compare with
                assert row["mean_cosine"] is None and row["dominance"] is None
            elif not row["collapsed"]:
                assert -1.0 <= row["mean_cosine"] <= 1.0 and 0.0 <= row["conflict_fraction"] <= 1.0
                # geometric means: mean |log r| >= |mean log r|
                ratio = row["kd_task_ratio"]
                assert row["dominance"] >= max(ratio, 1 / ratio) * (1 - 1e-9) >= 1.0 - 1e-9


@pytest.mark.slow
def test_stress_properties(quick) -> None:
    """MoKD's stressed rules ignore the KD scale; the probes see the scale of the KD gradient."""
    report, _, _ = quick
    for name in DATASETS:
        balanced = _rows(report, name, "balanced")
        for row in _rows(report, name, "stress"):
            if row["method"] == "mokd":
                # the same rule without clipping, at KD scale 1
                mokd = next(
                    b
                    for b in balanced
                    if b["method"] == "mokd"
                    and b["method_options"] == row["method_options"]
                    and b["max_norm"] is None
                )
                assert row["finals"] == pytest.approx(mokd["finals"], abs=0.01), (
                    name,
                    row["kd_scale"],
                )
                # the KD gradient is ~scale times larger at the same point
                assert math.log10(row["kd_task_ratio"] / mokd["kd_task_ratio"]) == pytest.approx(
                    math.log10(row["kd_scale"]), abs=0.5
                )


@pytest.mark.slow
def test_page_and_plots(quick) -> None:
    report, tmp, _ = quick
    text = (tmp / "page" / "results.md").read_text()
    assert "generated by benchmarks/kd_quality.py" in text
    assert "python benchmarks/kd_quality.py --quick" in text and report["command"] in text
    for heading in (
        "## Protocol",
        "## Headline",
        "## Where MoKD is ahead, and where it is not",
        "## Reproduce",
    ):
        assert heading in text
    assert "MoKD (default) does **not** win:" in text
    assert (
        text.count("| configuration | last epoch (%) | best epoch (%) |") == 2 * 4 + 1
    )  # 4 tables each, + the check
    for name in DATASETS:
        for row in report["datasets"][name]["rows"]:
            assert (
                f"| {row['label']} | {100 * row['final_mean']:.2f} ± {100 * row['final_std']:.2f} |"
                in text
            )
    pngs = [line.split("(")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert len(pngs) == 4
    for png in pngs:
        path = tmp / "page" / png
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(data) < 200_000
    assert as_text(report["environment"]) in text


@pytest.mark.slow
def test_second_run_resumes_from_the_store(quick) -> None:
    first, _, second = quick
    total = sum(len(row["runs"]) for ds in first["datasets"].values() for row in ds["rows"])
    assert first["new_runs"] == total and first["reused_runs"] == 0
    assert second["new_runs"] == 0 and second["reused_runs"] == total
    for name in DATASETS:
        assert [row["finals"] for row in second["datasets"][name]["rows"]] == [
            row["finals"] for row in first["datasets"][name]["rows"]
        ]


def _row(label: str, group: str, finals: list[float], **fields: Any) -> dict[str, Any]:
    spec = {
        "label": label,
        "group": group,
        "method": "weighted",
        "lr": 0.05,
        "temperature": 4.0,
        "weight": 0.5,
        "kd_scale": 1.0,
        "max_norm": None,
        "method_options": {},
        **fields,
    }
    runs = [
        {
            "final_accuracy": f,
            "best_accuracy": f,
            "diverged": False,
            "seconds": 1.0,
            "mean_cosine": 0.1,
            "conflict_fraction": 0.0,
            "mean_log10_dominance": 0.0,
            "mean_log10_kd_task_ratio": 0.0,
        }
        for f in finals
    ]
    return aggregate([{**spec, "seed": s} for s in range(len(finals))], runs)


def test_verdicts_put_each_comparison_on_the_right_side() -> None:
    """Synthetic report: tuned fixed weights beat MoKD, MoKD beats ce; the text says so."""
    rows = [
        _row("ce, lr 0.05", "ce", [0.80, 0.81, 0.82], method="ce"),
        _row("fixed KD a=0.5, T=4, lr 0.05", "fixed", [0.85, 0.86, 0.87]),
        _row(DEFAULT_LABEL, "balanced", [0.84, 0.84, 0.84], method="mokd"),
        _row("mokd step=convex", "balanced", [0.83, 0.83, 0.90], method="mokd"),
        _row("stress fixed 0.01", "stress", [0.8, 0.8, 0.8], kd_scale=0.01),
        _row(
            "stress mokd 0.01",
            "stress",
            [0.84, 0.84, 0.84],
            kd_scale=0.01,
            method="mokd",
            method_options={"step": DEFAULT_RULE},
        ),
        _row("stress fixed 1000", "stress", [0.1, 0.1, 0.1], kd_scale=1000.0),
        _row(
            "stress mokd 1000",
            "stress",
            [0.84, 0.84, 0.84],
            kd_scale=1000.0,
            method="mokd",
            method_options={"step": DEFAULT_RULE},
        ),
    ]
    report = {"rows": rows, "best_fixed_label": "fixed KD a=0.5, T=4, lr 0.05"}
    ahead, behind = verdicts(report)
    assert any(
        "cross-entropy alone" in s and "+3.00 points" in s and "3/3 seeds" in s for s in ahead
    )
    assert any(
        "best of the 1 fixed-weight" in s and "-2.00 points" in s and "0/3 seeds" in s
        for s in behind
    )
    # a higher mean puts it on the "not ahead" side even though MoKD is higher on 2 of 3 seeds
    assert any("mokd step=convex" in s and "-1.33 points" in s and "2/3 seeds" in s for s in behind)
    assert any("x1000" in s for s in ahead) and any("x0.01" in s for s in ahead)
    assert paired(rows[2], rows[0]) == (pytest.approx(3.0), 3, 3)
