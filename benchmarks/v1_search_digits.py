"""The EfficientFormer V1 search end to end on digits: Gumbel-trained importance driving the V1 actions.

    python benchmarks/v1_search_digits.py [--epochs 10] [--fractions 0.95,0.9,0.85] [--threads 1]
        [--checkpoint runs/v1_digits_gumbel.pt] [--out benchmarks/results/v1_search_digits.json]

1. Train the EfficientFormer (V1) supernet on the embedded digits (32 px) with `--mode gumbel`:
   weights and MetaPath logits α together, Gumbel-softmax over {4D, 3D, identity} paths at an
   annealed temperature (`supernet.training`). The checkpoint is written every epoch; a rerun
   resumes it (or reuses it when finished). The learned importance (normalised:
   `supernet.importance`) is reported per slot and per stage.
2. For each target (a fraction of the largest network's `iphone12` latency), a greedy search
   through that supernet (accuracy on the 359 validation digits, `latency` objective: accuracy
   drop per ms) with the V1 action set and the learned importance, and the same target with the
   V2 action set for comparison. The trace of every search is kept (its actions show which set
   ran); width-cut candidates, whose BatchNorms a Gumbel supernet never trained, are recalibrated
   automatically and counted. A rerun skips the searches the output already holds for the same
   training (a killed run resumes search by search).

Writes `benchmarks/results/v1_search_digits.json` (partial results after each search) with the
machine load before and after each phase.
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

from search_spaces import get_space  # noqa: E402
from search_spaces.files import write_text_atomic  # noqa: E402

from lut import get_device  # noqa: E402
from lut.devices import loadavg  # noqa: E402
from nas.api import SearchRequest, run_search  # noqa: E402
from nas.evaluators import SupernetEvaluation  # noqa: E402
from supernet.data import load_data  # noqa: E402
from supernet.training import TrainConfig, Trainer  # noqa: E402

SPACE = "efficientformer_v1"


def train(checkpoint: Path, epochs: int, seed: int) -> tuple[Trainer, dict]:
    config = TrainConfig(space=SPACE, data="digits", mode="gumbel", epochs=epochs, resolution=32, seed=seed)
    bundle = load_data(config.data, config.resolution, config.seed)
    trainer = Trainer(config, bundle, checkpoint, progress=True)
    if checkpoint.is_file():
        trainer.load(checkpoint)
    resumed = trainer.epoch
    started = time.perf_counter()
    trainer.run()
    return trainer, {"config": {"space": SPACE, "data": "digits", "mode": "gumbel", "epochs": epochs, "resolution": 32,
                                "seed": seed},
                     "resumed_from_epoch": resumed, "seconds_this_run": round(time.perf_counter() - started, 1),
                     "epochs": trainer.history}


def search(checkpoint: Path, table, target: float, actions: str) -> dict:
    steps = []
    started = time.perf_counter()
    outcome = run_search(SearchRequest(SPACE, table, target, evaluator=SupernetEvaluation(checkpoint, "digits"),
                                       objective="latency", actions=actions, table_name="iphone12 (shipped)"),
                         on_step=steps.append)
    seconds = time.perf_counter() - started
    if not outcome.reachable:
        return {"actions": actions, "unreachable": True, "smallest_ms": outcome.smallest_latency}
    result, meta = outcome.result, outcome.arch.meta
    return {
        "actions": meta["actions"],
        "accuracy_percent": round(result.score, 3),
        "latency_ms": round(result.latency, 4),
        "params_M": round(result.params / 1e6, 3),
        "steps": len(result.steps) - 1,
        "evaluations": result.evaluations,
        "seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / max(len(result.steps) - 1, 1), 2),
        "depths": list(result.arch.depths),
        "widths": list(result.arch.widths),
        "trace": [{"action": s.action, "latency_ms": round(s.latency, 4), "accuracy_percent": round(s.score, 3),
                   "ratio": None if s.ratio == float("inf") else round(s.ratio, 4)} for s in steps],
    }


def finished_searches(out: Path, config: dict, history: list) -> dict[tuple[float, str], dict]:
    """The searches an earlier run of this benchmark wrote to `out` for the same training (config
    and epoch history), keyed by (target ms, action set): a rerun after a kill skips them."""
    try:
        earlier = json.loads(out.read_text())
    except (OSError, ValueError):
        return {}
    training = earlier.get("training", {})
    if training.get("config") != config or training.get("epochs") != json.loads(json.dumps(history)):
        return {}
    return {(entry["target_ms"], actions): entry[actions]
            for entry in earlier.get("targets", []) for actions in ("v1", "v2") if actions in entry}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--fractions", default="0.95,0.9,0.85")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "v1_digits_gumbel.pt")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "v1_search_digits.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    report: dict = {"benchmark": "v1_search_digits", "what": __doc__.split("\n\n")[1].strip(), "threads": args.threads,
                    "load": {"start": loadavg()}}
    trainer, report["training"] = train(args.checkpoint, args.epochs, args.seed)
    report["load"]["after_training"] = loadavg()
    importance = trainer.supernet.importance()
    report["importance"] = importance.to_dict()
    table = get_device("iphone12").default_table(SPACE)
    largest = table.predict(get_space(SPACE).largest())
    report["largest_ms"] = round(largest, 4)
    report["targets"] = []
    done = finished_searches(args.out, report["training"]["config"], trainer.history)
    for fraction in (float(f) for f in args.fractions.split(",")):
        target = fraction * largest
        entry = {"fraction_of_largest": fraction, "target_ms": round(target, 4)}
        report["targets"].append(entry)
        for actions in ("v1", "v2"):
            if (entry["target_ms"], actions) in done:  # a search of the same supernet and target already ran
                entry[actions] = done[entry["target_ms"], actions]
                continue
            entry[actions] = search(args.checkpoint, table, target, actions)
            report["load"][f"after_{fraction}_{actions}"] = loadavg()
            write_text_atomic(args.out, json.dumps(report, indent=1) + "\n")  # partial results survive
            row = entry[actions]
            print(f"{fraction:.2f} x largest, {actions}: {row.get('accuracy_percent')}% at {row.get('latency_ms')} ms, "
                  f"{row.get('steps')} steps, {row.get('evaluations')} evaluations, {row.get('seconds')} s", file=sys.stderr)
    report["load"]["end"] = loadavg()
    write_text_atomic(args.out, json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
