"""Recorders: capture intermediate tensors of a model by module path, with forward hooks.

A path is a dotted module name as listed by ``model.named_modules()`` (``"layer3"``,
``"backbone.fpn"``, ``"blocks.11.mlp"``); ``""`` is the model itself. Wrappers are looked
through: a ``DistributedDataParallel`` model (whose names start with ``module.``) and a
``torch.compile``d model (``_orig_mod.``) accept the path with or without those prefixes, and
the hooks are registered on the wrapped module, so they fire whichever object is called.

``torch.nn.DataParallel`` is refused: it runs replicas in threads, which would race on the
recorded tensors; use ``DistributedDataParallel``.

Example::

    recorder = FeatureRecorder(model, ["layer2", "layer3"])
    logits = model(x)
    feats = recorder.pop()          # {"layer2": Tensor, "layer3": Tensor}, recorder emptied
    recorder.remove()               # or: with FeatureRecorder(...) as recorder: ...
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any, Callable, NoReturn, Union

from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.hooks import RemovableHandle

__all__ = ["CAPTURE_MODES", "FeatureRecorder", "ModulePathError", "resolve_module", "unwrap_model"]

CAPTURE_MODES = ("output", "input")
"""What a recorder keeps: a module's output, or the first positional argument of its call."""


class ModulePathError(LookupError):
    """A module path does not exist in the model; ``path`` holds it, ``suggestions`` close names."""

    def __init__(self, path: str, message: str, suggestions: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.path = path
        self.suggestions = tuple(suggestions)

    def __str__(self) -> str:  # LookupError would repr() the message otherwise
        return str(self.args[0])


def _wrapped(module: nn.Module) -> tuple[str, nn.Module] | None:
    """``(attribute, inner)`` when ``module`` is a DDP or ``torch.compile`` wrapper, else None."""
    if isinstance(module, nn.DataParallel):
        raise TypeError(
            "nn.DataParallel is not supported by the recorders (its replicas run in threads and would "
            "race on the recorded tensors); use torch.nn.parallel.DistributedDataParallel"
        )
    if isinstance(module, DistributedDataParallel):
        return "module", module.module
    inner = getattr(module, "_orig_mod", None)  # torch._dynamo's OptimizedModule
    if isinstance(inner, nn.Module) and type(module).__name__ == "OptimizedModule":
        return "_orig_mod", inner
    return None


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside any nesting of ``DistributedDataParallel`` / ``torch.compile``.

    Raises ``TypeError`` for ``nn.DataParallel`` (see the module docstring).
    """
    while True:
        found = _wrapped(model)
        if found is None:
            return model
        model = found[1]


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule of ``model`` at ``path``, looking through DDP / compile wrappers.

    A leading ``module.`` (DDP) or ``_orig_mod.`` (compile) segment is accepted where the
    corresponding wrapper is; ``""`` names the (unwrapped) model itself.

    Raises:
        ModulePathError: no module at ``path``; the message lists the closest existing paths.
        TypeError: ``path`` is not a string, or the model is an ``nn.DataParallel``.
    """
    if not isinstance(path, str):
        raise TypeError(f"a module path must be a string like 'layer3', got {type(path).__name__}")
    parts = path.split(".") if path else []
    module = model
    while True:
        found = _wrapped(module)
        if found is None:
            break
        attribute, module = found
        if parts and parts[0] == attribute:
            parts = parts[1:]
    current: nn.Module = module
    for index, part in enumerate(parts):
        child = current._modules.get(part) if part else None
        if child is None:
            _raise_missing(module, path, ".".join(parts), ".".join(parts[:index]))
        current = child
    return current


def _raise_missing(model: nn.Module, path: str, stripped: str, deepest: str) -> NoReturn:
    names = [name for name, _ in model.named_modules() if name]
    suggestions = difflib.get_close_matches(stripped, names, n=5, cutoff=0.5)
    where = f" (the deepest existing prefix is {deepest!r})" if deepest else ""
    if suggestions:
        hint = "close matches: " + ", ".join(repr(name) for name in suggestions)
    else:
        top = [name for name in names if "." not in name][:12]
        hint = (
            "top-level modules: " + ", ".join(repr(name) for name in top)
            if top
            else "the model has no submodules"
        )
    raise ModulePathError(
        path,
        f"no module at path {path!r} in {type(model).__name__}{where}; {hint}. "
        "Paths are dotted names as listed by model.named_modules().",
        suggestions,
    )


class FeatureRecorder:
    """Record the outputs (or inputs) of several modules of a model during its forward pass.

    Args:
        model: the model; may be wrapped in ``DistributedDataParallel`` and/or ``torch.compile``.
        paths: a path, a sequence of paths (each its own key), or a mapping key -> path.
            Several keys may name the same module.
        capture: ``"output"`` (default) or ``"input"`` (first positional argument).

    After each forward, :attr:`features` maps each key to what the module produced in that
    forward (a tensor, or whatever the module returns). A module called several times in one
    forward keeps its last call. Tensors keep their autograd graph: a loss on a recorded student
    feature back-propagates into the student. Call :meth:`pop` (or :meth:`clear`) once the
    tensors are consumed, so they do not outlive the step.

    Raises:
        ModulePathError: a path does not exist (with close matches in the message).
        ValueError: no paths, or an unknown ``capture`` mode.
    """

    def __init__(
        self,
        model: nn.Module,
        paths: Union[str, Sequence[str], Mapping[str, str]],
        *,
        capture: str = "output",
    ) -> None:
        if capture not in CAPTURE_MODES:
            raise ValueError(f"unknown capture mode {capture!r}; choose one of {CAPTURE_MODES}")
        if isinstance(paths, str):
            named = {paths: paths}
        elif isinstance(paths, Mapping):
            named = {str(key): path for key, path in paths.items()}
        else:
            named = {path: path for path in paths}
        if not named:
            raise ValueError("FeatureRecorder needs at least one module path")
        self.model = model
        self.capture = capture
        self.paths: dict[str, str] = dict(named)
        self._modules: dict[str, nn.Module] = {
            key: resolve_module(model, path) for key, path in named.items()
        }
        self._features: dict[str, Any] = {}
        self._handles: list[RemovableHandle] = []
        self.attach()

    @property
    def attached(self) -> bool:
        """Whether the hooks are currently registered."""
        return bool(self._handles)

    @property
    def features(self) -> dict[str, Any]:
        """Key -> recorded value of the last forward (a copy of the mapping; tensors shared)."""
        return dict(self._features)

    def __getitem__(self, key: str) -> Any:
        if key not in self._features:
            if key not in self.paths:
                raise KeyError(f"{key!r} is not recorded; recorded keys: {list(self.paths)}")
            raise KeyError(
                f"nothing recorded for {key!r} (path {self.paths[key]!r}) yet: run a forward pass first"
            )
        return self._features[key]

    def _hook_for(self, keys: tuple[str, ...]) -> Callable[..., None]:
        store = self._features
        if self.capture == "output":

            def record_output(_module: nn.Module, _args: Any, output: Any) -> None:
                for key in keys:
                    store[key] = output

            return record_output

        def record_input(_module: nn.Module, args: Any, _output: Any) -> None:
            value = args[0] if isinstance(args, tuple) and args else args
            for key in keys:
                store[key] = value

        return record_input

    def attach(self) -> None:
        """Register the hooks (done by the constructor; again after :meth:`remove`)."""
        if self._handles:
            return
        by_module: dict[int, tuple[nn.Module, list[str]]] = {}
        for key, module in self._modules.items():
            by_module.setdefault(id(module), (module, []))[1].append(key)
        for module, keys in by_module.values():
            self._handles.append(module.register_forward_hook(self._hook_for(tuple(keys))))

    def remove(self) -> None:
        """Unregister the hooks and drop recorded tensors. The model is left as it was."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._features.clear()

    def clear(self) -> None:
        """Forget the recorded tensors (hooks stay registered)."""
        self._features.clear()

    def pop(self) -> dict[str, Any]:
        """Return the recorded values and empty the recorder."""
        features = dict(self._features)
        self._features.clear()
        return features

    def __enter__(self) -> FeatureRecorder:
        self.attach()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "attached" if self.attached else "removed"
        return f"FeatureRecorder({type(self.model).__name__}, paths={self.paths!r}, capture={self.capture!r}, {state})"
