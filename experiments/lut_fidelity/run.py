"""Study: the ort-cpu layer table of every space against end-to-end measurement.

    python experiments/lut_fidelity/run.py [--config experiments/lut_fidelity/config.yaml]

For each configured space (EfficientFormer V1 and V2, EdgeViT, EdgeNeXt) at its default
resolution, on `ort-cpu` with the configured threads and batch:

1. The layer table: reused from `tables_dir` when a finished file is there, resumed from its
   journal when a build was interrupted, copied from `start_from` when the config names one, built
   with `lut.build.build_table` otherwise. The results say which of these happened to each table.
2. Sampled networks measured end to end (`lut.validate.measure_networks`): a calibration set (its
   seed) and a validation set (another seed; an architecture also in the calibration set would be
   dropped from it), interleaved in time. The per-kind calibration is fitted on the first
   (`lut.calibration.fit_calibration`, as `benchmarks/lut_fidelity.py` does for V2) and saved into
   the table; the naive sum, a global `a·Σ + b` fit and the per-kind calibration are scored on the
   second (`lut.validate.fidelity_metrics`: share within ±5%/±10%, MAPE, max error, Spearman).

Before measuring anything it waits for a quiet machine (`quiet` in the config). Writes into this
folder (atomically): `results.json` (config, machine, load around every phase, versions, wall
time, tables' provenance, calibrations, metrics, every network), `errors.csv` (space × predictor),
`networks.csv` (one row per measured network), `fidelity.png` (2×2 predicted vs measured), and the
calibrated tables under `tables_dir`. Start it at normal priority so that measurements get a core.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))  # for `experiments.study`: the studies are not an installed package

from experiments.study import png_bytes, relative  # noqa: E402
from lut.build import build_table, journal_path  # noqa: E402
from lut.devices import Device, host_cpu, loadavg  # noqa: E402
from lut.registry import get_device  # noqa: E402
from lut.profiler import TimingSettings  # noqa: E402
from lut.table import Calibration, LatencyTable, load_table  # noqa: E402
from lut.validate import (  # noqa: E402
    FidelityMetrics,
    NetworkMeasurement,
    fidelity_metrics,
    measure_calibration_split,
    sample_architectures,
)
from search_spaces import SearchSpace, count_macs, count_params, get_space  # noqa: E402
from search_spaces.files import write_bytes_atomic, write_text_atomic  # noqa: E402

CONFIG_KEYS = {"device", "threads", "batch", "torch_threads", "num_classes", "timing", "quiet", "tables_dir", "spaces", "outputs"}
SPACE_KEYS = {"label", "resolution", "widths_subset", "start_from", "calibration", "validation"}
SAMPLE_KEYS = {"samples", "seed"}
QUIET_KEYS = {"max_load_1min", "poll_s", "give_up_after_s"}
OUTPUT_KEYS = {"results", "errors_csv", "networks_csv", "plot_png"}

# The predictors scored on the validation networks; the last is the table's final calibration.
PREDICTORS = ("naive_sum", "global_fit", "per_kind_calibration")
PREDICTOR_LABELS = {
    "naive_sum": "naive sum of layers",
    "global_fit": "global a·Σ + b",
    "per_kind_calibration": "per-kind calibration (final)",
}
ERROR_COLUMNS = (
    "space", "resolution", "table_specs", "table_origin", "calibration_networks", "validation_networks", "predictor",
    "within_5_percent", "within_10_percent", "mape_percent", "max_error_percent", "mean_signed_error_percent", "spearman",
)
NETWORK_COLUMNS = (
    "space", "role", "index", "params_m", "gmacs", "widths", "depths", "naive_ms", "global_fit_ms", "predicted_ms",
    "measured_ms", "measured_p10_ms", "measured_p90_ms",
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- configuration -----------------------------------------------------------------------------------
def load_config(path: Path) -> dict[str, Any]:
    """The study's settings; `ValueError` naming every unknown or missing key."""
    config = yaml.safe_load(path.read_text("utf-8"))
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    problems = [f"unknown key {key!r}" for key in sorted(set(config) - CONFIG_KEYS)]
    problems += [f"missing key {key!r}" for key in sorted(CONFIG_KEYS - set(config))]

    def check(section: Any, keys: set[str], where: str) -> None:
        if not isinstance(section, dict):
            problems.append(f"{where}: expected a mapping")
            return
        problems.extend(f"{where}: unknown key {key!r}" for key in sorted(set(section) - keys))
        problems.extend(f"{where}: missing key {key!r}" for key in sorted(keys - set(section)))

    if not problems:
        check(config["quiet"], QUIET_KEYS, "quiet")
        check(config["outputs"], OUTPUT_KEYS, "outputs")
        for name, settings in config["spaces"].items():
            check(settings, SPACE_KEYS, f"spaces.{name}")
            if isinstance(settings, dict):
                for part in ("calibration", "validation"):
                    if part in settings:
                        check(settings[part], SAMPLE_KEYS, f"spaces.{name}.{part}")
                if settings.get("calibration", {}).get("seed") == settings.get("validation", {}).get("seed"):
                    problems.append(f"spaces.{name}: the calibration and validation seeds must differ")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return config


def versions() -> dict[str, str]:
    import matplotlib
    import onnx
    import onnxruntime
    import scipy
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "matplotlib": matplotlib.__version__,
    }


# -- a quiet machine ---------------------------------------------------------------------------------
def wait_for_quiet(max_load: float, poll_s: float, give_up_after_s: float) -> dict[str, Any]:
    """Poll /proc/loadavg until the 1-minute load is below `max_load`, at most `give_up_after_s`."""
    started = time.monotonic()
    first = loadavg()
    polls = 0
    while True:
        current = loadavg()
        one_minute = float(current.split()[0]) if current else 0.0
        waited = time.monotonic() - started
        if one_minute < max_load:
            quiet, gave_up = True, False
            break
        if waited >= give_up_after_s:
            quiet, gave_up = False, True
            log(f"load still {one_minute:.2f} after {waited / 60:.0f} min: measuring anyway (the results say so)")
            break
        if polls == 0:
            log(f"waiting for a quiet machine: 1-minute load {one_minute:.2f} >= {max_load} "
                f"(polling every {poll_s:g} s, giving up after {give_up_after_s / 60:.0f} min)")
        elif polls % 5 == 0:
            log(f"  still waiting: load {current} ({waited / 60:.0f} min)")
        polls += 1
        time.sleep(poll_s)
    return {
        "max_load_1min": max_load,
        "loadavg_first_poll": first,
        "loadavg_when_started": current,
        "waited_s": round(time.monotonic() - started, 1),
        "quiet": quiet,
        "gave_up": gave_up,
    }


# -- tables ------------------------------------------------------------------------------------------
def check_table(table: LatencyTable, device: Device, space: SearchSpace, resolution: int, num_classes: int,
                widths: Sequence[Sequence[int]] | None, path: Path, remedy: str = "delete it to rebuild") -> None:
    """Refuse a table measured with other settings than this study's (`ValueError` naming them)."""
    meta = table.metadata
    expected = {
        "device": device.name, "space": space.name, "resolution": resolution, "num_classes": num_classes,
        "threads": device.threads, "batch": device.batch,
    }
    wrong = {name: getattr(meta, name) for name, value in expected.items() if getattr(meta, name) != value}
    if meta.build.get("timing") != device.timing.to_dict():
        wrong["build.timing"] = meta.build.get("timing")
    subset = [list(w) for w in widths] if widths else None
    if meta.build.get("widths_subset") != subset:
        wrong["build.widths_subset"] = meta.build.get("widths_subset")
    if wrong:
        raise ValueError(f"{relative(path)} was measured with other settings than this study's: {wrong}; expected {expected}, "
                         f"timing {device.timing.to_dict()}, widths_subset {subset} ({remedy})")


def precheck_tables(device: Device, spaces: Mapping[str, SearchSpace], config: Mapping[str, Any], tables_dir: Path) -> None:
    """Before any waiting or measuring: every table the study would reuse or copy fits its settings."""
    num_classes = int(config["num_classes"])
    for name, space in spaces.items():
        settings = config["spaces"][name]
        resolution = int(settings["resolution"])
        path = tables_dir / device.table_name(space, resolution)
        if path.exists():
            check_table(load_table(path), device, space, resolution, num_classes, settings["widths_subset"], path)
        elif settings["start_from"] and not journal_path(path).exists():
            source = ROOT / settings["start_from"]
            check_table(load_table(source), device, space, resolution, num_classes, settings["widths_subset"], source,
                        "set start_from: null to build")


def prepare_table(device: Device, space: SearchSpace, settings: Mapping[str, Any], num_classes: int,
                  tables_dir: Path) -> tuple[LatencyTable, Path, dict[str, Any]]:
    """The space's table in `tables_dir`: reused, copied from `start_from`, resumed or built here."""
    from tqdm import tqdm

    resolution = int(settings["resolution"])
    widths = settings["widths_subset"]
    path = tables_dir / device.table_name(space, resolution)
    started, load_before = time.perf_counter(), loadavg()
    journal = journal_path(path)
    if path.exists():
        table = load_table(path)
        origin = f"reused (already in tables_dir; built {table.metadata.date}, not in this run)"
        if settings["start_from"] and (ROOT / settings["start_from"]).exists():
            if load_table(ROOT / settings["start_from"]).records == table.records:
                origin = f"copied from {settings['start_from']} (by an earlier run; built {table.metadata.date}, not in this run)"
        log(f"{space.name}: reusing {relative(path)} ({len(table)} records, built {table.metadata.date})")
    elif settings["start_from"] and not journal.exists():
        source = ROOT / settings["start_from"]
        table = load_table(source)
        check_table(table, device, space, resolution, num_classes, widths, source, "set start_from: null to build")
        table.save(path)
        table = load_table(path)
        origin = f"copied from {settings['start_from']} (built {table.metadata.date}, not rebuilt in this run)"
        log(f"{space.name}: copied {settings['start_from']} to {relative(path)} ({len(table)} records)")
    else:
        resume = journal.exists()
        log(f"{space.name}: {'resuming' if resume else 'building'} {relative(path)}")
        with tqdm(desc=f"table {space.name}@{resolution}", unit="spec", file=sys.stderr, dynamic_ncols=True) as bar:

            def progress(step: int, total: int) -> None:
                bar.total = total
                bar.update(step)

            table = build_table(device, space, resolution, path, widths=widths, num_classes=num_classes,
                                resume=resume, progress=progress)
        build = table.metadata.build
        origin = ("built in this run" if not build["resumed"]
                  else f"built in this run, resumed from a journal ({build['resumed']} of {build['specs']} specs were done before)")
        log(f"{space.name}: {origin}: {len(table)} records in {build['seconds']} s")
    check_table(table, device, space, resolution, num_classes, widths, path)
    provenance = {
        "path": relative(path),
        "origin": origin,
        "built_in_this_run": origin.startswith("built in this run"),
        "records": len(table),
        "date": table.metadata.date,
        "build": dict(table.metadata.build),
        "build_loadavg": dict(table.metadata.loadavg),
        "seconds_in_this_run": round(time.perf_counter() - started, 1),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
    }
    return table, path, provenance


# -- measuring and scoring ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SpaceResult:
    """One space's measured networks, fitted calibrations and scores."""

    name: str
    label: str
    resolution: int
    calibration_rows: list[NetworkMeasurement]
    validation_rows: list[NetworkMeasurement]
    final: Calibration
    global_fit: Calibration
    metrics: dict[str, FidelityMetrics]
    dropped_duplicates: int
    measure_seconds: float
    loadavg_before: str
    loadavg_after: str

    def predictions(self, row: NetworkMeasurement) -> dict[str, float]:
        """Every predictor's latency (ms) for one measured network."""
        return predictions(row, self.final, self.global_fit)


def predictions(row: NetworkMeasurement, final: Calibration, global_fit: Calibration) -> dict[str, float]:
    """The latency (ms) each predictor gives one measured network."""
    return {
        "naive_sum": row.naive_ms,
        "global_fit": global_fit.apply({"all": row.naive_ms}),
        "per_kind_calibration": final.apply(row.sums_by_kind),
    }


def measure_space(device: Device, table: LatencyTable, space: SearchSpace, settings: Mapping[str, Any],
                  num_classes: int) -> SpaceResult:
    """Sample, measure (calibration and validation interleaved), fit on one set, score on the other."""
    from tqdm import tqdm

    resolution = int(settings["resolution"])
    calibration_archs = sample_architectures(space, int(settings["calibration"]["samples"]),
                                             int(settings["calibration"]["seed"]), resolution, num_classes)
    drawn = sample_architectures(space, int(settings["validation"]["samples"]), int(settings["validation"]["seed"]),
                                 resolution, num_classes)
    seen = set(calibration_archs)
    validation_archs = [arch for arch in drawn if arch not in seen]
    load_before, started = loadavg(), time.perf_counter()
    with tqdm(total=len(calibration_archs) + len(validation_archs), desc=f"networks {space.name}@{resolution}",
              unit="net", file=sys.stderr, dynamic_ncols=True) as bar:
        split = measure_calibration_split(device, table, calibration_archs, validation_archs, bar.update)
    seconds = time.perf_counter() - started
    eval_rows = split.validation_rows
    measured = [row.measured_ms for row in eval_rows]
    predicted = [predictions(row, split.calibration, split.global_fit) for row in eval_rows]
    metrics = {name: fidelity_metrics([values[name] for values in predicted], measured) for name in PREDICTORS}
    return SpaceResult(space.name, str(settings["label"]), resolution, split.calibration_rows, eval_rows,
                       split.calibration, split.global_fit, metrics, len(drawn) - len(validation_archs),
                       round(seconds, 1), load_before, loadavg())


# -- outputs -----------------------------------------------------------------------------------------
def errors_csv(results: Sequence[SpaceResult], tables: Mapping[str, Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(ERROR_COLUMNS)
    for result in results:
        for name in PREDICTORS:
            metrics = result.metrics[name].to_dict()
            writer.writerow([
                result.name, result.resolution, tables[result.name]["records"],
                "built" if tables[result.name]["built_in_this_run"] else tables[result.name]["origin"].split(" (")[0],
                len(result.calibration_rows), len(result.validation_rows), name,
                *(round(metrics[column], 2) if column != "spearman" else round(metrics[column], 4)
                  for column in ERROR_COLUMNS[7:]),
            ])
    return buffer.getvalue()


def network_rows(result: SpaceResult) -> list[dict[str, Any]]:
    """Every measured network of a space (calibration first), with every predictor."""
    rows = []
    for role, members in (("calibration", result.calibration_rows), ("validation", result.validation_rows)):
        for index, row in enumerate(members):
            predictions = result.predictions(row)
            rows.append({
                "space": result.name,
                "role": role,
                "index": index,
                "params_m": round(count_params(row.arch) / 1e6, 3),
                "gmacs": round(count_macs(row.arch) / 1e9, 3),
                **row.to_dict(),
                "global_fit_ms": round(predictions["global_fit"], 4),
                "predicted_ms": round(predictions["per_kind_calibration"], 4),
            })
    return rows


def networks_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(NETWORK_COLUMNS)
    for row in rows:
        writer.writerow([" ".join(map(str, row[c])) if isinstance(row[c], list) else row[c] for c in NETWORK_COLUMNS])
    return buffer.getvalue()


@dataclass(frozen=True)
class Panel:
    """What one scatter shows: a space's validation networks, naive and final predictions, scores."""

    label: str
    resolution: int
    calibration_networks: int
    measured_ms: list[float]
    naive_ms: list[float]
    final_ms: list[float]
    naive_metrics: Mapping[str, float]
    final_metrics: Mapping[str, float]

    @classmethod
    def of_result(cls, result: SpaceResult) -> "Panel":
        rows = result.validation_rows
        return cls(result.label, result.resolution, len(result.calibration_rows), [row.measured_ms for row in rows],
                   [row.naive_ms for row in rows], [result.predictions(row)["per_kind_calibration"] for row in rows],
                   result.metrics["naive_sum"].to_dict(), result.metrics["per_kind_calibration"].to_dict())

    @classmethod
    def of_report(cls, report: Mapping[str, Any], space: str) -> "Panel":
        """The panel of `space` from a written results.json (what `--replot` draws)."""
        summary = report["spaces"][space]
        rows = [row for row in report["networks"] if row["space"] == space and row["role"] == "validation"]
        return cls(summary["label"], summary["resolution"], summary["calibration_networks"],
                   [row["measured_ms"] for row in rows], [row["naive_ms"] for row in rows],
                   [row["predicted_ms"] for row in rows], summary["metrics"]["naive_sum"],
                   summary["metrics"]["per_kind_calibration"])


def plot_title(device: Mapping[str, Any]) -> str:
    settings, threads = device["settings"], device["settings"]["threads"]
    return (f"{device['name']} (onnxruntime {device['runtime']['onnxruntime']}, {threads} thread{'s' if threads > 1 else ''}, "
            f"batch {settings['batch']}): layer-table prediction vs end-to-end measurement")


def plot_fidelity_grid(panels: Sequence[Panel], title: str) -> bytes:
    """Predicted vs measured (log-log) of each space's validation networks: naive sum and final
    calibration in two colours, y = x and the ±10% band; one panel per space, 2 columns."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    columns = 2
    rows = (len(panels) + columns - 1) // columns
    figure, grid = plt.subplots(rows, columns, figsize=(11.0, 5.4 * rows), dpi=100, squeeze=False, layout="constrained")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    for axes, panel in zip(grid.flat, panels):
        measured = np.asarray(panel.measured_ms)
        series = (
            ("naive sum of layers", np.asarray(panel.naive_ms), panel.naive_metrics, "tab:red", "x"),
            ("per-kind calibration (final)", np.asarray(panel.final_ms), panel.final_metrics, "tab:blue", "o"),
        )
        everything = np.concatenate([measured, *(values for _, values, _, _, _ in series)])
        low, high = float(everything.min()) / 1.15, float(everything.max()) * 1.15
        line = np.geomspace(low, high, 100)
        axes.fill_between(line, line * 0.9, line * 1.1, color="0.88", label="±10% of measured")
        axes.plot(line, line, color="0.3", linewidth=1, label="predicted = measured")
        for label, values, metrics, colour, marker in series:
            axes.scatter(measured, values, s=22, marker=marker, color=colour, alpha=0.85,
                         facecolors=colour if marker == "x" else "none", linewidths=1.1,
                         label=f"{label}\n{metrics['within_10_percent']:.0f}% within ±10%, "
                               f"MAPE {metrics['mape_percent']:.1f}%, Spearman {metrics['spearman']:.3f}")
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlim(low, high)
        axes.set_ylim(low, high)
        for axis in (axes.xaxis, axes.yaxis):  # the ranges span less than a decade or two: label 1-1.5-2-3-...
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)))
            axis.set_major_formatter(plain)
            axis.set_minor_formatter(NullFormatter())
        axes.set_xlabel("measured end-to-end latency (ms, log scale)")
        axes.set_ylabel("predicted from the layer table (ms, log scale)")
        axes.set_title(f"{panel.label} @ {panel.resolution} px: {len(measured)} validation networks "
                       f"(fit on {panel.calibration_networks} others)", fontsize=10)
        # points lie near the diagonal, naive sums below it: the upper-left corner stays free
        axes.legend(loc="upper left", fontsize=8, framealpha=0.9)
        axes.grid(True, which="major", linewidth=0.3)
        axes.set_aspect("equal", adjustable="box")
    for axes in list(grid.flat)[len(panels):]:
        axes.set_visible(False)
    figure.suptitle(title, fontsize=12)
    return png_bytes(figure, colours=256)


def report_json(report: Mapping[str, Any]) -> str:
    """The report as indented JSON, except that each network is one line (keeps the file small)."""
    head = {key: value for key, value in report.items() if key != "networks"}
    text = json.dumps(head, indent=1)
    lines = ",\n".join("  " + json.dumps(row, separators=(",", ":")) for row in report["networks"])
    return f'{text[:-2]},\n "networks": [\n{lines}\n ]\n}}\n'


# -- the study ---------------------------------------------------------------------------------------
def run(config: Mapping[str, Any], config_path: Path) -> dict[str, Any]:
    import torch

    torch.set_num_threads(int(config["torch_threads"]))
    device = get_device(str(config["device"]), threads=int(config["threads"]), batch=int(config["batch"]),
                        timing=TimingSettings(**config["timing"]))
    device.require_available()
    num_classes = int(config["num_classes"])
    spaces = {name: get_space(name) for name in config["spaces"]}
    tables_dir = HERE / config["tables_dir"]
    precheck_tables(device, spaces, config, tables_dir)
    quiet = config["quiet"]
    waited = wait_for_quiet(float(quiet["max_load_1min"]), float(quiet["poll_s"]), float(quiet["give_up_after_s"]))

    started, load_before = time.perf_counter(), loadavg()
    tables: dict[str, LatencyTable] = {}
    paths: dict[str, Path] = {}
    provenance: dict[str, dict[str, Any]] = {}
    for name, space in spaces.items():
        tables[name], paths[name], provenance[name] = prepare_table(device, space, config["spaces"][name], num_classes, tables_dir)

    results: list[SpaceResult] = []
    for name, space in spaces.items():
        result = measure_space(device, tables[name], space, config["spaces"][name], num_classes)
        tables[name].with_calibration(result.final).save(paths[name])
        provenance[name]["sha256_calibrated"] = load_table(paths[name]).sha256
        results.append(result)
        for predictor in PREDICTORS:
            metrics = result.metrics[predictor]
            log(f"{name:<20} {predictor:<22} ±10%: {metrics.within_10_percent:5.1f}%  MAPE {metrics.mape_percent:5.2f}%  "
                f"max {metrics.max_error_percent:5.1f}%  Spearman {metrics.spearman:.3f}")

    outputs = {key: HERE / value for key, value in config["outputs"].items()}
    all_networks = [row for result in results for row in network_rows(result)]
    write_text_atomic(outputs["errors_csv"], errors_csv(results, provenance))
    write_text_atomic(outputs["networks_csv"], networks_csv(all_networks))
    report = {
        "study": "lut_fidelity",
        "command": "python experiments/lut_fidelity/run.py",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config_file": relative(config_path),
        "config": dict(config),
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu": host_cpu(),
            "platform": platform.platform(),
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
        },
        "quiet_wait": waited,
        "versions": versions(),
        "device": {"name": device.name, "settings": device.settings(), "runtime": device.runtime_versions()},
        "wall_time_s": round(time.perf_counter() - started, 1),
        "tables": provenance,
        "spaces": {
            result.name: {
                "label": result.label,
                "resolution": result.resolution,
                "calibration_networks": len(result.calibration_rows),
                "validation_networks": len(result.validation_rows),
                "validation_duplicates_dropped": result.dropped_duplicates,
                "measure_seconds": result.measure_seconds,
                "loadavg_before": result.loadavg_before,
                "loadavg_after": result.loadavg_after,
                "calibration": result.final.to_dict(),
                "global_fit": result.global_fit.to_dict(),
                "metrics": {name: result.metrics[name].to_dict() for name in PREDICTORS},
            }
            for result in results
        },
        "networks": all_networks,
    }
    write_text_atomic(outputs["results"], report_json(report))
    write_bytes_atomic(outputs["plot_png"], plot_fidelity_grid([Panel.of_result(r) for r in results], plot_title(report["device"])))
    log(f"wrote {', '.join(relative(path) for path in outputs.values())} and the tables in {report['wall_time_s']} s "
        f"(load {load_before.split()[0]} -> {report['machine']['loadavg_after'].split()[0]})")
    return report


def replot(config: Mapping[str, Any]) -> None:
    """Redraw the figure from the results file the config names (e.g. after a change of style)."""
    results_path, plot_path = HERE / config["outputs"]["results"], HERE / config["outputs"]["plot_png"]
    report = json.loads(results_path.read_text("utf-8"))
    panels = [Panel.of_report(report, space) for space in report["spaces"]]
    write_bytes_atomic(plot_path, plot_fidelity_grid(panels, plot_title(report["device"])))
    log(f"redrew {relative(plot_path)} from {relative(results_path)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=HERE / "config.yaml", help="study settings (default: %(default)s)")
    parser.add_argument("--replot", action="store_true", help="only redraw the figure from the results file (measures nothing)")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    # the TorchScript exporter notes, for every strided slice, that it does not constant-fold it;
    # the exported graph is what the runtime runs either way
    warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
    config_path = args.config.resolve()
    config = load_config(config_path)
    if args.replot:
        replot(config)
    else:
        run(config, config_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
