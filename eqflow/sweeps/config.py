"""Strict config classes (``@pydraclass``) and the grid/binary search configs built on them.

A ``@pydraclass`` class is a dataclass whose instances refuse attributes it does not declare (the
error names the attribute and the closest declared one), finalise recursively (nested configs in
fields, lists, tuples and dicts; a class's own ``custom_finalize`` hook runs after its children's)
and take ``key=value`` overrides from a command line (``nested.key=value``; values are Python
literals, else strings).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

if sys.version_info >= (3, 11):
    from typing import dataclass_transform
else:  # pragma: no cover - Python 3.10 (typing_extensions comes with pydantic)
    from typing_extensions import dataclass_transform

T = TypeVar("T")


class InvalidConfigurationError(ValueError):
    """An unknown attribute, a missing required value or a bad override."""


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # a field without a default that must be set before finalize()


def is_config(obj: Any) -> bool:
    return getattr(type(obj), "__pydraclass__", False) is True


def _strict_setattr(self: Any, name: str, value: Any) -> None:
    allowed = type(self).__pydra_fields__
    if name not in allowed and not name.startswith("_"):
        close = difflib.get_close_matches(name, sorted(allowed), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InvalidConfigurationError(
            f"{type(self).__name__} has no attribute {name!r}{hint} (fields: {', '.join(sorted(allowed))})")
    object.__setattr__(self, name, value)


def _finalize(self: Any) -> Any:
    """Finalise nested configs first, then check required fields, then ``custom_finalize``."""
    if getattr(self, "_finalized", False):
        return self
    for f in dataclasses.fields(self):
        value = getattr(self, f.name)
        if value is REQUIRED:
            raise InvalidConfigurationError(f"{type(self).__name__}.{f.name} is required but was not set")
        _finalize_value(value)
    hook = getattr(self, "custom_finalize", None)
    if callable(hook):
        hook()
    object.__setattr__(self, "_finalized", True)
    return self


def _finalize_value(value: Any) -> None:
    if is_config(value):
        value.finalize()
    elif isinstance(value, (list, tuple, set)):
        for item in value:
            _finalize_value(item)
    elif isinstance(value, dict):
        for item in value.values():
            _finalize_value(item)


def _to_dict(self: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(self):
        value = getattr(self, f.name)
        out[f.name] = value.to_dict() if is_config(value) else value
    return out


@dataclass_transform()
def pydraclass(cls: type[T]) -> type[T]:
    """Make ``cls`` a strict dataclass config (see the module docstring)."""
    for name, default in list(vars(cls).items()):
        # A mutable default (list, dict, a config instance) would be shared by every instance.
        if name in getattr(cls, "__annotations__", {}) and isinstance(default, (list, dict, set)):
            setattr(cls, name, dataclasses.field(default_factory=functools.partial(type(default), default)))
    data: Any = dataclasses.dataclass(cls)
    fields = {f.name for f in dataclasses.fields(data)}
    data.__pydra_fields__ = frozenset(fields)
    data.__pydraclass__ = True
    data.__setattr__ = _strict_setattr
    for name, method in (("finalize", _finalize), ("to_dict", _to_dict), ("apply_overrides", apply_overrides)):
        if not hasattr(data, name):
            setattr(data, name, method)
    return data  # type: ignore[no-any-return]


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: Any, overrides: Sequence[str]) -> Any:
    """Apply ``key=value`` (or ``nested.key=value``) overrides in place; returns the config."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise InvalidConfigurationError(f"override must look like key=value, got {item!r}")
        *path, last = key.split(".")
        target = config
        for part in path:
            if not hasattr(target, part):
                raise InvalidConfigurationError(f"{type(target).__name__} has no attribute {part!r} (in {key!r})")
            target = getattr(target, part)
        if is_config(target):
            setattr(target, last, _parse_value(text))  # the strict check names an unknown key
        elif isinstance(target, dict):
            target[last] = _parse_value(text)
        else:
            raise InvalidConfigurationError(f"cannot set {key!r}: {type(target).__name__} is not a config")
    return config


def main(config_cls: type[T]) -> Callable[[Callable[[T], Any]], Callable[..., Any]]:
    """Decorate ``fn(config)`` into a command: ``python script.py key=value nested.key=value``."""

    def wrap(fn: Callable[[T], Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(argv: Sequence[str] | None = None) -> Any:
            config = config_cls()
            apply_overrides(config, list(sys.argv[1:] if argv is None else argv))
            config.finalize()  # type: ignore[attr-defined]
            return fn(config)

        return run

    return wrap


class ConfigLike(Protocol):
    def finalize(self) -> Any: ...


@pydraclass
class BaseExperimentConfig:
    """An experiment config with the folder its outputs go to."""

    base_dir: str | None = None

    def finalize(self) -> Any:
        return _finalize(self)

    def apply_overrides(self, overrides: Sequence[str]) -> Any:
        return apply_overrides(self, overrides)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


@pydraclass
class _BaseSearchConfig:
    base_dir: str | None = None
    sweep_props: dict[str, list[Any]] | None = None
    base_experiment_config: Any = None

    def finalize(self) -> Any:
        return _finalize(self)

    def apply_overrides(self, overrides: Sequence[str]) -> Any:
        return apply_overrides(self, overrides)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    def get_experiment_config_and_base_dir(self, **prop_values: Any) -> tuple[Any, str]:
        """The experiment config for one point (prop values) and the folder of its outputs."""
        raise NotImplementedError(f"{type(self).__name__} must define get_experiment_config_and_base_dir")

    def run_experiment_config(self, config: Any) -> Any:
        """Run one job (in a pool worker, on its GPU slot); the return value is the job's result."""
        raise NotImplementedError(f"{type(self).__name__} must define run_experiment_config")

    def agg_results(self, results: list[Any]) -> Any:
        """Aggregate the GPUJobResults of the jobs swept at one point (seeds, ...)."""
        raise NotImplementedError(f"{type(self).__name__} must define agg_results")

    def _get_experiment_config_and_base_dir(self, **prop_values: Any) -> tuple[Any, str]:
        config, base_dir = self.get_experiment_config_and_base_dir(**prop_values)
        finalize = getattr(config, "finalize", None)
        if callable(finalize) and not isinstance(config, type):
            finalize()  # in case the subclass forgot
        return config, str(base_dir)


@pydraclass
class GridSearchConfig(_BaseSearchConfig):
    """A grid search: every point of the cross product of ``sweep_props`` is one job;
    ``agg_results`` gets them all."""


@pydraclass
class BinarySearchConfig(_BaseSearchConfig):
    """A binary search over ``prop`` in ``range``, stopping once the range is narrower than
    ``precision``. Each probe runs one job per point of ``sweep_props`` (e.g. seeds);
    ``agg_results`` returns ``(success, result)``. ``success_direction_lower``: success at a
    value means success at every lower one (the search moves down after a success)."""

    prop: str | None = None
    range: tuple[float, float] | None = None
    precision: float | None = None
    success_direction_lower: bool = True

    def custom_finalize(self) -> None:
        if not self.prop:
            raise InvalidConfigurationError(f"{type(self).__name__}.prop is required")
        if self.range is None or len(self.range) != 2 or not self.range[0] < self.range[1]:
            raise InvalidConfigurationError(f"{type(self).__name__}.range must be (lo, hi) with lo < hi, "
                                            f"got {self.range!r}")
        if self.precision is None or not self.precision > 0:
            raise InvalidConfigurationError(f"{type(self).__name__}.precision must be > 0, got {self.precision!r}")
        if self.sweep_props and self.prop in self.sweep_props:
            raise InvalidConfigurationError(f"{self.prop!r} is both the searched prop and a sweep prop")
