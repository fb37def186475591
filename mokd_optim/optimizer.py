"""``MultiObjectiveOptimizer``: per-objective gradients -> weights -> one combined update."""

from __future__ import annotations

import copy
import os
import sys
import types
import warnings
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Union, overload

import torch
from torch import Tensor
from torch.optim import Optimizer

from mokd_optim import distributed
from mokd_optim import gradients as grad_strategies
from mokd_optim._typing import Losses
from mokd_optim._validation import (
    ObjectiveError,
    check_flag,
    check_loss_structure,
    check_number,
    loss_problems,
    normalize_losses,
    raise_loss_problem,
    stacked_losses,
)
from mokd_optim.diagnostics import StepStats
from mokd_optim.distributed import Communication
from mokd_optim.gradients import ObjectiveGradients
from mokd_optim.methods import Method, get

BALANCE_MODES = ("global", "per_group")
_STATE_FORMAT = 1
_EXACT = ("loop", "vmap")


@dataclass
class _Window:
    """Per-objective gradients summed over the micro-batches of one accumulation window."""

    names: tuple[str, ...]
    kind: str  # "exact" or "amortized"
    gradients: ObjectiveGradients
    loss_sum: Tensor
    count: int

    def mean(self) -> tuple[ObjectiveGradients, Tensor]:
        """Gradients and loss values averaged over the window's micro-batches."""
        if self.count == 1:
            return self.gradients, self.loss_sum
        return grad_strategies.scale_gradients(
            self.gradients, 1.0 / self.count
        ), self.loss_sum / self.count


class MultiObjectiveOptimizer(Optimizer):
    """Wrap a ``torch.optim`` optimizer so that it trains on several losses at once.

    ``backward(losses)`` computes the gradient of each loss, asks the balancing ``method`` for
    weights (from the Gram matrix of the gradients and the loss values), and writes the combined
    gradient ``sum_i w_i g_i`` into ``.grad``; ``step()`` then steps the wrapped optimizer.
    Only parameters reached by two or more objectives are balanced; a parameter reached by one
    objective (a KD projection head, a task head) gets that objective's plain gradient.

    Args:
        optimizer: the ``torch.optim.Optimizer`` to step (its param groups, state and
            defaults are shared, so schedulers and ``GradScaler`` see the same objects).
        method: a registered method name (``mokd_optim.methods.available()``) or a
            :class:`~mokd_optim.methods.Method` instance.
        strategy: how per-objective gradients are obtained: ``"auto"``, ``"loop"``,
            ``"vmap"``, ``"representation"`` or ``"amortized"`` (docs/strategies.md).
            ``"auto"`` picks ``"representation"`` when ``features=`` is passed, ``"amortized"``
            for methods that need no per-objective gradients, else ``"loop"``.
        max_norm: clip the total gradient norm to this value in :meth:`step` (after
            ``GradScaler`` has unscaled it); ``None`` disables clipping.
        balance: ``"global"`` (one set of weights from all balanced parameters) or
            ``"per_group"`` (weights solved separately for each parameter group).
        validate: check that losses are finite (and positive for log-based methods) and
            gradients finite before anything is changed. Costs two host synchronisations per
            step (three with the ``"representation"`` strategy) and, on one process, almost no
            tensor work: the gradient check is read off the Gram matrix's diagonal.
        sync: synchronisation across ``torch.distributed`` ranks (docs/distributed.md):
            ``"auto"`` (default: ``"exact"`` when a process group with more than one rank is
            initialised, else ``"none"``), ``"exact"`` (per-objective gradients averaged across
            ranks, then every rank solves the same weights: the single-process result on the
            concatenated batch), ``"weights"`` (weights from local gradients, averaged; the
            combined gradient averaged as DDP does) or ``"none"`` (no collectives).
        process_group: the ``torch.distributed`` group to synchronise over (default: world).
        bucket_bytes: capacity of the buffers that gradients are flattened into for the
            collectives (one ``all_reduce`` per bucket).
        scaler: a ``torch.amp.GradScaler`` for mixed precision (docs/amp.md). Losses are scaled
            before the per-objective backward, gradients unscaled before the Gram matrix and
            the weights, and ``.grad`` receives the scaled combined gradient so that
            ``scaler.step(opt)`` unscales, checks and skips as usual.
        **method_options: options of the method, e.g. ``step="anchor", anchor="task"``.

    Raises:
        TypeError: ``optimizer`` is not a ``torch.optim.Optimizer`` or is already wrapped, or
            ``scaler`` is not a ``GradScaler``.
        ValueError: unknown method, strategy, balance or sync mode, or a bad option value.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        method: Union[str, Method] = "mokd",
        *,
        strategy: str = "auto",
        max_norm: Optional[float] = None,
        balance: str = "global",
        validate: bool = True,
        sync: str = "auto",
        process_group: Optional[Any] = None,
        bucket_bytes: int = distributed.DEFAULT_BUCKET_BYTES,
        scaler: Optional[torch.amp.GradScaler] = None,
        **method_options: Any,
    ) -> None:
        if isinstance(optimizer, MultiObjectiveOptimizer):
            raise TypeError(
                "the optimizer is already a MultiObjectiveOptimizer; wrap the base optimizer once"
            )
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        if strategy not in grad_strategies.STRATEGIES:
            raise ValueError(
                f"unknown strategy {strategy!r}; choose one of {grad_strategies.STRATEGIES}"
            )
        if balance not in BALANCE_MODES:
            raise ValueError(f"unknown balance mode {balance!r}; choose one of {BALANCE_MODES}")
        if max_norm is not None:
            check_number("MultiObjectiveOptimizer", "max_norm", max_norm, low=0.0, low_open=True)
        check_flag("MultiObjectiveOptimizer", "validate", validate)
        if sync not in distributed.SYNC_MODES:
            raise ValueError(f"unknown sync mode {sync!r}; choose one of {distributed.SYNC_MODES}")
        check_number(
            "MultiObjectiveOptimizer",
            "bucket_bytes",
            bucket_bytes,
            low=0,
            low_open=True,
            integer=True,
        )
        if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
            raise TypeError(
                f"scaler must be a torch.amp.GradScaler or None, got {type(scaler).__name__}"
            )
        self.optimizer = optimizer
        self.method = get(method, **method_options)
        if strategy == "amortized" and self.method.needs_gradients:
            raise ValueError(
                f"method {self.method.name!r} needs per-objective gradients and cannot run with the "
                "'amortized' strategy; use 'loop', 'vmap' or 'representation' (or an amortized method)"
            )
        self.strategy = strategy
        self.max_norm = max_norm
        self.balance = balance
        self.validate = validate
        self.sync = sync
        self.process_group = process_group
        self.bucket_bytes = bucket_bytes
        self.scaler = scaler
        # One method instance per parameter group in per-group mode (their state is separate).
        self._methods: list[Method] = [self.method]
        self._bound_names: Optional[tuple[str, ...]] = None
        self._vmap_supported = True
        self._last_losses: Optional[Tensor] = None
        self._last_stats: Optional[StepStats] = None
        self._window: Optional[_Window] = None
        # A GradScaler may skip the step after a backward; amortised methods must then not
        # learn from that backward's losses (set by a closing backward under AMP, cleared by step).
        self._awaiting_step = False
        self._communication = Communication()
        # step() warns once when no backward() ran since the last step but .grad is set: the
        # classic slip `loss.backward(); opt.step()`, which trains without balancing anything.
        self._backward_since_step = False
        self._warned_bypass = False
        # The last step's parameter change, by id(param), for a method that reads it
        # (needs_previous_step, e.g. MoKD(lengthen="hypergradient")): one copy of the parameters.
        self._previous_change: dict[int, Tensor] = {}
        # What torch.optim.Optimizer.__init__ would set up, without taking over the param
        # groups: those belong to the wrapped optimizer and are exposed through properties.
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()

    # torch.optim.Optimizer surface, shared with the wrapped optimizer ---------------------

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property
    def state(self) -> Any:
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    @property
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    @property
    def last_stats(self) -> Optional[StepStats]:
        """The :class:`StepStats` of the most recent :meth:`backward` call that solved weights."""
        return self._last_stats

    @property
    def last_communication(self) -> Communication:
        """Collectives and bytes sent by the most recent :meth:`backward` (or window)."""
        return self._communication

    @property
    def accumulating(self) -> bool:
        """True while an accumulation window is open (``backward(..., accumulate=True)`` was
        called and no closing ``backward`` or :meth:`zero_grad` followed)."""
        return self._window is not None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients of the wrapped optimizer and drop an open accumulation window."""
        self._window = None
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._patch_step_function()

    def __repr__(self) -> str:
        options = [f"method={self.method!r}", f"strategy={self.strategy!r}"]
        if self.max_norm is not None:
            options.append(f"max_norm={self.max_norm!r}")
        if self.balance != "global":
            options.append(f"balance={self.balance!r}")
        if self.sync != "auto":
            options.append(f"sync={self.sync!r}")
        if self.scaler is not None:
            options.append("scaler=GradScaler(...)")
        base = repr(self.optimizer).replace("\n", "\n  ")
        return f"MultiObjectiveOptimizer({', '.join(options)},\n  optimizer={base})"

    # Training --------------------------------------------------------------------------

    def _trainable(self) -> tuple[list[Tensor], list[int]]:
        params: list[Tensor] = []
        group_of: list[int] = []
        for index, group in enumerate(self.optimizer.param_groups):
            for param in group["params"]:
                if param.requires_grad:
                    params.append(param)
                    group_of.append(index)
        return params, group_of

    def _resolve_strategy(self, features: Optional[Sequence[Tensor]]) -> str:
        strategy = self.strategy
        if strategy == "auto":
            if features is not None:
                return "representation"
            return "loop" if self.method.needs_gradients else "amortized"
        if strategy == "representation" and features is None:
            raise ValueError(
                "the 'representation' strategy needs the shared tensor: call backward(losses, features=z)"
            )
        if features is not None and strategy != "representation":
            warnings.warn(
                f"features= is only used by the 'representation' strategy; strategy {strategy!r} ignores it",
                stacklevel=3,
            )
        if strategy == "vmap" and not self._vmap_supported:
            return "loop"
        return strategy

    def _bind(self, names: tuple[str, ...], num_groups: int) -> None:
        if self.balance == "per_group" and len(self._methods) != num_groups:
            self._methods = [self.method] + [
                copy.deepcopy(self.method) for _ in range(num_groups - 1)
            ]
            self._bound_names = None
        if names != self._bound_names:
            for method in self._methods:
                method.bind(names)
            self._bound_names = names

    def _check_window(self, names: tuple[str, ...], strategy: str, accumulate: bool) -> None:
        """Refuse a call that cannot join the open accumulation window (before any change)."""
        if strategy == "representation" and (accumulate or self._window is not None):
            raise ValueError(
                "gradient accumulation needs per-objective parameter gradients, which the 'representation' "
                "strategy does not compute; use strategy='loop' (weights solved once per step), or call "
                "backward(losses, features=...) without accumulate= for every micro-batch (each micro-batch "
                "is then balanced separately and .grad sums them, as autograd does)"
            )
        window = self._window
        if window is None:
            return
        if names != window.names:
            raise ValueError(
                f"objectives {list(names)} differ from {list(window.names)} of the open accumulation window; "
                "call zero_grad() to drop the window"
            )
        kind = "exact" if strategy in _EXACT else strategy
        if kind != window.kind:
            raise ValueError(
                f"strategy {strategy!r} cannot join an accumulation window opened with the {window.kind!r} strategy"
            )

    def _placement(
        self, params: Sequence[Tensor], groups: Sequence[int]
    ) -> dict[int, tuple[int, int]]:
        return {id(p): (index, group) for index, (p, group) in enumerate(zip(params, groups))}

    def _merged_window(
        self,
        names: tuple[str, ...],
        kind: str,
        gradients: ObjectiveGradients,
        loss_values: Tensor,
        placement: dict[int, tuple[int, int]],
    ) -> _Window:
        """The open window with this micro-batch added (the optimizer's window is not changed:
        the caller assigns it once every check has passed)."""
        window = self._window
        if window is None:
            window = _Window(
                names=names, kind=kind, gradients=gradients, loss_sum=loss_values, count=1
            )
        else:
            merged = grad_strategies.merge_gradients(
                window.gradients, gradients, placement, len(names)
            )
            window = _Window(
                names=names,
                kind=kind,
                gradients=merged,
                loss_sum=window.loss_sum + loss_values,
                count=window.count + 1,
            )
        return window

    def _loss_scale(self, device: torch.device) -> Optional[Tensor]:
        """The ``GradScaler``'s current scale as a 0-dim float32 tensor on ``device`` (no host
        synchronisation), or ``None`` without an enabled scaler."""
        if self.scaler is None or not self.scaler.is_enabled():
            return None
        return self.scaler.scale(torch.ones((), dtype=torch.float32, device=device))

    @staticmethod
    def _amp_factor(scale: Tensor, gram: Optional[Tensor], loss_values: Tensor) -> Tensor:
        """``scale``, or NaN when a per-objective gradient or a loss is not finite.

        Multiplying the written update by this factor re-applies the loss scale (what
        ``GradScaler.unscale_`` expects to find in ``.grad``) and, after an overflow, makes the
        whole update NaN so that ``scaler.step`` skips it. A non-finite entry of a gradient
        block always makes its Gram diagonal (a sum of squares) non-finite, so the check costs
        no pass over the gradients.
        """
        bad = ~torch.isfinite(loss_values).all()
        if gram is not None:
            bad = bad | ~torch.isfinite(torch.diagonal(gram, dim1=-2, dim2=-1)).all()
        return torch.where(bad, torch.full_like(scale, float("nan")), scale)

    def _gram_for_methods(self, gram: Tensor, scale: Optional[Tensor]) -> Tensor:
        """The Gram matrix the methods see.

        Under AMP an overflow makes the Gram matrix non-finite; :meth:`_amp_factor` then turns
        the update into NaN so that the scaler skips the step, and the methods get the identity
        in its place so that none of them raises (or learns) from the skipped step. Without a
        scaler, ``validate=True`` has already refused non-finite gradients
        (:meth:`_check_gradients`).
        """
        if scale is None:
            return gram
        finite = torch.isfinite(gram).flatten(-2).all(dim=-1)
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        return torch.where(finite[..., None, None], gram, eye)

    def _check_loss_values(
        self,
        names: tuple[str, ...],
        tensors: Sequence[Tensor],
        amp: bool,
        sync: str,
        values: Optional[Tensor] = None,
    ) -> None:
        """``validate=True``: refuse non-finite losses (and non-positive ones for log-based
        methods) before anything changes. Under ``torch.distributed`` the ranks first agree
        (one small collective): every rank raises the same error, naming the objective and the
        rank, and a rank whose objectives differ in names or order is refused on every rank."""
        codes, read = loss_problems(
            tensors, positive=bool(self.method.log_losses), allow_nonfinite=amp, values=values
        )
        if sync == "none":
            for name, code, value in zip(names, codes, read):
                raise_loss_problem(name, code, value)
            return
        signature = zlib.crc32("\x00".join(names).encode("utf-8"))
        first = next((k for k, code in enumerate(codes) if code), -1)
        # Fixed width, so that ranks with a different number of objectives still agree.
        summary: list[float] = [signature, len(names), first, codes[first] if first >= 0 else 0]
        summary.append(read[first] if first >= 0 else 0.0)
        table = distributed.gather_rows(summary, group=self.process_group).tolist()
        if any(row[:2] != table[0][:2] for row in table):
            everyone = distributed.all_gather_objects(list(names), group=self.process_group)
            listing = "; ".join(f"rank {r}: {n}" for r, n in enumerate(everyone))
            raise ValueError(
                f"ranks pass different objectives or the same ones in another order ({listing}); "
                "per-objective gradients are averaged across ranks position by position, so every "
                "rank must pass the same names in the same order (build the losses dict in a fixed order)"
            )
        for r, (_, _, index, code, value) in enumerate(table):
            if index >= 0:
                raise_loss_problem(names[int(index)], int(code), value, where=f" on rank {r}")

    def _check_gradients(
        self,
        names: tuple[str, ...],
        bad: Tensor,
        gram: Optional[Tensor],
        sync: str,
        layout: Optional[list[int]] = None,
    ) -> None:
        """``validate=True``: refuse non-finite gradients before anything is written.

        ``bad``: ``(K,)`` bool, objective ``k`` produced a non-finite gradient entry (on any
        parameter, balanced or not). ``gram``: the Gram matrix whose diagonal must be finite
        (with finite gradients, a diagonal entry overflows only when a squared norm exceeds
        the float64 range). ``layout``: the structure every rank must share. One host
        synchronisation; under ``torch.distributed`` (``sync`` not ``"none"``) one small
        collective, so every rank raises the same error together.
        """
        k_total = len(names)
        flags = bad.to(torch.float64).reshape(k_total)
        overflow = torch.zeros_like(flags)
        if gram is not None:
            diagonal = torch.diagonal(gram, dim1=-2, dim2=-1).reshape(-1, k_total)
            overflow = (~torch.isfinite(diagonal)).any(dim=0).to(flags)
        local = torch.cat([flags, overflow.to(flags.device)]).cpu().tolist()
        if sync == "none":
            table = [local]
        else:
            shape = list(layout) if layout is not None else []
            table = distributed.gather_rows([*shape, *local], group=self.process_group).tolist()
            shapes = [row[: len(shape)] for row in table]
            if any(row != shapes[0] for row in shapes):
                low = [int(min(column)) for column in zip(*shapes)]
                high = [int(max(column)) for column in zip(*shapes)]
                raise RuntimeError(
                    f"ranks disagree on which objectives reach which parameters (min {low} vs max {high}): "
                    "every rank must compute the same objectives from the same parameters (data-dependent "
                    "control flow that skips a head or a loss on some ranks is not supported)"
                )
            table = [row[len(shape) :] for row in table]
        for r, row in enumerate(table):
            where = f" on rank {r}" if sync != "none" else ""
            for k, name in enumerate(names):
                if row[k]:
                    raise ObjectiveError(
                        name,
                        f"its gradient is not finite{where} although the loss is (an inf or NaN in the backward "
                        "pass, e.g. sqrt or log of an exact 0, or an overflow); nothing was changed. Guard the "
                        "operation (clamp its input), lower the learning rate, or attach a GradScaler under "
                        "mixed precision",
                    )
            for k, name in enumerate(names):
                if row[k_total + k]:
                    raise ObjectiveError(
                        name,
                        f"its gradient is finite but its squared norm overflows the float64 Gram matrix{where} "
                        "(a gradient norm above about 1e154); nothing was changed. Scale this loss down",
                    )

    def _check_folded(
        self, names: tuple[str, ...], gradients: ObjectiveGradients, gram: Tensor
    ) -> None:
        """``validate=True`` on one process: refuse non-finite gradients before anything is
        written, at the cost of one host synchronisation and no pass over the balanced
        gradients. The Gram diagonal (squared norms) is finite when every balanced gradient is,
        and one fused norm covers the exclusive ones; only when something reads non-finite are
        the gradients searched exactly (:meth:`_check_gradients` then raises, naming the
        objective, exactly as the unfolded check does; a finite exclusive gradient whose norm
        merely overflowed its dtype passes, as before)."""
        exclusive = [g for _, g, _ in gradients.exclusive]
        if bool(grad_strategies.all_finite(exclusive, gram)):
            return
        bad = grad_strategies.nonfinite_objectives(gradients, len(names))
        self._check_gradients(names, bad, gram, "none")

    @overload
    def backward(
        self,
        losses: Losses,
        *,
        features: Optional[Union[Tensor, Sequence[Tensor]]] = None,
        retain_graph: bool = False,
        accumulate: Literal[False] = False,
    ) -> StepStats: ...

    @overload
    def backward(
        self,
        losses: Losses,
        *,
        features: Optional[Union[Tensor, Sequence[Tensor]]] = None,
        retain_graph: bool = False,
        accumulate: bool = ...,
    ) -> Optional[StepStats]: ...

    def backward(
        self,
        losses: Losses,
        *,
        features: Optional[Union[Tensor, Sequence[Tensor]]] = None,
        retain_graph: bool = False,
        accumulate: bool = False,
    ) -> Optional[StepStats]:
        """Write the balanced combination of the losses' gradients into ``.grad``.

        Args:
            losses: mapping name -> scalar loss, or a sequence of scalar losses.
            features: shared tensor(s) for the ``"representation"`` strategy (e.g. the student
                logits): weights are computed from the gradients at these tensors and one
                backward is run.
            retain_graph: keep the autograd graph after the call.
            accumulate: this is not the last micro-batch of the optimizer step: its
                per-objective gradients and loss values are added to an accumulation window
                and nothing is written to ``.grad``. The next call with ``accumulate=False``
                closes the window: gradients and losses are averaged over its micro-batches
                (so pass the losses of each micro-batch as they are, not divided by the number
                of micro-batches), the weights are solved once, and the combined gradient is
                written. ``zero_grad()`` drops an open window (docs/accumulation.md).

        Returns:
            :class:`StepStats` with the weights and the conflict/dominance statistics, or
            ``None`` for ``accumulate=True`` (no weights are solved yet).

        Raises:
            ObjectiveError: a loss is not a scalar, not finite (except under AMP, where the
                scaler skips the step), does not require grad, is not positive for a
                log-based method, or reaches no parameter of the optimizer.
            ValueError: empty losses, losses on different devices, ``"representation"``
                without ``features`` or with ``accumulate``, objectives that differ from the
                open accumulation window, or method options naming unknown objectives.
            RuntimeError: with ``validate=True`` under ``torch.distributed``, ranks whose
                objectives reach different parameters (a configuration error: parameters,
                ``.grad`` and the optimizer state are unchanged, an open accumulation window
                is dropped).
            For the other errors parameters, ``.grad``, the accumulation window and the
            optimizer state are unchanged.
        """
        names, tensors = normalize_losses(losses)
        amp = self.scaler is not None and self.scaler.is_enabled()
        check_loss_structure(names, tensors)
        sync = distributed.resolve_sync(self.sync, self.process_group)
        raw_losses = stacked_losses(tensors)
        if self.validate:
            self._check_loss_values(names, tensors, amp, sync, raw_losses)
        feature_list: Optional[list[Tensor]] = None
        if features is not None:
            feature_list = [features] if isinstance(features, Tensor) else list(features)
        params, group_of = self._trainable()
        if not params:
            raise ValueError("the optimizer has no parameters that require grad")
        num_groups = len(self.optimizer.param_groups) if self.balance == "per_group" else 1
        strategy = self._resolve_strategy(feature_list)
        self._check_window(names, strategy, accumulate)
        self._bind(names, num_groups)
        loss_values = raw_losses.to(
            torch.float32 if tensors[0].device.type == "mps" else torch.float64
        )
        if amp and self._awaiting_step:
            # The previous backward's step never ran: the scaler found an overflow and skipped it.
            for method in self._methods:
                method.discard_pending()
            self._awaiting_step = False
        scale = self._loss_scale(tensors[0].device) if amp else None
        scaled = tensors if scale is None else [t * scale for t in tensors]
        self._communication = Communication()
        if strategy == "amortized":
            stats = self._backward_amortized(
                names, scaled, loss_values, params, retain_graph, accumulate, scale, sync
            )
        elif strategy == "representation":
            assert feature_list is not None
            stats = self._backward_representation(
                names, scaled, loss_values, feature_list, params, retain_graph, scale, sync
            )
        else:
            stats = self._backward_exact(
                names,
                scaled,
                loss_values,
                params,
                group_of,
                num_groups,
                strategy,
                retain_graph,
                accumulate,
                scale,
                sync,
            )
        if stats is not None:
            self._last_losses = stats.losses
            self._last_stats = stats
            self._awaiting_step = amp
        self._backward_since_step = True
        return stats

    def _all_reduce_mean(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        reduced, sent = distributed.all_reduce_mean(
            tensors, group=self.process_group, bucket_bytes=self.bucket_bytes
        )
        self._communication = self._communication + sent
        return reduced

    def _check_reach(
        self, names: Sequence[str], tensors: Sequence[Tensor], params: Sequence[Tensor]
    ) -> list[list[bool]]:
        reach = grad_strategies.reach_matrix(tensors, params)
        for name, row in zip(names, reach):
            if not any(row):
                raise ObjectiveError(
                    name,
                    "the loss reaches no parameter of the optimizer; check that it is computed from the model being optimized",
                )
        return reach

    @staticmethod
    def _objectives_of(bad_params: Tensor, reach: list[list[bool]]) -> Tensor:
        """``(K,)`` bool: objective ``k`` reaches a parameter flagged in ``bad_params`` ``(n,)``."""
        matrix = torch.tensor(reach, dtype=torch.bool, device=bad_params.device)
        return (matrix & bad_params[None, :]).any(dim=1)

    def _guarded_backward(
        self,
        names: tuple[str, ...],
        params: list[Tensor],
        reach: Optional[list[list[bool]]],
        sync: str,
        run: Callable[[], None],
    ) -> None:
        """Run a backward that writes ``.grad`` directly (one weighted backward), then, with
        ``validate=True`` (``reach`` given), refuse a non-finite result: ``.grad`` is put back
        as it was (gradients that existed before are copied first; the usual ``.grad = None``
        after ``zero_grad()`` costs nothing) and :class:`ObjectiveError` names an objective
        that reaches the parameter. Method state is restored by the caller."""
        if reach is None:
            run()
            return
        previous = [p.grad for p in params]
        copies = [None if g is None else g.detach().clone() for g in previous]
        run()
        try:
            written = [p.grad for p in params]
            if sync == "none" and bool(
                grad_strategies.all_finite([g for g in written if g is not None])
            ):
                return  # one fused norm and one host synchronisation; exact search otherwise
            bad_params = grad_strategies.nonfinite_tensors(written)
            self._check_gradients(names, self._objectives_of(bad_params, reach), None, sync)
        except BaseException:
            for param, old, copy_ in zip(params, previous, copies):
                if old is None or copy_ is None:
                    param.grad = None
                else:
                    old.copy_(copy_)
                    param.grad = old
            raise

    def _restore_methods(self, states: Optional[list[dict[str, Any]]]) -> None:
        if states is not None:
            for method, state in zip(self._methods, states):
                method.load_state_dict(state)

    def _backward_amortized(
        self,
        names: tuple[str, ...],
        tensors: list[Tensor],
        loss_values: Tensor,
        params: list[Tensor],
        retain_graph: bool,
        accumulate: bool,
        scale: Optional[Tensor],
        sync: str,
    ) -> Optional[StepStats]:
        if self.balance == "per_group":
            raise ValueError(
                "balance='per_group' needs per-objective gradients; use strategy 'loop' or 'vmap'"
            )
        check = self.validate and scale is None
        reach = self._check_reach(names, tensors, params) if self.validate else None
        if sync != "none":
            # Every rank must feed its method the same numbers, or method states drift apart.
            loss_values = self._all_reduce_mean([loss_values])[0]
        # The weights may move the method's state (amortised logits): kept to undo on error.
        states = [method.state_dict() for method in self._methods] if check else None
        weights = self.method.weights(None, loss_values)
        if not accumulate and self._window is None:
            # One weighted backward; under DDP its reducer averages the gradients. The losses
            # are already scaled: the factor only turns the update into NaN after an overflow.
            applied = (
                weights
                if scale is None
                else weights * (self._amp_factor(scale, None, loss_values) / scale)
            )
            try:
                self._guarded_backward(
                    names,
                    params,
                    reach if check else None,
                    sync,
                    lambda: grad_strategies.weighted_backward(
                        tensors, applied, params, retain_graph=retain_graph
                    ),
                )
            except BaseException:
                self._restore_methods(states)
                raise
            return StepStats(
                names=names,
                losses=loss_values,
                weights=weights,
                strategy="amortized",
                info=dict(self.method.info),
            )
        gradients = grad_strategies.weighted_gradients(
            tensors, weights, params, retain_graph=retain_graph
        )
        if check:
            assert reach is not None
            position = {id(p): j for j, p in enumerate(params)}
            flags = torch.zeros(len(params), dtype=torch.bool)
            if gradients.combined:
                found = grad_strategies.nonfinite_tensors([g for _, g in gradients.combined])
                index = torch.tensor([position[id(p)] for p, _ in gradients.combined])
                flags = flags.to(found.device).index_copy(0, index.to(found.device), found)
            try:
                self._check_gradients(names, self._objectives_of(flags, reach), None, sync)
            except BaseException:
                self._restore_methods(states)
                raise
        if scale is not None:
            gradients = grad_strategies.scale_gradients(
                gradients, scale.double().reciprocal().float()
            )
        window = self._merged_window(
            names, "amortized", gradients, loss_values, self._placement(params, [0] * len(params))
        )
        if accumulate:
            self._window = window
            return None
        self._window = None
        total, mean_losses = window.mean()
        if sync != "none":
            if self.validate:
                distributed.check_same_layout(
                    total.layout(), "the parameters the losses reach", group=self.process_group
                )
            total = total.with_tensors(self._all_reduce_mean(total.tensors()))
        factor = None if scale is None else self._amp_factor(scale, None, mean_losses)
        no_weights = torch.ones(1, len(names), dtype=loss_values.dtype, device=loss_values.device)
        grad_strategies.accumulate_grads(grad_strategies.combine(total, no_weights, factor=factor))
        return StepStats(
            names=names,
            losses=mean_losses,
            weights=weights,
            strategy="amortized",
            info=dict(self.method.info),
        )

    def _backward_representation(
        self,
        names: tuple[str, ...],
        tensors: list[Tensor],
        loss_values: Tensor,
        features: list[Tensor],
        params: list[Tensor],
        retain_graph: bool,
        scale: Optional[Tensor],
        sync: str,
    ) -> StepStats:
        if self.balance == "per_group":
            raise ValueError(
                "balance='per_group' is not available with the 'representation' strategy"
            )
        for index, feature in enumerate(features):
            if not isinstance(feature, Tensor) or not feature.requires_grad:
                raise ValueError(
                    f"features[{index}] must be a tensor that requires grad (the shared representation the losses are computed from)"
                )
        check = self.validate and scale is None
        reach = self._check_reach(names, tensors, params) if self.validate else None
        per_objective = grad_strategies.representation_gradients(tensors, features)
        for name, grads in zip(names, per_objective):
            if grads is None:
                raise ObjectiveError(
                    name, "the loss does not depend on the tensors passed as features="
                )
        blocks = grad_strategies.stack_feature_blocks(per_objective)  # type: ignore[arg-type]
        if scale is not None:
            # Unscale in float32 at least: 1/scale times a half-precision gradient could underflow.
            inverse = scale.double().reciprocal().float()
            blocks = [
                block.to(torch.promote_types(block.dtype, torch.float32)) * inverse
                for block in blocks
            ]
        k_total = len(tensors)
        gram = grad_strategies.gram_matrix(
            blocks, [0] * len(blocks), 1, k_total, loss_values.device
        )[0]
        # The Gram diagonal holds the squared norm of every feature gradient: finite unless an
        # entry is not (or a norm overflows); the exact search runs only then (one process).
        if check and (sync != "none" or not bool(grad_strategies.all_finite([], gram))):
            at_features = grad_strategies.ObjectiveGradients(
                params=list(features),
                blocks=list(blocks),
                groups=[0] * len(blocks),
                reached=[True] * k_total,
            )
            bad = grad_strategies.nonfinite_objectives(at_features, k_total)
            self._check_gradients(names, bad, gram, sync)
        if sync == "exact":
            # Rows of the shared tensor belong to different samples on different ranks, so the
            # Gram matrix of the global batch is the sum of the local ones, scaled by 1/W^2
            # for losses averaged over ranks: K^2 + K numbers instead of the feature gradients.
            size = distributed.world_size(self.process_group)
            packed, sent = distributed.all_reduce_sum(
                torch.cat([gram.reshape(-1), loss_values]), group=self.process_group
            )
            self._communication = self._communication + sent
            gram = packed[: k_total * k_total].reshape(k_total, k_total) / size**2
            loss_values = packed[k_total * k_total :] / size
        states = [method.state_dict() for method in self._methods] if check else None
        weights = self.method.weights(self._gram_for_methods(gram, scale), loss_values)
        if sync == "weights":
            weights = self._all_reduce_mean([weights])[0]
        applied = weights if scale is None else weights * self._amp_factor(scale, gram, loss_values)
        try:
            self._guarded_backward(
                names,
                params,
                reach if check else None,
                sync,
                lambda: grad_strategies.representation_backward(
                    tensors, features, blocks, applied, params, retain_graph=retain_graph
                ),
            )
        except BaseException:
            self._restore_methods(states)
            raise
        return StepStats(
            names=names,
            losses=loss_values,
            weights=weights,
            strategy="representation",
            gram=gram,
            info=dict(self.method.info),
        )

    def _backward_exact(
        self,
        names: tuple[str, ...],
        tensors: list[Tensor],
        loss_values: Tensor,
        params: list[Tensor],
        group_of: list[int],
        num_groups: int,
        strategy: str,
        retain_graph: bool,
        accumulate: bool,
        scale: Optional[Tensor],
        sync: str,
    ) -> Optional[StepStats]:
        groups = group_of if self.balance == "per_group" else [0] * len(params)
        result = None
        if strategy == "vmap":
            result = grad_strategies.vmap_gradients(
                tensors, params, groups, retain_graph=retain_graph
            )
            if result is None:
                self._vmap_supported = False
                warnings.warn(
                    "the model does not support batched (vmap) backward; falling back to the 'loop' strategy",
                    stacklevel=3,
                )
                strategy = "loop"
        if result is None:
            try:
                result = grad_strategies.loop_gradients(
                    tensors, params, groups, retain_graph=retain_graph
                )
            except grad_strategies.SparseGradientError as error:
                raise ObjectiveError(
                    names[error.objective],
                    f"{error}; the {strategy!r} strategy needs dense per-objective gradients and nothing was "
                    "changed. Use nn.Embedding(..., sparse=False), or strategy='representation' "
                    "(backward(losses, features=...)) or an amortised method, whose single backward leaves "
                    "sparse .grad as autograd does",
                ) from None
        for name, reached in zip(names, result.reached):
            if not reached:
                raise ObjectiveError(
                    name,
                    "the loss reaches no parameter of the optimizer; check that it is computed from the model being optimized",
                )
        # validate=True: which objectives produced an inf/NaN gradient entry, on any parameter
        # (balanced or exclusive); checked before anything is written or accumulated. On one
        # process without accumulation the check is folded into the Gram matrix (its diagonal
        # holds every balanced gradient's squared norm): see _check_folded.
        check = self.validate and scale is None
        folded = check and sync == "none" and not accumulate and self._window is None
        bad = (
            grad_strategies.nonfinite_objectives(result, len(names))
            if check and not folded
            else None
        )
        if scale is not None:
            result = grad_strategies.scale_gradients(result, scale.double().reciprocal().float())
        closing: Optional[_Window] = None
        if accumulate or self._window is not None:
            window = self._merged_window(
                names, "exact", result, loss_values, self._placement(params, groups)
            )
            if accumulate:
                if bad is not None:
                    self._check_gradients(names, bad, None, sync)
                self._window = window
                return None
            closing = window
            result, loss_values = window.mean()
        if sync == "exact":
            if bad is not None:
                self._check_gradients(names, bad, None, sync, layout=result.layout())
            elif sync != "none" and self.validate:
                distributed.check_same_layout(
                    result.layout(),
                    "which objectives reach which parameters",
                    group=self.process_group,
                )
            reduced = self._all_reduce_mean([*result.tensors(), loss_values])
            result, loss_values = result.with_tensors(reduced[:-1]), reduced[-1]
        gram = grad_strategies.gram_matrix(
            result.blocks, result.groups, num_groups, len(tensors), loss_values.device
        )
        single = len(names) == 1
        if single:
            # One objective: nothing is balanced (every parameter is its own and gets its plain
            # gradient), so the statistics describe that update: its squared norm, weight 1.
            group_by_param = {id(p): g for p, g in zip(params, groups)}
            extra = torch.zeros_like(gram)
            for param, grad, _ in result.exclusive:
                flat = grad.reshape(-1)
                flat = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
                extra[group_by_param[id(param)], 0, 0] += torch.dot(flat, flat).to(extra)
            gram = gram + extra
        if folded:
            self._check_folded(names, result, gram)
        elif bad is not None:
            if sync == "exact":
                self._check_gradients(names, torch.zeros_like(bad), gram, "none")
            else:
                self._check_gradients(names, bad, gram, sync, layout=result.layout())
        elif sync == "weights" and self.validate:
            distributed.check_same_layout(
                result.layout(), "which objectives reach which parameters", group=self.process_group
            )
        if closing is not None:
            self._window = None
        method_gram = self._gram_for_methods(gram, scale)
        self._observe_previous_step(result, num_groups, len(names), loss_values.device)
        if num_groups == 1:
            weights = self._methods[0].weights(method_gram[0], loss_values)[None]
        else:
            weights = torch.stack(
                [
                    method.weights(method_gram[g], loss_values)
                    for g, method in enumerate(self._methods[:num_groups])
                ]
            )
        if sync == "weights":
            weights = self._all_reduce_mean([weights])[0]
        if single and self.method.needs_gradients:
            weights = torch.ones_like(weights)  # the plain gradient is what is written
        exclusive_weights = None if self.method.needs_gradients else weights[0]
        factor = None if scale is None else self._amp_factor(scale, gram, loss_values)
        pairs = grad_strategies.combine(
            result, weights, exclusive_weights=exclusive_weights, factor=factor
        )
        if sync == "weights":
            pairs = list(zip([p for p, _ in pairs], self._all_reduce_mean([g for _, g in pairs])))
        grad_strategies.accumulate_grads(pairs)
        if self.balance == "global":
            return StepStats(
                names=names,
                losses=loss_values,
                weights=weights[0],
                strategy=strategy,
                gram=gram[0],
                info=dict(self._methods[0].info),
            )
        info: dict[str, Tensor] = {}
        for key in self._methods[0].info:
            info[key] = torch.stack([method.info[key] for method in self._methods[:num_groups]])
        return StepStats(
            names=names,
            losses=loss_values,
            weights=weights,
            strategy=strategy,
            gram=gram,
            info=info,
        )

    def _tracks_previous_step(self) -> bool:
        return any(method.needs_previous_step for method in self._methods)

    def _observe_previous_step(
        self, result: Any, num_groups: int, num_objectives: int, device: torch.device
    ) -> None:
        """Tell a method that reads it the coming step's learning rate and how this step's
        gradients point against the last parameter change (nothing before the first step, or
        for a method that does not). Each change is reported once: a backward that no step
        followed (a ``GradScaler`` skipped it) leaves the next one nothing to report."""
        if not self._tracks_previous_step():
            return
        lr = self.optimizer.param_groups[0].get("lr") if self.optimizer.param_groups else None
        for method in self._methods[:num_groups]:
            if method.needs_previous_step:
                method.observe_learning_rate(None if lr is None else float(lr))
        if not self._previous_change:
            return
        products, sq_norms = grad_strategies.change_products(
            result, self._previous_change, num_groups, num_objectives, device
        )
        self._previous_change = {}
        for group, method in enumerate(self._methods[:num_groups]):
            if method.needs_previous_step:
                method.observe_previous_step(products[group], sq_norms[group])

    def _step_tracking_change(self, step: Callable[[], Any]) -> Any:
        """Run the wrapped optimizer's ``step`` and, for a method that reads it, keep the
        parameter change it made (one copy of the parameters before the step)."""
        if not self._tracks_previous_step():
            return step()
        params, _ = self._trainable()
        with torch.no_grad():
            before = [p.detach().clone() for p in params]
        result = step()
        with torch.no_grad():  # the change written into the copies: one copy at any time
            changes = [b.neg_().add_(p.detach()) for p, b in zip(params, before)]
        self._previous_change = {id(p): change for p, change in zip(params, changes)}
        return result

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """Clip (``max_norm``) and step the wrapped optimizer.

        For methods that learn from the losses after the step (``needs_losses_after``), a
        ``closure`` is called after the step under ``torch.no_grad()`` and returns the
        losses on the same batch (mapping or sequence), which are passed to :meth:`observe`,
        or ``None`` to observe nothing (e.g. ``observe="next_batch"``).
        For every other method ``closure`` is handed to the wrapped optimizer (torch
        semantics, e.g. LBFGS). With a ``GradScaler`` call ``scaler.step(opt)`` instead: it
        unscales ``.grad``, skips the step after an overflow and calls this method otherwise.

        Warns (once per optimizer) when no :meth:`backward` ran since the last step but some
        ``.grad`` is set, e.g. after ``loss.backward()``: that gradient is stepped as it is and
        nothing is balanced.

        Raises:
            RuntimeError: an accumulation window is open (the last ``backward`` had
                ``accumulate=True``); nothing is changed.
        """
        if self._window is not None:
            raise RuntimeError(
                "an accumulation window is open: the last backward() had accumulate=True, so no gradient "
                "was written; close the window with backward(losses, accumulate=False) before step()"
            )
        if not self._backward_since_step and not self._warned_bypass and closure is None:
            self._warn_if_bypassed()
        self._backward_since_step = False
        self._awaiting_step = False
        if self.max_norm is not None:
            grads = [
                p
                for group in self.optimizer.param_groups
                for p in group["params"]
                if p.grad is not None
            ]
            if grads:
                torch.nn.utils.clip_grad_norm_(grads, self.max_norm)
        if closure is not None and self.method.needs_losses_after:
            result = self._step_tracking_change(self.optimizer.step)
            with torch.no_grad():
                losses_after = closure()
            if losses_after is not None:  # a framework's bookkeeping closure (Lightning) has none
                self.observe(losses_after)
            return result
        if closure is not None:
            return self._step_tracking_change(lambda: self.optimizer.step(closure))
        return self._step_tracking_change(self.optimizer.step)

    def _warn_if_bypassed(self) -> None:
        """Warn (once) that ``.grad`` was written without :meth:`backward` since the last step."""
        if any(
            p.grad is not None for group in self.optimizer.param_groups for p in group["params"]
        ):
            self._warned_bypass = True
            warnings.warn(
                "MultiObjectiveOptimizer.step() found gradients but no backward(losses) since the "
                "last step (e.g. after loss.backward()): they are applied as they are and nothing "
                f"is balanced by {self.method.name!r}. Call opt.backward({{'task': ..., 'kd': ...}}) "
                "instead of loss.backward(), after opt.zero_grad().",
                UserWarning,
                stacklevel=_caller_stacklevel(),
            )

    def observe(self, losses_after: Losses) -> None:
        """Tell an amortised method the losses measured after the last step.

        Pass the losses on the same batch (recomputed without gradients) for the faithful
        update, or the next batch's losses for the zero-overhead variant. A no-op for methods
        that do not learn from them. Under ``torch.distributed`` (``sync`` not ``"none"``) the
        values are averaged across ranks first, so every rank's method state stays the same.
        Raises ``RuntimeError`` before any :meth:`backward`.
        """
        if not self.method.needs_losses_after:
            return
        if self._awaiting_step:
            # Under AMP the scaler skipped the step of the last backward: nothing to learn from.
            for method in self._methods:
                method.discard_pending()
            return
        if self._last_losses is None:
            raise RuntimeError(
                "observe() needs a previous backward(): there is no 'before' to compare with"
            )
        names, tensors = normalize_losses(losses_after)
        if self._bound_names is not None and names != self._bound_names:
            raise ValueError(
                f"observe() got objectives {list(names)}, expected {list(self._bound_names)}"
            )
        after = torch.stack([torch.as_tensor(t).detach().reshape(()) for t in tensors]).to(
            self._last_losses
        )
        if distributed.resolve_sync(self.sync, self.process_group) != "none":
            after = distributed.all_reduce_mean([after], group=self.process_group)[0][0]
        for method in self._methods:
            method.observe(self._last_losses, after)

    def state_dict(self) -> dict[str, Any]:
        """Wrapped optimizer state and method state (e.g. amortised logits)."""
        return {
            "format": _STATE_FORMAT,
            "optimizer": self.optimizer.state_dict(),
            "methods": [method.state_dict() for method in self._methods],
            "balance": self.balance,
        }

    def check_state_dict(self, state_dict: dict[str, Any]) -> list[Method]:
        """Check that :meth:`load_state_dict` can restore ``state_dict``, changing nothing.

        Checks the format, the balance mode, the wrapped optimizer's parameter groups (their
        number and sizes), and each method state, loaded into a copy of the method (and bound
        to the objectives this optimizer has seen, so that K = 3 state is refused by an
        optimizer used with K = 2). Returns those loaded copies.

        Raises:
            ValueError: the first mismatch found.
        """
        from mokd_optim.checkpoint import check_optimizer_groups

        if (
            not isinstance(state_dict, dict)
            or state_dict.get("format") != _STATE_FORMAT
            or "optimizer" not in state_dict
        ):
            raise ValueError(
                "not a MultiObjectiveOptimizer state dict (expected keys 'format', 'optimizer', 'methods'); "
                "to load a plain optimizer state use .optimizer.load_state_dict()"
            )
        if state_dict.get("balance", "global") != self.balance:
            raise ValueError(
                f"state dict was saved with balance={state_dict.get('balance')!r}, this optimizer uses {self.balance!r}"
            )
        method_states = state_dict.get("methods", [])
        expected = len(method_states) if self.balance == "per_group" else len(self._methods)
        if (
            not isinstance(method_states, list)
            or not method_states
            or len(method_states) != expected
        ):
            raise ValueError(
                f"state dict holds {len(method_states) if isinstance(method_states, list) else '?'} method states, "
                f"expected {expected}"
            )
        check_optimizer_groups(self.optimizer, state_dict["optimizer"])
        loaded: list[Method] = []
        for method_state in method_states:
            candidate = copy.deepcopy(self.method)
            try:
                candidate.load_state_dict(method_state)
                if self._bound_names is not None:
                    candidate.bind(self._bound_names)
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                raise ValueError(
                    f"the method state does not fit method {self.method.name!r}"
                    + (f" with objectives {list(self._bound_names)}" if self._bound_names else "")
                    + f": {error}"
                ) from error
            loaded.append(candidate)
        return loaded

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned: every part is checked first
        (:meth:`check_state_dict`), so a mismatch raises ``ValueError`` and changes nothing."""
        self.check_state_dict(state_dict)
        method_states = state_dict["methods"]
        self.optimizer.load_state_dict(state_dict["optimizer"])
        if self.balance == "per_group" and len(self._methods) != len(method_states):
            self._methods = [self.method] + [
                copy.deepcopy(self.method) for _ in range(len(method_states) - 1)
            ]
            self._bound_names = None
        for method, method_state in zip(self._methods, method_states):
            method.load_state_dict(method_state)


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of ``warnings.warn`` (called by the caller of this function) that
    names the first frame outside mokd_optim and ``torch.optim`` (whose step wrappers sit
    between the user's ``opt.step()`` and ours): the user's line."""
    inside = tuple(
        os.path.dirname(os.path.abspath(path)) + os.sep for path in (__file__, torch.optim.__file__)
    )
    frame: Optional[types.FrameType] = sys._getframe(2)
    level = 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(inside):
        frame, level = frame.f_back, level + 1
    return level
