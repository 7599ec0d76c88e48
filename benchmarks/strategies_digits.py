"""Greedy vs random vs evolution at equal evaluation budgets, with the digits-trained V2 supernet.

    python benchmarks/strategies_digits.py [--supernet runs/v2_digits.pt] [--fractions 0.96,0.93,0.90]
        [--objective latency] [--random-factor 5]

The evaluator is the same for every strategy: top-1 accuracy on the 359 held-out digits through
the supernet trained by `benchmarks/train_digits.py` (switchable BN statistics, no recalibration);
the table is the `ort-cpu` table (1 thread, 224 px) that `benchmarks/lut_fidelity.py` builds. For
each target (a fraction of the largest network's predicted latency), the greedy controller runs
from the largest network; its number of evaluations G is then the budget of evolution and of one
random search, and a second random search gets `--random-factor` × G. Each strategy has its own
evaluator cache, so every count is what that strategy paid. Target of issue 8: greedy matches or
beats the best of random search given 5× its evaluations.

Writes `benchmarks/results/strategies_digits.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search_spaces.files import write_text_atomic  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from lut import load_table  # noqa: E402
from nas.api import SearchRequest, run_search  # noqa: E402
from nas.evaluators import SupernetEvaluator  # noqa: E402
from supernet import Supernet  # noqa: E402
from supernet.data import load_data  # noqa: E402

TABLE = ROOT / "benchmarks" / "results" / "lut_table_ort-cpu_efficientformer_v2_r224_t1.json"


def summary(result, seconds: float) -> dict:
    return {"accuracy_percent": round(result.score, 3), "latency_ms": round(result.latency, 3),
            "params_M": round(result.params / 1e6, 3), "evaluations": result.evaluations, "seconds": round(seconds, 1),
            "depths": list(result.arch.depths), "widths": list(result.arch.widths)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--supernet", default=str(ROOT / "runs" / "v2_digits.pt"))
    parser.add_argument("--table", default=str(TABLE))
    parser.add_argument("--fractions", default="0.96,0.93,0.90")
    parser.add_argument("--objective", default="latency")
    parser.add_argument("--random-factor", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "strategies_digits.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not Path(args.supernet).is_file():
        raise SystemExit(f"no supernet at {args.supernet}: run benchmarks/train_digits.py first")
    net = Supernet.load(args.supernet, space="efficientformer_v2")
    space, table = net.space, load_table(args.table)
    data = load_data("digits", net.resolution, seed=args.seed)
    val = DataLoader(data.val, batch_size=512, shuffle=False)
    largest_ms = table.predict(space.largest())

    def search(target: float, strategy: str = "greedy", budget: int | None = None):
        """One search through the API, with its own evaluator cache (every count is what it paid)."""
        request = SearchRequest(space.name, table, target, evaluator=SupernetEvaluator(net, val),
                                objective=args.objective, strategy=strategy, budget=budget, seed=args.seed,
                                table_name=Path(args.table).name)
        return run_search(request).result

    report = {"benchmark": "strategies_digits", "what": __doc__.split("\n\n")[2].strip(),
              "supernet": Path(args.supernet).name, "table": Path(args.table).name, "objective": args.objective,
              "largest_ms": round(largest_ms, 3), "threads": args.threads, "targets": []}
    for fraction in [float(f) for f in args.fractions.split(",")]:
        target = fraction * largest_ms
        entry: dict = {"target_ms": round(target, 3), "fraction_of_largest": fraction}
        start = time.perf_counter()
        greedy = search(target)
        entry["greedy"] = summary(greedy, time.perf_counter() - start)
        budget = greedy.evaluations
        for name, strategy, runs_budget in (
            ("random_equal", "random", budget),
            ("evolution_equal", "evolution", budget),
            (f"random_{args.random_factor}x", "random", args.random_factor * budget),
        ):
            start = time.perf_counter()
            result = search(target, strategy, runs_budget)
            entry[name] = summary(result, time.perf_counter() - start)
            entry[name]["acceptance_rate"] = round(result.stats.acceptance_rate, 4)
        entry["greedy_matches_or_beats_random_5x"] = (
            entry["greedy"]["accuracy_percent"] >= entry[f"random_{args.random_factor}x"]["accuracy_percent"])
        report["targets"].append(entry)
        write_text_atomic(Path(args.out), json.dumps(report, indent=2) + "\n")  # partial results survive
        print(json.dumps({k: (v["accuracy_percent"], v["evaluations"]) if isinstance(v, dict) else v
                          for k, v in entry.items()}), file=sys.stderr)
    report["summary"] = {"targets": len(report["targets"]),
                         "greedy_matches_or_beats_random_5x": sum(e["greedy_matches_or_beats_random_5x"] for e in report["targets"])}
    write_text_atomic(Path(args.out), json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
