"""How long a search takes: the default command end to end, and supernet-evaluator searches.

    python benchmarks/search_speed.py [--repeats 3] [--supernet runs/v2_digits.pt] [--target 2.0ms]
        [--study-supernet runs/supernet_ranking/supernet.pt] [--study-minutes 12] [--study-threads 2]
        [--study-recalibrate 0] [--study-untrained-norms estimate|recalibrate]
        [--study-eval-batches 8 --study-batch-size 256]
        [--study-screen-batches 1 --study-shortlist 3] [--study-min-step MS] [--study-drop-floor POINTS]
        [--study-name NAME] [--only default,digits,study,study-screened]

1. The default command, `python -m nas.search --target-latency 1.5ms --device iphone12`, run as a
   fresh process `--repeats` times: wall time including interpreter start-up and imports (target:
   under 15 s on the 2-core machine), plus the evaluator's share reported by the command itself.
2. A greedy search whose evaluator is the digits-trained EfficientFormerV2 supernet
   (`benchmarks/train_digits.py` writes `runs/v2_digits.pt`): wall time, number of evaluations,
   time per evaluation (each one is top-1 accuracy on the 359 held-out digits through the
   supernet), on the `iphone12` table at `--target`. Skipped, and said so, when the checkpoint is
   missing.
3. Issue 16's speed check: a greedy search (`nas.api.run_search`) whose evaluator is the Fashion-MNIST
   V2 supernet of `experiments/supernet_ranking` at that study's settings (64 px, `--study-eval-batches`
   batches of `--study-batch-size` val images, BN handled as that study chose: the shared
   statistics, `--study-recalibrate 0`, the BN widths no training step updated estimated once
   per supernet, `--study-untrained-norms estimate`: by the first run, which keeps the estimate
   beside the checkpoint, and read from there by later runs (`untrained_norms_estimated.read`);
   `recalibrate` recalibrates each candidate that runs one instead, as every search did before),
   on the `iphone12` table at `--study-target`, in one
   process with `--study-threads` torch threads (2: the machine's two cores), stopped after
   `--study-minutes` if it has not finished: steps taken, evaluations, seconds per evaluation and
   per step, and whether the search finished inside the limit (issue 16: under 10 minutes on 2
   cores). `--study-min-step` and `--study-drop-floor` set greedy's compound steps and drop floor
   (`nas.greedy`; the search study's chosen controller is `--study-min-step 0.05`, no floor).
   Skipped when the checkpoint is missing.
4. `study-screened`: the same search with screening greedy steps (`nas.greedy`): every candidate
   is screened on the first `--study-screen-batches` batches and `--study-shortlist` per step are
   scored on all of them; also reports screenings, and seconds per candidate (a step's time over
   its candidates). What screening keeps of the unscreened choices: `benchmarks/greedy_screening.py`.

`--only` runs some parts and keeps the others' results from the existing JSON. `--study-name NAME`
files a study part's result under `study_runs.NAME` instead (several settings side by side, e.g.
the ranking study's 2,048 images and the search study's 500).
Writes `benchmarks/results/search_speed.json` with the machine load before and after.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search_spaces import Architecture  # noqa: E402
from search_spaces.files import write_text_atomic  # noqa: E402

from lut import get_device  # noqa: E402
from lut.devices import loadavg  # noqa: E402
from nas.api import SearchRequest, run_search  # noqa: E402
from nas.evaluators import SupernetEvaluation  # noqa: E402

DEFAULT_COMMAND = [sys.executable, "-m", "nas.search", "--target-latency", "1.5ms", "--device", "iphone12"]


def timed_run(argv: list[str], out: Path) -> tuple[float, str]:
    start = time.perf_counter()
    completed = subprocess.run([*argv, "--out", str(out)], cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if completed.returncode != 0:
        raise SystemExit(f"search failed ({completed.returncode}): {completed.stderr.strip()}")
    return wall, completed.stderr.strip().splitlines()[-1]


class TimeUp(Exception):
    """The study-settings search ran past its time limit."""


@dataclass(frozen=True)
class CountedSupernetEvaluation(SupernetEvaluation):
    """`SupernetEvaluation` that keeps the evaluators it builds (in `built`), so their counts can be
    read after a search that was stopped part-way."""

    built: list = field(default_factory=list, compare=False)

    def build(self, space, seed: int):
        evaluator, net = super().build(space, seed)
        self.built.append(evaluator)
        return evaluator, net


@dataclass(frozen=True)
class StudySearchSettings:
    """The settings of one study-settings greedy search: the evaluator's (`nas.evaluators.
    SupernetEvaluation`), the controller's (`nas.greedy.greedy_search`), the target and the limit."""

    checkpoint: Path
    data: str
    recalibrate: int
    eval_batches: int
    batch_size: int
    target_ms: float
    minutes: float
    threads: int
    screen_batches: int = 0
    shortlist: int = 0
    min_step_ms: float | None = None
    drop_floor: float | None = None
    untrained_norms: str = "estimate"


def study_search(settings: StudySearchSettings) -> dict:
    """Greedy search at the ranking study's evaluator settings (screening each step's candidates on
    `screen_batches` batches and scoring `shortlist` of them fully, when given), stopped after
    `minutes`."""
    load_before = loadavg()
    torch.set_num_threads(settings.threads)
    table = get_device("iphone12").default_table("efficientformer_v2")
    spec = CountedSupernetEvaluation(settings.checkpoint, settings.data, recalibrate=settings.recalibrate,
                                     eval_batches=settings.eval_batches, batch_size=settings.batch_size,
                                     screen_batches=settings.screen_batches, untrained_norms=settings.untrained_norms)
    steps: list[float] = []
    last_latency: list[float] = []
    started = time.perf_counter()

    def on_step(step) -> None:
        steps.append(time.perf_counter() - started)
        last_latency.append(step.latency)
        if steps[-1] > 60.0 * settings.minutes:
            raise TimeUp

    finished = True
    try:
        outcome = run_search(SearchRequest("efficientformer_v2", table, settings.target_ms, evaluator=spec,
                                           shortlist=settings.shortlist, min_step_ms=settings.min_step_ms,
                                           drop_floor=settings.drop_floor), on_step=on_step)
    except TimeUp:
        finished, outcome = False, None
    wall = time.perf_counter() - started
    evaluator = spec.built[-1]
    # the first on_step comes after the evaluator is built and the start is scored
    setup = steps[0] if steps else wall
    per_step = [b - a for a, b in itertools.pairwise(steps)]
    checkpoint = settings.checkpoint
    report = {
        "settings": {"checkpoint": str(checkpoint.relative_to(ROOT) if checkpoint.is_relative_to(ROOT) else checkpoint),
                     "data": settings.data, "recalibrate_batches": settings.recalibrate,
                     "untrained_norms": settings.untrained_norms,
                     "eval_batches": settings.eval_batches, "images_per_evaluation": evaluator.settings()["images"],
                     "target_ms": settings.target_ms, "time_limit_minutes": settings.minutes,
                     "threads": settings.threads, "min_step_ms": settings.min_step_ms,
                     "drop_floor": settings.drop_floor,
                     **({"screen_images": evaluator.settings()["screen_images"], "shortlist": settings.shortlist}
                        if settings.shortlist else {})},
        "loadavg_before": load_before,
        "finished": finished,
        "meets_target_10_minutes": finished and wall <= 600.0,
        "wall_s": round(wall, 1),
        "setup_s": round(setup, 1),
        "steps_taken": max(len(steps) - 1, 0),
        "evaluations": evaluator.evaluations,
        **({"screenings": evaluator.screenings} if settings.shortlist else {}),
        "auto_recalibrated": evaluator.report()["auto_recalibrated"],
        **({"untrained_norms_estimated": evaluator.report()["untrained_norms_estimated"]}
           if "untrained_norms_estimated" in evaluator.report() else {}),
        # without screening: seconds per candidate evaluation; with it, per candidate (screened, and
        # scored if shortlisted): what a step of C candidates costs divided by C
        "seconds_per_candidate": round((wall - setup) / max(max(evaluator.evaluations, evaluator.screenings) - 1, 1), 3),
        "seconds_per_step": [round(t, 1) for t in per_step],
        "loadavg_after": loadavg(),
    }
    if outcome is None:  # where the stopped search had got to: the last step taken
        report["last_step_latency_ms"] = round(last_latency[-1], 4) if last_latency else None
    if outcome is not None and outcome.reachable:
        report["result"] = {k: outcome.arch.meta[k] for k in ("predicted_latency_ms", "params", "mes", "score")}
    return report


def default_command(repeats: int, scratch: Path) -> dict:
    walls, lines = [], []
    for _ in range(repeats):
        wall, line = timed_run(DEFAULT_COMMAND, scratch / "default.yaml")
        walls.append(wall)
        lines.append(line)
    found = Architecture.from_yaml(scratch / "default.yaml")
    print(f"default command: median {statistics.median(walls):.2f} s over {repeats} runs", file=sys.stderr)
    return {
        "command": "python -m nas.search --target-latency 1.5ms --device iphone12",
        "wall_s": [round(w, 3) for w in walls],
        "median_wall_s": round(statistics.median(walls), 3),
        "target_s": 15.0,
        "meets_target": statistics.median(walls) < 15.0,
        "evaluations": found.meta["evaluations"],
        "steps": found.meta["steps"],
        "result": {k: found.meta[k] for k in ("predicted_latency_ms", "params", "mes", "score")},
        "stderr_summary": lines[-1],
    }


def digits_search(supernet: Path, target: str, scratch: Path) -> dict:
    if not supernet.is_file():
        return {"skipped": f"no checkpoint at {supernet}; run benchmarks/train_digits.py"}
    trace = scratch / "supernet.jsonl"
    argv = [sys.executable, "-m", "nas.search", "--target-latency", target, "--device", "iphone12",
            "--supernet", str(supernet), "--data", "digits", "--trace", str(trace)]
    wall, _ = timed_run(argv, scratch / "supernet.yaml")
    found = Architecture.from_yaml(scratch / "supernet.yaml")
    evaluations = found.meta["evaluations"]
    print(f"supernet search: {wall:.1f} s, {evaluations} evaluations", file=sys.stderr)
    return {
        "command": " ".join(["python -m nas.search", *argv[3:]]).replace(str(ROOT) + "/", ""),
        "wall_s": round(wall, 2),
        "evaluations": evaluations,
        "steps": found.meta["steps"],
        "seconds_per_evaluation_upper_bound": round(wall / evaluations, 4),
        "note": "wall time includes loading the checkpoint and the data; seconds per evaluation is wall/evaluations",
        "result": {k: found.meta[k] for k in ("predicted_latency_ms", "params", "mes", "score")},
        "images_per_evaluation": found.meta["evaluator_settings"]["images"],
    }


PARTS = ("default", "digits", "study", "study-screened")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--supernet", type=Path, default=ROOT / "runs" / "v2_digits.pt")
    parser.add_argument("--target", default="2.0ms", help="target of the digits supernet-evaluator search (iphone12)")
    parser.add_argument("--study-supernet", type=Path, default=ROOT / "runs" / "supernet_ranking" / "supernet.pt")
    parser.add_argument("--study-data", default="fashion-mnist")
    parser.add_argument("--study-recalibrate", type=int, default=0,
                        help="BN recalibration batches (0: shared statistics, the ranking study's choice)")
    parser.add_argument("--study-untrained-norms", default="estimate", choices=("estimate", "recalibrate"),
                        help="BN widths no training step updated: estimated once, or recalibrated per candidate")
    parser.add_argument("--study-eval-batches", type=int, default=8)
    parser.add_argument("--study-batch-size", type=int, default=256)
    parser.add_argument("--study-threads", type=int, default=2, help="torch threads of the study searches")
    parser.add_argument("--study-min-step", type=float, default=None, help="greedy's min_step_ms (ms)")
    parser.add_argument("--study-drop-floor", type=float, default=None, help="greedy's drop_floor (points)")
    parser.add_argument("--study-name", default=None, help="file the study parts under study_runs.NAME")
    parser.add_argument("--study-target", type=float, default=1.1, help="ms on iphone12 (EfficientFormerV2-S1)")
    parser.add_argument("--study-minutes", type=float, default=12.0)
    parser.add_argument("--study-screen-batches", type=int, default=1, help="part study-screened: batches screened on")
    parser.add_argument("--study-shortlist", type=int, default=3, help="part study-screened: candidates scored per step")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts to run, of {','.join(PARTS)}")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "search_speed.json")
    args = parser.parse_args()
    parts = [part for part in args.only.split(",") if part]
    if not parts or any(part not in PARTS for part in parts):
        parser.error(f"--only: comma-separated parts of {','.join(PARTS)}")
    scratch = ROOT / "runs" / "search_speed"
    scratch.mkdir(parents=True, exist_ok=True)
    earlier = json.loads(args.out.read_text()) if args.out.is_file() and len(parts) < len(PARTS) else {}
    report: dict = {**earlier, "benchmark": "search_speed", "what": __doc__.split("\n\n")[2].strip()}
    report["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_before": loadavg(),
                         "parts_run": parts}
    if "default" in parts:
        report["default_command"] = default_command(args.repeats, scratch)
    if "digits" in parts:
        report["supernet_search"] = digits_search(args.supernet, args.target, scratch)
    for part, key in (("study", "study_settings_search"), ("study-screened", "study_settings_screened_search")):
        if part not in parts:
            continue
        if not args.study_supernet.is_file():
            result: dict = {"skipped": f"no checkpoint at {args.study_supernet}"}
        else:
            screened = part == "study-screened"
            result = study_search(StudySearchSettings(
                checkpoint=args.study_supernet, data=args.study_data, recalibrate=args.study_recalibrate,
                eval_batches=args.study_eval_batches, batch_size=args.study_batch_size, target_ms=args.study_target,
                minutes=args.study_minutes, threads=args.study_threads,
                screen_batches=args.study_screen_batches if screened else 0,
                shortlist=args.study_shortlist if screened else 0,
                min_step_ms=args.study_min_step, drop_floor=args.study_drop_floor,
                untrained_norms=args.study_untrained_norms))
            print(f"{part} search: {json.dumps(result)}", file=sys.stderr)
        if args.study_name:
            report.setdefault("study_runs", {})[f"{args.study_name}/{part}"] = result
        else:
            report[key] = result
    report["machine"]["loadavg_after"] = loadavg()
    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
