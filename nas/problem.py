"""What every search strategy is given and what it returns.

A `SearchProblem` is the question: the most accurate architecture of `space` (by `evaluator`)
whose latency (by `predictor`) is at most `target_latency` and whose parameter count is at most
`max_params`, the trade-off ranked by `objective`, efficiency reported as `mes`. Strategies
(`nas.strategies.Strategy`: greedy slimming, random search, regularized evolution) answer it with a
`SearchResult`; none of them knows where the predictor's numbers or the evaluator's scores come
from. The two protocols below are all they may ask of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

from search_spaces import Architecture, SearchSpace, count_params

from nas.objectives import MobileEfficiencyScore, Objective


@runtime_checkable
class LatencyPredictor(Protocol):
    """Milliseconds of an architecture on one device (a `lut.LatencyTable` is one)."""

    def predict(self, arch: Architecture) -> float:
        """Predicted latency in ms; raises when it cannot price `arch` (never a silent zero)."""


@runtime_checkable
class Evaluator(Protocol):
    """What the search strategies ask of a scorer: `score` (cached per architecture) and its settings."""

    name: str
    evaluations: int

    def score(self, arch: Architecture) -> float:
        """Higher is better (accuracy in % for `supernet`, arbitrary units for `proxy`)."""

    def settings(self) -> dict[str, Any]:
        """Name and settings for the output's provenance."""


@runtime_checkable
class ScreeningEvaluator(Evaluator, Protocol):
    """An evaluator that also gives a cheaper, noisier estimate of `score` (the supernet's accuracy
    on a fixed part of its images), which a greedy step ranks its candidates by before it scores a
    shortlist of them (`nas.greedy`)."""

    def screen(self, arch: Architecture) -> float:
        """An estimate of `score(arch)` on the same scale, deterministic and cached per architecture."""


class Unreachable(Exception):
    """The target cannot be met; `smallest_latency` is the lowest latency the search reaches."""

    def __init__(self, smallest_latency: float, message: str = "") -> None:
        self.smallest_latency = smallest_latency
        super().__init__(message or f"target latency cannot be met; the smallest reachable latency is {smallest_latency:.4f} ms")


@dataclass(frozen=True)
class Step:
    """One step of a search: the action taken (or `sample`/`mutate` for sampling strategies), the
    change it made (deltas against the previous architecture, or against the incumbent for sampling
    strategies), where it landed (latency, params, MES, score) and the objective's ratio for it."""

    action: str
    description: str
    delta_accuracy: float
    delta_latency: float
    delta_params: int
    latency: float
    params: int
    mes: float
    score: float
    ratio: float

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class SearchResult:
    """The architecture a strategy chose (`arch` with its latency, params, score and MES) and how it
    got there: `steps[i]` describes `path[i]` (greedy: the slimming path from the start; sampling
    strategies: every evaluated architecture in evaluation order). `evaluations` counts distinct
    architectures the evaluator scored for this search, `screenings` those a screening greedy
    search only estimated (`ScreeningEvaluator.screen`)."""

    arch: Architecture
    latency: float
    params: int
    score: float
    mes: float
    steps: tuple[Step, ...]
    path: tuple[Architecture, ...]
    evaluations: int
    screenings: int = field(default=0, kw_only=True)

    def front(self) -> list[dict[str, Any]]:
        """(latency, params, score) of every architecture on the path, start first."""
        return [{"latency": s.latency, "params": s.params, "score": s.score} for s in self.steps]


@dataclass(frozen=True)
class SearchProblem:
    """One search question (see the module docstring). `params_of` counts parameters (from layer
    shapes by default; tests give toys their own); `mes` is the efficiency score every step and
    result reports (the `mes` objective ranks by its own, normally the same one)."""

    space: SearchSpace
    predictor: LatencyPredictor
    evaluator: Evaluator
    objective: Objective
    target_latency: float
    max_params: int | None = None
    mes: MobileEfficiencyScore = field(default_factory=MobileEfficiencyScore)
    params_of: Callable[[Architecture], int] = count_params

    def met(self, latency: float, params: int) -> bool:
        """Whether a network of this latency and size satisfies the constraint."""
        return latency <= self.target_latency and (self.max_params is None or params <= self.max_params)

    def price(self, arch: Architecture) -> tuple[float, int]:
        """(predicted latency in ms, parameters) of `arch`."""
        return float(self.predictor.predict(arch)), int(self.params_of(arch))

    def smallest_latency(self) -> float:
        """The latency of the space's smallest network (the lowest any search can reach)."""
        return float(self.predictor.predict(self.space.smallest()))
