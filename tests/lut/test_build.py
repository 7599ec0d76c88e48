"""Building: spec enumeration covers the space, journal + resume after a kill, the Ray path."""

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
    assert table.metadata.loadavg["start"] is not None and table.metadata.threads == 1


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
        "--runs", "3", "--warmup", "1", "--budget", "0.001", "--out", str(out),
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
