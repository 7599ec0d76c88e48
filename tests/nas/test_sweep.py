"""Tests of `python -m nas.sweep`: trials as Ray Tune trials, their files, the summary, resume, bad input.

Every search runs on the iPhone 12 table with the proxy evaluator; sweeps hold one or two trials
and the finished two-target sweep is shared by the tests that only read or copy it.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from nas.sweep import (
    PROG,
    Combination,
    SweepConfig,
    format_ms,
    read_status,
    run_sweep,
)
from nas.sweep import main as sweep_main
from search_spaces import Architecture, get_space
from search_spaces.command_line import run_command
from tests.cli_support import invoke

SPACE = "efficientformer_v2"
TWO_TARGETS = ["--targets", "1.0ms,1.5ms", "--devices", "iphone12", "--space", SPACE]


def name_of(target: str) -> str:
    return f"{SPACE}-iphone12-{target}-mes-greedy"


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folder`: (content, mtime in ns)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def summary(folder: Path) -> tuple[list[dict[str, str]], list[str]]:
    """(CSV rows, markdown table rows without header and rule)."""
    with open(folder / "summary.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    table = [line for line in (folder / "summary.md").read_text().splitlines() if line.startswith("|")]
    return rows, table[2:]


def iphone12_table():
    from lut import get_device

    return get_device("iphone12").default_table(get_space(SPACE))


@pytest.fixture(scope="module")
def finished_sweep(local_ray, tmp_path_factory) -> Path:
    """A finished 2 targets × 1 device sweep (read-only for the tests; copy it to change it)."""
    out = tmp_path_factory.mktemp("sweep") / "two-targets"
    code = run_command(sweep_main, [*TWO_TARGETS, "--out", str(out)], prog=PROG)
    assert code == 0
    return out


# -- no Ray: names and the nas.search command line ------------------------------------------------
def test_trial_names_are_filesystem_safe_and_search_requests_depend_on_the_strategy(tmp_path):
    assert format_ms(1.0) == "1ms" and format_ms(1.5) == "1.5ms" and format_ms(0.01) == "0.01ms"
    greedy = Combination(SPACE, "ort-cpu", 1.5, "mes", "greedy")
    assert greedy.name == f"{SPACE}-ort-cpu-1.5ms-mes-greedy"
    assert Combination(SPACE, "a/b c", 1.5, "mes", "greedy").name == f"{SPACE}-a_b_c-1.5ms-mes-greedy"
    config = SweepConfig(out=tmp_path, targets_ms=(1.5,), devices=("iphone12",), max_params=6_000_000, budget=40,
                         seed=7, supernet="/ckpt.pt", data="digits")
    request = Combination(SPACE, "iphone12", 1.5, "mes", "greedy").request(config)
    assert request.strategy == "greedy" and request.budget is None
    assert request.target_latency == 1.5 and request.seed == 7 and request.max_params == 6_000_000
    assert str(request.evaluator.checkpoint) == "/ckpt.pt" and request.evaluator.data == "digits"
    assert request.predictor.metadata.device == "iphone12" and request.table_name.startswith("iphone12")
    evolution = Combination(SPACE, "iphone12", 1.5, "latency", "evolution").request(config)
    assert (evolution.strategy, evolution.budget, evolution.objective) == ("evolution", 40, "latency")


# -- finished sweeps ------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_targets_give_two_valid_architectures_within_budget(finished_sweep):
    table = iphone12_table()
    for target, budget in (("1ms", 1.0), ("1.5ms", 1.5)):
        arch = Architecture.from_yaml(finished_sweep / "trials" / f"{name_of(target)}.yaml")
        get_space(arch.space).validate(arch)
        assert table.predict(arch) <= budget
        status = json.loads((finished_sweep / "trials" / f"{name_of(target)}.status.json").read_text())
        assert status["status"] == "found" and status["latency_ms"] <= budget
        assert status["evaluator"] == "proxy" and status["evaluations"] > 0 and status["steps"] > 0
        steps = [json.loads(line) for line in (finished_sweep / status["trace"]).read_text().splitlines()]
        assert steps[0]["action"] == "start" and steps[-1]["latency"] <= budget
    rows, table_rows = summary(finished_sweep)
    assert [(r["target_ms"], r["status"]) for r in rows] == [("1", "found"), ("1.5", "found")]
    assert all((finished_sweep / r["file"]).is_file() and float(r["latency_ms"]) <= float(r["target_ms"]) for r in rows)
    assert len(table_rows) == 2 and all("| found |" in row for row in table_rows)
    record = json.loads((finished_sweep / "sweep.json").read_text())
    assert record["config"]["targets_ms"] == [1.0, 1.5] and len(record["runs"]) == 1


@pytest.mark.slow
def test_resume_runs_only_the_unfinished_trial(finished_sweep, tmp_path, capsys):
    out = tmp_path / "resumed"
    shutil.copytree(finished_sweep, out)  # copy2: contents and mtimes kept
    (out / "trials" / f"{name_of('1ms')}.status.json").unlink()  # that trial never finished
    kept = {k: v for k, v in snapshot(out).items() if name_of("1.5ms") in k and not k.startswith("ray_results")}
    assert len(kept) == 3  # yaml, trace, status

    code, _, err = invoke(sweep_main, PROG, [*TWO_TARGETS, "--out", str(out)], capsys)

    assert code == 0 and "running 1" in err
    after = snapshot(out)
    assert {k: after[k] for k in kept} == kept
    run = json.loads((out / "sweep.json").read_text())["runs"][-1]
    assert run["executed"] == [name_of("1ms")] and run["reused"] == [name_of("1.5ms")]
    assert [p.name for p in (out / run["ray_results"]).iterdir() if p.is_dir()] == [name_of("1ms")]
    assert read_status(out, Combination(SPACE, "iphone12", 1.0, "mes", "greedy")).status == "found"
    rows, table_rows = summary(out)
    assert [r["status"] for r in rows] == ["found", "found"] and len(table_rows) == 2


@pytest.mark.slow
def test_unreachable_target_names_the_smallest_latency_and_a_rerun_reuses_it(local_ray, tmp_path, capsys):
    out = tmp_path / "unreachable"
    code, _, err = invoke(sweep_main, PROG,
                          ["--targets", "0.01ms", "--devices", "iphone12", "--out", str(out)], capsys)
    assert code == 0, err
    name = f"{SPACE}-iphone12-0.01ms-mes-greedy"
    status = json.loads((out / "trials" / f"{name}.status.json").read_text())
    smallest = iphone12_table().predict(get_space(SPACE).smallest())
    assert status["status"] == "unreachable" and status["smallest_latency_ms"] == pytest.approx(smallest, abs=1e-4)
    assert "smallest latency" in status["message"] and not (out / "trials" / f"{name}.yaml").exists()

    # the Python API on the same folder: nothing left to run, the stored status comes back
    statuses = run_sweep(SweepConfig(out=out, targets_ms=(0.01,), devices=("iphone12",)))
    assert [(s.name, s.status, s.smallest_latency_ms) for s in statuses] == [(name, "unreachable", status["smallest_latency_ms"])]
    runs = json.loads((out / "sweep.json").read_text())["runs"]
    assert [r["executed"] for r in runs] == [[name], []]
    rows, _ = summary(out)
    assert [(r["status"], r["target_ms"]) for r in rows] == [("unreachable", "0.01")]


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_exits_1(local_ray, tmp_path, capsys):
    """The checkpoint is checked before Ray (it is sound here); the data folder is read only inside
    the trial, where its absence fails that trial alone."""
    from supernet import Supernet

    checkpoint = tmp_path / "v2.pt"
    Supernet.from_space(SPACE, num_classes=10, resolution=32).save(checkpoint)
    out = tmp_path / "failing"
    code, _, err = invoke(sweep_main, PROG,
                          ["--targets", "1.5ms", "--devices", "iphone12", "--supernet", str(checkpoint),
                           "--data", f"imagefolder:{tmp_path / 'no-such-folder'}", "--out", str(out)], capsys)
    name = f"{SPACE}-iphone12-1.5ms-mes-greedy"
    assert code == 1 and name in err.splitlines()[-1]
    status = json.loads((out / "trials" / f"{name}.status.json").read_text())
    assert status["status"] == "error" and "no-such-folder" in status["message"] and status["yaml"] is None
    assert not (out / "trials" / f"{name}.yaml").exists()
    rows, _ = summary(out)
    assert [(r["status"], r["file"]) for r in rows] == [("error", f"trials/{name}.status.json")]
    assert "no-such-folder" in rows[0]["message"]


def test_a_checkpoint_that_does_not_load_is_refused_before_ray(tmp_path, capsys):
    checkpoint = tmp_path / "not-a-supernet.pt"
    checkpoint.write_bytes(b"these bytes are no checkpoint")
    out = tmp_path / "refused"
    code, _, err = invoke(sweep_main, PROG,
                          ["--targets", "1.5ms", "--devices", "iphone12", "--supernet", str(checkpoint),
                           "--data", "digits", "--out", str(out)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--supernet" in err
    assert not out.exists()


# -- bad input: one line, exit 2, nothing in DIR touched -------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["--targets", "1.5parsecs", "--devices", "iphone12"], "1.5ms, 1500us, 0.0015s"),
    (["--targets", "1.0ms,-1ms", "--devices", "iphone12"], "'-1ms'"),
    (["--targets", " , ", "--devices", "iphone12"], "--targets"),
    (["--targets", "1.5ms", "--devices", "iphone12,nosuchdevice"], "nosuchdevice"),
    (["--targets", "1.5ms", "--devices", "iphone12", "--objectives", "mes,energy"], "energy"),
    (["--targets", "1.5ms", "--devices", "iphone12", "--strategies", "anneal"], "anneal"),
    (["--targets", "1.5ms", "--devices", "iphone12", "--space", "nospace"], "nospace"),
    (["--targets", "1.5ms", "--devices", "iphone12", "--max-params", "lots"], "6M"),
    (["--targets", "1.5ms", "--devices", "iphone12", "--supernet", "/nonexistent.pt", "--data", "digits"], "--supernet"),
    (["--targets", "1.5ms", "--devices", "iphone12", "--data", "digits"], "--supernet and --data"),
    (["--targets", "1.5ms", "--devices", "iphone12", "--cpus-per-trial", "0"], "--cpus-per-trial"),
])
def test_bad_input_exits_2_with_one_line_and_touches_nothing(argv, needle, tmp_path, capsys):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "notes.txt").write_text("kept")
    before = snapshot(out)
    code, stdout, err = invoke(sweep_main, PROG, [*argv, "--out", str(out)], capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1 and not stdout
    assert snapshot(out) == before


@pytest.mark.slow
@pytest.mark.parametrize("change, field", [
    (["--targets", "1.0ms"], "--targets"),
    (["--targets", "1.0ms,1.5ms", "--objectives", "latency"], "--objectives"),
    (["--targets", "1.0ms,1.5ms", "--seed", "1"], "--seed"),
])
def test_resume_with_other_settings_is_refused_naming_the_field(finished_sweep, change, field, capsys):
    before = snapshot(finished_sweep)
    code, _, err = invoke(sweep_main, PROG,
                          [*change, "--devices", "iphone12", "--out", str(finished_sweep)], capsys)
    assert code == 2 and err.count("\n") == 1 and field in err and "differs" in err
    assert snapshot(finished_sweep) == before
