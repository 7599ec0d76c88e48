"""`python -m supernet.train`: train a supernet of any space on real data, resumable, on Ray if asked.

    python -m supernet.train --space efficientformer_v2 --data digits --mode sandwich --epochs 30 --out runs/v2.pt
    python -m supernet.train --space efficientformer_v1 --data digits --mode gumbel --epochs 10 --out runs/v1.pt
    python -m supernet.train ... --resume runs/v2.pt              # continue where the checkpoint stopped
    python -m supernet.train ... --ray-workers 2 [--ray-address ADDR]   # data-parallel on Ray Train

Progress goes to stderr; per-epoch metrics to `<out>.metrics.jsonl`; the checkpoint (`--out`) is
rewritten atomically after every epoch, so Ctrl-C leaves the last complete epoch usable.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from search_spaces import list_spaces
from search_spaces.command_line import (
    EXIT_OK,
    ArgumentParser,
    UsageError,
    non_negative_int,
    positive_float,
    positive_int,
    run_command,
)
from supernet.supernet import CheckpointError

if TYPE_CHECKING:
    from supernet.training import TrainConfig

PROG = "python -m supernet.train"




def build_parser() -> ArgumentParser:
    from supernet.data import DATA_SPECS_HELP

    parser = ArgumentParser(prog=PROG, description="Train a latnas supernet (Gumbel phase or sandwich rule).")
    parser.add_argument("--space", required=True, help=f"search space: {', '.join(list_spaces())}")
    parser.add_argument("--data", required=True, help=DATA_SPECS_HELP)
    parser.add_argument("--mode", required=True, choices=("gumbel", "sandwich"))
    parser.add_argument("--epochs", required=True, type=positive_int)
    parser.add_argument("--out", required=True, help="checkpoint file, rewritten after every epoch")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--resolution", type=positive_int, default=32)
    parser.add_argument("--lr", type=positive_float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--grad-clip", type=positive_float, default=5.0)
    parser.add_argument("--num-random", type=non_negative_int, default=2, help="random sub-networks per sandwich step")
    parser.add_argument("--arch-lr", type=positive_float, default=3e-3, help="learning rate of α (gumbel)")
    parser.add_argument("--tau-start", type=positive_float, default=5.0)
    parser.add_argument("--tau-end", type=positive_float, default=0.5)
    parser.add_argument(
        "--bn-statistics",
        choices=("all", "ends"),
        default="all",
        help="sandwich members that update BN running statistics: all (default; random sub-networks evaluate "
        "without recalibration) or ends (largest and smallest only; others need recalibrate_bn)",
    )
    parser.add_argument("--train-images", type=non_negative_int, default=0,
                        help="train on a fixed stratified subset of N training images (default 0: all)")
    parser.add_argument("--val-images", type=non_negative_int, default=0,
                        help="validate each epoch on a fixed stratified subset of N val images (default 0: all)")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--resume", help="continue from this checkpoint (usually the same as --out)")
    parser.add_argument("--ray-workers", type=positive_int, help="data-parallel training on N Ray Train workers")
    parser.add_argument("--ray-address", help="address of a running Ray cluster (default: start one locally)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def config_from_args(args) -> "TrainConfig":
    from supernet.training import TrainConfig

    if args.space not in list_spaces():
        raise UsageError(f"--space: unknown space {args.space!r}; known: {', '.join(list_spaces())}")
    try:
        return TrainConfig(
            space=args.space,
            data=args.data,
            mode=args.mode,
            epochs=args.epochs,
            batch_size=args.batch_size,
            resolution=args.resolution,
            lr=args.lr,
            weight_decay=args.weight_decay,
            warmup_epochs=args.warmup_epochs,
            label_smoothing=args.label_smoothing,
            grad_clip=args.grad_clip,
            num_random=args.num_random,
            arch_lr=args.arch_lr,
            tau_start=args.tau_start,
            tau_end=args.tau_end,
            bn_statistics=args.bn_statistics,
            seed=args.seed,
            train_images=args.train_images,
            val_images=args.val_images,
        )
    except ValueError as error:
        raise UsageError(f"--{str(error).replace('_', '-')}") from None


def train_locally(config, out: Path, resume: Path | None, progress: bool) -> dict[str, Any]:
    from supernet.data import load_data
    from supernet.training import Trainer

    bundle = load_data(config.data, config.resolution, config.seed)
    trainer = Trainer(config, bundle, out, progress=progress)
    if resume is not None:
        trainer.load(resume)
    trainer.run()
    return _summary(trainer)


def _summary(trainer) -> dict[str, Any]:
    summary: dict[str, Any] = {"checkpoint": str(trainer.out), "epochs": trainer.epoch, "last": trainer.history[-1]}
    if trainer.config.mode == "gumbel":
        summary["importance"] = trainer.importance()
    return summary


def _ray_worker_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: the same Trainer, gradients averaged over the group."""
    import ray.train

    from supernet.data import load_data
    from supernet.training import TorchDistributed, TrainConfig, Trainer

    config = TrainConfig(**loop_config["config"])
    distributed = TorchDistributed()
    out = Path(tempfile.mkdtemp(prefix="latnas-train-")) / "supernet.pt"

    def publish(path: Path | None, epoch: int) -> None:
        from ray.train import Checkpoint

        checkpoint = Checkpoint.from_directory(str(path.parent)) if path is not None else None
        ray.train.report({"epoch": epoch, **trainer.history[-1]}, checkpoint=checkpoint)

    bundle = load_data(config.data, config.resolution, config.seed)
    trainer = Trainer(config, bundle, out, distributed=distributed, progress=False, checkpoint_hook=publish)
    resume = loop_config.get("resume")
    if resume:
        trainer.load(Path(resume))
    previous = ray.train.get_checkpoint()  # Ray restarted a failed group: continue from its last report
    if previous is not None:
        with previous.as_directory() as directory:
            trainer.load(Path(directory) / "supernet.pt")
    trainer.run()


def train_on_ray(config, out: Path, resume: Path | None, workers: int, address: str | None) -> dict[str, Any]:
    """Data-parallel training on Ray Train (TorchTrainer; gloo on CPU, nccl when GPUs are used)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False) if address else ray.init(
            num_cpus=max(workers, 1), include_dashboard=False, log_to_driver=False
        )
    try:
        storage = Path(tempfile.mkdtemp(prefix="latnas-ray-"))
        trainer = TorchTrainer(
            _ray_worker_loop,
            train_loop_config={"config": dataclasses.asdict(config), "resume": str(resume) if resume else None},
            torch_config=TorchConfig(backend="gloo"),
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=False),
            run_config=RunConfig(name="latnas-supernet", storage_path=str(storage)),
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError("Ray Train finished without a checkpoint")
        with result.checkpoint.as_directory() as directory:
            from search_spaces.files import write_bytes_atomic

            write_bytes_atomic(out, (Path(directory) / "supernet.pt").read_bytes())
        shutil.rmtree(storage, ignore_errors=True)
        metrics = dict(result.metrics or {})
        return {"checkpoint": str(out), "epochs": metrics.get("epoch"), "last": metrics, "ray_workers": workers}
    finally:
        if started_here:
            ray.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    out = Path(args.out)
    if out.exists() and out.is_dir():
        raise UsageError(f"--out: {out} is a directory; give a checkpoint file path")
    resume = Path(args.resume) if args.resume else None
    from supernet.data import DataError

    try:
        if args.ray_workers:
            summary = train_on_ray(config, out, resume, args.ray_workers, args.ray_address)
        else:
            summary = train_locally(config, out, resume, progress=not args.quiet)
    except (DataError, CheckpointError) as error:
        raise UsageError(str(error)) from None
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; {out} holds the last complete epoch (resume with --resume {out})", file=sys.stderr)
        return 130
    print(json.dumps(summary, indent=2, default=str))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_command(main, prog=PROG))
