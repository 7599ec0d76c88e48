"""SIGKILL during `python -m lut.build`, local and on a local Ray: the table the build would replace
stays byte-identical, nothing of the killed build keeps running, the journal holds whole records
only, and the next run (`--resume`) profiles what is missing, finishes, and removes the temporaries
a killed writer leaves beside its output (`.NAME.<pid>-XXXX.tmp`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

from lut.build import journal_path
from lut.table import load_table
from search_spaces.cluster import descendants
from tests.reliability.harness import (
    kill_processes,
    kill_session,
    live_processes,
    run_module,
    sigkill_when,
    snapshot,
    start_module,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
EARLIER = ROOT / "lut" / "tables" / "iphone12_efficientformer_v2_r224.json"  # the bytes an earlier build left at --out
# 23 specs of EfficientFormerV2 at 64 px on onnxruntime, a few timed runs each: seconds, not minutes,
# and long enough after the first journal record for the kill to land mid-build.
BUILD = ["--device", "ort-cpu", "--space", "efficientformer_v2", "--resolution", "64", "--widths-subset", "24", "40", "80",
         "160", "--runs", "5", "--warmup", "1", "--budget", "0.005", "--calibrate", "0"]


def _records(journal: Path) -> int:
    """Finished records in a journal (its header and a torn last line do not count)."""
    if not journal.exists():
        return 0
    count = 0
    for line in journal.read_text().splitlines()[1:]:
        try:
            count += "record" in json.loads(line)
        except json.JSONDecodeError:
            pass
    return count


def _check_journal(journal: Path) -> int:
    """Whole lines only, but for a last one a kill may have torn; the number of records."""
    lines = journal.read_text().splitlines()
    assert json.loads(lines[0])["schema"] == "latnas/lut-journal@1"
    for line in lines[1:-1]:
        assert set(json.loads(line)) == {"key", "record"}
    return _records(journal)


def _resume_and_check(tmp_path: Path, out: Path, killed_pid: int, recorded: int) -> None:
    """A stale temporary of the killed writer beside `out`; the resumed build finishes and removes it."""
    stale = tmp_path / f".{out.name}.{killed_pid}-k1lled.tmp"
    stale.write_text('{"half": "a table')
    completed = run_module("lut.build", [*BUILD, "--out", out, "--resume"], tmp_path, timeout_s=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    table = load_table(out)
    build = table.metadata.build
    assert build["resumed"] >= recorded and build["resumed"] + build["profiled_now"] == len(table) == build["specs"]
    assert not journal_path(out).exists() and not stale.exists()
    assert not [path.name for path in tmp_path.iterdir() if path.name.endswith(".tmp")]


def test_a_killed_build_keeps_the_earlier_table_and_the_next_run_resumes_and_cleans_up(tmp_path):
    out = tmp_path / "table.json"
    shutil.copy(EARLIER, out)
    before = snapshot([out])
    journal = journal_path(out)
    process = start_module("lut.build", [*BUILD, "--out", out], tmp_path)
    sigkill_when(process, lambda: _records(journal) >= 1, "the first journal record")
    assert snapshot([out]) == before  # not replaced, not torn
    recorded = _check_journal(journal)
    assert recorded >= 1
    _resume_and_check(tmp_path, out, process.pid, recorded)


def test_a_killed_ray_build_leaves_no_ray_process_and_the_earlier_table(tmp_path):
    out = tmp_path / "table.json"
    shutil.copy(EARLIER, out)
    before = snapshot([out])
    journal = journal_path(out)
    process = start_module("lut.build", [*BUILD, "--ray", "--out", out], tmp_path)
    ours: list[int] = []
    try:
        wait_for(lambda: _records(journal) >= 1 or process.poll() is not None, 180, "Ray to start and a first record")
        assert process.poll() is None, f"the build ended early: {process.stderr.read()[-2000:]}"
        ours = descendants(process.pid)
        assert ours, "a local Ray was started: its processes are the command's descendants"
        os.kill(process.pid, signal.SIGKILL)  # the command only: what happens to Ray is the point
        process.wait(timeout=30)
        wait_for(lambda: not live_processes(ours), 60, "Ray's processes to be reaped")
    finally:
        kill_session(process.pid)
        kill_processes(ours)
    assert process.returncode == -signal.SIGKILL
    assert snapshot([out]) == before
    assert _check_journal(journal) >= 1
