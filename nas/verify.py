"""The measured check of a search (`nas.search --verify`): predict, measure, correct, search again.

A latency table predicts; the device decides. After a search on a device that measures on this
host (`ort-cpu`, `torch-cpu`, `torch-cuda`), the found network is built, exported the way the
device runs it (ONNX for onnxruntime) and timed end to end with the table's own settings (threads,
batch, timing). When the measurement exceeds the target by more than the table's own error, the
table is corrected with what was measured and the search runs again, at most `rounds` times.

The correction is one multiplicative factor on the table's calibration (every per-kind scale and
the intercept), the median measured/predicted ratio over every network measured so far: with one
to three points, a single factor is all the data can pin down, and the table's relative shape
(which layers cost more than which) is what the search needs from it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from search_spaces import Architecture
from search_spaces.command_line import UsageError

#: the table's error when its calibration records none (lut.validate's ±10% band)
DEFAULT_TABLE_ERROR = 0.10
DEFAULT_ROUNDS = 3


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
    """The outcome: the accepted rounds' record and whether the last measurement met the target."""

    rounds: tuple[VerifyRound, ...]
    met: bool
    tolerance: float

    def to_meta(self) -> dict[str, Any]:
        last = self.rounds[-1]
        return {"measured_latency_ms": round(last.measured_ms, 6), "met": self.met,
                "tolerance": round(self.tolerance, 6), "rounds": [r.to_dict() for r in self.rounds]}


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
        raise UsageError(f"--verify: device {meta.device!r} is a model, not something this host can run; "
                         "verify on a measured device (ort-cpu, torch-cpu, torch-cuda)")
    usable, reason = device.availability()
    if not usable:
        raise UsageError(f"--verify: device {meta.device!r} is not usable here: {reason}")
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
) -> tuple[Architecture, Any, Verification]:
    """Search with `table`, measure the result, correct the table and search again until the
    measurement is within the table's error of `target_ms` or `rounds` searches were made.

    `search(table)` returns (architecture, predicted ms); `measure(arch)` the measured ms.
    Returns the last architecture, the table it was found with and the record.
    """
    tolerance = table_error(table)
    base, factor, history = table, 1.0, []
    ratios: list[float] = []
    while True:
        arch, predicted = search(table)
        measured = measure(arch)
        history.append(VerifyRound(len(history) + 1, predicted, measured, factor))
        met = measured <= target_ms * (1.0 + tolerance)
        if met or len(history) >= rounds:
            return arch, table, Verification(tuple(history), met, tolerance)
        ratios.append(measured / (predicted / factor))  # against the uncorrected table
        factor = statistics.median(ratios)
        table = scaled(base, factor)
