"""Fit the iPhone 12 analytic model to the published latencies and regenerate its shipped tables.

    python benchmarks/iphone12_fit.py [--no-tables]

Reads `lut/device_models/iphone12.yaml` (priors, which parameters are free, the published iPhone
12 latencies of REFERENCE.md on the iOS 16 tool chain: the ten reference networks of our spaces
and MobileNetV2 ×1.0/×1.4 and ResNet50, written in `experiments/iphone12_model/networks.py`),
traces every network's op counts (`search_spaces.tracing`), fits the free parameters (scipy least
squares on log(predicted/published), non-negative), computes the leave-one-out error (refit
without each network, predict it) and the Spearman correlation of the leave-one-out predictions,
rewrites the YAML with the fitted values and the fit summary, writes
`benchmarks/results/iphone12_fit.json` (goal: leave-one-out MAPE ≤ 8%, worst ≤ 15%, Spearman ≥
0.95), and rebuilds `lut/tables/iphone12_<space>_r<res>.json` for every space at its default
resolution.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search_spaces import get_space, list_spaces, trace_costs  # noqa: E402
from search_spaces.files import write_text_atomic  # noqa: E402

from experiments.iphone12_model.networks import NETWORKS  # noqa: E402
from lut.analytic import calibration_costs, fit_parameters, leave_one_out, load_model, model_path, model_yaml  # noqa: E402
from lut.registry import get_device  # noqa: E402

GOAL = {"loo_mape_percent": 8.0, "loo_max_error_percent": 15.0, "loo_spearman": 0.95}


def outside_networks() -> dict:
    """The op counts of the networks outside the spaces (224 px, batch 1)."""
    import torch

    with torch.device("meta"):
        modules = {name: build() for name, (build, *_rest) in NETWORKS.items()}
    return {name: trace_costs(module, (1, 3, 224, 224)) for name, module in modules.items()}

RESULT = ROOT / "benchmarks" / "results" / "iphone12_fit.json"
HEADER = (
    "# iPhone 12 analytic latency model (A14 Neural Engine, Core ML, iOS 16 tool chain).\n"
    "# Model: lut/analytic.py. Fitted values and `fit` are rewritten by benchmarks/iphone12_fit.py;\n"
    "# each parameter carries its unit and a comment; `fitted: false` marks a fixed prior.\n"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-tables", action="store_true", help="fit and report only")
    args = parser.parse_args()

    path = model_path("iphone12")
    model = load_model(path)
    costs = calibration_costs(model, outside_networks())
    result = fit_parameters(model, costs)
    loo = leave_one_out(model, costs)
    fit_summary = {
        "method": "scipy.optimize.least_squares on log(predicted/published), coefficients >= 0",
        "networks": len(model.calibration_data),
        "free_parameters": list(model.fitted_names),
        "fit_mape_percent": round(result.mape_percent, 3),
        "loo_mape_percent": round(loo.mape_percent, 3),
        "loo_max_error_percent": round(loo.max_error_percent, 3),
        "loo_spearman": round(loo.spearman, 4),
    }
    fitted = replace(result.model, fit=fit_summary)
    write_text_atomic(path, model_yaml(fitted, HEADER))

    report = {
        "device": "iphone12",
        "source": "published iPhone 12 latencies (Core ML, iOS 16, Xcode 14), shared/REFERENCE.md",
        **fit_summary,
        "goal": GOAL,
        "goal_met": {key: (fit_summary[key] >= value if key == "loo_spearman" else fit_summary[key] <= value)
                     for key, value in GOAL.items()},
        "parameters": {name: p.to_dict() for name, p in fitted.parameters.items()},
        "networks": [
            {
                "name": name,
                "published_ms": published,
                "fitted_ms": round(fit_ms, 4),
                "fit_error_percent": round((fit_ms - published) / published * 100, 3),
                "loo_ms": round(loo_ms, 4),
                "loo_error_percent": round(error, 3),
            }
            for name, published, fit_ms, loo_ms, error in zip(
                loo.names, loo.published_ms, result.predicted_ms, loo.predicted_ms, loo.errors_percent
            )
        ],
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULT, json.dumps(report, indent=1) + "\n")
    print(f"LOO MAPE {loo.mape_percent:.2f}%  worst {loo.max_error_percent:.1f}%  Spearman {loo.spearman:.3f}  "
          f"fit MAPE {result.mape_percent:.2f}%")
    for row in report["networks"]:
        print(f"  {row['name']:<22} published {row['published_ms']:.2f}  fit {row['fitted_ms']:.2f}  LOO {row['loo_ms']:.2f}")

    if not args.no_tables:
        device = get_device("iphone12")
        tables = ROOT / "lut" / "tables"
        for name in list_spaces():
            space = get_space(name)
            table = device.make_table(space, space.default_resolution)
            out = table.save(tables / device.table_name(space, space.default_resolution))
            print(f"wrote {out.relative_to(ROOT)} ({len(table)} records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
