"""Fitting a table's calibration from networks measured end to end.

A network's measured latency differs from the plain sum of its layers' isolated records: in a
network a layer runs with caches holding its neighbours' data, not its own from the previous run,
and a whole-network session plans memory across layers. How much differs per layer kind (a
compute-bound FFN loses little, a memory-bound attention block or downsample more), so the fit is
per kind:

    measured ≈ Σ_kind a_kind · Σ(records of that kind) + b

solved by least squares on *relative* residuals (each row divided by its measured latency), since
the table is judged by percentage error; scales are kept non-negative. With too few networks for
one scale per kind (fewer than kinds + 3), or when a per-kind scale leaves `CALIBRATION_SCALE`,
it falls back to one global `a · Σ + b`; kinds that are a small share of the total keep scale 1.

A fit is refused (`CalibrationError`, one line) when the networks cannot support one: fewer than
two distinct networks (two different layer sums; repeats of one network count once), repeats of
one network that disagree by more than `MAX_REPEAT_SPREAD`, a global scale outside
`CALIBRATION_SCALE`, or a fit whose own networks are off by more than `MAX_FIT_MAPE_PERCENT` on
average. Each of those means the measurements do not follow the table (another device, another
resolution, a busy machine, a typo), and a calibration fitted to them would be trusted for every
prediction after.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from lut.table import CALIBRATION_SCALE, MAX_LATENCY_MS, Calibration

# Networks beyond the number of fitted parameters before the per-kind fit is used: with fewer,
# the fit can pass (almost) exactly through the calibration networks and its residual no longer
# says anything about the networks it will price.
SPARE_NETWORKS = 3
# Kinds below this share of a network's summed latency (on average) keep scale 1: a near-constant
# part such as the head (0.1% of the total) is indistinguishable from the intercept, and a free
# scale on it fits noise (we saw 248x on the head of efficientformer_v2).
MIN_SHARE = 0.05
# Repeated measurements of one network (same layer sums) may differ by this share (max/min - 1):
# on this project's loaded 2-core machine one network measured up to 9% apart; 25% is no longer
# noise but another network, device or setting under the same name.
MAX_REPEAT_SPREAD = 0.25
# In-sample mean error above which a fit explains nothing: calibrations fitted here have 1-3%
# (per kind) and the analytic iPhone model 7% leave-one-out; the contradictory measurements of
# issue 19 gave 65.7%. Beyond 30% the measurements are noise (a busy host, a handful of timed
# runs) or belong to another table.
MAX_FIT_MAPE_PERCENT = 30.0


class CalibrationError(ValueError):
    """Measured networks that cannot support a calibration; the message is one line."""


def fit_calibration(sums_by_kind: Sequence[Mapping[str, float]], measured_ms: Sequence[float]) -> Calibration:
    """The calibration that best maps these networks' per-kind sums to their measured latencies;
    `CalibrationError` when they cannot support one (see the module docstring)."""
    if len(sums_by_kind) != len(measured_ms):
        raise ValueError("one per-kind sum per measured network")
    measured = np.asarray(measured_ms, dtype=np.float64)
    if not np.all((measured > 0) & (measured <= MAX_LATENCY_MS)):
        raise CalibrationError(f"measured latencies must be in (0, {MAX_LATENCY_MS:g}] ms")
    _check_networks(sums_by_kind, measured)
    all_kinds = sorted({kind for sums in sums_by_kind for kind in sums})
    totals = np.array([sum(sums.values()) for sums in sums_by_kind])
    share = {kind: np.mean([sums.get(kind, 0.0) for sums in sums_by_kind] / totals) for kind in all_kinds}
    kinds = [kind for kind in all_kinds if share[kind] >= MIN_SHARE]
    minor = [kind for kind in all_kinds if kind not in kinds]
    calibration = None
    if len(kinds) > 1 and len(measured) >= len(kinds) + 1 + SPARE_NETWORKS:
        columns = np.array([[sums.get(kind, 0.0) for kind in kinds] for sums in sums_by_kind])
        fixed = np.array([sum(sums.get(kind, 0.0) for kind in minor) for sums in sums_by_kind])
        scales, intercept = _relative_least_squares(columns, measured, fixed)
        if all(float(scale) in CALIBRATION_SCALE for scale in scales):  # else a kind's scale is not identified
            fitted = {kind: float(scales[i]) for i, kind in enumerate(kinds)} | {kind: 1.0 for kind in minor}
            calibration = Calibration("per-kind scales + intercept", fitted, float(intercept), len(measured))
    if calibration is None:
        scales, intercept = _relative_least_squares(totals[:, None], measured, np.zeros(len(measured)))
        if float(scales[0]) not in CALIBRATION_SCALE:
            raise CalibrationError(f"the fit drives the scale of the layer sums to {float(scales[0]):.3g} (accepted: "
                                   f"{CALIBRATION_SCALE.describe()}): the measured latencies do not grow with the table's")
        calibration = Calibration("global scale + intercept", {kind: float(scales[0]) for kind in all_kinds},
                                  float(intercept), len(measured))
    predicted = np.array([calibration.apply(sums) for sums in sums_by_kind])
    errors = np.abs(predicted - measured) / measured
    if errors.mean() * 100 > MAX_FIT_MAPE_PERCENT:
        raise CalibrationError(f"the best fit is still off by {errors.mean() * 100:.1f}% on average on its own "
                               f"{len(measured)} networks (accepted: {MAX_FIT_MAPE_PERCENT:g}%): the measurements are too "
                               "noisy (a busy host, too few timed runs) or not of this table's networks")
    return Calibration(
        calibration.method,
        calibration.scales,
        calibration.intercept_ms,
        calibration.fitted_on,
        {"fit_mape_percent": round(float(errors.mean() * 100), 3), "fit_max_error_percent": round(float(errors.max() * 100), 3)},
    )


def _check_networks(sums_by_kind: Sequence[Mapping[str, float]], measured: np.ndarray) -> None:
    """Refuse fewer than 2 distinct networks and repeats of one network that disagree."""
    groups: dict[tuple, list[float]] = {}
    for sums, ms in zip(sums_by_kind, measured):
        identity = tuple(sorted((kind, round(float(total), 9)) for kind, total in sums.items()))
        groups.setdefault(identity, []).append(float(ms))
    distinct_totals = {round(sum(total for _, total in identity), 9) for identity in groups}
    if len(groups) < 2 or len(distinct_totals) < 2:
        raise CalibrationError(f"needs at least 2 distinct networks (different layer sums), got {len(groups)} among "
                               f"{len(measured)} measurement(s)")
    for values in groups.values():
        spread = max(values) / min(values) - 1
        if spread > MAX_REPEAT_SPREAD:
            raise CalibrationError(f"one network was measured {len(values)} times from {min(values):.4g} to "
                                   f"{max(values):.4g} ms ({spread:.0%} apart; accepted: {MAX_REPEAT_SPREAD:.0%}): "
                                   "the measurements contradict each other")


def _relative_least_squares(columns: np.ndarray, measured: np.ndarray, fixed: np.ndarray) -> tuple[np.ndarray, float]:
    """min Σ ((X·a + f + b − y) / y)² with a ≥ 0, b free: NNLS on [X, 1, −1] rows scaled by 1/y."""
    from scipy.optimize import nnls

    design = np.hstack([columns, np.ones((len(measured), 1)), -np.ones((len(measured), 1))]) / measured[:, None]
    solution, _ = nnls(design, (measured - fixed) / measured)
    count = columns.shape[1]
    return solution[:count], float(solution[count] - solution[count + 1])
