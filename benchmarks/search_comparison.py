"""A small, fast version of the search study (issue 17): greedy slimming against random search and
regularized evolution at equal evaluation budgets on Fashion-MNIST, every pick re-scored on test.

    python benchmarks/search_comparison.py [--data fashion-mnist] [--fractions 0.75]
        [--val-images 200] [--seeds 2] [--steps-past-target N] [--fresh]

It runs `experiments/search_fashion/run.py` (phases search, rescore and evaluate; no standalone
training, which is the study's job) on a configuration small enough to rerun in minutes on two
cores, written beside a small supernet it trains once and keeps in `runs/bench_search_comparison/`:
the EfficientFormerV2 space at 32 px, sandwich rule, 1 epoch on 3,000 training images. The table
is `iphone12`; the targets are fractions of the largest network's predicted latency; each
evaluation reads `--val-images` val images (greedy screens on a fifth of them); greedy runs with
the `mes` objective in three settings (single steps with the drop floor; compound 0.05 ms steps
with the plain ratio, the one that held the study's must-hold; the same with the shortlist widened
by up to 8 when a step's screening was off, `nas.greedy`'s `shortlist_extra`), random search and
evolution at `--seeds` seeds at greedy's budget, random search once more at 5x. `--steps-past-target
N` adds the first setting walking N steps on past the target (returning the most accurate feasible
network of its path); it costs about 3x the others and sets every sampling budget, so it is off by
default. The committed run (2026-12-07, two idle cores, `--fresh`) took 14.4 minutes: 125 s to
train the supernet, 537 s of search (random at 5x 165 s), 199 s to re-score the 8 picks and the
4 references on the 10,000 test images; a rerun that keeps the supernet takes about 12. The run
before (2026-12-06, with the walk of 30 steps past the target) took 32 minutes, 48 before the
evaluator estimated the untrained BatchNorm widths once instead of per candidate. A 32 px, one-epoch supernet is a weak
evaluator: this benchmark shows that the comparison runs end to end and what it costs, and gives a
first reading of its verdicts; the study's configuration (`experiments/search_fashion/config.yaml`)
decides them.

Writes `benchmarks/results/search_comparison.json`: the study's checks, its per-target summary,
seconds per phase, and the load average before and after.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search_spaces.files import write_text_atomic  # noqa: E402

from experiments.search_fashion import run as study  # noqa: E402
from experiments.study import exit_code_of, read_json, write_json  # noqa: E402
from lut.devices import loadavg  # noqa: E402
from supernet.data import load_data  # noqa: E402
from supernet.training import TrainConfig, Trainer  # noqa: E402

HERE = ROOT / "runs" / "bench_search_comparison"
OUT = ROOT / "benchmarks" / "results" / "search_comparison.json"
SUPERNET = TrainConfig(space="efficientformer_v2", data="fashion-mnist", mode="sandwich", epochs=1, batch_size=64,
                       resolution=32, warmup_epochs=0.2, train_images=3000, val_images=500, seed=0)
MIN_STEP_MS = 0.05  # the study's compound step (experiments/search_fashion/config.yaml)
SHORTLIST_EXTRA = 8  # as the hybrid study's widened runs (experiments/hybrid_space/search_ort_cpu.yaml)


def train_supernet(data: str) -> Path:
    """The benchmark's supernet (trained once, then reused while its config is unchanged)."""
    config = TrainConfig(**{**SUPERNET.__dict__, "data": data})
    path = HERE / f"supernet_{data.replace(':', '_')}.pt"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config, load_data(data, config.resolution, config.seed), path, progress=True)
    trainer.run()
    return path


def study_config(args: argparse.Namespace, supernet: Path) -> dict:
    screen = max(1, args.val_images // 5)
    if args.val_images % screen:
        raise SystemExit(f"--val-images {args.val_images}: give a multiple of 5")
    seeds = list(range(args.seeds))
    drop_floor = round(100 * 2.5 / args.val_images, 3)  # 2.5 images' worth, as the study's 0.5 points of 500
    return {
        "space": "efficientformer_v2", "data": args.data, "threads": args.threads,
        "supernet": str(supernet.relative_to(ROOT)), "runs": str((HERE / "runs").relative_to(ROOT)),
        "results": str((HERE / "results").relative_to(ROOT)),
        "evaluator": {"batch_size": screen, "eval_batches": args.val_images // screen, "recalibrate": 0,
                      "screen_batches": 1, "shortlist": 2},
        "tables": {"iphone12": {"device": "iphone12", "targets_ms": [], "target_fractions": args.fractions,
                                "references": {}}},
        "strategies": {
            "greedy_mes": {"strategy": "greedy", "objective": "mes", "drop_floor": drop_floor},
            "greedy_mes_steps_plain": {"strategy": "greedy", "objective": "mes", "drop_floor": None,
                                       "min_step_ms": MIN_STEP_MS},
            # the same with a widened shortlist (`nas.greedy`'s shortlist_extra)
            "greedy_mes_steps_widened": {"strategy": "greedy", "objective": "mes", "drop_floor": None,
                                         "min_step_ms": MIN_STEP_MS, "shortlist_extra": SHORTLIST_EXTRA},
            # on request, the first setting walking on past the target to the path's most accurate
            # feasible network (it costs about 3x the others, and sets every sampling budget)
            **({"greedy_mes_past": {"strategy": "greedy", "objective": "mes", "drop_floor": drop_floor,
                                    "steps_past_target": args.steps_past_target}} if args.steps_past_target else {}),
            "random": {"strategy": "random", "objective": "mes", "seeds": seeds, "budget_multiple": 1},
            "evolution": {"strategy": "evolution", "objective": "mes", "seeds": seeds, "budget_multiple": 1,
                          "population_size": 10, "sample_size": 3},
            "random_5x": {"strategy": "random", "objective": "mes", "seeds": [0], "budget_multiple": 5}},
        "mes": {"u_size": 3000000, "u_lat": 1.0, "alpha_size": 0.5, "alpha_lat": 1.0},
        "standalone": {"seeds": [0], "epochs": 1, "batch_size": 64, "lr": 0.002, "weight_decay": 0.05,
                       "warmup_epochs": 0.3, "label_smoothing": 0.1, "grad_clip": 5.0, "train_images": 1000,
                       "val_images": 200},
    }


def fractions(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give fractions like 0.75,0.6") from None
    if not values or not all(0.1 <= value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: each fraction in [0.1, 1)")
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist", help="a data spec (tests: synthetic:N)")
    parser.add_argument("--fractions", type=fractions, default=[0.75],
                        help="targets, as fractions of the largest network's predicted latency")
    parser.add_argument("--val-images", type=int, default=200, choices=range(5, 2001), metavar="5..2000")
    parser.add_argument("--seeds", type=int, default=2, choices=range(1, 6), metavar="1..5")
    parser.add_argument("--steps-past-target", type=int, default=0, choices=range(0, 1001), metavar="0..1000",
                        help="N > 0 adds greedy_mes_past, which walks N steps on past the target (0: not run)")
    parser.add_argument("--threads", type=int, default=2, choices=range(1, 65), metavar="1..64")
    parser.add_argument("--fresh", action="store_true", help="remove earlier searches first (keeps the supernet)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before, seconds = loadavg(), {}
    started = time.perf_counter()
    supernet = train_supernet(args.data)
    seconds["supernet"] = round(time.perf_counter() - started, 1)
    config = study_config(args, supernet)
    if args.fresh:
        import shutil

        for folder in ("runs", "results"):
            shutil.rmtree(HERE / folder, ignore_errors=True)
    config_path = HERE / "config.yaml"
    write_text_atomic(config_path, yaml.safe_dump(config, sort_keys=False))
    for phase in ("search", "rescore", "evaluate"):
        started = time.perf_counter()
        code = exit_code_of(lambda phase=phase: study.main(["--config", str(config_path), "--phase", phase]))
        if code:
            return code
        seconds[phase] = round(time.perf_counter() - started, 1)
    results = read_json(HERE / "results" / "results.json")
    write_json(OUT, {
        "benchmark": "search_comparison", "what": __doc__.strip().splitlines()[0],
        "supernet": {"config": SUPERNET.__dict__ | {"data": args.data}, "checkpoint": config["supernet"]},
        "config": config, "seconds": seconds, "load": {"before": load_before, "after": loadavg()},
        "machine": results["machine"], "versions": results["versions"], "checks": results["checks"],
        "must_hold": {k: v for k, v in results["must_hold"].items() if not k.startswith("found_")},
        "summary": results["summary"],
    })
    print(f"wrote {OUT.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
