"""The bad-input contract as one assertion: exit 2 (or 3), one line on stderr, no traceback, and every
pre-existing output byte-identical afterwards. Used by the reliability corpus of every package."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from tests.cli_support import invoke

ROOT = Path(__file__).resolve().parents[2]


def snapshot(paths: Iterable[Path]) -> dict[Path, bytes | None]:
    """The bytes of each path (None for one that does not exist), directories listed recursively."""
    result: dict[Path, bytes | None] = {}
    for path in map(Path, paths):
        if path.is_dir():
            for item in sorted(path.rglob("*")):
                result[item] = item.read_bytes() if item.is_file() else b"<dir>"
        elif path.exists() and (path.is_file() or path.is_symlink()):
            result[path] = path.read_bytes()
        else:
            result[path] = None
    return result


def check_one_line(code: int, err: str, codes: Sequence[int] = (2,)) -> str:
    """The single stderr line of a refused command; asserts the contract on the way."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code in codes, f"exit {code}, expected {codes}; stderr: {err[-2000:]}"
    assert "Traceback" not in err, err[-4000:]
    assert len(lines) == 1, f"expected one line, got {len(lines)}: {err[-2000:]}"
    return lines[0]


def assert_refused(main: Callable, prog: str, argv: Sequence[str], capsys, *, keep: Iterable[Path] = (),
                   codes: Sequence[int] = (2,), match: str | None = None) -> str:
    """Run a command in-process and assert it refuses `argv` by the contract; returns its line."""
    keep = list(keep)
    before = snapshot(keep)
    code, _, err = invoke(main, prog, [str(item) for item in argv], capsys)
    line = check_one_line(code, err, codes)
    assert snapshot(keep) == before, "a pre-existing output changed"
    if match is not None:
        assert match in line, f"{match!r} not in {line!r}"
    return line


def run_module(module: str, argv: Sequence[str], cwd: Path, timeout_s: float = 120.0,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m module argv...` in a fresh process (for cases that could block the test process)."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *map(str, argv)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout_s, env=environment)


def start_module(module: str, argv: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `python -m module argv...` in its own process group (so its children can be found and killed)."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", module, *map(str, argv)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environment, start_new_session=True)


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.05)


def session_processes(session_id: int) -> list[int]:
    """Live processes of a session (what a killed command left running), zombies excluded."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, session = fields[0], int(fields[3])
        if session == session_id and state != "Z":
            pids.append(int(entry.name))
    return pids


def live_processes(pids: Iterable[int]) -> list[int]:
    """The processes of `pids` still running (zombies and vanished ones excluded; a process may
    exit between two reads of /proc, so every read tolerates its disappearance)."""
    alive = []
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                alive.append(pid)
        except (OSError, IndexError):
            pass
    return alive


def kill_processes(pids: Iterable[int]) -> None:
    for pid in live_processes(pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_session(session_id: int) -> None:
    for pid in session_processes(session_id):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def sigkill_when(process: subprocess.Popen, ready: Callable[[], bool], what: str, timeout_s: float = 180.0) -> None:
    """SIGKILL `process`'s group once `ready()` holds (it must still be running then), and wait
    until no process of its session is left; whatever survives is killed on the way out."""
    try:
        wait_for(lambda: ready() or process.poll() is not None, timeout_s, what)
        assert process.poll() is None, f"it ended before {what}: {process.stderr.read()[-2000:] if process.stderr else ''}"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        kill_session(process.pid)
    assert process.returncode == -signal.SIGKILL
    wait_for(lambda: not session_processes(process.pid), 10, "the killed session's processes to go")
