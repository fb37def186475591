"""Atomic training checkpoints that resume the same trajectory (docs/checkpoints.md).

:func:`save_checkpoint` stores the model, extra modules (KD projection heads, ...), the
optimizer (for :class:`~mokd_optim.MultiObjectiveOptimizer` this includes the balancing
method's state), the LR scheduler, the ``GradScaler``, the random number generator states
(Python, NumPy, torch CPU and CUDA) of every rank, and the progress (epoch, step). The file is
written to a temporary file in the same directory, flushed and ``fsync``-ed, then moved over
the target with ``os.replace``: a crash leaves either the previous checkpoint or the new one,
never a torn file. Under ``torch.distributed`` every rank calls it (their RNG states are
gathered) and only rank 0 writes.

:func:`load_checkpoint` restores what was given to it and returns the progress; it loads with
``torch.load(weights_only=True)`` by default, which never executes code from the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

from mokd_optim import distributed

CHECKPOINT_FORMAT = 1
PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class Progress:
    """Where training stood when a checkpoint was written (returned by :func:`load_checkpoint`).

    Attributes:
        epoch: the ``epoch`` given to :func:`save_checkpoint`.
        step: the ``step`` given to :func:`save_checkpoint` (e.g. optimizer steps done).
        extra: the ``extra`` mapping given to :func:`save_checkpoint` (``{}`` if none).
    """

    epoch: int
    step: int
    extra: dict[str, Any] = field(default_factory=dict)


def capture_rng_state() -> dict[str, Any]:
    """The RNG states of this process as tensors and numbers (loadable with ``weights_only``).

    Keys: ``python`` (``random``), ``numpy`` (the legacy global ``np.random`` generator),
    ``torch`` (CPU generator) and ``cuda`` (one state per visible device, only when CUDA is
    available).
    """
    version, internal, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {
            "version": version,
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` returned (CUDA states only where CUDA is available).

    Raises:
        KeyError: ``state`` lacks the ``python``, ``numpy`` or ``torch`` entry.
    """
    python = state["python"]
    random.setstate(
        (int(python["version"]), tuple(int(v) for v in python["state"].tolist()), python["gauss"])
    )
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].cpu().numpy().astype(np.uint32),
            int(numpy_state["position"]),
            int(numpy_state["has_gauss"]),
            float(numpy_state["cached_gaussian"]),
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            warnings.warn(
                f"checkpoint holds {len(cuda_states)} CUDA RNG states, this process sees "
                f"{torch.cuda.device_count()} devices; CUDA RNG states not restored",
                stacklevel=2,
            )


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: temporary file in the same directory,
    flush, ``fsync``, ``os.replace``, then ``fsync`` of the directory.

    Returns:
        The path written.

    Raises:
        Whatever ``torch.save`` raises; the temporary file is removed and an existing file
        at ``path`` is left untouched.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        # mkstemp creates the file readable by its owner only; keep the mode of the file being
        # replaced, or give a new one the usual 0644.
        os.chmod(temporary, target.stat().st_mode & 0o777 if target.exists() else 0o644)
        with os.fdopen(handle, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)
    return target


def remove_stale_temporaries(path: PathLike) -> list[Path]:
    """Delete the temporary files that an interrupted :func:`atomic_save` of ``path`` left.

    A process killed between ``mkstemp`` and ``os.replace`` (SIGKILL, power loss) cannot clean
    up; its hidden ``.<name>.<8 random characters>.tmp`` file, up to a whole checkpoint, stays.
    Only names of exactly that pattern for this ``path`` are removed, so other files and the
    temporaries of other checkpoints are never touched. Called by every save of ``path`` (only
    one process saves a given checkpoint at a time: rank 0).

    Returns:
        The paths removed.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    pattern = re.compile(rf"\.{re.escape(target.name)}\.[A-Za-z0-9_]{{8}}\.tmp")
    removed: list[Path] = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def payload_digest(payload: Any) -> str:
    """SHA-256 of a checkpoint payload's contents: every tensor's dtype, shape and bytes, every
    number, string and container, in order (not of the file's bytes, so it is independent of
    how ``torch.save`` lays the file out). Objects of other types count by their type name and
    attributes."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"T{tensor.dtype}{tuple(value.shape)}".encode())
            if tensor.numel():
                digest.update(tensor.view(torch.uint8).numpy().data)
        elif isinstance(value, Mapping):
            digest.update(f"D{len(value)}".encode())
            for key, item in value.items():
                feed(key)
                feed(item)
        elif isinstance(value, (list, tuple)):
            digest.update(f"{type(value).__name__[0]}{len(value)}".encode())
            for item in value:
                feed(item)
        elif value is None or isinstance(value, (bool, int, float, str, bytes, complex)):
            digest.update(f"{type(value).__name__}:{value!r}".encode())
        elif isinstance(value, np.ndarray):
            digest.update(f"N{value.dtype}{value.shape}".encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        else:
            digest.update(f"O{type(value).__qualname__}".encode())
            feed(dict(getattr(value, "__dict__", {})))

    feed(payload)
    return digest.hexdigest()


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _state_of(component: Any) -> Any:
    if isinstance(component, nn.Module):
        return distributed.unwrap_model(component).state_dict()
    return component.state_dict()


def save_checkpoint(
    path: PathLike,
    *,
    model: Optional[nn.Module] = None,
    modules: Optional[Mapping[str, nn.Module]] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Optional[Any] = None,
    scaler: Optional[torch.amp.GradScaler] = None,
    epoch: int = 0,
    step: int = 0,
    extra: Optional[Mapping[str, Any]] = None,
    group: Optional[Any] = None,
) -> Optional[Path]:
    """Write a checkpoint atomically; under ``torch.distributed`` call it on every rank.

    Args:
        path: target file (its directory is created).
        model: the student; DDP / ``torch.compile`` wrappers are removed, so the keys carry
            no ``module.`` / ``_orig_mod.`` prefix.
        modules: other trained modules by name (projection heads, a ``Distiller``'s heads).
        optimizer: e.g. a :class:`~mokd_optim.MultiObjectiveOptimizer` (method state included).
        scheduler: a ``torch.optim.lr_scheduler`` scheduler (anything with ``state_dict``).
        scaler: a ``torch.amp.GradScaler``.
        epoch, step: progress, returned by :func:`load_checkpoint`.
        extra: more values to keep (numbers, strings, tensors and containers of them, so that
            ``weights_only`` loading accepts them).
        group: process group whose ranks' RNG states are gathered (default: world).

    Returns:
        The path on the rank that wrote it (rank 0), ``None`` on the others. All ranks return
        after the file is complete (a barrier), so any rank may read it next.

    Raises:
        ValueError: ``epoch`` or ``step`` is negative.
    """
    if epoch < 0 or step < 0:
        raise ValueError(f"epoch and step must be >= 0, got epoch={epoch}, step={step}")
    rng_states = distributed.all_gather_objects(capture_rng_state(), group=group)
    written: Optional[Path] = None
    if distributed.rank() == 0:
        payload: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "progress": {"epoch": int(epoch), "step": int(step)},
            "rng": rng_states,
            "world_size": distributed.world_size(group),
            "extra": dict(extra) if extra is not None else {},
        }
        if model is not None:
            payload["model"] = _state_of(model)
        if modules is not None:
            payload["modules"] = {str(name): _state_of(module) for name, module in modules.items()}
        for key, component in (
            ("optimizer", optimizer),
            ("scheduler", scheduler),
            ("scaler", scaler),
        ):
            if component is not None:
                payload[key] = _state_of(component)
        payload["digest"] = payload_digest(payload)
        written = atomic_save(payload, path)
    distributed.barrier(group)
    return written


def load_checkpoint(
    path: PathLike,
    *,
    model: Optional[nn.Module] = None,
    modules: Optional[Mapping[str, nn.Module]] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Optional[Any] = None,
    scaler: Optional[torch.amp.GradScaler] = None,
    map_location: Any = "cpu",
    restore_rng: bool = True,
    strict: bool = True,
    weights_only: bool = True,
    verify: bool = True,
    group: Optional[Any] = None,
) -> Progress:
    """Restore the components given from a :func:`save_checkpoint` file.

    Every component is checked against the checkpoint before any is changed (model and module
    keys and shapes, the optimizer's parameter groups and, for a
    :class:`~mokd_optim.MultiObjectiveOptimizer`, its method state): a checkpoint that does not
    fit raises and leaves everything as it was.

    Each rank restores its own RNG states (saved per rank); when the world size changed, rank
    ``r`` takes the states of rank ``r mod saved_world_size`` and a warning says the random
    streams differ from the uninterrupted run.

    Args:
        path: the checkpoint file.
        model, modules, optimizer, scheduler, scaler: objects to load into (wrappers of the
            model are removed as in :func:`save_checkpoint`).
        map_location: passed to ``torch.load`` (``"cpu"`` by default; the optimizer moves
            its state to the parameters' device itself).
        restore_rng: restore Python, NumPy, torch and CUDA RNG states.
        strict: passed to ``load_state_dict`` of the model and modules.
        weights_only: load with ``torch.load(weights_only=True)`` (safe for untrusted files).
            Set ``False`` only for your own files that hold arbitrary Python objects.
        verify: compare the contents with the SHA-256 digest written with them (files from
            before the digest was added load without the check).
        group: process group the checkpoint was saved from (for the RNG states).

    Returns:
        :class:`Progress` with the epoch, the step and the ``extra`` values.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointCorruptError: (a ``ValueError``) the file is truncated or corrupt: it cannot
            be read, or its contents do not match their digest.
        ValueError: not a checkpoint of this format, or a component was requested that the
            checkpoint does not hold (e.g. ``scaler=`` for a run saved without one), or the
            ``modules`` names differ, or a component does not fit its saved state.
        RuntimeError: ``weights_only`` loading refused an object type in the checkpoint (the
            message says which).
    """
    target = Path(path)
    if not target.is_file():
        raise FileNotFoundError(f"no checkpoint at {target}")
    payload = _read(target, map_location, weights_only)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{target} is not a mokd_optim checkpoint (format {CHECKPOINT_FORMAT})")
    if verify and "digest" in payload:
        saved_digest = payload["digest"]
        contents = {key: value for key, value in payload.items() if key != "digest"}
        if payload_digest(contents) != saved_digest:
            raise CheckpointCorruptError(
                f"{target} is corrupt: its contents do not match the SHA-256 digest written with them "
                "(bytes changed on disk or in transfer); restore it from a copy or use an earlier checkpoint"
            )
    wanted = {
        "model": model,
        "modules": modules,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "scaler": scaler,
    }
    missing = [key for key, value in wanted.items() if value is not None and key not in payload]
    if missing:
        raise ValueError(f"{target} holds no state for {missing}; it was saved without them")
    # Check everything before changing anything.
    if model is not None:
        _check_module_state(
            distributed.unwrap_model(model), payload["model"], strict, f"{target}: model"
        )
    if modules is not None:
        saved = payload["modules"]
        if set(saved) != {str(name) for name in modules}:
            raise ValueError(
                f"{target} holds modules {sorted(saved)}, got {sorted(str(n) for n in modules)}"
            )
        for name, module in modules.items():
            _check_module_state(
                distributed.unwrap_model(module),
                saved[str(name)],
                strict,
                f"{target}: module {name!r}",
            )
    if optimizer is not None:
        _check_optimizer_state(optimizer, payload["optimizer"], f"{target}: optimizer")
    if restore_rng and not payload.get("rng"):
        raise ValueError(f"{target} holds no RNG states; pass restore_rng=False")
    # Apply.
    if model is not None:
        distributed.unwrap_model(model).load_state_dict(payload["model"], strict=strict)
    if modules is not None:
        for name, module in modules.items():
            distributed.unwrap_model(module).load_state_dict(
                payload["modules"][str(name)], strict=strict
            )
    if optimizer is not None:
        optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(payload["scheduler"])
    if scaler is not None:
        scaler.load_state_dict(payload["scaler"])
    if restore_rng:
        states = payload["rng"]
        here = distributed.rank(group)
        if len(states) != distributed.world_size(group):
            warnings.warn(
                f"checkpoint was saved by {len(states)} ranks, resuming on {distributed.world_size(group)}: "
                "random streams will differ from the uninterrupted run",
                stacklevel=2,
            )
        restore_rng_state(states[here % len(states)])
    progress = payload["progress"]
    return Progress(
        epoch=int(progress["epoch"]),
        step=int(progress["step"]),
        extra=dict(payload.get("extra", {})),
    )


class CheckpointCorruptError(ValueError):
    """A checkpoint file is truncated or corrupt (the message names the file)."""


def _read(target: Path, map_location: Any, weights_only: bool) -> Any:
    """``torch.load`` with errors that say which file is truncated or corrupt.

    Only a refusal of an object *type* by the ``weights_only`` unpickler (an "Unsupported
    global") suggests ``weights_only=False``; any other failure of a file that this module wrote
    means its bytes are damaged, and the unsafe loader would not help.
    """
    try:
        return torch.load(target, map_location=map_location, weights_only=weights_only)
    except Exception as error:
        text = str(error)
        if weights_only and "Unsupported global" in text:
            raise RuntimeError(
                f"{target}: weights_only loading refused an object in the checkpoint ({text.splitlines()[0]}); "
                "if you wrote this file yourself and trust it, pass weights_only=False"
            ) from error
        size = target.stat().st_size
        raise CheckpointCorruptError(
            f"{target} is truncated or corrupt ({size} bytes; torch.load failed with "
            f"{type(error).__name__}: {text.splitlines()[0] if text else ''}); restore it from a copy or "
            "use an earlier checkpoint"
        ) from error


def _check_module_state(module: nn.Module, state: Any, strict: bool, what: str) -> None:
    """Raise ``ValueError`` when ``module.load_state_dict(state, strict)`` would fail on keys or
    shapes (what ``load_state_dict`` checks), without loading anything."""
    if not isinstance(state, Mapping):
        raise ValueError(f"{what}: saved state is a {type(state).__name__}, not a state dict")
    own = module.state_dict()
    if strict:
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"{what} does not fit the checkpoint: missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} (strict=False loads the "
                "matching keys only)"
            )
    for key, value in state.items():
        mine = own.get(key)
        if isinstance(mine, torch.Tensor) and isinstance(value, torch.Tensor):
            if mine.shape != value.shape:
                raise ValueError(
                    f"{what}: {key} has shape {list(value.shape)} in the checkpoint, {list(mine.shape)} in the model"
                )


def _check_optimizer_state(optimizer: Any, state: Any, what: str) -> None:
    """Raise ``ValueError`` when ``optimizer.load_state_dict(state)`` would fail on structure,
    without loading anything (a ``MultiObjectiveOptimizer`` also checks its method state)."""
    check = getattr(optimizer, "check_state_dict", None)
    try:
        if callable(check):
            check(state)
        else:
            check_optimizer_groups(optimizer, state)
    except ValueError as error:
        raise ValueError(f"{what}: {error}") from error


def check_optimizer_groups(optimizer: torch.optim.Optimizer, state: Any) -> None:
    """Raise ``ValueError`` unless ``state`` is a ``torch.optim`` state dict with as many
    parameter groups, and parameters in each, as ``optimizer`` (what its ``load_state_dict``
    requires); changes nothing."""
    if not isinstance(state, Mapping) or "param_groups" not in state or "state" not in state:
        raise ValueError("not a torch.optim state dict (expected keys 'state' and 'param_groups')")
    saved, own = state["param_groups"], optimizer.param_groups
    if len(saved) != len(own):
        raise ValueError(
            f"the state holds {len(saved)} parameter groups, the optimizer has {len(own)}"
        )
    for index, (a, b) in enumerate(zip(saved, own)):
        if len(a["params"]) != len(b["params"]):
            raise ValueError(
                f"parameter group {index} holds {len(a['params'])} parameters in the state, "
                f"{len(b['params'])} in the optimizer"
            )
