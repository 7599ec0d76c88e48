"""The lut commands: happy paths on the fake device, bad input as one line with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lut import build, predict, registry, validate
from lut.table import load_table
from search_spaces import get_space
from tests.cli_support import invoke
from tests.lut.conftest import FakeDevice  # noqa: F401  (registers the fake device)

QUICK = ["--runs", "3", "--warmup", "1", "--budget", "0.0001"]
EDGEVIT_SUBSET = ["--widths-subset", "36", "72", "144", "288"]


def run(module, argv, capsys):
    return invoke(module.main, module.PROG, argv, capsys)


def test_devices_lists_every_device(capsys):
    code, out, _ = run(registry, [], capsys)
    assert code == 0
    for name in ("ort-cpu", "torch-cpu", "torch-cuda"):
        assert name in out
    assert "needs:" in out


def test_build_predict_validate_on_the_fake_device(edgevit_table, tmp_path, capsys):
    table = load_table(edgevit_table)
    assert table.metadata.device == "fake-cpu" and table.metadata.resolution == 64
    arch_path = tmp_path / "arch.yaml"
    space = get_space("edgevit")
    arch = space.reference("xxs")
    arch.__class__(arch.space, 64, 1000, arch.stages).to_yaml(arch_path)
    code, out, _ = run(predict, ["--lut", str(edgevit_table), str(arch_path)], capsys)
    assert code == 0 and "ms (naive sum" in out
    report, plot = tmp_path / "report.json", tmp_path / "plot.png"
    argv = ["--device", "fake-cpu", "--space", "edgevit", "--resolution", "64", "--lut", str(edgevit_table)]
    code, out, err = run(validate, [*argv, *QUICK, "--samples", "6", "--refit", "--report", str(report), "--plot", str(plot)], capsys)
    assert code == 0, err
    data = json.loads(report.read_text())
    assert data["calibration_networks"] == 3 and data["evaluated_networks"] == 3
    # the fake clock makes the sum exact: nothing for a calibration to correct
    assert data["naive"]["mape_percent"] == pytest.approx(0.0, abs=1e-6)
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert load_table(edgevit_table).calibration.fitted_on == 3  # --refit saved into the table


def test_default_table_comes_from_the_table_folder(edgevit_table, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LATNAS_TABLES", str(tmp_path))
    device = registry.get_device("fake-cpu")
    target = device.default_table_path("edgevit", 64)
    target.write_text(edgevit_table.read_text())
    assert device.default_table(get_space("edgevit"), 64).sha256 == load_table(edgevit_table).sha256
    with pytest.raises(Exception, match="python -m lut.build --device fake-cpu --space edgenext"):
        device.default_table("edgenext")


@pytest.mark.parametrize(
    "module, argv, words",
    [
        (build, ["--device", "gpu9", "--space", "edgevit"], "unknown device 'gpu9'"),
        (build, ["--device", "torch-cuda", "--space", "edgevit"], "'torch-cuda' is not available here"),
        (build, ["--device", "ort-cpu", "--space", "mobilenet"], "unknown space 'mobilenet'"),
        (build, ["--device", "ort-cpu", "--space", "edgevit", "--resolution", "100"], "multiple of 32"),
        (build, ["--device", "ort-cpu", "--space", "edgevit", "--threads", "0"], "--threads: must be an integer in 1.."),
        (build, ["--device", "ort-cpu", "--space", "edgevit", "--widths-subset", "36"], "4 stages, got 1"),
        (build, ["--device", "ort-cpu", "--space", "edgevit", "--widths-subset", "37", "72", "144", "288"], "stage 1"),
        (build, ["--space", "edgevit"], "required: --device"),
        (predict, ["--lut", "/nonexistent/t.json", "a.yaml"], "no such file"),
        (predict, ["--device", "nope", "a.yaml"], "unknown device 'nope'"),
        (validate, ["--device", "ort-cpu", "--space", "edgevit", "--lut", "/nonexistent.json"], "no such file"),
        (validate, ["--device", "ort-cpu", "--space", "edgevit", "--plot", "x.pdf"], "expected a .png"),
        (validate, ["--device", "ort-cpu", "--space", "edgevit", "--refit", "--samples", "2"], "at least 4 samples"),
    ],
)
def test_bad_input_is_one_line_exit_2(module, argv, words, capsys):
    code, _, err = run(module, argv, capsys)
    assert code == 2
    assert words in err and len(err.strip().splitlines()) == 1, err


def test_predict_lists_missing_keys_and_bad_files(edgevit_table, tmp_path, capsys):
    space = get_space("edgevit")
    wrong_resolution = tmp_path / "r96.yaml"
    space.smallest(96, 1000).to_yaml(wrong_resolution)
    broken = tmp_path / "broken.yaml"
    broken.write_text("schema: [unclosed\n")
    code, _, err = run(predict, ["--lut", str(edgevit_table), str(wrong_resolution), str(broken)], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "has no record of" in lines[0] and "hw24x24" in lines[0]


def test_validate_refuses_a_table_of_another_space(edgevit_table, capsys):
    code, _, err = run(validate, ["--device", "fake-cpu", "--space", "edgenext", "--lut", str(edgevit_table)], capsys)
    assert code == 2 and "is for fake-cpu edgevit@64" in err


def test_build_refuses_an_unfinished_journal_without_resume(tmp_path, capsys):
    out = tmp_path / "t.json"
    (tmp_path / "t.json.journal.jsonl").write_text('{"schema": "latnas/lut-journal@1", "identity": {}}\n')
    code, _, err = run(build, ["--device", "fake-cpu", "--space", "edgevit", "--resolution", "64", "--out", str(out), *QUICK], capsys)
    assert code == 2 and "--resume" in err and not out.exists()


def test_entry_points_have_no_traceback(tmp_path):
    for module in ("lut.build", "lut.predict", "lut.validate", "lut.devices"):
        result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "usage:" in result.stdout, module
    result = subprocess.run(
        [sys.executable, "-m", "lut.predict", "--lut", str(tmp_path / "none.json"), "a.yaml"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
