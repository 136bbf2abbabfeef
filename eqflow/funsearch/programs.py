"""The programs database's selection rules: islands of programs clustered by signature, prompts
built from a softmax over clusters and then over programs, and the periodic reset of the weaker
half of the islands.

This module holds the rules and an in-memory view; the rows live in PostgreSQL (``fs_programs``,
``fs_islands``) and the engine rebuilds this view from them on every start. The rules follow the
FunSearch paper and its reference implementation: cluster temperature ``T0 * (1 - (n mod P) / P)``
with n the island's registered programs, shorter programs preferred within a cluster, parents
shown in ascending score order.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Program:
    program_id: int
    island: int
    body: str
    scores: dict[str, float]
    score: float
    behaviour_hash: str = ""

    @property
    def rank(self) -> tuple[float, float, int]:
        """Best first by score; among equal scores the higher total over the tests, then the
        earlier program (so "last"-reduced ties prefer a program that is good everywhere)."""
        return (self.score, sum(self.scores.values()), -self.program_id)

    @property
    def signature(self) -> tuple[float, ...]:
        return tuple(self.scores[k] for k in sorted(self.scores))


@dataclass(frozen=True)
class DatabaseSettings:
    num_islands: int = 10
    functions_per_prompt: int = 2
    cluster_temperature_init: float = 0.1
    cluster_temperature_period: int = 30_000
    reset_period_s: float | None = 4 * 3600.0  # None: no time-based reset
    reset_programs: int | None = None          # reset when every island holds at least this many


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    if not np.all(np.isfinite(logits)):
        raise ValueError(f"non-finite logits: {logits}")
    z = logits.astype(np.float64) / max(temperature, 1e-12)
    z -= z.max()
    p = np.exp(z)
    return np.asarray(p / p.sum())


@dataclass
class Island:
    island: int
    version: int = 0
    clusters: dict[tuple[float, ...], list[Program]] = field(default_factory=dict)
    registered: int = 0  # programs registered on this version, for the temperature schedule

    def add(self, program: Program) -> None:
        self.clusters.setdefault(program.signature, []).append(program)
        self.registered += 1

    def clear(self, version: int) -> None:
        self.version, self.clusters, self.registered = version, {}, 0

    @property
    def programs(self) -> list[Program]:
        return [p for members in self.clusters.values() for p in members]

    @property
    def best(self) -> Program | None:
        return max(self.programs, key=lambda p: p.rank, default=None)

    @property
    def best_score(self) -> float:
        best = self.best
        return best.score if best is not None else -math.inf


class ProgramsView:
    """The islands as the ME sees them; every change here mirrors a committed database change."""

    def __init__(self, settings: DatabaseSettings, rng: random.Random) -> None:
        self.settings = settings
        self.rng = rng
        self.islands = [Island(i) for i in range(settings.num_islands)]

    def load(self, versions: dict[int, int], programs: list[Program]) -> None:
        for island in self.islands:
            island.clear(versions.get(island.island, 0))
        for program in programs:
            self.islands[program.island].add(program)

    def add(self, program: Program) -> None:
        self.islands[program.island].add(program)

    @property
    def best(self) -> Program | None:
        found = [b for i in self.islands if (b := i.best) is not None]
        return max(found, key=lambda p: p.rank, default=None)

    def total(self) -> int:
        return sum(len(i.programs) for i in self.islands)

    def temperature(self, island: Island) -> float:
        s = self.settings
        period = s.cluster_temperature_period
        return s.cluster_temperature_init * (1 - (island.registered % period) / period)

    def choose_parents(self, island_id: int) -> list[Program]:
        """Programs for one prompt from one island, sorted by ascending score (the prompt shows
        them as successive improvements, so the best comes last)."""
        island = self.islands[island_id]
        signatures = list(island.clusters)
        if not signatures:
            return []
        scores = np.array([island.clusters[s][0].score for s in signatures])
        k = min(len(signatures), self.settings.functions_per_prompt)
        probabilities = softmax(scores, self.temperature(island))
        # Without replacement, as many distinct clusters as asked for; numpy's choice wants at
        # least k non-zero probabilities, which a very low temperature can take away.
        nonzero = int(np.count_nonzero(probabilities))
        if nonzero < k:
            probabilities = (probabilities + 1e-12) / (probabilities + 1e-12).sum()
        generator = np.random.default_rng(self.rng.getrandbits(63))
        picked = generator.choice(len(signatures), size=k, replace=False, p=probabilities)
        parents = [self._program_in(island.clusters[signatures[i]], generator) for i in picked]
        return sorted(parents, key=lambda p: (p.score, p.program_id))

    @staticmethod
    def _program_in(members: list[Program], generator: np.random.Generator) -> Program:
        lengths = np.array([len(p.body) for p in members], dtype=np.float64)
        normalised = (lengths - lengths.min()) / (lengths.max() + 1e-6)
        return members[int(generator.choice(len(members), p=softmax(-normalised, 1.0)))]

    def reset_due(self, seconds_since_reset: float) -> str | None:
        """Why the weaker half should be reset now, or None."""
        s = self.settings
        if s.reset_programs is not None and all(len(i.programs) >= s.reset_programs for i in self.islands):
            return f"every island holds at least {s.reset_programs} programs"
        if s.reset_period_s is not None and seconds_since_reset >= s.reset_period_s:
            return f"{s.reset_period_s:g} s since the last reset"
        return None

    def plan_reset(self) -> tuple[list[int], dict[int, Program]]:
        """The weaker half of the islands (ties broken at random) and, for each, the founder: the
        best program of a random surviving island."""
        noise = [self.rng.random() * 1e-6 for _ in self.islands]
        order = sorted(self.islands, key=lambda i: (i.best_score + noise[i.island]))
        weak = [i.island for i in order[: len(order) // 2]]
        keep = [i for i in order[len(order) // 2:] if i.best is not None]
        founders: dict[int, Program] = {}
        for island_id in weak:
            if keep:
                best = self.rng.choice(keep).best
                assert best is not None
                founders[island_id] = best
        return weak, founders

    def summary(self) -> list[dict[str, Any]]:
        return [{"island": i.island, "version": i.version, "programs": len(i.programs),
                 "clusters": len(i.clusters), "best": i.best_score if i.best is not None else None}
                for i in self.islands]
