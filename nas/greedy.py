"""The greedy slimming controller (EfficientFormer V1/V2 search).

From `space.largest()` (or a start architecture), score every action of the action set, apply the
one with the smallest objective ratio (accuracy drop per unit gained), and repeat until the
predicted latency ≤ target and params ≤ `max_params`. Every step is recorded; the path is a
latency/accuracy front. While only the size budget is unmet, the gain is the parameters saved (in
millions).

The last step is chosen differently: when the ratio-best action of a step meets every constraint
(so the search would stop after it), the search takes the feasible candidate of that step with
the highest score instead. The ratio is the right guide while latency still has to be bought; at
the finish it would trade accuracy for latency below the target, which nobody asked for (the
ratio-best action may overshoot the target by a wide margin while a gentler one lands just under
it with more accuracy). A feasible candidate of an earlier step is not taken: a drastic action
that reaches the target at once usually scores below the end of the gentler path.

With `shortlist` K > 0 and an evaluator that screens (`nas.problem.ScreeningEvaluator`: the
supernet's accuracy on a fixed part of its images), a step first ranks all its candidates by the
ratio of their screened scores (against the current network's screened score), then scores only
the shortlist on all images and decides among it as above: the K best screened ratios, and the K
most accurate screened candidates that meet the budget (the candidates the last step chooses
from). A step then costs K to 2K full evaluations plus one screening per candidate instead of a
full evaluation per candidate; `benchmarks/greedy_screening.py` measures what it keeps of the
unscreened choices.

With `shortlist_extra` N > 0 a step whose shortlist disappoints is widened, up to N more full
scores. Each candidate left off the shortlist gets a predicted full ratio: its screened drop plus
the screening's error that the step's fully scored candidates showed (the mean of full drop minus
screened drop over them), over its gain. While the best prediction beats the best full ratio, that
candidate is scored fully and the error re-estimated. Why: a screening on a few images can be off
for the whole step at once, not only per candidate. On the hybrid space's `ort-cpu` table the
largest network scored 86% on the 100 screening images and 85% on all 500, while 90 of the first
step's 95 candidates screened at 86-89%: the screening called nearly every action free or an
accuracy *gain*, and a gain divided by a small latency saving is the best ratio there is, so the
shortlist was two actions that saved little (stage-1 block-type swaps at 0.4-0.6 ms, screened at
89% and 88%), which scored 81.8% and 81.4% on all 500. The step took one at -3.2 points (ratio
5.7) while an expansion cut that the next step took cost -2.0 for 1.5 ms (ratio 1.3).
Corrected by that error, the predictions rank the step again; the widening ends as soon as no
prediction beats what is confirmed, so a step whose shortlist held up costs nothing more.

With `min_step_ms`, actions that save less predicted latency than that are compounded with more
of their kind on the same stage (`nas.actions.compound`) before they are compared: a step's
accuracy drop is then large enough to measure for every kind of action, instead of a 0.01 ms
expansion cut competing with a 0.09 ms block drop on evaluator noise.

With `steps_past_target` N > 0 the search does not stop where its path first meets the problem: it
takes up to N more steps (each to the most accurate candidate that still meets it) and
returns the most accurate network on the path that meets the problem (ties: the faster one). The
path's first feasible point is where the ratio rule is forced to stop, not where accuracy peaks:
an evaluator may score some smaller networks higher (a briefly trained supernet does), and a
search that stops at the target cannot reach them.

Deterministic: actions come in a fixed order and ties keep the first. That makes the search
resumable by replay: with a state file, every score is recorded as it is computed; a resumed run
starts from the beginning with those scores known, so it retraces the recorded path without
evaluating anything again and continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm import tqdm

from search_spaces import Architecture, ArchitectureError

from nas.actions import Action, ActionSet, compound, v2_actions
from nas.objectives import NO_GAIN
from nas.problem import Evaluator, SearchProblem, SearchResult, Step, Unreachable
from nas.state import StateFile, check_resumed_scores, problem_settings

STRATEGY_NAME = "greedy"
MID_STEP_SAVE_INTERVAL_S = 1.0


@dataclass(frozen=True)
class _Scored:
    arch: Architecture
    score: float
    screened: bool = False  # a screening estimate (`ScreeningEvaluator.screen`), not a score

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch.to_dict(), "score": self.score, **({"screened": True} if self.screened else {})}


class _RecordedScores:
    """The evaluator's scores (and screenings) of one search, in evaluation order, persisted
    after each new one.

    Values recorded in the state file (a resumed search) are answered without asking the
    evaluator; `evaluations` counts every distinct architecture scored for this search,
    `screenings` every one screened.
    """

    def __init__(self, evaluator: Evaluator, state: StateFile, body: Callable[[], dict[str, Any]]) -> None:
        self.evaluator, self.state, self.body = evaluator, state, body
        self.records: list[_Scored] = []
        self.known: dict[tuple[Architecture, bool], float] = {}

    def restore(self, history: list[dict[str, Any]]) -> None:
        try:
            for item in history:
                self._add(_Scored(Architecture.from_dict(item["arch"]), float(item["score"]),
                                  bool(item.get("screened", False))))
        except (KeyError, TypeError, ValueError, ArchitectureError) as error:
            raise ValueError(f"{self.state.path}: corrupt search state: {_first_line(error)}") from None
        check_resumed_scores([(r.arch, r.score) for r in self.records if not r.screened], self.evaluator,
                             self.state.path)
        screened = [(r.arch, r.score) for r in self.records if r.screened]
        if screened:
            if not callable(getattr(self.evaluator, "screen", None)):
                raise ValueError(f"{self.state.path}: the state records screenings and this evaluator screens nothing")
            check_resumed_scores(screened, self.evaluator, self.state.path, rescore=self.evaluator.screen)

    def _add(self, record: _Scored) -> None:
        self.records.append(record)
        self.known[record.arch, record.screened] = record.score

    def score(self, arch: Architecture) -> float:
        return self._value(arch, False)

    def screen(self, arch: Architecture) -> float:
        return self._value(arch, True)

    def _value(self, arch: Architecture, screened: bool) -> float:
        value = self.known.get((arch, screened))
        if value is None:
            value = float(self.evaluator.screen(arch) if screened else self.evaluator.score(arch))
            self._add(_Scored(arch, value, screened))
            # every step ends with a save; within a step, at most one a second: a slow (supernet)
            # evaluator loses at most a second of work to a kill, a fast one no time to rewriting
            self.state.save(self.body(), self.records, _Scored.to_dict, min_interval_s=MID_STEP_SAVE_INTERVAL_S)
        return value

    @property
    def evaluations(self) -> int:
        return sum(not record.screened for record in self.records)

    @property
    def screenings(self) -> int:
        return sum(record.screened for record in self.records)


def greedy_search(
    problem: SearchProblem,
    start: Architecture | None = None,
    actions: ActionSet = v2_actions,
    max_steps: int = 10_000,
    on_step: Callable[[Step], None] | None = None,
    state_path: str | Path | None = None,
    shortlist: int = 0,
    progress: bool = False,
    drop_floor: float | None = None,
    min_step_ms: float | None = None,
    steps_past_target: int = 0,
    shortlist_extra: int = 0,
) -> SearchResult:
    """Slim from `start` (default the largest network) until `problem` is met, one action a step as
    the module says; return the end and the path. `progress` shows a tqdm bar on stderr over the
    milliseconds between the start's predicted latency and the target (a step's length is not
    known in advance; the latency it buys is).

    Each distinct candidate is scored once (with `shortlist` > 0: screened once, and scored once
    if it makes a shortlist). `on_step` sees every step as it is taken (on resume, only the steps
    the state file did not already hold). Raises `Unreachable` when no action gains anything
    before the target is met, or after `max_steps`; `ValueError` for a state file of another
    search, or a shortlist with an evaluator that cannot screen.

    `min_step_ms`: while the latency target is unmet, every action that saves less predicted
    latency is continued with actions of its kind on the same stage until it saves that much
    (`nas.actions.compound`), so steps are of one size and their accuracy drops comparable; an
    action that alone meets the target stays a candidate too (the last step may land gently).

    `steps_past_target`: the module's; the result is then the path's most accurate feasible point,
    which need not be the path's end.

    `shortlist_extra` (with `shortlist`): up to that many more candidates a step scores fully, while
    one's predicted full ratio beats the step's best full ratio (the module's).
    """
    ratio_of = floored_ratio(problem.objective.ratio, drop_floor)
    if shortlist and not callable(getattr(problem.evaluator, "screen", None)):
        raise ValueError(f"a shortlist needs an evaluator that screens; {problem.evaluator.name!r} does not")
    if shortlist_extra and not shortlist:
        raise ValueError("shortlist_extra widens a shortlist; give the shortlist too")
    space = problem.space
    arch = space.validate(start) if start is not None else space.largest()
    settings = {**problem_settings(problem), "start": arch.to_dict(), "actions": actions_settings(actions),
                "max_steps": max_steps, **({"shortlist": shortlist} if shortlist else {}),
                **({"drop_floor": drop_floor} if drop_floor is not None else {}),
                **({"min_step_ms": min_step_ms} if min_step_ms is not None else {}),
                **({"steps_past_target": steps_past_target} if steps_past_target else {}),
                **({"shortlist_extra": shortlist_extra} if shortlist_extra else {})}
    state = StateFile(state_path, STRATEGY_NAME, settings)
    steps: list[Step] = []
    scores = _RecordedScores(problem.evaluator, state, lambda: {"steps": len(steps) - 1})
    stored = state.load()
    announced = 0
    if stored is not None:
        scores.restore(stored["history"])
        announced = int(stored.get("steps", 0)) + 1  # the steps (and the start) a trace already holds

    def take(step: Step) -> None:
        steps.append(step)
        if on_step and len(steps) > announced:
            on_step(step)

    latency, params = problem.price(arch)
    bar = tqdm(total=round(max(latency - problem.target_latency, 0.0), 4), unit="ms", desc="greedy",
               disable=not progress, leave=False, bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} ms{postfix}")
    score = scores.score(arch)
    take(Step("start", "starting architecture", 0.0, 0.0, 0, latency, params, problem.mes(params, latency), score, 0.0))
    path = [arch]
    first, best = None, None  # indices into `steps`/`path`: the first and the most accurate point that meets the problem
    while True:
        bar.n = round(bar.total - min(max(latency - problem.target_latency, 0.0), bar.total), 4)
        bar.set_postfix_str(f"step {len(steps) - 1}, {score:.2f}, {scores.evaluations} scored"
                            + (f" + {scores.screenings} screened" if shortlist else ""))
        met = problem.met(latency, params)
        if met:
            first = len(steps) - 1 if first is None else first
            if best is None or score >= steps[best].score:  # ties: the later, faster one
                best = len(steps) - 1
            if len(steps) - 1 - first >= steps_past_target:
                break
        elif len(steps) - 1 >= max_steps:
            bar.close()
            raise Unreachable(latency, f"no solution within {max_steps} steps")
        size_only = not met and latency <= problem.target_latency  # only the size budget is left
        candidates, seen = [], set()
        for action in _step_actions(problem, arch, latency, actions, None if size_only else min_step_ms):
            candidate = action.apply(arch)
            if candidate in seen:
                continue
            seen.add(candidate)
            cand_latency, cand_params = problem.price(candidate)
            if size_only:
                gain = (params - cand_params) / 1e6
            else:
                gain = problem.objective.gain(latency, params, cand_latency, cand_params)
            if gain > 0 and (not met or problem.met(cand_latency, cand_params)):  # past the target: stay under it
                candidates.append((action, candidate, cand_latency, cand_params, gain))
        reserve: list = []  # the candidates left off the shortlist
        if shortlist:
            candidates, reserve = _shortlisted(candidates, problem, scores, arch, shortlist, ratio_of)
        options: list = []  # (full ratio, action, candidate, latency, params, score)
        for entry in candidates:
            options += _option(entry, scores, score, ratio_of)
        for entry in _widening(reserve, candidates, scores, arch, shortlist_extra, ratio_of, options):
            options += _option(entry, scores, score, ratio_of)
        if not options:
            if met:  # past the target with nothing left to gain: the path ends here
                break
            bar.close()
            raise Unreachable(min(latency, problem.smallest_latency()))
        chosen = options[choose([o[0] for o in options], [o[5] for o in options],
                                [problem.met(o[3], o[4]) for o in options])]
        ratio, action, candidate, cand_latency, cand_params, cand_score = chosen
        take(Step(action.name, action.description, cand_score - score, cand_latency - latency, cand_params - params,
                  cand_latency, cand_params, problem.mes(cand_params, cand_latency), cand_score, ratio))
        path.append(candidate)
        state.save({"steps": len(steps) - 1}, scores.records, _Scored.to_dict)
        arch, latency, params, score = candidate, cand_latency, cand_params, cand_score
    bar.close()
    end = steps[best]
    return SearchResult(path[best], end.latency, end.params, end.score, end.mes, tuple(steps), tuple(path),
                        scores.evaluations, screenings=scores.screenings)


def _step_actions(problem: SearchProblem, arch: Architecture, latency: float, actions: ActionSet,
                  min_step_ms: float | None) -> list[Action]:
    """A step's actions: the set's, each compounded to save at least `min_step_ms` (None: as they
    are), and the uncompounded ones that meet the problem on their own."""
    offered = list(actions(problem.space, arch))
    if min_step_ms is None:
        return offered
    saving = lambda candidate: latency - problem.price(candidate)[0]  # noqa: E731
    stepped = [compound(problem.space, arch, action, actions, saving, min_step_ms) for action in offered]
    finishing = [action for action, step in zip(offered, stepped)
                 if step is not action and problem.met(*problem.price(action.apply(arch)))]
    return stepped + finishing


def choose(ratios: Sequence[float], scores: Sequence[float], feasible: Sequence[bool]) -> int:
    """The index of the candidate a greedy step takes (the module's rule): the smallest ratio;
    when that candidate meets every constraint (the last step), the most accurate candidate that
    does. Ties keep the first."""
    best = min(range(len(ratios)), key=ratios.__getitem__)
    if feasible[best]:
        best = max((i for i in range(len(scores)) if feasible[i]), key=lambda i: (scores[i], -i))
    return best


def floored_ratio(ratio: Callable[[float, float], float], drop_floor: float | None) -> Callable[[float, float], float]:
    """The objective's ratio with every accuracy drop below `drop_floor` (points) counted as
    `drop_floor` (None: the plain ratio). Why: a measured accuracy *gain* from removing capacity is
    the evaluator's noise (or the supernet's unevenness), not something to buy; with the plain
    ratio such a gain makes the ratio negative, and the smallest action wins by the size of its
    noise, whatever it saves (on Fashion-MNIST a 0.01 ms expansion cut that scored 2.6 points
    higher beat every block removal, so greedy would need about 100 steps to 1.6 ms). With the
    floor, drops inside the noise cost the same, and among them the action that saves the most
    wins; actions with real drops still compete by drop per unit saved."""
    if drop_floor is None:
        return ratio
    return lambda drop, gain: ratio(max(drop, drop_floor), gain)


def _shortlisted(candidates: list, problem: SearchProblem, scores: _RecordedScores, arch: Architecture,
                 shortlist: int, ratio_of: Callable[[float, float], float]) -> tuple[list, list]:
    """The candidates (in action order) worth a full score: the `shortlist` best ratios of their
    screened scores, and the `shortlist` most accurate screened ones that meet the budget; and the
    others, best screened ratio first (what `shortlist_extra` draws on)."""
    reference = scores.screen(arch)
    screened = [scores.screen(candidate) for _, candidate, *_ in candidates]
    ratios = [ratio_of(reference - value, gain) for value, (*_, gain) in zip(screened, candidates)]
    by_ratio = sorted(range(len(candidates)), key=lambda i: ratios[i])  # stable: ties keep the first
    feasible = [i for i, (_, _, lat, par, _) in enumerate(candidates) if problem.met(lat, par)]
    by_accuracy = sorted(feasible, key=lambda i: -screened[i])
    kept = set(by_ratio[:shortlist]) | set(by_accuracy[:shortlist])
    return ([candidate for i, candidate in enumerate(candidates) if i in kept],
            [candidates[i] for i in by_ratio if i not in kept])


def _option(entry: tuple, scores: _RecordedScores, score: float, ratio_of: Callable[[float, float], float]) -> list:
    """A candidate (action, architecture, latency, params, gain) scored fully, as a step's option
    (ratio first; none when it gains nothing)."""
    action, candidate, cand_latency, cand_params, gain = entry
    cand_score = scores.score(candidate)
    ratio = ratio_of(score - cand_score, gain)
    return [] if ratio == NO_GAIN else [(ratio, action, candidate, cand_latency, cand_params, cand_score)]


def _widening(reserve: list, shortlisted: list, scores: _RecordedScores, arch: Architecture, limit: int,
              ratio_of: Callable[[float, float], float], options: list):
    """Yield up to `limit` candidates of `reserve` (in screened-ratio order) to score fully, each
    the one whose predicted full ratio is best, while it beats the best full ratio of `options` (the
    caller adds each yielded one before the next is chosen): its screened drop, corrected by the
    mean screening error of the step's fully scored candidates, over its gain (the module's
    `shortlist_extra`)."""
    if not limit or not reserve:
        return
    reference_score, reference_screen = scores.score(arch), scores.screen(arch)
    confirmed = list(shortlisted)
    left = list(reserve)
    for _ in range(min(limit, len(left))):
        errors = [(reference_score - scores.score(c)) - (reference_screen - scores.screen(c)) for _, c, *_ in confirmed]
        error = sum(errors) / len(errors) if errors else 0.0
        predicted = [ratio_of(reference_screen - scores.screen(c) + error, gain) for _, c, *_, gain in left]
        best = min(range(len(left)), key=predicted.__getitem__)  # ties: the better screened ratio
        if predicted[best] == NO_GAIN or predicted[best] >= min((o[0] for o in options), default=NO_GAIN):
            return
        entry = left.pop(best)
        confirmed.append(entry)
        yield entry


def actions_settings(actions: ActionSet) -> Any:
    """What a state file records of an action set: its `settings()` if it has them, else its name."""
    settings = getattr(actions, "settings", None)
    return settings() if callable(settings) else getattr(actions, "__name__", type(actions).__name__)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
