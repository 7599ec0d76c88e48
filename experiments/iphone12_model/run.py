"""Study: the iPhone 12 analytic latency model against the published iPhone 12 latencies.

    python experiments/iphone12_model/run.py [--config experiments/iphone12_model/config.yaml]

Reads the shipped model (`lut/device_models/iphone12.yaml`: priors, which parameters are free, the
thirteen published latencies it is calibrated on: ten reference networks of our spaces and
MobileNetV2 ×1.0/×1.4 and ResNet50, written in `networks.py` here) and, in memory only, refits its
free parameters on every network's traced op counts (`lut.analytic.fit_parameters`), predicts
each published network from a fit without it (`lut.analytic.leave_one_out`) and refits with each
fixed prior scaled (sensitivity). It prices every reference variant of every space and the three
outside networks with the refitted model (and the variants with the shipped table,
`get_device("iphone12").default_table(space)`), with the modelled share of each op class.

Writes into this folder (atomically): `results.json` (config, machine, versions, wall time, every
number), `predictions.csv` (one row per reference variant), and three plots: published vs fitted
vs leave-one-out per network, predicted vs published with y = x and a ±band, and the modelled
latency breakdown per variant. Nothing is measured: this takes a few seconds.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))  # for `experiments.study`: the studies are not an installed package

from experiments.study import (  # noqa: E402
    config_path_from_command_line,
    exit_code_of,
    load_settings,
    log,
    png_bytes,
    variants_of,
    versions,
)
from experiments.iphone12_model.networks import NETWORKS  # noqa: E402
from lut.analytic import (  # noqa: E402
    DeviceModel,
    ModelError,
    calibration_costs,
    fit_parameters,
    leave_one_out,
    load_model,
    model_path,
)
from lut.devices import loadavg  # noqa: E402
from lut.registry import get_device  # noqa: E402
from lut.validate import fidelity_metrics  # noqa: E402
from search_spaces import count_macs, count_params, trace_costs  # noqa: E402
from search_spaces.counting import cost as network_cost  # noqa: E402
from search_spaces.tracing import LayerCost  # noqa: E402
from search_spaces.files import write_bytes_atomic, write_text_atomic  # noqa: E402

# How the priced classes of `DeviceModel.layer_breakdown` are grouped in the breakdown, in stack order.
BREAKDOWN_GROUPS: dict[str, tuple[str, ...]] = {
    "dense conv + linear": ("conv", "linear"),
    "depthwise conv": ("dwconv",),
    "attention matmul": ("matmul",),
    "LayerNorm": ("layernorm",),
    "channels-last work (token layout)": ("channels_last",),
    "layout changes": ("layout",),
    "element-wise + activation": ("elementwise", "activation", "batchnorm"),
    "op calls": ("calls",),
    "network fixed": ("network_fixed",),
}


def outside_costs() -> dict[str, LayerCost]:
    """The traced op counts of the networks outside the spaces (`networks.py`, 224 px, batch 1)."""
    import torch

    with torch.device("meta"):
        modules = {name: build() for name, (build, *_rest) in NETWORKS.items()}
    return {name: trace_costs(module, (1, 3, 224, 224)) for name, module in modules.items()}


def layernorm_share(model: DeviceModel, cost: LayerCost) -> float:
    """LayerNorm's part of a network's modelled latency: its class, plus its part of the channels-last work."""
    parts = model.breakdown(cost)
    channels_last = parts["channels_last"] * cost.op("layernorm").elements / cost.token_elements if cost.token_elements else 0.0
    return (parts.get("layernorm", 0.0) + channels_last) / model.module_ms(cost)


def load_config(path: Path) -> dict[str, Any]:
    """The study's settings: exactly the keys the script reads (one line and exit 2 otherwise)."""
    return load_settings(path, ("device", "families", "band_percent", "prior_sensitivity", "outputs"))


def machine_state() -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def breakdown_ms(model: DeviceModel, cost: LayerCost) -> dict[str, float]:
    """Modelled milliseconds of a network per breakdown group (they sum to `model.module_ms(cost)`)."""
    parts = {**model.breakdown(cost), "network_fixed": model.value("network_fixed")}
    grouped = {group: sum(parts.get(part, 0.0) for part in members) for group, members in BREAKDOWN_GROUPS.items()}
    unknown = set(parts) - {part for members in BREAKDOWN_GROUPS.values() for part in members}
    if unknown:
        raise ValueError(f"breakdown parts without a group: {sorted(unknown)}")
    return grouped


def parameter_table(model: DeviceModel) -> dict[str, dict[str, Any]]:
    return {name: parameter.to_dict() for name, parameter in model.parameters.items()}


def metrics_dict(predicted: Sequence[float], published: Sequence[float], band_percent: float) -> dict[str, float]:
    """MAPE, max error, mean signed error, Spearman and share within ±band of predictions."""
    metrics = fidelity_metrics(predicted, published)
    relative = np.abs(np.asarray(predicted) - np.asarray(published)) / np.asarray(published)
    return {
        "networks": metrics.networks,
        "mape_percent": round(metrics.mape_percent, 3),
        "max_error_percent": round(metrics.max_error_percent, 3),
        "mean_signed_error_percent": round(metrics.mean_signed_error_percent, 3),
        "spearman": round(metrics.spearman, 4),
        f"within_{band_percent:g}_percent_share": round(float(np.mean(relative <= band_percent / 100) * 100), 1),
    }


def prior_sensitivity(model: DeviceModel, costs: Sequence[LayerCost], parameters: Sequence[str], factors: Sequence[float],
                      band: float) -> list[dict[str, Any]]:
    """Refit and leave-one-out with one fixed prior scaled at a time."""
    rows = []
    for name in parameters:
        if model.parameters[name].fitted:
            raise ValueError(f"prior_sensitivity: {name} is a fitted parameter, not a prior")
        for factor in factors:
            value = model.value(name) * factor
            row: dict[str, Any] = {"parameter": name, "factor": factor, "value": value, "unit": model.parameters[name].unit}
            scaled = model.with_values({name: value})
            try:
                fit = fit_parameters(scaled, costs)
                loo = leave_one_out(scaled, costs)
            except ModelError as error:  # a free term driven to its bound: the scaled prior leaves it unused
                row["error"] = str(error)
            else:
                row["fit_mape_percent"] = round(fit.mape_percent, 3)
                row["loo"] = metrics_dict(loo.predicted_ms, loo.published_ms, band)
                row["fitted"] = {n: fit.model.value(n) for n in model.fitted_names}
            rows.append(row)
    return rows


# -- plots ---------------------------------------------------------------------------------------
def plot_bars(names: Sequence[str], published: Sequence[float], fitted: Sequence[float], loo: Sequence[float], title: str) -> bytes:
    import matplotlib.pyplot as plt

    x = np.arange(len(names))
    width = 0.27
    figure, axes = plt.subplots(figsize=(10.0, 4.8), dpi=110)
    series = (
        ("published (iPhone 12, Core ML, iOS 16)", published, "0.35"),
        (f"model fitted on all {len(names)}", fitted, "tab:blue"),
        ("leave-one-out prediction", loo, "tab:orange"),
    )
    for offset, (label, values, colour) in zip((-width, 0.0, width), series):
        bars = axes.bar(x + offset, values, width, label=label, color=colour)
        axes.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
    axes.set_xticks(x, names, rotation=25, ha="right", fontsize=8)
    axes.set_ylabel("latency (ms)")
    axes.set_xlabel("network (batch 1, 224 px)")
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=8, loc="upper left")
    axes.grid(True, axis="y", linewidth=0.3)
    figure.tight_layout()
    return png_bytes(figure)


def plot_scatter(
    names: Sequence[str], published: Sequence[float], fitted: Sequence[float], loo: Sequence[float], band: float, title: str
) -> bytes:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    published_array = np.asarray(published)
    everything = np.concatenate([published_array, fitted, loo])
    low, high = float(everything.min()) / 1.25, float(everything.max()) * 1.25
    line = np.geomspace(low, high, 100)
    figure, axes = plt.subplots(figsize=(6.6, 6.2), dpi=110)
    axes.fill_between(line, line * (1 - band / 100), line * (1 + band / 100), color="0.88", label=f"±{band:g}%")
    axes.plot(line, line, color="0.3", linewidth=1, label="predicted = published")
    fit_metrics = metrics_dict(fitted, published, band)
    loo_metrics = metrics_dict(loo, published, band)
    axes.scatter(published, fitted, marker="o", s=30, color="tab:blue",
                 label=f"fitted on all {len(names)}: MAPE {fit_metrics['mape_percent']:.1f}%")
    axes.scatter(published, loo, marker="^", s=36, color="tab:orange",
                 label=f"leave-one-out: MAPE {loo_metrics['mape_percent']:.1f}%, Spearman {loo_metrics['spearman']:.3f}")
    for name, x_value, y_value in zip(names, published, loo):
        axes.annotate(name, (x_value, y_value), textcoords="offset points", xytext=(5, -3), fontsize=6.5)
    axes.set_xscale("log")
    axes.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    for axis in (axes.xaxis, axes.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(plain)
        axis.set_tick_params(which="minor", labelsize=7)
    axes.set_xlim(low, high)
    axes.set_ylim(low, high)
    axes.set_xlabel("published latency (ms, log scale)")
    axes.set_ylabel("model latency (ms, log scale)")
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=7.5, loc="upper left")
    axes.grid(True, which="both", linewidth=0.3)
    figure.tight_layout()
    return png_bytes(figure)


def plot_breakdown(rows: Sequence[Mapping[str, Any]], title: str) -> bytes:
    import matplotlib.pyplot as plt

    names = [f"{row['name']} ({row['resolution']} px)" for row in rows]
    y = np.arange(len(rows))[::-1]
    left = np.zeros(len(rows))
    figure, axes = plt.subplots(figsize=(9.0, 5.6), dpi=110)
    colours = plt.get_cmap("tab10").colors
    for index, group in enumerate(BREAKDOWN_GROUPS):
        values = np.array([row["breakdown_ms"][group] for row in rows])
        axes.barh(y, values, left=left, color=colours[index % len(colours)], label=group, height=0.7)
        left += values
    for y_value, row in zip(y, rows):
        published = row["published_ms"]
        text = f"{row['model_ms']:.2f} ms" + (f" (published {published:g})" if published is not None else " (no published number)")
        axes.text(row["model_ms"] + 0.05, y_value, text, va="center", fontsize=7)
    axes.set_yticks(y, names, fontsize=8)
    axes.set_xlim(0, float(left.max()) * 1.45)
    axes.set_xlabel("modelled iPhone 12 latency (ms)")
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=7, loc="lower right")
    axes.grid(True, axis="x", linewidth=0.3)
    figure.tight_layout()
    return png_bytes(figure)


# -- study ---------------------------------------------------------------------------------------
def run(config: Mapping[str, Any], config_path: Path) -> dict[str, Any]:
    started = time.perf_counter()
    load_before = loadavg()
    band = float(config["band_percent"])
    device = get_device(config["device"])
    shipped_path = model_path(config["device"])
    model = load_model(shipped_path)
    variants = variants_of(config["families"])
    log(f"model {shipped_path.relative_to(ROOT)}: free {list(model.fitted_names)}, {len(model.calibration_data)} published networks")

    outside = outside_costs()
    costs = calibration_costs(model, outside)
    fit = fit_parameters(model, costs)
    loo = leave_one_out(model, costs)
    refit = fit.model
    drift = {
        name: abs(refit.value(name) - model.value(name)) / model.value(name) if model.value(name) else abs(refit.value(name))
        for name in model.fitted_names
    }
    log(f"refit: fit MAPE {fit.mape_percent:.2f}%  LOO MAPE {loo.mape_percent:.2f}%  LOO Spearman {loo.spearman:.3f}")
    log(f"refit vs shipped parameters: max relative difference {max(drift.values()):.2e}")

    calibration = {(p.space, p.reference) if p.network is None else p.network: (index, p)
                   for index, p in enumerate(model.calibration_data)}
    networks = [
        {
            "name": point.name,
            "space": point.space,
            "reference": point.reference,
            "network": point.network,
            "published_ms": point.published_ms,
            "fitted_ms": round(fit.predicted_ms[index], 4),
            "fit_error_percent": round((fit.predicted_ms[index] - point.published_ms) / point.published_ms * 100, 2),
            "loo_ms": round(loo.predicted_ms[index], 4),
            "loo_error_percent": round(loo.errors_percent[index], 2),
        }
        for index, point in enumerate(model.calibration_data)
    ]

    settings = config["prior_sensitivity"]
    log(f"prior sensitivity: {len(settings['parameters'])} priors x {len(settings['factors'])} factors")
    sensitivity = prior_sensitivity(model, costs, settings["parameters"], settings["factors"], band)

    references = []
    tables = {}
    for variant in variants:
        arch = variant.architecture()
        if variant.space not in tables:
            tables[variant.space] = device.default_table(variant.space)
        table = tables[variant.space]
        model_ms = refit.network_ms(arch)
        groups = breakdown_ms(refit, network_cost(arch))
        known = calibration.get((variant.space, variant.reference))
        published = known[1].published_ms if known else None
        loo_ms = loo.predicted_ms[known[0]] if known else None
        references.append(
            {
                "name": variant.name,
                "family": variant.family,
                "space": variant.space,
                "reference": variant.reference,
                "resolution": arch.resolution,
                "params_m": round(count_params(arch) / 1e6, 3),
                "gmacs": round(count_macs(arch) / 1e9, 3),
                "model_ms": round(model_ms, 4),
                "shipped_table_ms": round(table.predict(arch), 4),
                "published_ms": published,
                "model_error_percent": round((model_ms - published) / published * 100, 2) if published else None,
                "loo_ms": round(loo_ms, 4) if loo_ms is not None else None,
                "loo_error_percent": round((loo_ms - published) / published * 100, 2) if published else None,
                "breakdown_ms": {group: round(ms, 4) for group, ms in groups.items()},
                "breakdown_percent": {group: round(ms / model_ms * 100, 1) for group, ms in groups.items()},
                "layernorm_share_percent": round(100 * layernorm_share(refit, network_cost(arch)), 1),
            }
        )
    for name, (_, published_ms, params_m, gmacs) in NETWORKS.items():  # the outside networks, for the breakdown
        traced = outside[name]
        model_ms = refit.module_ms(traced)
        groups = breakdown_ms(refit, traced)
        index = calibration[name][0]
        references.append({
            "name": name, "family": "outside the spaces", "space": None, "reference": None, "resolution": 224,
            "params_m": round(traced.params / 1e6, 3), "gmacs": round(traced.macs / 1e9, 3),
            "reference_params_m": params_m, "reference_gmacs": gmacs, "model_ms": round(model_ms, 4),
            "shipped_table_ms": None, "published_ms": published_ms,
            "model_error_percent": round((model_ms - published_ms) / published_ms * 100, 2),
            "loo_ms": round(loo.predicted_ms[index], 4), "loo_error_percent": round(loo.errors_percent[index], 2),
            "breakdown_ms": {group: round(ms, 4) for group, ms in groups.items()},
            "breakdown_percent": {group: round(ms / model_ms * 100, 1) for group, ms in groups.items()},
            "layernorm_share_percent": round(100 * layernorm_share(refit, traced), 1),
        })
    table_gap = max(abs(row["model_ms"] - row["shipped_table_ms"]) for row in references if row["shipped_table_ms"] is not None)
    log(f"refitted model vs shipped tables: max |difference| {table_gap:.4f} ms over {len(references)} variants")

    names = [row["name"] for row in networks]
    published = [row["published_ms"] for row in networks]
    outputs = {key: HERE / value for key, value in config["outputs"].items()}
    write_bytes_atomic(
        outputs["bars_png"],
        plot_bars(names, published, list(fit.predicted_ms), list(loo.predicted_ms),
                  f"iPhone 12 analytic model vs the {len(names)} published latencies (Core ML, iOS 16)"),
    )
    write_bytes_atomic(
        outputs["scatter_png"],
        plot_scatter(names, published, list(fit.predicted_ms), list(loo.predicted_ms), band,
                     f"iPhone 12 model: predicted vs published (y = x, ±{band:g}% band)"),
    )
    write_bytes_atomic(
        outputs["breakdown_png"],
        plot_breakdown(references, "Where the model puts the time: every reference variant and the outside networks"),
    )

    columns = ["name", "space", "reference", "resolution", "params_m", "gmacs", "model_ms", "shipped_table_ms",
               "published_ms", "model_error_percent", "loo_ms", "loo_error_percent"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns + [f"share_{group}" for group in BREAKDOWN_GROUPS])
    for row in references:
        writer.writerow([("" if row[c] is None else row[c]) for c in columns] + list(row["breakdown_percent"].values()))
    write_text_atomic(outputs["predictions_csv"], buffer.getvalue())

    report = {
        "study": "iphone12_model",
        "command": "python experiments/iphone12_model/run.py",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config_file": str(config_path.relative_to(ROOT)) if config_path.is_relative_to(ROOT) else str(config_path),
        "config": dict(config),
        "machine": {**machine_state(), "loadavg_before": load_before, "loadavg_after": loadavg()},
        "versions": versions("torch", "onnxruntime", "numpy", "scipy", "matplotlib"),
        "model": {
            "file": str(shipped_path.relative_to(ROOT)),
            "sha256": model.sha256,
            "free_parameters": list(model.fitted_names),
            "fixed_priors": [name for name in model.parameters if name not in model.fitted_names],
            "shipped_parameters": parameter_table(model),
            "refitted_parameters": parameter_table(refit),
            "refit_vs_shipped_max_relative_difference": max(drift.values()),
            "refit_vs_shipped_tables_max_abs_ms": table_gap,
        },
        "fit": metrics_dict(fit.predicted_ms, fit.published_ms, band),
        "leave_one_out": metrics_dict(loo.predicted_ms, loo.published_ms, band),
        "networks": networks,
        "prior_sensitivity": sensitivity,
        "references": references,
        "wall_time_s": None,
    }
    report["wall_time_s"] = round(time.perf_counter() - started, 2)
    write_text_atomic(outputs["results"], json.dumps(report, indent=1) + "\n")
    log(f"wrote {', '.join(str(p.relative_to(ROOT)) for p in outputs.values())} in {report['wall_time_s']} s")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    config_path = config_path_from_command_line(__doc__.split("\n\n")[0], HERE / "config.yaml", argv)
    run(load_config(config_path), config_path)
    return 0


if __name__ == "__main__":
    sys.exit(exit_code_of(main))
