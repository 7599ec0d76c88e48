"""Study: every reference variant of every space — params, GMACs, iPhone 12 and ort-cpu latency, MES.

    python experiments/reference_models/run.py [--config experiments/reference_models/config.yaml]

For each reference variant (EfficientFormer V1 l1/l3/l7, V2 s0/s1/s2/l, EdgeViT xxs/xs/s, EdgeNeXt
xxs/xs/s) at its space's default resolution: parameters and MACs from layer shapes
(`count_params`, `count_macs`), the predicted iPhone 12 latency from the shipped table
(`get_device("iphone12").default_table(space)`), the published iPhone 12 latency where one exists,
the measured `ort-cpu` latency (1 thread, batch 1, end to end with the empty call subtracted:
`get_device("ort-cpu", threads=1).profile_network(arch)`, p10/p50/p90; measured in several rounds,
round robin over the variants, and the round with the lowest p50 kept), the predicted `ort-cpu`
latency where a table of this host exists (V2), and MES from params and the iPhone 12 prediction
(`nas.objectives.mes`).

Writes into this folder (atomically): `results.json` (config, machine and load around every
measurement, versions, wall time, every number), `reference_models.csv` and `latency_vs_params.png`.
The measurements run at the priority the command is started with: start it at normal priority
so that they get a core. Before each round it waits (bounded, see `quiet` in the config) for a
quiet machine. About 40 s per round on a free core (V1 l7 takes ~0.2 s a run).
"""

from __future__ import annotations

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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))  # for `experiments.study`: the studies are not an installed package

from experiments.study import (  # noqa: E402
    Variant,
    config_path_from_command_line,
    exit_code_of,
    load_settings,
    log,
    png_bytes,
    variants_of,
    versions,
)
from lut.devices import host_cpu, loadavg  # noqa: E402
from lut.registry import get_device  # noqa: E402
from lut.profiler import TimingSettings  # noqa: E402
from lut.table import LatencyTable, load_table  # noqa: E402
from lut.validate import fidelity_metrics  # noqa: E402
from nas.objectives import mes  # noqa: E402
from search_spaces import Architecture, count_macs, count_params  # noqa: E402
from search_spaces.files import write_bytes_atomic, write_text_atomic  # noqa: E402

# Major ticks of the log axes (1-2-3-5 per decade), those within the data's range are drawn.
LOG_TICKS = tuple(m * 10.0**e for e in range(-1, 4) for m in (1, 2, 3, 5))

CSV_COLUMNS = (
    "name", "family", "space", "reference", "resolution", "params_m", "gmacs",
    "iphone12_predicted_ms", "iphone12_published_ms", "mes",
    "ort_cpu_p50_ms", "ort_cpu_p10_ms", "ort_cpu_p90_ms", "ort_cpu_runs",
    "ort_cpu_round_spread_percent", "ort_cpu_predicted_ms", "ort_cpu_predicted_naive_ms",
    "ort_cpu_prediction_error_percent",
)


def load_config(path: Path) -> dict[str, Any]:
    """The study's settings: exactly the keys the script reads (one line and exit 2 otherwise)."""
    return load_settings(path, ("families", "iphone12_device", "ort_cpu", "quiet", "ort_cpu_tables", "mes", "outputs"))


def published_latencies(device_name: str) -> dict[tuple[str, str], float]:
    """Published iPhone 12 latencies by (space, reference), from the device model's calibration data."""
    model = get_device(device_name).model()
    return {(point.space, point.reference): point.published_ms for point in model.calibration_data}


def measure(device: Any, arch: Architecture) -> dict[str, Any]:
    """One end-to-end ort-cpu record of a network, with the load around it and the seconds it took."""
    load_before, started = loadavg(), time.perf_counter()
    record = device.profile_network(arch)
    return {
        "p50_ms": record.p50_ms,
        "p10_ms": record.p10_ms,
        "p90_ms": record.p90_ms,
        "mean_ms": record.mean_ms,
        "std_ms": record.std_ms,
        "runs": record.runs,
        "seconds": round(time.perf_counter() - started, 2),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
    }


def other_running(sample_s: float, interval_s: float = 0.25) -> float:
    """Mean number of runnable tasks other than this process over `sample_s` (the running field of
    /proc/loadavg counts the reader itself); 0.0 where there is no /proc/loadavg."""
    counts = []
    deadline = time.monotonic() + sample_s
    while True:
        fields = loadavg().split()
        if len(fields) < 4:
            return 0.0
        counts.append(int(fields[3].split("/")[0]) - 1)
        if time.monotonic() >= deadline:
            return float(np.mean(counts))
        time.sleep(interval_s)


@dataclass
class QuietGate:
    """Waits for a quiet machine before a round: fewer than `max_other` other runnable tasks on
    average over `sample_s`, polled every `poll_s`, with `budget_s` of waiting in all (shared by
    every round); records each wait."""

    max_other: float
    sample_s: float
    poll_s: float
    budget_s: float
    waited_s: float = 0.0

    def wait(self, label: str) -> dict[str, Any]:
        started = time.monotonic()
        polls = 0
        while True:
            others = other_running(self.sample_s)
            waited = time.monotonic() - started
            if others < self.max_other:
                quiet = True
                break
            if self.waited_s + waited >= self.budget_s:
                quiet = False
                log(f"{label}: {others:.1f} other busy tasks and the wait budget is spent: measuring anyway")
                break
            if polls % 10 == 0:  # the first poll, then every tenth
                log(f"{label}: waiting for a quiet machine ({others:.1f} other busy tasks >= {self.max_other}; "
                    f"{(self.budget_s - self.waited_s - waited) / 60:.0f} min of waiting left)")
            polls += 1
            time.sleep(self.poll_s)
        self.waited_s += waited
        return {"quiet": quiet, "waited_s": round(waited, 1), "other_running_at_start": round(others, 2),
                "loadavg_at_start": loadavg()}


def measure_rounds(
    device: Any, variants: Sequence[Variant], rounds: int, gate: QuietGate
) -> tuple[dict[Variant, list[dict[str, Any]]], list[dict[str, Any]]]:
    """`rounds` records per variant, measured round robin (every variant once, then again), so a
    burst of load on the shared machine disturbs one record of a few networks, not all of one.
    Returns the records and, per round, how long it waited for quiet and how long it measured."""
    from tqdm import tqdm

    records: dict[Variant, list[dict[str, Any]]] = {variant: [] for variant in variants}
    round_log = []
    with tqdm(total=rounds * len(variants), desc="measuring ort-cpu", unit="net", file=sys.stderr) as bar:
        for round_index in range(rounds):
            entry = gate.wait(f"round {round_index + 1}")
            started = time.perf_counter()
            for variant in variants:
                bar.set_postfix_str(f"round {round_index + 1}: {variant.name}")
                record = measure(device, variant.architecture())
                records[variant].append(record)
                bar.update()
                log(f"  round {round_index + 1} {variant.name:<22} p50 {record['p50_ms']:8.2f} ms  p10 {record['p10_ms']:8.2f}  "
                    f"({record['runs']} runs, {record['seconds']} s, load {record['loadavg_before'].split()[0]}"
                    f"->{record['loadavg_after'].split()[0]})")
            round_log.append({**entry, "round": round_index + 1, "measuring_s": round(time.perf_counter() - started, 1),
                              "loadavg_at_end": loadavg()})
    return records, round_log


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Rank correlations between the columns, per-GMAC and cross-device ratios, and the error of
    the ort-cpu table on the variants it prices."""
    from scipy.stats import spearmanr

    def column(name: str) -> np.ndarray:
        return np.array([row[name] for row in rows], dtype=np.float64)

    def extremes(values: np.ndarray) -> dict[str, Any]:
        low, high = int(np.argmin(values)), int(np.argmax(values))
        return {"min": round(float(values[low]), 2), "min_variant": rows[low]["name"],
                "max": round(float(values[high]), 2), "max_variant": rows[high]["name"]}

    iphone, measured = column("iphone12_predicted_ms"), column("ort_cpu_p50_ms")
    params, gmacs = column("params"), column("gmacs")
    pairs = {
        "iphone12_predicted_vs_ort_cpu_measured": (iphone, measured),
        "ort_cpu_measured_vs_gmacs": (measured, gmacs),
        "ort_cpu_measured_vs_params": (measured, params),
        "iphone12_predicted_vs_gmacs": (iphone, gmacs),
        "iphone12_predicted_vs_params": (iphone, params),
    }
    priced = [row for row in rows if row["ort_cpu_predicted_ms"] is not None]
    summary: dict[str, Any] = {
        "variants": len(rows),
        "spearman": {name: round(float(spearmanr(a, b).statistic), 4) for name, (a, b) in pairs.items()},
        "ort_cpu_ms_per_gmac": extremes(measured / gmacs),
        "ort_cpu_over_iphone12_predicted": extremes(measured / iphone),
    }
    if priced:
        metrics = fidelity_metrics([row["ort_cpu_predicted_ms"] for row in priced], [row["ort_cpu_p50_ms"] for row in priced])
        summary["ort_cpu_table"] = {
            "variants": [row["name"] for row in priced],
            "mape_percent": round(metrics.mape_percent, 2),
            "max_error_percent": round(metrics.max_error_percent, 2),
            "mean_signed_error_percent": round(metrics.mean_signed_error_percent, 2),
        }
    return summary


def plot_latency_vs_params(rows: Sequence[Mapping[str, Any]], device_label: str, title: str) -> bytes:
    """Two log-log panels of latency against params: iPhone 12 predicted, ort-cpu measured."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    families = list(dict.fromkeys(row["family"] for row in rows))
    spaces = {row["family"]: row["space"] for row in rows}
    colours = dict(zip(families, plt.get_cmap("tab10").colors))
    figure, (left, right) = plt.subplots(1, 2, figsize=(12.5, 6.2), dpi=110)
    params = np.array([row["params_m"] for row in rows])

    def draw(axes: Any, values: Sequence[float], ylabel: str, panel_title: str) -> None:
        for family in families:
            members = [i for i, row in enumerate(rows) if row["family"] == family]
            axes.plot(params[members], np.asarray(values)[members], "-o", color=colours[family], markersize=6,
                      linewidth=1, label=f"{family} ({spaces[family]})")
        for row, x_value, y_value in zip(rows, params, values):
            axes.annotate(row["reference"].upper(), (x_value, y_value), textcoords="offset points", xytext=(5, 4),
                          fontsize=7.5, color=colours[row["family"]])
        axes.set_xscale("log")
        axes.set_yscale("log")
        for axis, data in ((axes.xaxis, params), (axes.yaxis, np.asarray(values))):
            ticks = [t for t in LOG_TICKS if data.min() / 1.6 <= t <= data.max() * 1.6]
            axis.set_major_locator(FixedLocator(ticks))
            axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            axis.set_minor_formatter(NullFormatter())
        axes.set_xlabel("parameters (millions, log scale)")
        axes.set_ylabel(ylabel)
        axes.set_title(panel_title, fontsize=9.5)
        axes.grid(True, which="both", linewidth=0.3)

    draw(left, [row["iphone12_predicted_ms"] for row in rows], "iPhone 12 latency (ms, log scale)",
         "iPhone 12, predicted by the shipped analytic table")
    published = [(p, row["iphone12_published_ms"], row["family"]) for p, row in zip(params, rows) if row["iphone12_published_ms"]]
    left.scatter([p for p, _, _ in published], [ms for _, ms, _ in published], marker="x", s=40,
                 c=[colours[f] for _, _, f in published], zorder=3)

    measured = [row["ort_cpu_p50_ms"] for row in rows]
    draw(right, measured, f"{device_label} latency (ms, log scale)", f"{device_label}, measured end to end (p50; bars p10-p90)")
    low = np.array(measured) - np.array([row["ort_cpu_p10_ms"] for row in rows])
    high = np.array([row["ort_cpu_p90_ms"] for row in rows]) - np.array(measured)
    right.errorbar(params, measured, yerr=[low, high], fmt="none", ecolor="0.4", elinewidth=0.8, capsize=2)
    predicted = [(p, row["ort_cpu_predicted_ms"], row["family"]) for p, row in zip(params, rows) if row["ort_cpu_predicted_ms"]]
    right.scatter([p for p, _, _ in predicted], [ms for _, ms, _ in predicted], marker="D", s=34, facecolors="none",
                  edgecolors=[colours[f] for _, _, f in predicted], zorder=3)
    # one legend for both panels, below them, so that no point is hidden behind it
    handles, labels = left.get_legend_handles_labels()
    handles += [Line2D([], [], marker="x", color="0.3", linestyle="none"),
                Line2D([], [], marker="D", color="0.3", markerfacecolor="none", linestyle="none")]
    labels += ["published iPhone 12 latency (left)", f"{device_label} table prediction, V2 only (right)"]
    figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=8.5, frameon=False)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout(rect=(0, 0.09, 1, 1))
    return png_bytes(figure)


def run(config: Mapping[str, Any], config_path: Path) -> dict[str, Any]:
    import torch

    started = time.perf_counter()
    load_before = loadavg()
    ort_settings = config["ort_cpu"]
    torch.set_num_threads(int(ort_settings["torch_threads"]))
    variants = variants_of(config["families"])
    iphone = get_device(config["iphone12_device"])
    published = published_latencies(config["iphone12_device"])
    ort = get_device("ort-cpu", threads=int(ort_settings["threads"]), batch=int(ort_settings["batch"]),
                     timing=TimingSettings(**ort_settings["timing"]))
    ort.require_available()
    ort_tables: dict[str, LatencyTable] = {
        space: load_table(ROOT / path) for space, path in config["ort_cpu_tables"].items()
    }
    mes_settings = config["mes"]

    rounds = int(ort_settings["rounds"])
    quiet = config["quiet"]
    gate = QuietGate(float(quiet["max_other_running"]), float(quiet["sample_s"]), float(quiet["poll_s"]),
                     float(quiet["give_up_after_s"]))
    records, round_log = measure_rounds(ort, variants, rounds, gate)
    rows = []
    for variant in variants:
        arch = variant.architecture()
        params = count_params(arch)
        iphone_ms = iphone.default_table(variant.space).predict(arch)
        measured = min(records[variant], key=lambda record: record["p50_ms"])
        round_p50 = [record["p50_ms"] for record in records[variant]]
        table = ort_tables.get(variant.space)
        predicted = table.predict(arch) if table else None
        row = {
            "name": variant.name,
            "family": variant.family,
            "space": variant.space,
            "reference": variant.reference,
            "resolution": arch.resolution,
            "params": params,
            "params_m": round(params / 1e6, 3),
            "gmacs": round(count_macs(arch) / 1e9, 3),
            "iphone12_predicted_ms": round(iphone_ms, 4),
            "iphone12_published_ms": published.get((variant.space, variant.reference)),
            "mes": round(mes(params, iphone_ms, float(mes_settings["u_size"]), float(mes_settings["u_lat_ms"]),
                             float(mes_settings["alpha_size"]), float(mes_settings["alpha_lat"])), 2),
            "ort_cpu_p50_ms": round(measured["p50_ms"], 3),
            "ort_cpu_p10_ms": round(measured["p10_ms"], 3),
            "ort_cpu_p90_ms": round(measured["p90_ms"], 3),
            "ort_cpu_runs": measured["runs"],
            "ort_cpu_predicted_ms": round(predicted, 3) if predicted is not None else None,
            "ort_cpu_predicted_naive_ms": round(table.predict_naive(arch), 3) if table else None,
            "ort_cpu_prediction_error_percent": (
                round((predicted - measured["p50_ms"]) / measured["p50_ms"] * 100, 2) if predicted is not None else None
            ),
            "ort_cpu_ms_per_gmac": round(measured["p50_ms"] / (count_macs(arch) / 1e9), 2),
            "ort_cpu_best_round": records[variant].index(measured) + 1,
            "ort_cpu_round_spread_percent": round((max(round_p50) / min(round_p50) - 1) * 100, 2),
            "ort_cpu_rounds": records[variant],
        }
        rows.append(row)
        log(f"{variant.name:<22} {row['params_m']:7.2f} M  {row['gmacs']:6.3f} GMACs  iPhone12 {iphone_ms:6.3f} ms  "
            f"ort-cpu p50 {measured['p50_ms']:8.2f} ms (best of {rounds} rounds, spread "
            f"{row['ort_cpu_round_spread_percent']:.1f}%)")

    outputs = {key: HERE / value for key, value in config["outputs"].items()}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(["" if row[column] is None else row[column] for column in CSV_COLUMNS])
    write_text_atomic(outputs["csv"], buffer.getvalue())
    threads = int(ort_settings["threads"])
    write_bytes_atomic(
        outputs["plot_png"],
        plot_latency_vs_params(rows, f"ort-cpu ({threads} thread{'s' if threads > 1 else ''})",
                               "Reference variants: latency vs parameters (batch 1, default resolution: 224 px, EdgeNeXt 256 px)"),
    )
    report = {
        "study": "reference_models",
        "command": "python experiments/reference_models/run.py",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config_file": str(config_path.relative_to(ROOT)) if config_path.is_relative_to(ROOT) else str(config_path),
        "config": dict(config),
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu": host_cpu(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
        },
        "versions": versions("torch", "onnxruntime", "onnx", "numpy", "matplotlib"),
        "ort_cpu_device": {"settings": ort.settings(), "runtime": ort.runtime_versions()},
        "iphone12_tables": {
            space: {"sha256": iphone.default_table(space).sha256, "name": iphone.table_name(space)}
            for space in config["families"]
        },
        "ort_cpu_tables": {space: {"path": path, "sha256": ort_tables[space].sha256} for space, path in config["ort_cpu_tables"].items()},
        "rounds": round_log,
        "summary": summarize(rows),
        "references": rows,
        "waited_for_quiet_s": round(gate.waited_s, 1),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "wall_time_without_waiting_s": round(time.perf_counter() - started - gate.waited_s, 2),
    }
    write_text_atomic(outputs["results"], json.dumps(report, indent=1) + "\n")
    log(f"wrote {', '.join(str(p.relative_to(ROOT)) for p in outputs.values())} in {report['wall_time_s']} s")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    config_path = config_path_from_command_line(__doc__.split("\n\n")[0], HERE / "config.yaml", argv)
    # the TorchScript exporter notes, for every strided slice, that it does not constant-fold it;
    # the exported graph is what the runtime runs either way
    warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
    run(load_config(config_path), config_path)
    return 0


if __name__ == "__main__":
    sys.exit(exit_code_of(main))
