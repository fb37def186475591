"""Conflict and dominance statistics of per-objective gradients, the per-step record, and
logging of those records (CSV, TensorBoard) with a plotting helper.

The statistics are computed from the ``K x K`` Gram matrix, on the device, without host
synchronisation; :meth:`StepStats.to_dict` is the one place that moves numbers to the host,
and :class:`StatsLogger` calls it only on the steps it logs (docs/logging.md).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor

from mokd_optim._typing import PSDMatrix


def grad_norms(gram: PSDMatrix) -> Tensor:
    """Per-objective gradient norms ``sqrt(G_ii)``, shape ``(..., K)``."""
    return torch.diagonal(gram, dim1=-2, dim2=-1).clamp_min(0.0).sqrt()


def cosine_matrix(gram: PSDMatrix) -> Tensor:
    """Pairwise cosine similarities ``G_ij / (||g_i|| ||g_j||)``, shape ``(..., K, K)``.

    Entries involving a zero gradient are 0 (and 1 on the diagonal).
    """
    norms = grad_norms(gram)
    outer = norms[..., :, None] * norms[..., None, :]
    cosine = torch.where(
        outer > 0,
        gram / torch.where(outer > 0, outer, torch.ones_like(outer)),
        torch.zeros_like(gram),
    )
    eye = torch.eye(gram.shape[-1], dtype=torch.bool, device=gram.device)
    return torch.where(eye, torch.ones_like(cosine), cosine.clamp(-1.0, 1.0))


def has_conflict(gram: PSDMatrix) -> Tensor:
    """Whether any pair of gradients has a negative inner product; bool tensor of shape ``(...)``."""
    k = gram.shape[-1]
    off_diagonal = ~torch.eye(k, dtype=torch.bool, device=gram.device)
    return ((gram < 0) & off_diagonal).flatten(-2).any(dim=-1)


def dominance_ratio(gram: PSDMatrix) -> Tensor:
    """Largest over smallest gradient norm, shape ``(...)`` (``inf`` when one gradient is zero)."""
    norms = grad_norms(gram)
    largest = norms.amax(dim=-1)
    smallest = norms.amin(dim=-1)
    ratio = largest / torch.where(smallest > 0, smallest, torch.ones_like(smallest))
    return torch.where(
        smallest > 0,
        ratio,
        torch.where(largest > 0, torch.full_like(largest, math.inf), torch.ones_like(largest)),
    )


def combined_norm(gram: PSDMatrix, weights: Tensor) -> Tensor:
    """Norm of ``sum_i w_i g_i`` over the balanced parameters, ``sqrt(w^T G w)``; shape ``(...)``."""
    w = weights.to(gram.dtype)
    return torch.einsum("...i,...ij,...j->...", w, gram, w).clamp_min(0.0).sqrt()


def rest_norm_ratio(gram: PSDMatrix, anchor: int = 0) -> Tensor:
    """``rho = ||sum_{j != anchor} g_j|| / ||g_anchor||`` from the Gram matrix ``(..., K, K)``
    of the raw gradients: how long the others' summed gradient is against the anchor's (what a
    fixed weight ``a`` turns into the share ``a rho / ((1 - a) + a rho)`` of its update).
    Shape ``(...)``; ``nan`` where the anchor's gradient is zero. Any positive scale of the gram
    leaves it unchanged; scaling the others' losses by ``c`` scales it by ``c``."""
    others = torch.ones(gram.shape[-1], dtype=torch.bool, device=gram.device)
    others[anchor] = False
    rest = gram[..., others, :][..., others].sum(dim=(-2, -1)).clamp_min(0.0).sqrt()
    anchor_norm = gram[..., anchor, anchor].clamp_min(0.0).sqrt()
    return torch.where(
        anchor_norm > 0, rest / torch.where(anchor_norm > 0, anchor_norm, 1.0), torch.nan
    )


def relative_gradient_ratio(gram: PSDMatrix, losses: Tensor, anchor: int = 0) -> Tensor:
    """``r = (||sum_{j != anchor} g_j|| / sum_{j != anchor} L_j) / (||g_anchor|| / L_anchor)``:
    how large the other objectives' gradient is *for their loss* against the anchor's, from the
    Gram matrix ``(..., K, K)`` of the raw gradients and the losses ``(K,)``. Unchanged when any
    loss is rescaled (a ratio of relative gradients). Read over a run's first ten steps it is
    the signal of ``mokd``'s ``relative_start=True``: at least 1 on the condition suite's weak
    (soft, under-trained) teachers, below 0.45 on none of them (docs/mokd.md, "When the default
    does not win"). Shape ``(...)``; ``nan`` where the anchor's gradient is zero or the others'
    losses sum to 0 or less."""
    anchor_loss = losses[anchor]
    return _relative_ratio_of(
        rest_norm_ratio(gram, anchor), anchor_loss, losses.sum() - anchor_loss
    )


def _relative_ratio_of(rho: Tensor, anchor_loss: Tensor, rest_loss: Tensor) -> Tensor:
    """:func:`relative_gradient_ratio` from its parts: ``rho * L_anchor / L_rest`` with ``rho``
    :func:`rest_norm_ratio` and ``L_rest`` the others' losses summed, ``nan`` where ``L_rest <=
    0`` (for a caller that holds them already, such as ``relative_start``)."""
    ratio = rho * anchor_loss / torch.where(rest_loss > 0, rest_loss, 1.0)
    return torch.where(rest_loss > 0, ratio, torch.nan)


@dataclass(frozen=True)
class StepStats:
    """What one :meth:`MultiObjectiveOptimizer.backward` call did.

    All tensors stay on the device (no host sync); ``to_dict()`` converts them. With
    ``balance="per_group"`` the per-objective fields gain a leading group dimension.

    Attributes:
        names: objective names, in order (``"0"``, ``"1"``, ... for a sequence of losses).
        losses: ``(K,)`` detached loss values.
        weights: ``(K,)`` weights on the raw gradients; the update is ``sum_i w_i g_i``.
        strategy: the gradient strategy that ran (``"loop"``, ``"vmap"``, ...).
        gram: ``(K, K)`` Gram matrix of the gradients over the balanced parameters (of the
            gradients at ``features`` for the representation strategy); ``None`` when no
            per-objective gradients were computed.
        info: method-specific tensors, e.g. ``simplex_weights`` (MoKD's ``pi``).
    """

    names: tuple[str, ...]
    losses: Tensor
    weights: Tensor
    strategy: str
    gram: Optional[Tensor] = None
    info: dict[str, Tensor] = field(default_factory=dict)

    @property
    def grad_norms(self) -> Optional[Tensor]:
        """``(K,)`` per-objective gradient norms, or ``None`` without a Gram matrix."""
        return None if self.gram is None else grad_norms(self.gram)

    @property
    def cosine(self) -> Optional[Tensor]:
        """``(K, K)`` cosine similarities between the objectives' gradients."""
        return None if self.gram is None else cosine_matrix(self.gram)

    @property
    def conflict(self) -> Optional[Tensor]:
        """0-dim bool tensor: some pair of gradients has a negative inner product."""
        return None if self.gram is None else has_conflict(self.gram)

    @property
    def dominance(self) -> Optional[Tensor]:
        """0-dim tensor: largest over smallest gradient norm (1 = balanced)."""
        return None if self.gram is None else dominance_ratio(self.gram)

    @property
    def combined_norm(self) -> Optional[Tensor]:
        """Norm of the balanced part of the update, before any ``max_norm`` clipping."""
        return None if self.gram is None else combined_norm(self.gram, self.weights)

    @property
    def relative_ratio(self) -> Optional[Tensor]:
        """0-d (``(G,)`` per group): :func:`relative_gradient_ratio` with the first objective as
        the anchor -- the others' gradient for their loss against the first's. ``None``
        without a Gram matrix."""
        return None if self.gram is None else relative_gradient_ratio(self.gram, self.losses)

    def to_dict(self) -> dict[str, float]:
        """Flat ``name -> float`` record for logging (synchronises with the host).

        Keys: ``loss/<name>``, ``weight/<name>``, ``grad_norm/<name>``, ``cosine/<a>|<b>``,
        ``conflict``, ``dominance``, ``combined_norm``, ``relative_ratio`` (see
        :attr:`relative_ratio`) and ``<info key>/<name>`` (``<info key>``
        alone for a per-step scalar such as ``solver_failed``); per-group statistics get a
        ``group<g>/`` prefix. Missing statistics are NaN.
        """
        record: dict[str, float] = {}
        loss_tensor = self.losses.detach().double().cpu()
        losses = loss_tensor.tolist()
        for name, value in zip(self.names, losses):
            record[f"loss/{name}"] = value
        grouped = self.weights.dim() == 2
        weights = self.weights.detach().double().cpu()
        grams = None if self.gram is None else self.gram.detach().double().cpu()
        infos = {key: value.detach().double().cpu() for key, value in self.info.items()}
        num_groups = weights.shape[0] if grouped else 1
        for g in range(num_groups):
            prefix = f"group{g}/" if grouped else ""
            w = weights[g] if grouped else weights
            for name, value in zip(self.names, w.tolist()):
                record[f"{prefix}weight/{name}"] = value
            for key, tensor in infos.items():
                if tensor.dim() == (1 if grouped else 0):
                    # One number per step (e.g. Nash-MTL's solver_failed), not one per objective.
                    record[f"{prefix}{key}"] = float(tensor[g] if grouped else tensor)
                    continue
                row = tensor[g] if grouped and tensor.dim() == 2 else tensor
                for name, value in zip(self.names, row.reshape(-1).tolist()):
                    record[f"{prefix}{key}/{name}"] = value
            gram = None if grams is None else (grams[g] if grouped else grams)
            nan = float("nan")
            norms = grad_norms(gram).tolist() if gram is not None else [nan] * len(self.names)
            for name, value in zip(self.names, norms):
                record[f"{prefix}grad_norm/{name}"] = value
            if gram is not None:
                cosine = cosine_matrix(gram)
                for a in range(len(self.names)):
                    for b in range(a + 1, len(self.names)):
                        record[f"{prefix}cosine/{self.names[a]}|{self.names[b]}"] = float(
                            cosine[a, b]
                        )
            record[f"{prefix}conflict"] = nan if gram is None else float(has_conflict(gram))
            record[f"{prefix}dominance"] = nan if gram is None else float(dominance_ratio(gram))
            record[f"{prefix}combined_norm"] = (
                nan if gram is None else float(combined_norm(gram, w))
            )
            record[f"{prefix}relative_ratio"] = (
                nan if gram is None else float(relative_gradient_ratio(gram, loss_tensor))
            )
        return record


# Logging ---------------------------------------------------------------------------------


#: ``CollapseWatch`` defaults (calibrated in ``benchmarks/collapse_watch.py``; docs/logging.md).
COLLAPSE_LOSS_FRACTION = 0.9
COLLAPSE_GRADIENT_DROP = 0.1
COLLAPSE_PATIENCE = 20


class CollapseWatch:
    """Warns once when training looks dead: losses still finite, but the network has stopped
    learning for good -- the silent collapse every configuration of the condition suite showed
    at a too-high learning rate (docs/mokd.md; dead ReLUs, the task loss back at chance).

    A step *looks dead* when the anchor (task) loss is at least ``loss_fraction`` of its first
    value **and** every gradient norm is below ``gradient_drop`` of its largest so far.
    ``patience`` consecutive such observations set :attr:`collapsed`, record :attr:`step` (the
    observation count) and issue one ``RuntimeWarning``. Both tests are ratios, so rescaling a
    loss or the learning rate changes nothing. Healthy training rarely meets both at once (its
    loss falls as its gradients shrink, and a plateau keeps its gradients); a run that stalls
    this way and later partly recovers is reported too. How often it fires, and how late, on
    the suite's collapsed and live runs: docs/logging.md.

    Feed it every step (or every logged step, with a ``patience`` counted in those):
    :meth:`update` takes a :class:`StepStats`, :meth:`observe` a loss and gradient norms
    (plain training: the norm of the one loss's gradient). :meth:`update` keeps its running
    values on the device and reads the host every ``every``-th call only.

    Args:
        anchor: index of the objective whose loss is compared with its first value.
        loss_fraction: in ``(0, 1]``; gradient_drop: in ``(0, 1)``; patience: >= 1.
        every: :meth:`update` calls between host reads (>= 1); a read sees only its own step.
        warn: issue the warning (``False``: only set :attr:`collapsed`).

    Raises:
        ValueError: an argument out of range; :meth:`update` / :meth:`observe` with another
            number of gradient norms than before, or an ``anchor`` that is not an objective.
    """

    def __init__(
        self,
        anchor: int = 0,
        *,
        loss_fraction: float = COLLAPSE_LOSS_FRACTION,
        gradient_drop: float = COLLAPSE_GRADIENT_DROP,
        patience: int = COLLAPSE_PATIENCE,
        every: int = 1,
        warn: bool = True,
    ) -> None:
        if not 0 < loss_fraction <= 1:
            raise ValueError(f"loss_fraction must be in (0, 1], got {loss_fraction!r}")
        if not 0 < gradient_drop < 1:
            raise ValueError(f"gradient_drop must be in (0, 1), got {gradient_drop!r}")
        for name, count in (("patience", patience), ("every", every)):
            if isinstance(count, bool) or int(count) != count or count < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {count!r}")
        self.anchor = int(anchor)
        self.loss_fraction = float(loss_fraction)
        self.gradient_drop = float(gradient_drop)
        self.patience = int(patience)
        self.every = int(every)
        self.warn = bool(warn)
        self.reset()

    def reset(self) -> None:
        """Forget everything seen (a new run)."""
        self.collapsed = False
        self.step: Optional[int] = None
        self.observations = 0
        self._calls = 0
        self._in_a_row = 0
        self._first: Optional[float] = None
        self._largest: Optional[list[float]] = None
        self._device_largest: Optional[Tensor] = None

    def update(self, stats: StepStats) -> bool:
        """One step's :class:`StepStats`; returns :attr:`collapsed`. Statistics without
        per-parameter gradients are skipped: ``gram`` ``None``, or the ``"representation"``
        strategy's gradients at the features (they do not vanish in a dead network). With
        ``balance="per_group"`` the groups' norms are combined."""
        if stats.gram is None or stats.strategy == "representation":
            return self.collapsed
        k = stats.losses.shape[-1]
        if not 0 <= self.anchor < k:
            raise ValueError(f"anchor {self.anchor} is not one of the {k} objectives")
        diagonal = torch.diagonal(stats.gram.detach(), dim1=-2, dim2=-1).clamp_min(0.0)
        norms = diagonal.reshape(-1, k).sum(0).sqrt().double()
        if self._device_largest is not None and self._device_largest.shape != norms.shape:
            raise ValueError(
                f"the number of gradient norms changed: {self._device_largest.numel()} then {k}"
            )
        # the largest norms of the steps between reads count too
        self._device_largest = (
            norms if self._device_largest is None else torch.maximum(self._device_largest, norms)
        )
        self._calls += 1
        if self.collapsed or (self._calls - 1) % self.every:
            return self.collapsed
        loss = stats.losses.detach().reshape(-1, k)[0, self.anchor].double()
        values = torch.cat([loss[None], norms, self._device_largest]).tolist()
        self._largest = values[1 + k :]
        return self.observe(values[0], values[1 : 1 + k], names=stats.names)

    def observe(
        self, loss: float, grad_norms: Sequence[float], *, names: Sequence[str] = ()
    ) -> bool:
        """One observation: the anchor's loss and every objective's gradient norm (floats);
        returns :attr:`collapsed`. ``names`` only label the warning."""
        norms = [float(n) for n in grad_norms]
        if self._largest is not None and len(self._largest) != len(norms):
            raise ValueError(
                f"the number of gradient norms changed: {len(self._largest)} then {len(norms)}"
            )
        largest = norms if self._largest is None else list(map(max, self._largest, norms))
        self._largest = largest
        self.observations += 1
        if self._first is None:
            self._first = float(loss)
        if self.collapsed:
            return True
        dead = (
            math.isfinite(loss)
            and loss >= self.loss_fraction * self._first
            and all(n < self.gradient_drop * m for n, m in zip(norms, largest))
        )
        self._in_a_row = self._in_a_row + 1 if dead else 0
        if self._in_a_row >= self.patience:
            self.collapsed, self.step = True, self.observations
            if self.warn:
                import warnings

                name = names[self.anchor] if len(names) > self.anchor else str(self.anchor)
                warnings.warn(
                    f"training looks collapsed (observation {self.observations}): the "
                    f"{name!r} loss is back at {loss:.4g} (first {self._first:.4g}) and every "
                    f"gradient norm has stayed below {self.gradient_drop:g} of its largest for "
                    f"{self.patience} observations -- a dead or stalled network with finite "
                    "losses, which rarely recovers; lower the learning rate (docs/logging.md)",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return self.collapsed


def _scalar(value: Union[float, int, Tensor]) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"logged scalars must have one element, got shape {tuple(value.shape)}"
            )
        return float(value.detach().reshape(()).cpu())
    return float(value)


class StatsLogger:
    """Write :class:`StepStats` and user scalars to a CSV file and/or TensorBoard.

    Values are moved to the host only on logged steps (``step % log_every == 0``); on the other
    steps :meth:`log` returns at once without reading any tensor. Under ``torch.distributed``
    only rank 0 writes (``main_process_only``).

    The CSV has one row per logged step: ``step`` first, then the keys of
    :meth:`StepStats.to_dict` (``loss/<name>``, ``weight/<name>``, ``grad_norm/<name>``,
    ``cosine/<a>|<b>``, ``conflict``, ``dominance``, ``combined_norm``, method info), then the
    user scalars (e.g. ``lr``, ``accuracy``). A key first seen on a later row adds a column
    (the file is rewritten once with the wider header; earlier rows leave it empty).
    TensorBoard receives every value with ``add_scalar(key, value, step)``.

    Args:
        csv_path: CSV file to write, or ``None``.
        tensorboard: a log directory for a new ``SummaryWriter``, an existing writer, or ``None``.
        log_every: log on steps that are multiples of this.
        append: keep the rows of an existing CSV file (resuming a run) instead of starting over.
        main_process_only: write only on rank 0 under ``torch.distributed``.

    Raises:
        ValueError: ``log_every < 1``, or neither ``csv_path`` nor ``tensorboard`` given.
        ImportError: ``tensorboard`` requested but the ``tensorboard`` package is not installed.
    """

    def __init__(
        self,
        csv_path: Optional[Union[str, os.PathLike[str]]] = None,
        *,
        tensorboard: Optional[Any] = None,
        log_every: int = 1,
        append: bool = False,
        main_process_only: bool = True,
    ) -> None:
        if log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}")
        if csv_path is None and tensorboard is None:
            raise ValueError("give csv_path, tensorboard, or both")
        from mokd_optim import distributed

        self.log_every = int(log_every)
        self.active = not main_process_only or distributed.is_main_process()
        self.csv_path = Path(csv_path) if csv_path is not None else None
        self._columns: list[str] = []
        self._stream: Optional[Any] = None
        self._writer: Optional[Any] = None
        self._owns_writer = False
        if not self.active:
            return
        if self.csv_path is not None:
            self.csv_path.parent.mkdir(parents=True, exist_ok=True)
            if append and self.csv_path.exists() and self.csv_path.stat().st_size > 0:
                with open(self.csv_path, newline="") as existing:
                    self._columns = next(csv.reader(existing), [])
                self._stream = open(self.csv_path, "a", newline="")
            else:
                self._stream = open(self.csv_path, "w", newline="")
        if tensorboard is not None:
            if isinstance(tensorboard, (str, os.PathLike)):
                self._writer = _summary_writer(tensorboard)
                self._owns_writer = True
            else:
                self._writer = tensorboard

    def should_log(self, step: int) -> bool:
        """Whether :meth:`log` writes at ``step`` (a pure function of the step number)."""
        return self.active and step % self.log_every == 0

    def log(
        self, step: int, stats: Optional[StepStats] = None, **scalars: Union[float, int, Tensor]
    ) -> Optional[dict[str, float]]:
        """Record ``stats`` and ``scalars`` at ``step`` if it is a logged step.

        Args:
            step: the global step (x axis).
            stats: what :meth:`MultiObjectiveOptimizer.backward` returned (``None`` is allowed,
                e.g. for an accumulating micro-batch, and logs only the scalars).
            **scalars: extra values (numbers or one-element tensors), e.g. ``lr=...``.

        Returns:
            The record written (``step`` and every value as a float), or ``None`` when the step
            is not logged.
        """
        if not self.should_log(step):
            return None
        record: dict[str, float] = {"step": float(step)}
        if stats is not None:
            record.update(stats.to_dict())
        for key, value in scalars.items():
            record[key] = _scalar(value)
        if self._stream is not None:
            self._write_row(record)
        if self._writer is not None:
            for key, value in record.items():
                if key != "step":
                    self._writer.add_scalar(key, value, step)
        return record

    def _write_row(self, record: dict[str, float]) -> None:
        assert self._stream is not None and self.csv_path is not None
        new = [key for key in record if key not in self._columns]
        if new:
            had_rows = bool(self._columns)
            self._columns = self._columns + new
            if had_rows:
                self._rewrite_header()
            else:
                csv.writer(self._stream).writerow(self._columns)
        row = ["" if key not in record else _format(record[key], key) for key in self._columns]
        csv.writer(self._stream).writerow(row)
        self._stream.flush()

    def _rewrite_header(self) -> None:
        assert self._stream is not None and self.csv_path is not None
        self._stream.close()
        with open(self.csv_path, newline="") as existing:
            rows = list(csv.reader(existing))[1:]
        width = len(self._columns)
        temporary = self.csv_path.with_name(f".{self.csv_path.name}.tmp")
        with open(temporary, "w", newline="") as rewritten:
            writer = csv.writer(rewritten)
            writer.writerow(self._columns)
            for row in rows:
                writer.writerow(row + [""] * (width - len(row)))
        os.replace(temporary, self.csv_path)
        self._stream = open(self.csv_path, "a", newline="")

    def flush(self) -> None:
        """Flush the CSV file and the TensorBoard writer."""
        if self._stream is not None:
            self._stream.flush()
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Close the CSV file and a TensorBoard writer this logger created."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if self._writer is not None and self._owns_writer:
            self._writer.close()
        self._writer = None

    def __enter__(self) -> StatsLogger:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _format(value: float, key: str) -> str:
    if key == "step" and math.isfinite(value) and value == int(value):
        return str(int(value))
    return repr(float(value))


def _summary_writer(log_dir: Union[str, os.PathLike[str]]) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ImportError(
            "TensorBoard logging needs the 'tensorboard' package: pip install tensorboard "
            "(or pip install 'mokd-optim[logging]'), or log to CSV only with StatsLogger(csv_path)"
        ) from error
    return SummaryWriter(log_dir=str(log_dir))


def read_log(csv_path: Union[str, os.PathLike[str]]) -> dict[str, list[float]]:
    """Columns of a :class:`StatsLogger` CSV file as float lists (empty cells are NaN).

    Raises:
        FileNotFoundError: no file at ``csv_path``.
        ValueError: the file is empty or has no ``step`` column.
    """
    with open(csv_path, newline="") as stream:
        rows = list(csv.reader(stream))
    if not rows or "step" not in rows[0]:
        raise ValueError(f"{csv_path} is not a StatsLogger CSV file (no 'step' column)")
    header = rows[0]
    columns: dict[str, list[float]] = {key: [] for key in header}
    for row in rows[1:]:
        for index, key in enumerate(header):
            cell = row[index] if index < len(row) else ""
            columns[key].append(float(cell) if cell != "" else math.nan)
    return columns


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Centred moving average of ``values`` over ``window`` points (shrunk at the ends; NaNs
    are skipped, a window of only NaNs gives NaN). ``window <= 1`` returns the values."""
    if window <= 1:
        return list(values)
    half = window // 2
    out = []
    for index in range(len(values)):
        part = [v for v in values[max(0, index - half) : index + half + 1] if math.isfinite(v)]
        out.append(sum(part) / len(part) if part else math.nan)
    return out


def _panel_columns(columns: dict[str, list[float]], pattern: str) -> list[str]:
    """Keys of ``columns`` matching ``pattern`` (a ``prefix/`` or an exact name), with or
    without a ``group<g>/`` prefix."""
    keys = []
    for key in columns:
        tail = key.split("/", 1)[1] if key.startswith("group") and "/" in key else key
        if tail.startswith(pattern) if pattern.endswith("/") else tail == pattern:
            keys.append(key)
    return keys


def plot_log(
    csv_path: Union[str, os.PathLike[str]],
    png_path: Optional[Union[str, os.PathLike[str]]] = None,
    *,
    eval_path: Optional[Union[str, os.PathLike[str]]] = None,
    normalize_weights: bool = True,
    smoothing: Optional[int] = None,
    dpi: int = 100,
) -> Any:
    """Curves of a :class:`StatsLogger` CSV over training, to answer "is it working?".

    Panels sharing the step axis:

    1. **losses** (``loss/*``, log scale when all are positive);
    2. **evaluation**, when ``eval_path`` names a log with ``val/*`` columns (the trainers'
       ``eval_log.csv``: accuracy, AP, ... per epoch, drawn with markers at their steps) or the
       training log has columns that are neither statistics nor ``lr`` (e.g. ``accuracy``);
    3. **weights**: by default the *shares* ``w_i / sum_j w_j`` (they sum to 1, so a raw
       weight of 267 next to 0.3 does not flatten the other curves); ``normalize_weights=False``
       draws the raw weights on the gradients;
    4. **cosine** of every pair of gradients, with the conflict line at 0;
    5. **dominance** ``max_i ||g_i|| / min_i ||g_i||`` on a log scale.

    Noisy series are smoothed with a centred moving average of ``smoothing`` rows (default:
    1/25 of the rows); the raw series stay drawn, faint. Legends sit to the right of the
    panels, never over the data. Per-group columns (``group<g>/...``) are separate curves. A
    panel without data (e.g. the cosine of a one-objective run) says so. Uses the Agg
    renderer, no display needed.

    Args:
        csv_path: a file written by :class:`StatsLogger`.
        png_path: where to save the PNG (``None``: only return the figure).
        eval_path: an evaluation log (a :class:`StatsLogger` CSV with a ``step`` column).
        normalize_weights: plot weight shares (default) instead of raw weights.
        smoothing: moving-average window in rows (``1``: no smoothing).
        dpi: resolution of the PNG.

    Returns:
        The ``matplotlib.figure.Figure``; its axes in the order above (4 or 5).

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: a file is not a StatsLogger CSV.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "plot_log needs matplotlib: pip install matplotlib (or the 'logging' extra)"
        ) from error
    columns = read_log(csv_path)
    steps = columns["step"]
    window = smoothing if smoothing is not None else max(1, len(steps) // 25)
    known = ("loss/", "weight/", "cosine/", "grad_norm/", "simplex_weights/")
    evaluation: dict[str, tuple[list[float], list[float]]] = {}
    if eval_path is not None:
        eval_columns = read_log(eval_path)
        for key, values in eval_columns.items():
            if key.startswith("val/"):
                evaluation[key] = (eval_columns["step"], values)
    for key, values in columns.items():
        tail = key.split("/", 1)[1] if key.startswith("group") and "/" in key else key
        if key == "step" or tail.startswith(known) or tail in ("conflict", "dominance", "lr"):
            continue
        if tail in ("combined_norm", "relative_ratio") or tail.startswith("train/"):
            continue
        evaluation[key] = (steps, values)
    panels = ["losses", *(["evaluation"] if evaluation else []), "weights", "cosine", "dominance"]
    figure = Figure(figsize=(10, 2.3 * len(panels) + 0.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = dict(zip(panels, figure.subplots(len(panels), 1, sharex=True)))

    def draw(axis: Any, series: dict[str, list[float]], *, positive: bool = False) -> int:
        """Each series faint as logged and solid smoothed; the legend outside on the right."""
        drawn = 0
        for index, (label, values) in enumerate(series.items()):
            points = [
                (x, v)
                for x, v in zip(steps, values)
                if math.isfinite(v) and (v > 0 or not positive)
            ]
            if not points:
                continue
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            colour = f"C{index % 10}"
            if window > 1 and len(ys) > window:
                axis.plot(xs, ys, color=colour, alpha=0.25, linewidth=0.8)
                axis.plot(xs, smooth(ys, window), color=colour, linewidth=1.6, label=label)
            else:
                axis.plot(xs, ys, color=colour, linewidth=1.2, label=label)
            drawn += 1
        finish(axis, drawn)
        return drawn

    def finish(axis: Any, drawn: int) -> None:
        if drawn:
            axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
        else:
            axis.text(0.5, 0.5, "no data", transform=axis.transAxes, ha="center", va="center")

    losses = {key: columns[key] for key in _panel_columns(columns, "loss/")}
    positive = all(v > 0 for values in losses.values() for v in values if math.isfinite(v))
    if draw(axes["losses"], losses) and positive:
        axes["losses"].set_yscale("log")
    axes["losses"].set(ylabel="loss", title="losses (faint: as logged; solid: smoothed)")
    if evaluation:
        axis = axes["evaluation"]
        for index, (label, (xs, values)) in enumerate(evaluation.items()):
            points = [(x, v) for x, v in zip(xs, values) if math.isfinite(v)]
            axis.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                marker="o",
                color=f"C{index % 10}",
                label=label,
            )
            if points:
                # left of and above the last point (it sits at the right edge), inside the
                # headroom the margin below leaves at the top
                axis.annotate(
                    f"{points[-1][1]:.4g}",
                    points[-1],
                    textcoords="offset points",
                    xytext=(-4, 5),
                    ha="right",
                    fontsize="small",
                )
        axis.margins(y=0.15)
        finish(axis, len(evaluation))
        axis.set(ylabel="value", title="evaluation (last value written)")
    weight_keys = _panel_columns(columns, "weight/")
    weights = {key: columns[key] for key in weight_keys}
    if normalize_weights and weights:
        groups: dict[str, list[str]] = {}
        for key in weight_keys:
            groups.setdefault(key.split("weight/", 1)[0], []).append(key)
        shares = {}
        for keys in groups.values():
            totals = [sum(values) for values in zip(*(columns[k] for k in keys))]
            for key in keys:
                shares[key.replace("weight/", "share/", 1)] = [
                    v / t if math.isfinite(t) and t != 0 else math.nan
                    for v, t in zip(columns[key], totals)
                ]
        weights = shares
    draw(axes["weights"], weights)
    if normalize_weights:
        axes["weights"].set(
            ylabel="share", ylim=(-0.05, 1.05), title="weight shares w_i / sum_j w_j (sum to 1)"
        )
    else:
        axes["weights"].set(ylabel="weight", title="weights on the raw gradients")
    draw(axes["cosine"], {key: columns[key] for key in _panel_columns(columns, "cosine/")})
    axes["cosine"].axhline(0.0, color="gray", linewidth=0.8, linestyle="--")
    axes["cosine"].set(
        ylim=(-1.05, 1.05), ylabel="cosine", title="gradient cosine similarity (< 0: conflict)"
    )
    dominance = {key: columns[key] for key in _panel_columns(columns, "dominance")}
    if draw(axes["dominance"], dominance, positive=True):
        axes["dominance"].set_yscale("log")
    axes["dominance"].set(
        ylabel="max ||g|| / min ||g||", title="gradient dominance ratio", xlabel="step"
    )
    if png_path is not None:
        Path(png_path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(png_path, dpi=dpi)
    return figure


# Fixed per-step cost ----------------------------------------------------------------------

#: Tensor methods that read a value on the host: on a GPU each one waits for the device
#: (a host synchronisation); :func:`step_cost` counts their calls.
HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")

_LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")


@dataclass(frozen=True)
class StepCost:
    """What one call of a training step dispatched, from :func:`step_cost`.

    Attributes:
        tensor_ops: tensor operations dispatched (``aten::`` events of ``torch.profiler`` not
            nested in another one: every op the Python code or autograd's engine called, each a
            kernel launch or more on a GPU).
        host_syncs: reads of a tensor value on the host (``item``, ``tolist``, ``bool(t)``,
            ``float(t)``, ``int(t)``, ``numpy``): on a GPU each waits for the queued work.
        seconds: wall time of the profiled call (profiler overhead included: not a timing).
        kernel_launches: CUDA kernel launches (``None`` without CUDA activity).
        ops: ``name -> count`` of the tensor operations.
    """

    tensor_ops: int
    host_syncs: int
    seconds: float
    kernel_launches: Optional[int] = None
    ops: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        launches = (
            "" if self.kernel_launches is None else f", {self.kernel_launches} kernel launches"
        )
        return f"{self.tensor_ops} tensor ops, {self.host_syncs} host syncs{launches}"


def step_cost(step: Any) -> StepCost:
    """Run ``step()`` once under ``torch.profiler`` and count what it dispatched.

    The fixed cost of a training step on a small model (or on a GPU, where every tensor op is
    a kernel launch) grows with the number of tensor operations and host synchronisations,
    not with the model's arithmetic. Compare a balanced step with the plain step of the same
    model (``benchmarks/small_models.py`` does; docs/benchmarks.md, "Small models")::

        plain = step_cost(lambda: train_step(fixed_weights))
        ours = step_cost(lambda: train_step(opt))
        print(ours.tensor_ops - plain.tensor_ops, "extra ops,", ours.host_syncs, "host syncs")

    Run a step or two first (lazy initialisation, e.g. momentum buffers, is counted
    otherwise). Host reads are counted by wrapping ``torch.Tensor``'s reading methods for the
    duration of the call (not thread-safe). Returns a :class:`StepCost`.
    """
    import time
    import warnings

    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        activities.append(ProfilerActivity.CUDA)
    saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}
    reads = [0]

    def counting(original: Any) -> Any:
        def read(self: Tensor, *args: Any, **kwargs: Any) -> Any:
            reads[0] += 1
            return original(self, *args, **kwargs)

        return read

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=activities) as prof:
            try:
                for name, original in saved.items():
                    setattr(torch.Tensor, name, counting(original))
                begin = time.perf_counter()
                step()
                seconds = time.perf_counter() - begin
            finally:
                for name, original in saved.items():
                    setattr(torch.Tensor, name, original)
    ops: dict[str, int] = {}
    launches = 0
    for event in prof.events():
        if event.name in _LAUNCHES:
            launches += 1
        if not event.name.startswith("aten::"):
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        if parent is None:
            ops[event.name] = ops.get(event.name, 0) + 1
    return StepCost(
        tensor_ops=sum(ops.values()),
        host_syncs=reads[0],
        seconds=seconds,
        kernel_launches=launches if ProfilerActivity.CUDA in activities else None,
        ops=dict(sorted(ops.items(), key=lambda item: -item[1])),
    )
