"""Tests of the nas search core: objectives, actions, greedy controller (toy), CLI contract."""

from __future__ import annotations

import json

import pytest

from search_spaces import get_space, list_spaces
from search_spaces.command_line import run_command

from nas.actions import TypeSwap, compound, type_actions, v1_actions, v2_actions, v2_type_actions
from supernet.importance import MetaPathImportance
from nas.greedy import greedy_search
from nas.problem import Unreachable
from nas.objectives import LatencyObjective, MESObjective, mes
from nas.search import main, parse_latency, parse_size
from tests.nas.toys import ToyTable, toy_problem


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
@pytest.mark.parametrize("name", list_spaces())
def test_actions_stay_in_the_space(name):
    space = get_space(name)
    largest = space.largest()
    actions = v2_actions(space, largest)
    assert actions and all(space.contains(a.apply(largest)) for a in actions)
    assert all(a.apply(largest) != largest for a in actions)
    assert v2_actions(space, space.smallest()) == []
    assert all(space.contains(a.apply(largest)) for a in v1_actions(space, largest))
    swaps = type_actions(space, largest)
    assert all(space.contains(a.apply(largest)) and a.apply(largest) != largest for a in swaps)
    assert [a.name for a in v2_type_actions(space, largest)] == [a.name for a in actions + swaps]


def test_v1_actions_use_importance_and_turn_meta3d_into_meta4d():
    space = get_space("efficientformer_v1")
    arch = space.largest()
    slots = {(s, slot): 1.0 for s, choices in enumerate(space.stages) for slot in range(choices.max_depth)}
    importance = MetaPathImportance.from_path_weights({key: (0.5, 0.5) for key in slots})
    importance = MetaPathImportance({**importance.slots, (2, 3): 0.1}, (1.0, 0.5, 2.0, 1.5))
    names = [a.name for a in v1_actions(space, arch, importance)]
    assert names == ["metapath s2b3", "meta3d->meta4d s3b0", "width s1"]


def test_type_actions_turn_each_stages_last_block_of_another_type_into_each_variant_and_compound_along_the_stage():
    space = get_space("hybrid")
    largest = space.largest()  # ffn in stages 0-1; ffn then attn_ffn in stages 2-3
    by_name = {a.name: a for a in type_actions(space, largest)}
    assert "ffn->meta4d s0b4" in by_name and "attn_ffn->meta4d s3b9" in by_name
    # in stages 2 and 3 the last block is attn_ffn: the swap to attn_ffn takes the last ffn instead
    for s in (2, 3):
        last_ffn = max(i for i, b in enumerate(largest.stages[s].blocks) if b.type == "ffn")
        assert f"ffn->attn_ffn s{s}b{last_ffn}" in by_name
    # a knob the block lacks is offered at every valid choice, a knob it has is kept
    kernels = [name for name in by_name if name.startswith("ffn->conv_encoder") and name.endswith("s1b4")]
    assert kernels == [f"ffn->conv_encoder[kernel={k}] s1b4" for k in (3, 5, 7, 9)]
    conv = by_name["ffn->conv_encoder[kernel=5] s1b4"].apply(largest).stages[1].blocks[4]
    assert (conv.type, conv.kernel, conv.expansion) == ("conv_encoder", 5, largest.stages[1].blocks[4].expansion)
    lgl = [name for name in by_name if name.startswith("ffn->lgl")]
    assert len(lgl) == 3 * 2 and all(name.endswith("s1b4") for name in lgl)  # heads 2/4/8 x ratio 2/4, stage 2 only
    assert not any("attn_ffn" in name.split("->")[1] for name in by_name if name.endswith(("s0b4", "s1b4")))
    assert not any(name.split("->")[1].startswith("identity") for name in by_name)
    assert type_actions(get_space("edgevit"), get_space("edgevit").largest()) == []  # one block type per stage
    # compounded, a swap continues with the stage's next block (from the end) into the same variant
    saving = lambda arch: sum(b.type == "conv_encoder" for st in arch.stages for b in st.blocks)  # noqa: E731
    first = by_name["attn_ffn->conv_encoder[kernel=3] s3b9"]
    assert first.group == "conv_encoder[kernel=3] s3" and first.swap == TypeSwap(3, "conv_encoder[kernel=3]")
    compounded = compound(space, largest, first, v2_type_actions, saving, 3)
    assert compounded.swap == first.swap  # what the swaps turn blocks into, read by the hybrid study
    assert all(action.swap is None for action in v2_actions(space, largest))
    stepped = compounded.apply(largest)
    assert [(b.type, b.kernel) for b in stepped.stages[3].blocks][-4:] == [("attn_ffn", None)] + [("conv_encoder", 3)] * 3


# -- greedy on a toy with analytic latency, params and accuracy -----------------------------------
class ToyEvaluator:
    """Depth is precious (10 per block), width cheap (0.001 per channel), expansion almost free."""

    name = "toy"
    evaluations = 0

    def score(self, arch):
        expansions = sum(b.expansion or 0 for s in arch.stages for b in s.blocks if not b.is_identity)
        return 10 * sum(arch.depths) + sum(arch.widths) / 1000 + 1e-4 * expansions


SPACE = get_space("efficientformer_v2")


def test_latency_objective_cuts_only_widths_and_meets_the_target():
    result = greedy_search(toy_problem(ToyEvaluator(), LatencyObjective(), 0.8))
    assert result.latency <= 0.8
    assert [s.action for s in result.steps[1:]] and all(s.action.startswith("width") for s in result.steps[1:])
    assert result.arch.depths == SPACE.largest().depths
    assert result.steps[1].action == "width s0"  # ties: the first in the fixed order
    assert ToyTable().predict(result.path[-2]) > 0.8  # stops at the first feasible step


@pytest.mark.parametrize("objective", [LatencyObjective(), MESObjective()], ids=["latency", "mes"])
def test_last_step_takes_the_most_accurate_candidate_that_meets_the_target(objective):
    table, evaluator, target = ToyTable(), ToyEvaluator(), 0.8
    result = greedy_search(toy_problem(evaluator, objective, target, table=table))
    before = result.path[-2]
    feasible = [a.apply(before) for a in v2_actions(SPACE, before) if table.predict(a.apply(before)) <= target]
    assert len(feasible) > 1  # a real choice at the finish
    assert result.score == max(evaluator.score(arch) for arch in feasible)
    assert result.score > min(evaluator.score(arch) for arch in feasible)


class StageTable:
    """Only the widths of stages 0 and 3 cost latency: 1 µs and 4 µs per channel."""

    def predict(self, arch):
        return 0.001 * arch.widths[0] + 0.004 * arch.widths[3]


class StageEvaluator:
    """A stage-3 channel is worth twice a stage-0 channel, but costs four times the latency."""

    def score(self, arch):
        return 0.001 * arch.widths[0] + 0.002 * arch.widths[3]


def test_last_step_does_not_overshoot_when_a_gentler_cut_meets_the_target():
    # ratios: width s3 = 0.016/0.032 = 0.5, width s0 = 0.008/0.008 = 1.0, so the path cuts s3; the
    # target sits 4 µs below the point after three s3 cuts, where both cuts are feasible.
    start = StageTable().predict(SPACE.largest())
    target = start - 3 * 0.032 - 0.004
    result = greedy_search(toy_problem(StageEvaluator(), LatencyObjective(), target, table=StageTable()))
    assert [s.action for s in result.steps[1:]] == ["width s3"] * 3 + ["width s0"]
    assert result.latency == pytest.approx(target - 0.004)


def test_mes_objective_takes_the_nearly_free_expansion_cut_first():
    result = greedy_search(toy_problem(ToyEvaluator(), MESObjective(), 0.8))
    assert result.steps[1].action.startswith("expansion")
    assert result.latency <= 0.8
    assert all(s.delta_params <= 0 for s in result.steps[1:])


def test_greedy_with_block_type_swaps_buys_latency_by_a_cheaper_type_where_v2_steps_must_slim():
    class TypedTable(ToyTable):
        """A meta4d block costs a fifth of any other block."""

        def predict(self, arch):
            blocks = [b for st in arch.stages for b in st.blocks if not b.is_identity]
            return super().predict(arch) - 0.008 * sum(b.type == "meta4d" for b in blocks)

    hybrid = get_space("hybrid")
    target = TypedTable().predict(hybrid.largest()) - 0.05  # five meta4d swaps, or 50 channels less
    swapped = greedy_search(toy_problem(ToyEvaluator(), LatencyObjective(), target, table=TypedTable(), space=hybrid),
                            actions=v2_type_actions)
    dropped = greedy_search(toy_problem(ToyEvaluator(), LatencyObjective(), target, table=TypedTable(), space=hybrid))
    types = lambda arch: [b.type for st in arch.stages for b in st.blocks if not b.is_identity]  # noqa: E731
    assert "meta4d" in types(swapped.arch) and "meta4d" not in types(dropped.arch)
    assert swapped.arch.depths == hybrid.largest().depths and swapped.arch.widths == hybrid.largest().widths
    assert sum(dropped.arch.widths) < sum(hybrid.largest().widths)
    assert swapped.score > dropped.score  # a swap costs the toy evaluator nothing, a channel 0.001


def test_size_budget_and_determinism():
    run = lambda: greedy_search(toy_problem(ToyEvaluator(), LatencyObjective(), 1.0, max_params=2_000_000))
    first, second = run(), run()
    assert first.params <= 2_000_000 and first.latency <= 1.0
    assert first.steps == second.steps and first.arch == second.arch


def test_unreachable_names_the_smallest_latency():
    with pytest.raises(Unreachable) as info:
        greedy_search(toy_problem(ToyEvaluator(), LatencyObjective(), 0.1))
    assert info.value.smallest_latency == pytest.approx(ToyTable().predict(SPACE.smallest()))


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


@pytest.mark.parametrize("latency", ["1.5", "-1ms", "fastms", "1.5 parsecs", "0ms"])
@pytest.mark.parametrize("joined", [True, False])
def test_bad_latency_strings(latency, joined, capsys):
    argv = [f"--target-latency={latency}"] if joined else ["--target-latency", latency]
    code, _, err = cli([*argv, "--device", "iphone12"], capsys)
    assert code == 2 and "1.5ms, 1500us, 0.0015s" in err and len(err.strip().splitlines()) == 1
    assert "--target-latency" in err


@pytest.mark.parametrize("extra, needle", [
    (["--device", "nosuchdevice"], "nosuchdevice"),
    (["--device", "iphone12", "--space", "nospace"], "nospace"),
    (["--device", "iphone12", "--objective", "energy"], "energy"),
    (["--lut", "/nonexistent/table.json"], "table"),
    (["--device", "iphone12", "--max-params", "1000"], "smallest"),
    (["--device", "iphone12", "--max-params", "lots"], "6M"),
    (["--device", "iphone12", "--max-params", "-6M"], "6M"),
    (["--device", "iphone12", "--strategy", "annealing"], "greedy, random, evolution"),
    (["--device", "iphone12", "--evaluator", "oracle"], "supernet, proxy"),
    (["--device", "iphone12", "--evaluator", "supernet"], "--supernet"),
    (["--device", "iphone12", "--budget", "10"], "--budget"),
    (["--device", "iphone12", "--start", "/nonexistent.yaml"], "--start"),
    (["--device", "iphone12", "--supernet", "/nonexistent.pt", "--data", "digits"], "--supernet"),
    (["--device", "iphone12", "--recalibrate", "4"], "--recalibrate"),
    (["--device", "iphone12", "--untrained-norms", "sometimes"], "--untrained-norms"),
    (["--device", "iphone12", "--untrained-norms", "estimate"], "--untrained-norms"),
    (["--device", "iphone12", "--supernet", "/nonexistent.pt", "--data", "digits", "--recalibrate", "2",
      "--untrained-norms", "estimate"], "--untrained-norms"),
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


# -- the SynFlow proxy -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synflow():
    from nas.synflow import SynFlowEvaluator

    return SynFlowEvaluator.from_space(get_space("edgevit"), seed=0)


def test_synflow_proxy_ranks_the_references_by_size_and_is_cached(synflow):
    space = synflow.space
    scores = {name: synflow.score(space.reference(name)) for name in ("xxs", "xs", "s")}
    assert synflow.score(space.smallest()) < scores["xxs"] < scores["xs"] < scores["s"] < synflow.score(space.largest())
    assert synflow.score(space.largest()) == pytest.approx(100.0)
    before = synflow.evaluations
    synflow.score(space.reference("xs").with_meta(note="meta does not matter"))
    assert synflow.evaluations == before


def test_synflow_score_is_additive_over_layers(synflow):
    space = synflow.space
    arch = space.reference("xs")
    fitted = arch.__class__(arch.space, synflow.resolution, synflow.num_classes, arch.stages)
    total = sum(synflow.spec_saliency(spec) for spec in space.layer_specs(fitted))
    assert synflow.score(arch) == pytest.approx(100 * total / synflow._full)


def test_synflow_depends_on_the_seed_and_not_on_the_global_generator():
    import torch

    from nas.synflow import SynFlowEvaluator

    space = get_space("edgevit")
    torch.manual_seed(123)
    marker = torch.rand(1)
    torch.manual_seed(123)
    first = SynFlowEvaluator.from_space(space, seed=0).score(space.reference("xs"))
    assert torch.rand(1) == marker  # the global generator is left as it was
    again = SynFlowEvaluator.from_space(space, seed=0).score(space.reference("xs"))
    other = SynFlowEvaluator.from_space(space, seed=1).score(space.reference("xs"))
    assert first == again and first != other


def test_synflow_on_a_supernet_leaves_its_weights_alone():
    import torch

    from nas.synflow import SynFlowEvaluator
    from supernet import Supernet

    torch.manual_seed(0)
    net = Supernet.from_space("edgevit", num_classes=10, resolution=64)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    proxy = SynFlowEvaluator.from_supernet(net)
    assert proxy.score(net.space.reference("xs")) > proxy.score(net.space.smallest())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


# -- start, front, strategies, supernets through the command line --------------------------------
def test_start_and_front(tmp_path, capsys):
    start = tmp_path / "start.yaml"
    start.write_text(get_space("efficientformer_v2").reference("s2").to_yaml())
    out, front = tmp_path / "found.yaml", tmp_path / "front.yaml"
    code, _, err = cli(["--target-latency", "1.2ms", "--device", "iphone12", "--start", str(start),
                        "--out", str(out), "--front", str(front)], capsys)
    assert code == 0, err
    import yaml

    from search_spaces import Architecture

    document = yaml.safe_load(front.read_text())
    points = document["points"]
    assert document["schema"] == "latnas/front@1" and document["strategy"] == "greedy"
    assert Architecture.from_dict(points[0]["architecture"]) == get_space("efficientformer_v2").reference("s2")
    latencies = [p["latency_ms"] for p in points]
    assert latencies == sorted(latencies, reverse=True) and latencies[-1] <= 1.2 < latencies[-2]
    found = Architecture.from_yaml(out)
    assert found == Architecture.from_dict(points[-1]["architecture"]) and found.meta["start"] == "start.yaml"


def test_start_of_another_space_is_refused(tmp_path, capsys):
    start = tmp_path / "start.yaml"
    start.write_text(get_space("edgevit").reference("xs").to_yaml())
    code, _, err = cli(["--target-latency", "1.2ms", "--device", "iphone12", "--start", str(start)], capsys)
    assert code == 2 and "edgevit" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("strategy", ["random", "evolution"])
def test_sampling_strategies_from_the_command_line(strategy, tmp_path, capsys):
    from search_spaces import Architecture

    out, trace, front = tmp_path / "a.yaml", tmp_path / "t.jsonl", tmp_path / "f.yaml"
    argv = ["--target-latency", "2.0ms", "--device", "iphone12", "--strategy", strategy, "--budget", "12",
            "--seed", "1", "--out", str(out), "--trace", str(trace), "--front", str(front)]
    code, _, err = cli(argv, capsys)
    assert code == 0, err
    found = Architecture.from_yaml(out)
    assert found.meta["strategy"] == strategy and found.meta["evaluations"] == 12
    assert found.meta["predicted_latency_ms"] <= 2.0
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    assert len(records) == 12 and all(r["latency"] <= 2.0 for r in records)
    assert max(r["score"] for r in records) == pytest.approx(found.meta["score"], abs=1e-5)


def test_state_resumes_a_sampling_search(tmp_path, capsys):
    state = tmp_path / "state.json"
    base = ["--target-latency", "2.0ms", "--device", "iphone12", "--strategy", "random", "--seed", "2",
            "--state", str(state)]
    assert cli([*base, "--budget", "5", "--out", str(tmp_path / "a.yaml")], capsys)[0] == 0
    assert cli([*base, "--budget", "8", "--out", str(tmp_path / "b.yaml")], capsys)[0] == 0
    fresh = ["--target-latency", "2.0ms", "--device", "iphone12", "--strategy", "random", "--seed", "2",
             "--budget", "8", "--out", str(tmp_path / "c.yaml")]
    assert cli(fresh, capsys)[0] == 0
    assert (tmp_path / "b.yaml").read_text() == (tmp_path / "c.yaml").read_text()
    code, _, err = cli([*base[:-4], "--seed", "3", "--state", str(state), "--budget", "8"], capsys)
    assert code == 2 and "--state" in err and len(err.strip().splitlines()) == 1


def test_supernet_of_another_space_is_refused(tmp_path, capsys):
    from supernet import Supernet

    checkpoint = tmp_path / "edgevit.pt"
    Supernet.from_space("edgevit", num_classes=10, resolution=64).save(checkpoint)
    code, _, err = cli(["--target-latency", "1.5ms", "--device", "iphone12", "--supernet", str(checkpoint),
                        "--data", "synthetic:40"], capsys)
    assert code == 2 and "edgevit" in err and len(err.strip().splitlines()) == 1


def test_supernet_evaluator_search_end_to_end(tmp_path, capsys):
    """A (random) EdgeViT supernet scores candidates on held-out synthetic images; the search meets the
    target, records accuracies in %, and the proxy can run on the same checkpoint."""
    import torch

    from search_spaces import Architecture
    from supernet import Supernet

    torch.manual_seed(0)
    checkpoint = tmp_path / "edgevit.pt"
    Supernet.from_space("edgevit", num_classes=10, resolution=32).save(checkpoint)  # synthetic data has 10 classes
    space = get_space("edgevit")
    from lut import get_device

    table = get_device("iphone12").default_table(space)
    target = 0.97 * table.predict(space.largest())
    out, trace = tmp_path / "a.yaml", tmp_path / "t.jsonl"
    base = ["--target-latency", f"{target}ms", "--device", "iphone12", "--space", "edgevit",
            "--supernet", str(checkpoint)]
    code, _, err = cli([*base, "--data", "synthetic:16", "--eval-batches", "1", "--recalibrate", "1",
                        "--out", str(out), "--trace", str(trace)], capsys)
    assert code == 0, err
    found = Architecture.from_yaml(out)
    assert found.meta["evaluator"] == "supernet" and found.meta["predicted_latency_ms"] <= target
    assert found.meta["evaluator_settings"]["recalibrate_batches"] == 1
    scores = [json.loads(line)["score"] for line in trace.read_text().splitlines()]
    assert all(0.0 <= s <= 100.0 for s in scores)
    code, _, err = cli([*base, "--evaluator", "proxy", "--out", str(tmp_path / "p.yaml")], capsys)
    assert code == 0, err
    assert Architecture.from_yaml(tmp_path / "p.yaml").meta["evaluator_settings"]["weights"] == "supernet edgevit.pt"


def test_stage_prefix_cache_gives_the_same_accuracies_as_full_forwards():
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from nas.actions import v2_actions
    from nas.evaluators import SupernetEvaluator
    from supernet import Supernet
    from supernet.data import load_data

    torch.manual_seed(0)
    net = Supernet.from_space("edgevit", num_classes=4, resolution=32)
    for module in net.modules():  # make the BN statistics matter (and count as trained)
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(1)
    data = load_data("synthetic:64", 32)
    plain = SupernetEvaluator(net, DataLoader(data.val, batch_size=8), prefix_cache=0)
    cached = SupernetEvaluator(net, DataLoader(data.val, batch_size=8), prefix_cache=8)
    space = net.space
    archs = [a.apply(space.largest()) for a in v2_actions(space, space.largest())]
    archs += [space.sample(np.random.default_rng(seed)) for seed in range(4)]
    assert [cached.score(a) for a in archs] == [plain.score(a) for a in archs]
    assert len(cached._prefixes) <= 8
    # a byte budget bounds the memory whatever the count allows, and changes no score
    stem_bytes = 64 * 3 * 16 * 16 * 4  # 64 images of a narrow stem's output at 1/2 resolution, at least
    small = SupernetEvaluator(net, DataLoader(data.val, batch_size=8), prefix_cache=256,
                              prefix_cache_bytes=3 * stem_bytes)
    assert [small.score(a) for a in archs] == [plain.score(a) for a in archs]
    assert 0 < small.prefix_cache_bytes_used <= 3 * stem_bytes and len(small._prefixes) < len(cached._prefixes)
    none = SupernetEvaluator(net, DataLoader(data.val, batch_size=8), prefix_cache_bytes=1)
    assert [none.score(a) for a in archs[:3]] == [plain.score(a) for a in archs[:3]] and not none._prefixes


def test_recalibrated_scores_are_the_same_with_the_prefix_cache_and_reuse_one_set_of_calibration_images():
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from nas.actions import v2_actions
    from nas.evaluators import SupernetEvaluator
    from supernet import Supernet
    from supernet.data import load_data

    torch.manual_seed(0)
    net = Supernet.from_space("edgevit", num_classes=4, resolution=32)
    data = load_data("synthetic:64", 32)

    class CountedLoader:
        """The training split, reshuffled and re-augmented on every pass; counts the passes."""

        def __init__(self) -> None:
            self.passes = 0
            self.loader = DataLoader(data.train, batch_size=8, shuffle=True)

        def __iter__(self):
            self.passes += 1
            return iter(self.loader)

    calibration = CountedLoader()
    plain = SupernetEvaluator(net, DataLoader(data.val, batch_size=8), recalibrate=2, calibration_loader=calibration,
                              prefix_cache=0)
    cached = SupernetEvaluator(net, DataLoader(data.val, batch_size=8), recalibrate=2, calibration_loader=calibration,
                               prefix_cache=8)
    cached._calibration = plain.calibration(2)  # both recalibrate on the same images
    space = net.space
    archs = [a.apply(space.largest()) for a in v2_actions(space, space.largest())][:10]
    archs += [space.sample(np.random.default_rng(seed)) for seed in range(3)]
    scores = [plain.score(a) for a in archs]
    assert [cached.score(a) for a in archs] == scores and len(set(scores)) > 1
    assert calibration.passes == 1  # read once, reused by every candidate
    assert any(key[0] == "recalibrated" for key in cached._prefixes) and len(cached._prefixes) <= 8
    # the same candidate scored again from scratch gets the same statistics, hence the same score
    plain._cache.clear()
    assert plain.score(archs[0]) == cached.score(archs[0])


def test_calibration_images_do_not_depend_on_the_callers_rng_so_another_process_scores_the_same():
    """A resumed search (another process) re-checks recorded scores; with a shuffled, augmented
    training loader the calibration images must be the same whatever torch's RNG did before."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from nas.evaluators import SupernetEvaluator
    from supernet import Supernet
    from supernet.data import load_data

    torch.manual_seed(0)
    net = Supernet.from_space("efficientformer_v2", num_classes=10, resolution=32)
    data = load_data("digits", 32)  # train is augmented (random shifts) from torch's RNG
    archs = [net.space.sample(np.random.default_rng(seed)) for seed in range(3)]
    scores, images = [], []
    for seed in (1, 2):
        torch.manual_seed(seed)  # what else the process drew before differs
        evaluator = SupernetEvaluator(net, DataLoader(data.val, batch_size=64), max_batches=2, recalibrate=2,
                                      calibration_loader=DataLoader(data.train, batch_size=16, shuffle=True))
        scores.append([evaluator.score(arch) for arch in archs])
        images.append(torch.cat(evaluator.calibration(2)))
    assert torch.equal(images[0], images[1]) and scores[0] == scores[1]
    first_batch = images[0][:16]
    assert not torch.equal(first_batch, torch.cat([x for x, _ in list(DataLoader(data.train, batch_size=16))[:1]]))
