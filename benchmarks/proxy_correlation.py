"""Does the training-free proxy rank sub-networks the way trained accuracy does?

    python benchmarks/proxy_correlation.py [--supernet runs/v2_digits.pt] [--samples 100] [--seed 0]

Samples `--samples` architectures of the EfficientFormerV2 space (seeded), scores each with the
SynFlow proxy (`nas.synflow`, random weights from seed 0, as `nas.search` uses it without a
supernet) and with the digits-trained supernet (top-1 on the 359 held-out digits, switchable BN
statistics, as the supernet evaluator does), and reports the Spearman and Kendall rank
correlations of accuracy with the proxy and with three baselines: parameter count, MACs and
the old heuristic Σ log(1 + params per layer). Digits is small and easy: accuracies cluster within
a few images of each other, so every correlation here is an upper bound on how much it can tell.

Writes `benchmarks/results/proxy_correlation.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search_spaces import count_macs, count_params, get_space, layer_cost  # noqa: E402
from search_spaces.files import write_text_atomic  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from nas.evaluators import SupernetEvaluator  # noqa: E402
from nas.synflow import SynFlowEvaluator  # noqa: E402
from supernet import Supernet  # noqa: E402
from supernet.data import load_data  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--supernet", default=str(ROOT / "runs" / "v2_digits.pt"))
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "proxy_correlation.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    space = get_space("efficientformer_v2")
    net = Supernet.load(args.supernet, space=space.name)
    data = load_data("digits", net.resolution, seed=0)
    accuracy = SupernetEvaluator(net, DataLoader(data.val, batch_size=512, shuffle=False))
    proxy = SynFlowEvaluator.from_space(space, seed=0)
    rng = np.random.default_rng(args.seed)
    archs = list(dict.fromkeys(space.sample(rng) for _ in range(args.samples)))
    rows = []
    for arch in archs:
        rows.append({
            "accuracy_percent": accuracy.score(arch),
            "synflow": proxy.score(arch),
            "params": count_params(arch),
            "macs": count_macs(arch),
            "sum_log_layer_params": sum(math.log1p(layer_cost(s).params) for s in space.layer_specs(arch)),
        })
    target = [r["accuracy_percent"] for r in rows]
    correlations = {}
    for name in ("synflow", "params", "macs", "sum_log_layer_params"):
        values = [r[name] for r in rows]
        correlations[name] = {"spearman": round(float(stats.spearmanr(values, target).statistic), 4),
                              "kendall": round(float(stats.kendalltau(values, target).statistic), 4)}
    report = {"benchmark": "proxy_correlation", "what": __doc__.split("\n\n")[2].strip(),
              "supernet": Path(args.supernet).name, "samples": len(rows), "seed": args.seed,
              "accuracy": {"min": min(target), "max": max(target), "mean": round(float(np.mean(target)), 3),
                           "distinct_values": len(set(target))},
              "correlation_with_accuracy": correlations, "rows": rows}
    write_text_atomic(Path(args.out), json.dumps(report, indent=2) + "\n")
    print(json.dumps(correlations, indent=1), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
