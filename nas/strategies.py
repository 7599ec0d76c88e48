"""Search strategies behind one protocol: greedy slimming, random search, regularized evolution.

`Strategy` is what every caller (`nas.api.run_search`) sees: `search(problem) -> SearchResult`.
`GreedySlimming` wraps the EfficientFormer controller (`nas.greedy`); `RandomSearch` and
`RegularizedEvolution` are the baselines, run under the same evaluator, latency table and
constraint and returning a `SearchResult` (a `StrategyResult`, which adds the proposal
statistics), so they can be compared with greedy at equal cost.

- Budget: `budget` counts evaluator calls on distinct architectures. The constraint (table latency
  ≤ target and params ≤ `max_params`) is a cheap filter applied *before* evaluating; a proposal
  that fails it, or that was evaluated before, spends no budget. After `max_retries` consecutive
  rejected proposals the search stops early with what it found, or raises `Unreachable` when it
  found nothing feasible; a target that even `space.smallest()` misses raises it at once.
- `random_search`: uniform samples of the space (`space.sample(rng)`), rejection-filtered. Nothing
  biases the sampler towards small networks; under a tight target most samples are rejected, and
  the result's `stats.acceptance_rate` says how many.
- `regularized_evolution` (Real et al., "Regularized Evolution for Image Classifier Architecture
  Search", AAAI 2019): a population of `population_size` feasible random samples; each cycle
  draws `sample_size` members uniformly (with replacement, as in the paper), mutates the best one
  (`mutate`), evaluates the child, appends it and removes the oldest member (aging). A child that
  is infeasible or already evaluated is a rejected proposal: the cycle is redrawn (a new
  tournament and a new mutation), so one exhausted parent cannot stall the search.
- `mutate`: one random change drawn from the space's declared choices: a block's type (including
  identity and back), a block's expansion, head count, kernel or sample ratio (the knobs its type
  has in its space), or a stage's width one step up or down (head counts fixed to stay valid);
  only architectures the space contains are returned.
- Best: the highest score among evaluated (hence feasible) architectures; ties go to the higher
  MES, then the lower latency, then the earlier evaluation.
- Resumable: with `state_path`, a state file (`nas.state`, schema `latnas/search-state@1`) is
  written atomically after every evaluation: strategy, settings, the numpy bit-generator state,
  the counters, the population and the history (architecture, score, action). The set of seen
  architectures is exactly the history's architectures. A run started on an existing state checks
  that it belongs to the same search (`ValueError` naming the differences otherwise), takes the
  evaluated architectures from the history without scoring them again (their latency and params
  priced again from the table, not read from the file), and ends with exactly the result of an
  uninterrupted run; `on_step` is called for the new evaluations only. `budget` is not part of the
  check, so a finished search can be resumed with a larger budget to extend it. Each write is
  atomic (temporary file, fsync, rename), a few milliseconds: negligible next to a supernet
  evaluation, dominant next to the microsecond proxy.
"""

from __future__ import annotations

import dataclasses
import sys
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from nas.actions import IDENTITY, ActionSet, v2_actions
from nas.greedy import greedy_search
from nas.problem import SearchProblem, SearchResult, Step, Unreachable
from nas.state import StateFile, check_resumed_scores, problem_settings
from search_spaces import Architecture, ArchitectureError, Block, SearchSpace, Stage
from search_spaces.architecture import IDENTITY_BLOCK

MUTATION_KINDS = ("type", "expansion", "heads", "width", "kernel", "sample_ratio")
# A draw fails only when the drawn change breaks a family rule (V1: meta4d after meta3d) or the
# minimum depth; every architecture of a real space has many valid changes, so 1000 failed draws
# in a row means the architecture has none.
MAX_MUTATION_DRAWS = 1000


# -- mutation --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mutation:
    """One random change of an architecture: its kind (one of `MUTATION_KINDS`), a readable
    description (`stage 2 block 4: ffn -> identity`) and the resulting architecture."""

    kind: str
    description: str
    arch: Architecture


def _slot_block(stage: Stage, slot: int) -> Block:
    return stage.blocks[slot] if slot < len(stage.blocks) else IDENTITY_BLOCK


def _with_block(arch: Architecture, stage_index: int, slot: int, block: Block) -> Architecture:
    stage = arch.stages[stage_index]
    blocks = list(stage.blocks) + [IDENTITY_BLOCK] * max(0, slot + 1 - len(stage.blocks))
    blocks[slot] = block
    return arch.replace_stage(stage_index, Stage(stage.width, tuple(blocks)))


def _pick(rng: np.random.Generator, options: list | tuple):
    return options[int(rng.integers(0, len(options)))]


def _mutation_sites(space: SearchSpace, arch: Architecture) -> dict[str, list[tuple[int, int]]]:
    """Where each kind of change can happen: (stage, slot) pairs, or (stage, -1) for widths."""
    sites: dict[str, list[tuple[int, int]]] = {kind: [] for kind in MUTATION_KINDS}
    for s, (stage, choices) in enumerate(zip(arch.stages, space.stages)):
        if len(choices.widths) > 1:
            sites["width"].append((s, -1))
        for slot in range(choices.max_depth):
            sites["type"].append((s, slot))  # identity plus at least one block type: always 2 options
            block = _slot_block(stage, slot)
            if block.is_identity:
                continue
            for knob in space.block_type(block.type).knobs():
                if len(space.knob_choices(choices, stage.width, knob)) > 1:
                    sites[knob].append((s, slot))
    return sites


def _change_type(space: SearchSpace, arch: Architecture, s: int, slot: int, rng: np.random.Generator) -> Mutation | None:
    choices, stage = space.stages[s], arch.stages[s]
    old = _slot_block(stage, slot)
    new_type = _pick(rng, [t for t in (*choices.block_types, IDENTITY) if t != old.type])
    values: dict[str, int] = {}
    for knob in space.block_type(new_type).knobs():  # kept where still valid, else drawn
        valid = space.knob_choices(choices, stage.width, knob)
        if not valid:
            return None
        values[knob] = getattr(old, knob) if getattr(old, knob) in valid else _pick(rng, valid)
    block = Block(new_type, **values)
    knobs = ", ".join(f"{name} {value}" for name, value in values.items())
    description = f"stage {s} block {slot}: {old.type} -> {new_type}" + (f" ({knobs})" if knobs else "")
    return Mutation("type", description, _with_block(arch, s, slot, block))


def _change_knob(space: SearchSpace, arch: Architecture, kind: str, s: int, slot: int,
                 rng: np.random.Generator) -> Mutation | None:
    choices, stage = space.stages[s], arch.stages[s]
    block = stage.blocks[slot]
    old_value = getattr(block, kind)
    value = _pick(rng, [v for v in space.knob_choices(choices, stage.width, kind) if v != old_value])
    new = dataclasses.replace(block, **{kind: value})
    return Mutation(kind, f"stage {s} block {slot} {kind} {old_value} -> {value}", _with_block(arch, s, slot, new))


def _change_width(space: SearchSpace, arch: Architecture, s: int, rng: np.random.Generator) -> Mutation | None:
    widths, stage = space.stages[s].widths, arch.stages[s]
    if stage.width not in widths:
        return None
    position = widths.index(stage.width)
    width = widths[_pick(rng, [p for p in (position - 1, position + 1) if 0 <= p < len(widths)])]
    blocks = tuple(space.heads_for(s, width, block) for block in stage.blocks)
    direction = "up" if width > stage.width else "down"
    return Mutation("width", f"stage {s} width {stage.width} -> {width} (one step {direction})",
                    arch.replace_stage(s, Stage(width, blocks)))


def draw_mutation(space: SearchSpace, arch: Architecture, rng: np.random.Generator) -> Mutation:
    """One random change of `arch` that the space contains, with its kind and description.

    The kind is drawn uniformly among the kinds `arch` allows, then the place (block slot or
    stage), then the new value among the other declared choices; a draw whose result the space
    refuses is drawn again. Deterministic for a given Generator state. `ValueError` if no valid
    change is found in `MAX_MUTATION_DRAWS` draws.
    """
    sites = _mutation_sites(space, arch)
    kinds = [kind for kind in MUTATION_KINDS if sites[kind]]
    for _ in range(MAX_MUTATION_DRAWS):
        kind = _pick(rng, kinds)
        s, slot = _pick(rng, sites[kind])
        if kind == "type":
            mutation = _change_type(space, arch, s, slot, rng)
        elif kind == "width":
            mutation = _change_width(space, arch, s, rng)
        else:
            mutation = _change_knob(space, arch, kind, s, slot, rng)
        if mutation is not None and mutation.arch != arch and space.contains(mutation.arch):
            return mutation
    raise ValueError(f"no valid mutation of the architecture found in {MAX_MUTATION_DRAWS} draws")


def mutate(space: SearchSpace, arch: Architecture, rng: np.random.Generator) -> Architecture:
    """`arch` with one random change drawn from the space's declared choices (see `draw_mutation`)."""
    return draw_mutation(space, arch, rng).arch


# -- results ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchStats:
    """What a sampling strategy proposed: `proposals` architectures in all, `infeasible` rejected
    by the constraint, `duplicates` feasible but evaluated before, `accepted` evaluated;
    `stopped_early` when `max_retries` consecutive rejections ended the search before its budget."""

    proposals: int
    infeasible: int
    duplicates: int
    accepted: int
    stopped_early: bool

    @property
    def acceptance_rate(self) -> float:
        """Evaluated / proposed (0 when nothing was proposed)."""
        return self.accepted / self.proposals if self.proposals else 0.0

    @property
    def feasible_rate(self) -> float:
        """Proposals that met the constraint / proposed (0 when nothing was proposed)."""
        return (self.proposals - self.infeasible) / self.proposals if self.proposals else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Counts and rates as plain JSON values (for provenance and reports)."""
        return {"proposals": self.proposals, "infeasible": self.infeasible, "duplicates": self.duplicates,
                "accepted": self.accepted, "stopped_early": self.stopped_early,
                "acceptance_rate": self.acceptance_rate, "feasible_rate": self.feasible_rate}


@dataclass(frozen=True)
class StrategyResult(SearchResult):
    """A `SearchResult` of a sampling strategy (`strategy` = "random" or "evolution") plus its
    proposal statistics; `steps` has one `Step` per evaluated architecture, in evaluation order,
    its deltas against the best architecture before it and its `ratio` the objective's ratio
    against that incumbent (`nas.objectives.NO_GAIN`, infinity, when the step gains nothing)."""

    strategy: str
    stats: SearchStats

    @property
    def proposals(self) -> int:
        """Architectures proposed (sampled or mutated), accepted or not."""
        return self.stats.proposals

    @property
    def accepted(self) -> int:
        """Proposals that were feasible and new, hence evaluated."""
        return self.stats.accepted


@dataclass(frozen=True)
class _Evaluation:
    """One evaluated architecture, as the history records it (`mes` under the problem's definition)."""

    arch: Architecture
    latency: float
    params: int
    score: float
    action: str
    description: str
    mes: float = field(default=0.0, compare=False)

    @property
    def rank(self) -> tuple[float, float, float]:
        return (self.score, self.mes, -self.latency)

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch.to_dict(), "latency": self.latency, "params": self.params, "score": self.score,
                "action": self.action, "description": self.description}

    @classmethod
    def from_dict(cls, data: dict[str, Any], problem: SearchProblem) -> _Evaluation:
        """A history record of a state file; latency and params are priced again from the problem
        (a state file is not believed about what the table and the space say)."""
        arch = problem.space.validate(Architecture.from_dict(data["arch"]))
        latency, params = problem.price(arch)
        if not problem.met(latency, params):
            raise ValueError(f"a recorded architecture ({latency:.4f} ms, {params} params) does not meet the search's "
                             "constraints")
        return cls(arch, latency, params, float(data["score"]), str(data["action"]), str(data["description"]),
                   problem.mes(params, latency))


def _step(record: _Evaluation, incumbent: _Evaluation | None, problem: SearchProblem) -> Step:
    """The step of one evaluation, its deltas taken against the best architecture before it."""
    if incumbent is None:
        return Step(record.action, record.description, 0.0, 0.0, 0, record.latency, record.params, record.mes,
                    record.score, 0.0)
    gain = problem.objective.gain(incumbent.latency, incumbent.params, record.latency, record.params)
    return Step(record.action, record.description, record.score - incumbent.score, record.latency - incumbent.latency,
                record.params - incumbent.params, record.latency, record.params, record.mes, record.score,
                problem.objective.ratio(incumbent.score - record.score, gain))


# -- the shared run: filter, evaluate, record, persist ----------------------------------------------
class _Run:
    """Bookkeeping common to both sampling strategies: the constraint filter, the seen set, the
    budget, the history and population, the counters, the state file and the progress bar."""

    def __init__(self, strategy: str, settings: dict[str, Any], problem: SearchProblem, budget: int, max_retries: int,
                 rng: np.random.Generator, on_step: Callable[[Step], None] | None, state_path: str | Path | None,
                 progress: bool, population_size: int | None = None) -> None:
        if budget < 1:
            raise ValueError(f"budget must be at least 1, got {budget}")
        if max_retries < 1:
            raise ValueError(f"max_retries must be at least 1, got {max_retries}")
        self.strategy, self.problem, self.space = strategy, problem, problem.space
        self.budget, self.max_retries, self.rng = budget, max_retries, rng
        self.on_step = on_step
        self.state = StateFile(state_path, strategy, {**settings, **problem_settings(problem), "max_retries": max_retries})
        self.history: list[_Evaluation] = []
        self.steps: list[Step] = []
        self.seen: dict[Architecture, int] = {}  # architecture -> its evaluation number (1-based)
        self.best: _Evaluation | None = None
        self.population: deque[_Evaluation] | None = deque(maxlen=population_size) if population_size else None
        self.proposals = self.infeasible = self.duplicates = 0
        self.failures = 0  # consecutive rejected proposals
        self._check_reachable()
        self._load()
        self._bar = tqdm(total=budget, initial=len(self.history), desc=strategy, unit="eval", file=sys.stderr,
                         disable=not progress, leave=False)

    # -- constraint ------------------------------------------------------------------------------
    def _check_reachable(self) -> None:
        smallest = self.space.smallest()
        latency, params = self.problem.price(smallest)
        if latency > self.problem.target_latency:
            raise Unreachable(latency, f"target latency {self.problem.target_latency:g} ms cannot be met; the smallest "
                                       f"network of {self.space.name} takes {latency:.4f} ms")
        if self.problem.max_params is not None and params > self.problem.max_params:
            raise Unreachable(latency, f"max_params {self.problem.max_params} cannot be met; the smallest network of "
                                       f"{self.space.name} has {params} params")

    def _feasible(self, arch: Architecture) -> tuple[float, int] | None:
        latency, params = self.problem.price(arch)
        return (latency, params) if self.problem.met(latency, params) else None

    # -- proposals -------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return len(self.history) >= self.budget

    @property
    def exhausted(self) -> bool:
        return self.failures >= self.max_retries

    def offer(self, arch: Architecture, action: str, description: str) -> bool:
        """Evaluate `arch` if it is feasible and new (True), else count a rejection (False)."""
        self.proposals += 1
        if arch in self.seen:
            self.duplicates += 1
            self.failures += 1
            return False
        measured = self._feasible(arch)
        if measured is None:
            self.infeasible += 1
            self.failures += 1
            return False
        self.failures = 0
        score = float(self.problem.evaluator.score(arch))
        latency, params = measured
        step = self._record(_Evaluation(arch, latency, params, score, action, description, self.problem.mes(params, latency)))
        self._save()
        self._bar.update(1)
        if self.on_step:
            self.on_step(step)
        return True

    def _record(self, record: _Evaluation) -> Step:
        step = _step(record, self.best, self.problem)
        self.history.append(record)
        self.steps.append(step)
        self.seen[record.arch] = len(self.history)
        if self.population is not None:
            self.population.append(record)  # a full deque drops its oldest member: aging
        if self.best is None or record.rank > self.best.rank:
            self.best = record
        return step

    # -- state -----------------------------------------------------------------------------------
    def _save(self) -> None:
        body = {
            "rng": self.rng.bit_generator.state,
            "evaluations": len(self.history),
            "counters": {"proposals": self.proposals, "infeasible": self.infeasible, "duplicates": self.duplicates},
            "population": [record.arch.to_dict() for record in self.population] if self.population is not None else None,
        }
        self.state.save(body, self.history, _Evaluation.to_dict)

    def _load(self) -> None:
        state = self.state.load()
        if state is None:
            return
        path = self.state.path
        try:
            history = [_Evaluation.from_dict(item, self.problem) for item in state["history"]]
            counters = state["counters"]
            population = [Architecture.from_dict(item) for item in state["population"] or ()]
            rng_state = state["rng"]
            counts = {key: counters[key] for key in ("proposals", "infeasible", "duplicates")}
        except (KeyError, TypeError, ValueError, ArchitectureError) as error:
            raise ValueError(f"{path}: corrupt search state: {str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}") from None
        if not all(isinstance(value, int) and not isinstance(value, bool) and value >= 0 for value in counts.values()) \
                or counts["proposals"] < len(history) or counts["infeasible"] + counts["duplicates"] > counts["proposals"]:
            raise ValueError(f"{path}: corrupt search state: counters {counts} do not fit {len(history)} evaluations")
        if len(history) > self.budget:
            raise ValueError(f"{path}: the state already holds {len(history)} evaluations, more than the "
                             f"budget of {self.budget}")
        check_resumed_scores([(record.arch, record.score) for record in history], self.problem.evaluator, path)
        try:
            self.rng.bit_generator.state = rng_state
        except (TypeError, ValueError, KeyError, OverflowError) as error:
            raise ValueError(f"{path}: corrupt search state: bad random generator state ({type(error).__name__})") from None
        for record in history:
            self._record(record)
        if self.population is not None:
            self.population.clear()
            for arch in population:
                if arch not in self.seen:
                    raise ValueError(f"{path}: corrupt search state: a population member is not in the history")
                self.population.append(self.history[self.seen[arch] - 1])
        self.proposals, self.infeasible, self.duplicates = (counts[key] for key in ("proposals", "infeasible", "duplicates"))

    # -- result ----------------------------------------------------------------------------------
    def close(self) -> None:
        self._bar.close()

    def result(self) -> StrategyResult:
        if self.best is None:
            latency = self.problem.smallest_latency()
            raise Unreachable(latency, f"no feasible architecture in {self.proposals} proposals ({self.infeasible} over "
                                       f"the target); the smallest network of {self.space.name} takes {latency:.4f} ms")
        best = self.best
        stats = SearchStats(self.proposals, self.infeasible, self.duplicates, len(self.history),
                            stopped_early=not self.done)
        return StrategyResult(best.arch, best.latency, best.params, best.score, best.mes,
                              tuple(self.steps), tuple(r.arch for r in self.history), len(self.history),
                              strategy=self.strategy, stats=stats)


def _run_until_done(run: _Run, propose: Callable[[], tuple[Architecture, str, str]]) -> StrategyResult:
    try:
        while not run.done:
            if not run.offer(*propose()) and run.exhausted:
                break
    finally:
        run.close()
    return run.result()


# -- strategies ------------------------------------------------------------------------------------
def random_search(
    problem: SearchProblem,
    budget: int = 100,
    rng: np.random.Generator | None = None,
    seed: int = 0,
    max_retries: int = 10_000,
    on_step: Callable[[Step], None] | None = None,
    state_path: str | Path | None = None,
    progress: bool = False,
) -> StrategyResult:
    """Evaluate up to `budget` distinct uniform samples that meet the constraint; return the best.

    `rng` (default `numpy.random.default_rng(seed)`) is used and advanced; on resume its state is
    replaced by the stored one. Raises `Unreachable` when the smallest network misses the target
    or nothing feasible turns up in `max_retries` proposals; `ValueError` for bad settings or a
    state file of another search. `progress` shows a tqdm bar on stderr.
    """
    rng = rng if rng is not None else np.random.default_rng(seed)
    run = _Run("random", {"seed": seed}, problem, budget, max_retries, rng, on_step, state_path, progress)
    return _run_until_done(run, lambda: (problem.space.sample(rng), "sample", "uniform random sample"))


def regularized_evolution(
    problem: SearchProblem,
    budget: int = 100,
    seed: int = 0,
    population_size: int = 20,
    sample_size: int = 5,
    max_retries: int = 10_000,
    on_step: Callable[[Step], None] | None = None,
    state_path: str | Path | None = None,
    progress: bool = False,
) -> StrategyResult:
    """Regularized (aging) evolution with `budget` evaluations of distinct feasible architectures.

    The first `population_size` evaluations are feasible uniform samples; then each cycle's parent
    is the best of `sample_size` members drawn uniformly with replacement, its child one `mutate`
    away; the oldest member leaves as the child joins. Raises like `random_search`.
    """
    if population_size < 1:
        raise ValueError(f"population_size must be at least 1, got {population_size}")
    if not 1 <= sample_size <= population_size:
        raise ValueError(f"sample_size must be between 1 and population_size ({population_size}), got {sample_size}")
    space = problem.space
    rng = np.random.default_rng(seed)
    settings = {"seed": seed, "population_size": population_size, "sample_size": sample_size}
    run = _Run("evolution", settings, problem, budget, max_retries, rng, on_step, state_path, progress,
               population_size=population_size)

    def propose() -> tuple[Architecture, str, str]:
        if len(run.history) < population_size:
            return space.sample(rng), "sample", "initial population: uniform random sample"
        members = list(run.population)
        drawn = rng.integers(0, len(members), size=sample_size)
        parent = _best(members[int(i)] for i in drawn)
        mutation = draw_mutation(space, parent.arch, rng)
        return mutation.arch, "mutate", f"{mutation.description} (parent: evaluation {run.seen[parent.arch]})"

    return _run_until_done(run, propose)


def _best(records: Iterable[_Evaluation]) -> _Evaluation:
    """The highest-ranked record; the first one drawn among equals."""
    iterator = iter(records)
    best = next(iterator)
    for record in iterator:
        if record.rank > best.rank:
            best = record
    return best


# -- one protocol for all three ------------------------------------------------------------------
class Strategy(Protocol):
    """A search strategy: answers a `SearchProblem` with a `SearchResult`.

    `search` calls `on_step` for every step (greedy) or evaluation (sampling strategies) as it
    happens; with `state_path` it writes a resumable state after every evaluation and, when the
    file exists, continues the search it holds (ending with what an uninterrupted run gives).
    `settings()` is what the output's provenance records.
    """

    name: str

    def search(self, problem: SearchProblem, *, on_step: Callable[[Step], None] | None = None,
               state_path: str | Path | None = None, progress: bool = False) -> SearchResult: ...

    def settings(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class GreedySlimming:
    """EfficientFormer's greedy slimming (`nas.greedy`) from `start` (default the largest network)
    with an action set (`nas.actions`: V2 by default, `V1Actions` for V1); no budget: it stops
    when the target is met. `shortlist` > 0 screens each step's candidates and fully scores only
    that many of them (`nas.greedy`; the evaluator must screen). `drop_floor` counts every accuracy
    drop below it (points) as that much (`nas.greedy.floored_ratio`; None: the plain ratio).
    `min_step_ms` compounds every smaller action to save that much latency (`nas.actions.compound`).
    `steps_past_target` > 0 walks that many steps on past the target and returns the path's most
    accurate feasible network (`nas.greedy`). `shortlist_extra` > 0 lets a step whose shortlist
    disappoints score up to that many more candidates (`nas.greedy`)."""

    actions: ActionSet = v2_actions
    start: Architecture | None = None
    actions_name: str = "v2"
    max_steps: int = 10_000
    shortlist: int = 0
    drop_floor: float | None = None
    min_step_ms: float | None = None
    steps_past_target: int = 0
    shortlist_extra: int = 0
    name: str = "greedy"

    def search(self, problem: SearchProblem, *, on_step: Callable[[Step], None] | None = None,
               state_path: str | Path | None = None, progress: bool = False) -> SearchResult:
        return greedy_search(problem, self.start, self.actions, self.max_steps, on_step, state_path, self.shortlist,
                             progress=progress, drop_floor=self.drop_floor, min_step_ms=self.min_step_ms,
                             steps_past_target=self.steps_past_target, shortlist_extra=self.shortlist_extra)

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "actions": self.actions_name, **({"shortlist": self.shortlist} if self.shortlist else {}),
                **({"drop_floor": self.drop_floor} if self.drop_floor is not None else {}),
                **({"min_step_ms": self.min_step_ms} if self.min_step_ms is not None else {}),
                **({"steps_past_target": self.steps_past_target} if self.steps_past_target else {}),
                **({"shortlist_extra": self.shortlist_extra} if self.shortlist_extra else {})}


@dataclass(frozen=True)
class RandomSearch:
    """Uniform random search (`random_search`) with `budget` evaluations."""

    budget: int = 200
    seed: int = 0
    max_retries: int = 10_000
    name: str = "random"

    def search(self, problem: SearchProblem, *, on_step: Callable[[Step], None] | None = None,
               state_path: str | Path | None = None, progress: bool = False) -> SearchResult:
        return random_search(problem, self.budget, seed=self.seed, max_retries=self.max_retries, on_step=on_step,
                             state_path=state_path, progress=progress)

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "budget": self.budget, "seed": self.seed}


@dataclass(frozen=True)
class RegularizedEvolution:
    """Regularized evolution (`regularized_evolution`) with `budget` evaluations."""

    budget: int = 200
    seed: int = 0
    population_size: int = 20
    sample_size: int = 5
    max_retries: int = 10_000
    name: str = "evolution"

    def search(self, problem: SearchProblem, *, on_step: Callable[[Step], None] | None = None,
               state_path: str | Path | None = None, progress: bool = False) -> SearchResult:
        return regularized_evolution(problem, self.budget, self.seed, self.population_size, self.sample_size,
                                     self.max_retries, on_step, state_path, progress)

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "budget": self.budget, "seed": self.seed,
                "population_size": self.population_size, "sample_size": self.sample_size}


STRATEGIES: dict[str, type] = {"greedy": GreedySlimming, "random": RandomSearch, "evolution": RegularizedEvolution}
"""Every strategy by name; each class implements `Strategy`."""
