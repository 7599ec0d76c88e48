"""A fake measuring device on a fake clock, tiny table builds, and one Ray session for the suite."""

from __future__ import annotations

import pytest

from lut.devices import Device
from lut.registry import register_device
from lut.profiler import Profiler, TimingSettings

# Fake costs, in seconds: a runtime call costs CALL_S whatever it runs, plus PARAM_S per parameter
# of the module it runs. A network's parameters are exactly the sum of its layers', so a correct
# profiler's per-layer numbers (net of the empty call) add up to the network's exactly.
CALL_S = 50e-6
PARAM_S = 1e-9
QUICK = TimingSettings(warmup=1, min_runs=3, max_runs=3, budget_s=0.0)


class FakeClock:
    """A clock that only moves when a fake runtime call says it took time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeDevice(Device):
    """Measures nothing: a call 'takes' CALL_S + PARAM_S x parameters on a shared fake clock."""

    name = "fake-cpu"
    summary = "test device on a fake clock"
    needs = "nothing"
    clock = FakeClock()

    def availability(self) -> tuple[bool, str]:
        return True, "always"

    def _advance(self, seconds: float):
        def run() -> None:
            self.clock.now += seconds

        return run

    def load(self, module, input_shape):
        return self._advance(CALL_S + PARAM_S * sum(p.numel() for p in module.parameters()))

    def load_empty(self, input_shape):
        return self._advance(CALL_S)

    def profiler(self, clock=None) -> Profiler:
        return Profiler(self, self.batch, self.timing, self.clock)


register_device(FakeDevice)


@pytest.fixture
def fake_device() -> FakeDevice:
    return FakeDevice(timing=QUICK)


@pytest.fixture(scope="session")
def edgevit_table(tmp_path_factory):
    """A complete edgevit table at 64 px on the fake device (every spec of the space)."""
    from lut import build
    from search_spaces.command_line import run_command

    path = tmp_path_factory.mktemp("tables") / "edgevit.json"
    quick = ["--runs", "3", "--warmup", "1", "--budget", "0.0001"]
    code = run_command(build.main, ["--device", "fake-cpu", "--space", "edgevit", "--resolution", "64", "--out", str(path), *quick])
    assert code == 0
    return path


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray runtime (2 CPUs, 2 units of the ort-cpu resource) for every Ray test."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, resources={"ort-cpu": 2}, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
