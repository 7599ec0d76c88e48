"""`python -m supernet.train`: train a supernet of any space on real data, resumable, on Ray if asked.

    python -m supernet.train --space efficientformer_v2 --data digits --mode sandwich --epochs 30 --out runs/v2.pt
    python -m supernet.train --space efficientformer_v1 --data digits --mode gumbel --epochs 10 --out runs/v1.pt
    python -m supernet.train ... --resume runs/v2.pt              # continue where the checkpoint stopped
    python -m supernet.train ... --ray-workers 2 [--ray-address ADDR]   # data-parallel on Ray Train

Progress goes to stderr; per-epoch metrics to `<out>.metrics.jsonl`; the checkpoint (`--out`) is
rewritten atomically after every epoch, so Ctrl-C or a kill leaves the last complete epoch usable.

Everything is checked before anything is allocated: every number against its range in
`search_spaces.limits`, `--out` and its metrics file as outputs (`check_outputs`: not a directory
or special file, a writable folder; stale temporaries of killed runs are removed), `--resume` as a
checkpoint this run may continue, `--ray-address` answering within seconds. Exit codes: 0 trained;
2 bad input, or a run that diverged (a non-finite loss or gradient: one line naming the epoch and
step; `--out` keeps the last good epoch); 130 interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from search_spaces import list_spaces
from search_spaces.cluster import check_ray_address, ray_session
from search_spaces.command_line import EXIT_OK, ArgumentParser, UsageError, integer_in, number_in, run_command
from search_spaces.files import check_outputs
from search_spaces.limits import (
    EPOCHS,
    GRAD_CLIP,
    LABEL_SMOOTHING,
    LEARNING_RATE,
    RAY_WORKERS,
    RESOLUTION,
    SEED,
    SUBNETWORKS_PER_STEP,
    TEMPERATURE,
    TRAIN_BATCH,
    WARMUP_EPOCHS,
    WEIGHT_DECAY,
)
from supernet.checkpoint import CheckpointError, checkpoint_label

if TYPE_CHECKING:
    from supernet.training import TrainConfig

PROG = "python -m supernet.train"
EPILOG = ("exit codes: 0 trained; 2 bad input or a diverged run (one line; --out keeps the last good epoch); "
          "130 interrupted")


def build_parser() -> ArgumentParser:
    from supernet.data import DATA_SPECS_HELP
    from supernet.training import BN_STATISTICS, GUMBEL_SAMPLING, STUDENT_TARGETS, SUBSET_IMAGES, TrainConfig

    parser = ArgumentParser(prog=PROG, description="Train a latnas supernet (Gumbel phase or sandwich rule).",
                            epilog=EPILOG)
    parser.add_argument("--space", required=True, help=f"search space: {', '.join(list_spaces())}")
    parser.add_argument("--data", required=True, help=DATA_SPECS_HELP)
    parser.add_argument("--mode", required=True, choices=("gumbel", "sandwich"))
    parser.add_argument("--epochs", required=True, type=integer_in(EPOCHS))
    parser.add_argument("--out", required=True, help="checkpoint file, rewritten after every epoch")
    parser.add_argument("--batch-size", type=integer_in(TRAIN_BATCH), default=64)
    parser.add_argument("--resolution", type=integer_in(RESOLUTION), default=32,
                        help="input size in px, a multiple of the space's stride (default 32)")
    parser.add_argument("--lr", type=number_in(LEARNING_RATE), default=2e-3)
    parser.add_argument("--weight-decay", type=number_in(WEIGHT_DECAY), default=0.05)
    parser.add_argument("--warmup-epochs", type=number_in(WARMUP_EPOCHS), default=1.0)
    parser.add_argument("--label-smoothing", type=number_in(LABEL_SMOOTHING), default=0.1)
    parser.add_argument("--grad-clip", type=number_in(GRAD_CLIP), default=5.0)
    parser.add_argument("--num-random", type=integer_in(SUBNETWORKS_PER_STEP), default=2,
                        help="random sub-networks per sandwich step")
    parser.add_argument("--arch-lr", type=number_in(LEARNING_RATE), default=3e-3, help="learning rate of α (gumbel)")
    parser.add_argument("--tau-start", type=number_in(TEMPERATURE), default=5.0)
    parser.add_argument("--tau-end", type=number_in(TEMPERATURE), default=0.5)
    parser.add_argument(
        "--gumbel-sampling",
        choices=GUMBEL_SAMPLING,
        default=TrainConfig.gumbel_sampling,
        help="gumbel: hard (default; one sampled path per slot and step, so the weights are trained as the "
        "sub-networks a search scores) or soft (every path mixed, as in the EfficientFormer V1 paper)",
    )
    parser.add_argument(
        "--bn-statistics",
        choices=BN_STATISTICS,
        default=TrainConfig.bn_statistics,
        help="sandwich members that update BN running statistics: all (default; random sub-networks evaluate "
        "without recalibration) or ends (largest and smallest only; others need recalibrate_bn)",
    )
    parser.add_argument(
        "--student-target",
        choices=STUDENT_TARGETS,
        default=TrainConfig.student_target,
        help="what the sandwich's smaller members learn: the largest network's soft predictions (default; "
        "in-place distillation), the labels, or half of each",
    )
    parser.add_argument("--train-images", type=integer_in(SUBSET_IMAGES), default=0,
                        help="train on a fixed stratified subset of N training images (default 0: all)")
    parser.add_argument("--val-images", type=integer_in(SUBSET_IMAGES), default=0,
                        help="validate each epoch on a fixed stratified subset of N val images (default 0: all)")
    parser.add_argument("--seed", type=integer_in(SEED), default=0)
    parser.add_argument("--resume", help="continue from this checkpoint (usually the same as --out)")
    parser.add_argument("--ray-workers", type=integer_in(RAY_WORKERS), help="data-parallel training on N Ray Train workers")
    parser.add_argument("--ray-address", help="address of a running Ray cluster, with --ray-workers (default: start "
                        "one locally)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def config_from_args(args) -> "TrainConfig":
    """The `TrainConfig` of parsed arguments; a setting it refuses is a `UsageError` naming the option."""
    from supernet.training import TrainConfig

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
            gumbel_sampling=args.gumbel_sampling,
            bn_statistics=args.bn_statistics,
            student_target=args.student_target,
            seed=args.seed,
            train_images=args.train_images,
            val_images=args.val_images,
        )
    except ValueError as error:
        field, _, reason = str(error).partition(":")
        raise UsageError(f"--{field.replace('_', '-')}:{reason}") from None


def train_locally(config: "TrainConfig", out: Path, resume: Path | None, progress: bool,
                  resume_payload: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train in this process; `resume_payload` is `resume`'s payload when the caller has read it already."""
    from supernet.data import load_data
    from supernet.supernet import read_checkpoint
    from supernet.training import Trainer

    bundle = load_data(config.data, config.resolution, config.seed)
    trainer = Trainer(config, bundle, out, progress=progress)
    if resume is not None:
        payload = resume_payload if resume_payload is not None else read_checkpoint(resume, "--resume")
        trainer.restore(payload, resume, "--resume")
    trainer.run()
    return _summary(trainer)


def _summary(trainer) -> dict[str, Any]:
    summary: dict[str, Any] = {"checkpoint": str(trainer.out), "epochs": trainer.epoch,
                               "last": trainer.history[-1] if trainer.history else None}
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

    try:  # every report copies the folder into Ray's storage, so the worker's own copy goes at the end
        bundle = load_data(config.data, config.resolution, config.seed)
        trainer = Trainer(config, bundle, out, distributed=distributed, progress=False, checkpoint_hook=publish)
        resume = loop_config.get("resume")
        if resume:
            trainer.load(Path(resume), "--resume")
        previous = ray.train.get_checkpoint()  # Ray restarted a failed group: continue from its last report
        if previous is not None:
            with previous.as_directory() as directory:
                trainer.load(Path(directory) / "supernet.pt")
        trainer.run()
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


def _worker_error(error: BaseException) -> BaseException | None:
    """The bad-input error (`TrainingDiverged`, `CheckpointError`, `DataError`) a Ray Train worker
    raised, found in the chain of what `TorchTrainer.fit` raised (Ray wraps it at least twice)."""
    from supernet.data import DataError
    from supernet.training import TrainingDiverged

    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        original = getattr(current, "cause", None)  # a RayTaskError keeps the worker's exception here
        if isinstance(original, (TrainingDiverged, CheckpointError, DataError)):
            return original
        pending.extend([original if isinstance(original, BaseException) else None, current.__cause__, current.__context__])
    return None


def train_on_ray(config: "TrainConfig", out: Path, resume: Path | None, workers: int, address: str | None) -> dict[str, Any]:
    """Data-parallel training on Ray Train (TorchTrainer; gloo on CPU). A Ray started here is shut
    down on leaving (`search_spaces.cluster.ray_session`); a worker's bad-input error is re-raised."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from search_spaces.files import write_bytes_atomic
    from supernet.training import TrainingDiverged

    with ray_session(address, "--ray-address", num_cpus=max(workers, 1)):
        storage = Path(tempfile.mkdtemp(prefix="latnas-ray-"))
        try:
            trainer = TorchTrainer(
                _ray_worker_loop,
                train_loop_config={"config": dataclasses.asdict(config), "resume": str(resume) if resume else None},
                torch_config=TorchConfig(backend="gloo"),
                scaling_config=ScalingConfig(num_workers=workers, use_gpu=False),
                run_config=RunConfig(name="latnas-supernet", storage_path=str(storage)),
            )
            try:
                result = trainer.fit()
            except Exception as error:  # noqa: BLE001  (Ray wraps a worker's error; ours become one line)
                cause = _worker_error(error)
                if cause is None:
                    raise
                if isinstance(cause, TrainingDiverged):  # it names the worker's own copy of the checkpoint
                    cause = TrainingDiverged(cause.where, cause.reason, cause.lr, f"{out} was left as it was")
                raise cause from None
            if result.checkpoint is None:
                raise RuntimeError("Ray Train finished without a checkpoint")
            with result.checkpoint.as_directory() as directory:
                write_bytes_atomic(out, (Path(directory) / "supernet.pt").read_bytes())
        finally:
            shutil.rmtree(storage, ignore_errors=True)
        metrics = dict(result.metrics or {})
        return {"checkpoint": str(out), "epochs": metrics.get("epoch"), "last": metrics, "ray_workers": workers}


def main(argv: Sequence[str] | None = None) -> int:
    from supernet.data import DataError, load_data
    from supernet.supernet import read_checkpoint
    from supernet.training import TrainingDiverged, check_resumable, metrics_path

    args = build_parser().parse_args(argv)
    if args.ray_address and not args.ray_workers:
        raise UsageError("--ray-address: needs --ray-workers N (without it training runs in this process)")
    config = config_from_args(args)
    out = Path(args.out)
    check_outputs({"--out": out, "metrics file": metrics_path(out)})
    resume = Path(args.resume) if args.resume else None
    payload = None
    if resume is not None:  # read and checked before any data is loaded or supernet built
        payload = read_checkpoint(resume, "--resume")
        check_resumable(payload, config, checkpoint_label(resume, "--resume"))
    if args.ray_address:
        check_ray_address(args.ray_address, "--ray-address")
    try:
        if args.ray_workers:  # the workers read the data and --resume themselves
            load_data(config.data, config.resolution, config.seed)  # a bad spec is one line here, not in a worker
            summary = train_on_ray(config, out, resume, args.ray_workers, args.ray_address)
        else:
            summary = train_locally(config, out, resume, progress=not args.quiet, resume_payload=payload)
    except (DataError, CheckpointError, TrainingDiverged) as error:
        raise UsageError(str(error)) from None
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; {out} holds the last complete epoch (resume with --resume {out})", file=sys.stderr)
        return 130
    print(json.dumps(summary, indent=2, default=str))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_command(main, prog=PROG))
