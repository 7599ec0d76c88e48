"""Starting or joining a Ray cluster within a bounded time, and leaving nothing running behind.

`ray.init(address=...)` waits for minutes on an address where nothing answers, and a malformed one
(`256.1.1.1:1`) may hang the same way. `connect_ray` checks the address's syntax and that its port
accepts a TCP connection within `CONNECT_TIMEOUT_S` before handing it to Ray, so a bad address is
one line naming the option. A cluster started here is shut down on exit, SIGINT or SIGTERM (a
killed sweep otherwise leaves Ray's dashboard and runtime-env agents running), and a small reaper
process watches for SIGKILL, which no handler sees: when the command's end of a pipe closes without
a shutdown, it kills the processes Ray started.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import signal
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

from search_spaces.files import FileError

CONNECT_TIMEOUT_S = 5.0
_HOSTNAME = re.compile(r"^(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*$")


class ClusterError(FileError):
    """A Ray address that is malformed or does not answer; the message is one line."""


def parse_ray_address(address: str, option: str) -> tuple[str, int]:
    """(host, port) of `HOST:PORT` (also `ray://HOST:PORT`), or `ClusterError` naming `option`."""
    text = address.strip()
    if text.startswith("ray://"):
        text = text[len("ray://"):]
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ClusterError(f"{option}: expected HOST:PORT with a port in 1..65535, got {address[:80]!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if re.fullmatch(r"[\d.]+", host) or not _HOSTNAME.match(host):
            raise ClusterError(f"{option}: {host[:80]!r} is not an IP address or host name") from None
    return host, int(port_text)


def check_ray_address(address: str, option: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse, within about `timeout_s`, an address whose port does not accept a connection."""
    host, port = parse_ray_address(address, option)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except socket.gaierror:
        raise ClusterError(f"{option}: cannot resolve host {host!r}") from None
    except OSError as error:
        reason = "timed out" if isinstance(error, TimeoutError) else (error.strerror or type(error).__name__)
        raise ClusterError(f"{option}: no Ray cluster answers at {host}:{port} ({reason})") from None


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` in the process tree (from /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for parent in frontier for child in children.get(parent, [])]
        found.extend(frontier)
    return found


_REAPER = """
import os, signal, sys, time
sys.stdin.read()  # returns when the command exits, however it exits
pids = [int(p) for p in sys.argv[1:]]
def tree(roots):
    kids = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                parent = int(open(f"/proc/{name}/stat").read().rsplit(")", 1)[1].split()[1])
            except Exception:
                continue
            kids.setdefault(parent, []).append(int(name))
    found, frontier = list(roots), list(roots)
    while frontier:
        frontier = [c for p in frontier for c in kids.get(p, [])]
        found.extend(frontier)
    return found
victims = tree([p for p in pids if os.path.exists(f"/proc/{p}")])
for sig in (signal.SIGTERM, signal.SIGKILL):
    alive = []
    for pid in victims:
        try:
            os.kill(pid, sig)
            alive.append(pid)
        except OSError:
            pass
    if not alive:
        break
    time.sleep(0.5)
"""


def _start_reaper() -> subprocess.Popen | None:
    """A process that kills what Ray started here once this process is gone (Linux only)."""
    ours = [pid for pid in descendants(os.getpid())]
    if not ours or not Path("/proc").is_dir():
        return None
    return subprocess.Popen([sys.executable, "-c", _REAPER, *map(str, ours)], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True)


@contextlib.contextmanager
def ray_session(address: str | None, option: str, **local_settings: Any) -> Iterator[bool]:
    """Ray initialised for the block: joined at `address` (checked first) or started locally with
    `local_settings`; yields True when this call started it, and then shuts it down on leaving,
    also on SIGTERM (turned into SystemExit for the block's duration). An already initialised Ray
    is used as it is and left alone."""
    import ray

    if ray.is_initialized():
        yield False
        return
    if address:
        check_ray_address(address, option)
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        # a malformed address is a ValueError; one where no cluster answers ends in SystemExit
        except (ConnectionError, RuntimeError, TimeoutError, ValueError, SystemExit) as error:
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ClusterError(f"{option}: cannot connect to {address}: {first_line}") from None
    reaper = None
    if not address:
        settings = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
        ray.init(**{**settings, **local_settings})
        reaper = _start_reaper()
    previous = signal.getsignal(signal.SIGTERM)

    def _terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    try:
        signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: no handler, shutdown still runs on leaving
        previous = None
    try:
        yield True
    finally:
        ray.shutdown()
        if reaper is not None:
            reaper.stdin.close()  # the reaper kills anything left, then exits
            reaper.wait(timeout=30)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
