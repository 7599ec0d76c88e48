"""Command-line helpers the `lut` commands share: the device and its timing options, output checks
that also refuse an output naming one of the inputs, refusing options that would be ignored, and a
progress bar that appears only once work starts (the space, its resolution and a widths subset are
`search_spaces.command_line`'s). Bad input is one `UsageError` line.

Ranges (DESIGN.md's command-line contract): `--threads` 1..this host's cores
(`search_spaces.limits.thread_range`: more threads measure contention, not the device),
`--warmup` `WARMUP_RUNS`, `--runs` `TIMING_RUNS`, `--budget` `BUDGET_S` seconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from search_spaces.command_line import (
    ArgumentParser,
    UsageError,
    integer_in,
    number_in,
    parse_widths_subset,
    space_from_args,
)
from search_spaces.files import check_outputs, resolve_output
from search_spaces.limits import TIMING_RUNS, thread_range

from lut.devices import Device, DeviceError
from lut.profiler import BUDGET_S, WARMUP_RUNS, TimingSettings
from lut.registry import get_device, list_devices

#: the options `add_device_arguments` adds that only mean something when this host measures
TIMING_OPTIONS = ("--warmup", "--runs", "--budget")


def add_device_arguments(parser: ArgumentParser) -> None:
    """--device, --threads and the timing options, shared by build and validate. Their defaults are
    None so that a command can tell a given option from an unset one (`given_options`)."""
    parser.add_argument("--device", required=True, help=f"one of: {', '.join(list_devices())}")
    parser.add_argument("--threads", type=integer_in(thread_range()),
                        help=f"intra-op threads, 1..{thread_range().high} (this host's cores; default 1, recorded)")
    parser.add_argument("--warmup", type=integer_in(WARMUP_RUNS),
                        help=f"untimed calls per subject, {WARMUP_RUNS.low}..{WARMUP_RUNS.high} (default {TimingSettings.warmup})")
    parser.add_argument("--runs", type=integer_in(TIMING_RUNS),
                        help=f"minimum timed calls per subject, {TIMING_RUNS.low}..{TIMING_RUNS.high} "
                             f"(default {TimingSettings.min_runs})")
    parser.add_argument("--budget", type=number_in(BUDGET_S),
                        help=f"seconds of timed calls per subject, {BUDGET_S.low:g}..{BUDGET_S.high:g} "
                             f"(default {TimingSettings.budget_s})")


def timing_from_args(args: argparse.Namespace) -> TimingSettings:
    """The timing settings the arguments give (defaults for the options not given)."""
    runs = TimingSettings.min_runs if args.runs is None else args.runs
    return TimingSettings(
        TimingSettings.warmup if args.warmup is None else args.warmup,
        runs,
        max(runs, TimingSettings.max_runs),
        TimingSettings.budget_s if args.budget is None else args.budget,
    )


def device_from_args(args: argparse.Namespace, measuring: bool = True) -> Device:
    """The device the arguments name; `measuring` also requires that it can measure on this host."""
    try:
        device = get_device(args.device, threads=args.threads or 1, timing=timing_from_args(args))
        if measuring:
            device.require_available()
            if not device.measures:
                raise DeviceError(f"device {device.name!r} is a model: it measures nothing on this host")
    except DeviceError as error:
        raise UsageError(f"--device: {error}") from None
    return device


def given_options(args: argparse.Namespace, options: Sequence[str]) -> list[str]:
    """The options among `options` (`--wait-quiet`) that the command line set (not None / False)."""
    return [option for option in options if getattr(args, option.lstrip("-").replace("-", "_")) not in (None, False)]


def refuse_options(args: argparse.Namespace, options: Sequence[str], reason: str) -> None:
    """`UsageError` naming the first of `options` given: it would be silently ignored, for `reason`."""
    given = given_options(args, options)
    if given:
        also = f" (also given: {', '.join(given[1:])})" if len(given) > 1 else ""
        raise UsageError(f"{given[0]}: not used {reason}{also}")


def check_output_paths(outputs: Mapping[str, str | Path | None],
                       inputs: Mapping[str, str | Path | None] | None = None) -> dict[str, Path]:
    """`search_spaces.files.check_outputs` of `outputs` (option -> path), and none of them the same
    file as one of `inputs` (a report written over the table it reports on). Resolved paths."""
    resolved = check_outputs(outputs)
    for input_option, path in (inputs or {}).items():
        if path is None:
            continue
        source = resolve_output(path)
        for option, target in resolved.items():
            if target == source:
                raise UsageError(f"{option}: {outputs[option]} is the input of {input_option}; write it elsewhere")
    return resolved


class LazyProgress:
    """A tqdm bar on stderr made on the first step, so that a command refused before any work prints
    its one error line and nothing else. Call it as `progress(step=1, total=None)`; `close()` ends it."""

    def __init__(self, description: str, unit: str) -> None:
        self.description = description
        self.unit = unit
        self._bar: Any = None

    def __call__(self, step: int = 1, total: int | None = None) -> None:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(desc=self.description, unit=self.unit, file=sys.stderr, dynamic_ncols=True)
        if total is not None:
            self._bar.total = total
        self._bar.update(step)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


__all__ = [
    "TIMING_OPTIONS",
    "LazyProgress",
    "add_device_arguments",
    "check_output_paths",
    "device_from_args",
    "given_options",
    "parse_widths_subset",
    "refuse_options",
    "space_from_args",
    "timing_from_args",
]
