"""The measured check of a search (`nas.search --verify`): predict, measure, correct, search again.

A latency table predicts; the device decides. After a search on a device that measures on this
host (`ort-cpu`, `torch-cpu`, `torch-cuda`), the found network is built, exported the way the
device runs it (ONNX for onnxruntime) and timed end to end with the table's own settings (threads,
batch, timing). The search is accepted when the measurement lands in the window
`[(1 - undershoot) × target, target]`: over the target is a miss, and far under it leaves budget
the user paid for unused (a table that over-predicts the networks searches end in makes every
search stop short). Otherwise the table is corrected with what was measured and the search runs
again, at most `rounds` times; if no round lands in the window, the best round is kept (the
slowest one under the target, else the fastest).

The correction is one multiplicative factor on the table's calibration (every per-kind scale and
the intercept), the median measured/predicted ratio over every network measured so far: with one
to three points, a single factor is all the data can pin down, and the table's relative shape
(which layers cost more than which) is what the search needs from it. A corrected search aims at
the middle of the window, `(1 - undershoot / 2) × target`, not at its top: a search ends just
under the latency it aims at, and a network measured again in another session differs by a few
percent either way, so aiming at the top lands about half of the re-searches over the target. How
far the window can be hit is a property of the host. On the 2-core test machines the host's speed
itself drifts (`benchmarks/measurement_repeatability.py`, 2026-12-04): one network's fresh sessions
vary by CV 0.09-0.15 over a quarter of an hour, and a session kept open the whole time still varies
by CV 0.07-0.12, so the spread is mostly the host's, not a session's memory placement. Interference
only ever adds time, so a measurement is the minimum p50 over `MeasurePolicy.sessions` fresh
sessions started `pause_s` apart (`measured_latency`; the network is exported once): the host at
its fastest in that stretch, the statistic the layer table's records keep too (the lowest median of
a layer's windows). In that run, two such minima from rounds minutes apart agreed within ±2.5% (the
window's half-width) in 32% of pairs and within ±5% in 60%, where the medians of the same sessions
agreed in 14% and 33%: better, and still far from what a window 5% wide needs 9 times in 10.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from search_spaces import Architecture

from nas.problem import Unreachable

#: the table's error when its calibration records none (lut.validate's ±10% band)
DEFAULT_TABLE_ERROR = 0.10
DEFAULT_ROUNDS = 3
#: a measurement more than this fraction under the target is re-searched with a corrected table
DEFAULT_UNDERSHOOT = 0.05
STATISTICS = {"min": min, "median": statistics.median}


@dataclass(frozen=True)
class MeasurePolicy:
    """How one network is measured end to end: `sessions` fresh runtime sessions, each started
    `pause_s` after the previous one ended, their p50s combined by `statistic` (`min`: the host at
    full speed, see the module docstring; `median`)."""

    sessions: int = 5
    pause_s: float = 3.0
    statistic: str = "min"

    def __post_init__(self) -> None:
        if self.sessions < 1:
            raise ValueError(f"sessions: at least 1, got {self.sessions}")
        if not 0.0 <= self.pause_s <= 600.0:
            raise ValueError(f"pause_s: 0..600 seconds, got {self.pause_s}")
        if self.statistic not in STATISTICS:
            raise ValueError(f"statistic: one of {', '.join(STATISTICS)}, got {self.statistic!r}")

    def combine(self, p50s_ms: Sequence[float]) -> float:
        """The measurement of a network from its sessions' p50s."""
        return float(STATISTICS[self.statistic](p50s_ms))

    def measure(self, session_p50: Callable[[], float], sleep: Callable[[float], None] = time.sleep) -> list[float]:
        """The p50 of `self.sessions` calls of `session_p50` (each loads and times a fresh session),
        `pause_s` apart."""
        values: list[float] = []
        for index in range(self.sessions):
            if index:
                sleep(self.pause_s)
            values.append(float(session_p50()))
        return values

    def to_dict(self) -> dict[str, object]:
        return {"sessions": self.sessions, "pause_s": self.pause_s, "statistic": self.statistic}


MEASURE_POLICY = MeasurePolicy()


def measured_latency(device, arch: Architecture, policy: MeasurePolicy = MEASURE_POLICY) -> float:
    """The latency (ms) of `arch` on `device` measured as `policy` says, the network built and
    exported once (`lut.devices.Device.session_loader`)."""
    from lut.profiler import network_under_test

    module, shape = network_under_test(arch, device.batch)
    load = device.session_loader(module, shape)
    profiler = device.profiler()
    return policy.combine(policy.measure(lambda: profiler.profile_runnable(load(), shape).p50_ms))


@dataclass(frozen=True)
class VerifyRound:
    """One measured network: what the (corrected) table predicted and what the device took."""

    round: int
    predicted_ms: float
    measured_ms: float
    table_factor: float

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "predicted_ms": round(self.predicted_ms, 6),
                "measured_ms": round(self.measured_ms, 6), "table_factor": round(self.table_factor, 6)}


@dataclass(frozen=True)
class Verification:
    """The outcome: every round, which one was kept (`chosen`, 1-based), whether its measurement
    landed in the window (`in_window`) and whether it met the target within the table's error
    (`met`, measured ≤ target × (1 + tolerance))."""

    rounds: tuple[VerifyRound, ...]
    met: bool
    tolerance: float
    undershoot: float = DEFAULT_UNDERSHOOT
    chosen: int = 0
    in_window: bool = False
    #: a re-search with the corrected table found the target unreachable (the device is slower
    #: than the table by more than the target leaves room for), so the rounds stopped there
    corrected_unreachable: bool = False

    @property
    def kept(self) -> VerifyRound:
        return self.rounds[(self.chosen or len(self.rounds)) - 1]

    def to_meta(self) -> dict[str, Any]:
        return {"measured_latency_ms": round(self.kept.measured_ms, 6), "met": self.met, "in_window": self.in_window,
                "tolerance": round(self.tolerance, 6), "undershoot": round(self.undershoot, 6),
                "chosen_round": self.chosen or len(self.rounds), "corrected_unreachable": self.corrected_unreachable,
                "rounds": [r.to_dict() for r in self.rounds]}


def table_error(table) -> float:
    """The table's relative error: its calibration's fitted MAPE when recorded, else 10%."""
    mape = table.calibration.fit.get("fit_mape_percent") if table.calibration.fit else None
    return float(mape) / 100.0 if mape else DEFAULT_TABLE_ERROR


def measuring_device(table):
    """The device that built `table`, with the table's settings; refuses devices that do not
    measure on this host (analytic models such as `iphone12`, Core ML off macOS, CUDA without a GPU)."""
    from lut import get_device

    meta = table.metadata
    device = get_device(meta.device, threads=meta.threads, batch=meta.batch)
    if not device.measures:
        raise ValueError(f"device {meta.device!r} is a model, not something this host can run; "
                         "verify on a measured device (ort-cpu, torch-cpu, torch-cuda)")
    usable, reason = device.availability()
    if not usable:
        raise ValueError(f"device {meta.device!r} is not usable here: {reason}")
    return device


def scaled(table, factor: float):
    """`table` with its calibration multiplied by `factor` (scales and intercept)."""
    from lut.table import Calibration

    calibration = table.calibration
    scales = {kind: scale * factor for kind, scale in calibration.scales.items()}
    if not scales:  # an identity calibration: one scale for every kind the table prices
        scales = {key.split(":", 1)[0]: factor for key in table.records}
    corrected = Calibration(f"{calibration.method} x measured factor", scales, calibration.intercept_ms * factor,
                            calibration.fitted_on, {**calibration.fit, "measured_factor": factor})
    return table.with_calibration(corrected)


def verify_search(
    search: Callable[[Any], tuple[Architecture, float]],
    table,
    target_ms: float,
    measure: Callable[[Architecture], float],
    rounds: int = DEFAULT_ROUNDS,
    undershoot: float = DEFAULT_UNDERSHOOT,
) -> tuple[Architecture, Any, Verification]:
    """Search with `table`, measure the result, correct the table and search again until the
    measurement lands in `[(1 - undershoot) × target_ms, target_ms]` or `rounds` searches were made.

    `search(table)` returns (architecture, predicted ms) or raises `Unreachable`; `measure(arch)`
    the measured ms. The first search's `Unreachable` propagates; a re-search's ends the rounds
    (the corrected table prices even the smallest network over the target) and the rounds measured
    so far are kept, as `corrected_unreachable` records. Returns the kept round's architecture, the
    table it was found with and the record; a round's `table_factor` is the factor applied to the
    table, the aim at the window's middle included.
    """
    tolerance = table_error(table)
    base, factor = table, 1.0
    aim = 1.0 - undershoot / 2.0  # a corrected search aims at the middle of the window (module docstring)
    history: list[VerifyRound] = []
    found: list[tuple[Architecture, Any]] = []
    ratios: list[float] = []
    corrected_unreachable = False
    while True:
        try:
            arch, predicted = search(table)
        except Unreachable:
            if not history:
                raise
            corrected_unreachable = True
            break
        measured = measure(arch)
        history.append(VerifyRound(len(history) + 1, predicted, measured, factor))
        found.append((arch, table))
        if (1.0 - undershoot) * target_ms <= measured <= target_ms or len(history) >= rounds:
            break
        ratios.append(measured / (predicted / factor))  # against the uncorrected table
        factor = statistics.median(ratios) / aim
        table = scaled(base, factor)
    under = [r for r in history if r.measured_ms <= target_ms]
    kept = max(under, key=lambda r: r.measured_ms) if under else min(history, key=lambda r: r.measured_ms)
    in_window = (1.0 - undershoot) * target_ms <= kept.measured_ms <= target_ms
    met = kept.measured_ms <= target_ms * (1.0 + tolerance)
    arch, table = found[kept.round - 1]
    return arch, table, Verification(tuple(history), met, tolerance, undershoot, kept.round, in_window,
                                     corrected_unreachable)
