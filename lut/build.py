"""`python -m lut.build`: profile every layer spec a space can run, calibrate, write the latency table.

    python -m lut.build --device ort-cpu --space efficientformer_v2 [--resolution 224] [--threads 1]
                        [--widths-subset 24 40,48 80,96 160] [--out FILE] [--resume] [--ray [ADDRESS]]
                        [--calibrate N] [--seed N] [--wait-quiet [SECONDS]]

The distinct specs of the whole space (every width, block type, expansion and head count at every
place, every pair of neighbouring stage widths for the downsamples) come from probe architectures
walked through the family's own `layer_specs` (`enumerate_specs`), so no family rule is restated.
Each finished record is appended to a journal beside the output (`FILE.journal.jsonl`, one JSON
line per key, fsync'd); a killed build restarted with `--resume` profiles only what is missing.

Then the table is calibrated (`--calibrate N`, default `DEFAULT_CALIBRATION_NETWORKS`; 0 skips it):
N networks of the space (uniform and slimmed samples, `lut.validate.calibration_set`, spread over
the latency range the fresh table gives them, drawn from `--seed`) are measured end to end and
`lut.calibration.fit_calibration` fits the calibration stored in the table, the one
`lut.validate --refit` would fit. A fit the networks cannot support is refused with one line; the
layers stay in the journal, so `--resume` measures the networks again and `--resume --calibrate 0`
writes the table uncalibrated. The table is written atomically at the end, only if the loader
accepts it, and the journal removed, so a table file is complete or absent; `--out` (and its
journal) are checked before anything is measured.

Load: the host's /proc/loadavg before and after each phase (`layers`, `calibration`) goes into
the table's `metadata.loadavg`, and `metadata.build.load` says whether the 1-minute load ever
exceeded half the cores (`lut.devices.busy_load_threshold`); if so one warning line is printed,
since a busy host inflates every record. `--wait-quiet [SECONDS]` (default `DEFAULT_WAIT_QUIET_S`)
first waits, with a message, for the 1-minute load to fall to that threshold; if it has not after
SECONDS, the build is refused (exit 2) without measuring anything.

With `--ray` every spec is a Ray task that needs one unit of the custom resource named after the
device (`{"ort-cpu": 1}`): only hosts that carry the device take the work. An ADDRESS must answer
within seconds (`search_spaces.cluster.check_ray_address`); a local Ray started for the build is
shut down after it (`search_spaces.cluster.ray_session`). The calibration networks are measured
on this host: with a cluster of other device hosts, build with `--calibrate 0` and calibrate on a
device host (`lut.validate --refit`).

Ranges: `--threads` 1..this host's cores, `--warmup`, `--runs`, `--budget` as in `lut.command_line`,
`--resolution` `search_spaces.limits.RESOLUTION` and a multiple of the space's stride,
`--calibrate` 0 or 2..`SAMPLES.high`, `--seed` `SEED`, `--wait-quiet` `WAIT_QUIET_S` seconds. An
analytic device (`iphone12`) measures nothing, so the measuring options are refused for it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from search_spaces import LayerSpec, SearchSpace
from search_spaces.cluster import check_ray_address, ray_session
from search_spaces.command_line import EXIT_OK, ArgumentParser, UsageError, integer_in, run_command
from search_spaces.enumeration import enumerate_specs
from search_spaces.files import FileError, check_output_file, parse_json_document, read_input_text
from search_spaces.limits import MAX_TABLE_BYTES, RESOLUTION, SAMPLES, SEED, IntRange

from lut.calibration import CalibrationError, fit_calibration
from lut.command_line import (
    TIMING_OPTIONS,
    LazyProgress,
    add_device_arguments,
    check_output_paths,
    device_from_args,
    parse_widths_subset,
    refuse_options,
    space_from_args,
)
from lut.devices import Device, DeviceError, busy_load_threshold, load_1min, loadavg, wait_for_quiet
from lut.registry import device_class, get_device
from lut.table import LatencyRecord, LatencyTable, TableError, TableMetadata

PROG = "python -m lut.build"
JOURNAL_SCHEMA = "latnas/lut-journal@1"
#: networks measured end to end for the calibration by default: with 5 kinds a per-kind fit needs
#: kinds + 1 + 3 spare networks (`lut.calibration`), and each costs about a layer sweep of its size
DEFAULT_CALIBRATION_NETWORKS = 12
DEFAULT_WAIT_QUIET_S = 600
WAIT_QUIET_S = IntRange(1, 86_400)
#: every option that only means something when this host measures (refused for a model device)
MEASURING_OPTIONS = ("--threads", *TIMING_OPTIONS, "--resume", "--ray", "--calibrate", "--seed", "--wait-quiet")


# -- journal -----------------------------------------------------------------------------------
class Journal:
    """Append-only JSONL of finished records: a header line, then one `{key, record}` per line.

    Each line is flushed and fsync'd as it is written, so a kill loses at most the line being
    written; `read` ignores a torn last line. The header pins what is being built (device, its
    settings, space, resolution, classes, widths): resuming a different build is refused. A
    journal is read like every input (a regular file, size capped) and each record is checked
    like a table's.
    """

    def __init__(self, path: Path, identity: Mapping[str, Any]) -> None:
        self.path = path
        self.identity = dict(identity)

    def read(self) -> dict[str, LatencyRecord]:
        records: dict[str, LatencyRecord] = {}
        if not self.path.exists():
            return records
        try:
            lines = read_input_text(self.path, "--resume", MAX_TABLE_BYTES).splitlines()
        except FileError as error:
            raise UsageError(str(error)) from None
        damaged = f"--resume: {self.path}: line {{}} is damaged; delete the journal to start over"
        for number, line in enumerate(lines):
            try:
                entry = parse_json_document(line, f"{self.path} line {number + 1}")
            except (FileError, ValueError):
                if number == len(lines) - 1 and number > 0:  # the line a kill cut short
                    break
                raise UsageError(damaged.format(number + 1)) from None
            if number == 0:
                if not isinstance(entry, dict) or entry.get("schema") != JOURNAL_SCHEMA or entry.get("identity") != self.identity:
                    raise UsageError(f"--resume: {self.path} belongs to a different build; "
                                     "delete it or build with the same settings")
                continue
            if not isinstance(entry, dict) or set(entry) != {"key", "record"} or not isinstance(entry["key"], str):
                raise UsageError(damaged.format(number + 1))
            try:
                records[entry["key"]] = LatencyRecord.from_dict(entry["record"], f"{self.path} line {number + 1}")
            except TableError as error:
                raise UsageError(f"--resume: {error}; delete the journal to start over") from None
        return records

    def start(self) -> None:
        """Begin a new journal (header only), replacing nothing: the caller checked it is absent."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._append({"schema": JOURNAL_SCHEMA, "identity": self.identity})

    def append(self, key: str, record: LatencyRecord) -> None:
        self._append({"key": key, "record": record.to_dict()})

    def _append(self, entry: Mapping[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as stream:
            if stream.tell() and not self._ends_with_newline():
                stream.write("\n")  # a torn line from a kill stays alone on its line
            stream.write(json.dumps(entry, sort_keys=True) + "\n")
            stream.flush()
            os.fsync(stream.fileno())

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as stream:
            stream.seek(-1, os.SEEK_END)
            return stream.read(1) == b"\n"

    def remove(self) -> None:
        if self.path.exists():
            self.path.unlink()


def journal_path(out: Path) -> Path:
    return out.with_name(out.name + ".journal.jsonl")


# -- load ----------------------------------------------------------------------------------------
class LoadLog:
    """/proc/loadavg before and after each phase of a build, and whether the host was busy
    (1-minute load above `threshold`, by default `busy_load_threshold()`) at any of them."""

    def __init__(self, threshold: float | None = None) -> None:
        self.threshold = busy_load_threshold() if threshold is None else threshold
        self.samples: dict[str, str] = {}

    def record(self, moment: str) -> None:
        self.samples[moment] = loadavg()

    def busiest(self) -> float | None:
        loads = [load for load in map(load_1min, self.samples.values()) if load is not None]
        return max(loads, default=None)

    def summary(self) -> dict[str, Any]:
        busiest = self.busiest()
        return {"busy_above_1min": self.threshold, "busiest_1min": busiest,
                "busy": busiest is not None and busiest > self.threshold}


def load_warning(table: LatencyTable) -> str | None:
    """The one warning line for a table built on a busy host (`metadata.build.load`), else None."""
    load = table.metadata.build.get("load") or {}
    if not load.get("busy"):
        return None
    return (f"warning: the 1-minute load reached {load['busiest_1min']:.2f} during the build, above "
            f"{load['busy_above_1min']:g} (half of the cores): the records may be inflated; "
            "rebuild on a quiet machine (--wait-quiet waits for one)")


# -- profiling, local or on Ray ------------------------------------------------------------------
def profile_locally(device: Device, specs: Sequence[LayerSpec]) -> Iterable[tuple[str, LatencyRecord]]:
    profiler = device.profiler()
    for spec in specs:
        yield spec.key(), profiler.profile_spec(spec)


def _profile_task(device_name: str, settings: dict[str, Any], spec: LayerSpec) -> tuple[str, dict[str, float]]:
    """Body of one Ray task: recreate the device from its settings, profile one spec."""
    device = get_device(device_name, **settings)
    return spec.key(), device.profile(spec).to_dict()


def profile_on_ray(device: Device, specs: Sequence[LayerSpec]) -> Iterable[tuple[str, LatencyRecord]]:
    """Submit each spec as a task needing one unit of the device's resource (Ray is initialised by
    the caller: `ray_session`); yield as they finish. A failed task is one `UsageError` line."""
    import ray

    # each task runs `threads` intra-op threads, so it reserves that many CPUs besides the device unit
    remote = ray.remote(_profile_task).options(num_cpus=device.threads, resources={device.name: 1}, max_retries=2)
    pending = [remote.remote(device.name, device.settings(), spec) for spec in specs]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        try:
            key, record = ray.get(done[0])
        except ray.exceptions.RayError as error:
            for task in pending:
                ray.cancel(task)
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            raise UsageError(f"--ray: a profiling task failed: {first_line}") from None
        yield key, LatencyRecord(**record)


def _ray_context(device: Device, use_ray: bool, address: str | None) -> contextlib.AbstractContextManager:
    """Ray for the build: joined at `address`, or a local one of this host's CPUs with one unit of
    the device per `threads` CPUs (shut down afterwards); nothing without `use_ray`."""
    if not use_ray:
        return contextlib.nullcontext()
    cores = os.cpu_count() or 1
    return ray_session(address or None, "--ray", num_cpus=cores, resources={device.name: max(1, cores // device.threads)})


# -- the build -----------------------------------------------------------------------------------
def build_table(
    device: Device,
    space: SearchSpace,
    resolution: int,
    out: Path,
    *,
    widths: Sequence[Sequence[int]] | None = None,
    num_classes: int | None = None,
    resume: bool = False,
    ray_address: str | None = None,
    use_ray: bool = False,
    progress: Callable[[int, int], Any] | None = None,
    calibrate: int = 0,
    seed: int = 0,
    calibration_progress: Callable[[], Any] | None = None,
    wait_quiet_s: float | None = None,
    report: Callable[[str], Any] | None = None,
) -> LatencyTable:
    """Profile every spec of `space` on `device`, journaling as it goes; with `calibrate` > 0 fit
    the calibration on that many networks measured end to end (`seed`); write the table to `out`.

    `wait_quiet_s` waits that long at most for a quiet host before measuring (`UsageError` if it
    stays busy); `report` gets the progress lines that are not bars (stderr by default).
    """
    report = report or (lambda line: print(line, file=sys.stderr))
    num_classes = num_classes or space.default_num_classes
    make_table = getattr(device, "make_table", None)
    if not device.measures and make_table is not None:
        if calibrate or wait_quiet_s is not None or use_ray or resume:
            raise UsageError(f"--device {device.name}: an analytic model measures nothing; no --calibrate, "
                             "--wait-quiet, --ray or --resume")
        # a model device (iphone12) prices every spec at once: nothing to profile or journal
        table = make_table(space, resolution, num_classes, widths)
        table.save(out)
        if progress:
            progress(len(table), len(table))
        return table
    specs = enumerate_specs(space, resolution, num_classes, widths)
    identity = {
        "device": device.name,
        "settings": device.settings(),
        "space": space.name,
        "resolution": resolution,
        "num_classes": num_classes,
        "widths": [list(w) for w in widths] if widths else None,
    }
    journal = Journal(journal_path(out), identity)
    if journal.path.exists() and not resume:
        raise UsageError(f"--out: {journal.path} exists (an unfinished build); pass --resume to continue it or delete it")
    done = journal.read() if resume else {}
    load = LoadLog()
    waited = None
    if wait_quiet_s is not None:
        started_waiting = time.monotonic()
        current = wait_for_quiet(wait_quiet_s, load.threshold, report)
        waited = round(time.monotonic() - started_waiting, 1)
        if current is not None and current > load.threshold:
            raise UsageError(f"--wait-quiet: the 1-minute load is still {current:.2f} after {wait_quiet_s:g} s "
                             f"(quiet: at most {load.threshold:g}, half of the cores); nothing was measured")
    todo = [spec for key, spec in specs.items() if key not in done]
    started = time.perf_counter()
    with _ray_context(device, use_ray and bool(todo), ray_address):
        if not journal.path.exists():
            journal.start()
        load.record("layers_start")
        if progress:
            progress(len(specs) - len(todo), len(specs))
        runner = profile_on_ray(device, todo) if use_ray and todo else profile_locally(device, todo)
        for key, record in runner:
            journal.append(key, record)
            done[key] = record
            if progress:
                progress(1, len(specs))
        load.record("layers_end")
    layer_seconds = round(time.perf_counter() - started, 1)

    def table_of(calibration_info: Mapping[str, Any] | None) -> LatencyTable:
        metadata = TableMetadata(
            space=space.name,
            resolution=resolution,
            num_classes=num_classes,
            date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            loadavg=dict(load.samples),
            build={
                "timing": device.timing.to_dict(),
                "specs": len(specs),
                "profiled_now": len(todo),
                "resumed": len(specs) - len(todo),
                "seconds": layer_seconds,
                "widths_subset": identity["widths"],
                "ray": (ray_address or "local") if use_ray else None,
                "profiler": "net of the empty-model call, interleaved, p50 of timed runs",
                "calibration": calibration_info,
                "load": load.summary(),
                "waited_for_quiet_s": waited,
            },
            **device.metadata_fields(),
        )
        return LatencyTable(metadata, {key: done[key] for key in specs}, source=str(out))

    table = table_of(None)
    if calibrate:
        table = _calibrate(device, table, space, widths, calibrate, seed, load, calibration_progress, journal.path)
        table = table_of({"networks": calibrate, "seed": seed}).with_calibration(table.calibration)
    try:
        table.check()
    except TableError as error:
        raise UsageError(f"{error}; the records stay in {journal.path} (--resume)") from None
    table.save(out)
    journal.remove()
    return table


def _calibrate(device: Device, table: LatencyTable, space: SearchSpace, widths: Sequence[Sequence[int]] | None,
               count: int, seed: int, load: LoadLog, progress: Callable[[], Any] | None, journal: Path) -> LatencyTable:
    """`table` with the calibration fitted on `count` networks measured end to end (see the module)."""
    from lut.validate import calibration_set, measure_networks

    keep = (f"the layers stay in {journal}: --resume measures the networks again, "
            "--resume --calibrate 0 writes the table without a calibration")
    started = time.perf_counter()
    load.record("calibration_start")
    archs = calibration_set(table, count, seed, widths)
    rows = measure_networks(device, table, archs, progress)
    load.record("calibration_end")
    try:
        calibration = fit_calibration([row.sums_by_kind for row in rows], [row.measured_ms for row in rows])
        calibration = dataclasses.replace(calibration, fit={**calibration.fit, "seconds": round(time.perf_counter() - started, 1)})
        return table.with_calibration(calibration).check()
    except (CalibrationError, TableError) as error:
        raise UsageError(f"--calibrate: no calibration from {len(rows)} networks: {error}; {keep}") from None


def calibration_count(text: str) -> int:
    """--calibrate: 0 (no calibration) or 2..SAMPLES.high networks."""
    value = integer_in(IntRange(0, SAMPLES.high))(text)
    if value == 1:
        raise argparse.ArgumentTypeError(f"must be 0 (no calibration) or 2..{SAMPLES.high} networks, got 1")
    return value


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Profile every layer spec of a search space, calibrate, write a latency table.")
    add_device_arguments(parser)
    parser.add_argument("--space", required=True, help="search space name")
    parser.add_argument("--resolution", type=integer_in(RESOLUTION),
                        help=f"input resolution, {RESOLUTION.low}..{RESOLUTION.high} and a multiple of the space's stride "
                             "(default: the space's)")
    parser.add_argument(
        "--widths-subset",
        nargs="+",
        metavar="W[,W...]",
        help="one comma-separated width list per stage: profile only those widths (a cheaper, partial table)",
    )
    parser.add_argument("--out", help="table file (default: the device's table folder, see lut.devices)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted build from its journal")
    parser.add_argument(
        "--ray", nargs="?", const="", default=None, metavar="ADDRESS",
        help="profile as Ray tasks (a local cluster of this host's CPUs without ADDRESS; an ADDRESS must answer)",
    )
    parser.add_argument(
        "--calibrate", type=calibration_count, metavar="N",
        help=f"networks measured end to end to fit the table's calibration (default {DEFAULT_CALIBRATION_NETWORKS}; "
             f"0: none, the naive layer sum; else 2..{SAMPLES.high})",
    )
    parser.add_argument("--seed", type=integer_in(SEED), help=f"seed of the calibration networks, {SEED.low}..{SEED.high} (default 0)")
    parser.add_argument(
        "--wait-quiet", type=integer_in(WAIT_QUIET_S), nargs="?", const=DEFAULT_WAIT_QUIET_S, metavar="SECONDS",
        help=f"first wait up to SECONDS (default {DEFAULT_WAIT_QUIET_S}; {WAIT_QUIET_S.low}..{WAIT_QUIET_S.high}) for the "
             "1-minute load to fall to half the cores; refuse (exit 2, nothing measured) if it does not",
    )
    parser.add_argument(
        "--compute-units",
        choices=("all", "cpu_and_ne", "cpu_only"),
        help="--device coreml only: Core ML compute units to measure with (default all); --out is then the bundle DIR",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cls = device_class(args.device)
    except DeviceError as error:
        raise UsageError(f"--device: {error}") from None
    own_build = getattr(cls, "build_command", None)
    if own_build is not None:  # a device that builds its own way (coreml: a bundle of ML programs)
        return own_build(args)
    if args.compute_units:
        raise UsageError("--compute-units: only for --device coreml")
    space, resolution = space_from_args(args.space, args.resolution)
    if not cls.measures:
        refuse_options(args, MEASURING_OPTIONS, f"with --device {args.device}: an analytic model measures nothing")
    if args.seed is not None and args.calibrate == 0:
        raise UsageError("--seed: not used with --calibrate 0 (it draws the calibration networks)")
    device = device_from_args(args, measuring=cls.measures)
    widths = parse_widths_subset(space, args.widths_subset) if args.widths_subset else None
    out = check_output_paths({"--out": args.out or device.default_table_path(space, resolution)})["--out"]
    check_output_file(journal_path(out), "--out")
    if args.ray:
        check_ray_address(args.ray, "--ray")  # before anything is started or written
    calibrate = (DEFAULT_CALIBRATION_NETWORKS if args.calibrate is None else args.calibrate) if cls.measures else 0

    layers = LazyProgress(f"{device.name} {space.name}@{resolution}", "spec")
    networks = LazyProgress("calibration networks", "net")

    def network_measured() -> None:
        layers.close()  # the layer bar is finished once the first network is measured
        networks()

    try:
        table = build_table(
            device,
            space,
            resolution,
            out,
            widths=widths,
            resume=args.resume,
            use_ray=args.ray is not None,
            ray_address=args.ray or None,
            progress=layers,
            calibrate=calibrate,
            seed=args.seed or 0,
            calibration_progress=network_measured,
            wait_quiet_s=args.wait_quiet,
        )
    finally:
        layers.close()
        networks.close()
    took = table.metadata.build.get("seconds")
    calibration = table.calibration
    how = (f", calibrated on {calibration.fitted_on} networks (fit MAPE {calibration.fit.get('fit_mape_percent')}%)"
           if calibrate else ", not calibrated (--calibrate 0)" if cls.measures else "")
    print(f"wrote {out} ({len(table)} records{f', {took} s' if took is not None else ', analytic model'}{how})", file=sys.stderr)
    warning = load_warning(table)
    if warning:
        print(warning, file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_command(main, prog=PROG))
