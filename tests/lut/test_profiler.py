"""Profiler mechanics on a fake clock: empty-call subtraction makes layers add up to the network."""

from __future__ import annotations

import numpy as np
import pytest

from lut.profiler import TimingSettings, net_record, summarize, time_interleaved
from search_spaces import get_space, list_spaces

from tests.lut.conftest import CALL_S, FakeClock


@pytest.mark.parametrize("space_name", list_spaces())
def test_layers_add_up_to_the_network_on_a_fake_clock(fake_device, space_name):
    space = get_space(space_name)
    arch = space.sample(np.random.default_rng(3), resolution=64, num_classes=10)
    profiler = fake_device.profiler()
    layers = [profiler.profile_spec(spec) for spec in space.layer_specs(arch)]
    network = profiler.profile_network(arch)
    assert sum(r.p50_ms for r in layers) == pytest.approx(network.p50_ms, rel=1e-9)
    # without the subtraction every layer would carry the call cost once more
    assert network.p50_ms > 0 and all(r.p50_ms > 0 for r in layers)


def test_interleaving_alternates_and_respects_the_run_counts():
    clock = FakeClock()
    calls = []

    def subject():
        calls.append("s")
        clock.now += 0.002

    def empty():
        calls.append("e")
        clock.now += 0.0005

    settings = TimingSettings(warmup=2, min_runs=5, max_runs=50, budget_s=0.02)
    subject_ms, empty_ms = time_interleaved(subject, empty, settings, clock)
    assert calls[:4] == ["s", "e", "s", "e"] and len(calls) == 2 * (2 + len(subject_ms))
    assert len(subject_ms) == 10  # 10 runs x 2 ms reach the 20 ms budget
    assert subject_ms == pytest.approx([2.0] * 10) and empty_ms == pytest.approx([0.5] * 10)
    record = net_record(subject_ms, empty_ms)
    assert record.p50_ms == pytest.approx(1.5) and record.runs == 10


def test_max_runs_caps_a_fast_subject():
    clock = FakeClock()
    settings = TimingSettings(warmup=0, min_runs=3, max_runs=7, budget_s=10.0)
    subject_ms, _ = time_interleaved(lambda: None, lambda: None, settings, clock)
    assert len(subject_ms) == 7


def test_summary_percentiles():
    record = summarize([float(v) for v in range(1, 102)])
    assert (record.p10_ms, record.p50_ms, record.p90_ms) == (11.0, 51.0, 91.0)
    assert record.mean_ms == pytest.approx(51.0) and record.runs == 101
    assert net_record([1.0, 1.0], [2.0, 2.0]).p50_ms == 0.0  # never negative


def test_call_cost_is_what_is_subtracted(fake_device):
    space = get_space("edgevit")
    spec = space.layer_specs(space.smallest(64, 10))[0]
    record = fake_device.profiler().profile_spec(spec)
    from search_spaces import build_layer

    params = sum(p.numel() for p in build_layer(spec).parameters())
    assert record.p50_ms == pytest.approx(params * 1e-9 * 1e3)
    assert CALL_S > 0


def test_a_disturbed_window_is_measured_again():
    from lut.profiler import Profiler

    clock = FakeClock()
    state = {"calls": 0}

    class Backend:
        def load(self, module, shape):
            def run():
                state["calls"] += 1
                # the first 8 subject calls are slowed 4x by a "neighbour" every other call
                slow = state["calls"] <= 8 and state["calls"] % 2 == 0
                clock.now += 0.004 if slow else 0.001

            return run

        def load_empty(self, shape):
            return lambda: None

    settings = TimingSettings(warmup=0, min_runs=4, max_runs=4, budget_s=0.0, max_spread=0.15, retries=3)
    record = Profiler(Backend(), settings=settings, clock=clock).profile_module(None, (1,))
    assert record.p50_ms == pytest.approx(1.0) and state["calls"] == 12  # two disturbed windows, then a clean one


def test_calibration_recovers_known_scales():
    from lut.calibration import fit_calibration

    rng = np.random.default_rng(0)
    sums = [{"ffn": float(a), "attn": float(b), "head": 0.01} for a, b in rng.uniform(1, 10, size=(20, 2))]
    measured = [1.2 * s["ffn"] + 0.8 * s["attn"] + s["head"] + 0.5 for s in sums]
    calibration = fit_calibration(sums, measured)
    assert calibration.scales["ffn"] == pytest.approx(1.2) and calibration.scales["attn"] == pytest.approx(0.8)
    assert calibration.scales["head"] == 1.0 and calibration.intercept_ms == pytest.approx(0.5)
    few = fit_calibration(sums[:4], measured[:4])
    assert few.method == "global scale + intercept" and len(set(few.scales.values())) == 1
