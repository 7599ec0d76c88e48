"""The one search API under every caller: `SearchRequest` -> `run_search` -> `SearchOutcome`.

`python -m nas.search`, `nas.sweep`, the benchmarks and the experiments all describe a search as a
frozen `SearchRequest` and run it with `run_search`; nothing parses another command's output.

A request names the space, gives the latency predictor (a `lut.LatencyTable`), how candidates are
scored (an `EvaluatorSpec`: `ProxyEvaluation` or `SupernetEvaluation`, built by `run_search`, or an
already built `Evaluator` to share between searches), the objective and the MES definition, the
target and size budget, the strategy with its settings (budget, seed, state file), the greedy
action set and start, and whether to verify the result on the device.

`run_search` first validates the whole request (`validate_request`: every field, every
combination, files that must exist) and raises `RequestError` naming the field before anything
expensive happens: no checkpoint is loaded, no data read and no output touched for a request that
is wrong. A target below the smallest network's latency is not an error but an outcome
(`SearchOutcome.smallest_latency`, exit 3 on the command line). The outcome holds the strategy's
result, the found architecture with its provenance `meta` (a pure function of the inputs: no
date), the latency/score front and the verification rounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

from search_spaces import Architecture, ArchitectureError, SearchSpace, count_macs, count_params, get_space, list_spaces
from search_spaces.limits import EVALUATION_BUDGET, SEED, SHORTLIST, SHORTLIST_EXTRA, STEPS_PAST_TARGET, VERIFY_ROUNDS

import nas
from nas.actions import ACTION_SET_NAMES, V1Actions, supports_v1_actions, v2_actions, v2_type_actions
from nas.evaluators import EvaluatorSpec, ProxyEvaluation, SupernetEvaluation
from nas.objectives import OBJECTIVES, MobileEfficiencyScore, get_objective
from nas.problem import Evaluator, LatencyPredictor, SearchProblem, SearchResult, Step, Unreachable
from nas.strategies import STRATEGIES, GreedySlimming, RandomSearch, RegularizedEvolution, Strategy
from nas.verify import (
    DEFAULT_ROUNDS,
    DEFAULT_UNDERSHOOT,
    MEASURE_POLICY,
    MeasurePolicy,
    Verification,
    measured_latency,
    measuring_device,
    verify_search,
)

DEFAULT_BUDGET = 200
SAMPLING_STRATEGIES = ("random", "evolution")
#: the largest evaluation budget a request may ask for (a supernet evaluation takes ~0.1-1 s)
MAX_BUDGET = EVALUATION_BUDGET.high


class RequestError(ValueError):
    """A search request that cannot run: `field` names the request field, the message says why
    and what is accepted (one line)."""

    def __init__(self, field_name: str, message: str) -> None:
        self.field = field_name
        super().__init__(message)


MAX_DROP_FLOOR = 100.0  # accuracy points


@dataclass(frozen=True)
class VerifySettings:
    """Measure the found network on the table's device and re-search with a corrected table while
    the measurement misses the target by more than the table's error, or lands below
    `(1 - undershoot) × target` (budget left unused), for at most `rounds` searches; every
    network is measured as `measure` says (`nas.verify.MeasurePolicy`)."""

    rounds: int = DEFAULT_ROUNDS
    undershoot: float = DEFAULT_UNDERSHOOT
    measure: MeasurePolicy = MEASURE_POLICY


@dataclass(frozen=True)
class SearchRequest:
    """Everything one search needs (see the module docstring). `table_name` is what provenance
    calls the predictor (a file or table name); `start`, `actions`, `shortlist` (0: score every
    candidate; K: screen them and score K, with an evaluator that screens; `shortlist_extra`: up to
    that many more when the shortlist disappoints, `nas.greedy`), `drop_floor` (accuracy
    drops below it count as it, `nas.greedy.floored_ratio`) and `min_step_ms` (smaller actions are
    compounded to save that much, `nas.actions.compound`) and `steps_past_target` (steps
    walked on past the target, the path's most accurate feasible network returned) are greedy's; `budget`
    and `seed` the sampling strategies' (the seed also seeds the proxy's random weights). `strategy`
    is a name (`nas.strategies.STRATEGIES`) or a configured `Strategy` (e.g. an evolution with
    its own population size), which then carries its own budget, seed, start and actions."""

    @property
    def strategy_name(self) -> str:
        return self.strategy if isinstance(self.strategy, str) else getattr(self.strategy, "name", "")

    space: str
    predictor: LatencyPredictor
    target_latency: float
    evaluator: Union[EvaluatorSpec, Evaluator] = field(default_factory=ProxyEvaluation)
    objective: str = "mes"
    mes: MobileEfficiencyScore = field(default_factory=MobileEfficiencyScore)
    max_params: int | None = None
    strategy: Union[str, Strategy] = "greedy"
    budget: int | None = None
    seed: int = 0
    state_path: Path | None = None
    actions: str | None = None
    shortlist: int = 0
    shortlist_extra: int = 0
    drop_floor: float | None = None
    min_step_ms: float | None = None
    steps_past_target: int = 0
    start: Architecture | None = None
    start_name: str | None = None
    verify: VerifySettings | None = None
    table_name: str | None = None


@dataclass(frozen=True)
class SearchOutcome:
    """What a search gave: `result` and `arch` (the result's architecture with provenance `meta`),
    or, when the target cannot be met, `smallest_latency` (the lowest latency the space reaches)
    and no result. `front` is the latency/score front (greedy: its path; sampling strategies: the
    evaluated architectures no other one beats on both), `verification` the measured rounds."""

    request: SearchRequest
    result: SearchResult | None
    arch: Architecture | None
    meta: Mapping[str, Any]
    front: tuple[tuple[Step, Architecture], ...] = ()
    smallest_latency: float | None = None
    verification: Verification | None = None
    evaluator_name: str = ""

    @property
    def reachable(self) -> bool:
        return self.result is not None


# -- validation ----------------------------------------------------------------------------------
def _positive_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def space_named(name: str) -> SearchSpace:
    """The registered space `name`; `RequestError` listing the spaces otherwise."""
    if name not in list_spaces():
        raise RequestError("space", f"unknown space {name!r}; choose from {', '.join(list_spaces())}")
    return get_space(name)


def check_strategy_settings(strategy: str, *, objective: str, actions: str | None = None,
                            drop_floor: float | None = None, min_step_ms: float | None = None,
                            steps_past_target: int = 0, shortlist_extra: int = 0,
                            target_latency: float | None = None) -> None:
    """The strategy-level fields of a request, checked without a space, table or evaluator, so a
    caller that configures many searches (a study's config) refuses a bad value when it reads it,
    in `validate_request`'s words. Raises `RequestError(field, message)`. `target_latency=None`
    leaves out the one check that needs the target (`min_step_ms` below it)."""
    if objective not in OBJECTIVES:
        raise RequestError("objective", f"unknown objective {objective!r}; choose from {', '.join(sorted(OBJECTIVES))}")
    if strategy not in STRATEGIES:
        raise RequestError("strategy", f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    greedy_only = {"drop_floor": drop_floor is not None, "min_step_ms": min_step_ms is not None,
                   "steps_past_target": bool(steps_past_target), "actions": actions is not None,
                   "shortlist_extra": bool(shortlist_extra)}
    if drop_floor is not None:
        if isinstance(drop_floor, bool) or not isinstance(drop_floor, (int, float)) or not 0 <= drop_floor <= MAX_DROP_FLOOR:
            raise RequestError("drop_floor", f"{drop_floor!r} is not a number of accuracy points from 0 to {MAX_DROP_FLOOR:g}")
    if min_step_ms is not None:
        if not _positive_finite(min_step_ms):
            raise RequestError("min_step_ms", f"{min_step_ms!r} is not a positive, finite latency in ms")
        if target_latency is not None and min_step_ms >= target_latency:
            raise RequestError("min_step_ms", f"{min_step_ms!r} is not a positive latency in ms below the "
                                              f"target ({target_latency:g} ms)")
    if steps_past_target not in STEPS_PAST_TARGET:
        raise RequestError("steps_past_target", f"{steps_past_target!r} is not {STEPS_PAST_TARGET.describe()}")
    if isinstance(shortlist_extra, bool) or not isinstance(shortlist_extra, int) or shortlist_extra not in SHORTLIST_EXTRA:
        raise RequestError("shortlist_extra", f"{shortlist_extra!r} is not {SHORTLIST_EXTRA.describe()}")
    if actions is not None and actions not in ACTION_SET_NAMES:
        raise RequestError("actions", f"unknown action set {actions!r}; choose from {', '.join(ACTION_SET_NAMES)}")
    for name, given in greedy_only.items():
        if given and strategy != "greedy":
            raise RequestError(name, "applies to --strategy greedy only")


def validate_request(request: SearchRequest) -> SearchSpace:
    """Check every field and combination of `request` cheaply; return its space.

    Raises `RequestError(field, message)`; reads no checkpoint or data (only checks that named
    files exist) and writes nothing.
    """
    space = space_named(request.space)
    if not _positive_finite(request.target_latency):
        raise RequestError("target_latency", f"{request.target_latency!r} is not a positive, finite latency in ms")
    configured = not isinstance(request.strategy, str)
    if request.strategy_name not in STRATEGIES or (configured and not callable(getattr(request.strategy, "search", None))):
        raise RequestError("strategy", f"unknown strategy {request.strategy!r}; choose from {', '.join(STRATEGIES)}")
    if configured and (request.budget is not None or request.start is not None or request.actions is not None
                       or request.shortlist or request.shortlist_extra or request.drop_floor is not None
                       or request.min_step_ms is not None
                       or request.steps_past_target):
        raise RequestError("strategy", "a configured strategy carries its own budget, start, actions, shortlist, "
                                       "drop floor, min step and steps past target; leave those fields of the "
                                       "request empty")
    check_strategy_settings(request.strategy_name, objective=request.objective, actions=request.actions,
                            drop_floor=request.drop_floor, min_step_ms=request.min_step_ms,
                            steps_past_target=request.steps_past_target, shortlist_extra=request.shortlist_extra,
                            target_latency=request.target_latency)
    if not callable(getattr(request.predictor, "predict", None)):
        raise RequestError("predictor", "is not a latency predictor (a table with predict(arch))")
    table_space = getattr(getattr(request.predictor, "metadata", None), "space", space.name)
    if table_space != space.name:
        raise RequestError("predictor", f"table {request.table_name or ''} is for space {table_space!r}, not "
                                        f"{space.name!r}".replace("table  is", "the table is"))
    _check_coverage(request, space)
    if request.max_params is not None:
        smallest = count_params(space.smallest())
        if not isinstance(request.max_params, int) or request.max_params < smallest:
            raise RequestError("max_params", f"{request.max_params} is below the smallest network of {space.name} "
                                             f"({smallest} params)")
    sampling = request.strategy_name in SAMPLING_STRATEGIES
    if request.budget is not None:
        if not sampling:
            raise RequestError("budget", f"applies to strategies {'|'.join(SAMPLING_STRATEGIES)} (greedy stops when "
                                         "the target is met)")
        if not isinstance(request.budget, int) or not 1 <= request.budget <= MAX_BUDGET:
            raise RequestError("budget", f"{request.budget!r} is not an integer from 1 to {MAX_BUDGET}")
    if request.seed not in SEED:
        raise RequestError("seed", f"{request.seed!r} is not {SEED.describe()}")
    if request.start is not None:
        if request.strategy_name != "greedy":
            raise RequestError("start", "applies to --strategy greedy only")
        if request.start.space != space.name:
            raise RequestError("start", f"{request.start_name or 'the start'} is an architecture of "
                                        f"{request.start.space!r}, not {space.name!r}")
        try:
            space.validate(request.start)
        except ArchitectureError as error:
            raise RequestError("start", f"{request.start_name or 'the start'}: {_first_line(error)}") from None
    if request.actions == "v1":
        _check_v1_possible(space, request.evaluator)
    if request.actions == "v2-types" and not supports_v1_actions(space):
        raise RequestError("actions", f"v2-types swaps block types, and every stage of {space.name} has one block "
                                      "type (use v2)")
    _check_screening(request)
    if request.state_path is not None and Path(request.state_path).is_dir():
        raise RequestError("state_path", f"{request.state_path} is a directory; give a state file path")
    if isinstance(request.evaluator, EvaluatorSpec):
        try:
            request.evaluator.validate(space)
        except ValueError as error:
            raise RequestError(getattr(error, "field", "evaluator"), _first_line(error)) from None
    elif not callable(getattr(request.evaluator, "score", None)):
        raise RequestError("evaluator", "is neither an evaluator spec nor an evaluator with score(arch)")
    if request.verify is not None:
        if request.verify.rounds not in VERIFY_ROUNDS:
            raise RequestError("verify", f"rounds {request.verify.rounds!r} is not {VERIFY_ROUNDS.describe()}")
        if not (isinstance(request.verify.undershoot, float) and 0 < request.verify.undershoot < 1):
            raise RequestError("verify", f"undershoot tolerance {request.verify.undershoot!r} is not between 0 and 1")
        try:
            measuring_device(request.predictor)
        except ValueError as error:
            raise RequestError("verify", _first_line(error)) from None
    return space


def _check_screening(request: SearchRequest) -> None:
    """A shortlist needs greedy and an evaluator that screens; screening batches need a shortlist."""
    evaluator = request.evaluator
    screens = (evaluator.screen_batches > 0 if isinstance(evaluator, SupernetEvaluation)
               else not isinstance(evaluator, EvaluatorSpec) and callable(getattr(evaluator, "screen", None))
               and getattr(evaluator, "screen_batches", 1) > 0)
    if request.shortlist:
        if not (isinstance(request.shortlist, int) and request.shortlist in SHORTLIST):
            raise RequestError("shortlist", f"{request.shortlist!r} is not {SHORTLIST.describe()}")
        if request.strategy_name != "greedy":
            raise RequestError("shortlist", "applies to --strategy greedy only")
        if not screens:
            raise RequestError("shortlist", "needs an evaluator that screens: the supernet evaluator with "
                                            "screen_batches > 0")
    elif isinstance(evaluator, SupernetEvaluation) and evaluator.screen_batches:
        raise RequestError("screen_batches", "screens for a greedy shortlist; give the shortlist too")
    if request.shortlist_extra and not request.shortlist:
        raise RequestError("shortlist_extra", "widens a greedy shortlist; give the shortlist too")


def _check_coverage(request: SearchRequest, space: SearchSpace) -> None:
    """The table must price the space's corners (and the start) at the resolution the search runs at."""
    metadata = getattr(request.predictor, "metadata", None)
    table_resolution = getattr(metadata, "resolution", None)
    name = request.table_name or "the table"
    if request.start is not None and table_resolution is not None and request.start.resolution != table_resolution:
        raise RequestError("start", f"{request.start_name or 'the start'} is at {request.start.resolution} px; "
                                    f"{name} prices {table_resolution} px")
    corners = [space.smallest(), space.largest()] + ([request.start] if request.start is not None else [])
    for arch in corners:
        try:
            latency = float(request.predictor.predict(arch))
        except KeyError as error:  # lut's MissingKeysError: a table of another resolution or a part of the space
            keys = getattr(error, "keys", None) or [str(error)]
            raise RequestError("predictor", f"{name} has no record of {len(keys)} layer(s) a {space.name} network at "
                                            f"{arch.resolution} px needs (first: {keys[0]}); it was built at "
                                            f"{table_resolution} px or for part of the space (--widths-subset)") from None
        except ValueError as error:
            raise RequestError("predictor", f"{name}: {_first_line(error)}") from None
        if not (math.isfinite(latency) and latency > 0):
            raise RequestError("predictor", f"{name} prices a {space.name} network at {latency!r} ms; a table must "
                                            "predict positive, finite latencies")


def _check_v1_possible(space: SearchSpace, evaluator: Any) -> None:
    if not supports_v1_actions(space):
        raise RequestError("actions", f"v1 needs MetaPaths of several block types; every stage of {space.name} "
                                      "has one block type (use v2)")
    if isinstance(evaluator, ProxyEvaluation) and evaluator.checkpoint is None:
        raise RequestError("actions", "v1 ranks MetaPaths by the importance a Gumbel-trained supernet learned; "
                                      "give --supernet (trained with --mode gumbel)")


# -- running -------------------------------------------------------------------------------------
def run_search(request: SearchRequest, on_step: Callable[[Step], None] | None = None,
               progress: bool = False) -> SearchOutcome:
    """Validate `request`, build its evaluator, run its strategy (with the verify loop if asked)
    and return the outcome. Raises `RequestError` for a bad request (before any expensive work);
    `on_step` sees every step as it is taken; `progress` shows bars on stderr."""
    space = validate_request(request)
    predictor = request.predictor
    smallest = float(predictor.predict(space.smallest()))
    if request.target_latency < smallest:
        return _unreachable(request, smallest)
    device = measuring_device(predictor) if request.verify is not None else None
    evaluator, supernet = _build_evaluator(request, space)
    actions_name, actions = _actions(request, space, supernet)
    strategy = _strategy(request, actions_name, actions)
    objective = get_objective(request.objective, request.mes)

    def problem_for(table: LatencyPredictor) -> SearchProblem:
        return SearchProblem(space, table, evaluator, objective, request.target_latency, request.max_params,
                             request.mes)

    state_path = request.state_path
    try:
        if device is None:
            result, verification = _search(strategy, problem_for(predictor), on_step, state_path, progress), None
        else:
            results: list[SearchResult] = []

            def search(current_table) -> tuple[Architecture, float]:
                # a re-search with a corrected table is another search: it keeps no state file
                path = state_path if not results else None
                results.append(_search(strategy, problem_for(current_table), on_step, path, progress))
                return results[-1].arch, results[-1].latency

            def measure(found: Architecture) -> float:
                return measured_latency(device, found, request.verify.measure)

            _, _, verification = verify_search(search, predictor, request.target_latency, measure,
                                                   request.verify.rounds, request.verify.undershoot)
            result = results[verification.kept.round - 1]
    except Unreachable as error:
        return _unreachable(request, error.smallest_latency)
    meta = _provenance(request, strategy, evaluator, objective, actions_name)
    test_accuracy = getattr(evaluator, "test_accuracy", None)
    held_out = test_accuracy(result.arch) if callable(test_accuracy) else None  # once, after every decision
    counts = ({"steps": len(result.steps) - 1} if strategy.name == "greedy"
              else {"budget": strategy.budget, "stats": result.stats.to_dict()})
    arch = result.arch.with_meta(
        predicted_latency_ms=round(result.latency, 6),
        params=result.params,
        macs=count_macs(result.arch),
        mes=round(result.mes, 4),
        score=round(result.score, 6),
        evaluations=result.evaluations,
        **({"screenings": result.screenings} if result.screenings else {}),
        **counts,
        **meta,
        **({"accuracy_percent": {"val": round(result.score, 4), "test": round(held_out, 4)}}
           if held_out is not None else {}),
        **({"start": request.start_name or "given"} if request.start is not None else {}),
        **({"verify": {**verification.to_meta(), "measure": request.verify.measure.to_dict()}}
           if verification is not None else {}),
    )
    return SearchOutcome(request, result, arch, meta, tuple(pareto_front(result, strategy.name)),
                         verification=verification, evaluator_name=evaluator.name)


def _search(strategy: Strategy, problem: SearchProblem, on_step, state_path, progress: bool) -> SearchResult:
    try:
        return strategy.search(problem, on_step=on_step, state_path=state_path, progress=progress)
    except ValueError as error:  # a state file of another search, a corrupt one
        raise RequestError("state_path", _first_line(error)) from None


def _unreachable(request: SearchRequest, smallest: float) -> SearchOutcome:
    return SearchOutcome(request, None, None, {}, smallest_latency=smallest)


def _build_evaluator(request: SearchRequest, space: SearchSpace) -> tuple[Evaluator, Any]:
    """The evaluator and the supernet behind it (None for a proxy on random weights)."""
    if not isinstance(request.evaluator, EvaluatorSpec):
        return request.evaluator, getattr(request.evaluator, "net", None)
    try:
        return request.evaluator.build(space, request.seed)
    except ValueError as error:
        raise RequestError(getattr(error, "field", "evaluator"), _first_line(error)) from None


def _actions(request: SearchRequest, space: SearchSpace, supernet) -> tuple[str, Any]:
    """The action set's name and the set: v1 with the checkpoint's importance, v2, or v2-types.

    Default: v1 when the supernet's MetaPath logits were trained (`--mode gumbel`), else v2.
    """
    if request.strategy != "greedy":  # a sampling strategy, or a configured one with its own
        return getattr(request.strategy, "actions_name", ""), None
    trained = supernet is not None and supernet.has_trained_alpha()
    name = request.actions or ("v1" if trained and supports_v1_actions(space) else "v2")
    if name == "v2":
        return name, v2_actions
    if name == "v2-types":
        return name, v2_type_actions
    if supernet is None:
        raise RequestError("actions", "v1 needs a Gumbel-trained supernet (--supernet)")
    if not trained:
        raise RequestError("actions", "v1 needs trained MetaPath logits, and this checkpoint's are untrained (train "
                                      "it with --mode gumbel)")
    return name, V1Actions(supernet.importance())


def _strategy(request: SearchRequest, actions_name: str, actions) -> Strategy:
    if not isinstance(request.strategy, str):
        return request.strategy
    if request.strategy == "greedy":
        return GreedySlimming(actions, request.start, actions_name, shortlist=request.shortlist,
                              shortlist_extra=request.shortlist_extra,
                              drop_floor=request.drop_floor, min_step_ms=request.min_step_ms,
                              steps_past_target=request.steps_past_target)
    budget = request.budget or DEFAULT_BUDGET
    if request.strategy == "random":
        return RandomSearch(budget, request.seed)
    return RegularizedEvolution(budget, request.seed)


def _provenance(request: SearchRequest, strategy: Strategy, evaluator: Evaluator, objective, actions_name: str) -> dict:
    metadata = getattr(request.predictor, "metadata", None)
    provenance = {
        "device": getattr(metadata, "device", None),
        "table": {"name": request.table_name, "sha256": getattr(request.predictor, "sha256", None)},
        "objective": objective.settings(),
        "mes_definition": request.mes.settings(),
        "target_latency_ms": request.target_latency,
        "max_params": request.max_params,
        "evaluator": evaluator.name,
        "evaluator_settings": evaluator.settings(),
        "strategy": strategy.name,
        "seed": getattr(strategy, "seed", request.seed),
        "version": nas.__version__,
    }
    if strategy.name == "greedy":
        provenance["actions"] = actions_name
        if getattr(strategy, "shortlist", 0):
            provenance["shortlist"] = strategy.shortlist
        if getattr(strategy, "shortlist_extra", 0):
            provenance["shortlist_extra"] = strategy.shortlist_extra
        if getattr(strategy, "drop_floor", None) is not None:
            provenance["drop_floor"] = strategy.drop_floor
        if getattr(strategy, "min_step_ms", None) is not None:
            provenance["min_step_ms"] = strategy.min_step_ms
        if getattr(strategy, "steps_past_target", 0):
            provenance["steps_past_target"] = strategy.steps_past_target
    return provenance


# -- fronts --------------------------------------------------------------------------------------
def pareto_points(points: Sequence[tuple[float, float, Any]]) -> list[tuple[float, float, Any]]:
    """The (latency, score, payload) points no other point beats on both (lower latency, higher
    score), fastest first; among equal latencies the higher score."""
    ordered = sorted(points, key=lambda point: (point[0], -point[1]))
    front, best = [], -math.inf
    for point in ordered:
        if point[1] > best:
            front.append(point)
            best = point[1]
    return front


def pareto_front(result: SearchResult, strategy: str) -> list[tuple[Step, Architecture]]:
    """The points of a result worth keeping: the greedy path as it is (each step is cheaper than
    the last); for sampling strategies, the evaluated architectures on the latency/score front."""
    points = list(zip(result.steps, result.path, strict=True))
    if strategy == "greedy":
        return points
    return [payload for _, _, payload in pareto_points([(step.latency, step.score, (step, arch)) for step, arch in points])]


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

