"""Argument checks done before anything is sent, so bad input never half-writes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from eqflow.errors import InvalidInput, PayloadTooLarge

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
MAX_EXP_ID = 200
MAX_TAG = 1000
MAX_CLAIM = 10_000


def exp_id(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"exp_id must be a str, got {type(value).__name__}")
    if not 1 <= len(value) <= MAX_EXP_ID or "\x00" in value:
        raise InvalidInput(f"exp_id must be 1..{MAX_EXP_ID} characters without NUL, got {len(value)}")
    return value


def int32(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an int, got {type(value).__name__}")
    if not INT32_MIN <= value <= INT32_MAX:
        raise InvalidInput(f"{name} must fit in 32 bits, got {value}")
    return value


def task_type(value: Any) -> int:
    return int32(value, "task_type")


def task_types(value: Any) -> tuple[int, ...]:
    values = [value] if isinstance(value, int) and not isinstance(value, bool) else list(value)
    if not values:
        raise InvalidInput("at least one task type is needed")
    return tuple(sorted({task_type(v) for v in values}))


def text(value: Any, name: str, limit: int) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a str (serialize it, e.g. json.dumps), got {type(value).__name__}")
    if "\x00" in value:
        raise InvalidInput(f"{name} must not contain NUL characters")
    # Cheap bound first: a str of n characters encodes to at most 4n bytes.
    if len(value) * 4 > limit and len(value.encode("utf-8")) > limit:
        raise PayloadTooLarge(f"{name} is {len(value.encode('utf-8'))} bytes, over the limit of {limit}")
    return value


def optional_text(value: Any, name: str, limit: int) -> str | None:
    return None if value is None else text(value, name, limit)


def count(value: Any, name: str, low: int = 1, high: int = MAX_CLAIM) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise InvalidInput(f"{name} must be between {low} and {high}, got {value}")
    return value


def timeout(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise InvalidInput(f"timeout must be None or a number >= 0, got {value!r}")
    return float(value)


def per_item(value: Any, n: int, name: str, check: Any) -> list[Any]:
    """One value for every item, or a sequence with one value per item."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise InvalidInput(f"{name}: {len(value)} values given for {n} tasks")
        return [check(v) for v in value]
    single = check(value)
    return [single] * n


def task_ids(items: Iterable[Any]) -> list[int]:
    """Task ids from futures, claimed tasks or ints."""
    ids = []
    for item in items:
        tid = getattr(item, "task_id", item)
        if isinstance(tid, bool) or not isinstance(tid, int):
            raise InvalidInput(f"task ids must be ints (or futures), got {type(tid).__name__}")
        if not 0 <= tid < 2**63:
            raise InvalidInput(f"task id out of range: {tid}")
        ids.append(tid)
    return ids


def as_sequence(items: Any, name: str) -> Sequence[Any]:
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise InvalidInput(f"{name} must be a list, got {type(items).__name__}")
    return items if isinstance(items, Sequence) else list(items)


MAX_EVENT_BYTES = 64 * 1024


def json_object(value: Any, name: str) -> str:
    """A dict of JSON values, serialized; small (events and records, not results)."""
    import json

    if value is None:
        return "{}"
    if not isinstance(value, dict):
        raise InvalidInput(f"{name} must be a dict, got {type(value).__name__}")
    try:
        encoded = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{name} must hold JSON values only: {exc}") from None
    return text(encoded, name, MAX_EVENT_BYTES)


def label(value: Any, name: str, limit: int = 100) -> str:
    """A short non-empty name (an event kind, a status)."""
    checked = text(value, name, limit)
    if not checked.strip():
        raise InvalidInput(f"{name} must not be empty")
    return checked
