"""mokd_optim: train a model on several losses by balancing them at the gradient level.

Public names:

- :class:`MultiObjectiveOptimizer` -- wraps any ``torch.optim`` optimizer.
- :class:`StepStats` -- what one ``backward`` did (weights, norms, cosine, conflict, ...).
- :class:`ObjectiveError` -- raised for a loss that cannot be used, naming it.
- subpackages ``methods`` (registry), ``solvers`` (min-norm), ``diagnostics`` (statistics,
  ``StatsLogger``, ``plot_log``, ``CollapseWatch``), ``gradients``, ``distributed`` (DDP collectives),
  ``checkpoint`` (atomic ``save_checkpoint`` / ``load_checkpoint``) and ``kd`` (distillation
  losses, feature recorders, projection heads, ``Distiller``).
"""

from mokd_optim import checkpoint, diagnostics, distributed, gradients, kd, methods, solvers
from mokd_optim._validation import ObjectiveError
from mokd_optim.diagnostics import StepStats
from mokd_optim.optimizer import MultiObjectiveOptimizer

__version__ = "0.1.0.dev0"

__all__ = [
    "MultiObjectiveOptimizer",
    "ObjectiveError",
    "StepStats",
    "__version__",
    "checkpoint",
    "diagnostics",
    "distributed",
    "gradients",
    "kd",
    "methods",
    "solvers",
]
