"""Which Gumbel sampling trains a V1 supernet whose fixed sub-networks a search can score?

A Gumbel phase trains the weights inside a mixture of paths; a search then scores sub-networks
that run one path per slot (`fixed` mode). This check scores, in each given checkpoint, the
largest network and `--networks` sub-networks of random depth and block types at the largest
widths (the widths a Gumbel phase trains, so no untrained BatchNorm is involved) on the first
`--images` val images, and writes them with each checkpoint's training log to `--out`:

    python experiments/search_fashion/gumbel_sampling.py --resolution 64 \\
        --checkpoint soft=runs/search_fashion_v1_soft/supernet.pt \\
        --checkpoint hard=runs/search_fashion_v1/supernet.pt --out experiments/search_fashion/cpu_v1/gumbel_sampling.json

Val only: nothing here reads the test split.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from tqdm import tqdm  # noqa: E402

from search_spaces import Architecture  # noqa: E402
from search_spaces.files import write_text_atomic  # noqa: E402
from supernet import Supernet  # noqa: E402
from supernet.data import load_data, stratified_subset  # noqa: E402
from supernet.training import evaluate  # noqa: E402


def at_largest_widths(arch: Architecture, largest: Architecture) -> Architecture:
    """`arch`'s depths and block types with the largest network's widths and expansions."""
    stages = tuple(
        dataclasses.replace(stage, width=big.width, blocks=tuple(
            dataclasses.replace(block, expansion=big_block.expansion) for block, big_block in zip(stage.blocks, big.blocks)))
        for stage, big in zip(arch.stages, largest.stages)
    )
    return dataclasses.replace(arch, stages=stages)


def score_checkpoint(path: Path, loader: DataLoader, networks: int, seed: int) -> dict:
    net = Supernet.load(path)
    largest = net.fit(net.space.largest())
    rng = np.random.default_rng(seed)
    archs = [at_largest_widths(net.fit(net.space.sample(rng)), largest) for _ in range(networks)]
    scores = [evaluate(net, arch, loader) for arch in tqdm(archs, desc=path.name, leave=False)]
    metrics = path.with_name(path.name + ".metrics.jsonl")
    log = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    return {
        "checkpoint": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name,
        "training_log": log,
        "largest": evaluate(net, largest, loader),
        "random_depth": {"mean": statistics.fmean(scores), "min": min(scores), "max": max(scores),
                         "scores": scores, "depths": [sum(len(stage.blocks) for stage in arch.stages) for arch in archs]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", action="append", required=True, metavar="LABEL=PATH")
    parser.add_argument("--resolution", type=int, required=True)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--networks", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    checkpoints = {}
    for item in args.checkpoint:
        label, _, path = item.partition("=")
        if not label or not path or not Path(path).is_file():
            raise SystemExit(f"--checkpoint: {item!r}; give LABEL=PATH of an existing checkpoint")
        checkpoints[label] = Path(path).resolve()
    torch.set_num_threads(args.threads)
    bundle = load_data("fashion-mnist", args.resolution, seed=0)
    loader = DataLoader(stratified_subset(bundle.val, args.images, seed=0), batch_size=250)
    results = {label: score_checkpoint(path, loader, args.networks, args.seed) for label, path in checkpoints.items()}
    record = {"split": "val", "images": args.images, "resolution": args.resolution,
              "networks": f"{args.networks} random depths and block types at the largest widths (seed {args.seed})",
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(record, indent=2) + "\n")
    for label, result in results.items():
        print(f"{label}: largest {result['largest']:.3f}  random depth mean {result['random_depth']['mean']:.3f} "
              f"(min {result['random_depth']['min']:.3f})")


if __name__ == "__main__":
    main()
