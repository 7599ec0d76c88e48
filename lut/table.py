"""`LatencyTable`: measured latency per `LayerSpec.key()`, with its provenance and calibration.

File format `latnas/lut@1` (JSON, sorted keys, never pickles):

    {"schema": "latnas/lut@1",
     "metadata": {device, space, resolution, num_classes, batch, threads, precision, runtime{...},
                  host_cpu, host, date, loadavg{start, end}, build{...}},
     "calibration": {"method", "scales": {kind: a}, "intercept_ms": b, "fitted_on", "fit": {...}},
     "records": {key: {p50_ms, p10_ms, p90_ms, mean_ms, std_ms, runs}},
     "sha256": sha256 of the canonical JSON of everything above}

`load_table` reads a regular file of at most `MAX_TABLE_BYTES` and refuses one whose schema,
fields or checksum are wrong (truncated, hand-edited) with one line naming the file and the
problem. A matching checksum proves only that nobody edited the file without recomputing it, so
the meaning is checked too (`LatencyTable.check`): every latency finite, in [0, `MAX_LATENCY_MS`],
p10 <= p50 <= p90; metadata within the documented ranges (`search_spaces.limits`) for a known
space; calibration scales in `CALIBRATION_SCALE`; and predictions that stay positive over the
whole space (`prediction_floor_ms`). `save` writes only what this loader accepts: it reads its
own text back through the loader first. `predict(arch)` prices the layers of
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

from search_spaces.files import FileError, parse_json_document, read_input_text, write_text_atomic
from search_spaces.limits import EXPORT_BATCH, MAX_TABLE_BYTES, NUM_CLASSES, RESOLUTION, SAMPLES, FloatRange, IntRange

SCHEMA = "latnas/lut@1"

#: the largest latency a record, an intercept or a prediction may hold: 1000 s. No layer of a
#: mobile network takes that on any device; 1e308 ms is a forged or broken file, not a measurement.
MAX_LATENCY_MS = 1e6
LATENCY = FloatRange(0.0, MAX_LATENCY_MS)
#: timed runs a record may report (a phone's benchmark report may run more than our profiler)
RECORD_RUNS = IntRange(0, 10**9)
#: a calibration scale is network time over the isolated layers' time of one kind; fitted ones
#: are 0.2-2. Zero would price a kind as free, and beyond 100 the layers explain nothing.
CALIBRATION_SCALE = FloatRange(0.0, 100.0, low_open=True)
#: threads a table may record: it may come from a bigger host than this one, so not `thread_range()`
TABLE_THREADS = IntRange(1, 1024)
#: characters of a name-like metadata field (device, space, precision, a runtime version)
MAX_NAME_CHARS = 1000


class TableError(ValueError):
    """A table file that cannot be used (missing, truncated, edited, wrong schema); one-line message."""


class MissingKeysError(KeyError):
    """An architecture needs layers the table has no record of; `keys` lists them all."""

    def __init__(self, keys: Iterable[str], table: str = "the table") -> None:
        self.keys = tuple(dict.fromkeys(keys))
        super().__init__(self.keys)
        listed = ", ".join(self.keys[:20]) + (f", ... ({len(self.keys)} in all)" if len(self.keys) > 20 else "")
        self.message = f"{table} has no record of {len(self.keys)} layer key(s): {listed}"

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
        """A record from its mapping, checked for meaning: every latency a finite number in
        `LATENCY` (ms), `runs` an integer in `RECORD_RUNS`, p10 <= p50 <= p90; `TableError` naming
        `path` and the field otherwise."""
        if not isinstance(data, Mapping):
            raise TableError(f"{path}: expected a mapping of {', '.join(f.name for f in fields(cls))}")
        names = [f.name for f in fields(cls)]
        if set(data) != set(names):
            missing, extra = sorted(set(names) - set(data)), sorted(map(str, set(data) - set(names)))[:5]
            raise TableError(f"{path}: missing {missing} / unexpected {extra}")
        values: dict[str, Any] = {}
        for name in names:
            value = data[name]
            if name == "runs":
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                if value not in RECORD_RUNS:
                    raise TableError(f"{path}: runs must be {RECORD_RUNS.describe()}, got {shown(value)}")
            elif value not in LATENCY:
                raise TableError(f"{path}: {name} must be a number in [0, {MAX_LATENCY_MS:g}] ms, got {shown(value)}")
            values[name] = value if name == "runs" else float(value)
        if not values["p10_ms"] <= values["p50_ms"] <= values["p90_ms"]:
            raise TableError(f"{path}: needs p10_ms <= p50_ms <= p90_ms, got {values['p10_ms']:g}, "
                             f"{values['p50_ms']:g}, {values['p90_ms']:g}")
        return cls(**values)


def shown(value: Any, limit: int = 40) -> str:
    """`repr(value)` cut to `limit` characters: what a message may quote of a loaded value."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _name(value: Any, path: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not allow_empty) or len(value) > MAX_NAME_CHARS:
        raise TableError(f"{path}: expected {'a' if allow_empty else 'a non-empty'} string of at most "
                         f"{MAX_NAME_CHARS} characters, got {shown(value)}")
    return value


def _strings(value: Any, path: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise TableError(f"{path}: expected a mapping of names to strings")
    return {_name(key, f"{path} key"): _name(item, f"{path}[{key!r}]", allow_empty=True) for key, item in value.items()}


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
        """Metadata from its mapping; every field of the documented type and range or `TableError`."""
        if not isinstance(data, Mapping):
            raise TableError("metadata: expected a mapping")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(map(str, set(data) - set(known)))
        if unknown:
            raise TableError(f"metadata: unexpected field(s) {unknown[:5]}")
        required = ("device", "space", "resolution", "num_classes", "batch", "threads", "precision")
        missing = [name for name in required if name not in data]
        if missing:
            raise TableError(f"metadata: missing field(s) {missing}")
        values = dict(data)
        for name, allowed in (("resolution", RESOLUTION), ("num_classes", NUM_CLASSES), ("batch", EXPORT_BATCH),
                              ("threads", TABLE_THREADS)):
            if values[name] not in allowed:
                raise TableError(f"metadata.{name}: must be {allowed.describe()}, got {shown(values[name])}")
        for name in ("device", "space", "precision"):
            _name(values[name], f"metadata.{name}")
        for name in ("host_cpu", "host", "date"):
            if name in values:
                _name(values[name], f"metadata.{name}", allow_empty=True)
        for name in ("runtime", "loadavg"):
            if name in values:
                values[name] = _strings(values[name], f"metadata.{name}")
        if "build" in values and not isinstance(values["build"], Mapping):
            raise TableError("metadata.build: expected a mapping")
        return cls(**values)


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
        """A calibration from its mapping: scales in `CALIBRATION_SCALE`, a finite intercept of at
        most `MAX_LATENCY_MS` either way; `TableError` otherwise."""
        if not isinstance(data, Mapping) or set(data) != {"method", "scales", "intercept_ms", "fitted_on", "fit"}:
            raise TableError("calibration: expected method, scales, intercept_ms, fitted_on, fit")
        method = _name(data["method"], "calibration.method")
        scales = data["scales"]
        if not isinstance(scales, Mapping):
            raise TableError("calibration.scales: expected a mapping of layer kind to number")
        for kind, scale in scales.items():
            _name(kind, "calibration.scales key")
            if scale not in CALIBRATION_SCALE:
                raise TableError(f"calibration.scales[{kind[:80]!r}]: must be {CALIBRATION_SCALE.describe()}, got {shown(scale)}")
        intercept = data["intercept_ms"]
        if intercept not in FloatRange(-MAX_LATENCY_MS, MAX_LATENCY_MS):
            raise TableError(f"calibration.intercept_ms: must be a number in [{-MAX_LATENCY_MS:g}, {MAX_LATENCY_MS:g}] ms, "
                             f"got {shown(intercept)}")
        if data["fitted_on"] not in IntRange(0, SAMPLES.high):
            raise TableError(f"calibration.fitted_on: must be an integer in 0..{SAMPLES.high}, got {shown(data['fitted_on'])}")
        if not isinstance(data["fit"], Mapping):
            raise TableError("calibration.fit: expected a mapping")
        return cls(method, {str(k): float(v) for k, v in scales.items()}, float(intercept), data["fitted_on"], dict(data["fit"]))


IDENTITY_CALIBRATION = Calibration()


class LatencyTable:
    """Latency records of one device and space, keyed by `LayerSpec.key()`, plus a calibration.

    Contract: immutable once made (`with_calibration` returns a new table); `lookup(spec)` returns
    the record or raises `MissingKeysError`; `predict(arch)` is the calibrated sum over
    `space.layer_specs(arch)` in milliseconds, always in (0, `MAX_LATENCY_MS`] (`TableError`
    otherwise), and `predict_naive(arch)` the plain sum of p50s; `check()` refuses a table whose
    content makes no sense; `save(path)` writes the checksummed JSON atomically, only if
    `load_table` accepts it, and `load_table(path)` reads it back equal.
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
        predicted = self.calibration.apply(self.sums_by_kind(arch))
        if not 0.0 < predicted <= MAX_LATENCY_MS:  # nan fails too
            raise TableError(f"{self.source}: predicts {predicted:.4g} ms for this network; its calibration "
                             f"({self.calibration.method}, intercept {self.calibration.intercept_ms:.4g} ms) is not valid here")
        return predicted

    # -- meaning ---------------------------------------------------------------------------
    def prediction_floor_ms(self, calibration: Calibration | None = None) -> float:
        """A lower bound of the prediction of every network of the space that the table prices.

        Every network runs one stem, a downsample between neighbouring stages, at least
        `min_depth` blocks per stage and one head (`SearchSpace.layer_specs`); with records and
        scales >= 0 each of those layers costs at least the cheapest calibrated record of its
        kind (a block: of any block kind). With `calibration=IDENTITY_CALIBRATION` it bounds the
        naive sums. A kind the table lacks counts 0 (no network needing it can be priced).
        """
        from search_spaces import get_space

        calibration = self.calibration if calibration is None else calibration
        space = get_space(self.metadata.space)
        cheapest: dict[str, float] = {}
        for key, record in self._records.items():
            kind = key.split(":", 1)[0]
            cost = calibration.scales.get(kind, 1.0) * record.p50_ms
            cheapest[kind] = min(cheapest.get(kind, cost), cost)
        fixed = {part: cheapest.pop(f"{space.name}.{part}", 0.0) for part in ("stem", "downsample", "head")}
        block = min(cheapest.values(), default=0.0)
        blocks = sum(stage.min_depth for stage in space.stages)
        return (fixed["stem"] + (len(space.stages) - 1) * fixed["downsample"] + fixed["head"] + blocks * block
                + calibration.intercept_ms)

    def check(self) -> "LatencyTable":
        """This table, if its content makes sense as a whole (the fields are checked as they are
        read): a known space at a resolution it runs, at least one record, networks whose layers
        sum to more than 0 ms, and a calibration whose predictions stay positive over the space
        (`prediction_floor_ms` > 0). `TableError` naming the table otherwise."""
        from search_spaces import get_space

        meta = self.metadata
        try:
            space = get_space(meta.space)
        except KeyError:
            raise TableError(f"{self.source}: metadata.space: unknown space {shown(meta.space)}") from None
        if meta.resolution % space.resolution_multiple:
            raise TableError(f"{self.source}: metadata.resolution: {space.name} runs multiples of "
                             f"{space.resolution_multiple} px, got {meta.resolution}")
        if not self._records:
            raise TableError(f"{self.source}: records: the table has none")
        if not self.prediction_floor_ms(IDENTITY_CALIBRATION) > 0:
            raise TableError(f"{self.source}: records: the layers every network runs all measure 0 ms; "
                             "that is not a measurement")
        floor = self.prediction_floor_ms()
        if not floor > 0:
            raise TableError(f"{self.source}: calibration: with intercept {self.calibration.intercept_ms:.4g} ms and its "
                             f"scales the cheapest network of {space.name} could be predicted at {floor:.4g} ms; "
                             "predictions must stay positive")
        return self

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
        """Write the table atomically, after reading its own text back through the loader: a file
        `load_table` would refuse is never written (`TableError`, `ValueError` for NaN)."""
        path = Path(path)
        text = self.to_json()
        table_from_dict(json.loads(text), str(path))
        write_text_atomic(path, text)
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
        raise TableError(f"{source}: schema is {shown(data.get('schema'))}, expected {SCHEMA!r}")
    expected = {"schema", "metadata", "calibration", "records", "sha256"}
    if set(data) != expected:
        missing, extra = sorted(expected - set(data)), sorted(set(data) - expected)[:5]
        raise TableError(f"{source}: missing {missing} / unexpected {[shown(name) for name in extra]} top-level field(s)")
    content = {name: data[name] for name in ("schema", "metadata", "calibration", "records")}
    try:
        actual = content_sha256(content)
    except ValueError as error:  # NaN or infinity somewhere
        raise TableError(f"{source}: {error}") from None
    if data["sha256"] != actual:
        raise TableError(f"{source}: sha256 mismatch (file edited or damaged): recorded {shown(data['sha256'], 70)}, content {actual}")
    try:
        metadata = TableMetadata.from_dict(data["metadata"])
        calibration = Calibration.from_dict(data["calibration"])
        if not isinstance(data["records"], Mapping):
            raise TableError("records: expected a mapping of layer key to record")
        records = {}
        for key, value in data["records"].items():
            records[_name(key, "records key")] = LatencyRecord.from_dict(value, f"records[{key[:80]!r}]")
    except TableError as error:
        raise TableError(f"{source}: {error}") from None
    return LatencyTable(metadata, records, calibration, source).check()


def load_table(path: str | os.PathLike[str]) -> LatencyTable:
    """Read and validate a `latnas/lut@1` file (a regular file of at most `MAX_TABLE_BYTES`);
    `TableError` with one line otherwise."""
    path = Path(path)
    try:
        data = parse_json_document(read_input_text(path, "", MAX_TABLE_BYTES), str(path))
    except FileError as error:
        raise TableError(str(error)) from None
    except ValueError:  # an integer beyond Python's digit limit inside the JSON
        raise TableError(f"{path}: not valid JSON (a number too long to read)") from None
    return table_from_dict(data, str(path))
