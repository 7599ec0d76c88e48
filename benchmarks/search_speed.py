"""How long a search takes: the default command end to end, and a supernet-evaluator search on digits.

    python benchmarks/search_speed.py [--repeats 3] [--supernet runs/v2_digits.pt] [--target 2.0ms]

1. The default command, `python -m nas.search --target-latency 1.5ms --device iphone12`, run as a
   fresh process `--repeats` times: wall time including interpreter start-up and imports (target:
   under 15 s on the 2-core machine), plus the evaluator's share reported by the command itself.
2. A greedy search whose evaluator is the digits-trained EfficientFormerV2 supernet
   (`benchmarks/train_digits.py` writes `runs/v2_digits.pt`): wall time, number of evaluations,
   time per evaluation (each one is top-1 accuracy on the 359 held-out digits through the
   supernet), on the `iphone12` table at `--target`. Skipped, and said so, when the checkpoint is
   missing.

Writes `benchmarks/results/search_speed.json` with the machine load before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search_spaces import Architecture  # noqa: E402
from search_spaces.files import write_text_atomic  # noqa: E402

from lut.devices import loadavg  # noqa: E402

DEFAULT_COMMAND = [sys.executable, "-m", "nas.search", "--target-latency", "1.5ms", "--device", "iphone12"]


def timed_run(argv: list[str], out: Path) -> tuple[float, str]:
    start = time.perf_counter()
    completed = subprocess.run([*argv, "--out", str(out)], cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if completed.returncode != 0:
        raise SystemExit(f"search failed ({completed.returncode}): {completed.stderr.strip()}")
    return wall, completed.stderr.strip().splitlines()[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--supernet", default=str(ROOT / "runs" / "v2_digits.pt"))
    parser.add_argument("--target", default="2.0ms", help="target of the supernet-evaluator search (iphone12)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "search_speed.json"))
    args = parser.parse_args()
    scratch = ROOT / "runs" / "search_speed"
    scratch.mkdir(parents=True, exist_ok=True)
    report: dict = {"benchmark": "search_speed", "what": __doc__.split("\n\n")[2].strip(),
                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_before": loadavg()}}

    walls, lines = [], []
    for _ in range(args.repeats):
        wall, line = timed_run(DEFAULT_COMMAND, scratch / "default.yaml")
        walls.append(wall)
        lines.append(line)
    found = Architecture.from_yaml(scratch / "default.yaml")
    report["default_command"] = {
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
    print(f"default command: median {statistics.median(walls):.2f} s over {args.repeats} runs", file=sys.stderr)

    if Path(args.supernet).is_file():
        trace = scratch / "supernet.jsonl"
        argv = [sys.executable, "-m", "nas.search", "--target-latency", args.target, "--device", "iphone12",
                "--supernet", args.supernet, "--data", "digits", "--trace", str(trace)]
        wall, line = timed_run(argv, scratch / "supernet.yaml")
        found = Architecture.from_yaml(scratch / "supernet.yaml")
        evaluations = found.meta["evaluations"]
        report["supernet_search"] = {
            "command": " ".join(["python -m nas.search", *argv[3:]]).replace(str(ROOT) + "/", ""),
            "wall_s": round(wall, 2),
            "evaluations": evaluations,
            "steps": found.meta["steps"],
            "seconds_per_evaluation_upper_bound": round(wall / evaluations, 4),
            "note": "wall time includes loading the checkpoint and the data; seconds per evaluation is wall/evaluations",
            "result": {k: found.meta[k] for k in ("predicted_latency_ms", "params", "mes", "score")},
            "images_per_evaluation": found.meta["evaluator_settings"]["images"],
        }
        print(f"supernet search: {wall:.1f} s, {evaluations} evaluations", file=sys.stderr)
    else:
        report["supernet_search"] = {"skipped": f"no checkpoint at {args.supernet}; run benchmarks/train_digits.py"}
    report["machine"]["loadavg_after"] = loadavg()
    write_text_atomic(Path(args.out), json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
