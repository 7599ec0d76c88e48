"""Compound greedy steps (`nas.actions.compound`, greedy's `min_step_ms`): an action that saves too
little latency is continued with more of its kind on its stage until it saves enough, so every
kind of step competes on a measurable accuracy drop; the option reaches provenance and is refused
where it does not apply."""

from __future__ import annotations

import json
import zlib

import pytest

from lut import get_device
from search_spaces import get_space

from nas.actions import compound, v2_actions
from nas.api import RequestError, SearchRequest, run_search, validate_request
from nas.greedy import greedy_search
from nas.objectives import LatencyObjective
from nas.problem import SearchProblem
from nas.search import main
from tests.cli_support import assert_refused_in_one_line

SPACE = get_space("efficientformer_v2")
TABLE = get_device("iphone12").default_table(SPACE)


def _saving_from(arch):
    base = TABLE.predict(arch)
    return lambda candidate: base - TABLE.predict(candidate)


def _named(arch, name):
    return next(action for action in v2_actions(SPACE, arch) if action.name == name)


def test_an_action_that_saves_enough_is_returned_as_it_is():
    arch = SPACE.largest()
    drop = _named(arch, "drop s2b3")
    assert compound(SPACE, arch, drop, v2_actions, _saving_from(arch), 0.01) is drop


def test_a_width_step_narrows_again_until_it_saves_the_minimum():
    arch, saving = SPACE.largest(), _saving_from(SPACE.largest())
    one = _named(arch, "width s3")
    assert saving(one.apply(arch)) < 0.05
    stepped = compound(SPACE, arch, one, v2_actions, saving, 0.05)
    result = stepped.apply(arch)
    widths = SPACE.stages[3].widths
    steps = widths.index(arch.stages[3].width) - widths.index(result.stages[3].width)
    assert steps > 1 and stepped.name == f"width s3 x{steps}" and saving(result) >= 0.05
    # the smallest compound that saves enough: one step less does not
    assert saving(SPACE.validate(result.replace_stage(3, type(result.stages[3])(
        widths[widths.index(result.stages[3].width) + 1], arch.stages[3].blocks)))) < 0.05


def test_expansion_cuts_spread_over_the_stage_one_block_after_another_and_wrap_around():
    arch, saving = SPACE.largest(), _saving_from(SPACE.largest())
    first = _named(arch, "expansion s1b0")
    result = compound(SPACE, arch, first, v2_actions, saving, 0.05).apply(arch)
    cut = [b.expansion for b in result.stages[1].blocks]
    top = max(SPACE.stages[1].expansions)
    assert cut[0] < top and all(later <= earlier for earlier, later in zip(cut, cut[1:]))  # b0, b1, ... in order
    assert result.stages[0] == arch.stages[0] and result.stages[2:] == arch.stages[2:]  # only its own stage
    whole = compound(SPACE, arch, first, v2_actions, saving, 10.0).apply(arch)  # more than the stage can give
    assert all(b.expansion == min(SPACE.stages[1].expansions) for b in whole.stages[1].blocks)


def test_drops_continue_with_the_next_block_of_the_stage():
    arch, saving = SPACE.largest(), _saving_from(SPACE.largest())
    stepped = compound(SPACE, arch, _named(arch, "drop s1b2"), v2_actions, saving, 0.09)
    result = stepped.apply(arch)
    dropped = [slot for slot, b in enumerate(result.stages[1].blocks) if b.is_identity]
    assert dropped == [2, 3] and stepped.name == "drop s1 b2,b3" and SPACE.contains(result)


class DepthMatters:
    """Accuracy falls 0.4 points per block removed and not at all with width or expansion, plus a
    deterministic per-network noise of up to ±0.25 points: width and expansion steps are the free
    ones, but each saves less latency than a block drop."""

    name = "depth-matters"

    def score(self, arch) -> float:
        noise = (zlib.crc32(json.dumps(arch.to_dict(), sort_keys=True).encode()) % 51 - 25) / 100
        return 80.0 + 0.4 * sum(arch.depths) + noise

    def settings(self) -> dict:
        return {"name": self.name}


def _problem(target: float) -> SearchProblem:
    return SearchProblem(SPACE, TABLE, DepthMatters(), LatencyObjective(), target)


def test_compound_steps_let_free_width_and_expansion_cuts_win_where_single_steps_drop_blocks():
    target = 2.2
    single = greedy_search(_problem(target), drop_floor=0.5)
    stepped = greedy_search(_problem(target), min_step_ms=0.05)
    largest = sum(SPACE.largest().depths)
    # single steps: under the floor every noise-sized drop ties, and a block drop saves more than any
    # one width (but stage 0's) or expansion step, so greedy drops blocks and never cuts an expansion
    assert sum(single.arch.depths) <= largest - 3
    assert not any(step.action.startswith("expansion") for step in single.steps)
    kinds = {step.action.split()[0] for step in stepped.steps[1:]}
    assert "expansion" in kinds and sum(stepped.arch.depths) == largest and stepped.score > single.score + 1
    assert stepped.latency <= target and single.latency <= target
    # every step but the last saves at least the minimum, or leaves nothing of its kind on its stage
    for step, after in zip(stepped.steps[1:-1], stepped.path[1:-1]):
        kind, stage = step.action.split()[:2]
        group = f"{kind} {stage[:2]}"  # "width s2 x2", "drop s1 b2,b3", "drop s3b4" -> "width s2", "drop s1", "drop s3"
        exhausted = not any(action.group == group for action in v2_actions(SPACE, after))
        assert -step.delta_latency >= 0.05 - 1e-9 or exhausted, step


def test_a_compound_greedy_resumed_from_its_state_equals_an_uninterrupted_run(tmp_path):
    straight = greedy_search(_problem(2.3), min_step_ms=0.05)
    state, seen = tmp_path / "greedy.json", []

    def stop_after_two(step):
        seen.append(step)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        greedy_search(_problem(2.3), min_step_ms=0.05, on_step=stop_after_two, state_path=state)
    assert json.loads(state.read_text())["settings"]["min_step_ms"] == 0.05
    assert greedy_search(_problem(2.3), min_step_ms=0.05, state_path=state) == straight
    with pytest.raises(ValueError):  # another step size is another search
        greedy_search(_problem(2.3), min_step_ms=0.06, state_path=state)


def test_min_step_reaches_provenance_and_is_refused_where_it_does_not_apply():
    outcome = run_search(SearchRequest("efficientformer_v2", TABLE, 2.3, evaluator=DepthMatters(), min_step_ms=0.05))
    assert outcome.arch.meta["min_step_ms"] == 0.05
    for bad in (0.0, -1.0, float("nan"), 2.3):
        with pytest.raises(RequestError) as caught:
            validate_request(SearchRequest("efficientformer_v2", TABLE, 2.3, min_step_ms=bad))
        assert caught.value.field == "min_step_ms"
    with pytest.raises(RequestError) as caught:
        validate_request(SearchRequest("efficientformer_v2", TABLE, 2.3, strategy="random", min_step_ms=0.05))
    assert caught.value.field == "min_step_ms"


@pytest.mark.parametrize("argv", [["--min-step", "fast"], ["--min-step", "0ms"], ["--min-step", "5ms"],
                                  ["--min-step", "0.05ms", "--strategy", "evolution"]])
def test_a_bad_min_step_on_the_command_line_is_one_line(tmp_path, capsys, argv):
    assert_refused_in_one_line(main, "nas.search", ["--target-latency", "1.5ms", "--device", "iphone12", *argv],
                               "--min-step", tmp_path / "a.yaml", capsys)
