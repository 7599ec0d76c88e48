"""Training one architecture on its own, from scratch: the yardstick a supernet's ranking is checked against.

One-shot NAS trusts that a sub-network's accuracy inside the shared weights ranks architectures
the way training each of them alone would. `train_standalone(arch, bundle, recipe, checkpoint)`
trains the static network `search_spaces.build_model(arch)` with one fixed `StandaloneRecipe`
(AdamW, linear warm-up then cosine decay, label smoothing, gradient clipping: the supernet
trainer's own schedule, so the two are trained alike) and returns a `StandaloneResult` with its
accuracy on every split the data has.

Resumable: the checkpoint (weights, optimizer, scheduler, epoch, history, recipe, architecture)
is rewritten atomically after every epoch, and every random stream (initialisation, data order)
is derived from (seed, epoch), so a run killed at any point resumes where its last epoch ended
and ends bit for bit where an uninterrupted run would; a finished checkpoint is reused as it is.
A checkpoint written for another architecture, recipe or data is refused, and so is one that
fails the checks of `supernet.checkpoint` (a regular file within the size cap, loaded with
`weights_only=True`, its content digest, finite tensors; a checkpoint written before the digest
existed is accepted when finite). A step whose loss or gradients are not finite raises
`TrainingDiverged` before the weights move; the checkpoint keeps the last good epoch.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from search_spaces import Architecture, build_model, count_params
from search_spaces.limits import (
    EPOCHS,
    GRAD_CLIP,
    LABEL_SMOOTHING,
    LEARNING_RATE,
    SEED,
    TRAIN_BATCH,
    WARMUP_EPOCHS,
    WEIGHT_DECAY,
    FloatRange,
    IntRange,
)
from supernet.checkpoint import CheckpointError, content_digest, load_checkpoint, write_checkpoint
from supernet.data import stratified_subset
from supernet.training import SUBSET_IMAGES, TrainingDiverged, accuracy, check_settings, cosine_with_warmup, epoch_seed

STANDALONE_FORMAT = "latnas/standalone@1"


@dataclass(frozen=True)
class StandaloneRecipe:
    """How every standalone network of a study is trained (the same for all, so only the
    architecture differs). `train_images` > 0 trains on a fixed stratified subset of the train
    split of that size (`stratified_subset`), 0 on all of it; `val_images` likewise for the
    per-epoch validation in the history (the final accuracies are on the whole val and test)."""

    epochs: int = 3
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 0.3
    label_smoothing: float = 0.1
    grad_clip: float = 5.0
    train_images: int = 0
    val_images: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        """Every field within its documented range (`search_spaces.limits`); warm-up at most `epochs`."""
        check_settings(self, _RECIPE_RANGES)
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs: must be at most epochs ({self.epochs}), got {self.warmup_epochs:g}")


_RECIPE_RANGES: dict[str, IntRange | FloatRange] = {
    "epochs": EPOCHS,
    "batch_size": TRAIN_BATCH,
    "lr": LEARNING_RATE,
    "weight_decay": WEIGHT_DECAY,
    "warmup_epochs": WARMUP_EPOCHS,
    "label_smoothing": LABEL_SMOOTHING,
    "grad_clip": GRAD_CLIP,
    "train_images": SUBSET_IMAGES,
    "val_images": SUBSET_IMAGES,
    "seed": SEED,
}


@dataclass(frozen=True)
class StandaloneResult:
    """A trained network's accuracy (fraction correct) per split, with its cost and history."""

    arch: Architecture
    accuracy: Mapping[str, float]
    params: int
    epochs: int
    train_images: int
    seconds: float
    history: tuple[Mapping[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": dict(self.accuracy), "params": self.params, "epochs": self.epochs,
                "train_images": self.train_images, "seconds": round(self.seconds, 1), "history": list(self.history),
                "arch": self.arch.to_dict()}


def _identity(arch: Architecture, recipe: StandaloneRecipe, data: str, initial: str | None = None) -> dict[str, Any]:
    """What a checkpoint was trained for; `initial` (the digest of given starting weights) only when
    there were any, so a from-scratch checkpoint's identity is the same as before the option existed."""
    identity = {"arch": arch.to_dict(), "recipe": dataclasses.asdict(recipe), "data": data}
    return identity if initial is None else {**identity, "initial_weights_sha256": initial}


# What a standalone checkpoint holds besides `format` and `identity`, and the type of each entry.
_STATE = {"model": dict, "optimizer": dict, "scheduler": dict, "epoch": int, "history": list, "seconds": float}


def _read(path: Path, epochs: int) -> dict[str, Any] | None:
    """The checked payload of the checkpoint at `path`, or None when there is no file there."""
    if not os.path.lexists(path):
        return None
    payload = load_checkpoint(path, STANDALONE_FORMAT, "standalone")
    for key, kind in _STATE.items():
        if not isinstance(payload.get(key), kind) or isinstance(payload.get(key), bool):
            raise CheckpointError(f"{path}: not a latnas standalone checkpoint (no valid {key!r})")
    if payload["epoch"] not in IntRange(0, epochs):
        raise CheckpointError(f"{path}: trained for {payload['epoch']} epochs, not 0..{epochs}")
    return payload


def train_standalone(arch: Architecture, bundle, recipe: StandaloneRecipe, checkpoint: str | Path,
                     progress: bool = True, label: str = "", device: str | torch.device = "cpu",
                     initial_weights: Mapping[str, torch.Tensor] | None = None,
                     splits: Sequence[str] | None = None) -> StandaloneResult:
    """Train `arch` (at the bundle's resolution and class count) by `recipe` on `device`; see the
    module docstring. The device is where, not what: it is not part of the checkpoint's identity.

    `initial_weights` (a state dict of `build_model(arch)`, e.g. `Supernet.extract(arch).state_dict()`)
    starts the training from those weights instead of a fresh initialisation: inherited weights
    fine-tuned; their digest is part of the checkpoint's identity. `splits` names the splits the
    result's accuracy is measured on (default: every split but train; `()` for none, when the
    per-epoch validation in the history is all a caller reads)."""
    arch = dataclasses.replace(arch, resolution=bundle.resolution, num_classes=bundle.num_classes)
    checkpoint = Path(checkpoint)
    splits = tuple(split for split in bundle.splits if split != "train") if splits is None else tuple(splits)
    unknown = sorted(set(splits) - set(bundle.splits))
    if unknown:
        raise ValueError(f"splits: {unknown} not in the data's splits {list(bundle.splits)}")
    identity = _identity(arch, recipe, bundle.spec, None if initial_weights is None else content_digest(dict(initial_weights)))
    stored = _read(checkpoint, recipe.epochs)
    if stored is not None and stored.get("identity") != identity:
        raise CheckpointError(f"{checkpoint}: trained for another architecture, recipe or data; remove it or choose "
                              "another path")
    torch.manual_seed(epoch_seed(recipe.seed, 0, 10))
    device = torch.device(device)
    model = build_model(arch).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    train = stratified_subset(bundle.train, recipe.train_images)
    epoch_val = DataLoader(stratified_subset(bundle.val, recipe.val_images), batch_size=256)
    steps_per_epoch = math.ceil(len(train) / recipe.batch_size)
    total, warmup = steps_per_epoch * recipe.epochs, int(round(recipe.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_with_warmup(step, total, warmup))
    epoch, history, seconds = 0, [], 0.0
    if stored is None and initial_weights is not None:
        try:
            model.load_state_dict(initial_weights)
        except (RuntimeError, KeyError, TypeError) as error:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(f"initial_weights: do not fit this network ({first[:200]})") from None
    if stored is not None:
        try:
            model.load_state_dict(stored["model"])
            optimizer.load_state_dict(stored["optimizer"])
            scheduler.load_state_dict(stored["scheduler"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise CheckpointError(f"{checkpoint}: does not fit this network ({first[:200]})") from None
        epoch, history, seconds = stored["epoch"], list(stored["history"]), stored["seconds"]
    while epoch < recipe.epochs:
        started = time.perf_counter()
        torch.manual_seed(epoch_seed(recipe.seed, epoch, 11))  # augmentation draws
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(epoch_seed(recipe.seed, epoch, 12)))
        loader = DataLoader(Subset(train, order.tolist()), batch_size=recipe.batch_size, shuffle=False)
        model.train()
        losses = []
        kept = f"{checkpoint} keeps epoch {epoch}" if epoch else f"{checkpoint} was not written"
        for step, (images, labels) in enumerate(tqdm(loader, total=steps_per_epoch, disable=not progress,
                                                     desc=f"{label} epoch {epoch + 1}/{recipe.epochs}",
                                                     file=sys.stderr, leave=False)):
            optimizer.zero_grad(set_to_none=True)
            images, labels = images.to(device), labels.to(device)
            loss = F.cross_entropy(model(images), labels, label_smoothing=recipe.label_smoothing)
            loss.backward()
            gradient_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip))
            value = float(loss.detach())
            if not (math.isfinite(value) and math.isfinite(gradient_norm)):  # before the weights move
                reason = f"the loss is {value}" if not math.isfinite(value) else "the gradients are not finite"
                raise TrainingDiverged(f"{label + ' ' if label else ''}in epoch {epoch + 1}, step {step + 1}", reason,
                                       recipe.lr, kept)
            optimizer.step()
            scheduler.step()
            losses.append(value)
        epoch += 1
        seconds += time.perf_counter() - started
        val = accuracy(model, epoch_val)
        history.append({"epoch": epoch, "loss": sum(losses) / max(len(losses), 1), "val": val})
        write_checkpoint(checkpoint, {"format": STANDALONE_FORMAT, "identity": identity, "model": model.state_dict(),
                                      "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                      "epoch": epoch, "history": history, "seconds": seconds})
    scores = {split: accuracy(model, DataLoader(bundle.split(split), batch_size=256)) for split in splits}
    return StandaloneResult(arch, scores, count_params(arch), epoch, len(train), seconds, tuple(history))
