"""`python -m lut.predict`: print the predicted latency of architecture files.

    python -m lut.predict --device ort-cpu found.yaml other.yaml     # the device's default table
    python -m lut.predict --lut table.json found.yaml                # a given table file

One line per file on stdout: `<file>: <ms> ms (naive sum <ms> ms, <table>)`. A file that is not a
valid architecture, or one the table cannot price (missing keys, listed), is bad input: one line
on stderr, exit 2, after every other file has been printed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from search_spaces import Architecture, ArchitectureError, get_space
from search_spaces.command_line import EXIT_BAD_INPUT, EXIT_OK, ArgumentParser, UsageError, run_command

from lut.devices import DeviceError, get_device, list_devices
from lut.table import LatencyTable, MissingKeysError, TableError, load_table

PROG = "python -m lut.predict"


def _table_for(args, arch: Architecture, cache: dict[tuple[str, int], LatencyTable]) -> LatencyTable:
    if args.lut:
        key = ("", 0)
        if key not in cache:
            cache[key] = load_table(args.lut)
        return cache[key]
    key = (arch.space, arch.resolution)
    if key not in cache:
        device = get_device(args.device, threads=args.threads)
        cache[key] = device.default_table(get_space(arch.space), arch.resolution)
    return cache[key]


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Print the predicted latency of architecture YAML files.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--device", help=f"use the device's default table; one of: {', '.join(list_devices())}")
    source.add_argument("--lut", help="a latency table file")
    parser.add_argument("--threads", type=int, default=1, help="threads of the device's table (default 1)")
    parser.add_argument("files", nargs="+", metavar="ARCH.yaml")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.device:
        try:
            get_device(args.device, threads=args.threads)
        except DeviceError as error:
            raise UsageError(f"--device: {error}") from None
    cache: dict[tuple[str, int], LatencyTable] = {}
    if args.lut:  # a bad table is refused before any file is read
        try:
            cache[("", 0)] = load_table(args.lut)
        except TableError as error:
            raise UsageError(f"--lut: {error}") from None
    failures = 0
    for path in args.files:
        try:
            arch = Architecture.from_yaml(Path(path))
            try:
                get_space(arch.space).validate(arch)
            except KeyError:
                raise ArchitectureError("space", f"unknown space {arch.space!r}") from None
            table = _table_for(args, arch, cache)
            predicted, naive = table.predict(arch), table.predict_naive(arch)
        except TableError as error:
            raise UsageError(str(error)) from None
        except (ArchitectureError, MissingKeysError) as error:
            failures += 1
            message = str(error)
            print(message if message.startswith(f"{path}:") else f"{path}: {message}", file=sys.stderr)
            continue
        meta = table.metadata
        print(f"{path}: {predicted:.3f} ms (naive sum {naive:.3f} ms, {meta.device} {meta.space}@{meta.resolution}, {table.calibration.method})")
    return EXIT_BAD_INPUT if failures else EXIT_OK


if __name__ == "__main__":
    sys.exit(run_command(main, prog=PROG))
