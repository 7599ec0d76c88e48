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
far the window can be hit is a property of the host: on the 2-core test machine, two medians of 3
sessions of one network minutes apart agree within ±2.5% in only 15-25% of pairs
(`benchmarks/measurement_repeatability.py`), so no table makes a window 5% wide land 9 times in 10. Each measurement is the median of `MEASURE_SESSIONS` fresh
sessions (`measured_latency`; the network is exported once), since the session, not the timing loop, is where that spread comes
from (an ONNX Runtime session's memory placement).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from search_spaces import Architecture

#: the table's error when its calibration records none (lut.validate's ±10% band)
DEFAULT_TABLE_ERROR = 0.10
DEFAULT_ROUNDS = 3
#: a measurement more than this fraction under the target is re-searched with a corrected table
DEFAULT_UNDERSHOOT = 0.05
#: fresh sessions per measured network (the median is taken)
MEASURE_SESSIONS = 3


def measured_latency(device, arch: Architecture, sessions: int = MEASURE_SESSIONS) -> float:
    """The median p50 (ms) of `arch` over `sessions` fresh sessions of `device`, the network built
    and exported once (`lut.devices.Device.profile_network_sessions`)."""
    return statistics.median(record.p50_ms for record in device.profile_network_sessions(arch, sessions))


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

    @property
    def kept(self) -> VerifyRound:
        return self.rounds[(self.chosen or len(self.rounds)) - 1]

    def to_meta(self) -> dict[str, Any]:
        return {"measured_latency_ms": round(self.kept.measured_ms, 6), "met": self.met, "in_window": self.in_window,
                "tolerance": round(self.tolerance, 6), "undershoot": round(self.undershoot, 6),
                "chosen_round": self.chosen or len(self.rounds), "rounds": [r.to_dict() for r in self.rounds]}


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

    `search(table)` returns (architecture, predicted ms); `measure(arch)` the measured ms.
    Returns the kept round's architecture, the table it was found with and the record; a round's
    `table_factor` is the factor applied to the table, the aim at the window's middle included.
    """
    tolerance = table_error(table)
    base, factor = table, 1.0
    aim = 1.0 - undershoot / 2.0  # a corrected search aims at the middle of the window (module docstring)
    history: list[VerifyRound] = []
    found: list[tuple[Architecture, Any]] = []
    ratios: list[float] = []
    while True:
        arch, predicted = search(table)
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
    return arch, table, Verification(tuple(history), met, tolerance, undershoot, kept.round, in_window)
