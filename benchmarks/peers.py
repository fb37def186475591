"""Adapters that run peer libraries' gradient balancing on the benchmark's KD step.

Peers (optional dependencies, ``pip install mokd-optim[benchmarks]``):

- **torchjd** (``torchjd.autojac.backward`` + ``jac_to_grad`` with the ``MGDA``, ``UPGrad`` and
  ``PCGrad`` aggregators; and its ``autogram.Engine``, which builds the Gramian without storing
  the Jacobian, with the matching weightings).
- **pytorch_optimizer**'s ``PCGrad`` optimizer wrapper (``pc_backward``).
- **LibMTL**'s ``MGDA`` and ``PCGrad`` weightings. LibMTL 1.1.5 (its latest release, 2021) needs
  two accommodations on current torch, both made here and reported: its package ``__init__``
  imports ``torchvision.models.utils``, removed in torchvision 0.13 (we alias it to
  ``torch.hub``, where ``load_state_dict_from_url`` now lives), and its ``_reset_grad`` writes
  ``param.grad.data`` after ``zero_grad()``, which since torch 2.0 sets ``.grad`` to ``None``
  (our host class zeroes with ``set_to_none=False``, the torch 1.x behaviour it was written for).

Each :class:`PeerCase` knows our method and options with the same definition, so that the
benchmark first checks that both compute the same ``.grad`` before timing them.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from benchmarks._kd import KDSetup, Step, clone_student


@dataclass
class PeerCase:
    """One peer implementation of one method.

    ``backward(setup, model)`` runs a forward of ``model`` and writes the balanced gradient into
    its ``.grad`` (used for the equivalence check); ``step(setup)`` builds the timed closure.
    ``ours`` and ``ours_options`` name our method with the same definition.
    """

    label: str
    library: str
    ours: str
    backward: Callable[[KDSetup, nn.Module], None]
    step: Callable[[KDSetup], Step]
    ours_options: dict[str, Any] = field(default_factory=dict)
    own_model: bool = False
    note: str = ""


def _version(distribution: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, Optional[str]]:
    """Installed versions of the peer distributions (``None`` when not installed)."""
    return {
        name: _version(name)
        for name in ("torchjd", "pytorch_optimizer", "LibMTL", "quadprog", "qpsolvers")
    }


def _step_from_backward(
    backward: Callable[[KDSetup, nn.Module], None], own_model: bool
) -> Callable[[KDSetup], Step]:
    def make(setup: KDSetup) -> Step:
        model = clone_student(setup) if own_model else setup.student
        optimizer = setup.sgd(model)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            backward(setup, model)
            optimizer.step()

        step.model = model  # type: ignore[attr-defined]
        return step

    return make


def _loss_list(setup: KDSetup, model: nn.Module) -> list[Tensor]:
    return list(setup.losses(*setup.forward(model)).values())


# ---------------------------------------------------------------------------------------------
# torchjd


def torchjd_cases() -> list[PeerCase]:
    from torchjd import aggregation
    from torchjd.autogram import Engine
    from torchjd.autojac import backward as jd_backward
    from torchjd.autojac import jac_to_grad

    cases = []
    for ours, aggregator_cls, weighting_cls in (
        ("mgda", aggregation.MGDA, aggregation.MGDAWeighting),
        ("upgrad", aggregation.UPGrad, aggregation.UPGradWeighting),
        ("pcgrad", aggregation.PCGrad, aggregation.PCGradWeighting),
    ):
        aggregator = aggregator_cls()

        def autojac(setup: KDSetup, model: nn.Module, aggregator: Any = aggregator) -> None:
            params = setup.params(model)
            jd_backward(_loss_list(setup, model), inputs=params)
            jac_to_grad(params, aggregator)

        cases.append(
            PeerCase(
                f"torchjd autojac {aggregator_cls.__name__}",
                "torchjd",
                ours,
                autojac,
                _step_from_backward(autojac, False),
            )
        )

        weighting = weighting_cls()
        engines: dict[int, Any] = {}

        def autogram(
            setup: KDSetup,
            model: nn.Module,
            weighting: Any = weighting,
            engines: dict[int, Any] = engines,
        ) -> None:
            # The engine hooks the model's modules: one per model, created on first use.
            if id(model) not in engines:
                engines[id(model)] = Engine(model, batch_dim=None)
            losses = torch.stack(_loss_list(setup, model))
            gramian = engines[id(model)].compute_gramian(losses)
            losses.backward(weighting(gramian))

        cases.append(
            PeerCase(
                f"torchjd autogram {weighting_cls.__name__}",
                "torchjd",
                ours,
                autogram,
                _step_from_backward(autogram, True),
                own_model=True,
                note="Engine(model, batch_dim=None): the model has BatchNorm",
            )
        )
    return cases


# ---------------------------------------------------------------------------------------------
# pytorch_optimizer


def pytorch_optimizer_cases() -> list[PeerCase]:
    from pytorch_optimizer import PCGrad

    def backward(setup: KDSetup, model: nn.Module) -> None:
        wrapper = PCGrad(torch.optim.SGD(setup.params(model), lr=0.0), reduction="sum")
        wrapper.pc_backward(_loss_list(setup, model))

    def make(setup: KDSetup) -> Step:
        wrapper = PCGrad(setup.sgd(), reduction="sum")

        def step() -> None:
            wrapper.zero_grad(set_to_none=True)
            wrapper.pc_backward(_loss_list(setup, setup.student))
            wrapper.step()

        return step

    return [
        PeerCase(
            "pytorch_optimizer PCGrad",
            "pytorch_optimizer",
            "pcgrad",
            backward,
            make,
            note="reduction='sum' (PCGrad paper); ours reduction='sum'",
        )
    ]


# ---------------------------------------------------------------------------------------------
# LibMTL


def _import_libmtl_weighting() -> Any:
    """``LibMTL.weighting`` on current torchvision (see the module docstring)."""
    if "torchvision.models.utils" not in sys.modules:
        import torchvision.models

        alias = types.ModuleType("torchvision.models.utils")
        alias.load_state_dict_from_url = torch.hub.load_state_dict_from_url  # type: ignore[attr-defined]
        sys.modules["torchvision.models.utils"] = alias
        torchvision.models.utils = alias  # type: ignore[attr-defined]
    from LibMTL import weighting

    return weighting


def libmtl_host(name: str, model: nn.Module, task_num: int, device: torch.device) -> Any:
    """A LibMTL weighting bound to ``model`` as its shared parameters (what its Trainer's model
    provides: ``task_num``, ``device``, ``rep_grad``, ``get_share_params``,
    ``zero_grad_share_params``)."""
    weighting = _import_libmtl_weighting()
    base = getattr(weighting, name)

    class Host(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.task_num = task_num
            self.task_name = [f"task{i}" for i in range(task_num)]
            self.device = device
            self.rep_grad = False
            self._shared = [model]

        def get_share_params(self) -> Any:
            return self._shared[0].parameters()

        def zero_grad_share_params(self) -> None:
            self._shared[0].zero_grad(set_to_none=False)

    return Host()


def libmtl_cases() -> list[PeerCase]:
    _import_libmtl_weighting()
    cases = []
    for name, ours, kwargs in (("MGDA", "mgda", {"mgda_gn": "none"}), ("PCGrad", "pcgrad", {})):
        hosts: dict[int, Any] = {}

        def backward(
            setup: KDSetup,
            model: nn.Module,
            name: str = name,
            kwargs: dict[str, Any] = kwargs,
            hosts: dict[int, Any] = hosts,
        ) -> None:
            if id(model) not in hosts:
                hosts[id(model)] = libmtl_host(name, model, setup.k, setup.device)
            # What LibMTL's trainer leaves before backward on torch 1.x.
            model.zero_grad(set_to_none=False)
            hosts[id(model)].backward(_loss_list(setup, model), **kwargs)

        cases.append(
            PeerCase(
                f"LibMTL {name}",
                "LibMTL",
                ours,
                backward,
                _step_from_backward(backward, False),
                note=f"kwargs {kwargs}",
            )
        )
    return cases


def all_cases() -> tuple[list[PeerCase], dict[str, str]]:
    """Every peer case that can run here, and ``library -> reason`` for those that cannot."""
    cases: list[PeerCase] = []
    missing: dict[str, str] = {}
    for library, factory in (
        ("torchjd", torchjd_cases),
        ("pytorch_optimizer", pytorch_optimizer_cases),
        ("LibMTL", libmtl_cases),
    ):
        try:
            cases += factory()
        except Exception as error:  # an optional dependency that is absent or broken is reported
            missing[library] = f"{type(error).__name__}: {error}"
    return cases, missing
