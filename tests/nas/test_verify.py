"""`nas.search --verify`: the measure-correct-search-again loop, with fake and real measurements."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from search_spaces import Architecture, get_space

from nas.search import main
from nas.verify import MeasurePolicy, measured_latency, scaled, table_error, verify_search
from tests.cli_support import invoke

ROOT = Path(__file__).resolve().parents[2]
ORT_TABLE = ROOT / "benchmarks" / "results" / "lut_table_ort-cpu_efficientformer_v2_r224_t1.json"
SPACE = get_space("efficientformer_v2")


@pytest.fixture(scope="module")
def table():
    from lut import load_table

    return load_table(ORT_TABLE)


def test_scaling_multiplies_every_prediction(table):
    arch = SPACE.reference("s1")
    assert scaled(table, 1.5).predict(arch) == pytest.approx(1.5 * table.predict(arch))
    assert 0 < table_error(table) < 0.1  # the fitted MAPE of this table


def test_a_device_slower_than_the_table_gets_a_corrected_table_and_a_smaller_network(table):
    """The device takes 1.4x what the table says: round 1 picks s1 and misses, the table is scaled
    by 1.4 (and by 1 / 0.9, to aim at the middle of the [0.8, 1.0] window), and the second search
    (with the corrected table) picks s0, which meets the target."""
    candidates = [SPACE.reference(name) for name in ("l", "s2", "s1", "s0")]
    target = 1.05 * table.predict(candidates[2])  # s1 fits the table; 1.4 x s1 does not, 1.4 x s0 does
    assert 1.4 * table.predict(candidates[3]) <= target
    searched_with = []

    def search(current):
        searched_with.append(current)
        arch = next(a for a in candidates if current.predict(a) <= target)
        return arch, current.predict(arch)

    def measure(arch):
        return 1.4 * table.predict(arch)

    arch, final_table, record = verify_search(search, table, target, measure, rounds=3, undershoot=0.2)
    factor = 1.4 / 0.9
    assert len(record.rounds) == 2 and record.met and record.in_window and record.chosen == 2
    assert record.rounds[1].table_factor == pytest.approx(factor)
    assert final_table.predict(arch) == pytest.approx(factor * table.predict(arch))
    assert record.rounds[1].measured_ms <= target * (1 + record.tolerance)
    assert [r.predicted_ms for r in record.rounds] == pytest.approx([table.predict(SPACE.reference("s1")),
                                                                     factor * table.predict(SPACE.reference("s0"))])


def test_a_device_faster_than_the_table_gets_a_bigger_network_that_spends_the_budget(table):
    """The device takes 0.8x what the table says: s1 lands far under the target (0.8 x), the table is
    scaled down (aiming at 0.975 x target), and the second search picks s2, which lands in
    [0.95, 1.00] x target."""
    candidates = [SPACE.reference(name) for name in ("l", "s2", "s1", "s0")]
    target = 0.8 * table.predict(candidates[1]) / 0.97  # s2, measured, sits at 97% of the target

    def search(current):
        arch = next(a for a in candidates if current.predict(a) <= target)
        return arch, current.predict(arch)

    arch, _, record = verify_search(search, table, target, lambda a: 0.8 * table.predict(a), rounds=3)
    assert record.rounds[0].measured_ms < 0.95 * target  # the uncorrected table wasted budget
    assert arch == candidates[1] and record.in_window and record.chosen == len(record.rounds) == 2
    assert record.rounds[1].table_factor == pytest.approx(0.8 / 0.975)


def test_rounds_are_bounded_and_the_best_round_under_the_target_is_kept(table):
    arch = SPACE.reference("s0")
    _, _, record = verify_search(lambda t: (arch, t.predict(arch)), table, 1.0, lambda a: 50.0, rounds=2)
    assert len(record.rounds) == 2 and not record.met and not record.in_window
    measurements = iter([9.0, 11.0, 9.5])  # under, over, under: the slowest under the target is kept
    picks = iter(SPACE.reference(name) for name in ("s0", "s1", "s2"))
    chosen, _, record = verify_search(lambda t: (next(picks), 1.0), table, 10.0, lambda a: next(measurements),
                                      rounds=3, undershoot=0.01)
    assert record.chosen == 3 and chosen == SPACE.reference("s2") and record.met and not record.in_window


def test_a_re_search_the_corrected_table_finds_unreachable_keeps_the_rounds_measured(table):
    """Round 1 measures 2x the table: the corrected table prices even the smallest network over the
    target, so the re-search raises Unreachable. The verify stops there with round 1, not with an
    unreachable search (which is what the end-to-end benchmark got at 6 ms on 2026-12-04)."""
    from nas.problem import Unreachable

    arch, calls = SPACE.smallest(), []

    def search(current):
        calls.append(current)
        if len(calls) > 1:
            raise Unreachable(current.predict(arch))
        return arch, current.predict(arch)

    target = 1.05 * table.predict(arch)
    chosen, _, record = verify_search(search, table, target, lambda a: 2.0 * table.predict(a), rounds=3)
    assert len(calls) == 2 and len(record.rounds) == 1 and chosen == arch
    assert record.corrected_unreachable and not record.met and record.to_meta()["corrected_unreachable"]
    with pytest.raises(Unreachable):  # the first search's own Unreachable is the search's answer
        verify_search(lambda current: (_ for _ in ()).throw(Unreachable(9.0)), table, target, lambda a: 1.0)


@pytest.mark.parametrize(("statistic", "expected"), [("min", 5.0), ("median", 6.0)])
def test_a_measurement_combines_fresh_sessions_of_one_export(monkeypatch, statistic, expected):
    import lut.devices
    from lut import get_device

    exports, loads, sessions = [], [], iter([9.0, 5.0, 6.0])
    monkeypatch.setattr(lut.devices, "export_onnx", lambda module, shape: exports.append(shape) or b"model")
    device = get_device("ort-cpu")
    monkeypatch.setattr(device, "load_onnx", lambda model, shape: loads.append(model) or ("runnable", model))
    monkeypatch.setattr(device, "profiler", lambda: SimpleNamespace(
        profile_runnable=lambda runnable, shape: SimpleNamespace(p50_ms=next(sessions))))
    assert measured_latency(device, SPACE.smallest(resolution=64), MeasurePolicy(3, 0.0, statistic)) == expected
    assert exports == [(1, 3, 64, 64)] and loads == [b"model"] * 3  # one export, three fresh sessions


def test_a_measurement_pauses_between_sessions_not_after_the_last():
    pauses, calls = [], iter([3.0, 2.0, 4.0])
    values = MeasurePolicy(3, 1.5).measure(lambda: next(calls), sleep=pauses.append)
    assert values == [3.0, 2.0, 4.0] and pauses == [1.5, 1.5]
    assert MeasurePolicy().combine(values) == 2.0  # the default keeps the fastest session


@pytest.mark.parametrize(("field", "kwargs"), [("sessions", {"sessions": 0}), ("pause_s", {"pause_s": -1.0}),
                                              ("statistic", {"statistic": "mean"})])
def test_a_measure_policy_refuses_what_it_cannot_do(field, kwargs):
    with pytest.raises(ValueError, match=field):
        MeasurePolicy(**kwargs)


def test_verify_refuses_a_modelled_device(capsys):
    code, _, err = invoke(main, "nas.search", ["--target-latency", "1.5ms", "--device", "iphone12", "--verify"], capsys)
    assert code == 2 and "iphone12" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_verify_measures_on_ort_cpu_and_corrects_a_table_that_underestimates(table, tmp_path, capsys):
    """A table that predicts half of what onnxruntime takes on this host is caught by the
    measurement. Halved against this host, not against the committed table: the table was
    measured on another machine, and a host twice as fast (seen: an AMD EPYC against the table's
    host) would make the committed table's half exact and the check meaningless."""
    from lut import get_device

    probe = SPACE.reference("s1")
    host_ms = measured_latency(get_device("ort-cpu", threads=1), probe)
    factor = 0.5 * host_ms / table.predict(probe)
    halved = tmp_path / "halved.json"
    scaled(table, factor).save(halved)
    out = tmp_path / "found.yaml"
    target = f"{0.5 * host_ms:.3f}ms"  # about S1's size on the halved table
    code, _, err = invoke(main, "nas.search", ["--target-latency", target, "--lut", str(halved), "--verify",
                                               "--verify-rounds", "2", "--out", str(out)], capsys)
    assert code == 0, err
    record = Architecture.from_yaml(out).meta["verify"]
    assert len(record["rounds"]) == 2
    first = record["rounds"][0]
    assert first["measured_ms"] > 1.3 * first["predicted_ms"]  # a 2x underestimate, whatever the load
    assert record["rounds"][1]["table_factor"] > 1.3


def test_a_table_measured_under_another_runtime_is_named_before_verifying(table, capsys):
    """`--verify` measures with this host's onnxruntime; a table measured under another version
    prices another runtime, and the search says so in one stderr line (and still runs)."""
    import dataclasses

    from lut import get_device
    from nas.search import _warn_about_runtime

    device = get_device("ort-cpu")
    assert device.runtime_differences(device.runtime_versions()) == []
    older = {**device.runtime_versions(), "onnxruntime": "1.0.0"}
    assert device.runtime_differences(older) == [f"onnxruntime 1.0.0 in the table, {device.runtime_versions()['onnxruntime']} here"]
    assert get_device("torch-cpu").runtime_differences(older) == []  # torch times torch-cpu, not onnxruntime
    _warn_about_runtime(SimpleNamespace(metadata=dataclasses.replace(table.metadata, runtime=older)))
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "onnxruntime 1.0.0 in the table" in err
    _warn_about_runtime(SimpleNamespace(metadata=dataclasses.replace(table.metadata, runtime=device.runtime_versions())))
    assert capsys.readouterr().err == ""
