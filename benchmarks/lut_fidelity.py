"""How close the ort-cpu latency table is to end-to-end measurement (issue 5 fidelity target).

    python benchmarks/lut_fidelity.py [--table FILE] [--calibration-samples 40] [--samples 100]
                                      [--threads 1] [--out FILE.json] [--plot FILE.png]

Builds (or reuses) the `ort-cpu` table of `efficientformer_v2` at 224 px, measures
`--calibration-samples` networks (seed 1000; half uniform samples, half slimmed networks of the
region searches end in: `lut.validate.calibration_architectures`) to fit the table's
calibration, and to check it `--samples` other uniform samples (seed 0) and `--slimmed-samples`
other slimmed networks (seed 2000), none used for the fit. All sets are measured interleaved
(one of each in turn) so a load change on the machine hits them alike.
Reports, for the naive sum, a global `a·Σ + b` fit and the final per-kind calibration side by side:
share within ±5% / ±10%, MAPE, max error, Spearman; plus the table's build time and the machine
load. Target: >= 95% within ±10% and MAPE <= 5%. The calibrated table is saved back to `--table`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from lut.build import build_table
from lut.devices import host_cpu, loadavg
from lut.registry import get_device
from lut.table import load_table
from lut.validate import (
    calibration_architectures,
    fidelity_metrics,
    measure_calibration_split,
    plot_fidelity,
    sample_architectures,
    slimmed_architectures,
)
from search_spaces import get_space
from search_spaces.files import write_text_atomic

RESULTS = Path(__file__).resolve().parent / "results"
SPACE = "efficientformer_v2"
RESOLUTION = 224
CALIBRATION_SEED = 1000  # far from the validation seed: the two samples share no stream
VALIDATION_SEED = 0
SLIMMED_VALIDATION_SEED = 2000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", type=Path, default=RESULTS / f"lut_table_ort-cpu_{SPACE}_r{RESOLUTION}_t1.json")
    parser.add_argument("--calibration-samples", type=int, default=40)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--slimmed-samples", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "lut_fidelity.json")
    parser.add_argument("--plot", type=Path, default=RESULTS / "lut_fidelity.png")
    args = parser.parse_args()

    from tqdm import tqdm

    device = get_device("ort-cpu", threads=args.threads)
    device.require_available()
    space = get_space(SPACE)
    if args.table.exists():
        table = load_table(args.table)
        print(f"reusing {args.table} ({len(table)} records)", file=sys.stderr)
    else:
        with tqdm(desc="building table", unit="spec", file=sys.stderr) as bar:

            def progress(step: int, total: int) -> None:
                bar.total = total
                bar.update(step)

            table = build_table(device, space, RESOLUTION, args.table, progress=progress)
    build = dict(table.metadata.build)

    calibration_archs = calibration_architectures(space, args.calibration_samples, CALIBRATION_SEED, RESOLUTION, 1000)
    uniform_archs = sample_architectures(space, args.samples, VALIDATION_SEED, RESOLUTION, 1000)
    slimmed_archs = slimmed_architectures(space, args.slimmed_samples, SLIMMED_VALIDATION_SEED, RESOLUTION, 1000)
    every = max(1, len(uniform_archs) // max(len(slimmed_archs), 1))  # spread the slimmed ones through time
    validation_archs, slimmed_set = [], set()
    for index, arch in enumerate(uniform_archs):
        validation_archs.append(arch)
        if index % every == every - 1 and len(slimmed_set) < len(slimmed_archs):
            slimmed_set.add(len(validation_archs))
            validation_archs.append(slimmed_archs[len(slimmed_set) - 1])
    for arch in slimmed_archs[len(slimmed_set):]:
        slimmed_set.add(len(validation_archs))
        validation_archs.append(arch)
    start_load, started = loadavg(), time.perf_counter()
    with tqdm(total=len(calibration_archs) + len(validation_archs), desc="measuring networks", unit="net",
              file=sys.stderr) as bar:
        split = measure_calibration_split(device, table, calibration_archs, validation_archs, bar.update)
    measure_seconds = time.perf_counter() - started
    fit_rows = split.calibration_rows
    eval_rows = [row for index, row in enumerate(split.validation_rows) if index not in slimmed_set]
    slimmed_rows = [row for index, row in enumerate(split.validation_rows) if index in slimmed_set]
    # final: per-kind scales; global_fit: the DESIGN's simplest calibration, measured ≈ a·Σ + b
    final, global_fit = split.calibration, split.global_fit
    measured = [r.measured_ms for r in eval_rows]
    predictors = {
        "naive_sum": [r.naive_ms for r in eval_rows],
        "global_fit": [global_fit.apply({"all": r.naive_ms}) for r in eval_rows],
        "final_per_kind_calibration": [final.apply(r.sums_by_kind) for r in eval_rows],
    }
    slimmed_measured = [r.measured_ms for r in slimmed_rows]
    slimmed_predictors = {
        "naive_sum": [r.naive_ms for r in slimmed_rows],
        "global_fit": [global_fit.apply({"all": r.naive_ms}) for r in slimmed_rows],
        "final_per_kind_calibration": [final.apply(r.sums_by_kind) for r in slimmed_rows],
    }
    table = table.with_calibration(final)
    table.save(args.table)

    report = {
        "benchmark": "lut_fidelity",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device.name,
        "space": SPACE,
        "resolution": RESOLUTION,
        "threads": args.threads,
        "host_cpu": host_cpu(),
        "loadavg": {"table_build": table.metadata.loadavg, "measure_start": start_load, "measure_end": loadavg()},
        "table": {"path": str(args.table.name), "records": len(table), "sha256": table.sha256, "build": build},
        "table_build_seconds": build.get("seconds"),
        "measure_seconds": round(measure_seconds, 1),
        "calibration": {"networks": len(fit_rows), "seed": CALIBRATION_SEED, **final.to_dict()},
        "global_fit": global_fit.to_dict(),
        "validation": {"networks": len(eval_rows), "seed": VALIDATION_SEED,
                       "slimmed_networks": len(slimmed_rows), "slimmed_seed": SLIMMED_VALIDATION_SEED},
        "target": {"within_10_percent": 95.0, "mape_percent": 5.0},
        "results": {name: fidelity_metrics(values, measured).to_dict() for name, values in predictors.items()},
        "results_slimmed": ({name: fidelity_metrics(values, slimmed_measured).to_dict()
                             for name, values in slimmed_predictors.items()} if len(slimmed_rows) > 1 else None),
        "slimmed_networks": [r.to_dict(p) for r, p in zip(slimmed_rows, slimmed_predictors["final_per_kind_calibration"])],
        "networks": [r.to_dict(p) for r, p in zip(eval_rows, predictors["final_per_kind_calibration"])],
        "calibration_networks": [r.to_dict(final.apply(r.sums_by_kind)) for r in fit_rows],
    }
    final_metrics = report["results"]["final_per_kind_calibration"]
    report["meets_target"] = final_metrics["within_10_percent"] >= 95.0 and final_metrics["mape_percent"] <= 5.0
    write_text_atomic(args.out, json.dumps(report, indent=1) + "\n")
    plot_fidelity(
        args.plot,
        measured,
        [("naive sum", predictors["naive_sum"]), ("per-kind calibration", predictors["final_per_kind_calibration"])],
        f"ort-cpu {SPACE}@{RESOLUTION}, 1 thread: {len(measured)} networks not used for calibration",
    )
    for name, metrics in report["results"].items():
        print(
            f"{name:<28} ±5%: {metrics['within_5_percent']:5.1f}%  ±10%: {metrics['within_10_percent']:5.1f}%  "
            f"MAPE {metrics['mape_percent']:5.2f}%  max {metrics['max_error_percent']:5.1f}%  Spearman {metrics['spearman']:.3f}"
        )
    print(f"wrote {args.out} and {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
