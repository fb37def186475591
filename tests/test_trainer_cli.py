"""The example trainers' command lines: torchvision's option names, our documented aliases, the
same names in both trainers, defaults in ``--help``, early errors, and where they import from.

Only argument parsing and imports run here (no training): the end-to-end runs are in
tests/test_imagenet_kd.py and tests/test_coco_kd.py."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# The options each trainer must take, with a value to pass (None: a flag).
REQUIRED = {"imagenet_kd": ["--data-path", "DATA"], "coco_kd": ["--data-path", "DATA"]}


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"cli_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", params=["imagenet_kd", "coco_kd"])
def trainer(request: pytest.FixtureRequest) -> tuple[str, Any]:
    return request.param, _load(request.param)


def test_torchvision_spellings(trainer: tuple[str, Any]) -> None:
    name, module = trainer
    args = module.parse_args(
        [
            *REQUIRED[name],
            "--teacher-weights",
            "random",
            "-b",
            "4",
            "-j",
            "3",
            "--wd",
            "0.05",
            "--lr-scheduler",
            "cosineannealinglr",
            "--clip-grad-norm",
            "2.5",
            "--print-freq",
            "7",
            "--amp",
        ]
    )
    assert (args.batch_size, args.workers, args.weight_decay) == (4, 3, 0.05)
    assert args.lr_scheduler == "cosine"
    assert args.max_norm == 2.5 and args.log_every == 7
    assert args.amp == "fp16"  # a bare --amp is torchvision's fp16 autocast with a GradScaler
    stepped = module.parse_args(
        [*REQUIRED[name], "--teacher-weights", "random", "--epochs", "10", "--lr-step-size", "3"]
    )
    assert stepped.lr_steps == [3, 6, 9] and stepped.lr_scheduler == "step"
    assert module.parse_args([*REQUIRED[name], "--method", "none", "--amp", "bf16"]).amp == "bf16"


def test_documented_aliases_give_the_same_namespace(trainer: tuple[str, Any]) -> None:
    name, module = trainer
    common = [*REQUIRED[name], "--teacher-weights", "random", "--method", "kd"]
    ours = module.parse_args(
        [
            *common,
            "--batch-size",
            "4",
            "--workers",
            "3",
            "--weight-decay",
            "0.05",
            "--max-norm",
            "2.5",
            "--log-every",
            "7",
            "--distill-weight",
            "0.25",
        ]
    )
    theirs = module.parse_args(
        [
            *common,
            "-b",
            "4",
            "-j",
            "3",
            "--wd",
            "0.05",
            "--clip-grad-norm",
            "2.5",
            "--print-freq",
            "7",
            "--kd-weight",
            "0.25",
        ]
    )
    assert vars(ours) == vars(theirs)
    assert ours.kd_weight == 0.25
    # 'ce' and 'none' are one baseline in both trainers, and need no teacher
    assert module.parse_args([*REQUIRED[name], "--method", "ce"]).method == "none"
    assert module.parse_args([*REQUIRED[name], "--method", "none"]).method == "none"


def test_both_trainers_share_the_common_options() -> None:
    def option_strings(module: Any) -> set[str]:
        parser_options: set[str] = set()
        original = module.make_parser

        def capture(description: Any) -> Any:
            parser = original(description)
            captured.append(parser)
            return parser

        captured: list[Any] = []
        module.make_parser = capture
        try:
            module.parse_args(["--data-path", "DATA", "--method", "none"])
        finally:
            module.make_parser = original
        for action in captured[0]._actions:
            parser_options.update(action.option_strings)
        return parser_options

    imagenet, coco = option_strings(_load("imagenet_kd")), option_strings(_load("coco_kd"))
    shared = {
        "-b",
        "--batch-size",
        "-j",
        "--workers",
        "--epochs",
        "--lr",
        "--momentum",
        "--wd",
        "--weight-decay",
        "--lr-scheduler",
        "--lr-steps",
        "--lr-step-size",
        "--lr-gamma",
        "--clip-grad-norm",
        "--max-norm",
        "--print-freq",
        "--log-every",
        "--amp",
        "--method",
        "--method-options",
        "--kd-weight",
        "--distill-weight",
        "--strategy",
        "--sync",
        "--teacher-weights",
        "--output-dir",
        "--resume",
        "--device",
        "--channels-last",
        "--compile",
        "--seed",
    }
    assert shared <= imagenet and shared <= coco, (shared - imagenet, shared - coco)


def test_help_shows_defaults(trainer: tuple[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    _, module = trainer
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: mokd)" in text and "(default: 0.0001)" in text
    assert "-b BATCH_SIZE, --batch-size BATCH_SIZE" in text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "--teacher-weights is required with --method mokd"),
        (["--method", "kd"], "--teacher-weights is required with --method kd"),
        (["--method", "nope"], "unknown --method 'nope'; choose 'none' (alias 'ce'), 'kd'"),
        (["--method", "none", "--method-options", "[1]"], "must be a JSON object"),
        (["--method", "none", "--lr-step-size", "0"], "--lr-step-size must be a positive"),
    ],
)
def test_errors_at_parse_time(
    trainer: tuple[str, Any],
    extra: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name, module = trainer
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args([*REQUIRED[name], *extra])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def _python(args: list[str], *, cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_trainers_use_the_installed_package_not_the_checkout(tmp_path: Path) -> None:
    """``python examples/imagenet_kd.py`` imports ``mokd_optim`` from the environment (here a
    copy on PYTHONPATH that announces itself), not from the checkout the script sits in.
    Regression: the scripts put the repository root first on ``sys.path``."""
    installed = tmp_path / "site"
    shutil.copytree(
        ROOT / "mokd_optim", installed / "mokd_optim", ignore=shutil.ignore_patterns("__pycache__")
    )
    init = installed / "mokd_optim" / "__init__.py"
    init.write_text(init.read_text() + "\nprint('mokd_optim from', __file__)\n")
    for name in ("imagenet_kd", "coco_kd"):
        done = _python([str(EXAMPLES / f"{name}.py"), "--help"], cwd=tmp_path, pythonpath=installed)
        assert done.returncode == 0, done.stderr
        assert f"mokd_optim from {init}" in done.stdout, done.stdout[:300]


def test_a_copied_trainer_says_what_it_needs(tmp_path: Path) -> None:
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(EXAMPLES / "imagenet_kd.py", alone)
    done = _python([str(alone / "imagenet_kd.py"), "--help"], cwd=tmp_path, pythonpath=ROOT)
    assert done.returncode == 1
    assert "needs trainer_utils.py from the same folder" in done.stderr
    shutil.copy(EXAMPLES / "trainer_utils.py", alone)  # the documented fix
    done = _python([str(alone / "imagenet_kd.py"), "--help"], cwd=tmp_path, pythonpath=ROOT)
    assert done.returncode == 0, done.stderr


def test_summaries_are_strict_json(tmp_path: Path) -> None:
    """Regression: summary.json held bare NaN (a statistic a run does not have), which strict
    JSON parsers reject; it is null now."""
    module = _load("trainer_utils")
    payload = {"a": float("nan"), "b": [1.0, float("inf"), {"c": -float("inf")}], "d": "x"}
    module.write_json(tmp_path / "summary.json", payload)

    def reject(constant: str) -> None:
        raise ValueError(constant)

    text = (tmp_path / "summary.json").read_text()
    assert json.loads(text, parse_constant=reject) == {
        "a": None,
        "b": [1.0, None, {"c": None}],
        "d": "x",
    }
