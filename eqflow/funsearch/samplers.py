"""The sampler interface: a prompt (and its parent programs) in, candidate function bodies out.

A sampler is built once per worker process from its config (``make_sampler``) and kept warm
across tasks; an LLM sampler loads its model or client there. Samplers register by ``type`` with
``@register``; the ``sample`` task (``eqflow.funsearch.tasks``) looks them up by the type named
in the task's payload.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class SampleRequest:
    """What one ``sample`` task asks for.

    prompt: the full prompt text for LLM samplers (docstring, imports, parents renamed
        ``priority_v0 .. priority_v{k-1}``, then the header of ``priority_vk``).
    parents: the parent functions' full source (``def ...``), in ascending score order.
    function_name / header: the evolved function's name and its ``def`` line, as in the spec.
    samples: how many candidates to return (``samples_per_prompt``).
    seed: for samplers that draw random numbers; the same request and seed give the same answer.
    params: generation parameters (temperature, top_p, max_new_tokens, ...), sampler-specific.
    scope: where the candidates go (the engine: experiment, island and the island's version), so a
        sampler may remember what it already gave there; empty: no memory.
    """

    prompt: str
    parents: tuple[str, ...]
    function_name: str
    header: str
    samples: int = 2
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    scope: str = ""


@dataclass
class SampleResult:
    """Candidates as the sampler produced them (``bodies``: raw completions or bodies; the
    engine trims each to the first function body that parses) and what they cost."""

    bodies: list[str]
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0
    gpu_seconds: float = 0.0
    cost_usd: float = 0.0
    model: str = ""
    sandbox_runs: int = 0  # candidates run in a sandbox by the sampler itself (probing), not evaluations


class Sampler(Protocol):
    name: str

    def sample(self, request: SampleRequest) -> SampleResult: ...


SamplerFactory = Callable[[dict[str, Any]], Sampler]

_REGISTRY: dict[str, SamplerFactory] = {}
# Samplers whose modules are imported on first use, so `mutation` never pulls torch or openai.
_LAZY: dict[str, str] = {
    "mutation": "eqflow.funsearch.mutation",
    "transformers": "eqflow.funsearch.transformers_sampler",
    "openai": "eqflow.funsearch.openai_sampler",
}
_WARM: dict[str, Sampler] = {}


def register(kind: str) -> Callable[[SamplerFactory], SamplerFactory]:
    def add(factory: SamplerFactory) -> SamplerFactory:
        _REGISTRY[kind] = factory
        return factory
    return add


def sampler_types() -> list[str]:
    return sorted(set(_REGISTRY) | set(_LAZY))


def make_sampler(config: dict[str, Any]) -> Sampler:
    """A sampler for ``config`` (``{"type": "mutation", ...}``), built once per process and
    config and reused: an LLM's weights are loaded once per worker."""
    kind = config.get("type", "mutation")
    key = repr(sorted(config.items()))
    if key in _WARM:
        return _WARM[key]
    if kind not in _REGISTRY and kind in _LAZY:
        importlib.import_module(_LAZY[kind])
    if kind not in _REGISTRY:
        raise ValueError(f"unknown sampler type {kind!r}; known: {', '.join(sampler_types())}")
    sampler = _REGISTRY[kind]({k: v for k, v in config.items() if k != "type"})
    _WARM[key] = sampler
    return sampler
