"""What screening keeps of greedy's choices: does a shortlist of the best screened candidates hold
the candidate that scoring every one of them on all images would choose?

    python benchmarks/greedy_screening.py [--supernet runs/supernet_ranking/supernet.pt]
        [--data fashion-mnist] [--eval-batches 8] [--recalibrate 2] [--objective mes]

At a few greedy states of the EfficientFormerV2 space on the `iphone12` table (the largest network
and the EfficientFormerV2-S2 and -S1 references, each slimmed towards the next smaller reference's
latency), every candidate of the step (every V2 action that gains on the objective) is run once
through the Fashion-MNIST supernet of `experiments/supernet_ranking` at that study's evaluator
settings (BN recalibrated on the same `--recalibrate` training batches of 64 images for every
candidate, then `--eval-batches` batches of 256 val images), and its correct predictions are kept
per batch. That gives, from one pass, each candidate's full score and its screened score on the
first m batches for every m, so for every m and shortlist size K the benchmark reports:

- `kept`: whether the shortlist (the K best screened ratios and the K most accurate screened
  candidates that meet the target, as `nas.greedy` forms it) holds the full-scoring decision
  (`nas.greedy.choose` over every candidate's full score), in
  which case the screened step takes exactly the unscreened step's action;
- `rank_of_decision`: where the full decision ranks among the screened ratios (1 = first);
- the Spearman correlation of screened and full ratios;
- `cost`: the step's price in full evaluations (m/M of one per screened candidate, plus K to 2K
  full ones) against one per candidate unscreened;
- and, because the full decision is itself a measurement on a finite set of images, how far the
  candidate the screened step takes is from it on all images: the difference of their accuracy
  drops with its paired standard error over the evaluation batches (`indistinguishable` when
  within two of them), next to the step's noise (the median paired standard error of a
  candidate's drop) and the spread of the candidates' drops.

Each state's per-batch counts are written to `runs/greedy_screening/` as they are computed, so a
killed run resumes. Writes `benchmarks/results/greedy_screening.json` with the machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search_spaces import Architecture, get_space  # noqa: E402
from search_spaces.files import write_text_atomic  # noqa: E402

from lut import get_device  # noqa: E402
from lut.devices import loadavg  # noqa: E402
from nas.actions import v2_actions  # noqa: E402
from nas.evaluators import SupernetEvaluation  # noqa: E402
from nas.greedy import choose  # noqa: E402
from nas.objectives import get_objective  # noqa: E402
from supernet.training import recalibrated_network  # noqa: E402

SPACE = "efficientformer_v2"
#: (name, start, target in ms): greedy states spread over the search range, each slimmed towards
#: the next reference's latency on iphone12 (S2 1.6 ms, S1 1.1 ms, S0 0.9 ms)
STATES = (("largest", None, 1.6), ("s2", "s2", 1.1), ("s1", "s1", 0.9))
SCREEN_BATCHES = (1, 2, 4)
SHORTLISTS = (1, 2, 3, 4, 6)


def correct_per_batch(net, arch: Architecture, calibration: list, batches: list, recalibrate: int) -> list[int]:
    """Correct predictions of `arch` per evaluation batch, BN handled as the study's evaluator does."""
    if recalibrate:
        model = recalibrated_network(net, arch, calibration)
    else:
        net.set_arch(net.fit(arch))
        model = net.eval()
    with torch.no_grad():
        return [int((model(images).argmax(1) == labels).sum()) for images, labels in batches]


def state_counts(name: str, start: Architecture, target: float, evaluator, net, table, objective, recalibrate: int,
                 cache: Path) -> dict:
    """The step's candidates with their gains and per-batch counts (from `cache` when computed)."""
    if cache.is_file():
        return json.loads(cache.read_text())
    space = net.space
    calibration = evaluator.calibration(recalibrate) if recalibrate else []
    latency = table.predict(start)
    params = space_params(start)
    rows = []
    started = time.perf_counter()
    for action in tqdm(list(v2_actions(space, start)), desc=f"{name} candidates", file=sys.stderr):
        candidate = action.apply(start)
        cand_latency, cand_params = table.predict(candidate), space_params(candidate)
        gain = objective.gain(latency, params, cand_latency, cand_params)
        if not gain > 0:
            continue
        rows.append({"action": action.name, "latency": cand_latency, "params": cand_params, "gain": gain,
                     "counts": correct_per_batch(net, candidate, calibration, evaluator.batches, recalibrate)})
    seconds = time.perf_counter() - started
    start_counts = correct_per_batch(net, start, calibration, evaluator.batches, recalibrate)
    total = sum(len(labels) for _, labels in evaluator.batches)
    # the counts reproduce the evaluator's own score of the start (a check of the bookkeeping)
    assert abs(100.0 * sum(start_counts) / total - evaluator.score(start)) < 1e-6
    data = {"state": name, "target_ms": target, "latency_ms": latency, "params": params,
            "batch_sizes": [len(labels) for _, labels in evaluator.batches], "start_counts": start_counts,
            "candidates": rows, "seconds_per_candidate": seconds / max(len(rows), 1)}
    write_text_atomic(cache, json.dumps(data) + "\n")
    return data


def space_params(arch: Architecture) -> int:
    from search_spaces import count_params

    return int(count_params(arch))


def decisions(data: dict, objective, screen: int | None) -> tuple[list[float], list[float], list[bool]]:
    """Scores (in %) on the first `screen` batches (all when None), ratios, and which meet the target."""
    sizes = data["batch_sizes"][:screen]
    total = sum(sizes)

    def score(counts: list[int]) -> float:
        return 100.0 * sum(counts[:screen]) / total

    reference = score(data["start_counts"])
    scores = [score(row["counts"]) for row in data["candidates"]]
    ratios = [objective.ratio(reference - value, row["gain"]) for value, row in zip(scores, data["candidates"])]
    feasible = [row["latency"] <= data["target_ms"] for row in data["candidates"]]
    return scores, ratios, feasible


def paired_drop(data: dict, a: int, b: int | None = None) -> tuple[float, float]:
    """Candidate `a`'s accuracy drop (points) from the start, or its difference from candidate
    `b`'s when given, over all batches, and the paired standard error of it over the batches."""
    sizes = np.array(data["batch_sizes"], dtype=float)
    base = np.array(data["start_counts"] if b is None else data["candidates"][b]["counts"], dtype=float)
    # (start - a) for a's drop; (b - a) = (start - a) - (start - b) for a's drop minus b's
    per_batch = 100.0 * (base - np.array(data["candidates"][a]["counts"], dtype=float)) / sizes
    mean = float(np.average(per_batch, weights=sizes))
    return mean, float(per_batch.std(ddof=1) / np.sqrt(len(per_batch)))


def agreement(data: dict, objective) -> dict:
    full_scores, full_ratios, feasible = decisions(data, objective, None)
    decision = choose(full_ratios, full_scores, feasible)
    candidates = len(full_ratios)
    batches = len(data["batch_sizes"])
    drops = [paired_drop(data, i) for i in range(candidates)]
    result = {"state": data["state"], "target_ms": data["target_ms"], "candidates": candidates,
              "decision": data["candidates"][decision]["action"], "finish_step": bool(feasible[decision]),
              "decision_drop_points": round(drops[decision][0], 4),
              "drop_range_points": [round(min(d for d, _ in drops), 4), round(max(d for d, _ in drops), 4)],
              "median_drop_se_points": round(float(np.median([se for _, se in drops])), 4),
              "seconds_per_candidate": round(data["seconds_per_candidate"], 2), "screens": []}
    for screen in SCREEN_BATCHES:
        if screen >= batches:
            continue
        scores, ratios, _ = decisions(data, objective, screen)
        by_ratio = sorted(range(candidates), key=lambda i: ratios[i])
        by_accuracy = sorted((i for i in range(candidates) if feasible[i]), key=lambda i: -scores[i])
        rho = spearmanr(ratios, full_ratios).statistic if candidates > 2 else float("nan")
        shortlists = []
        for k in SHORTLISTS:
            kept = set(by_ratio[:k]) | set(by_accuracy[:k])
            shortlisted = sorted(kept)
            taken = shortlisted[choose([full_ratios[i] for i in shortlisted], [full_scores[i] for i in shortlisted],
                                       [feasible[i] for i in shortlisted])]
            difference, se = paired_drop(data, taken, decision)
            shortlists.append({"shortlist": k, "kept": decision in kept, "scored": len(kept),
                               "takes": data["candidates"][taken]["action"],
                               "drop_minus_decision_points": round(difference, 4), "paired_se_points": round(se, 4),
                               "indistinguishable": abs(difference) <= 2 * se,
                               "cost_full_evaluations": round(candidates * screen / batches + len(kept), 2)})
        result["screens"].append({"screen_batches": screen, "rank_of_decision": by_ratio.index(decision) + 1,
                                  "spearman_ratio": round(float(rho), 4), "shortlists": shortlists})
    result["cost_unscreened_full_evaluations"] = candidates
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--supernet", type=Path, default=ROOT / "runs" / "supernet_ranking" / "supernet.pt")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--recalibrate", type=int, default=2)
    parser.add_argument("--objective", default="mes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--scratch", type=Path, default=ROOT / "runs" / "greedy_screening")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "greedy_screening.json")
    args = parser.parse_args()
    if not args.supernet.is_file():
        parser.error(f"--supernet: no checkpoint at {args.supernet} (experiments/supernet_ranking --phase supernet)")
    torch.set_num_threads(args.threads)
    load_before = loadavg()
    space = get_space(SPACE)
    table = get_device("iphone12").default_table(SPACE)
    objective = get_objective(args.objective)
    spec = SupernetEvaluation(args.supernet, args.data, recalibrate=args.recalibrate, eval_batches=args.eval_batches)
    evaluator, net = spec.build(space, seed=0)
    checkpoint_stamp = f"{args.supernet.stat().st_size}-{int(args.supernet.stat().st_mtime)}"
    scratch = args.scratch / f"{checkpoint_stamp}-e{args.eval_batches}-r{args.recalibrate}-{args.objective}"
    scratch.mkdir(parents=True, exist_ok=True)
    results = []
    for name, reference, target in STATES:
        start = space.largest() if reference is None else space.reference(reference)
        data = state_counts(name, start, target, evaluator, net, table, objective, args.recalibrate,
                            scratch / f"{name}.json")
        results.append(agreement(data, objective))
        print(json.dumps(results[-1]), file=sys.stderr)
    summary = {}
    for screen in SCREEN_BATCHES:
        for k in SHORTLISTS:
            rows = [s for r in results for scr in r["screens"] if scr["screen_batches"] == screen
                    for s in scr["shortlists"] if s["shortlist"] == k]
            if rows:
                summary[f"m{screen}_k{k}"] = {
                    "kept": sum(row["kept"] for row in rows), "states": len(rows),
                    "indistinguishable": sum(row["indistinguishable"] for row in rows),
                    "cost_ratio": round(float(np.mean([row["cost_full_evaluations"] / r["cost_unscreened_full_evaluations"]
                                                       for row, r in zip(rows, results)])), 3)}
    report = {
        "benchmark": "greedy_screening",
        "what": __doc__.split("\n\n")[1].strip(),
        "settings": {"supernet": str(args.supernet.relative_to(ROOT)) if args.supernet.is_relative_to(ROOT)
                     else str(args.supernet), "checkpoint": checkpoint_stamp, "data": args.data,
                     "eval_batches": args.eval_batches, "images": sum(len(y) for _, y in evaluator.batches),
                     "recalibrate_batches": args.recalibrate, "objective": args.objective, "threads": args.threads},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_before": load_before,
                    "loadavg_after": loadavg()},
        "states": results,
        "summary": summary,
    }
    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=1), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
