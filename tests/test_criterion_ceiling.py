"""benchmarks/criterion_ceiling.py: the suite's "ahead or tied" rule on held-out seeds."""

from __future__ import annotations

import pytest

from benchmarks import criterion_ceiling as cc

# ten seeds of three fixed weights: a = 0.3 best by two points everywhere, a = 0.5 noisy
FIXED = {
    "fixed a=0.1": [0.90 + 0.001 * (s % 3) for s in range(10)],
    "fixed a=0.3": [0.92 + 0.001 * (s % 3) for s in range(10)],
    "fixed a=0.5": [0.905 + 0.01 * (s % 2) for s in range(10)],
}


def test_wins_follows_the_paired_standard_error() -> None:
    best = FIXED["fixed a=0.3"]
    assert cc.wins(best, FIXED, [0, 1, 2])  # itself: a difference of 0
    assert not cc.wins(FIXED["fixed a=0.1"], FIXED, [0, 1, 2])  # two points behind, no spread
    # one point behind on one seed, one ahead on another: mean 0 within its standard error
    mixed = list(best)
    mixed[0] -= 0.01
    mixed[1] += 0.01
    assert cc.wins(mixed, FIXED, [0, 1, 2])
    # behind by 0.5 points on average with a standard error of 0.29: behind
    behind = [v - 0.005 + 0.005 * ((s % 3) - 1) for s, v in enumerate(best)]
    assert not cc.wins(behind, FIXED, [0, 1, 2])
    with pytest.raises(ValueError, match="two seeds"):
        cc.wins(best, FIXED, [0])


def test_split_probabilities_counts_every_disjoint_pair() -> None:
    default = [v - 0.05 for v in FIXED["fixed a=0.3"]]  # five points behind everywhere
    result = cc.split_probabilities(FIXED, default, size=3)
    # C(10, 3) evaluation sets x C(7, 3) pick sets
    assert all(len(v) == 120 * 35 for v in result.values())
    assert all(result["picked"]) and all(result["best overall"])
    assert not any(result["default"])
    with pytest.raises(ValueError, match="need 8 seeds"):
        cc.split_probabilities({k: v[:7] for k, v in FIXED.items()}, default[:7], size=4)


def test_two_thirds_chance() -> None:
    assert cc.two_thirds_chance([1.0] * 8, draws=200) == 1.0
    assert cc.two_thirds_chance([0.0] * 8, draws=200) == 0.0
    # at least 2 of 3 at p = 1/2: exactly 1/2
    assert cc.two_thirds_chance([0.5] * 3, draws=20_000) == pytest.approx(0.5, abs=0.02)
    # at least 6 of 8 at p = 0.9: 0.962
    assert cc.two_thirds_chance([0.9] * 8, draws=20_000) == pytest.approx(0.962, abs=0.01)


def test_a_constant_weight_is_judged_untuned_on_every_evaluation_set() -> None:
    default = [v - 0.05 for v in FIXED["fixed a=0.3"]]
    behind = cc.split_probabilities(FIXED, default, size=3, constant="fixed a=0.1")
    assert set(behind) == {"picked", "best overall", "constant", "default"}
    assert len(behind["constant"]) == len(behind["picked"]) == 120 * 35
    assert not any(behind["constant"])  # two points behind a = 0.3 on every seed
    best = cc.split_probabilities(FIXED, default, size=3, constant="fixed a=0.3")
    assert all(best["constant"])  # the best weight itself: a difference of 0
    # a weight one point above a = 0.3 on odd seeds and one below on even ones: ahead or tied
    # on the evaluation sets with an odd seed, behind on the all-even ones (C(5, 3) = 10 of
    # 120), the same verdict for every pick set
    swinging = {**FIXED, "fixed a=0.7": [v + (0.01 if s % 2 else -0.01)
                                         for s, v in enumerate(FIXED["fixed a=0.3"])]}  # fmt: skip
    noisy = cc.split_probabilities(swinging, default, size=3, constant="fixed a=0.7")["constant"]
    assert sum(noisy) == (120 - 10) * 35
    assert set(cc.split_probabilities(FIXED, default, size=3)) == {
        "picked", "best overall", "default"
    }  # fmt: skip
    with pytest.raises(ValueError, match="no fixed weight labelled"):
        cc.split_probabilities(FIXED, default, size=3, constant="fixed a=0.2")


def test_the_table_refuses_a_constant_outside_the_grid(tmp_path) -> None:
    from benchmarks import kd_suite

    with pytest.raises(ValueError, match="not in the grid"):
        cc.ceiling_table([], kd_suite.Store(tmp_path / "store.json"), list(range(10)), 3, 0.2)
    with pytest.raises(SystemExit):
        cc.main(["--constant", "0.2", "--store", str(tmp_path / "store.json")])
