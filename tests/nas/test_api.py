"""The search API (`nas.api`): requests validated before any work, one `Strategy` protocol for
greedy, random and evolution, greedy resumable from a state file, MES settings reaching every
reported MES, and the EfficientFormer V1 search (Gumbel importance driving the V1 actions)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from search_spaces import Architecture, get_space, list_spaces

from nas.api import RequestError, SearchRequest, run_search, validate_request
from nas.evaluators import EvaluatorSpec
from nas.greedy import greedy_search
from nas.objectives import LatencyObjective, MESObjective, MobileEfficiencyScore
from nas.problem import SearchProblem, SearchResult
from nas.search import main
from nas.state import RESCORED_RECORDS
from nas.strategies import STRATEGIES, RandomSearch, RegularizedEvolution, Strategy
from tests.cli_support import invoke
from tests.gumbel_support import gumbel_checkpoint
from tests.nas.toys import ToyTable, toy_params, toy_problem

SPACE = get_space("efficientformer_v2")


class CountingEvaluator:
    """Depth is precious, width cheap; counts how often each architecture is asked for."""

    name = "toy"

    def __init__(self) -> None:
        self.evaluations = 0
        self.asked: list = []

    def score(self, arch) -> float:
        self.asked.append(arch)
        self.evaluations += 1
        expansions = sum(b.expansion or 0 for s in arch.stages for b in s.blocks if not b.is_identity)
        return 10 * sum(arch.depths) + sum(arch.widths) / 1000 + 1e-4 * expansions

    def settings(self) -> dict:
        return {"name": self.name}


class ExplodingSpec(EvaluatorSpec):
    """An evaluator spec that fails the test if anything tries to build it."""

    name = "exploding"

    def build(self, space, seed):
        raise AssertionError("the evaluator was built although the request is invalid")


def iphone12_table():
    from lut import get_device

    return get_device("iphone12").default_table(SPACE)


# -- validation before work -----------------------------------------------------------------------
@pytest.mark.parametrize("changes, field", [
    ({"strategy": "greedy", "budget": 10}, "budget"),
    ({"strategy": "random", "start": get_space("efficientformer_v2").reference("s0")}, "start"),
    ({"strategy": "random", "actions": "v1"}, "actions"),
    ({"actions": "v3"}, "actions"),
    ({"space": "nospace"}, "space"),
    ({"objective": "energy"}, "objective"),
    ({"strategy": "annealing"}, "strategy"),
    ({"target_latency": float("inf")}, "target_latency"),
    ({"target_latency": -1.0}, "target_latency"),
    ({"max_params": 10}, "max_params"),
    ({"seed": -1}, "seed"),
    ({"strategy": "random", "budget": 0}, "budget"),
    ({"strategy": RandomSearch(budget=5), "budget": 5}, "strategy"),
])
def test_a_bad_request_is_refused_naming_the_field_before_the_evaluator_is_built(changes, field):
    request = SearchRequest(**{"space": "efficientformer_v2", "predictor": iphone12_table(), "target_latency": 1.5,
                               "evaluator": ExplodingSpec(), **changes})
    with pytest.raises(RequestError) as caught:
        run_search(request)
    assert caught.value.field == field and "\n" not in str(caught.value)


def test_v1_actions_need_a_space_with_several_block_types_and_a_supernet():
    from lut import get_device

    edgevit = SearchRequest("edgevit", get_device("iphone12").default_table("edgevit"), 3.0, actions="v1")
    with pytest.raises(RequestError, match="one block type") as caught:
        validate_request(edgevit)
    assert caught.value.field == "actions"
    with pytest.raises(RequestError, match="Gumbel-trained supernet"):
        validate_request(SearchRequest("efficientformer_v2", iphone12_table(), 1.5, actions="v1"))
    with pytest.raises(RequestError, match="v2-types swaps block types, and every stage of edgevit") as caught:
        validate_request(dataclasses.replace(edgevit, actions="v2-types"))
    assert caught.value.field == "actions"
    validate_request(SearchRequest("efficientformer_v2", iphone12_table(), 1.5, actions="v2-types"))


def test_cli_refuses_a_greedy_budget_before_touching_the_trace(tmp_path, capsys):
    trace = tmp_path / "steps.jsonl"
    trace.write_text("an earlier search's trace\n")
    code, _, err = invoke(main, "nas.search", ["--target-latency", "1.5ms", "--device", "iphone12", "--budget", "10",
                                               "--trace", str(trace)], capsys)
    assert code == 2 and err.count("\n") == 1 and "--budget" in err
    assert trace.read_text() == "an earlier search's trace\n"


@pytest.mark.parametrize("argv, needle", [
    (["--mes-params-unit", "0"], "--mes-params-unit"),
    (["--mes-latency-unit", "fast"], "--mes-latency-unit"),
    (["--mes-alpha-params", "-1"], "--mes-alpha-params"),
    (["--mes-alpha-latency", "x"], "--mes-alpha-latency"),
    (["--verify-rounds", "2"], "--verify"),
    (["--data", "digits"], "--data"),
    (["--actions", "v1"], "--actions"),
    (["--space", "edgevit", "--actions", "v1"], "--actions"),
])
def test_new_options_refuse_bad_values_with_one_line(argv, needle, capsys):
    code, _, err = invoke(main, "nas.search", ["--target-latency", "1.5ms", "--device", "iphone12", *argv], capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


# -- one protocol ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_answers_a_problem_through_the_same_protocol(name):
    strategy: Strategy = STRATEGIES[name]() if name == "greedy" else STRATEGIES[name](budget=25, seed=1)
    problem = toy_problem(CountingEvaluator(), LatencyObjective(), 0.7)
    steps = []
    result = strategy.search(problem, on_step=steps.append)
    assert isinstance(result, SearchResult) and strategy.name == name
    assert result.latency <= 0.7 and ToyTable().predict(result.arch) == pytest.approx(result.latency)
    assert result.params == toy_params(result.arch) and steps == list(result.steps)
    assert strategy.settings()["name"] == name


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("space_name", list_spaces())
def test_every_strategy_searches_every_space_on_the_iphone12_table(space_name, strategy):
    from lut import get_device

    space = get_space(space_name)
    table = get_device("iphone12").default_table(space)
    target = 0.9 * table.predict(space.largest())
    outcome = run_search(SearchRequest(space_name, table, target, evaluator=CountingEvaluator(), strategy=strategy,
                                       budget=None if strategy == "greedy" else 12, seed=3))
    assert outcome.reachable and outcome.result.latency <= target
    assert space.contains(outcome.arch) and table.predict(outcome.arch) == pytest.approx(outcome.result.latency)


def test_run_search_takes_a_built_evaluator_and_a_configured_strategy():
    evaluator = CountingEvaluator()
    strategy = RegularizedEvolution(budget=12, seed=2, population_size=6, sample_size=3)
    outcome = run_search(SearchRequest("efficientformer_v2", iphone12_table(), 2.0, evaluator=evaluator,
                                       strategy=strategy))
    assert outcome.reachable and outcome.result.evaluations == 12 == evaluator.evaluations
    assert outcome.meta["strategy"] == "evolution" and outcome.arch.meta["budget"] == 12
    assert outcome.meta["seed"] == 2


# -- greedy resume ----------------------------------------------------------------------------------
class Interrupt(Exception):
    pass


def test_greedy_resumed_from_its_state_equals_an_uninterrupted_run(tmp_path):
    problem = lambda evaluator: toy_problem(evaluator, MESObjective(), 0.9)  # noqa: E731
    straight = greedy_search(problem(CountingEvaluator()))
    assert len(straight.steps) > 4
    state = tmp_path / "greedy.json"
    seen = []

    def stop_after_three(step):
        seen.append(step)
        if len(seen) == 4:  # the start and three steps
            raise Interrupt

    with pytest.raises(Interrupt):
        greedy_search(problem(CountingEvaluator()), on_step=stop_after_three, state_path=state)
    saved = json.loads(state.read_text())
    assert saved["strategy"] == "greedy" and saved["steps"] >= 2 and saved["history"]
    evaluator, resumed_steps = CountingEvaluator(), []
    resumed = greedy_search(problem(evaluator), on_step=resumed_steps.append, state_path=state)
    assert resumed == straight  # same path, steps, scores and evaluation count
    recorded = {Architecture.from_dict(item["arch"]) for item in saved["history"]}
    rescored = [arch for arch in evaluator.asked if arch in recorded]  # the state is checked, not believed
    assert 1 <= len(rescored) <= RESCORED_RECORDS
    assert len(set(evaluator.asked)) == evaluator.evaluations == straight.evaluations - len(recorded) + len(rescored)
    assert resumed_steps == list(straight.steps[saved["steps"] + 1:])  # the trace gets only the new steps
    assert greedy_search(problem(CountingEvaluator()), state_path=state) == straight  # a finished state: no work


def test_a_greedy_state_of_another_search_is_refused(tmp_path):
    state = tmp_path / "greedy.json"
    greedy_search(toy_problem(CountingEvaluator(), MESObjective(), 0.8), state_path=state)
    with pytest.raises(ValueError, match="target_latency_ms"):
        greedy_search(toy_problem(CountingEvaluator(), MESObjective(), 0.75), state_path=state)
    with pytest.raises(ValueError, match="start"):
        greedy_search(toy_problem(CountingEvaluator(), MESObjective(), 0.8), start=SPACE.reference("s2"),
                      state_path=state)


def test_greedy_resumes_from_the_command_line(tmp_path, capsys):
    base = ["--target-latency", "1.2ms", "--device", "iphone12", "--state", str(tmp_path / "s.json")]
    assert invoke(main, "nas.search", [*base, "--out", str(tmp_path / "a.yaml")], capsys)[0] == 0
    assert invoke(main, "nas.search", [*base, "--out", str(tmp_path / "b.yaml")], capsys)[0] == 0
    fresh = ["--target-latency", "1.2ms", "--device", "iphone12", "--out", str(tmp_path / "c.yaml")]
    assert invoke(main, "nas.search", fresh, capsys)[0] == 0
    assert (tmp_path / "a.yaml").read_text() == (tmp_path / "b.yaml").read_text() == (tmp_path / "c.yaml").read_text()


# -- MES settings --------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["greedy", "random", "evolution"])
def test_the_request_mes_reaches_every_reported_mes(strategy):
    custom = MobileEfficiencyScore(u_size=1e6, u_lat=0.5, alpha_size=0.25, alpha_lat=2.0)
    request = SearchRequest("efficientformer_v2", iphone12_table(), 1.6, evaluator=CountingEvaluator(), mes=custom,
                            strategy=strategy, budget=None if strategy == "greedy" else 15)
    outcome = run_search(request)
    result = outcome.result
    for step in result.steps:
        assert step.mes == pytest.approx(custom(step.params, step.latency))
    assert result.mes == pytest.approx(custom(result.params, result.latency))
    assert outcome.arch.meta["mes"] == pytest.approx(custom(result.params, result.latency), abs=1e-4)
    assert outcome.meta["mes_definition"] == custom.settings()
    assert outcome.meta["objective"] == ({"name": "mes", **custom.settings()})


def test_evolution_breaks_score_ties_by_the_request_mes():
    """Every architecture scores the same: the best is the one of highest MES, under the given definition."""
    class Flat(CountingEvaluator):
        def score(self, arch):
            super().score(arch)
            return 1.0

    size_only = MobileEfficiencyScore(alpha_size=1.0, alpha_lat=0.0)  # MES ranks by size alone
    problem = SearchProblem(SPACE, ToyTable(), Flat(), LatencyObjective(), 0.7, mes=size_only, params_of=toy_params)
    result = RegularizedEvolution(budget=20, seed=0, population_size=5, sample_size=2).search(problem)
    assert result.params == min(step.params for step in result.steps)


def test_mes_options_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "a.yaml"
    code, _, err = invoke(main, "nas.search", ["--target-latency", "1.5ms", "--device", "iphone12",
                                               "--mes-params-unit", "1M", "--mes-latency-unit", "500us",
                                               "--mes-alpha-params", "0.25", "--mes-alpha-latency", "2",
                                               "--out", str(out)], capsys)
    assert code == 0, err
    from search_spaces import Architecture

    meta = Architecture.from_yaml(out).meta
    assert meta["mes_definition"] == {"u_size": 1_000_000, "u_lat_ms": 0.5, "alpha_size": 0.25, "alpha_lat": 2.0}
    custom = MobileEfficiencyScore(1e6, 0.5, 0.25, 2.0)
    assert meta["mes"] == pytest.approx(custom(meta["params"], meta["predicted_latency_ms"]), abs=1e-4)


# -- the V1 search ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def v1_checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("v1")
    return (gumbel_checkpoint(folder / "stage2_unimportant.pt", (2, 8)),
            gumbel_checkpoint(folder / "stage3_unimportant.pt", (3, 2)))


class FlatSupernetEvaluator(CountingEvaluator):
    """Scores every architecture alike (so every V1 action loses nothing and the first one offered
    wins), with a trained supernet behind it whose importance the V1 actions must read."""

    def __init__(self, net) -> None:
        super().__init__()
        self.net = net

    def score(self, arch) -> float:
        super().score(arch)
        return 50.0


@pytest.mark.slow
def test_the_v1_search_follows_the_learned_importance(v1_checkpoints):
    """Two checkpoints with opposite importance give different first actions: the least important
    MetaPath of each is dropped first (V1 is the default for trained logits)."""
    from lut import get_device
    from supernet import Supernet

    table = get_device("iphone12").default_table("edgenext")
    target = 0.98 * table.predict(get_space("edgenext").largest())
    first = []
    for checkpoint in v1_checkpoints:
        outcome = run_search(SearchRequest("edgenext", table, target, evaluator=FlatSupernetEvaluator(Supernet.load(checkpoint))))
        assert outcome.meta["actions"] == "v1"
        first.append(outcome.result.steps[1].action)
    assert first == ["metapath s2b8", "metapath s3b2"]


@pytest.mark.slow
def test_a_v1_search_from_the_command_line_traces_v1_actions(v1_checkpoints, tmp_path, capsys):
    from lut import get_device
    from search_spaces import Architecture

    table = get_device("iphone12").default_table("edgenext")
    target = 0.97 * table.predict(get_space("edgenext").largest())
    out, trace = tmp_path / "v1.yaml", tmp_path / "v1.jsonl"
    code, _, err = invoke(main, "nas.search", ["--target-latency", f"{target}ms", "--device", "iphone12",
                                               "--space", "edgenext", "--objective", "latency",
                                               "--supernet", str(v1_checkpoints[1]), "--data", "synthetic:20",
                                               "--eval-batches", "1", "--out", str(out), "--trace", str(trace)], capsys)
    assert code == 0, err
    assert Architecture.from_yaml(out).meta["actions"] == "v1"
    actions = [json.loads(line)["action"] for line in trace.read_text().splitlines()][1:]
    assert actions and all(a.startswith(("metapath ", "sdta->conv_encoder ", "width ")) for a in actions)


@pytest.mark.slow
def test_v1_refuses_a_checkpoint_without_trained_logits(tmp_path, capsys):
    from supernet import Supernet

    checkpoint = tmp_path / "sandwich.pt"
    Supernet.from_space("edgenext", num_classes=10, resolution=32).save(checkpoint)
    code, _, err = invoke(main, "nas.search", ["--target-latency", "3ms", "--device", "iphone12", "--space", "edgenext",
                                               "--supernet", str(checkpoint), "--data", "synthetic:20",
                                               "--actions", "v1"], capsys)
    assert code == 2 and "--actions" in err and "untrained" in err and len(err.strip().splitlines()) == 1


def _largest_widths_trained():
    """`tests.norm_support.largest_widths_trained` (EdgeViT: its local aggregation and head are
    BatchNormed) and synthetic val / train loaders."""
    from torch.utils.data import DataLoader

    from supernet.data import load_data
    from tests.norm_support import largest_widths_trained

    bundle = load_data("synthetic:40", 32)
    return largest_widths_trained(), DataLoader(bundle.val, batch_size=16), DataLoader(bundle.train, batch_size=16)


@pytest.mark.slow
def test_width_cut_candidates_are_recalibrated_when_asked_to():
    """`untrained_norms="recalibrate"`: a width-cut candidate is recalibrated as a whole, not scored
    on the initial mean 0 / variance 1; the largest network is scored on its shared statistics."""
    from nas.actions import v2_actions
    from nas.evaluators import AUTO_RECALIBRATION_BATCHES, SupernetEvaluator
    from supernet.training import accuracy, recalibrate_bn
    from supernet.untrained_norms import untrained_batch_norms

    net, val, train = _largest_widths_trained()
    evaluator = SupernetEvaluator(net, val, calibration_loader=train, untrained_norms="recalibrate")
    assert evaluator.norm_estimate is None and evaluator.settings()["untrained_norms"] == "recalibrate"
    largest = net.fit(net.space.largest())
    narrower = next(a.apply(largest) for a in v2_actions(net.space, largest) if a.name.startswith("width"))
    assert not untrained_batch_norms(net, largest) and untrained_batch_norms(net, narrower)
    evaluator.score(largest)
    assert evaluator.auto_recalibrated == 0
    score = evaluator.score(narrower)
    assert evaluator.auto_recalibrated == 1
    expected = 100.0 * accuracy(recalibrate_bn(net, narrower, train, AUTO_RECALIBRATION_BATCHES), evaluator.batches)
    assert score == pytest.approx(expected)


@pytest.mark.slow
def test_untrained_widths_are_estimated_once_and_every_candidate_scored_on_shared_statistics():
    """The default (`estimate`): on construction every untrained width gets statistics, the trained
    ones keep theirs bit for bit, and then no candidate is recalibrated; each is scored as
    `evaluate` scores it on the supernet's (now complete) shared statistics, in any order."""
    from nas.actions import v2_actions
    from nas.evaluators import AUTO_RECALIBRATION_BATCHES, SupernetEvaluator
    from supernet.training import evaluate
    from supernet.untrained_norms import untrained_batch_norms, untrained_norm_widths

    net, val, train = _largest_widths_trained()
    before = {name: tensor.clone() for name, tensor in net.state_dict().items()}
    untrained = untrained_norm_widths(net)
    largest = net.fit(net.space.largest())
    narrower = [a.apply(largest) for a in v2_actions(net.space, largest) if a.name.startswith("width")][:3]
    assert all(untrained_batch_norms(net, arch) for arch in narrower)

    evaluator = SupernetEvaluator(net, val, calibration_loader=train)
    estimate = evaluator.norm_estimate
    assert set(estimate.estimated) == set(untrained) and not estimate.unreachable and not untrained_norm_widths(net)
    assert estimate.images == min(AUTO_RECALIBRATION_BATCHES * 16, len(train.dataset))
    after = net.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {f"{norm}.norms.{width}.{buffer}" for norm, width in untrained
                       for buffer in ("running_mean", "running_var", "num_batches_tracked")}
    scores = [evaluator.score(arch) for arch in [*narrower, largest]]
    assert evaluator.auto_recalibrated == 0
    assert scores == [100.0 * float(evaluate(net, arch, evaluator.batches)) for arch in [*narrower, largest]]
    reversed_order = SupernetEvaluator(net, val, calibration_loader=train)
    assert reversed_order.norm_estimate is None  # nothing left to estimate
    assert [reversed_order.score(arch) for arch in [largest, *reversed(narrower)]] == [scores[-1], *reversed(scores[:-1])]
    report = evaluator.report()
    assert report["untrained_norms_estimated"]["estimated"] == len(untrained)
    assert evaluator.settings()["untrained_norms"] == "estimate"


@pytest.mark.slow
def test_a_search_evaluator_keeps_its_estimate_beside_the_checkpoint_and_the_next_one_reads_it(tmp_path):
    """`SupernetEvaluation.build` estimates the untrained widths once per supernet and images, not once
    per search: the first build writes the estimate beside the checkpoint, a second build of the same
    checkpoint reads it (no pass run) and scores every candidate exactly as the first."""
    from nas.actions import v2_actions
    from nas.evaluators import SupernetEvaluation
    from tests.norm_support import largest_widths_trained

    checkpoint = tmp_path / "supernet.pt"
    largest_widths_trained().save(checkpoint)
    spec = SupernetEvaluation(checkpoint, "synthetic:40", batch_size=16)
    first, net = spec.build(get_space("edgevit"), seed=0)
    kept = first.report()["untrained_norms_estimated"]
    assert kept["estimated"] > 0 and not kept["read"]
    assert kept["kept_in"].startswith("supernet.pt.untrained-norms-")  # a name beside the checkpoint, no folder
    assert (tmp_path / kept["kept_in"]).is_file()
    largest = net.fit(net.space.largest())
    archs = [largest, *(a.apply(largest) for a in v2_actions(net.space, largest))][:4]
    second, _ = spec.build(get_space("edgevit"), seed=0)
    again = second.report()["untrained_norms_estimated"]
    assert again["read"] and again["kept_in"] == kept["kept_in"] and again["estimated"] == kept["estimated"]
    assert second.settings() == first.settings()
    assert [second.score(arch) for arch in archs] == [first.score(arch) for arch in archs]


def test_alpha_learns_which_path_is_better():
    """A MetaPath over a path that computes the target, one that computes its negative, and
    identity, trained on α alone the way `supernet.training` trains it (Gumbel-softmax at an
    annealed temperature, Adam with the default arch learning rate): within 300 steps α ranks the
    right path first, above identity, and the wrong one below its uniform share."""
    from torch import nn

    from supernet import MetaPath
    from supernet.training import TrainConfig

    class Scale(nn.Module):
        def __init__(self, factor: float) -> None:
            super().__init__()
            self.factor = factor

        def forward(self, x):
            return self.factor * x

    torch.manual_seed(0)
    path = MetaPath({}, ("good", "bad"))
    path.candidates["good"], path.candidates["bad"] = Scale(2.0), Scale(-2.0)
    defaults = TrainConfig(space="edgenext", data="synthetic", mode="gumbel", epochs=1)
    optimizer = torch.optim.Adam([path.alpha], lr=defaults.arch_lr, betas=(0.5, 0.999))
    steps = 300
    path.mode = "gumbel"
    for step in range(steps):
        path.tau = defaults.tau_start * (defaults.tau_end / defaults.tau_start) ** (step / (steps - 1))
        x = torch.randn(32, 4)
        loss = (path(x) - 2.0 * x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    weights = path.path_weights().detach()
    assert int(weights.argmax()) == 0 and weights[0] > 0.5 > weights[2]
    assert weights[1] < 1 / 3 < weights[0]


# -- the test split is read once, after the search --------------------------------------------
@pytest.mark.slow
def test_a_search_never_reads_the_test_split_and_reports_it_once(tmp_path, monkeypatch, capsys):
    import dataclasses

    from torch.utils.data import Dataset

    import supernet.data as data
    from supernet import Supernet
    from tests.supernet.test_data import make_fashion_mnist

    folder = make_fashion_mnist(tmp_path / "fm")
    checkpoint = tmp_path / "edgevit.pt"
    torch.manual_seed(0)
    Supernet.from_space("edgevit", num_classes=10, resolution=32).save(checkpoint)
    steps_taken: list = []
    reads: list[int] = []  # how many search steps had been taken at each read of a test image

    class Recording(Dataset):
        def __init__(self, inner) -> None:
            self.inner = inner

        def __len__(self) -> int:
            return len(self.inner)

        def __getitem__(self, index):
            reads.append(len(steps_taken))
            return self.inner[index]

    load = data.load_data

    def recording_load(*args, **kwargs):
        bundle = load(*args, **kwargs)
        return dataclasses.replace(bundle, test=Recording(bundle.test))

    monkeypatch.setattr(data, "load_data", recording_load)
    from lut import get_device

    table = get_device("iphone12").default_table("edgevit")
    target = 0.9 * table.predict(get_space("edgevit").largest())
    from nas.evaluators import SupernetEvaluation

    outcome = run_search(SearchRequest("edgevit", table, target, evaluator=SupernetEvaluation(checkpoint, f"fashion-mnist:{folder}")),
                         on_step=steps_taken.append)
    assert outcome.reachable and len(steps_taken) > 1
    assert reads and set(reads) == {len(steps_taken)}  # every test image read after the last step...
    assert len(reads) == 30  # ...and each exactly once (the 30 t10k images)
    accuracy = outcome.arch.meta["accuracy_percent"]
    assert accuracy["val"] == pytest.approx(outcome.result.score, abs=1e-4) and 0 <= accuracy["test"] <= 100
    assert outcome.arch.meta["evaluator_settings"]["split"] == "val"
