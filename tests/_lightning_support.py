"""The ``LightningModule`` and trainer settings used by tests/test_lightning.py and
tests/lightning_worker.py (imports Lightning; not a test module itself)."""

from __future__ import annotations

from typing import Any, Optional

import lightning.pytorch as pl
import torch

from mokd_optim.integrations.lightning import balanced_step
from tests._framework_support import losses_and_features, losses_of, new_model, new_optimizer


class KDModule(pl.LightningModule):
    """TwoHeadMLP trained on three losses with ``balanced_step``; records the weights."""

    def __init__(
        self,
        method: str = "mokd",
        *,
        accumulate: int = 1,
        same_batch_observe: bool = False,
        representation: bool = False,
        scheduler_step_size: Optional[int] = None,
        log_stats: bool = False,
        **options: Any,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.model = new_model()
        self.method = method
        self.options = options
        self.accumulate = accumulate
        self.same_batch_observe = same_batch_observe
        self.representation = representation
        self.scheduler_step_size = scheduler_step_size
        self.log_stats = log_stats
        self.weights: list[torch.Tensor] = []

    def training_step(self, batch: Any, batch_idx: int) -> None:
        after = (lambda: losses_of(self.model, batch)) if self.same_batch_observe else None
        losses, shared = losses_and_features(self.model, batch)
        stats = balanced_step(
            self,
            losses,
            features=shared if self.representation else None,
            accumulate_grad_batches=self.accumulate,
            batch_idx=batch_idx,
            losses_after=after,
        )
        if stats is None:
            return
        self.weights.append(stats.weights.detach().clone())
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()  # type: ignore[union-attr]
        if self.log_stats:
            self.log_dict({f"mokd/{k}": v for k, v in stats.to_dict().items()})
            self.log("lr", self.optimizers().param_groups[0]["lr"])  # type: ignore[union-attr]

    def configure_optimizers(self) -> Any:
        opt = new_optimizer(self.model, self.method, **self.options)
        if self.scheduler_step_size is None:
            return opt
        scheduler = torch.optim.lr_scheduler.StepLR(opt, self.scheduler_step_size, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": scheduler}


def trainer(**overrides: Any) -> pl.Trainer:
    """A quiet CPU trainer; ``overrides`` replace or add ``Trainer`` arguments."""
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    settings.update(overrides)
    return pl.Trainer(**settings)
