"""Building: spec enumeration covers the space, journal + resume after a kill, the Ray path, the
default calibration, the load record and --wait-quiet."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lut import load_table
from lut.build import Journal, build_table, enumerate_specs, journal_path
from lut.command_line import parse_widths_subset
from search_spaces import get_space, list_spaces
from search_spaces.command_line import UsageError

from tests.lut.conftest import QUICK, FakeDevice


@pytest.mark.parametrize("space_name", list_spaces())
def test_enumeration_covers_sampled_and_reference_architectures(space_name):
    space = get_space(space_name)
    keys = set(enumerate_specs(space, 64, 10))
    rng = np.random.default_rng(0)
    archs = [space.sample(rng, 64, 10) for _ in range(40)] + [space.largest(64, 10), space.smallest(64, 10)]
    archs += [space.reference(name).__class__(space.name, 64, 10, space.reference(name).stages) for name in space.references()]
    for arch in archs:
        assert {spec.key() for spec in space.layer_specs(arch)} <= keys


def test_widths_subset_restricts_and_is_checked():
    space = get_space("efficientformer_v2")
    subset = parse_widths_subset(space, ["24", "40", "80,96", "160"])
    specs = enumerate_specs(space, 64, 10, subset)
    assert {s.in_channels for s in specs.values() if s.kind == "ffn"} == {24, 40, 80, 96, 160}
    for bad in (["24"], ["25", "40", "80", "160"], ["24", "40", "x", "160"]):
        with pytest.raises(UsageError):
            parse_widths_subset(space, bad)


def test_fake_build_writes_a_complete_table_and_no_journal(tmp_path):
    device = FakeDevice(timing=QUICK)
    space = get_space("edgevit")
    out = tmp_path / "t.json"
    table = build_table(device, space, 64, out, widths=[(36,), (72,), (144,), (288,)], num_classes=10)
    assert out.exists() and not journal_path(out).exists()
    assert load_table(out).records == table.records
    assert len(table) == table.metadata.build["specs"] > 5
    assert set(table.metadata.loadavg) == {"layers_start", "layers_end"} and table.metadata.threads == 1
    assert table.calibration.method == "identity"  # the API calibrates only when asked


def test_resume_skips_journaled_keys_and_refuses_another_build(tmp_path):
    device = FakeDevice(timing=QUICK)
    space = get_space("edgevit")
    widths = [(36,), (72,), (144,), (288,)]
    out = tmp_path / "t.json"
    specs = enumerate_specs(space, 64, 10, widths)
    identity = {
        "device": device.name,
        "settings": device.settings(),
        "space": space.name,
        "resolution": 64,
        "num_classes": 10,
        "widths": [list(w) for w in widths],
    }
    journal = Journal(journal_path(out), identity)
    journal.start()
    first = next(iter(specs))
    from lut.table import LatencyRecord

    marker = LatencyRecord(123.0, 123.0, 123.0, 123.0, 0.0, 1)
    journal.append(first, marker)
    with open(journal.path, "a") as stream:
        stream.write('{"key": "torn')  # a kill in the middle of a line
    with pytest.raises(UsageError, match="--resume"):
        build_table(device, space, 64, out, widths=widths, num_classes=10)
    table = build_table(device, space, 64, out, widths=widths, num_classes=10, resume=True)
    assert table.records[first] == marker  # taken from the journal, not profiled again
    assert table.metadata.build["resumed"] == 1
    journal.start()
    with pytest.raises(UsageError, match="different build"):
        build_table(device, space, 64, out, widths=widths[::-1] and [(48,), (72,), (144,), (288,)], num_classes=10, resume=True)


def test_killed_build_resumes_without_a_half_written_table(tmp_path):
    out = tmp_path / "v2.json"
    argv = [
        sys.executable, "-m", "lut.build", "--device", "ort-cpu", "--space", "efficientformer_v2",
        "--resolution", "64", "--widths-subset", "24", "40", "80", "160",
        "--runs", "3", "--warmup", "1", "--budget", "0.001", "--out", str(out), "--calibrate", "0",
    ]  # fmt: skip
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True)
    journal = journal_path(out)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if journal.exists() and len(journal.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not out.exists()
    done = len(journal.read_text().splitlines()) - 1
    assert done >= 3
    resumed = subprocess.run(argv + ["--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    table = load_table(out)
    assert not journal.exists()
    assert table.metadata.build["resumed"] >= done
    assert table.metadata.build["resumed"] + table.metadata.build["profiled_now"] == len(table) == table.metadata.build["specs"]


@pytest.mark.slow
def test_ray_build_of_a_small_space(ray_session, tmp_path):
    from lut.registry import get_device
    from lut.profiler import TimingSettings

    device = get_device("ort-cpu", timing=TimingSettings(warmup=1, min_runs=3, max_runs=3, budget_s=0.0))
    space = get_space("efficientformer_v1")  # 15 specs at 32 px: conv and attention kinds, token layouts
    widths = [(48,), (96,), (224,), (448,)]
    out = tmp_path / "ray.json"
    table = build_table(device, space, 32, out, widths=widths, num_classes=10, use_ray=True)
    assert set(table.records) == set(enumerate_specs(space, 32, 10, widths))
    assert table.metadata.build["ray"] == "local"
    assert json.loads(out.read_text())["schema"] == "latnas/lut@1"
    assert all(record.runs == 3 for record in table.records.values())


# -- calibration, load, --wait-quiet (fake device, in-process) ------------------------------------
EDGEVIT_ARGS = ["--device", "fake-cpu", "--space", "edgevit", "--resolution", "64",
                "--widths-subset", "36,48", "72", "144", "288", "--runs", "3", "--warmup", "1", "--budget", "0"]


def _build(argv, capsys):
    from lut import build
    from tests.cli_support import invoke

    return invoke(build.main, build.PROG, [*EDGEVIT_ARGS, *argv], capsys)


def test_the_command_calibrates_by_default_and_records_the_load_of_each_phase(tmp_path, capsys):
    out = tmp_path / "t.json"
    code, _, err = _build(["--out", str(out)], capsys)
    assert code == 0, err
    table = load_table(out)
    assert table.calibration.fitted_on == 12 and table.calibration.method != "identity"
    assert table.calibration.fit["fit_mape_percent"] < 1  # the fake clock: layers add up exactly
    assert set(table.metadata.loadavg) == {"layers_start", "layers_end", "calibration_start", "calibration_end"}
    assert table.metadata.build["calibration"] == {"networks": 12, "seed": 0}
    assert set(table.metadata.build["load"]) == {"busy_above_1min", "busiest_1min", "busy"}
    assert "calibrated on 12 networks" in err


def test_calibrate_0_writes_the_naive_table(tmp_path, capsys):
    out = tmp_path / "t.json"
    code, _, err = _build(["--out", str(out), "--calibrate", "0"], capsys)
    assert code == 0, err
    table = load_table(out)
    assert table.calibration.method == "identity" and table.metadata.build["calibration"] is None
    assert "not calibrated" in err


def test_calibration_networks_are_distinct_and_span_the_latency_range(tmp_path):
    from lut.validate import CANDIDATES_PER_NETWORK, calibration_architectures, calibration_set, within_widths

    widths = [(36, 48), (72,), (144,), (288,)]
    table = build_table(FakeDevice(timing=QUICK), get_space("edgevit"), 64, tmp_path / "t.json", widths=widths, num_classes=10)
    chosen = calibration_set(table, 6, seed=3, widths=widths)
    assert len({arch.stages for arch in chosen}) == 6
    pool = calibration_architectures(within_widths(get_space("edgevit"), widths), 6 * CANDIDATES_PER_NETWORK, 3 + 1000, 64, 10)
    latencies = [table.predict_naive(arch) for arch in pool]
    chosen_latencies = [table.predict_naive(arch) for arch in chosen]
    assert min(chosen_latencies) == min(latencies) and max(chosen_latencies) == max(latencies)


def test_a_refused_calibration_keeps_the_layers_for_resume(tmp_path, capsys, monkeypatch):
    from lut import build
    from lut.calibration import CalibrationError

    out = tmp_path / "t.json"

    def refuse(*args, **kwargs):
        raise CalibrationError("needs at least 2 distinct networks")

    monkeypatch.setattr(build, "fit_calibration", refuse)
    code, _, err = _build(["--out", str(out), "--calibrate", "3"], capsys)
    assert code == 2 and "--calibrate: no calibration from 3 networks" in err and "--resume --calibrate 0" in err
    assert not out.exists() and journal_path(out).exists()
    code, _, err = _build(["--out", str(out), "--resume", "--calibrate", "0"], capsys)
    assert code == 0, err
    table = load_table(out)
    assert table.metadata.build["profiled_now"] == 0 and table.calibration.method == "identity"
    assert not journal_path(out).exists()


def test_a_busy_host_is_recorded_and_warned_about_in_one_line(tmp_path, capsys, monkeypatch):
    from lut import build

    monkeypatch.setattr(build, "loadavg", lambda: "9.50 4.00 3.00 3/200 1234")
    out = tmp_path / "t.json"
    code, _, err = _build(["--out", str(out), "--calibrate", "0"], capsys)
    assert code == 0, err
    assert load_table(out).metadata.build["load"]["busy"] is True
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "9.50" in warnings[0]
    monkeypatch.setattr(build, "loadavg", lambda: "0.00 0.00 0.00 1/200 1234")
    code, _, err = _build(["--out", str(tmp_path / "quiet.json"), "--calibrate", "0"], capsys)
    assert code == 0 and "warning:" not in err


def test_wait_quiet_refuses_a_host_that_stays_busy_and_proceeds_on_a_quiet_one(tmp_path, capsys, monkeypatch):
    import lut.devices

    out = tmp_path / "t.json"
    monkeypatch.setattr(lut.devices, "load_1min", lambda text=None: 99.0)
    code, _, err = _build(["--out", str(out), "--calibrate", "0", "--wait-quiet", "1"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2 and lines[0].startswith("waiting up to 1 s")
    assert "--wait-quiet: the 1-minute load is still 99.00 after 1 s" in lines[1] and "nothing was measured" in lines[1]
    assert not out.exists() and not journal_path(out).exists()
    monkeypatch.setattr(lut.devices, "load_1min", lambda text=None: 0.0)
    code, _, err = _build(["--out", str(out), "--calibrate", "0", "--wait-quiet"], capsys)
    assert code == 0 and "waiting" not in err
    assert load_table(out).metadata.build["waited_for_quiet_s"] is not None


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--calibrate", "1"], "--calibrate: must be 0 (no calibration) or 2..100000"),
        (["--calibrate", "0", "--seed", "3"], "--seed: not used with --calibrate 0"),
        (["--wait-quiet", "0"], "--wait-quiet: must be an integer in 1..86400"),
    ],
)
def test_calibration_and_wait_options_are_checked(argv, words, tmp_path, capsys):
    code, _, err = _build(["--out", str(tmp_path / "t.json"), *argv], capsys)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
