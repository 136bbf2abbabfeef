"""Argument checks done before anything is sent, so bad input never half-writes."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from eqflow.errors import InvalidInput, PayloadTooLarge
from eqflow.models import ClaimedTask, StopMode

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
ID_MAX = 2**63 - 1
MAX_EXP_ID = 200
MAX_TAG = 1000
MAX_CLAIM = 10_000
MAX_IDEMPOTENCY_KEY = 200
MAX_LEASE_S = 366 * 86400.0  # leases are renewed by heartbeats; a year is beyond any sane use


def _show(value: Any) -> str:
    """A value for an error message: repr() escapes lone surrogates, so the message itself
    can always be encoded (the service sends it as JSON)."""
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def exp_id(value: Any) -> str:
    """Any text of 1..200 characters without NUL or lone surrogates. No other character is
    refused (ids come from EMEWS scripts): notifications split their payload at the last "|"
    and the service takes exp_id as a query parameter, so "|", "/", "?", "#", "%" are safe."""
    if not isinstance(value, str):
        raise InvalidInput(f"exp_id must be a str, got {type(value).__name__}")
    if not 1 <= len(value) <= MAX_EXP_ID:
        raise InvalidInput(f"exp_id must be 1..{MAX_EXP_ID} characters, got {len(value)}")
    return text(value, "exp_id", 4 * MAX_EXP_ID)


def int32(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an int, got {type(value).__name__}")
    if not INT32_MIN <= value <= INT32_MAX:
        raise InvalidInput(f"{name} must fit in 32 bits, got {value}")
    return value


def task_type(value: Any) -> int:
    return int32(value, "task_type")


def task_types(value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        values = [value]
    elif isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        values = list(value)
    else:
        raise InvalidInput(f"task_type must be an int or a list of ints, got {type(value).__name__}")
    if not values:
        raise InvalidInput("at least one task type is needed")
    return tuple(sorted({task_type(v) for v in values}))


def text(value: Any, name: str, limit: int) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a str (serialize it, e.g. json.dumps), got {type(value).__name__}")
    if "\x00" in value:
        raise InvalidInput(f"{name} must not contain NUL characters")
    if value.isascii():  # O(1) in CPython: an ASCII str encodes to itself
        size = len(value)
    else:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError as exc:  # a lone surrogate ("\ud800") has no UTF-8 form
            raise InvalidInput(f"{name} is not valid Unicode: lone surrogate U+{ord(value[exc.start]):04X} "
                               f"at index {exc.start}") from None
    if size > limit:
        raise PayloadTooLarge(f"{name} is {size} bytes, over the limit of {limit}")
    return value


def optional_text(value: Any, name: str, limit: int) -> str | None:
    return None if value is None else text(value, name, limit)


def count(value: Any, name: str, low: int = 1, high: int = MAX_CLAIM) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise InvalidInput(f"{name} must be between {low} and {high}, got {value}")
    return value


def _real(value: Any, name: str, expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"{name} must be {expected}, got {type(value).__name__} {_show(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond a float's range
        number = math.inf if value > 0 else -math.inf
    if math.isnan(number):
        raise InvalidInput(f"{name} must be {expected}, got NaN")
    return number


def timeout(value: Any, name: str = "timeout") -> float | None:
    """Seconds to wait: None or +inf (no limit) or a number >= 0; NaN and negatives are refused."""
    if value is None:
        return None
    number = _real(value, name, "None or a number of seconds >= 0")
    if number < 0:
        raise InvalidInput(f"{name} must be None or a number of seconds >= 0, got {_show(value)}")
    return None if number == math.inf else number


def seconds(value: Any, name: str, high: float) -> float:
    """A finite duration > 0 and <= high (a lease, a poll interval, a reconnect deadline)."""
    number = _real(value, name, f"a number of seconds > 0 and <= {high:g}")
    if not 0 < number <= high:
        raise InvalidInput(f"{name} must be a number of seconds > 0 and <= {high:g}, got {_show(value)}")
    return number


def lease(value: Any, name: str = "lease_s") -> float:
    return seconds(value, name, MAX_LEASE_S)


def optional_lease(value: Any, default: float, name: str = "lease_s") -> float:
    return default if value is None else lease(value, name)


def id64(value: Any, name: str) -> int:
    """A database identity (task, pool, claim): an int in 0..2**63-1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value <= ID_MAX:
        raise InvalidInput(f"{name} out of range (0..2**63-1): {value}")
    return value


def held(tasks: Iterable[Any], what: str) -> tuple[list[int], list[int | None]]:
    """Task and claim ids of claimed tasks (a report, a release, a heartbeat)."""
    ids: list[int] = []
    claims: list[int | None] = []
    for task in tasks:
        if not isinstance(task, ClaimedTask):
            raise InvalidInput(f"{what} takes ClaimedTasks (from claim), got {type(task).__name__}")
        ids.append(id64(task.task_id, "task_id"))
        claims.append(None if task.claim_id is None else id64(task.claim_id, "claim_id"))
    return ids, claims


def boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{name} must be True or False, got {type(value).__name__} {_show(value)}")
    return value


def stop_mode(value: Any) -> StopMode:
    try:
        return StopMode(value)
    except ValueError:
        raise InvalidInput(f"mode must be 'drain' or 'now', got {_show(value)}") from None


def max_attempts(value: Any) -> int:
    return count(value, "max_attempts", 1, 1000)


def idempotency_key(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and not 1 <= len(value) <= MAX_IDEMPOTENCY_KEY:
        raise InvalidInput(f"idempotency_key must be 1..{MAX_IDEMPOTENCY_KEY} characters, got {len(value)}")
    return text(value, "idempotency_key", 4 * MAX_IDEMPOTENCY_KEY)


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


# A \u0000 escape (not preceded by an escaping backslash): jsonb cannot hold NUL.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def json_object(value: Any, name: str, limit: int = MAX_EVENT_BYTES) -> str:
    """A dict of JSON values, serialized; small (events and records, not results).

    Refused: NaN/inf (not JSON), NUL and lone surrogates (PostgreSQL's jsonb holds neither)."""
    if value is None:
        return "{}"
    if not isinstance(value, dict):
        raise InvalidInput(f"{name} must be a dict, got {type(value).__name__}")
    try:
        encoded = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{name} must hold JSON values only: {exc}") from None
    if _NUL_ESCAPE.search(encoded):
        raise InvalidInput(f"{name} must not contain NUL characters")
    return text(encoded, name, limit)


def label(value: Any, name: str, limit: int = 100) -> str:
    """A short non-empty name (an event kind, a status)."""
    checked = text(value, name, limit)
    if not checked.strip():
        raise InvalidInput(f"{name} must not be empty")
    return checked
