"""ASHA: the rungs where trials are judged, and the two pruning rules.

``rule="async"`` (the default) is the asynchronous rule of the ASHA paper (Li et al. 2020): at a
trial's first report at or past a rung, it goes on only if its value is in the top
1/reduction_factor of the values recorded at that rung so far (the best one always goes on). The
decision is made once, in PostgreSQL, serialised per rung (see ``sweep_decide_rung`` in
migration 0009). Rungs at or past ``max_t`` are listed but not judged: a trial there is done.

``rule="percentile"`` is slurm_sweeps' own: a trial's value at exactly a rung's iteration is
compared, on every log, with the 1/reduction_factor percentile of all values recorded at that
rung; worse is pruned, so a trial may be pruned later, when better trials reach its rungs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

RULES = ("async", "percentile")


class TrialPruned(Exception):
    """Raised by ``log()`` in a trial that ASHA stopped; let it propagate out of ``train``."""


@dataclass(frozen=True)
class ASHA:
    metric: str
    mode: str
    reduction_factor: int = 4
    min_t: int = 1
    max_t: int = 50
    rule: str = "async"
    rungs: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"ASHA mode must be 'min' or 'max', got {self.mode!r}")
        if not isinstance(self.reduction_factor, int) or self.reduction_factor < 2:
            raise ValueError(f"ASHA reduction_factor must be an integer >= 2, got {self.reduction_factor!r}")
        if not 0 < self.min_t < self.max_t:
            raise ValueError(f"ASHA needs 0 < min_t < max_t, got min_t={self.min_t}, max_t={self.max_t}")
        if self.rule not in RULES:
            raise ValueError(f"ASHA rule must be one of {RULES}, got {self.rule!r}")
        rungs, t = [], self.min_t
        while t <= self.max_t:  # integer arithmetic: no float log rounding at the edge
            rungs.append(t)
            t *= self.reduction_factor
        object.__setattr__(self, "rungs", tuple(rungs))

    @property
    def judged_rungs(self) -> tuple[int, ...]:
        return tuple(r for r in self.rungs if r < self.max_t) if self.rule == "async" else self.rungs

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("rungs")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ASHA:
        return cls(**data)
