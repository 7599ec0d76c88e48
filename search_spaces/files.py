"""Reading inputs and writing outputs the way every latnas command must.

Inputs are opened only when they are regular files within a size cap (a FIFO or `/dev/zero` given
as a file would block or read forever), and structured documents are refused beyond a nesting
depth. Outputs are checked before any expensive work (not a directory, not a special file, not the
same file as another output of the run, the folder writable) and written atomically: to a temporary
file beside the target, fsynced, then renamed over it, so a reader never sees a half-written file
and a crash never loses the old one. A symlinked output is written through to its target. A
temporary file carries the writer's process id, so a later write cleans the ones whose writer died
(SIGKILL leaves them behind).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import yaml

from search_spaces.limits import MAX_NESTING


class FileError(Exception):
    """A file that cannot be read or written as asked; the message is the one line the user sees."""


def _default_mode() -> int:
    """The mode `open()` would give a new file: 0o666 less the process umask (mkstemp uses 0o600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_NEW_FILE_MODE = _default_mode()  # read once: changing the umask to read it is not thread-safe
_LEGACY_TEMPORARY_AGE_S = 3600.0  # a temporary without a process id is stale after an hour


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _label(what: str, path: Path) -> str:
    return f"{what}: {path}" if what else str(path)


# ---------------------------------------------------------------------------------------------- inputs


def check_input_file(path: str | os.PathLike[str], what: str, max_bytes: int) -> Path:
    """`path` as a regular file of at most `max_bytes`, else `FileError` naming `what` (the option)."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise FileError(f"{_label(what, path)}: no such file") from None
    except OSError as error:
        raise FileError(f"{_label(what, path)}: cannot read it ({error.strerror or type(error).__name__})") from None
    if not stat.S_ISREG(info.st_mode):
        expected = "a file" if stat.S_ISDIR(info.st_mode) else "a regular file"
        raise FileError(f"{_label(what, path)}: is {_kind(info.st_mode)}, expected {expected}")
    if info.st_size > max_bytes:
        raise FileError(f"{_label(what, path)}: {info.st_size} bytes, more than the {max_bytes} this input may have")
    return path


def read_input_bytes(path: str | os.PathLike[str], what: str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes` (checked before and while reading)."""
    path = check_input_file(path, what, max_bytes)
    try:
        with open(path, "rb") as stream:
            data = stream.read(max_bytes + 1)
    except OSError as error:
        raise FileError(f"{_label(what, path)}: cannot read it ({error.strerror or type(error).__name__})") from None
    if len(data) > max_bytes:  # grew after the check
        raise FileError(f"{_label(what, path)}: more than the {max_bytes} bytes this input may have")
    return data


def read_input_text(path: str | os.PathLike[str], what: str, max_bytes: int) -> str:
    """`read_input_bytes` decoded as UTF-8; undecodable bytes are a `FileError`, never echoed."""
    data = read_input_bytes(path, what, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FileError(f"{_label(what, Path(path))}: not UTF-8 text") from None


def nesting_depth(data: Any, limit: int = MAX_NESTING) -> int:
    """The depth of nested lists/mappings in `data`, counting stops once it exceeds `limit`."""
    depth, level = 0, [data]
    while level and depth <= limit:
        containers = [item for item in level if isinstance(item, (list, tuple, dict))]
        if not containers:
            break
        depth += 1
        level = [child for item in containers for child in (item.values() if isinstance(item, dict) else item)]
    return depth


def _check_nesting(data: Any, where: str) -> Any:
    if nesting_depth(data) > MAX_NESTING:
        raise FileError(f"{where}: nested deeper than {MAX_NESTING} levels")
    return data


def _bracket_depth(text: str) -> int:
    """An upper bound of a JSON/flow-YAML document's bracket nesting, found without parsing it."""
    depth = deepest = 0
    for match in re.finditer(r"[\[\]{}]", text):
        depth = depth + 1 if match.group() in "[{" else max(0, depth - 1)
        deepest = max(deepest, depth)
        if deepest > MAX_NESTING:
            break
    return deepest


def parse_json_document(text: str, where: str) -> Any:
    """JSON text as Python data; malformed or too deeply nested text is a `FileError` naming `where`."""
    if _bracket_depth(text) > MAX_NESTING:
        raise FileError(f"{where}: nested deeper than {MAX_NESTING} levels")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise FileError(f"{where}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})") from None
    except RecursionError:
        raise FileError(f"{where}: nested deeper than {MAX_NESTING} levels") from None
    return _check_nesting(data, where)


def parse_yaml_document(text: str, where: str) -> Any:
    """Safe-loaded YAML (no tags that construct objects); nesting bounded like JSON."""
    if _bracket_depth(text) > MAX_NESTING:
        raise FileError(f"{where}: nested deeper than {MAX_NESTING} levels")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise FileError(f"{where}: malformed YAML{at}: {getattr(error, 'problem', None) or 'not valid YAML'}") from None
    except RecursionError:
        raise FileError(f"{where}: nested deeper than {MAX_NESTING} levels") from None
    return _check_nesting(data, where)


# ---------------------------------------------------------------------------------------------- outputs


def resolve_output(path: str | os.PathLike[str]) -> Path:
    """Where writing `path` lands: through symlinks to their targets, made absolute."""
    return Path(os.path.realpath(os.fspath(path)))


def _check_folder(folder: Path, what: str, path: Path) -> None:
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise FileError(f"{_label(what, path)}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FileError(f"{_label(what, path)}: cannot write into {existing} (permission denied)")


def check_output_file(path: str | os.PathLike[str], what: str) -> Path:
    """The target `path` resolves to, checked to be writable as a regular file (`FileError` otherwise)."""
    given = Path(path)
    target = resolve_output(given)
    if target.exists() or target.is_symlink():
        try:
            mode = target.stat().st_mode
        except OSError as error:
            raise FileError(f"{_label(what, given)}: cannot use it ({error.strerror})") from None
        if not stat.S_ISREG(mode):
            if stat.S_ISDIR(mode):
                raise FileError(f"{_label(what, given)}: is a directory, expected a file path")
            raise FileError(f"{_label(what, given)}: is {_kind(mode)}; refusing to replace it")
    _check_folder(target.parent, what, given)
    return target


def check_output_directory(path: str | os.PathLike[str], what: str) -> Path:
    """The folder `path` resolves to, checked to be (or to be creatable as) a writable directory."""
    given = Path(path)
    target = resolve_output(given)
    if target.exists() and not target.is_dir():
        raise FileError(f"{_label(what, given)}: exists and is not a directory")
    _check_folder(target if target.exists() else target.parent, what, given)
    return target


def check_outputs(files: Mapping[str, str | os.PathLike[str] | None],
                  directories: Mapping[str, str | os.PathLike[str] | None] | None = None) -> dict[str, Path]:
    """Check every output a run will write, before the run: option name -> resolved path.

    Refuses directories given as files, special files, an unwritable folder, and two options that
    name the same file (or a file inside an output directory). Cleans the stale temporaries of
    earlier, killed writers of the same outputs. Options given as None are skipped.
    """
    resolved: dict[str, Path] = {}
    for what, path in files.items():
        if path is not None:
            resolved[what] = check_output_file(path, what)
    folders = {what: check_output_directory(path, what) for what, path in (directories or {}).items() if path is not None}
    seen: dict[Path, str] = {}
    for what, target in resolved.items():
        if target in seen:
            raise FileError(f"{what}: {files[what]} is the same file as {seen[target]}; give each output its own path")
        for folder_option, folder in folders.items():
            if folder in target.parents:
                raise FileError(f"{what}: {files[what]} lies inside the output directory of {folder_option}")
        seen[target] = what
    for target in resolved.values():
        clean_stale_temporaries(target)
    return {**resolved, **folders}


def _temporary_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}-"


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?:(?P<pid>\d+)-)?[A-Za-z0-9_]+\.tmp$")


def process_alive(pid: int) -> bool:
    """Whether a process with this PID runs on this machine (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def clean_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries of `path` (files or folders `.NAME.PID-XXXX.tmp` beside it) whose writer
    process is gone; the removed paths are returned. Nameless-pid ones go after an hour."""
    target = resolve_output(path)
    removed = []
    try:
        candidates = list(target.parent.glob(f".{glob_escape(target.name)}.*.tmp"))
    except OSError:
        return removed
    for candidate in candidates:
        match = _TEMPORARY.match(candidate.name)
        if match is None or match.group("name") != target.name:
            continue
        pid = match.group("pid")
        try:
            stale = (not process_alive(int(pid))) if pid else time.time() - candidate.lstat().st_mtime > _LEGACY_TEMPORARY_AGE_S
            if not stale or int(pid or 0) == os.getpid():
                continue
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate)
            else:
                candidate.unlink()
            removed.append(candidate)
        except OSError:
            continue
    return removed


def glob_escape(name: str) -> str:
    """`name` with glob's special characters escaped."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def make_temporary_directory(path: str | os.PathLike[str]) -> Path:
    """A fresh staging folder beside `path` (resolved), named so `clean_stale_temporaries` knows it."""
    target = resolve_output(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=_temporary_prefix(target.name), suffix=".tmp", dir=target.parent))


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to a temporary file beside `path`'s target, fsync it, then rename it over the target.

    A symlink is written through (the link stays, its target is replaced); a special file or a
    directory at `path` is a `FileError` and is left alone. The file gets the permissions a plain
    `open(path, "w")` would give it, not mkstemp's private 0o600.
    """
    target = check_output_file(path, "")
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(target)
    handle, temporary = tempfile.mkstemp(prefix=_temporary_prefix(target.name), suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            os.fchmod(stream.fileno(), _NEW_FILE_MODE)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """`write_bytes_atomic` of UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))


class LineFile:
    """A text output written as a growing list of lines and republished atomically.

    `append` starts from the lines already in the file (a resumed run); `publish` replaces the file
    with everything so far, at most once per `min_interval_s` (never before the forced final publish
    when that is infinite). A run that is killed leaves the last published version (or the old
    file) intact, never a torn one.
    """

    def __init__(self, path: str | os.PathLike[str], *, append: bool = False, max_bytes: int = 1 << 30,
                 min_interval_s: float = 0.0) -> None:
        self.path = Path(path)
        self.min_interval_s = min_interval_s
        self._lines: list[str] = []
        if append and self.path.exists():
            text = read_input_text(self.path, "", max_bytes)
            self._lines = [line + "\n" for line in text.splitlines()]
        self._published_at = -float("inf")
        self._dirty = False

    def write_line(self, line: str) -> None:
        self._lines.append(line.rstrip("\n") + "\n")
        self._dirty = True
        self.publish()

    def publish(self, force: bool = False) -> None:
        now = time.monotonic()
        due = self.min_interval_s != float("inf") and now - self._published_at >= self.min_interval_s
        if not force and not (self._dirty and due):
            return
        write_text_atomic(self.path, "".join(self._lines))
        self._published_at, self._dirty = now, False
