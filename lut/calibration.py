"""Fitting a table's calibration from networks measured end to end.

A network's measured latency differs from the plain sum of its layers' isolated records: in a
network a layer runs with caches holding its neighbours' data, not its own from the previous run,
and a whole-network session plans memory across layers. How much differs per layer kind (a
compute-bound FFN loses little, a memory-bound attention block or downsample more), so the fit is
per kind:

    measured ≈ Σ_kind a_kind · Σ(records of that kind) + b

solved by least squares on *relative* residuals (each row divided by its measured latency), since
the table is judged by percentage error; scales are kept non-negative. With too few networks for
one scale per kind (fewer than kinds + 3), it falls back to one global `a · Σ + b`; kinds that
are a small share of the total keep scale 1.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from lut.table import Calibration

# Networks beyond the number of fitted parameters before the per-kind fit is used: with fewer,
# the fit can pass (almost) exactly through the calibration networks and its residual no longer
# says anything about the networks it will price.
SPARE_NETWORKS = 3
# Kinds below this share of a network's summed latency (on average) keep scale 1: a near-constant
# part such as the head (0.1% of the total) is indistinguishable from the intercept, and a free
# scale on it fits noise (we saw 248x on the head of efficientformer_v2).
MIN_SHARE = 0.05


def fit_calibration(sums_by_kind: Sequence[Mapping[str, float]], measured_ms: Sequence[float]) -> Calibration:
    """The calibration that best maps these networks' per-kind sums to their measured latencies."""
    if len(sums_by_kind) != len(measured_ms) or len(measured_ms) < 2:
        raise ValueError("calibration needs at least 2 measured networks, one per-kind sum each")
    all_kinds = sorted({kind for sums in sums_by_kind for kind in sums})
    measured = np.asarray(measured_ms, dtype=np.float64)
    totals = np.array([sum(sums.values()) for sums in sums_by_kind])
    share = {kind: np.mean([sums.get(kind, 0.0) for sums in sums_by_kind] / totals) for kind in all_kinds}
    kinds = [kind for kind in all_kinds if share[kind] >= MIN_SHARE]
    minor = [kind for kind in all_kinds if kind not in kinds]
    per_kind = len(kinds) > 1 and len(measured) >= len(kinds) + 1 + SPARE_NETWORKS
    if per_kind:
        columns = np.array([[sums.get(kind, 0.0) for kind in kinds] for sums in sums_by_kind])
        fixed = np.array([sum(sums.get(kind, 0.0) for kind in minor) for sums in sums_by_kind])
        scales, intercept = _relative_least_squares(columns, measured, fixed)
        fitted = {kind: float(scales[i]) for i, kind in enumerate(kinds)} | {kind: 1.0 for kind in minor}
    else:
        scales, intercept = _relative_least_squares(totals[:, None], measured, np.zeros(len(measured)))
        fitted = {kind: float(scales[0]) for kind in all_kinds}
    calibration = Calibration(
        method="per-kind scales + intercept" if per_kind else "global scale + intercept",
        scales=fitted,
        intercept_ms=float(intercept),
        fitted_on=len(measured),
    )
    predicted = np.array([calibration.apply(sums) for sums in sums_by_kind])
    errors = np.abs(predicted - measured) / measured
    return Calibration(
        calibration.method,
        calibration.scales,
        calibration.intercept_ms,
        calibration.fitted_on,
        {"fit_mape_percent": round(float(errors.mean() * 100), 3), "fit_max_error_percent": round(float(errors.max() * 100), 3)},
    )


def _relative_least_squares(columns: np.ndarray, measured: np.ndarray, fixed: np.ndarray) -> tuple[np.ndarray, float]:
    """min Σ ((X·a + f + b − y) / y)² with a ≥ 0, b free: NNLS on [X, 1, −1] rows scaled by 1/y."""
    from scipy.optimize import nnls

    design = np.hstack([columns, np.ones((len(measured), 1)), -np.ones((len(measured), 1))]) / measured[:, None]
    solution, _ = nnls(design, (measured - fixed) / measured)
    count = columns.shape[1]
    return solution[:count], float(solution[count] - solution[count + 1])
