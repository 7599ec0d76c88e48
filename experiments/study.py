"""What the study runners under `experiments/` share: their settings check, the reference variants
they price, the versions they record, progress lines and plots as PNG bytes.

A runner (`experiments/<study>/run.py`, started from the repository root) puts the root on
`sys.path` and imports this module as `experiments.study`: the studies are not an installed package.
"""

from __future__ import annotations

import argparse
import importlib
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from search_spaces import Architecture, get_space
from search_spaces.limits import SEED

ROOT = Path(__file__).resolve().parents[1]


def relative(path: Path) -> str:
    """`path` relative to the repository root where it lies inside it (else as given)."""
    path = Path(path)
    return str(path.relative_to(ROOT)) if path.is_absolute() and path.is_relative_to(ROOT) else str(path)


def seed_list_refusal(seeds: Any) -> str | None:
    """Why `seeds` is not a list of distinct training seeds (what a study config accepts), or None."""
    whole = lambda seed: isinstance(seed, int) and not isinstance(seed, bool)  # noqa: E731
    if isinstance(seeds, list) and seeds and all(whole(seed) and seed in SEED for seed in seeds) \
            and len(set(seeds)) == len(seeds):
        return None
    return f"give a list of distinct whole numbers, each {SEED.describe()}"


def log(message: str) -> None:
    """One progress line on stderr, flushed (studies run for minutes, often under `nohup`)."""
    print(message, file=sys.stderr, flush=True)


def config_path_from_command_line(description: str, default: Path, argv: Sequence[str] | None = None) -> Path:
    """The resolved `--config` path of a runner's command line; also selects matplotlib's Agg
    backend (studies draw their plots into files, on machines without a display)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", type=Path, default=default, help="study settings (default: %(default)s)")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    return args.config.resolve()


def load_settings(path: Path, keys: Sequence[str], optional: Sequence[str] = ()) -> dict[str, Any]:
    """A study's YAML settings with exactly the top-level `keys`, and any of `optional`; a missing
    or unknown key, or a file that is not a mapping, ends the run with one line naming it."""
    import yaml

    if not Path(path).is_file():
        raise SystemExit(f"--config {path}: no such file")
    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise SystemExit(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise SystemExit(f"{path}: not a mapping of settings")
    missing = [key for key in keys if key not in config]
    unknown = sorted(set(config) - set(keys) - set(optional))
    if missing or unknown:
        raise SystemExit(f"{path}: " + (f"missing key {missing[0]!r}" if missing else f"unknown key(s) {unknown}"))
    return config


def write_json(path: Path, data: Any) -> None:
    """`data` as indented JSON at `path` (folders made), written atomically."""
    import json

    from search_spaces.files import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def read_json(path: Path) -> Any:
    import json

    return json.loads(path.read_text(encoding="utf-8"))


def shard(items: list, text: str | None) -> list:
    """Every n-th item from the i-th for `--shard i/n` (all items without it), so that n processes
    share a phase; a malformed value ends the run with one line."""
    if not text:
        return items
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and 1 <= int(index) <= int(count)):
        raise SystemExit(f"--shard {text}: give i/n with 1 <= i <= n")
    return items[int(index) - 1::int(count)]


class Claim:
    """A job taken by one of several processes that share a phase (`with Claim(path) as mine:`):
    `mine` is True when this process created the claim file `path` (it holds its PID), or took it
    over from a process that is no longer running (a killed run); False while a running process
    holds it. The file is removed on leaving the block, so a job left unfinished by a crash is
    free again. Claims live in a study's git-ignored `runs` folder: PIDs mean nothing elsewhere."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mine = False

    def __enter__(self) -> bool:
        import os

        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):  # a stale claim is removed once, then taken like a free one
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if _holder_running(self.path):
                    return False
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(handle, "w") as file:
                file.write(str(os.getpid()))
            self.mine = True
            return True
        return False

    def __exit__(self, *exc: object) -> None:
        if self.mine:
            self.path.unlink(missing_ok=True)


def _holder_running(path: Path) -> bool:
    from search_spaces.files import process_alive

    try:
        pid = int(path.read_text(encoding="utf-8").strip() or 0)
    except (OSError, ValueError):
        return True  # being written by the process that just created it
    return pid <= 0 or process_alive(pid)


class FileLock:
    """An exclusive `fcntl` lock on `path` for the block (`with FileLock(path):`): processes that
    read, merge and rewrite one shared file take turns, so none overwrites what another added."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: Any = None

    def __enter__(self) -> "FileLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a")
        fcntl.flock(self._handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        import fcntl

        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()


def exit_code_of(main: Any) -> int:
    """Run a runner's `main()`; a refusal (`SystemExit` with a message: bad settings, a bad option,
    a phase run too early) is printed as its one line and exits 2, as every latnas command does."""
    try:
        return int(main() or 0)
    except SystemExit as error:
        if isinstance(error.code, str):
            print(error.code, file=sys.stderr)
            return 2
        raise


def versions(*modules: str) -> dict[str, str]:
    """`module.__version__` of each named module, in the order given."""
    return {name: importlib.import_module(name).__version__ for name in modules}


def png_bytes(figure: Any, colours: int | None = None) -> bytes:
    """A matplotlib figure as PNG bytes (for an atomic write); the figure is closed. With `colours`,
    the image is quantised to that many (a plot of flat colours loses nothing visible at 256 and
    shrinks to about a third)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    if colours is None:
        return buffer.getvalue()
    from PIL import Image

    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB").quantize(colors=colours)
    buffer = io.BytesIO()
    image.save(buffer, format="png", optimize=True)
    return buffer.getvalue()


@dataclass(frozen=True)
class Variant:
    """One reference variant of one space, with its display name."""

    space: str
    reference: str
    name: str
    family: str

    def architecture(self) -> Architecture:
        return get_space(self.space).reference(self.reference)


def variants_of(families: Mapping[str, Mapping[str, Any]]) -> list[Variant]:
    """The configured reference variants (`{space: {label, variants}}`), checked against the spaces:
    a missing one is an error, a shipped one the config leaves out is reported."""
    variants = []
    for space_name, family in families.items():
        shipped = set(get_space(space_name).references())
        unknown = [v for v in family["variants"] if v not in shipped]
        if unknown:
            raise KeyError(f"{space_name} has no reference(s) {unknown}; shipped: {sorted(shipped)}")
        left_out = sorted(shipped - set(family["variants"]))
        if left_out:
            log(f"note: {space_name} references not in the config: {left_out}")
        for reference in family["variants"]:
            variants.append(Variant(space_name, reference, f"{family['label']}-{reference.upper()}", family["label"]))
    return variants
