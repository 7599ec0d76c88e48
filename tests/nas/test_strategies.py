"""Tests of the baseline strategies (random search, regularized evolution) and `mutate`.

Everything runs on the real EfficientFormerV2 space (EdgeNeXt for head-count mutations) with an
analytic latency table, parameter count and score, so the tests are exact and take seconds.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from nas.problem import SearchResult, Unreachable
from nas.objectives import LatencyObjective, MESObjective
from nas.strategies import (
    MUTATION_KINDS,
    STRATEGIES,
    StrategyResult,
    draw_mutation,
    mutate,
    random_search,
    regularized_evolution,
)
from search_spaces import get_space, list_spaces
from search_spaces.architecture import IDENTITY_BLOCK
from nas.state import RESCORED_RECORDS, STATE_SCHEMA
from tests.nas.toys import ToyTable, toy_params, toy_problem

SPACE = get_space("efficientformer_v2")


# -- toy problem -------------------------------------------------------------------------------------
class ToyEvaluator:
    """Depth is precious, width cheap, expansion almost free; cached per architecture like the
    real evaluators, with `evaluations` counting distinct architectures scored."""

    name = "toy"

    def __init__(self):
        self.evaluations = 0
        self.calls = Counter()

    def score(self, arch):
        self.calls[arch] += 1
        if self.calls[arch] == 1:
            self.evaluations += 1
        expansions = sum(b.expansion or 0 for s in arch.stages for b in s.blocks if not b.is_identity)
        return 10 * sum(arch.depths) + sum(arch.widths) / 1000 + 1e-4 * expansions


SMALLEST_LATENCY = ToyTable().predict(SPACE.smallest())  # 0.344 ms
LARGEST_LATENCY = ToyTable().predict(SPACE.largest())  # 1.046 ms
TARGET = 0.6  # between the two: a part of uniform samples meets it


FUNCTIONS = {"random": random_search, "evolution": regularized_evolution}


def run(strategy, evaluator=None, target_latency=TARGET, max_params=None, objective=None, **settings):
    problem = toy_problem(evaluator or ToyEvaluator(), objective or LatencyObjective(), target_latency, max_params)
    return FUNCTIONS[strategy](problem, **{"budget": 40, **settings})


# -- mutate ------------------------------------------------------------------------------------------
def _slots(stage, depth):
    return list(stage.blocks) + [IDENTITY_BLOCK] * (depth - len(stage.blocks))


def _changes(space, before, after):
    """(stages whose width changed, (stage, slot) pairs whose block changed)."""
    widths = [s for s, (a, b) in enumerate(zip(before.stages, after.stages)) if a.width != b.width]
    blocks = [(s, slot) for s, (a, b, c) in enumerate(zip(before.stages, after.stages, space.stages))
              for slot, (x, y) in enumerate(zip(_slots(a, c.max_depth), _slots(b, c.max_depth))) if x != y]
    return widths, blocks


@pytest.mark.parametrize("name", list_spaces())
def test_mutations_stay_in_the_space_and_change_one_thing(name):
    space = get_space(name)
    rng = np.random.default_rng(0)
    arch = space.sample(rng)
    for _ in range(150):
        mutation = draw_mutation(space, arch, rng)
        assert mutation.kind in MUTATION_KINDS
        assert space.contains(mutation.arch) and mutation.arch != arch
        widths, blocks = _changes(space, arch, mutation.arch)
        if mutation.kind == "width":
            assert len(widths) == 1
            # only head counts of that stage may follow the new width
            assert all(s == widths[0] for s, _ in blocks)
            assert all(arch.stages[s].blocks[slot].type == mutation.arch.stages[s].blocks[slot].type for s, slot in blocks)
        else:
            assert widths == [] and len(blocks) == 1
        arch = mutation.arch


def test_mutate_is_deterministic_per_generator_state():
    arch = SPACE.reference("s1")
    first = [mutate(SPACE, arch, np.random.default_rng(7)) for _ in range(3)]
    assert first[0] == first[1] == first[2]

    def draws(seed):
        rng = np.random.default_rng(seed)
        return [draw_mutation(SPACE, arch, rng).description for _ in range(30)]

    assert draws(3) == draws(3)
    assert draws(3) != draws(4)


@pytest.mark.parametrize("name, kinds", [
    ("efficientformer_v2", {"type", "expansion", "width"}),  # V2 blocks have no head-count knob
    ("edgenext", {"type", "expansion", "heads", "width"}),
])
def test_mutations_touch_every_kind_of_change(name, kinds):
    space = get_space(name)
    rng = np.random.default_rng(1)
    seen_kinds, type_changes, width_steps = set(), set(), set()
    arch = space.reference(space.references()[0])
    for _ in range(600):
        mutation = draw_mutation(space, arch, rng)
        seen_kinds.add(mutation.kind)
        if mutation.kind == "type":
            before, after = mutation.description.split(": ")[1].split(" (")[0].split(" -> ")
            type_changes.add(("identity" if before == "identity" else "block",
                              "identity" if after == "identity" else "block"))
        if mutation.kind == "width":
            width_steps.add(mutation.description.split("one step ")[1].rstrip(")"))
        arch = mutation.arch
    assert seen_kinds == kinds
    assert {("block", "identity"), ("identity", "block")} <= type_changes
    assert width_steps == {"up", "down"}


def test_a_type_change_between_block_types_keeps_the_knobs_it_can():
    rng = np.random.default_rng(2)
    arch = SPACE.reference("l")
    for _ in range(400):
        mutation = draw_mutation(SPACE, arch, rng)
        if mutation.kind == "type" and "identity" not in mutation.description:
            _, blocks = _changes(SPACE, arch, mutation.arch)
            (s, slot), = blocks
            assert mutation.arch.stages[s].blocks[slot].expansion == arch.stages[s].blocks[slot].expansion
            return
    pytest.fail("no ffn <-> attn_ffn change in 400 draws")


# -- the constraint, the budget, determinism ---------------------------------------------------------
@pytest.mark.parametrize("strategy", ["random", "evolution"])
def test_constraint_holds_and_the_budget_is_spent_exactly(strategy):
    evaluator = ToyEvaluator()
    max_params = 4_000_000
    result = run(strategy, evaluator, budget=60, max_params=max_params)
    assert isinstance(result, StrategyResult) and isinstance(result, SearchResult)
    assert result.evaluations == 60 == len(result.path) == len(set(result.path)) == len(result.steps)
    assert evaluator.evaluations == 60 and set(evaluator.calls) == set(result.path)
    for arch, step in zip(result.path, result.steps):
        assert SPACE.contains(arch)
        assert ToyTable().predict(arch) == pytest.approx(step.latency) and step.latency <= TARGET
        assert toy_params(arch) == step.params <= max_params
    assert result.latency <= TARGET and result.params <= max_params
    assert result.score == max(step.score for step in result.steps)
    assert result.arch in result.path
    stats = result.stats
    assert stats.accepted == 60 and not stats.stopped_early
    assert stats.proposals == stats.accepted + stats.infeasible + stats.duplicates
    assert 0 < stats.acceptance_rate < 1  # the target rejects part of the proposals
    assert result.front()[0]["latency"] == result.steps[0].latency


@pytest.mark.parametrize("strategy", ["random", "evolution"])
def test_same_seed_same_result_other_seed_other_result(strategy):
    first, second, other = run(strategy, seed=3), run(strategy, seed=3), run(strategy, seed=4)
    assert first == second
    assert first.path != other.path


def test_random_search_uses_the_given_generator():
    from_seed = run("random", seed=5)
    from_rng = run("random", rng=np.random.default_rng(5), seed=99)
    assert from_rng.path == from_seed.path


@pytest.mark.parametrize("strategy", ["random", "evolution"])
def test_steps_are_labelled_and_measured_against_the_incumbent(strategy):
    result = run(strategy, budget=50, population_size=10, sample_size=3) if strategy == "evolution" else run(strategy, budget=50)
    actions = [step.action for step in result.steps]
    if strategy == "random":
        assert set(actions) == {"sample"}
    else:
        assert actions == ["sample"] * 10 + ["mutate"] * 40
        assert all("parent: evaluation" in step.description for step in result.steps[10:])
    first = result.steps[0]
    assert (first.delta_accuracy, first.delta_latency, first.delta_params) == (0.0, 0.0, 0)
    for index in range(1, len(result.steps)):
        incumbent = max(result.steps[:index], key=lambda s: (s.score, s.mes, -s.latency))
        step = result.steps[index]
        assert step.delta_accuracy == pytest.approx(step.score - incumbent.score)
        assert step.delta_params == step.params - incumbent.params


def test_evolution_beats_random_search_on_a_smooth_landscape():
    """Score = minus the distance to a hidden architecture (width steps + differing slots): a
    landscape where one-change mutations climb steadily while uniform samples stay far away."""
    optimum = SPACE.reference("s1")

    class DistanceEvaluator:
        name = "distance"

        def score(self, arch):
            distance = 0
            for stage, target, choices in zip(arch.stages, optimum.stages, SPACE.stages):
                distance += abs(choices.widths.index(stage.width) - choices.widths.index(target.width))
                distance += sum(a != b for a, b in zip(_slots(stage, choices.max_depth), _slots(target, choices.max_depth)))
            return -float(distance)

    target = ToyTable().predict(optimum) + 0.1
    for seed in range(3):
        evolved = run("evolution", DistanceEvaluator(), target, budget=500, seed=seed)
        sampled = run("random", DistanceEvaluator(), target, budget=500, seed=seed)
        assert evolved.score > sampled.score + 3, (seed, evolved.score, sampled.score)


# -- resume --------------------------------------------------------------------------------------------
class Interrupt(Exception):
    pass


def _interrupt_after(count):
    seen = []

    def on_step(step):
        seen.append(step)
        if len(seen) == count:
            raise Interrupt

    return on_step


@pytest.mark.parametrize("strategy, extra", [
    ("random", {}),
    ("evolution", {"population_size": 8, "sample_size": 3}),
])
@pytest.mark.parametrize("stop_after", [5, 17])  # inside and after evolution's initial population
def test_a_resumed_search_ends_exactly_like_an_uninterrupted_one(strategy, extra, stop_after, tmp_path):
    state = tmp_path / "state.json"
    expected = run(strategy, budget=30, **extra)
    with pytest.raises(Interrupt):
        run(strategy, budget=30, state_path=state, on_step=_interrupt_after(stop_after), **extra)
    saved = json.loads(state.read_text())
    assert saved["schema"] == STATE_SCHEMA and saved["strategy"] == strategy
    assert saved["evaluations"] == len(saved["history"]) == stop_after
    evaluator, steps = ToyEvaluator(), []
    resumed = run(strategy, evaluator, budget=30, state_path=state, on_step=steps.append, **extra)
    assert resumed == expected
    # stored evaluations are not scored again, except the few a resume checks (the state is not believed)
    assert 30 - stop_after < evaluator.evaluations <= 30 - stop_after + RESCORED_RECORDS
    assert steps == list(expected.steps[stop_after:])
    assert json.loads(state.read_text())["evaluations"] == 30


@pytest.mark.parametrize("strategy", ["random", "evolution"])
def test_a_finished_search_can_be_extended_with_a_larger_budget(strategy, tmp_path):
    state = tmp_path / "state.json"
    run(strategy, budget=25, state_path=state)
    assert run(strategy, budget=50, state_path=state) == run(strategy, budget=50)
    with pytest.raises(ValueError, match="more than the budget"):
        run(strategy, budget=10, state_path=state)


@pytest.mark.parametrize("strategy, change, needle", [
    ("random", {"seed": 1}, "seed"),
    ("random", {"target_latency": 0.7}, "target_latency_ms"),
    ("random", {"max_params": 5_000_000}, "max_params"),
    ("evolution", {}, "strategy"),
])
def test_a_state_of_another_search_is_refused(strategy, change, needle, tmp_path):
    state = tmp_path / "state.json"
    run("random", budget=5, state_path=state)
    with pytest.raises(ValueError, match=needle):
        run(strategy, budget=10, state_path=state, **change)


def test_an_evolution_state_with_another_population_size_is_refused(tmp_path):
    state = tmp_path / "state.json"
    run("evolution", budget=5, state_path=state, population_size=10)
    with pytest.raises(ValueError, match="population_size"):
        run("evolution", budget=10, state_path=state, population_size=12)


def test_a_corrupt_state_is_refused(tmp_path):
    state = tmp_path / "state.json"
    state.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read the search state"):
        run("random", state_path=state)
    state.write_text(json.dumps({"schema": "something/else"}))
    with pytest.raises(ValueError, match="not a search state"):
        run("random", state_path=state)


# -- unreachable targets, early stop, bad settings -----------------------------------------------------
@pytest.mark.parametrize("strategy", ["random", "evolution"])
def test_a_target_below_the_smallest_network_is_unreachable(strategy):
    evaluator = ToyEvaluator()
    with pytest.raises(Unreachable) as info:
        run(strategy, evaluator, target_latency=SMALLEST_LATENCY - 0.01)
    assert info.value.smallest_latency == pytest.approx(SMALLEST_LATENCY)
    assert evaluator.evaluations == 0
    with pytest.raises(Unreachable, match="params"):
        run(strategy, max_params=toy_params(SPACE.smallest()) - 1)


def test_nothing_feasible_within_the_retries_is_unreachable():
    # only the very smallest corner of the space meets this target: uniform samples never do
    with pytest.raises(Unreachable, match="no feasible architecture in 50 proposals") as info:
        run("random", target_latency=SMALLEST_LATENCY + 0.005, max_retries=50)
    assert info.value.smallest_latency == pytest.approx(SMALLEST_LATENCY)


def test_consecutive_rejections_stop_the_search_early_with_what_it_found():
    # about 7 % of uniform samples meet 0.55 ms: 40 rejections in a row happen long before 1000 evaluations
    result = run("random", target_latency=0.55, budget=1000, max_retries=40)
    assert result.stats.stopped_early and 1 < result.evaluations < 1000
    assert result.latency <= 0.55 and all(step.latency <= 0.55 for step in result.steps)
    assert result.stats.acceptance_rate < 0.1


@pytest.mark.parametrize("strategy, settings, needle", [
    ("random", {"budget": 0}, "budget"),
    ("random", {"max_retries": 0}, "max_retries"),
    ("evolution", {"population_size": 0}, "population_size"),
    ("evolution", {"population_size": 4, "sample_size": 5}, "sample_size"),
])
def test_bad_settings_are_refused(strategy, settings, needle):
    with pytest.raises(ValueError, match=needle):
        run(strategy, **settings)


def test_strategies_run_under_the_mes_objective_too():
    result = run("evolution", objective=MESObjective(), budget=30, population_size=10)
    assert result.evaluations == 30 and result.latency <= TARGET
    assert set(STRATEGIES) == {"greedy", "random", "evolution"}
