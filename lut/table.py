"""`LatencyTable`: measured latency per `LayerSpec.key()`, with its provenance and calibration.

File format `latnas/lut@1` (JSON, sorted keys, never pickles):

    {"schema": "latnas/lut@1",
     "metadata": {device, space, resolution, num_classes, batch, threads, precision, runtime{...},
                  host_cpu, host, date, loadavg{start, end}, build{...}},
     "calibration": {"method", "scales": {kind: a}, "intercept_ms": b, "fitted_on", "fit": {...}},
     "records": {key: {p50_ms, p10_ms, p90_ms, mean_ms, std_ms, runs}},
     "sha256": sha256 of the canonical JSON of everything above}

`load_table` refuses a file whose schema, fields or checksum are wrong (truncated, hand-edited)
with one line naming the file and the problem. `predict(arch)` prices the layers of
`space.layer_specs(arch)` by their p50 and applies the calibration; a key the table lacks is an
error that lists every missing key, never a silent zero.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

from search_spaces.files import write_text_atomic

SCHEMA = "latnas/lut@1"


class TableError(ValueError):
    """A table file that cannot be used (missing, truncated, edited, wrong schema); one-line message."""


class MissingKeysError(KeyError):
    """An architecture needs layers the table has no record of; `keys` lists them all."""

    def __init__(self, keys: Iterable[str], table: str = "the table") -> None:
        self.keys = tuple(dict.fromkeys(keys))
        super().__init__(self.keys)
        shown = ", ".join(self.keys[:20]) + (f", ... ({len(self.keys)} in all)" if len(self.keys) > 20 else "")
        self.message = f"{table} has no record of {len(self.keys)} layer key(s): {shown}"

    def __str__(self) -> str:  # KeyError would print the repr of its argument
        return self.message


@dataclass(frozen=True)
class LatencyRecord:
    """Measured latency of one layer (or network) in milliseconds: percentiles, mean, std, runs.

    Values are net of the empty-model call cost. `p50_ms` is the value tables sum.
    """

    p50_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    runs: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, path: str = "record") -> "LatencyRecord":
        if not isinstance(data, Mapping):
            raise TableError(f"{path}: expected a mapping of {', '.join(f.name for f in fields(cls))}")
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            missing, extra = sorted(names - set(data)), sorted(set(data) - names)
            raise TableError(f"{path}: missing {missing} / unexpected {extra}")
        values = {}
        for name in names:
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
                raise TableError(f"{path}.{name}: expected a non-negative number, got {value!r}")
            values[name] = int(value) if name == "runs" else float(value)
        return cls(**values)


@dataclass(frozen=True)
class TableMetadata:
    """Where and how a table was measured (or modelled): enough to tell two tables apart.

    `runtime` maps component to version (onnxruntime, torch, ...); `build` holds the build
    settings (timing settings, width subset, spec count, seconds taken); `loadavg` the host's
    `/proc/loadavg` at start and end, because a busy machine inflates every number.
    """

    device: str
    space: str
    resolution: int
    num_classes: int
    batch: int
    threads: int
    precision: str
    runtime: Mapping[str, str] = field(default_factory=dict)
    host_cpu: str = ""
    host: str = ""
    date: str = ""
    loadavg: Mapping[str, str] = field(default_factory=dict)
    build: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("runtime", "loadavg", "build"):
            data[name] = dict(getattr(self, name))
        return data

    @classmethod
    def from_dict(cls, data: Any) -> "TableMetadata":
        if not isinstance(data, Mapping):
            raise TableError("metadata: expected a mapping")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise TableError(f"metadata: unexpected field(s) {unknown}")
        required = ("device", "space", "resolution", "num_classes", "batch", "threads", "precision")
        missing = [name for name in required if name not in data]
        if missing:
            raise TableError(f"metadata: missing field(s) {missing}")
        for name in ("resolution", "num_classes", "batch", "threads"):
            if isinstance(data[name], bool) or not isinstance(data[name], int) or data[name] < 1:
                raise TableError(f"metadata.{name}: expected a positive integer, got {data[name]!r}")
        for name in ("runtime", "loadavg", "build"):
            if name in data and not isinstance(data[name], Mapping):
                raise TableError(f"metadata.{name}: expected a mapping")
        return cls(**dict(data))


@dataclass(frozen=True)
class Calibration:
    """Maps the per-kind sums of a network's records to its predicted latency.

    prediction = Σ_kind scales[kind] · Σ(records of that kind) + intercept_ms; a kind without a
    scale uses 1. The identity calibration (no scales, no intercept) is the naive sum. `fit` holds
    how the calibration was obtained (networks used, their error), for the record.
    """

    method: str = "identity"
    scales: Mapping[str, float] = field(default_factory=dict)
    intercept_ms: float = 0.0
    fitted_on: int = 0
    fit: Mapping[str, Any] = field(default_factory=dict)

    def apply(self, sums_by_kind: Mapping[str, float]) -> float:
        return sum(self.scales.get(kind, 1.0) * total for kind, total in sums_by_kind.items()) + self.intercept_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "scales": dict(self.scales),
            "intercept_ms": self.intercept_ms,
            "fitted_on": self.fitted_on,
            "fit": dict(self.fit),
        }

    @classmethod
    def from_dict(cls, data: Any) -> "Calibration":
        if not isinstance(data, Mapping) or set(data) != {"method", "scales", "intercept_ms", "fitted_on", "fit"}:
            raise TableError("calibration: expected method, scales, intercept_ms, fitted_on, fit")
        scales = data["scales"]
        if not isinstance(scales, Mapping) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in scales.values()
        ):
            raise TableError("calibration.scales: expected a mapping of layer kind to number")
        if isinstance(data["intercept_ms"], bool) or not isinstance(data["intercept_ms"], (int, float)):
            raise TableError("calibration.intercept_ms: expected a number")
        return cls(
            str(data["method"]),
            {str(k): float(v) for k, v in scales.items()},
            float(data["intercept_ms"]),
            int(data["fitted_on"]),
            dict(data["fit"]) if isinstance(data["fit"], Mapping) else {},
        )


IDENTITY_CALIBRATION = Calibration()


class LatencyTable:
    """Latency records of one device and space, keyed by `LayerSpec.key()`, plus a calibration.

    Contract: immutable once made (`with_calibration` returns a new table); `lookup(spec)` returns
    the record or raises `MissingKeysError`; `predict(arch)` is the calibrated sum over
    `space.layer_specs(arch)` in milliseconds and `predict_naive(arch)` the plain sum of p50s;
    `save(path)` writes the checksummed JSON atomically and `load_table(path)` reads it back equal.
    """

    def __init__(
        self,
        metadata: TableMetadata,
        records: Mapping[str, LatencyRecord],
        calibration: Calibration = IDENTITY_CALIBRATION,
        source: str = "",
    ) -> None:
        self.metadata = metadata
        self._records = dict(sorted(records.items()))
        self.calibration = calibration
        self.source = source or f"{metadata.device}/{metadata.space} table"

    # -- lookups ---------------------------------------------------------------------------
    @property
    def records(self) -> Mapping[str, LatencyRecord]:
        return dict(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: object) -> bool:
        return key in self._records

    def lookup(self, spec) -> LatencyRecord:
        """The record of one `LayerSpec`; `MissingKeysError` if the table has none."""
        key = spec.key()
        if key not in self._records:
            raise MissingKeysError([key], self.source)
        return self._records[key]

    def _specs(self, arch):
        from search_spaces import get_space

        if arch.space != self.metadata.space:
            raise TableError(f"{self.source} prices space {self.metadata.space!r}, not {arch.space!r}")
        space = get_space(arch.space)
        space.validate(arch)
        specs = space.layer_specs(arch)
        missing = [spec.key() for spec in specs if spec.key() not in self._records]
        if missing:
            raise MissingKeysError(missing, self.source)
        return specs

    def sums_by_kind(self, arch) -> dict[str, float]:
        """Σ p50 of the architecture's layers, per layer kind (what the calibration scales)."""
        sums: dict[str, float] = {}
        for spec in self._specs(arch):
            sums[spec.kind] = sums.get(spec.kind, 0.0) + self._records[spec.key()].p50_ms
        return sums

    def predict_naive(self, arch) -> float:
        """The plain sum of the layers' p50s, in milliseconds (no calibration)."""
        return sum(self.sums_by_kind(arch).values())

    def predict(self, arch) -> float:
        """Predicted latency of `arch` in milliseconds: calibrated sum of its layers' records."""
        return self.calibration.apply(self.sums_by_kind(arch))

    def with_calibration(self, calibration: Calibration) -> "LatencyTable":
        return LatencyTable(self.metadata, self._records, calibration, self.source)

    # -- files -----------------------------------------------------------------------------
    def content(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "metadata": self.metadata.to_dict(),
            "calibration": self.calibration.to_dict(),
            "records": {key: record.to_dict() for key, record in self._records.items()},
        }

    @property
    def sha256(self) -> str:
        return content_sha256(self.content())

    def to_json(self) -> str:
        data = self.content()
        data["sha256"] = content_sha256(data)
        return json.dumps(data, indent=1, sort_keys=True) + "\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        write_text_atomic(path, self.to_json())
        return path

    def __repr__(self) -> str:
        meta = self.metadata
        return f"<LatencyTable {meta.device} {meta.space}@{meta.resolution}: {len(self)} records, {self.calibration.method}>"


def content_sha256(content: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of a table's content."""
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def table_from_dict(data: Any, source: str = "table") -> LatencyTable:
    """Validate a parsed table document (schema, fields, checksum) and build the table."""
    if not isinstance(data, Mapping):
        raise TableError(f"{source}: not a {SCHEMA} table (top level is not a JSON object)")
    if data.get("schema") != SCHEMA:
        raise TableError(f"{source}: schema is {data.get('schema')!r}, expected {SCHEMA!r}")
    expected = {"schema", "metadata", "calibration", "records", "sha256"}
    if set(data) != expected:
        missing, extra = sorted(expected - set(data)), sorted(set(data) - expected)
        raise TableError(f"{source}: missing {missing} / unexpected {extra} top-level field(s)")
    content = {name: data[name] for name in ("schema", "metadata", "calibration", "records")}
    try:
        actual = content_sha256(content)
    except ValueError as error:  # NaN or infinity somewhere
        raise TableError(f"{source}: {error}") from None
    if data["sha256"] != actual:
        raise TableError(f"{source}: sha256 mismatch (file edited or damaged): recorded {data['sha256']!r}, content {actual}")
    try:
        metadata = TableMetadata.from_dict(data["metadata"])
        calibration = Calibration.from_dict(data["calibration"])
        if not isinstance(data["records"], Mapping):
            raise TableError("records: expected a mapping of layer key to record")
        records = {str(key): LatencyRecord.from_dict(value, f"records[{key!r}]") for key, value in data["records"].items()}
    except TableError as error:
        raise TableError(f"{source}: {error}") from None
    return LatencyTable(metadata, records, calibration, source)


def load_table(path: str | os.PathLike[str]) -> LatencyTable:
    """Read and validate a `latnas/lut@1` file; `TableError` with one line otherwise."""
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise TableError(f"{path}: no such table file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise TableError(f"{path}: cannot read ({error.__class__.__name__}: {error})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise TableError(f"{path}: not valid JSON (truncated or damaged?): {error.msg} at line {error.lineno}") from None
    return table_from_dict(data, str(path))
