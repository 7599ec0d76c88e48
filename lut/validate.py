"""`python -m lut.validate`: measure sampled networks end to end and report the table's error.

    python -m lut.validate --device ort-cpu --space efficientformer_v2 [--samples 20] [--seed 0]
                           [--lut FILE] [--refit] [--report FILE.json] [--plot FILE.png]

Samples `--samples` architectures (seeded), prices each with the table (naive sum and calibrated
prediction) and measures its whole network on the device with the table's own settings. Reports
the share within ±5% and ±10%, the mean absolute percentage error and the Spearman rank
correlation, for the naive sum and the calibrated predictor side by side. With `--refit` the
calibration is fitted on `--samples / 2` networks, half uniform samples and half slimmed ones
(`calibration_architectures`: the region searches end in), the error is reported on as many
other uniform samples, and the new calibration is written into the table file (atomically).

    python -m lut.validate --device iphone12 --space efficientformer_v2 --measurements published.csv [--refit]

`--measurements CSV` takes whole-network latencies measured elsewhere (a phone, a published
table) instead of measuring here, so it works for devices that cannot measure on this host. The
CSV has a header `architecture,measured_ms`; an architecture is `ref:NAME` (a reference variant of
`--space`) or the path of an architecture YAML (relative to the CSV's folder). With `--refit` the
calibration is fitted on all of these networks (there are usually few) and the report gives the
in-sample error; the refitted table goes to `--lut`'s file, or to the device's table in the user's
table folder (`$LATNAS_TABLES`), never into the installed package. The CSV is read like every
measurement file (`lut.measurement_csv`); a named file that is not an architecture is refused
without quoting it; `measured_ms` must be in (0, 1e6].

A refit is refused, and nothing saved, when the networks cannot support one
(`lut.calibration.CalibrationError`: fewer than 2 distinct networks, repeats that disagree, a fit
that explains nothing) or when the result would let a prediction fall to 0 ms or below. Outputs
(`--report`, `--plot`, the table with `--refit`) are checked before anything is measured: not a
directory or special file, not the same file twice, not one of the inputs. `--samples` (1..100000,
default 20) and `--seed` (0..2**32-1) draw the networks measured here, so with `--measurements`
they, like the timing options, are refused.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from search_spaces import Architecture, ArchitectureError, SearchSpace, get_space
from search_spaces.architecture import SCHEMA as ARCHITECTURE_SCHEMA
from search_spaces.command_line import EXIT_OK, ArgumentParser, UsageError, integer_in, run_command
from search_spaces.files import FileError, parse_yaml_document, read_input_text, write_bytes_atomic, write_text_atomic
from search_spaces.limits import LATENCY_MS, MAX_ARCHITECTURE_BYTES, RESOLUTION, SAMPLES, SEED

from lut.calibration import CalibrationError, fit_calibration
from lut.command_line import (
    TIMING_OPTIONS,
    LazyProgress,
    add_device_arguments,
    check_output_paths,
    device_from_args,
    refuse_options,
    space_from_args,
)
from lut.devices import Device, loadavg
from lut.measurement_csv import read_csv_rows
from lut.table import Calibration, LatencyTable, MissingKeysError, TableError, load_table

PROG = "python -m lut.validate"
DEFAULT_SAMPLES = 20


@dataclass(frozen=True)
class FidelityMetrics:
    """How close predictions are to measurements over a set of networks (percentages in %)."""

    networks: int
    within_5_percent: float
    within_10_percent: float
    mape_percent: float
    max_error_percent: float
    mean_signed_error_percent: float
    spearman: float

    def to_dict(self) -> dict[str, float]:
        return {key: round(value, 4) if isinstance(value, float) else value for key, value in asdict(self).items()}


def fidelity_metrics(predicted_ms: Sequence[float], measured_ms: Sequence[float]) -> FidelityMetrics:
    from scipy.stats import spearmanr

    predicted = np.asarray(predicted_ms, dtype=np.float64)
    measured = np.asarray(measured_ms, dtype=np.float64)
    relative = (predicted - measured) / measured
    spearman = float(spearmanr(predicted, measured).statistic) if len(measured) > 2 else float("nan")
    return FidelityMetrics(
        networks=int(len(measured)),
        within_5_percent=float(np.mean(np.abs(relative) <= 0.05) * 100),
        within_10_percent=float(np.mean(np.abs(relative) <= 0.10) * 100),
        mape_percent=float(np.mean(np.abs(relative)) * 100),
        max_error_percent=float(np.max(np.abs(relative)) * 100),
        mean_signed_error_percent=float(np.mean(relative) * 100),
        spearman=spearman,
    )


@dataclass(frozen=True)
class NetworkMeasurement:
    """One sampled network: its table sums and its end-to-end measurement."""

    arch: Architecture
    sums_by_kind: dict[str, float]
    naive_ms: float
    measured_ms: float
    measured_p10_ms: float
    measured_p90_ms: float

    def to_dict(self, predicted_ms: float | None = None) -> dict[str, Any]:
        row = {
            "widths": list(self.arch.widths),
            "depths": list(self.arch.depths),
            "blocks": [[b.type if b.expansion is None else f"{b.type}/{b.expansion}" for b in s.blocks] for s in self.arch.stages],
            "naive_ms": round(self.naive_ms, 4),
            "measured_ms": round(self.measured_ms, 4),
            "measured_p10_ms": round(self.measured_p10_ms, 4),
            "measured_p90_ms": round(self.measured_p90_ms, 4),
        }
        if predicted_ms is not None:
            row["predicted_ms"] = round(predicted_ms, 4)
        return row


#: calibration networks are drawn from `seed + CALIBRATION_SEED_OFFSET`, so they share no stream with
#: the evaluated networks of `seed`
CALIBRATION_SEED_OFFSET = 1000


def sample_architectures(space: SearchSpace, count: int, seed: int, resolution: int, num_classes: int) -> list[Architecture]:
    """`count` uniform samples of the space (`SearchSpace.sample`), seeded."""
    rng = np.random.default_rng(seed)
    return [space.sample(rng, resolution=resolution, num_classes=num_classes) for _ in range(count)]


def slimmed_architectures(space: SearchSpace, count: int, seed: int, resolution: int, num_classes: int) -> list[Architecture]:
    """`count` networks of the region slimming searches end in (`SearchSpace.sample_slimmed`), seeded."""
    rng = np.random.default_rng(seed)
    return [space.sample_slimmed(rng, resolution=resolution, num_classes=num_classes) for _ in range(count)]


def calibration_architectures(space: SearchSpace, count: int, seed: int, resolution: int,
                              num_classes: int) -> list[Architecture]:
    """What a calibration is fitted on: uniform samples and slimmed networks, alternately (half each).

    A calibration fitted on uniform samples alone over-predicted the networks greedy searches
    end in by ~5.5% (`benchmarks/results/end_to_end_latency.json`, issue 15): those are deep,
    wide-late, family-shaped networks that uniform sampling rarely draws. Mixing in slimmed
    networks (`SearchSpace.sample_slimmed`) makes the fit cover where searches land.
    """
    uniform = sample_architectures(space, count - count // 2, seed, resolution, num_classes)
    slimmed = slimmed_architectures(space, count // 2, seed + 1, resolution, num_classes)
    mixed = [arch for pair in zip(uniform, slimmed) for arch in pair]
    return mixed + uniform[len(slimmed):]


#: candidates drawn per calibration network, of which `calibration_set` keeps a spread
CANDIDATES_PER_NETWORK = 4


def within_widths(space: SearchSpace, widths: Sequence[Sequence[int]] | None) -> SearchSpace:
    """`space` whose stages offer only `widths[i]` (what a `--widths-subset` table prices), or
    `space` itself without `widths`. The copy keeps the space's name and layer walk and is not
    registered; architectures it samples are architectures of `space`."""
    if not widths:
        return space
    restricted = copy.copy(space)
    restricted.stages = tuple(dataclasses.replace(stage, widths=tuple(sorted(chosen)))
                              for stage, chosen in zip(space.stages, widths))
    return restricted


def calibration_set(table: LatencyTable, count: int, seed: int,
                    widths: Sequence[Sequence[int]] | None = None) -> list[Architecture]:
    """`count` distinct networks to fit `table`'s calibration on, spread over the latency range.

    `CANDIDATES_PER_NETWORK * count` candidates come from `calibration_architectures` (uniform
    and slimmed, seed `seed + CALIBRATION_SEED_OFFSET`, so `lut.validate --seed seed` checks on
    other networks) within the table's `widths`; they are ranked by the table's naive sum and
    `count` evenly spaced ranks kept (the fastest and the slowest included), in drawing order, so
    that no latency region is fitted from one or two networks. Fewer come back when the space
    (or subset) holds fewer distinct networks.
    """
    meta = table.metadata
    space = within_widths(get_space(meta.space), widths)
    candidates = calibration_architectures(space, CANDIDATES_PER_NETWORK * count, seed + CALIBRATION_SEED_OFFSET,
                                           meta.resolution, meta.num_classes)
    distinct = list({arch.stages: arch for arch in candidates}.values())
    by_latency = sorted(range(len(distinct)), key=lambda index: table.predict_naive(distinct[index]))
    ranks = sorted({int(round(rank)) for rank in np.linspace(0, len(distinct) - 1, min(count, len(distinct)))})
    return [distinct[index] for index in sorted(by_latency[rank] for rank in ranks)]


def measure_networks(
    device: Device, table: LatencyTable, archs: Sequence[Architecture], progress: Callable[[], Any] | None = None
) -> list[NetworkMeasurement]:
    """Price each architecture with the table (all keys must exist), then measure it end to end."""
    for arch in archs:  # fail before measuring anything if the table cannot price a network
        table.sums_by_kind(arch)
    profiler = device.profiler()
    rows = []
    for arch in archs:
        sums = table.sums_by_kind(arch)
        record = profiler.profile_network(arch)
        rows.append(NetworkMeasurement(arch, sums, sum(sums.values()), record.p50_ms, record.p10_ms, record.p90_ms))
        if progress:
            progress()
    return rows


@dataclass(frozen=True)
class CalibrationSplit:
    """Networks of a calibration set and a held-out validation set, measured interleaved in time (a
    drift in the machine's load hits both alike); the per-kind calibration fitted on the calibration
    set, and the one-coefficient fit measured ≈ a·Σ + b on the same networks, for comparison."""

    calibration_rows: list[NetworkMeasurement]
    validation_rows: list[NetworkMeasurement]
    calibration: Calibration
    global_fit: Calibration


def measure_calibration_split(
    device: Device,
    table: LatencyTable,
    calibration_archs: Sequence[Architecture],
    validation_archs: Sequence[Architecture],
    progress: Callable[[], Any] | None = None,
) -> CalibrationSplit:
    """Measure both sets alternately (calibration, validation, calibration, ...) and fit on the first."""
    order: list[tuple[bool, Architecture]] = []
    for index in range(max(len(calibration_archs), len(validation_archs))):
        if index < len(calibration_archs):
            order.append((True, calibration_archs[index]))
        if index < len(validation_archs):
            order.append((False, validation_archs[index]))
    rows = measure_networks(device, table, [arch for _, arch in order], progress)
    fit_rows = [row for (fit, _), row in zip(order, rows) if fit]
    held_out = [row for (fit, _), row in zip(order, rows) if not fit]
    measured = [row.measured_ms for row in fit_rows]
    return CalibrationSplit(
        fit_rows,
        held_out,
        fit_calibration([row.sums_by_kind for row in fit_rows], measured),
        fit_calibration([{"all": row.naive_ms} for row in fit_rows], measured),
    )


def plot_fidelity(
    path: Path, measured: Sequence[float], series: Sequence[tuple[str, Sequence[float]]], title: str
) -> None:
    """Predicted-vs-measured scatter, one colour per predictor, y = x with ±5% / ±10% bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = np.asarray(measured, dtype=np.float64)
    everything = np.concatenate([measured, *[np.asarray(values) for _, values in series]])
    low, high = float(everything.min()) * 0.9, float(everything.max()) * 1.1
    line = np.linspace(low, high, 50)
    figure, axes = plt.subplots(figsize=(6.4, 6.0), dpi=120)
    axes.fill_between(line, line * 0.90, line * 1.10, color="0.88", label="±10%")
    axes.fill_between(line, line * 0.95, line * 1.05, color="0.75", label="±5%")
    axes.plot(line, line, color="0.3", linewidth=1, label="predicted = measured")
    markers = ("x", "o", "^", "s")
    for index, (label, values) in enumerate(series):
        metrics = fidelity_metrics(values, measured)
        axes.scatter(
            measured,
            values,
            s=16,
            marker=markers[index % len(markers)],
            alpha=0.8,
            label=f"{label}: {metrics.within_10_percent:.0f}% within ±10%, MAPE {metrics.mape_percent:.1f}%",
        )
    axes.set_xlim(low, high)
    axes.set_ylim(low, high)
    axes.set_xlabel("measured end-to-end latency (ms)")
    axes.set_ylabel("predicted latency from the table (ms)")
    axes.set_title(title, fontsize=10)
    axes.legend(loc="upper left", fontsize=8)
    axes.grid(True, linewidth=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())


def validate(
    device: Device,
    table: LatencyTable,
    space: SearchSpace,
    samples: int,
    seed: int,
    refit: bool,
    progress: Callable[[], Any] | None = None,
) -> tuple[dict[str, Any], LatencyTable, list[tuple[str, list[float]]], list[float]]:
    """Measure, optionally refit; returns (report, table to keep, plotted series, measured of the evaluated half).
    A refit the networks cannot support is a `CalibrationError` (`TableError` if it breaks the table)."""
    meta = table.metadata
    if refit:  # fitted on uniform + slimmed networks (`calibration_architectures`), checked on uniform others
        archs = (calibration_architectures(space, samples // 2, seed + CALIBRATION_SEED_OFFSET, meta.resolution, meta.num_classes)
                 + sample_architectures(space, samples - samples // 2, seed, meta.resolution, meta.num_classes))
    else:
        archs = sample_architectures(space, samples, seed, meta.resolution, meta.num_classes)
    start_load = loadavg()
    rows = measure_networks(device, table, archs, progress)
    if refit:
        half = samples // 2
        fit_rows, eval_rows = rows[:half], rows[half:]
        calibration = fit_calibration([r.sums_by_kind for r in fit_rows], [r.measured_ms for r in fit_rows])
        table = table.with_calibration(calibration).check()
    else:
        fit_rows, eval_rows = [], rows
    measured = [r.measured_ms for r in eval_rows]
    naive = [r.naive_ms for r in eval_rows]
    calibrated = [table.calibration.apply(r.sums_by_kind) for r in eval_rows]
    report = {
        "device": device.name,
        "space": space.name,
        "resolution": meta.resolution,
        "threads": device.threads,
        "samples": samples,
        "seed": seed,
        "refit": refit,
        "table": {"source": table.source, "records": len(table), "calibration": table.calibration.to_dict()},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "loadavg": {"start": start_load, "end": loadavg()},
        "calibration_networks": len(fit_rows),
        "evaluated_networks": len(eval_rows),
        "naive": fidelity_metrics(naive, measured).to_dict() if len(eval_rows) > 1 else None,
        "calibrated": fidelity_metrics(calibrated, measured).to_dict() if len(eval_rows) > 1 else None,
        "networks": [r.to_dict(p) for r, p in zip(eval_rows, calibrated)],
    }
    series = [("naive sum", naive), (f"calibrated ({table.calibration.method})", calibrated)]
    return report, table, series, measured


def read_measurements(path: Path, space: SearchSpace, resolution: int, num_classes: int) -> list[tuple[Architecture, float]]:
    """(architecture, measured ms) pairs from a `architecture,measured_ms` CSV; UsageError names the line.

    An architecture is `ref:NAME` or an architecture YAML path relative to the CSV's folder. A
    file that is not a `latnas/architecture@1` document is refused without quoting it.
    """
    rows = read_csv_rows(path, "--measurements")
    if not rows or [c.strip() for c in rows[0][1]] != ["architecture", "measured_ms"]:
        raise UsageError(f"--measurements: {path}: the header must be 'architecture,measured_ms'")
    pairs = []
    for number, row in rows[1:]:
        where = f"--measurements: {path} line {number}"
        if len(row) != 2:
            raise UsageError(f"{where}: expected 2 fields, got {len(row)}")
        name, value = row[0].strip(), row[1].strip()
        try:
            measured = float(value)
        except ValueError:
            measured = float("nan")
        if measured not in LATENCY_MS:
            raise UsageError(f"{where}: measured_ms must be a positive number of at most {LATENCY_MS.high:g} ms, "
                             f"got {value[:40]!r}")
        if name.startswith("ref:"):
            try:
                arch = space.reference(name[4:])
            except KeyError:
                raise UsageError(f"{where}: {space.name} has no reference {name[4:][:80]!r}; "
                                 f"references: {', '.join(space.references())}") from None
        else:
            arch = _architecture_file(path.parent / name, f"{where}: {name[:200]}")
            try:
                space.validate(arch)
            except ArchitectureError as error:
                raise UsageError(f"{where}: {name[:200]}: {error}") from None
        pairs.append((dataclasses.replace(arch, resolution=resolution, num_classes=num_classes), measured))
    if len(pairs) < 2:
        raise UsageError(f"--measurements: {path}: needs at least 2 measured networks, got {len(pairs)}")
    return pairs


def _architecture_file(path: Path, where: str) -> Architecture:
    """The architecture in `path`; a file that is not one is refused without quoting its content."""
    try:
        data = parse_yaml_document(read_input_text(path, "", MAX_ARCHITECTURE_BYTES), str(path))
    except FileError as error:
        raise UsageError(f"{where}: {str(error).removeprefix(f'{path}: ')}") from None
    if not isinstance(data, dict) or data.get("schema") != ARCHITECTURE_SCHEMA:
        raise UsageError(f"{where}: not a {ARCHITECTURE_SCHEMA} document")
    try:
        return Architecture.from_dict(data)
    except ArchitectureError as error:
        raise UsageError(f"{where}: {error}") from None


def validate_measured(
    table: LatencyTable, space: SearchSpace, pairs: Sequence[tuple[Architecture, float]], refit: bool
) -> tuple[dict[str, Any], LatencyTable, list[tuple[str, list[float]]], list[float]]:
    """Price networks measured elsewhere; with `refit`, fit the calibration on all of them
    (`CalibrationError` when they cannot support one, `TableError` when it would break the table)."""
    sums = [table.sums_by_kind(arch) for arch, _ in pairs]
    measured = [ms for _, ms in pairs]
    if refit:
        table = table.with_calibration(fit_calibration(sums, measured)).check()
    naive = [sum(s.values()) for s in sums]
    calibrated = [table.calibration.apply(s) for s in sums]
    meta = table.metadata
    report = {
        "device": meta.device,
        "space": space.name,
        "resolution": meta.resolution,
        "source": "measurements file",
        "refit": refit,
        "error_is": "in-sample (the calibration was fitted on these networks)" if refit else "out-of-sample",
        "table": {"source": table.source, "records": len(table), "calibration": table.calibration.to_dict()},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "naive": fidelity_metrics(naive, measured).to_dict(),
        "calibrated": fidelity_metrics(calibrated, measured).to_dict(),
        "networks": [
            {"widths": list(a.widths), "depths": list(a.depths), "naive_ms": round(n, 4), "predicted_ms": round(c, 4), "measured_ms": m}
            for (a, m), n, c in zip(pairs, naive, calibrated)
        ],
    }
    return report, table, [("naive sum", naive), (f"calibrated ({table.calibration.method})", calibrated)], measured


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Measure sampled networks end to end and report a latency table's error.")
    add_device_arguments(parser)
    parser.add_argument("--space", required=True, help="search space name")
    parser.add_argument("--resolution", type=integer_in(RESOLUTION),
                        help=f"input resolution of the table, {RESOLUTION.low}..{RESOLUTION.high} (default: the space's)")
    parser.add_argument("--lut", help="table file (default: the device's table for the space)")
    parser.add_argument("--samples", type=integer_in(SAMPLES),
                        help=f"sampled architectures, {SAMPLES.low}..{SAMPLES.high} (default {DEFAULT_SAMPLES})")
    parser.add_argument("--seed", type=integer_in(SEED), help=f"sampling seed, {SEED.low}..{SEED.high} (default 0)")
    parser.add_argument("--refit", action="store_true", help="fit the calibration on half, report on the other half, save it")
    parser.add_argument(
        "--measurements", type=Path, help="CSV 'architecture,measured_ms' of networks measured elsewhere (no measuring here)"
    )
    parser.add_argument("--report", help="write the report JSON here")
    parser.add_argument("--plot", help="write a predicted-vs-measured PNG here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    space, resolution = space_from_args(args.space, args.resolution)
    if args.measurements is not None:
        refuse_options(args, (*TIMING_OPTIONS, "--samples", "--seed"), "with --measurements (nothing is measured here)")
    samples = DEFAULT_SAMPLES if args.samples is None else args.samples
    seed = args.seed or 0
    device = device_from_args(args, measuring=args.measurements is None)
    if args.refit and samples < 4 and args.measurements is None:
        raise UsageError("--samples: --refit needs at least 4 samples (half to fit, half to check)")
    if args.plot and not args.plot.lower().endswith(".png"):
        raise UsageError(f"--plot: expected a .png file name, got {args.plot[:200]!r}")
    try:
        if args.lut:
            table_path = Path(args.lut)
            table = load_table(table_path)
        else:
            table_path = device.default_table_path(space, resolution)
            table = device.default_table(space, resolution)
    except TableError as error:
        raise UsageError(f"--lut: {error}") from None
    meta = table.metadata
    if (meta.device, meta.space, meta.resolution) != (device.name, space.name, resolution):
        raise UsageError(
            f"--lut: the table is for {meta.device} {meta.space}@{meta.resolution}, not {device.name} {space.name}@{resolution}"
        )
    # with --refit the table is an output too (rewritten in place); without, an input no output may replace
    outputs = {"--report": args.report, "--plot": args.plot, "--lut": table_path if args.refit else None}
    check_output_paths(outputs, {"--lut": None if args.refit else table_path, "--measurements": args.measurements})

    try:
        if args.measurements is not None:
            pairs = read_measurements(args.measurements, space, meta.resolution, meta.num_classes)
            try:
                report, table, series, measured = validate_measured(table, space, pairs, args.refit)
            except (CalibrationError, TableError) as error:
                raise UsageError(f"--refit: no calibration from {args.measurements}: {error}; the table is unchanged") from None
        else:
            progress = LazyProgress("measuring networks", "net")
            try:
                report, table, series, measured = validate(device, table, space, samples, seed, args.refit,
                                                           lambda: progress(1, samples))
            except (CalibrationError, TableError) as error:
                raise UsageError(f"--refit: no calibration: {error}; the table is unchanged") from None
            finally:
                progress.close()
    except MissingKeysError as error:
        raise UsageError(f"--lut: {error}") from None
    if args.refit:
        table.save(table_path)
        print(f"saved the refitted calibration into {table_path}", file=sys.stderr)
    if args.report:
        import json

        write_text_atomic(Path(args.report), json.dumps(report, indent=1) + "\n")
    if args.plot and len(measured) > 1:
        plot_fidelity(
            Path(args.plot),
            measured,
            series,
            f"{device.name} {space.name}@{resolution}, {len(measured)} networks"
            + (" held out from the fit" if args.refit and args.measurements is None else ""),
        )
    for name in ("naive", "calibrated"):
        metrics = report[name]
        if metrics:
            print(
                f"{name:<10} within ±5%: {metrics['within_5_percent']:5.1f}%  within ±10%: {metrics['within_10_percent']:5.1f}%  "
                f"MAPE {metrics['mape_percent']:.2f}%  Spearman {metrics['spearman']:.3f}  ({metrics['networks']} networks)"
            )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_command(main, prog=PROG))
