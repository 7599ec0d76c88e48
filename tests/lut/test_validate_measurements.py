"""`lut.validate --measurements`: networks measured elsewhere (a phone, published figures) as
calibration points, for devices that cannot measure on this host."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from lut import load_table
from lut.validate import PROG, main
from search_spaces import get_space
from tests.cli_support import invoke

SHIPPED = Path(__file__).resolve().parents[2] / "lut" / "tables" / "iphone12_efficientformer_v2_r224.json"


def _run(argv, capsys):
    return invoke(main, PROG, argv, capsys)


def _csv(tmp_path, text):
    path = tmp_path / "measured.csv"
    path.write_text(text)
    return path


def test_published_references_refit_into_the_user_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LATNAS_TABLES", str(tmp_path / "tables"))
    shipped_before = hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    get_space("efficientformer_v2").reference("s0").to_yaml(tmp_path / "s0.yaml")
    csv_path = _csv(tmp_path, "architecture,measured_ms\n# V2 README, iPhone 12\ns0.yaml,0.9\nref:s1,1.1\nref:s2,1.6\nref:l,2.7\n")
    report = tmp_path / "report.json"
    code, out, err = _run(
        ["--device", "iphone12", "--space", "efficientformer_v2", "--measurements", str(csv_path), "--refit", "--report", str(report)],
        capsys,
    )
    assert code == 0, err
    data = json.loads(report.read_text())
    assert data["refit"] is True and data["error_is"].startswith("in-sample")
    assert [row["measured_ms"] for row in data["networks"]] == [0.9, 1.1, 1.6, 2.7]
    assert data["calibrated"]["networks"] == 4
    refitted = load_table(tmp_path / "tables" / SHIPPED.name)
    assert refitted.calibration.fitted_on == 4
    assert hashlib.sha256(SHIPPED.read_bytes()).hexdigest() == shipped_before  # the package is never written


@pytest.mark.parametrize(
    "text, words",
    [
        ("arch,ms\nref:s0,0.9\n", "header must be 'architecture,measured_ms'"),
        ("architecture,measured_ms\nref:s0,fast\nref:s1,1.1\n", "line 2: measured_ms must be a positive number"),
        ("architecture,measured_ms\nref:s0,-1\nref:s1,1.1\n", "line 2: measured_ms must be a positive number"),
        ("architecture,measured_ms\nref:s0,0.9\nref:s9,1.1\n", "line 3: efficientformer_v2 has no reference 's9'"),
        ("architecture,measured_ms\nref:s0,0.9,extra\n", "line 2: expected 2 fields"),
        ("architecture,measured_ms\nmissing.yaml,0.9\nref:s1,1.1\n", "line 2: missing.yaml"),
        ("architecture,measured_ms\nref:s0,0.9\n", "at least 2 measured networks"),
    ],
)
def test_bad_measurement_files_are_one_line_exit_2(tmp_path, capsys, text, words):
    code, _, err = _run(
        ["--device", "iphone12", "--space", "efficientformer_v2", "--measurements", str(_csv(tmp_path, text))], capsys
    )
    assert code == 2
    assert words in err and len(err.strip().splitlines()) == 1
