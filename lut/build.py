"""`python -m lut.build`: profile every layer spec a space can run and write the latency table.

    python -m lut.build --device ort-cpu --space efficientformer_v2 [--resolution 224] [--threads 1]
                        [--widths-subset 24 40,48 80,96 160] [--out FILE] [--resume] [--ray [ADDRESS]]

The distinct specs of the whole space (every width, block type, expansion and head count at every
place, every pair of neighbouring stage widths for the downsamples) come from probe architectures
walked through the family's own `layer_specs` (`enumerate_specs`), so no family rule is restated.
Each finished record is appended to a journal beside the output (`FILE.journal.jsonl`, one JSON
line per key, fsync'd); a killed build restarted with `--resume` profiles only what is missing.
The table is written atomically at the end and the journal removed, so a table file is complete or
absent. With `--ray` every spec is a Ray task that needs one unit of the custom resource named
after the device (`{"ort-cpu": 1}`): only hosts that carry the device take the work.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from search_spaces import LayerSpec, SearchSpace
from search_spaces.enumeration import enumerate_specs
from search_spaces.command_line import EXIT_OK, ArgumentParser, UsageError, positive_int, run_command

from lut.devices import Device, DeviceError, loadavg
from lut.command_line import add_device_arguments, device_from_args, parse_widths_subset, space_from_args
from lut.registry import device_class, get_device
from lut.table import LatencyRecord, LatencyTable, TableMetadata

PROG = "python -m lut.build"
JOURNAL_SCHEMA = "latnas/lut-journal@1"


# -- journal -----------------------------------------------------------------------------------
class Journal:
    """Append-only JSONL of finished records: a header line, then one `{key, record}` per line.

    Each line is flushed and fsync'd as it is written, so a kill loses at most the line being
    written; `read` ignores a torn last line. The header pins what is being built (device, its
    settings, space, resolution, classes, widths): resuming a different build is refused.
    """

    def __init__(self, path: Path, identity: Mapping[str, Any]) -> None:
        self.path = path
        self.identity = dict(identity)

    def read(self) -> dict[str, LatencyRecord]:
        records: dict[str, LatencyRecord] = {}
        if not self.path.exists():
            return records
        lines = self.path.read_text("utf-8").splitlines()
        for number, line in enumerate(lines):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines) - 1:  # the line a kill cut short
                    break
                raise UsageError(f"{self.path}: line {number + 1} is damaged; delete the journal to start over") from None
            if number == 0:
                if entry.get("schema") != JOURNAL_SCHEMA or entry.get("identity") != self.identity:
                    raise UsageError(
                        f"{self.path} belongs to a different build ({entry.get('identity')}); "
                        "delete it or build with the same settings"
                    )
                continue
            records[entry["key"]] = LatencyRecord.from_dict(entry["record"])
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


# -- profiling, local or on Ray ------------------------------------------------------------------
def profile_locally(device: Device, specs: Sequence[LayerSpec]) -> Iterable[tuple[str, LatencyRecord]]:
    profiler = device.profiler()
    for spec in specs:
        yield spec.key(), profiler.profile_spec(spec)


def _profile_task(device_name: str, settings: dict[str, Any], spec: LayerSpec) -> tuple[str, dict[str, float]]:
    """Body of one Ray task: recreate the device from its settings, profile one spec."""
    device = get_device(device_name, **settings)
    return spec.key(), device.profile(spec).to_dict()


def profile_on_ray(device: Device, specs: Sequence[LayerSpec], address: str | None) -> Iterable[tuple[str, LatencyRecord]]:
    """Submit each spec as a task needing one unit of the device's resource; yield as they finish."""
    import ray

    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            # a local "cluster" of this host: 2 CPUs and 2 units of the device (one per core)
            ray.init(num_cpus=2, resources={device.name: 2}, include_dashboard=False, log_to_driver=False)
    # each task runs `threads` intra-op threads, so it reserves that many CPUs besides the device unit
    remote = ray.remote(_profile_task).options(num_cpus=device.threads, resources={device.name: 1}, max_retries=2)
    pending = [remote.remote(device.name, device.settings(), spec) for spec in specs]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        key, record = ray.get(done[0])
        yield key, LatencyRecord(**record)


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
) -> LatencyTable:
    """Profile every spec of `space` on `device`, journaling as it goes; write the table to `out`."""
    num_classes = num_classes or space.default_num_classes
    make_table = getattr(device, "make_table", None)
    if not device.measures and make_table is not None:
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
        raise UsageError(f"{journal.path} exists (an unfinished build); pass --resume to continue it or delete it")
    done = journal.read() if resume else {}
    if not journal.path.exists():
        journal.start()
    todo = [spec for key, spec in specs.items() if key not in done]
    start_load, started = loadavg(), time.perf_counter()
    if progress:
        progress(len(specs) - len(todo), len(specs))
    runner = profile_on_ray(device, todo, ray_address) if use_ray else profile_locally(device, todo)
    for key, record in runner:
        journal.append(key, record)
        done[key] = record
        if progress:
            progress(1, len(specs))
    metadata = TableMetadata(
        space=space.name,
        resolution=resolution,
        num_classes=num_classes,
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        loadavg={"start": start_load, "end": loadavg()},
        build={
            "timing": device.timing.to_dict(),
            "specs": len(specs),
            "profiled_now": len(todo),
            "resumed": len(specs) - len(todo),
            "seconds": round(time.perf_counter() - started, 1),
            "widths_subset": identity["widths"],
            "ray": (ray_address or "local") if use_ray else None,
            "profiler": "net of the empty-model call, interleaved, p50 of timed runs",
        },
        **device.metadata_fields(),
    )
    table = LatencyTable(metadata, {key: done[key] for key in specs}, source=str(out))
    table.save(out)
    journal.remove()
    return table




def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Profile every layer spec of a search space and write a latency table.")
    add_device_arguments(parser)
    parser.add_argument("--space", required=True, help="search space name")
    parser.add_argument("--resolution", type=positive_int, help="input resolution (default: the space's)")
    parser.add_argument(
        "--widths-subset",
        nargs="+",
        metavar="W[,W...]",
        help="one comma-separated width list per stage: profile only those widths (a cheaper, partial table)",
    )
    parser.add_argument("--out", help="table file (default: the device's table folder, see lut.devices)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted build from its journal")
    parser.add_argument(
        "--ray", nargs="?", const="", default=None, metavar="ADDRESS", help="profile as Ray tasks (local 2-CPU cluster without ADDRESS)"
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
        own_build = getattr(device_class(args.device), "build_command", None)
    except DeviceError as error:
        raise UsageError(f"--device: {error}") from None
    if own_build is not None:  # a device that builds its own way (coreml: a bundle of ML programs)
        return own_build(args)
    if args.compute_units:
        raise UsageError("--compute-units: only for --device coreml")
    space, resolution = space_from_args(args.space, args.resolution)
    device = device_from_args(args)
    widths = parse_widths_subset(space, args.widths_subset) if args.widths_subset else None
    out = Path(args.out) if args.out else device.default_table_path(space, resolution)
    if out.exists() and out.is_dir():
        raise UsageError(f"--out: {out} is a directory")

    from tqdm import tqdm

    bar = tqdm(desc=f"{device.name} {space.name}@{resolution}", unit="spec", file=sys.stderr, dynamic_ncols=True)

    def progress(step: int, total: int) -> None:
        bar.total = total
        bar.update(step)

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
            progress=progress,
        )
    finally:
        bar.close()
    took = table.metadata.build.get("seconds")
    print(f"wrote {out} ({len(table)} records{f', {took} s' if took is not None else ', analytic model'})", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_command(main, prog=PROG))
