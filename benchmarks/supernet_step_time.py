"""How much longer does a supernet of one space take to train than another's? Sandwich steps, timed.

    python benchmarks/supernet_step_time.py [--spaces efficientformer_v2,hybrid] [--resolution 64]
        [--batch 64] [--steps 12] [--threads 2] [--accelerator cpu]

A study sizes its supernet phase from an earlier one (the hybrid study from the ranking study's V2
supernet), so what it needs is the ratio of step times, measured in one run. For each space a
`supernet.training.Trainer` is built with the ranking study's sandwich settings (the largest, the
smallest and `num_random` random sub-networks per step, in-place distillation) at `--resolution`
and `--batch`, on `synthetic` images (a step's cost does not depend on what the images show). After
two untimed steps each, `--steps` timed `Trainer.train_step` calls per space run interleaved (one
step of each space in turn, the same random sub-network seed for both at each step, so a change of
the machine's load hits both alike); `time.perf_counter` around each step (on CUDA, synchronised).

Reported per space: median, mean and max seconds per step, the weights' count and size in float32;
the ratio of medians to the first space. Writes `benchmarks/results/supernet_step_time.json` with
the machine, its load before and after, and the versions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search_spaces.files import write_text_atomic  # noqa: E402

from lut.devices import host_cpu, loadavg  # noqa: E402
from supernet.data import load_data  # noqa: E402
from supernet.training import TrainConfig, Trainer  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "supernet_step_time.json"
WARMUP_STEPS = 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spaces", default="efficientformer_v2,hybrid")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--accelerator", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.accelerator == "cuda" and not torch.cuda.is_available():
        parser.error("--accelerator cuda: torch sees no CUDA device here")
    torch.set_num_threads(args.threads)
    spaces = args.spaces.split(",")
    bundle = load_data(f"synthetic:{4 * args.batch}", args.resolution)
    images, labels = next(iter(torch.utils.data.DataLoader(bundle.train, batch_size=args.batch)))
    images, labels = images.to(args.accelerator), labels.to(args.accelerator)
    report = {"benchmark": "supernet_step_time", "what": __doc__.split("\n\n")[2].strip(),
              "settings": {"resolution": args.resolution, "batch": args.batch, "steps": args.steps,
                           "threads": args.threads, "accelerator": args.accelerator},
              "machine": {"cpu": host_cpu(), "cpus": os.cpu_count(), "loadavg_before": loadavg(),
                          "gpu": torch.cuda.get_device_name() if args.accelerator == "cuda" else None},
              "versions": {"torch": torch.__version__}}
    with tempfile.TemporaryDirectory() as scratch:
        trainers = {}
        for space in spaces:
            config = TrainConfig(space=space, data="synthetic", mode="sandwich", epochs=1, batch_size=args.batch,
                                 resolution=args.resolution, num_random=2, bn_statistics="all")
            trainers[space] = Trainer(config, bundle, Path(scratch) / f"{space}.pt", progress=False,
                                      device=args.accelerator)
        seconds: dict[str, list[float]] = {space: [] for space in spaces}
        for step in range(WARMUP_STEPS + args.steps):
            for space, trainer in trainers.items():
                rng = np.random.default_rng(step)  # the same sub-network draws for every space
                start = time.perf_counter()
                trainer.train_step(images, labels, rng)
                if args.accelerator == "cuda":
                    torch.cuda.synchronize()
                if step >= WARMUP_STEPS:
                    seconds[space].append(time.perf_counter() - start)
        weights = {space: sum(p.numel() for p in trainer.supernet.weight_parameters()) for space, trainer in trainers.items()}
    first = statistics.median(seconds[spaces[0]])
    report["spaces"] = {space: {"median_s": round(statistics.median(values), 4), "mean_s": round(statistics.mean(values), 4),
                                "max_s": round(max(values), 4), "weights": weights[space],
                                "weights_mib_fp32": round(4 * weights[space] / 2**20, 1),
                                f"median_over_{spaces[0]}": round(statistics.median(values) / first, 3)}
                        for space, values in seconds.items()}
    report["machine"]["loadavg_after"] = loadavg()
    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    for space, row in report["spaces"].items():
        print(f"{space}: {row['median_s']:.3f} s a step (x{row[f'median_over_{spaces[0]}']:.2f}), "
              f"{row['weights'] / 1e6:.1f} M weights", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
