"""Greedy's `steps_past_target`: the search walks on past the first network that meets the target,
each step to the most accurate candidate still under it, and returns the path's most accurate
feasible network; with an evaluator that scores smaller networks higher (a briefly trained
supernet does) that beats stopping at the target. The option resumes, reaches provenance and is
refused where it does not apply."""

from __future__ import annotations

import json
import zlib

import pytest

from lut import get_device
from search_spaces import get_space

from nas.api import RequestError, SearchRequest, run_search, validate_request
from nas.greedy import greedy_search
from nas.objectives import LatencyObjective
from nas.problem import SearchProblem
from nas.search import main
from tests.cli_support import assert_refused_in_one_line

SPACE = get_space("efficientformer_v2")
TABLE = get_device("iphone12").default_table(SPACE)
TARGET = 2.4


class SmallerScoresHigher:
    """Accuracy rises 0.3 points per block removed, plus a deterministic per-network noise of up to
    ±0.25 points: the first network under the target is not the most accurate one under it."""

    name = "smaller-scores-higher"

    def score(self, arch) -> float:
        noise = (zlib.crc32(json.dumps(arch.to_dict(), sort_keys=True).encode()) % 51 - 25) / 100
        return 90.0 - 0.3 * sum(arch.depths) + noise

    def settings(self) -> dict:
        return {"name": self.name}


def _problem() -> SearchProblem:
    return SearchProblem(SPACE, TABLE, SmallerScoresHigher(), LatencyObjective(), TARGET)


def test_walking_past_the_target_returns_the_most_accurate_feasible_network_on_the_path():
    stopped = greedy_search(_problem(), drop_floor=0.5)
    walked = greedy_search(_problem(), drop_floor=0.5, steps_past_target=4)
    first = next(i for i, step in enumerate(walked.steps) if step.latency <= TARGET)
    assert walked.steps[:first + 1] == stopped.steps  # the same path up to the target ...
    assert len(walked.steps) == first + 1 + 4  # ... then four steps more, all under it
    assert all(step.latency <= TARGET for step in walked.steps[first:])
    feasible = walked.steps[first:]
    assert walked.score == max(step.score for step in feasible) > stopped.score
    index = max(range(first, len(walked.steps)), key=lambda i: (walked.steps[i].score, i))
    assert walked.arch == walked.path[index] and walked.latency == walked.steps[index].latency
    assert greedy_search(_problem(), drop_floor=0.5, steps_past_target=0) == stopped


def test_a_search_walking_past_the_target_resumed_from_its_state_equals_an_uninterrupted_run(tmp_path):
    straight = greedy_search(_problem(), steps_past_target=3)
    state, seen = tmp_path / "greedy.json", []

    def stop_late(step):
        seen.append(step)
        if len(seen) == len(straight.steps) - 1:  # inside the steps past the target
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        greedy_search(_problem(), steps_past_target=3, on_step=stop_late, state_path=state)
    assert json.loads(state.read_text())["settings"]["steps_past_target"] == 3
    assert greedy_search(_problem(), steps_past_target=3, state_path=state) == straight
    with pytest.raises(ValueError):  # another walk is another search
        greedy_search(_problem(), steps_past_target=2, state_path=state)


def test_steps_past_target_reach_provenance_and_are_refused_where_they_do_not_apply():
    outcome = run_search(SearchRequest("efficientformer_v2", TABLE, TARGET, evaluator=SmallerScoresHigher(),
                                       steps_past_target=2))
    assert outcome.arch.meta["steps_past_target"] == 2 and outcome.result.latency <= TARGET
    for bad in (-1, 1001, 1.5, True, "3"):
        with pytest.raises(RequestError) as caught:
            validate_request(SearchRequest("efficientformer_v2", TABLE, TARGET, steps_past_target=bad))
        assert caught.value.field == "steps_past_target"
    with pytest.raises(RequestError) as caught:
        validate_request(SearchRequest("efficientformer_v2", TABLE, TARGET, strategy="random", steps_past_target=2))
    assert caught.value.field == "steps_past_target"


@pytest.mark.parametrize("argv", [["--steps-past-target", "many"], ["--steps-past-target", "-1"],
                                  ["--steps-past-target", "2", "--strategy", "random"]])
def test_a_bad_steps_past_target_on_the_command_line_is_one_line(tmp_path, capsys, argv):
    assert_refused_in_one_line(main, "nas.search", ["--target-latency", "1.5ms", "--device", "iphone12", *argv],
                               "--steps-past-target", tmp_path / "a.yaml", capsys)
