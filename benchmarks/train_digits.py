"""Train the EfficientFormerV2 supernet on the scikit-learn digits at resolution 32 (sandwich rule).

What it measures (JSON to `benchmarks/results/train_digits.json`):
- validation accuracy (359 held-out digits) of the largest, the smallest and 10 random
  sub-networks after a fixed budget of epochs, each both with the supernet's switchable BN
  statistics and after BN recalibration on 20 training batches (`recalibrate_bn`);
- training throughput (images/second of the sandwich phase, per epoch);
- the cost of one sandwich step (largest + smallest + 2 random, distilled) relative to one step
  of the largest network alone, interleaved over `--cost-steps` steps each after training.

The space is the full `efficientformer_v2` space (no reduced widths). Targets from issue 4: largest
>= 95%, smallest >= 90%, sandwich step <= 3.0x the largest-only step.

    python benchmarks/train_digits.py [--epochs 12] [--threads 2] [--out benchmarks/results/train_digits.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search_spaces.files import write_text_atomic  # noqa: E402
from supernet.data import load_data  # noqa: E402
from supernet.training import TrainConfig, Trainer, accuracy, evaluate, recalibrate_bn  # noqa: E402


def step_costs(trainer: Trainer, batch: tuple[torch.Tensor, torch.Tensor], steps: int) -> dict[str, float]:
    """Median seconds of a largest-only step and of a sandwich step, interleaved (A B A B ...)."""
    net, config = trainer.supernet, trainer.config
    images, labels = batch
    rng = np.random.default_rng(123)
    optimizer = torch.optim.SGD(net.weight_parameters(), lr=0.0)  # lr 0: time the work, keep the weights

    def largest_only() -> None:
        optimizer.zero_grad(set_to_none=True)
        net.set_arch(trainer.largest)
        F.cross_entropy(net(images), labels, label_smoothing=config.label_smoothing).backward()
        optimizer.step()

    def sandwich() -> None:
        optimizer.zero_grad(set_to_none=True)
        net.set_arch(trainer.largest)
        logits = net(images)
        F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing).backward()
        teacher = F.softmax(logits.detach(), dim=1)
        for arch in [trainer.smallest] + [net.fit(trainer.space.sample(rng)) for _ in range(config.num_random)]:
            net.set_arch(arch)
            (-(teacher * F.log_softmax(net(images), dim=1)).sum(1).mean()).backward()
        optimizer.step()

    net.train()
    largest_only(), sandwich()  # warm-up
    times: dict[str, list[float]] = {"largest_only": [], "sandwich": []}
    for _ in range(steps):
        for name, step in (("largest_only", largest_only), ("sandwich", sandwich)):
            started = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bn-statistics", choices=("all", "ends"), default="all")
    parser.add_argument("--cost-steps", type=int, default=5)
    parser.add_argument("--checkpoint", default=str(ROOT / "runs" / "v2_digits.pt"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_digits.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = TrainConfig(
        space="efficientformer_v2", data="digits", mode="sandwich", epochs=args.epochs, batch_size=args.batch_size,
        resolution=32, seed=args.seed, bn_statistics=args.bn_statistics,
    )
    bundle = load_data("digits", config.resolution, config.seed)
    checkpoint = Path(args.checkpoint)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config, bundle, checkpoint, progress=True)
    started = time.perf_counter()
    history = trainer.run()
    training_seconds = time.perf_counter() - started

    net = trainer.supernet
    net.set_mode("fixed")
    val = torch.utils.data.DataLoader(bundle.val, batch_size=256)
    calibration = torch.utils.data.DataLoader(bundle.train, batch_size=64, shuffle=False)
    rng = np.random.default_rng(2024)
    archs = {"largest": trainer.largest, "smallest": trainer.smallest}
    archs.update({f"random_{i}": net.fit(trainer.space.sample(rng)) for i in range(10)})
    results = {}
    for name, arch in archs.items():
        shared = evaluate(net, arch, val)
        recalibrated = accuracy(recalibrate_bn(net, arch, calibration, batches=20), val)
        from search_spaces import count_params

        results[name] = {"val_accuracy": shared, "val_accuracy_bn_recalibrated": recalibrated, "params": count_params(arch)}
        print(f"{name:<10} {shared:.3f} (recalibrated {recalibrated:.3f})", file=sys.stderr)

    batch = next(iter(torch.utils.data.DataLoader(bundle.train, batch_size=args.batch_size)))
    costs = step_costs(trainer, batch, args.cost_steps)
    randoms = [results[f"random_{i}"]["val_accuracy"] for i in range(10)]
    report = {
        "benchmark": "train_digits",
        "what": __doc__.split("\n\n")[1].strip(),
        "space": "efficientformer_v2 (full space, no reduced widths)",
        "config": {**config.__dict__},
        "data": bundle.describe(),
        "epochs": history,
        "training_seconds": training_seconds,
        "images_per_second_sandwich": statistics.median(h["images_per_second"] for h in history),
        "accuracy": results,
        "random_mean": statistics.mean(randoms),
        "random_min": min(randoms),
        "step_seconds": costs,
        "sandwich_over_largest_step": costs["sandwich"] / costs["largest_only"],
        "targets": {"largest": 0.95, "smallest": 0.90, "sandwich_over_largest_step": 3.0},
        "meets_targets": {
            "largest": results["largest"]["val_accuracy"] >= 0.95,
            "smallest": results["smallest"]["val_accuracy"] >= 0.90,
            "sandwich_over_largest_step": costs["sandwich"] / costs["largest_only"] <= 3.0,
        },
        "environment": {
            "torch": torch.__version__,
            "threads": args.threads,
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_end": list(os.getloadavg()),
        },
        "checkpoint": str(checkpoint),
        "checkpoint_mb": round(checkpoint.stat().st_size / 2**20, 1),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_text_atomic(Path(args.out), json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps({k: report[k] for k in ("meets_targets", "sandwich_over_largest_step", "random_mean")}, indent=2))


if __name__ == "__main__":
    main()
