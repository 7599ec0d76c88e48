"""`python -m lut.import`: per-layer Core ML measurements from a phone (or a Mac) into a latency table.

    python -m lut.import --manifest DIR/manifest.json --measurements measured.csv --out TABLE.json

The manifest is the one `python -m lut.build --device coreml` wrote beside the `.mlpackage`s. The
CSV has a header row and one row per manifest key:

    key,p50_ms[,p10_ms,p90_ms,mean_ms,std_ms,runs]

`key` and `p50_ms` are required (e.g. the median prediction time of the Xcode Core ML performance
report); the other columns are optional and may be left empty: a missing p10/p90/mean is the p50,
a missing std is 0 and missing runs 0 (unknown). Blank lines and lines starting with `#` are
skipped. Milliseconds must be positive numbers of at most 1e6 (std non-negative) with
p10 <= p50 <= p90, runs a non-negative integer. Every manifest key must be measured; keys the
manifest does not have, duplicate keys and unknown columns are refused, each with its line
number. The CSV is read as `lut.measurement_csv` reads every measurement file (a regular file,
size and field caps). The table (device `coreml`, build source `measured-on-device`) is checked by
the loader that will read it and written atomically; `--out` is checked before anything is read
and may not be one of the inputs. This module is the body of `lut/import.py` (a module named
`import` cannot be imported by name).
"""

from __future__ import annotations

import hashlib
import math
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from search_spaces.command_line import EXIT_OK, ArgumentParser, UsageError, run_command
from search_spaces.files import FileError, read_input_bytes
from search_spaces.limits import MAX_CSV_BYTES

from lut.command_line import check_output_paths
from lut.coreml import MANIFEST, BundleError, read_manifest
from lut.measurement_csv import read_csv_rows
from lut.table import LatencyRecord, LatencyTable, TableError, TableMetadata

PROG = "python -m lut.import"
REQUIRED_COLUMNS = ("key", "p50_ms")
OPTIONAL_COLUMNS = ("p10_ms", "p90_ms", "mean_ms", "std_ms", "runs")


def _number(text: str, column: str, line: int, source: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--measurements: {source} line {line}: {column} is not a number: {text[:40]!r}") from None
    if not math.isfinite(value):
        raise UsageError(f"--measurements: {source} line {line}: {column} must be finite, got {text[:40]!r}")
    return value


def read_measurements(path: str | Path) -> dict[str, LatencyRecord]:
    """The records of a measurement CSV by key; `UsageError` (one line, with the line number) otherwise."""
    return _read_measurements(path)[0]


def _read_measurements(path: str | Path) -> tuple[dict[str, LatencyRecord], dict[str, int]]:
    """(records by key, CSV line of each key)."""
    path = Path(path)
    rows = read_csv_rows(path, "--measurements")
    if not rows:
        raise UsageError(f"--measurements: {path}: empty; expected a header key,p50_ms[,{','.join(OPTIONAL_COLUMNS)}]")
    header_line, header = rows[0]
    columns = [cell.strip() for cell in header]
    unknown = [c[:40] for c in columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS][:5]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if unknown or missing or len(set(columns)) != len(columns):
        problem = f"unknown column(s) {unknown}" if unknown else f"missing column(s) {missing}" if missing else "a repeated column"
        raise UsageError(
            f"--measurements: {path} line {header_line}: header has {problem}; "
            f"expected key,p50_ms[,{','.join(OPTIONAL_COLUMNS)}]"
        )
    records: dict[str, LatencyRecord] = {}
    lines: dict[str, int] = {}
    for number, row in rows[1:]:
        if len(row) != len(columns):
            raise UsageError(f"--measurements: {path} line {number}: {len(row)} field(s), the header has {len(columns)}")
        cells = {column: cell.strip() for column, cell in zip(columns, row)}
        key = cells["key"]
        if not key:
            raise UsageError(f"--measurements: {path} line {number}: empty key")
        if key in records:
            raise UsageError(f"--measurements: {path} line {number}: key {key[:200]!r} is measured twice")
        values: dict[str, float] = {}
        for column in REQUIRED_COLUMNS[1:] + OPTIONAL_COLUMNS:
            if not cells.get(column):
                if column == "p50_ms":
                    raise UsageError(f"--measurements: {path} line {number}: p50_ms is empty")
                continue
            value = _number(cells[column], column, number, str(path))
            shown = cells[column][:40]
            if column == "runs":
                if value < 0 or value != int(value):
                    raise UsageError(f"--measurements: {path} line {number}: runs must be a non-negative integer, got {shown!r}")
            elif column == "std_ms":
                if value < 0:
                    raise UsageError(f"--measurements: {path} line {number}: std_ms must not be negative, got {shown!r}")
            elif value <= 0:
                raise UsageError(f"--measurements: {path} line {number}: {column} must be positive, got {shown!r}")
            values[column] = value
        p50 = values["p50_ms"]
        fields = {"p50_ms": p50, "p10_ms": values.get("p10_ms", p50), "p90_ms": values.get("p90_ms", p50),
                  "mean_ms": values.get("mean_ms", p50), "std_ms": values.get("std_ms", 0.0), "runs": int(values.get("runs", 0))}
        try:  # the same rules as every table record (caps, p10 <= p50 <= p90)
            records[key] = LatencyRecord.from_dict(fields, f"{path} line {number}")
        except TableError as error:
            raise UsageError(f"--measurements: {error}") from None
        lines[key] = number
    return records, lines


def import_measurements(manifest_path: str | Path, measurements_path: str | Path) -> LatencyTable:
    """The `coreml` table of a bundle's manifest from a measurement CSV (every key, nothing else)."""
    try:
        manifest = read_manifest(manifest_path)
    except BundleError as error:
        raise UsageError(f"--manifest: {error}") from None
    records, lines = _read_measurements(measurements_path)
    expected = manifest["packages"]
    unknown = [key for key in records if key not in expected]
    if unknown:
        first = unknown[0]
        raise UsageError(
            f"--measurements: {measurements_path} line {lines[first]}: key {first[:200]!r} is not in the manifest"
            + (f" ({len(unknown)} unknown keys in all)" if len(unknown) > 1 else "")
        )
    missing = [key for key in expected if key not in records]
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise UsageError(f"--measurements: {len(missing)} of {len(expected)} manifest key(s) have no measurement: {shown}")
    try:
        csv_bytes = read_input_bytes(measurements_path, "--measurements", MAX_CSV_BYTES)  # read above; for its digest
    except FileError as error:
        raise UsageError(str(error)) from None
    metadata = TableMetadata(
        device="coreml",
        space=manifest["space"],
        resolution=manifest["resolution"],
        num_classes=manifest["num_classes"],
        batch=1,
        threads=1,
        precision=manifest.get("precision", "fp16"),
        runtime={
            "coremltools": str(manifest.get("tools", {}).get("coremltools", "")),
            "torch": str(manifest.get("tools", {}).get("torch", "")),
            "coreml_target": str(manifest.get("minimum_deployment_target", "")),
            "compute_units": str(manifest["compute_units"]),
        },
        host_cpu="",
        host="measured on the device (imported)",
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        build={
            "source": "measured-on-device",
            "manifest": str(manifest_path),
            "measurements": str(measurements_path),
            "measurements_sha256": hashlib.sha256(csv_bytes).hexdigest(),
            "specs": len(expected),
            "widths_subset": manifest.get("widths_subset"),
        },
    )
    table = LatencyTable(metadata, {key: records[key] for key in expected}, source=str(measurements_path))
    try:
        return table.check()
    except TableError as error:
        raise UsageError(f"--measurements: {error}") from None


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Turn per-layer Core ML measurements (CSV key,p50_ms[,p10_ms,p90_ms,mean_ms,std_ms,runs]) into a latency table.",
    )
    parser.add_argument("--manifest", required=True, help=f"the bundle's {MANIFEST} (from python -m lut.build --device coreml)")
    parser.add_argument("--measurements", required=True, help="CSV with a header; key and p50_ms required, one row per manifest key")
    parser.add_argument("--out", required=True, help="table file to write (JSON, latnas/lut@1)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = check_output_paths({"--out": args.out}, {"--manifest": args.manifest, "--measurements": args.measurements})["--out"]
    table = import_measurements(args.manifest, args.measurements)
    try:
        table.save(out)  # reads its own text back through the loader before writing
    except TableError as error:
        raise UsageError(f"--measurements: the table would not load: {error}") from None
    print(f"wrote {out} ({len(table)} records, coreml {table.metadata.space}@{table.metadata.resolution}, measured on the device)", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_command(main, prog=PROG))
