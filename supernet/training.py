"""Training a supernet: the Gumbel phase of EfficientFormer (V1) and the sandwich rule of V2.

`--mode gumbel` trains the weights and the MetaPath logits α together (α with its own optimizer),
drawing paths with Gumbel-softmax at a temperature annealed from `tau_start` to `tau_end`: one
sampled path per slot and step by default, or the paper's mixture of every path (`gumbel_sampling`,
`GUMBEL_SAMPLING` says why hard is the default); at the end the importance of every slot and stage
is reported. `--mode sandwich` trains, at every step,
the largest, the smallest and `num_random` random sub-networks, the others learning what
`student_target` says (by default distilled in place from the largest's soft predictions);
gradients accumulate and one optimizer step follows.
`bn_statistics` says which of them update BatchNorm running statistics (see `TrainConfig`).

Reproducibility: every random stream (data order, random sub-networks, Gumbel noise) is reseeded
at the start of each epoch from (seed, epoch), so a run resumed from an epoch checkpoint replays
exactly what an uninterrupted run would have done. Checkpoints are written atomically at the end
of every epoch, with the content digest of `supernet.checkpoint`.

Divergence: a step whose loss or gradients are not finite raises `TrainingDiverged` before the
optimizer moves the weights, and weights that stop being finite are never saved, so the checkpoint
keeps the last good epoch. `TrainConfig` refuses settings outside `search_spaces.limits` (a weight
decay of inf, a resolution of 100000) before anything is built.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from search_spaces import Architecture, get_space, list_spaces
from search_spaces.files import write_text_atomic
from search_spaces.limits import (
    EPOCHS,
    GRAD_CLIP,
    IMAGES,
    LABEL_SMOOTHING,
    LEARNING_RATE,
    RECALIBRATION_BATCHES,
    RESOLUTION,
    SEED,
    SUBNETWORKS_PER_STEP,
    TEMPERATURE,
    TRAIN_BATCH,
    WARMUP_EPOCHS,
    WEIGHT_DECAY,
    FloatRange,
    IntRange,
)
from search_spaces.network import Network
from supernet.checkpoint import CheckpointError, checkpoint_label, non_finite_tensor, shown
from supernet.data import stratified_subset
from supernet.supernet import Supernet, read_checkpoint

MODES = ("gumbel", "sandwich")
#: how the Gumbel phase runs a MetaPath: "hard" (the default) samples one path per slot and step and
#: runs only it, α's gradient passing straight through (GDAS); "soft" mixes every path with
#: Gumbel-softmax weights, as the EfficientFormer V1 paper trains its supernet. Only "hard" trains
#: the weights as the fixed sub-networks a search scores: a soft mixture scales each block's
#: residual by its path weight, so a sub-network that runs its blocks alone is off the distribution
#: its weights learned. Measured on the V1 space at 64 px after one epoch of 10,000 Fashion-MNIST
#: images: the largest network scores 22.8% (soft) against 64.0% (hard) on 500 val images, ten
#: random-depth networks 26.3% against 65.0% (experiments/search_fashion/cpu_v1/gumbel_sampling.json);
#: hard also steps 2.5x faster (one path per slot runs, not all of them).
GUMBEL_SAMPLING = ("hard", "soft")
#: settings whose default changed after checkpoints without them were written: what those runs did
#: (a resumed run must continue with the settings it started with)
_PREDATED_SETTINGS = {"gumbel_sampling": "soft"}
BN_STATISTICS = ("all", "ends")
#: what the sandwich's students learn: the largest network's soft predictions (in-place
#: distillation, BigNAS/OFA), the labels (each sub-network trained as if alone), or half of each
STUDENT_TARGETS = ("teacher", "labels", "mixed")
SUBSET_IMAGES = IntRange(0, IMAGES.high)  # a fixed subset of a split; 0 means the whole split


class TrainingDiverged(FloatingPointError):
    """A training step whose loss, gradients or resulting weights are not finite. The message is one
    line: `where` it happened (epoch and step), the `reason`, a lower learning rate than `lr` to try,
    and what the checkpoint still holds (`kept`; nothing non-finite is ever written)."""

    def __init__(self, where: str, reason: str, lr: float, kept: str) -> None:
        self.where, self.reason, self.lr, self.kept = where, reason, lr, kept
        super().__init__(f"training diverged {where}: {reason}; try a lower learning rate (lr {lr:g}); {kept}")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (Ray sends a worker's exception to the driver)
        return type(self), (self.where, self.reason, self.lr, self.kept)


def check_settings(settings: object, ranges: Mapping[str, IntRange | FloatRange | tuple[str, ...]]) -> None:
    """`ValueError("field: must be ..., got ...")` for the first field of `settings` outside its
    range: an `IntRange`, a `FloatRange` (finite numbers) or a tuple of accepted strings."""
    for field, allowed in ranges.items():
        value = getattr(settings, field)
        if isinstance(allowed, tuple):
            if not isinstance(value, str) or value not in allowed:
                raise ValueError(f"{field}: must be one of {', '.join(allowed)}, got {shown(value)}")
        elif value not in allowed:
            raise ValueError(f"{field}: must be {allowed.describe()}, got {shown(value)}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run; saved in every checkpoint."""

    space: str
    data: str
    mode: str
    epochs: int
    batch_size: int = 64
    resolution: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    grad_clip: float = 5.0
    num_random: int = 2
    arch_lr: float = 3e-3
    tau_start: float = 5.0  # V1 / FBNet-style: start near-uniform mixing...
    tau_end: float = 0.5  # ...and end close to one-hot, so α's preference shows in the loss
    gumbel_sampling: str = "hard"  # `GUMBEL_SAMPLING`
    val_random: int = 3  # random sub-networks evaluated each epoch (their mean is logged)
    # which sandwich members update BatchNorm running statistics: "all" (random sub-networks too;
    # their shared statistics then serve any sub-network without recalibration) or "ends" (only the
    # largest and the smallest: exact statistics for those two, recalibration for everything else)
    bn_statistics: str = "all"
    recalibration_batches: int = 10  # with "ends": BN recalibration of each random sub-network before validation
    # what the smallest and the random sub-networks learn (`STUDENT_TARGETS`): "teacher" is the V2
    # sandwich's in-place distillation, whose teacher is itself weak early in a short run
    student_target: str = "teacher"
    seed: int = 0
    # a fixed stratified subset of the train split (0: all of it), and of val for the per-epoch
    # validation (0: all); studies on 2 CPU cores cannot afford 50000 images at 64 px per epoch
    train_images: int = 0
    val_images: int = 0

    def __post_init__(self) -> None:
        """Every field within its documented range (`search_spaces.limits`), before anything is built."""
        if not isinstance(self.space, str) or self.space not in list_spaces():
            raise ValueError(f"space: unknown space {shown(self.space)}; known spaces: {', '.join(list_spaces())}")
        if not isinstance(self.data, str) or not self.data.strip():
            raise ValueError(f"data: expected a data spec, got {shown(self.data)}")
        check_settings(self, _TRAIN_RANGES)
        multiple = get_space(self.space).resolution_multiple
        if self.resolution % multiple:
            raise ValueError(f"resolution: must be a multiple of {multiple} for {self.space}, got {self.resolution}")
        if self.tau_end > self.tau_start:
            raise ValueError(f"tau_end: must be at most tau_start ({self.tau_start:g}), got {self.tau_end:g}")


_TRAIN_RANGES: dict[str, IntRange | FloatRange | tuple[str, ...]] = {
    "mode": MODES,
    "epochs": EPOCHS,
    "batch_size": TRAIN_BATCH,
    "resolution": RESOLUTION,
    "lr": LEARNING_RATE,
    "weight_decay": WEIGHT_DECAY,
    "warmup_epochs": WARMUP_EPOCHS,
    "label_smoothing": LABEL_SMOOTHING,
    "grad_clip": GRAD_CLIP,
    "num_random": SUBNETWORKS_PER_STEP,
    "arch_lr": LEARNING_RATE,
    "tau_start": TEMPERATURE,
    "tau_end": TEMPERATURE,
    "gumbel_sampling": GUMBEL_SAMPLING,
    "val_random": SUBNETWORKS_PER_STEP,
    "bn_statistics": BN_STATISTICS,
    "student_target": STUDENT_TARGETS,
    "recalibration_batches": RECALIBRATION_BATCHES,
    "seed": SEED,
    "train_images": SUBSET_IMAGES,
    "val_images": SUBSET_IMAGES,
}


def metrics_path(out: str | Path) -> Path:
    """Where a run writing checkpoint `out` writes its per-epoch metrics: `<out>.metrics.jsonl`."""
    out = Path(out)
    return out.with_name(out.name + ".metrics.jsonl")


# The training state a checkpoint must carry to be resumed, and the type of each entry.
_TRAINING_STATE = {"config": dict, "epoch": int, "step": int, "optimizer": dict, "scheduler": dict,
                   "torch_rng": torch.Tensor, "history": list}


def check_resumable(payload: Mapping[str, Any], config: TrainConfig, label: str) -> dict[str, Any]:
    """The training state of a supernet checkpoint payload (`read_checkpoint`) that a run of `config`
    may continue, or `CheckpointError` naming `label` (the file): a payload without training state,
    one of another space or resolution, trained with other settings (any field but `epochs`; a
    field the checkpoint predates reads as what runs did before it existed: its default, or
    `_PREDATED_SETTINGS`), for more epochs than `config` asks, or whose state is malformed."""
    extra = payload.get("extra") or {}
    training = extra.get("training") if isinstance(extra, dict) else None
    if training is None:
        raise CheckpointError(f"{label}: a supernet without training state; cannot resume from it")
    if not isinstance(training, dict):
        raise CheckpointError(f"{label}: its training state is not a mapping")
    for key, kind in _TRAINING_STATE.items():
        if not isinstance(training.get(key), kind) or isinstance(training.get(key), bool):
            raise CheckpointError(f"{label}: its training state lacks a valid {key!r}")
    if training.get("arch_optimizer") is not None and not isinstance(training["arch_optimizer"], dict):
        raise CheckpointError(f"{label}: its training state lacks a valid 'arch_optimizer'")
    if training["torch_rng"].dtype != torch.uint8:
        raise CheckpointError(f"{label}: its training state lacks a valid 'torch_rng'")
    if (payload["space"], payload["resolution"]) != (config.space, config.resolution):
        raise CheckpointError(f"{label}: holds a supernet of {payload['space']} at {payload['resolution']} px; this run "
                              f"trains {config.space} at {config.resolution} px")
    saved = training["config"]
    mine = dataclasses.asdict(config)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)} | _PREDATED_SETTINGS
    different = [k for k in mine if k != "epochs" and saved.get(k, defaults[k]) != mine[k]]
    if different:
        key = different[0]
        raise CheckpointError(f"{label}: trained with {key}={shown(saved.get(key, defaults[key]))}, this run has "
                              f"{key}={mine[key]!r}")
    epoch, step = training["epoch"], training["step"]
    if epoch not in IntRange(0, config.epochs) or step < 0:
        raise CheckpointError(f"{label}: trained for {shown(epoch)} epochs ({shown(step)} steps); this run asks "
                              f"for {config.epochs} epochs")
    return training


@contextlib.contextmanager
def frozen_bn_statistics(model: nn.Module) -> Iterator[None]:
    """Train-mode BatchNorms normalise with batch statistics but leave their running averages alone.

    Random sub-networks of a sandwich step share switchable BNs (by width) with the largest and the
    smallest; letting them update the running statistics would average over many networks and
    fit none (the smallest lost ~20 points of digits accuracy that way). Their statistics come
    from `recalibrate_bn` instead, as for any architecture not trained directly.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for norm in norms:
        norm.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for norm, momentum in zip(norms, saved):
            norm.momentum = momentum


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """A distinct, reproducible seed per (run seed, epoch, random stream)."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


def cosine_with_warmup(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate factor: linear warm-up to 1, then cosine decay to 0."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def accuracy(model: nn.Module, loader: Iterable, max_batches: int | None = None) -> float:
    """Top-1 accuracy of `model` (eval mode, no gradients) over `loader`, run where the model's
    weights are (each batch is moved there)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    with torch.no_grad():
        for index, (images, labels) in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            correct += int((model(images.to(device)).argmax(1) == labels.to(device)).sum())
            total += len(labels)
    model.train(was_training)
    return correct / max(total, 1)


def evaluate(supernet: Supernet, arch: Architecture, loader: Iterable, max_batches: int | None = None) -> float:
    """Top-1 accuracy of sub-network `arch` run inside `supernet` (its switchable BN statistics).

    Activates `arch` (that is what evaluating it means) and leaves it active; no weight changes.
    """
    supernet.set_arch(supernet.fit(arch))
    return accuracy(supernet, loader, max_batches)


def recalibrate_bn(supernet: Supernet, arch: Architecture, loader: Iterable, batches: int) -> Network:
    """A static copy of `arch` whose BatchNorm statistics are re-estimated on `batches` batches.

    For architectures whose statistics were never trained directly (a random sub-network shares
    BNs by width with networks of other depths). The supernet is not touched: the statistics are
    computed on the extracted network, as exact averages over the batches (momentum None).
    """
    return recalibrated_network(supernet, arch, [images for _, (images, _) in zip(range(batches), loader)])


def recalibrated_network(supernet: Supernet, arch: Architecture, images: list[torch.Tensor]) -> Network:
    """`recalibrate_bn` on given image batches (no labels): a static copy of `arch` whose BatchNorm
    statistics are exact averages over `images`, in eval mode."""
    network = supernet.extract(supernet.fit(arch))
    recalibrated_outputs(network, [batch.to(supernet.device) for batch in images], [])
    return network.eval()


def recalibrated_outputs(module: nn.Module, calibration: list[torch.Tensor], inputs: list[torch.Tensor]
                         ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Re-estimate `module`'s BatchNorm statistics on the `calibration` inputs (exact averages, in
    train mode), then run `inputs` in eval mode; no gradients. Returns both sets of outputs: the
    train-mode outputs of the calibration inputs are what a following module's statistics are
    estimated on, so a network recalibrated module by module (stem, each stage, head) gets the
    statistics `recalibrate_bn` gives the whole network. Leaves `module` in eval mode."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over every batch seen
    module.train()
    with torch.no_grad():
        calibrated = [module(x) for x in calibration]
        for norm in norms:
            norm.momentum = 0.1
        module.eval()
        outputs = [module(x) for x in inputs]
    return calibrated, outputs


@dataclass
class EpochMetrics:
    """One line of `<out>.metrics.jsonl`: training loss/accuracy and validation accuracies of an epoch."""

    epoch: int
    loss: float
    train_accuracy: float
    val_largest: float
    val_smallest: float
    val_random: float
    lr: float
    tau: float | None
    seconds: float
    images_per_second: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Distributed:
    """How a trainer talks to its peers: nothing on one process; gradient averaging on several."""

    world_size = 1
    rank = 0

    def average_gradients(self, parameters: list[nn.Parameter]) -> None:
        """Make every process hold the mean gradient (no-op on one process)."""

    def shard(self, indices: list[int]) -> list[int]:
        return indices

    def sum(self, values: list[float]) -> list[float]:
        return values


class TorchDistributed(Distributed):
    """torch.distributed (gloo on CPU, nccl on GPU) under an initialised process group.

    Gradients are all-reduced explicitly rather than through DDP: every process activates the same
    sub-networks (same seeds), and explicit averaging has no trouble with the parameters that the
    active sub-network does not use.
    """

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.world_size = dist.get_world_size()
        self.rank = dist.get_rank()

    def average_gradients(self, parameters: list[nn.Parameter]) -> None:
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def shard(self, indices: list[int]) -> list[int]:
        return indices[self.rank :: self.world_size]

    def sum(self, values: list[float]) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64)
        self.dist.all_reduce(tensor)
        return tensor.tolist()


class Trainer:
    """Trains one supernet by `config`, resumable from its own checkpoints.

    `run()` trains the remaining epochs, writing `out` (atomic) and `<out>.metrics.jsonl` after
    each on rank 0; `device` is where the supernet trains ("cpu", "cuda", ...: not part of the
    config, so a run resumes on another device; each batch is moved there); `checkpoint_hook(path_or_None, epoch)` is called on every rank after each
    epoch (the path on rank 0 only) so a launcher (Ray Train) can report it.
    """

    def __init__(
        self,
        config: TrainConfig,
        bundle,
        out: Path,
        distributed: Distributed | None = None,
        progress: bool = True,
        checkpoint_hook: Callable[[Path | None, int], None] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.config, self.bundle, self.out = config, bundle, Path(out)
        self.device = torch.device(device)
        self.train_set = stratified_subset(bundle.train, config.train_images, seed=config.seed)
        self.val_set = stratified_subset(bundle.val, config.val_images, seed=config.seed)
        self.distributed = distributed or Distributed()
        self.progress = progress and self.distributed.rank == 0
        self.checkpoint_hook = checkpoint_hook
        torch.manual_seed(config.seed)
        self.supernet = Supernet.from_space(config.space, num_classes=bundle.num_classes, resolution=config.resolution)
        self.supernet.to(self.device)
        self.space = self.supernet.space
        self.largest = self.supernet.fit(self.space.largest())
        self.smallest = self.supernet.fit(self.space.smallest())
        self.optimizer = torch.optim.AdamW(self.supernet.weight_parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.arch_optimizer = (
            torch.optim.Adam(self.supernet.arch_parameters(), lr=config.arch_lr, betas=(0.5, 0.999))
            if config.mode == "gumbel"
            else None
        )
        self.steps_per_epoch = math.ceil(len(self._shard_indices(0)) / config.batch_size)
        total = self.steps_per_epoch * config.epochs
        warmup = int(round(config.warmup_epochs * self.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: cosine_with_warmup(step, total, warmup)
        )
        self.epoch = 0  # epochs completed
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.saved_epoch: int | None = None  # the epoch `out` holds, once this trainer wrote it

    # -- data ---------------------------------------------------------------------------------
    def _shard_indices(self, epoch: int) -> list[int]:
        order = torch.randperm(len(self.train_set), generator=torch.Generator().manual_seed(epoch_seed(self.config.seed, epoch, 0)))
        return self.distributed.shard(order.tolist())

    def _train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices = self._shard_indices(epoch)
        dataset = torch.utils.data.Subset(self.train_set, indices)
        return iter(DataLoader(dataset, batch_size=self.config.batch_size, shuffle=False))

    def val_loader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=max(self.config.batch_size, 128), shuffle=False)

    # -- one step -----------------------------------------------------------------------------
    def tau(self) -> float:
        """Exponential annealing from tau_start to tau_end over the run, per step."""
        total = max(1, self.steps_per_epoch * self.config.epochs - 1)
        ratio = self.config.tau_end / self.config.tau_start
        return self.config.tau_start * ratio ** (min(self.step, total) / total)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, label_smoothing=self.config.label_smoothing)

    def _student_loss(self, logits: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """A sandwich student's loss: soft cross-entropy with the teacher's probabilities (in-place
        distillation), the labels' loss, or the mean of the two (`TrainConfig.student_target`)."""
        target = self.config.student_target
        if target == "labels":
            return self._loss(logits, labels)
        distilled = -(teacher * F.log_softmax(logits, dim=1)).sum(1).mean()
        return distilled if target == "teacher" else 0.5 * (distilled + self._loss(logits, labels))

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator) -> tuple[float, float]:
        """One optimizer step; returns (loss of the largest / mixed network, its batch accuracy)."""
        net, config = self.supernet, self.config
        net.train()
        self.optimizer.zero_grad(set_to_none=True)
        if self.arch_optimizer is not None:
            self.arch_optimizer.zero_grad(set_to_none=True)
            mode = "gumbel" if config.gumbel_sampling == "soft" else "gumbel_hard"
            net.set_mode(mode, tau=self.tau())
            logits = net(images)
            loss = self._loss(logits, labels)
            loss.backward()
            main_loss, main_logits = loss, logits
        else:
            net.set_arch(self.largest)
            main_logits = net(images)
            main_loss = self._loss(main_logits, labels)
            main_loss.backward()
            teacher = F.softmax(main_logits.detach(), dim=1)
            students = [self.smallest] + [net.fit(self.space.sample(rng)) for _ in range(config.num_random)]
            for index, arch in enumerate(students):
                net.set_arch(arch)
                frozen = index and config.bn_statistics == "ends"  # index 0 is the smallest
                with frozen_bn_statistics(net) if frozen else contextlib.nullcontext():
                    logits = net(images)
                self._student_loss(logits, teacher, labels).backward()
        parameters = net.weight_parameters()
        self.distributed.average_gradients(parameters + net.arch_parameters())
        gradient_norm = float(torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip))
        loss = float(main_loss.detach())
        # Checked after averaging, so every rank of a distributed run sees the same gradients and stops
        # at the same step; before the optimizer steps, so the weights stay those of the last good step.
        arch_finite = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in net.arch_parameters())
        if not math.isfinite(loss):
            raise self._diverged(f"the loss is {loss}")
        if not (math.isfinite(gradient_norm) and arch_finite):
            raise self._diverged("the gradients are not finite")
        self.optimizer.step()
        if self.arch_optimizer is not None:
            self.arch_optimizer.step()
        self.scheduler.step()
        self.step += 1
        correct = float((main_logits.argmax(1) == labels).float().mean())
        return loss, correct

    def _diverged(self, reason: str) -> TrainingDiverged:
        in_epoch = self.step - self.epoch * self.steps_per_epoch
        kept = (f"{self.out} keeps epoch {self.saved_epoch}" if self.saved_epoch is not None
                else f"{self.out} was not written")
        where = f"in epoch {self.epoch + 1}, step {in_epoch + 1} (step {self.step + 1} of the run)"
        return TrainingDiverged(where, reason, self.config.lr, kept)

    # -- epochs -------------------------------------------------------------------------------
    def _reseed(self, epoch: int) -> np.random.Generator:
        torch.manual_seed(epoch_seed(self.config.seed, epoch, 1))  # Gumbel noise, any dropout
        return np.random.default_rng(epoch_seed(self.config.seed, epoch, 2))  # random sub-networks

    def validate(self, epoch: int) -> tuple[float, float, float]:
        net = self.supernet
        mode = net.mode
        net.set_mode("fixed")
        loader = self.val_loader()
        largest = evaluate(net, self.largest, loader)
        smallest = evaluate(net, self.smallest, loader)
        rng = np.random.default_rng(epoch_seed(self.config.seed, epoch, 3))
        calibration = DataLoader(self.train_set, batch_size=self.config.batch_size, shuffle=False)
        randoms = []
        for _ in range(self.config.val_random):
            arch = net.fit(self.space.sample(rng))
            if self.config.bn_statistics == "ends":  # their running statistics were never trained
                randoms.append(accuracy(recalibrate_bn(net, arch, calibration, self.config.recalibration_batches), loader))
            else:
                randoms.append(evaluate(net, arch, loader))
        net.set_mode(mode)
        net.set_arch(self.largest)
        return largest, smallest, (sum(randoms) / len(randoms)) if randoms else float("nan")

    def run(self, stop_after_steps: int | None = None) -> list[dict[str, Any]]:
        """Train the remaining epochs. `stop_after_steps` simulates a crash (tests)."""
        config = self.config
        self.supernet.set_arch(self.largest)
        while self.epoch < config.epochs:
            epoch = self.epoch
            rng = self._reseed(epoch)
            started = time.perf_counter()
            losses, accuracies, seen = [], [], 0
            bar = tqdm(
                self._train_batches(epoch),
                total=self.steps_per_epoch,
                desc=f"{config.mode} epoch {epoch + 1}/{config.epochs}",
                disable=not self.progress,
                file=sys.stderr,
                leave=False,
            )
            for images, labels in bar:
                if stop_after_steps is not None and self.step >= stop_after_steps:
                    raise KeyboardInterrupt("simulated interruption")
                loss, acc = self.train_step(images.to(self.device), labels.to(self.device), rng)
                losses.append(loss)
                accuracies.append(acc)
                seen += len(labels)
                bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.2f}")
            seconds = time.perf_counter() - started
            totals = self.distributed.sum([sum(losses), sum(accuracies), len(losses), seen])
            largest, smallest, random_mean = self.validate(epoch)
            metrics = EpochMetrics(
                epoch=epoch + 1,
                loss=totals[0] / max(totals[2], 1),
                train_accuracy=totals[1] / max(totals[2], 1),
                val_largest=largest,
                val_smallest=smallest,
                val_random=random_mean,
                lr=self.scheduler.get_last_lr()[0],
                tau=self.tau() if config.mode == "gumbel" else None,
                seconds=seconds,
                images_per_second=totals[3] / seconds,
            )
            self.epoch += 1
            self.history.append(metrics.to_dict())
            written = None
            if self.distributed.rank == 0:
                self.save(self.out)
                self._append_metrics(metrics.to_dict())
                written = self.out
            if self.checkpoint_hook is not None:  # every rank: Ray Train wants a report from each worker
                self.checkpoint_hook(written, self.epoch)
            if self.progress:
                    print(
                        f"epoch {metrics.epoch}: loss {metrics.loss:.3f}  val largest {largest:.3f}  "
                        f"smallest {smallest:.3f}  random {random_mean:.3f}  {metrics.images_per_second:.0f} img/s",
                        file=sys.stderr,
                    )
        return self.history

    def importance(self) -> dict[str, Any]:
        return self.supernet.importance().to_dict()

    # -- checkpoints --------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return metrics_path(self.out)

    def _append_metrics(self, record: dict[str, Any]) -> None:
        lines = [json.dumps(entry, sort_keys=True) for entry in self.history]
        write_text_atomic(self.metrics_path, "\n".join(lines) + "\n")  # rewritten whole: a resume never duplicates

    def save(self, path: Path) -> None:
        """Write the supernet with the whole training state to `path` (atomic, digested). Weights that
        are no longer finite raise `TrainingDiverged` instead, leaving `path` as it was."""
        bad = non_finite_tensor(self.supernet.state_dict())
        if bad is not None:
            raise TrainingDiverged(f"in epoch {self.epoch}", f"{bad} is not finite after the epoch's last step",
                                   self.config.lr, f"{path} was left as it was")
        extra = {
            "training": {
                "config": dataclasses.asdict(self.config),
                "epoch": self.epoch,
                "step": self.step,
                "optimizer": self.optimizer.state_dict(),
                "arch_optimizer": None if self.arch_optimizer is None else self.arch_optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "history": self.history,
                "data": self.bundle.describe(),
            }
        }
        if self.config.mode == "gumbel":
            extra["importance"] = self.supernet.importance().to_dict()
        self.supernet.save(path, extra=extra)
        if Path(path) == self.out:
            self.saved_epoch = self.epoch

    def load(self, path: Path, option: str = "") -> None:
        """Continue from checkpoint `path` (written by a run of the same config; `check_resumable`)."""
        self.restore(read_checkpoint(path, option), path, option)

    def restore(self, payload: Mapping[str, Any], path: Path, option: str = "") -> None:
        """Continue from the payload of checkpoint `path`, already read (`read_checkpoint`)."""
        label = checkpoint_label(path, option)
        training = check_resumable(payload, self.config, label)
        if payload["num_classes"] != self.bundle.num_classes:
            raise CheckpointError(f"{label}: a supernet of {payload['num_classes']} classes; the data "
                                  f"{self.bundle.spec} has {self.bundle.num_classes}")
        try:
            self.supernet.load_state_dict(payload["state_dict"])
            self.optimizer.load_state_dict(training["optimizer"])
            if self.arch_optimizer is not None and training.get("arch_optimizer") is not None:
                self.arch_optimizer.load_state_dict(training["arch_optimizer"])
            self.scheduler.load_state_dict(training["scheduler"])
            torch.set_rng_state(training["torch_rng"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise CheckpointError(f"{label}: does not fit this run ({first[:200]})") from None
        self.epoch, self.step, self.history = training["epoch"], training["step"], list(training["history"])
        if os.path.realpath(path) == os.path.realpath(self.out):  # resuming in place: `out` holds this epoch
            self.saved_epoch = self.epoch
