"""`lut.validate.measure_calibration_split`: both sets measured interleaved, the fit on one only."""

from __future__ import annotations

import pytest

from lut.calibration import fit_calibration
from lut.table import load_table
from lut.validate import measure_calibration_split, sample_architectures
from search_spaces import get_space


def test_sets_are_interleaved_in_time_and_fitted_on_the_calibration_set(fake_device, edgevit_table):
    table = load_table(edgevit_table)
    space = get_space("edgevit")
    calibration = sample_architectures(space, 4, seed=1, resolution=64, num_classes=1000)
    validation = sample_architectures(space, 2, seed=2, resolution=64, num_classes=1000)
    measured_order = []
    profiler = fake_device.profiler

    def recording_profiler(*args, **kwargs):  # which network is measured when
        inner = profiler(*args, **kwargs)
        network = inner.profile_network

        def profile_network(arch):
            measured_order.append(arch)
            return network(arch)

        inner.profile_network = profile_network
        return inner

    fake_device.profiler = recording_profiler
    ticks = []
    split = measure_calibration_split(fake_device, table, calibration, validation, lambda: ticks.append(1))

    assert measured_order == [calibration[0], validation[0], calibration[1], validation[1], calibration[2], calibration[3]]
    assert len(ticks) == 6
    assert [row.arch for row in split.calibration_rows] == calibration
    assert [row.arch for row in split.validation_rows] == validation
    measured = [row.measured_ms for row in split.calibration_rows]
    assert split.calibration == fit_calibration([row.sums_by_kind for row in split.calibration_rows], measured)
    assert split.global_fit == fit_calibration([{"all": row.naive_ms} for row in split.calibration_rows], measured)
    # on the fake clock a network costs exactly what its layers cost plus one call: the fit predicts it
    for row in split.validation_rows:
        assert split.calibration.apply(row.sums_by_kind) == pytest.approx(row.measured_ms, rel=0.05)
