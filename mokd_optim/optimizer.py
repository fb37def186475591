"""``MultiObjectiveOptimizer``: per-objective gradients -> weights -> one combined update."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor
from torch.optim import Optimizer

from mokd_optim import gradients as grad_strategies
from mokd_optim._typing import Losses
from mokd_optim._validation import ObjectiveError, check_losses, normalize_losses
from mokd_optim.diagnostics import StepStats
from mokd_optim.methods import Method, get

BALANCE_MODES = ("global", "per_group")
_STATE_FORMAT = 1


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
        validate: check that losses are finite (and positive for log-based methods) before
            anything is changed. Costs one host synchronisation per step.
        **method_options: options of the method, e.g. ``step="anchor", anchor="task"``.

    Raises:
        TypeError: ``optimizer`` is not a ``torch.optim.Optimizer`` or is already wrapped.
        ValueError: unknown method, strategy or balance mode, or a bad option value.
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
        **method_options: Any,
    ) -> None:
        if isinstance(optimizer, MultiObjectiveOptimizer):
            raise TypeError("the optimizer is already a MultiObjectiveOptimizer; wrap the base optimizer once")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if strategy not in grad_strategies.STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {grad_strategies.STRATEGIES}")
        if balance not in BALANCE_MODES:
            raise ValueError(f"unknown balance mode {balance!r}; choose one of {BALANCE_MODES}")
        if max_norm is not None and not max_norm > 0:
            raise ValueError(f"max_norm must be positive or None, got {max_norm}")
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
        # One method instance per parameter group in per-group mode (their state is separate).
        self._methods: list[Method] = [self.method]
        self._bound_names: Optional[tuple[str, ...]] = None
        self._vmap_supported = True
        self._last_losses: Optional[Tensor] = None
        self._last_stats: Optional[StepStats] = None
        # What torch.optim.Optimizer.__init__ would set up, without taking over the param
        # groups: those belong to the wrapped optimizer and are exposed through properties.
        from collections import OrderedDict

        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()

    # torch.optim.Optimizer surface, shared with the wrapped optimizer ---------------------

    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property  # type: ignore[override]
    def state(self) -> Any:
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    @property  # type: ignore[override]
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    @property
    def last_stats(self) -> Optional[StepStats]:
        """The :class:`StepStats` of the most recent :meth:`backward` call."""
        return self._last_stats

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
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
            raise ValueError("the 'representation' strategy needs the shared tensor: call backward(losses, features=z)")
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
            self._methods = [self.method] + [copy.deepcopy(self.method) for _ in range(num_groups - 1)]
            self._bound_names = None
        if names != self._bound_names:
            for method in self._methods:
                method.bind(names)
            self._bound_names = names

    def backward(
        self,
        losses: Losses,
        *,
        features: Optional[Union[Tensor, Sequence[Tensor]]] = None,
        retain_graph: bool = False,
    ) -> StepStats:
        """Write the balanced combination of the losses' gradients into ``.grad``.

        Args:
            losses: mapping name -> scalar loss, or a sequence of scalar losses.
            features: shared tensor(s) for the ``"representation"`` strategy (e.g. the student
                logits): weights are computed from the gradients at these tensors and one
                backward is run.
            retain_graph: keep the autograd graph after the call.

        Returns:
            :class:`StepStats` with the weights and the conflict/dominance statistics.

        Raises:
            ObjectiveError: a loss is not a scalar, not finite, does not require grad, is not
                positive for a log-based method, or reaches no parameter of the optimizer.
            ValueError: empty losses, losses on different devices, ``"representation"``
                without ``features``, or method options naming unknown objectives.
            In every case parameters, ``.grad`` and the optimizer state are unchanged.
        """
        names, tensors = normalize_losses(losses)
        check_losses(names, tensors, positive=bool(self.method.log_losses), check_values=self.validate)
        feature_list: Optional[list[Tensor]] = None
        if features is not None:
            feature_list = [features] if isinstance(features, Tensor) else list(features)
        params, group_of = self._trainable()
        if not params:
            raise ValueError("the optimizer has no parameters that require grad")
        num_groups = len(self.optimizer.param_groups) if self.balance == "per_group" else 1
        self._bind(names, num_groups)
        strategy = self._resolve_strategy(feature_list)
        loss_values = torch.stack([t.detach().reshape(()) for t in tensors]).to(
            torch.float32 if tensors[0].device.type == "mps" else torch.float64
        )
        if strategy == "amortized":
            stats = self._backward_amortized(names, tensors, loss_values, params, retain_graph)
        elif strategy == "representation":
            assert feature_list is not None
            stats = self._backward_representation(names, tensors, loss_values, feature_list, params, retain_graph)
        else:
            stats = self._backward_exact(names, tensors, loss_values, params, group_of, num_groups, strategy, retain_graph)
        self._last_losses = loss_values
        self._last_stats = stats
        return stats

    def _check_reach(self, names: Sequence[str], tensors: Sequence[Tensor], params: Sequence[Tensor]) -> None:
        reach = grad_strategies.reach_matrix(tensors, params)
        for name, row in zip(names, reach):
            if not any(row):
                raise ObjectiveError(name, "the loss reaches no parameter of the optimizer; check that it is computed from the model being optimized")

    def _backward_amortized(
        self, names: tuple[str, ...], tensors: list[Tensor], loss_values: Tensor, params: list[Tensor], retain_graph: bool
    ) -> StepStats:
        if self.balance == "per_group":
            raise ValueError("balance='per_group' needs per-objective gradients; use strategy 'loop' or 'vmap'")
        if self.validate:
            self._check_reach(names, tensors, params)
        weights = self.method.weights(None, loss_values)
        grad_strategies.weighted_backward(tensors, weights, params, retain_graph=retain_graph)
        return StepStats(names=names, losses=loss_values, weights=weights, strategy="amortized", info=dict(self.method.info))

    def _backward_representation(
        self,
        names: tuple[str, ...],
        tensors: list[Tensor],
        loss_values: Tensor,
        features: list[Tensor],
        params: list[Tensor],
        retain_graph: bool,
    ) -> StepStats:
        if self.balance == "per_group":
            raise ValueError("balance='per_group' is not available with the 'representation' strategy")
        for index, feature in enumerate(features):
            if not isinstance(feature, Tensor) or not feature.requires_grad:
                raise ValueError(f"features[{index}] must be a tensor that requires grad (the shared representation the losses are computed from)")
        if self.validate:
            self._check_reach(names, tensors, params)
        per_objective = grad_strategies.representation_gradients(tensors, features)
        for name, grads in zip(names, per_objective):
            if grads is None:
                raise ObjectiveError(name, "the loss does not depend on the tensors passed as features=")
        blocks = grad_strategies.stack_feature_blocks(per_objective)  # type: ignore[arg-type]
        gram = grad_strategies.gram_matrix(blocks, [0] * len(blocks), 1, len(tensors), loss_values.device)[0]
        weights = self.method.weights(gram, loss_values)
        grad_strategies.representation_backward(tensors, features, blocks, weights, params, retain_graph=retain_graph)
        return StepStats(names=names, losses=loss_values, weights=weights, strategy="representation", gram=gram, info=dict(self.method.info))

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
    ) -> StepStats:
        groups = group_of if self.balance == "per_group" else [0] * len(params)
        result = None
        if strategy == "vmap":
            result = grad_strategies.vmap_gradients(tensors, params, groups, retain_graph=retain_graph)
            if result is None:
                self._vmap_supported = False
                warnings.warn("the model does not support batched (vmap) backward; falling back to the 'loop' strategy", stacklevel=3)
                strategy = "loop"
        if result is None:
            result = grad_strategies.loop_gradients(tensors, params, groups, retain_graph=retain_graph)
        for name, reached in zip(names, result.reached):
            if not reached:
                raise ObjectiveError(name, "the loss reaches no parameter of the optimizer; check that it is computed from the model being optimized")
        gram = grad_strategies.gram_matrix(result.blocks, result.groups, num_groups, len(tensors), loss_values.device)
        weights = torch.stack([method.weights(gram[g], loss_values) for g, method in enumerate(self._methods[:num_groups])])
        exclusive_weights = None if self.method.needs_gradients else weights[0]
        grad_strategies.write_combined(result, weights, exclusive_weights=exclusive_weights)
        info: dict[str, Tensor] = {}
        for key in self._methods[0].info:
            info[key] = torch.stack([method.info[key] for method in self._methods[:num_groups]])
        if self.balance == "global":
            return StepStats(names=names, losses=loss_values, weights=weights[0], strategy=strategy, gram=gram[0], info={k: v[0] for k, v in info.items()})
        return StepStats(names=names, losses=loss_values, weights=weights, strategy=strategy, gram=gram, info=info)

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:  # type: ignore[override]
        """Clip (``max_norm``) and step the wrapped optimizer.

        For methods that learn from the losses after the step (``needs_losses_after``), a
        ``closure`` is called after the step under ``torch.no_grad()`` and must return the
        losses on the same batch (mapping or sequence); they are passed to :meth:`observe`.
        For every other method ``closure`` is handed to the wrapped optimizer (torch
        semantics, e.g. LBFGS).
        """
        if self.max_norm is not None:
            grads = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
            if grads:
                torch.nn.utils.clip_grad_norm_(grads, self.max_norm)
        if closure is not None and self.method.needs_losses_after:
            result = self.optimizer.step()
            with torch.no_grad():
                losses_after = closure()
            self.observe(losses_after)
            return result
        return self.optimizer.step(closure) if closure is not None else self.optimizer.step()

    def observe(self, losses_after: Losses) -> None:
        """Tell an amortised method the losses measured after the last step.

        Pass the losses on the same batch (recomputed without gradients) for the faithful
        update, or the next batch's losses for the zero-overhead variant. A no-op for methods
        that do not learn from them. Raises ``RuntimeError`` before any :meth:`backward`.
        """
        if not self.method.needs_losses_after:
            return
        if self._last_losses is None:
            raise RuntimeError("observe() needs a previous backward(): there is no 'before' to compare with")
        names, tensors = normalize_losses(losses_after)
        if self._bound_names is not None and names != self._bound_names:
            raise ValueError(f"observe() got objectives {list(names)}, expected {list(self._bound_names)}")
        after = torch.stack([torch.as_tensor(t).detach().reshape(()) for t in tensors]).to(self._last_losses)
        for method in self._methods:
            method.observe(self._last_losses, after)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """Wrapped optimizer state and method state (e.g. amortised logits)."""
        return {
            "format": _STATE_FORMAT,
            "optimizer": self.optimizer.state_dict(),
            "methods": [method.state_dict() for method in self._methods],
            "balance": self.balance,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Restore what :meth:`state_dict` returned. Raises ``ValueError`` on a mismatch."""
        if not isinstance(state_dict, dict) or state_dict.get("format") != _STATE_FORMAT or "optimizer" not in state_dict:
            raise ValueError(
                "not a MultiObjectiveOptimizer state dict (expected keys 'format', 'optimizer', 'methods'); "
                "to load a plain optimizer state use .optimizer.load_state_dict()"
            )
        if state_dict.get("balance", "global") != self.balance:
            raise ValueError(f"state dict was saved with balance={state_dict.get('balance')!r}, this optimizer uses {self.balance!r}")
        method_states = state_dict.get("methods", [])
        if self.balance == "per_group" and len(self._methods) != len(method_states):
            self._methods = [self.method] + [copy.deepcopy(self.method) for _ in range(len(method_states) - 1)]
            self._bound_names = None
        if len(method_states) != len(self._methods):
            raise ValueError(f"state dict holds {len(method_states)} method states, expected {len(self._methods)}")
        for method, method_state in zip(self._methods, method_states):
            method.load_state_dict(method_state)
        self.optimizer.load_state_dict(state_dict["optimizer"])
