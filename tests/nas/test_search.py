"""Tests of the nas search core: objectives, actions, greedy controller (toy), CLI contract."""

from __future__ import annotations

import json

import pytest

from search_spaces import get_space
from search_spaces.command_line import run_command

from nas.actions import v1_actions, v2_actions
from nas.evaluators import ProxyEvaluator
from nas.greedy import Unreachable, greedy_search
from nas.objectives import LatencyObjective, MESObjective, mes
from nas.search import main, parse_latency, parse_size


# -- objectives --------------------------------------------------------------------------------
def test_mes_of_s0_matches_the_reference():
    assert mes(3.5e6, 0.9) == pytest.approx(102.9, abs=0.05)
    assert MESObjective().score(3.5e6, 0.9) == pytest.approx(102.87, abs=0.01)


def test_objective_ratio_prefers_small_drop_per_gain_and_refuses_no_gain():
    objective = LatencyObjective()
    assert objective.gain(2.0, 0, 1.5, 0) == pytest.approx(0.5)
    assert objective.ratio(1.0, 0.5) < objective.ratio(1.0, 0.25)
    assert objective.ratio(0.1, 0.0) == float("inf")
    assert MESObjective().gain(1.0, 3_000_000, 0.5, 3_000_000) == pytest.approx(100.0)


# -- actions -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["efficientformer_v1", "efficientformer_v2", "edgevit", "edgenext"])
def test_actions_stay_in_the_space(name):
    space = get_space(name)
    largest = space.largest()
    actions = v2_actions(space, largest)
    assert actions and all(space.contains(a.apply(largest)) for a in actions)
    assert all(a.apply(largest) != largest for a in actions)
    assert v2_actions(space, space.smallest()) == []
    assert all(space.contains(a.apply(largest)) for a in v1_actions(space, largest))


def test_v1_actions_use_importance_and_turn_meta3d_into_meta4d():
    space = get_space("efficientformer_v1")
    arch = space.largest()
    names = [a.name for a in v1_actions(space, arch, importance={(2, 3): -1.0})]
    assert names[0] == "metapath s2b3"
    assert any(n.startswith("meta3d->4d s3b0") for n in names)
    assert any(n.startswith("width") for n in names)


# -- greedy on a toy with analytic latency, params and accuracy -----------------------------------
class ToyTable:
    """latency = 0.01 ms per block + 0.001 ms per channel of stage width."""

    def predict(self, arch):
        return 0.01 * sum(arch.depths) + 0.001 * sum(arch.widths)


def toy_params(arch):
    expansions = sum(b.expansion or 0 for s in arch.stages for b in s.blocks if not b.is_identity)
    return 100_000 * expansions + 1000 * sum(arch.widths)


class ToyEvaluator:
    """Depth is precious (10 per block), width cheap (0.001 per channel), expansion almost free."""

    name = "toy"
    evaluations = 0

    def score(self, arch):
        expansions = sum(b.expansion or 0 for s in arch.stages for b in s.blocks if not b.is_identity)
        return 10 * sum(arch.depths) + sum(arch.widths) / 1000 + 1e-4 * expansions


SPACE = get_space("efficientformer_v2")


def test_latency_objective_cuts_only_widths_and_meets_the_target():
    result = greedy_search(SPACE, ToyTable(), ToyEvaluator(), LatencyObjective(), 0.8, params_of=toy_params)
    assert result.latency <= 0.8
    assert [s.action for s in result.steps[1:]] and all(s.action.startswith("width") for s in result.steps[1:])
    assert result.arch.depths == SPACE.largest().depths
    assert result.steps[1].action == "width s0"  # ties: the first in the fixed order
    assert ToyTable().predict(result.path[-2]) > 0.8  # stops at the first feasible step


def test_mes_objective_takes_the_nearly_free_expansion_cut_first():
    result = greedy_search(SPACE, ToyTable(), ToyEvaluator(), MESObjective(), 0.8, params_of=toy_params)
    assert result.steps[1].action.startswith("expansion")
    assert result.latency <= 0.8
    assert all(s.delta_params <= 0 for s in result.steps[1:])


def test_size_budget_and_determinism():
    run = lambda: greedy_search(SPACE, ToyTable(), ToyEvaluator(), LatencyObjective(), 1.0,
                                max_params=2_000_000, params_of=toy_params)
    first, second = run(), run()
    assert first.params <= 2_000_000 and first.latency <= 1.0
    assert first.steps == second.steps and first.arch == second.arch


def test_unreachable_names_the_smallest_latency():
    with pytest.raises(Unreachable) as info:
        greedy_search(SPACE, ToyTable(), ToyEvaluator(), LatencyObjective(), 0.1, params_of=toy_params)
    assert info.value.smallest_latency == pytest.approx(ToyTable().predict(SPACE.smallest()))


def test_proxy_is_cached_and_prefers_bigger_networks():
    proxy = ProxyEvaluator(SPACE)
    assert proxy.score(SPACE.largest()) > proxy.score(SPACE.smallest())
    proxy.score(SPACE.largest())
    assert proxy.evaluations == 2


# -- command line ------------------------------------------------------------------------------
def test_latency_and_size_parsing():
    assert parse_latency("1.5ms") == pytest.approx(1.5)
    assert parse_latency("1500us") == pytest.approx(1.5)
    assert parse_latency("0.0015s") == pytest.approx(1.5)
    assert parse_size("6M") == 6_000_000 and parse_size("6000000") == 6_000_000


def cli(argv, capsys):
    code = run_command(main, argv, prog="nas.search")
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("latency", ["1.5", "-1ms", "fastms", "1.5 parsecs"])
def test_bad_latency_strings(latency, capsys):
    code, _, err = cli([f"--target-latency={latency}", "--device", "iphone12"], capsys)
    assert code == 2 and "1.5ms, 1500us, 0.0015s" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("extra, needle", [
    (["--device", "nosuchdevice"], "nosuchdevice"),
    (["--device", "iphone12", "--space", "nospace"], "nospace"),
    (["--device", "iphone12", "--objective", "energy"], "energy"),
    (["--lut", "/nonexistent/table.json"], "table"),
    (["--device", "iphone12", "--max-params", "1000"], "smallest"),
    (["--device", "iphone12", "--max-params", "lots"], "6M"),
])
def test_bad_input_exits_2_with_one_line(extra, needle, capsys):
    code, _, err = cli(["--target-latency", "1.5ms", *extra], capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_corrupt_table_exits_2(tmp_path, capsys):
    bad = tmp_path / "t.json"
    bad.write_text("{not json")
    code, _, err = cli(["--target-latency", "1.5ms", "--lut", str(bad)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_unreachable_target_exits_3(capsys):
    code, _, err = cli(["--target-latency", "100us", "--device", "iphone12"], capsys)
    assert code == 3 and "smallest latency" in err


def test_same_seed_gives_byte_identical_yaml_with_provenance(tmp_path, capsys):
    outputs = []
    for run in range(2):
        out, trace = tmp_path / f"a{run}.yaml", tmp_path / f"t{run}.jsonl"
        code, _, _ = cli(["--target-latency", "2.5ms", "--device", "iphone12", "--seed", "3",
                          "--out", str(out), "--trace", str(trace)], capsys)
        assert code == 0
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    text = outputs[0].decode()
    for key in ("evaluator: proxy", "sha256:", "predicted_latency_ms:", "seed: 3", "macs:", "mes:"):
        assert key in text
    steps = [json.loads(line) for line in trace.read_text().splitlines()]
    assert steps[0]["action"] == "start" and steps[-1]["latency"] <= 2.5
