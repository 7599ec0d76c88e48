"""Screening greedy steps (`nas.greedy` with a shortlist): each step ranks its candidates by a cheap
estimate, scores only a shortlist fully, and stays deterministic and resumable; the supernet
evaluator screens on a prefix of its own images; bad combinations are refused before any work."""

from __future__ import annotations

import json

import pytest
import torch

from search_spaces import get_space

from nas.api import RequestError, SearchRequest, run_search, validate_request
from nas.evaluators import SupernetEvaluation
from nas.greedy import greedy_search
from nas.objectives import LatencyObjective, MESObjective
from nas.search import main
from tests.cli_support import assert_refused_in_one_line
from tests.nas.toys import ToyTable, toy_problem

SPACE = get_space("efficientformer_v2")


def _toy_accuracy(arch) -> float:
    expansions = sum(b.expansion or 0 for s in arch.stages for b in s.blocks if not b.is_identity)
    return 10 * sum(arch.depths) + sum(arch.widths) / 1000 + 1e-4 * expansions


class ScreeningToy:
    """`score` is the toy accuracy; `screen` is `distortion(arch, score)`; both count their calls."""

    name = "screening-toy"

    def __init__(self, distortion=lambda arch, value: value) -> None:
        self.distortion = distortion
        self.evaluations = 0
        self.screenings = 0
        self.scored: list = []

    def score(self, arch) -> float:
        self.evaluations += 1
        self.scored.append(arch)
        return _toy_accuracy(arch)

    def screen(self, arch) -> float:
        self.screenings += 1
        return self.distortion(arch, _toy_accuracy(arch))

    def settings(self) -> dict:
        return {"name": self.name}


class Interrupt(Exception):
    pass


def test_a_faithful_screen_keeps_the_path_and_scores_only_the_shortlist():
    plain = greedy_search(toy_problem(ScreeningToy(), MESObjective(), 0.8))
    evaluator = ScreeningToy()
    screened = greedy_search(toy_problem(evaluator, MESObjective(), 0.8), shortlist=2)
    assert screened.path == plain.path and [s.score for s in screened.steps] == [s.score for s in plain.steps]
    assert len(plain.steps) > 4
    steps = len(screened.steps) - 1
    # the start, then per step at most the 2 best ratios and the 2 most accurate feasible candidates
    assert screened.evaluations <= 1 + 4 * steps < plain.evaluations
    assert screened.screenings == evaluator.screenings and screened.screenings >= plain.evaluations - 1


def test_a_misleading_screen_changes_the_path_unless_the_shortlist_holds_every_candidate():
    inverted = lambda arch, value: -value  # noqa: E731  (ranks the worst candidates first)
    plain = greedy_search(toy_problem(ScreeningToy(), LatencyObjective(), 0.8))
    fooled = greedy_search(toy_problem(ScreeningToy(inverted), LatencyObjective(), 0.8), shortlist=1)
    assert fooled.path != plain.path and fooled.score < plain.score
    wide = greedy_search(toy_problem(ScreeningToy(inverted), LatencyObjective(), 0.8), shortlist=1000)
    assert wide.path == plain.path and wide.score == plain.score


class BlocksCheapTable:
    """Blocks nearly free, channels dear: a block drop saves little latency for a large accuracy
    loss (the toy accuracy's 10 points), a width cut much latency for little."""

    def predict(self, arch):
        return 0.001 * sum(arch.depths) + 0.01 * sum(arch.widths)


def _offset_at_start(arch, value):
    """A screen that is off for the whole first step: every candidate screens 20 points higher
    than on all images, the starting network (the largest) true to them."""
    return value if arch == SPACE.largest() else value + 20


def _blocks_cheap_problem(evaluator):
    return toy_problem(evaluator, LatencyObjective(), 0.8 * BlocksCheapTable().predict(SPACE.largest()),
                       table=BlocksCheapTable())


def _noisy(arch, value):
    return value + (hash(arch) % 7) * 0.3  # a deterministic, imperfect screen


@pytest.mark.parametrize("case", ["shortlist", "widened"])
def test_a_screened_greedy_resumed_from_its_state_equals_an_uninterrupted_run(tmp_path, case):
    """Stopped after three steps and resumed: the same result, the recorded screenings not asked
    again; the same state with other screening settings is another search (refused)."""
    if case == "shortlist":
        problem, screen = (lambda evaluator: toy_problem(evaluator, MESObjective(), 0.85)), _noisy
        settings, other, field = {"shortlist": 2}, {"shortlist": 3}, "shortlist"
    else:
        problem, screen = _blocks_cheap_problem, _offset_at_start
        settings, other, field = {"shortlist": 1, "shortlist_extra": 5}, {"shortlist": 1}, "shortlist_extra"
    straight = greedy_search(problem(ScreeningToy(screen)), **settings)
    state, seen = tmp_path / "greedy.json", []

    def stop_after_three(step):
        seen.append(step)
        if len(seen) == 4:
            raise Interrupt

    with pytest.raises(Interrupt):
        greedy_search(problem(ScreeningToy(screen)), on_step=stop_after_three, state_path=state, **settings)
    saved = json.loads(state.read_text())
    assert any(item.get("screened") for item in saved["history"])
    assert {key: saved["settings"].get(key) for key in settings} == settings
    evaluator = ScreeningToy(screen)
    resumed = greedy_search(problem(evaluator), state_path=state, **settings)
    assert resumed == straight  # same path, scores, evaluation and screening counts
    assert evaluator.screenings < straight.screenings  # the recorded screenings were not asked again
    with pytest.raises(ValueError, match=field):  # other screening settings are another search
        greedy_search(problem(ScreeningToy(screen)), state_path=state, **other)


def test_a_step_wide_screening_error_misleads_a_fixed_shortlist_and_the_widened_one_recovers():
    """Every first-step candidate screens as an accuracy gain; divided by its gain, the block drop
    that saves least ranks first, and a shortlist of one takes it (10 points lost). Widened, the
    step measures the screening's error on that candidate, re-ranks the rest with it, scores the
    width cut it now predicts better, and the search walks the unscreened search's path at the
    shortlist's cost plus one full score (the later steps' screens are true to each other)."""
    plain = greedy_search(_blocks_cheap_problem(ScreeningToy()))
    fixed = greedy_search(_blocks_cheap_problem(ScreeningToy(_offset_at_start)), shortlist=1)
    assert fixed.steps[1].action.startswith("drop") and fixed.score < plain.score - 9
    wide = greedy_search(_blocks_cheap_problem(ScreeningToy(_offset_at_start)), shortlist=1, shortlist_extra=5)
    assert wide.path == plain.path and wide.score == plain.score
    assert wide.evaluations == len(wide.steps) + 1 < plain.evaluations  # one score a step (and the start), one more
    with pytest.raises(ValueError, match="give the shortlist"):
        greedy_search(_blocks_cheap_problem(ScreeningToy()), shortlist_extra=5)


@pytest.mark.parametrize("objective", [MESObjective(), LatencyObjective()])
def test_widening_costs_nothing_when_the_shortlist_holds_up(objective):
    """A faithful screen: no prediction beats the shortlist's best, so no step scores more."""
    fixed = greedy_search(toy_problem(ScreeningToy(), objective, 0.8), shortlist=2)
    wide = greedy_search(toy_problem(ScreeningToy(), objective, 0.8), shortlist=2, shortlist_extra=50)
    assert wide == fixed


def test_a_shortlist_needs_an_evaluator_that_screens():
    class Plain:
        name, evaluations = "plain", 0

        def score(self, arch):
            return 1.0

        def settings(self):
            return {}

    with pytest.raises(ValueError, match="screens"):
        greedy_search(toy_problem(Plain(), MESObjective(), 0.8), shortlist=2)


def _trained_supernet():
    from supernet import Supernet

    torch.manual_seed(0)
    net = Supernet.from_space("edgevit", num_classes=4, resolution=32)
    for module in net.modules():  # BN statistics that matter (and count as trained)
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(1)
    return net.eval()


@pytest.mark.parametrize("recalibrate", [0, 2])
def test_the_supernet_screens_on_the_first_batches_with_the_same_bn_handling(recalibrate):
    import numpy as np
    from torch.utils.data import DataLoader

    from nas.evaluators import SupernetEvaluator
    from supernet.data import load_data

    net = _trained_supernet()
    data = load_data("synthetic:96", 32)
    val, train = DataLoader(data.val, batch_size=8), DataLoader(data.train, batch_size=8)
    evaluator = SupernetEvaluator(net, val, recalibrate=recalibrate, calibration_loader=train, screen_batches=1)
    first = SupernetEvaluator(net, list(val)[:1], recalibrate=recalibrate, calibration_loader=train,
                              calibration_images=evaluator._calibration)
    archs = [net.space.sample(np.random.default_rng(seed)) for seed in range(4)]
    screened = [evaluator.screen(a) for a in archs]
    assert screened == [first.score(a) for a in archs]
    assert evaluator.screenings == 4 and evaluator.evaluations == 0  # screening is not scoring
    assert [evaluator.score(a) for a in archs] != screened  # all the images, not the first batch
    assert evaluator.settings()["screen_images"] == 8 < evaluator.settings()["images"]
    with pytest.raises(ValueError, match="fewer"):
        SupernetEvaluator(net, val, screen_batches=len(list(val)))
    with pytest.raises(ValueError, match="screens nothing"):
        SupernetEvaluator(net, val).screen(archs[0])


def test_the_settings_name_the_supernets_weights_so_no_cache_mixes_two_supernets():
    """`settings()` (what state files and score caches are keyed on) carries a digest of the
    weights: equal for the same weights, different after one weight changed, and not moved by
    scoring with recalibration (which works on copies)."""
    from torch.utils.data import DataLoader

    from nas.evaluators import SupernetEvaluator
    from supernet.data import load_data

    net = _trained_supernet()
    val = DataLoader(load_data("synthetic:48", 32).val, batch_size=8)
    evaluator = SupernetEvaluator(net, val, recalibrate=1)
    before = evaluator.settings()["weights_sha256"]
    evaluator.score(net.space.largest())
    again = SupernetEvaluator(net, val, recalibrate=1)
    assert again.settings()["weights_sha256"] == before == evaluator.weights_sha256
    with torch.no_grad():
        next(net.parameters()).view(-1)[0] += 1e-3
    assert SupernetEvaluator(net, val, recalibrate=1).settings()["weights_sha256"] != before


def _request(tmp_path, **fields):
    checkpoint = tmp_path / "net.pt"
    checkpoint.write_bytes(b"")  # validation checks that it exists, and reads nothing
    evaluator = fields.pop("evaluator", SupernetEvaluation(checkpoint, "synthetic:64", screen_batches=1))
    return SearchRequest("efficientformer_v2", ToyTable(), 0.8, evaluator=evaluator, **fields)


@pytest.mark.parametrize("fields, field", [
    ({}, "screen_batches"),  # screening without a shortlist
    ({"shortlist": 2, "strategy": "random"}, "shortlist"),
    ({"shortlist": 0.5}, "shortlist"),
    ({"shortlist": 10_000}, "shortlist"),
    ({"shortlist": 2, "evaluator": ScreeningToy.__new__(ScreeningToy)}, None),  # accepted: it screens
    ({"shortlist": 2, "shortlist_extra": 3}, None),
    ({"shortlist_extra": 3, "evaluator": ScreeningToy.__new__(ScreeningToy)}, "shortlist_extra"),  # widens nothing
    ({"shortlist": 2, "shortlist_extra": -1}, "shortlist_extra"),
    ({"shortlist": 2, "shortlist_extra": 1.5}, "shortlist_extra"),
])
def test_screening_requests_are_validated_before_any_work(tmp_path, fields, field):
    request = _request(tmp_path, **fields)
    if field is None:
        validate_request(request)
        return
    with pytest.raises(RequestError) as caught:
        validate_request(request)
    assert caught.value.field == field


def test_a_shortlist_without_a_screening_evaluator_is_refused(tmp_path):
    plain = SupernetEvaluation(tmp_path / "net.pt", "synthetic:64")
    (tmp_path / "net.pt").write_bytes(b"")
    with pytest.raises(RequestError) as caught:
        validate_request(_request(tmp_path, shortlist=2, evaluator=plain))
    assert caught.value.field == "shortlist"
    with pytest.raises(RequestError) as caught:
        validate_request(_request(tmp_path, evaluator=SupernetEvaluation(tmp_path / "net.pt", "synthetic:64",
                                                                         eval_batches=2, screen_batches=2),
                                  shortlist=2))
    assert caught.value.field == "screen_batches"


def test_a_screened_search_records_its_shortlist_and_screenings():
    from lut import get_device

    table = get_device("iphone12").default_table("efficientformer_v2")
    outcome = run_search(SearchRequest("efficientformer_v2", table, 2.0, evaluator=ScreeningToy(), shortlist=3))
    meta = outcome.arch.meta
    assert meta["shortlist"] == 3 and meta["screenings"] == outcome.result.screenings > meta["evaluations"]
    floored = run_search(SearchRequest("efficientformer_v2", table, 2.0, evaluator=ScreeningToy(), drop_floor=0.5))
    assert floored.arch.meta["drop_floor"] == 0.5 and "drop_floor" not in meta and "shortlist_extra" not in meta
    widened = run_search(SearchRequest("efficientformer_v2", table, 2.0, evaluator=ScreeningToy(), shortlist=3,
                                       shortlist_extra=4))
    assert widened.arch.meta["shortlist_extra"] == 4 and widened.arch == outcome.arch  # a faithful screen


@pytest.mark.parametrize("argv, option", [
    (["--shortlist", "3"], "--shortlist"),
    (["--screen-batches", "1"], "--screen-batches"),
    (["--screen-batches", "1", "--shortlist", "0"], "--shortlist"),
    (["--shortlist", "x"], "--shortlist"),
    (["--drop-floor", "x"], "--drop-floor"),
    (["--drop-floor", "nan"], "--drop-floor"),
    (["--drop-floor", "-1"], "--drop-floor"),
    (["--drop-floor", "0.5", "--strategy", "random"], "--drop-floor"),
    (["--shortlist-extra", "2"], "--shortlist-extra"),
    (["--shortlist-extra", "-1"], "--shortlist-extra"),
])
def test_screening_options_on_the_command_line_are_one_line_each(tmp_path, capsys, argv, option):
    assert_refused_in_one_line(main, "nas.search", ["--target-latency", "1.5ms", "--device", "iphone12", *argv],
                               option, tmp_path / "a.yaml", capsys)


def test_the_command_line_builds_a_screening_request(tmp_path):
    from nas.search import build_parser, request_from_args

    checkpoint = tmp_path / "net.pt"
    checkpoint.write_bytes(b"")
    args = build_parser().parse_args(["--target-latency", "1.5ms", "--device", "iphone12", "--supernet",
                                      str(checkpoint), "--data", "synthetic:64", "--screen-batches", "1",
                                      "--shortlist", "2", "--shortlist-extra", "4"])
    request = request_from_args(args)
    assert request.shortlist == 2 and request.shortlist_extra == 4 and request.evaluator.screen_batches == 1
    validate_request(request)


def test_a_screened_supernet_search_runs_end_to_end():
    """A (random) EdgeViT supernet screens on one batch of 8 held-out images and scores the
    shortlist on all 24; the search meets the target and reports both counts."""
    from torch.utils.data import DataLoader

    from lut import get_device
    from nas.evaluators import SupernetEvaluator
    from supernet.data import load_data

    net = _trained_supernet()
    space = get_space("edgevit")
    table = get_device("iphone12").default_table(space)
    target = 0.97 * table.predict(space.largest())
    evaluator = SupernetEvaluator(net, DataLoader(load_data("synthetic:96", 32).val, batch_size=8), screen_batches=1)
    outcome = run_search(SearchRequest("edgevit", table, target, evaluator=evaluator, shortlist=2))
    meta = outcome.arch.meta
    assert meta["predicted_latency_ms"] <= target and meta["shortlist"] == 2
    assert meta["evaluator_settings"]["screen_images"] == 8 < meta["evaluator_settings"]["images"] == 24
    assert meta["screenings"] == evaluator.screenings > meta["evaluations"] == evaluator.evaluations


def test_a_drop_floor_stops_noise_sized_gains_from_deciding_a_step():
    """An evaluator whose one tiny action (an expansion cut) scores *higher* than the current
    network: the plain ratio takes that action first (a negative ratio), the floored ratio the
    action that saves the most latency among those that cost no more than the floor."""
    from nas.greedy import floored_ratio
    from nas.objectives import LatencyObjective

    ratio = floored_ratio(LatencyObjective().ratio, 0.5)
    assert ratio(-2.6, 0.01) == pytest.approx(50.0)  # a noise-sized gain costs the floor
    assert ratio(0.2, 0.2) == ratio(-1.0, 0.2) == pytest.approx(2.5)
    assert ratio(3.0, 0.2) == pytest.approx(15.0)  # real drops are kept
    assert floored_ratio(LatencyObjective().ratio, None)(-2.6, 0.01) == pytest.approx(-260.0)

    from lut import get_device

    table = get_device("iphone12").default_table(SPACE)  # an expansion cut saves a little latency
    largest = SPACE.largest()
    widest = max(b.expansion or 0 for s in largest.stages for b in s.blocks)

    def cut(arch) -> int:  # blocks still there whose expansion was cut
        return sum(1 for s in arch.stages for b in s.blocks if not b.is_identity and (b.expansion or widest) < widest)

    class LuckyExpansionCuts(ScreeningToy):
        """Every block removal costs 0.3 points; every expansion cut scores 0.1 points *higher*."""

        def score(self, arch) -> float:
            self.evaluations += 1
            return 80 - 0.3 * (sum(largest.depths) - sum(arch.depths)) + 0.1 * cut(arch)

        screen = score

    def first_step(**options):
        taken = []

        def stop(step):
            taken.append(step)
            if len(taken) == 2:  # the start, then the first action
                raise Interrupt

        with pytest.raises(Interrupt):
            greedy_search(toy_problem(LuckyExpansionCuts(), LatencyObjective(), 0.5, table=table), on_step=stop,
                          **options)
        return taken[1]

    plain, floored = first_step(), first_step(drop_floor=0.5)
    assert plain.action.startswith("expansion") and plain.ratio < 0
    assert not floored.action.startswith("expansion")
    assert -floored.delta_latency > -plain.delta_latency and floored.ratio > 0
