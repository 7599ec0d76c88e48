"""SIGKILL in the middle of `nas.search --trace` and of `nas.sweep`: every pre-existing output is
intact afterwards, no process of ours is left running, and the next run removes the temporaries
the killed one left."""

from __future__ import annotations

import json
import os
import signal
import time

from search_spaces.cluster import descendants
from tests.reliability.harness import (
    kill_processes,
    kill_session,
    live_processes,
    run_module,
    snapshot,
    start_module,
    wait_for,
)

SEARCH = ["--target-latency", "1.2ms", "--device", "iphone12", "--strategy", "random"]


def _dead_pid() -> int:
    pid = 4_000_000  # above Linux's pid_max default (4194304 is the hard limit): never a live process
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def _kill(process) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def test_a_killed_search_leaves_the_old_trace_and_output_and_the_next_run_cleans_up(tmp_path):
    trace, out = tmp_path / "trace.jsonl", tmp_path / "found.yaml"
    trace.write_text('{"an": "earlier trace"}\n')
    out.write_text("an earlier result\n")
    stale = tmp_path / f".trace.jsonl.{_dead_pid()}-x1y2z3.tmp"  # what a killed writer leaves
    stale.write_text("half a trace")
    before = snapshot([trace, out])
    process = start_module("nas.search", [*SEARCH, "--budget", "100000", "--trace", trace, "--out", out], tmp_path)
    try:
        time.sleep(8.0)  # imports done, evaluating: the kill lands mid-search
        assert process.poll() is None, process.stderr.read()
    finally:
        _kill(process)
    assert snapshot([trace, out]) == before
    completed = run_module("nas.search", [*SEARCH, "--budget", "2", "--trace", trace, "--out", out], tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert not stale.exists()
    assert [json.loads(line)["action"] for line in trace.read_text().splitlines()] and out.read_text().startswith("schema")
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_killed_search_with_state_keeps_a_whole_trace_and_resumes(tmp_path):
    trace, state = tmp_path / "trace.jsonl", tmp_path / "state.json"
    argv = [*SEARCH, "--budget", "12", "--trace", trace, "--state", state]
    process = start_module("nas.search", argv, tmp_path)
    try:
        wait_for(lambda: state.exists() and len(json.loads(state.read_text())["history"]) >= 3, 120, "three evaluations")
    finally:
        _kill(process)
    recorded = len(json.loads(state.read_text())["history"])
    lines = trace.read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # whole lines only
    assert recorded - 1 <= len(lines) <= recorded
    completed = run_module("nas.search", argv, tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert len(json.loads(state.read_text())["history"]) == 12
    assert 11 <= len(trace.read_text().splitlines()) <= 13


def test_a_killed_sweep_leaves_no_ray_process_and_no_lost_output(tmp_path):
    out = tmp_path / "sweep"
    out.mkdir()
    keep = out / "notes.txt"
    keep.write_text("the user's own notes\n")
    before = snapshot([keep])
    argv = ["--targets", "1.2ms,1.5ms", "--devices", "iphone12", "--strategies", "random", "--budget", "100000",
            "--out", out]
    process = start_module("nas.sweep", argv, tmp_path)
    ours: list[int] = []
    try:
        wait_for(lambda: (out / "sweep.json").exists(), 180, "the sweep to start Ray and claim its folder")
        time.sleep(2.0)
        ours = descendants(process.pid)
        assert ours, "a local Ray was started: its processes are the command's descendants"
        os.kill(process.pid, signal.SIGKILL)  # the command only: what happens to Ray is the point
        process.wait(timeout=30)
        wait_for(lambda: not live_processes(ours), 60, "Ray's processes to be reaped")
    finally:
        kill_session(process.pid)
        kill_processes(ours)
    assert snapshot([keep]) == before
    assert json.loads((out / "sweep.json").read_text())["schema"] == "latnas/sweep@1"
