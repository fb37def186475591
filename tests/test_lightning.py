"""PyTorch Lightning: ``balanced_step`` inside a manual-optimization ``LightningModule``.

Every run is compared with the plain ``MultiObjectiveOptimizer`` loop at the same seed
(tests/_framework_support.py): one process bit for bit, two DDP processes (Lightning's own
launcher, gloo on CPU) to float tolerance on the concatenated batch; mixed precision,
checkpoint resume (method state included), loggers, schedulers, hooks and step counters.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

from lightning.pytorch.plugins.precision import MixedPrecision  # noqa: E402

from mokd_optim.integrations.lightning import balanced_step, check_trainer  # noqa: E402
from tests import lightning_worker  # noqa: E402
from tests._framework_support import (  # noqa: E402
    distance_travelled,
    distributed_order,
    loader,
    losses_of,
    max_difference,
    new_model,
    plain_run,
)
from tests._lightning_support import KDModule, trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4
# Two ranks average two half-batch means where the reference takes one mean (float32 sums in
# another order; observed 1.5e-8 after 3 steps).
DDP_ATOL = 1e-6

SCENARIOS: dict[str, dict[str, Any]] = {
    "loop": {},
    "accumulate": {"accumulate": 2},
    "representation": {"representation": True},
    "famo-same-batch": {"method": "famo", "same_batch_observe": True},
    "famo-next-batch": {"method": "famo", "observe": "next_batch"},
}


@pytest.fixture(autouse=True)
def _quiet() -> Any:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="lightning")
        warnings.filterwarnings(
            "ignore", category=UserWarning, message=".*(num_workers|LeafSpec).*"
        )
        yield


def _fit(module: KDModule, batch_size: int = 8, steps: int = STEPS, **overrides: Any) -> Any:
    fit = trainer(max_steps=steps, **overrides)
    fit.fit(module, loader(batch_size))
    return fit


def _params(module: KDModule) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.model.parameters()]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_one_process_is_bit_identical_to_the_plain_loop(scenario: str) -> None:
    options = SCENARIOS[scenario]
    batch_size = 4 if "accumulate" in options else 8
    module = KDModule(**options)
    fit = _fit(module, batch_size)
    reference, weights, state = plain_run(batch_size, STEPS, **options)
    assert fit.global_step == STEPS  # one Lightning step per optimizer step, windows included
    for a, b in zip(_params(module), reference):
        assert torch.equal(a, b)
    assert torch.equal(torch.stack(module.weights), torch.stack(weights))
    if options.get("method") == "famo":  # the method state learnt the same thing
        learnt = module.optimizers().optimizer.state_dict()["methods"][0]["logits"]
        assert torch.equal(learnt, state["methods"][0]["logits"])
        assert learnt.abs().max() > 0


@pytest.fixture(scope="module")
def ddp_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("lightning_ddp")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "tests.lightning_worker", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("scenario", list(lightning_worker.SCENARIOS))
def test_ddp_two_processes_match_the_plain_loop_on_the_concatenated_batch(
    ddp_ranks: list[dict[str, Any]], scenario: str
) -> None:
    first, second = ddp_ranks[0][scenario], ddp_ranks[1][scenario]
    assert first["world_size"] == 2 and first["global_step"] == lightning_worker.STEPS
    for a, b in zip(first["params"], second["params"]):
        assert torch.equal(a, b)
    reference, weights, _ = plain_run(
        2 * lightning_worker.PER_RANK,
        lightning_worker.STEPS,
        order=distributed_order(),
        **lightning_worker.SCENARIOS[scenario],
    )
    assert max_difference(first["params"], reference) < DDP_ATOL
    assert distance_travelled(reference) > 1000 * DDP_ATOL
    torch.testing.assert_close(first["weights"], torch.stack(weights), atol=1e-5, rtol=1e-5)


def test_bf16_mixed_follows_the_float32_run() -> None:
    module = KDModule()
    fit = _fit(module, precision="bf16-mixed")
    assert fit.precision_plugin.scaler is None
    reference, _, _ = plain_run(8, STEPS)
    # bfloat16 keeps 8 significand bits: observed 0.22% of the distance travelled.
    assert max_difference(_params(module), reference) < 0.02 * distance_travelled(reference)


@pytest.mark.parametrize("scenario", ["loop", "famo-same-batch"])
def test_16_mixed_uses_the_trainers_grad_scaler(scenario: str) -> None:
    """``precision="16-mixed"`` on a GPU is this plugin with ``device="cuda"``; on CPU Lightning
    turns the flag into bf16, so the plugin is passed explicitly."""
    options = SCENARIOS[scenario]
    module = KDModule(**options)
    plugin = MixedPrecision("16-mixed", "cpu")
    _fit(module, plugins=[plugin])
    opt = module.optimizers().optimizer
    assert opt.scaler is plugin.scaler and plugin.scaler.get_scale() == 2.0**16  # no overflow
    reference, _, state = plain_run(8, STEPS, **options)
    # observed: 0.03% (loop) and 0.05% (famo) of the distance travelled
    assert max_difference(_params(module), reference) < 0.005 * distance_travelled(reference)
    if options.get("method") == "famo":
        torch.testing.assert_close(
            opt.state_dict()["methods"][0]["logits"],
            state["methods"][0]["logits"],
            atol=0.02 * float(state["methods"][0]["logits"].abs().max()),
            rtol=0,
        )


def test_16_mixed_overflow_skips_the_step_and_the_observation() -> None:
    module = KDModule(method="famo", same_batch_observe=True)
    plugin = MixedPrecision(
        "16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**40)
    )
    _fit(module, steps=1, plugins=[plugin])
    assert plugin.scaler.get_scale() == 2.0**39
    for a, b in zip(_params(module), new_model().parameters()):
        assert torch.equal(a, b)
    method_state = module.optimizers().optimizer.state_dict()["methods"][0]
    assert method_state["steps"] == 0  # nothing observed for a step that was not taken


def test_checkpoint_resume_restores_method_and_scheduler_state(tmp_path: Path) -> None:
    """famo's logits and Adam moments, the SGD momentum and the StepLR state come back from a
    Lightning checkpoint: two epochs with a resume in between equal two epochs straight."""
    options: dict[str, Any] = {
        "method": "famo",
        "same_batch_observe": True,
        "scheduler_step_size": 2,
    }
    straight = KDModule(**options)
    trainer(max_epochs=2).fit(straight, loader(16))

    first = KDModule(**options)
    first_fit = trainer(max_epochs=1)
    first_fit.fit(first, loader(16))
    path = tmp_path / "epoch1.ckpt"
    first_fit.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["optimizer_states"][0]
    assert saved["methods"][0]["steps"] == 3 and saved["methods"][0]["logits"].abs().max() > 0

    resumed = KDModule(**options)
    resumed_fit = trainer(max_epochs=2)
    resumed_fit.fit(resumed, loader(16), ckpt_path=path)
    assert resumed_fit.global_step == 6
    for a, b in zip(_params(resumed), _params(straight)):
        assert torch.equal(a, b)
    reference, _, state = plain_run(16, 6, **options)
    for a, b in zip(_params(resumed), reference):
        assert torch.equal(a, b)
    end = resumed.optimizers().optimizer.state_dict()
    assert torch.equal(end["methods"][0]["logits"], state["methods"][0]["logits"])
    assert resumed.optimizers().param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)


class _StepCounter(pl.Callback):
    def __init__(self) -> None:
        self.before_step = 0

    def on_before_optimizer_step(self, trainer: Any, module: Any, optimizer: Any) -> None:
        assert all(p.grad is not None for p in module.model.parameters())
        self.before_step += 1


def test_loggers_hooks_schedulers_and_step_counters(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    module = KDModule(scheduler_step_size=2, log_stats=True)
    counter = _StepCounter()
    fit = _fit(
        module,
        logger=CSVLogger(tmp_path, name="kd"),
        log_every_n_steps=1,
        callbacks=[counter],
    )
    assert fit.global_step == STEPS and counter.before_step == STEPS
    with open(Path(fit.logger.log_dir) / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("mokd/weight/task")]
    assert len(rows) == STEPS
    logged = torch.tensor(
        [[float(row[f"mokd/weight/{n}"]) for n in ("task", "kd", "feat")] for row in rows]
    )
    torch.testing.assert_close(logged, torch.stack(module.weights).float())
    assert [float(row["lr"]) for row in rows] == pytest.approx([0.1, 0.05, 0.05, 0.025])
    assert all(float(row["mokd/cosine/task|kd"]) <= 1 for row in rows)


class _AutomaticModule(KDModule):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = True

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        return balanced_step(self, losses_of(self.model, batch))


class _PlainOptimizerModule(KDModule):
    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.model.parameters(), lr=0.1)


def test_unsupported_configurations_raise_before_training() -> None:
    with pytest.raises(RuntimeError, match="automatic optimization"):
        _fit(_AutomaticModule(), steps=1)
    module = _PlainOptimizerModule()
    with pytest.raises(TypeError, match="not a MultiObjectiveOptimizer"):
        _fit(module, steps=1)
    for a, b in zip(_params(module), new_model().parameters()):
        assert torch.equal(a, b)
    # Lightning refuses its own accumulation in manual optimization; balanced_step has one.
    with pytest.raises(Exception, match="accumulate_grad_batches"):
        _fit(KDModule(), steps=1, accumulate_grad_batches=2)


def test_a_scaler_of_its_own_is_refused() -> None:
    class OwnScaler(KDModule):
        def configure_optimizers(self) -> Any:
            opt = super().configure_optimizers()
            opt.scaler = torch.amp.GradScaler("cpu")
            return opt

    with pytest.raises(ValueError, match="GradScaler"):
        _fit(OwnScaler(), steps=1, plugins=[MixedPrecision("16-mixed", "cpu")])
    with pytest.raises(ValueError, match="does not scale losses"):
        _fit(OwnScaler(), steps=1)


def test_sharded_strategies_and_their_precision_plugins_are_refused() -> None:
    """Model-parallel and sharded training hold shards of the parameters on each rank."""
    from lightning.pytorch.plugins.precision import FSDPPrecision
    from lightning.pytorch.strategies import ModelParallelStrategy

    with pytest.raises(NotImplementedError, match="ModelParallelStrategy"):
        check_trainer(trainer(strategy=ModelParallelStrategy()))
    with pytest.raises(NotImplementedError, match="FSDPPrecision"):
        check_trainer(trainer(plugins=[FSDPPrecision("bf16-mixed")]))
    check_trainer(trainer(strategy="ddp_spawn", devices=2))  # supported, like "ddp"


def test_the_library_and_its_integrations_import_no_framework() -> None:
    """The frameworks are an optional extra: importing mokd_optim (and the helper modules,
    until a trainer is inspected) loads neither."""
    code = (
        "import sys, mokd_optim, mokd_optim.integrations.lightning, "
        "mokd_optim.integrations.accelerate; "
        "print(sorted(m for m in ('lightning', 'pytorch_lightning', 'accelerate') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip() == "[]"
