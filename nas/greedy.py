"""The greedy slimming controller (EfficientFormer V1/V2 search).

From `space.largest()` (or a start architecture), score every valid action, apply the one with the
smallest objective ratio (accuracy drop per unit gained), and repeat until the table's predicted
latency ≤ target and params ≤ `max_params`. Every step is recorded; the path is a latency/accuracy
front. While only the size budget is unmet, the gain is the parameters saved (in millions).

The last step is chosen differently: when the ratio-best action of a step meets every constraint
(so the search would stop after it), the search takes the feasible candidate of that step with
the highest score instead. The ratio is the right guide while latency still has to be bought; at
the finish it would trade accuracy for latency below the target, which nobody asked for (the
ratio-best action may overshoot the target by a wide margin while a gentler one lands just under
it with more accuracy). A feasible candidate of an earlier step is not taken: a drastic action
that reaches the target at once usually scores below the end of the gentler path.

Deterministic: actions come in a fixed order and ties keep the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from search_spaces import Architecture, SearchSpace, count_params

from nas.actions import Action, v2_actions
from nas.objectives import NO_GAIN, Objective, mes


class Unreachable(Exception):
    """The target cannot be met; `smallest_latency` is the lowest latency the search reaches."""

    def __init__(self, smallest_latency: float, message: str = "") -> None:
        self.smallest_latency = smallest_latency
        super().__init__(message or f"target latency cannot be met; the smallest reachable latency is {smallest_latency:.4f} ms")


@dataclass(frozen=True)
class Step:
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
    arch: Architecture
    latency: float
    params: int
    score: float
    mes: float
    steps: tuple[Step, ...]
    path: tuple[Architecture, ...]
    evaluations: int

    def front(self) -> list[dict[str, Any]]:
        """(latency, params, score) of every architecture on the path, start first."""
        return [{"latency": s.latency, "params": s.params, "score": s.score} for s in self.steps]


def _met(latency: float, params: int, target: float, max_params: int | None) -> bool:
    return latency <= target and (max_params is None or params <= max_params)


def greedy_search(
    space: SearchSpace,
    table,
    evaluator,
    objective: Objective,
    target_latency: float,
    max_params: int | None = None,
    start: Architecture | None = None,
    actions: Callable[[SearchSpace, Architecture], Sequence[Action]] = v2_actions,
    params_of: Callable[[Architecture], int] = count_params,
    max_steps: int = 10_000,
    on_step: Callable[[Step], None] | None = None,
) -> SearchResult:
    """Slim from `start` (default the largest network) until the table's latency ≤ `target_latency`
    and params ≤ `max_params`, one action a step as the module says; return the end and the path.

    `evaluator.score(arch)` is called once per candidate (cache in the evaluator); `on_step` sees
    every step as it is taken. Raises `Unreachable` when no action gains anything before the target
    is met, or after `max_steps`.
    """
    arch = space.validate(start) if start is not None else space.largest()
    latency, params = table.predict(arch), params_of(arch)
    score = evaluator.score(arch)
    first = Step("start", "starting architecture", 0.0, 0.0, 0, latency, params, mes(params, latency), score, 0.0)
    steps, path = [first], [arch]
    if on_step:
        on_step(first)
    for _ in range(max_steps):
        if _met(latency, params, target_latency, max_params):
            break
        latency_met = latency <= target_latency
        best = best_feasible = None
        for action in actions(space, arch):
            candidate = action.apply(arch)
            cand_latency, cand_params = table.predict(candidate), params_of(candidate)
            if latency_met:  # only the size budget is left
                gain = (params - cand_params) / 1e6
            else:
                gain = objective.gain(latency, params, cand_latency, cand_params)
            if not gain > 0:
                continue
            cand_score = evaluator.score(candidate)
            ratio = objective.ratio(score - cand_score, gain)
            if ratio == NO_GAIN:
                continue
            option = (ratio, action, candidate, cand_latency, cand_params, cand_score)
            if best is None or ratio < best[0]:
                best = option
            if _met(cand_latency, cand_params, target_latency, max_params) and (
                    best_feasible is None or cand_score > best_feasible[5]):
                best_feasible = option
        if best is None:
            raise Unreachable(min(latency, table.predict(space.smallest())))
        if _met(best[3], best[4], target_latency, max_params):  # the last step: the most accurate finish
            best = best_feasible
        ratio, action, candidate, cand_latency, cand_params, cand_score = best
        step = Step(action.name, action.description, cand_score - score, cand_latency - latency,
                    cand_params - params, cand_latency, cand_params, mes(cand_params, cand_latency), cand_score, ratio)
        steps.append(step)
        path.append(candidate)
        if on_step:
            on_step(step)
        arch, latency, params, score = candidate, cand_latency, cand_params, cand_score
    else:
        raise Unreachable(latency, f"no solution within {max_steps} steps")
    return SearchResult(arch, latency, params, score, mes(params, latency), tuple(steps), tuple(path),
                        getattr(evaluator, "evaluations", 0))
