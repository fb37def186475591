"""Name -> method class registry."""

from __future__ import annotations

from typing import Any, Callable, TypeVar, Union

from mokd_optim._validation import OptionError
from mokd_optim.methods._base import Method

_REGISTRY: dict[str, type[Method]] = {}

M = TypeVar("M", bound=type[Method])


def register(cls: M) -> M:
    """Class decorator adding a :class:`Method` subclass under its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no registry name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(
            f"method name {cls.name!r} is already registered to {_REGISTRY[cls.name].__name__}"
        )
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    """Sorted names of the registered methods."""
    return sorted(_REGISTRY)


def get(name: Union[str, Method], **options: Any) -> Method:
    """Build the method registered as ``name`` with ``options``; a Method instance passes through.

    Raises:
        ValueError: unknown name (the message lists the available ones), or options given
            together with an instance.
        TypeError: an option the method does not take.
    """
    if isinstance(name, Method):
        if options:
            raise ValueError(
                f"options {sorted(options)} given with a method instance {name!r}; pass them to its constructor"
            )
        return name
    if not isinstance(name, str):
        raise TypeError(
            f"method must be a registered name or a Method instance, got {type(name).__name__}"
        )
    key = name.lower().replace("_", "-")
    if key not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(available())}")
    factory: Callable[..., Method] = _REGISTRY[key]
    try:
        return factory(**options)
    except OptionError:
        raise  # already names the method and the option
    except TypeError as error:
        raise TypeError(f"method {key!r}: {error}") from error
