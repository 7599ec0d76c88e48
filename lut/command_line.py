"""Command-line helpers the `lut` commands share: the device and its timing options (the space,
its resolution and a widths subset are `search_spaces.command_line`'s). Bad input is one
`UsageError` line."""

from __future__ import annotations

from search_spaces.command_line import ArgumentParser, UsageError, parse_widths_subset, positive_float, positive_int, space_from_args

from lut.devices import Device, DeviceError
from lut.profiler import TimingSettings
from lut.registry import get_device, list_devices


def add_device_arguments(parser: ArgumentParser) -> None:
    """--device, --threads and the timing options, shared by build and validate."""
    parser.add_argument("--device", required=True, help=f"one of: {', '.join(list_devices())}")
    parser.add_argument("--threads", type=positive_int, default=1, help="intra-op threads (default 1, recorded)")
    parser.add_argument("--warmup", type=positive_int, default=TimingSettings.warmup, help="untimed calls per subject")
    parser.add_argument("--runs", type=positive_int, default=TimingSettings.min_runs, help="minimum timed calls per subject")
    parser.add_argument(
        "--budget", type=positive_float, default=TimingSettings.budget_s, help="seconds of timed calls per subject (default 0.25)"
    )


def device_from_args(args, measuring: bool = True) -> Device:
    """The device the arguments name; `measuring` also requires that it can measure on this host."""
    timing = TimingSettings(args.warmup, args.runs, max(args.runs, TimingSettings.max_runs), args.budget)
    try:
        device = get_device(args.device, threads=args.threads, timing=timing)
        if measuring:
            device.require_available()
    except DeviceError as error:
        raise UsageError(f"--device: {error}") from None
    return device


__all__ = ["add_device_arguments", "device_from_args", "parse_widths_subset", "space_from_args"]
