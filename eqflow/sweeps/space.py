"""Search spaces (slurm_sweeps' names): values in a trial's cfg that are drawn per trial
(``Uniform``, ``LogUniform``, ``Choice``) or swept (``Grid``: every combination of every Grid
in the cfg, each once; ``n_trials`` is then ignored). Nested dicts are searched too."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class Space:
    def sample(self, rng: random.Random) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class Uniform(Space):
    low: float
    high: float

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"Uniform needs low < high, got ({self.low}, {self.high})")

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)


@dataclass(frozen=True)
class LogUniform(Space):
    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0 < self.low < self.high:
            raise ValueError(f"LogUniform needs 0 < low < high, got ({self.low}, {self.high})")

    def sample(self, rng: random.Random) -> float:
        return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))


@dataclass(frozen=True)
class Choice(Space):
    values: Sequence[Any]
    weights: Sequence[float] | None = None

    def __post_init__(self) -> None:
        if not len(self.values):
            raise ValueError("Choice needs at least one value")

    def sample(self, rng: random.Random) -> Any:
        return rng.choices(list(self.values), weights=self.weights)[0]


@dataclass(frozen=True)
class Grid(Space):
    values: Sequence[Any]

    def __post_init__(self) -> None:
        if not len(self.values):
            raise ValueError("Grid needs at least one value")


def _grids(cfg: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Grid]]:
    if isinstance(cfg, Grid):
        return [(path, cfg)]
    if isinstance(cfg, dict):
        return [g for key, value in cfg.items() for g in _grids(value, (*path, str(key)))]
    return []


def _fill(cfg: Any, rng: random.Random, chosen: dict[tuple[str, ...], Any], path: tuple[str, ...] = ()) -> Any:
    if isinstance(cfg, Grid):
        return chosen[path]
    if isinstance(cfg, Space):
        return cfg.sample(rng)
    if isinstance(cfg, dict):
        return {key: _fill(value, rng, chosen, (*path, str(key))) for key, value in cfg.items()}
    return cfg


def sample_cfgs(cfg: dict[str, Any], n_trials: int, seed: int | None = None) -> list[dict[str, Any]]:
    """The trials' cfgs: every Grid combination once (random spaces drawn for each), or else
    ``n_trials`` draws. A cfg drawn twice (a Choice, say) is one trial: its id is its hash."""
    rng = random.Random(seed)
    grids = _grids(cfg)
    if grids:
        combos = [dict(zip([p for p, _ in grids], values, strict=True))
                  for values in itertools.product(*(g.values for _, g in grids))]
    else:
        if n_trials < 1:
            raise ValueError(f"n_trials must be >= 1, got {n_trials}")
        combos = [{} for _ in range(n_trials)]
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for chosen in combos:
        trial_cfg = _fill(cfg, rng, chosen)
        tid = trial_id(trial_cfg)
        if tid not in seen:
            seen.add(tid)
            out.append(trial_cfg)
    return out


def trial_id(cfg: dict[str, Any]) -> str:
    """Six hex digits hashed from the cfg (its JSON with sorted keys)."""
    text = json.dumps(cfg, sort_keys=True, default=repr)
    return hashlib.blake2s(text.encode(), digest_size=3).hexdigest()
