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
A checkpoint written for another architecture, recipe or data is refused.
"""

from __future__ import annotations

import dataclasses
import io
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from search_spaces import Architecture, build_model, count_params
from search_spaces.files import write_bytes_atomic
from supernet.data import stratified_subset
from supernet.training import accuracy, cosine_with_warmup, epoch_seed

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
        checks = {
            "epochs": isinstance(self.epochs, int) and 1 <= self.epochs <= 10_000,
            "batch_size": isinstance(self.batch_size, int) and 1 <= self.batch_size <= 65_536,
            "lr": math.isfinite(self.lr) and 0 < self.lr <= 10,
            "weight_decay": math.isfinite(self.weight_decay) and 0 <= self.weight_decay <= 10,
            "warmup_epochs": math.isfinite(self.warmup_epochs) and 0 <= self.warmup_epochs <= self.epochs,
            "label_smoothing": 0 <= self.label_smoothing < 1,
            "grad_clip": math.isfinite(self.grad_clip) and self.grad_clip > 0,
            "train_images": isinstance(self.train_images, int) and self.train_images >= 0,
            "val_images": isinstance(self.val_images, int) and self.val_images >= 0,
            "seed": isinstance(self.seed, int) and 0 <= self.seed < 2**63,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"{bad[0]}: invalid value {getattr(self, bad[0])!r}")


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


def _identity(arch: Architecture, recipe: StandaloneRecipe, data: str) -> dict[str, Any]:
    return {"arch": arch.to_dict(), "recipe": dataclasses.asdict(recipe), "data": data}


def _read(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (a truncated or foreign file is one line of bad input)
        raise ValueError(f"{path}: not a readable standalone checkpoint ({type(error).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != STANDALONE_FORMAT:
        raise ValueError(f"{path}: not a latnas standalone checkpoint (expected format {STANDALONE_FORMAT})")
    return payload


def train_standalone(arch: Architecture, bundle, recipe: StandaloneRecipe, checkpoint: str | Path,
                     progress: bool = True, label: str = "") -> StandaloneResult:
    """Train `arch` (at the bundle's resolution and class count) by `recipe`; see the module docstring."""
    arch = dataclasses.replace(arch, resolution=bundle.resolution, num_classes=bundle.num_classes)
    checkpoint = Path(checkpoint)
    identity = _identity(arch, recipe, bundle.spec)
    stored = _read(checkpoint)
    if stored is not None and stored.get("identity") != identity:
        raise ValueError(f"{checkpoint}: trained for another architecture, recipe or data; remove it or choose "
                         "another path")
    torch.manual_seed(epoch_seed(recipe.seed, 0, 10))
    model = build_model(arch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    train = stratified_subset(bundle.train, recipe.train_images)
    epoch_val = DataLoader(stratified_subset(bundle.val, recipe.val_images), batch_size=256)
    steps_per_epoch = math.ceil(len(train) / recipe.batch_size)
    total, warmup = steps_per_epoch * recipe.epochs, int(round(recipe.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_with_warmup(step, total, warmup))
    epoch, history, seconds = 0, [], 0.0
    if stored is not None:
        model.load_state_dict(stored["model"])
        optimizer.load_state_dict(stored["optimizer"])
        scheduler.load_state_dict(stored["scheduler"])
        epoch, history, seconds = int(stored["epoch"]), list(stored["history"]), float(stored["seconds"])
    while epoch < recipe.epochs:
        started = time.perf_counter()
        torch.manual_seed(epoch_seed(recipe.seed, epoch, 11))  # augmentation draws
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(epoch_seed(recipe.seed, epoch, 12)))
        loader = DataLoader(Subset(train, order.tolist()), batch_size=recipe.batch_size, shuffle=False)
        model.train()
        losses = []
        for images, labels in tqdm(loader, total=steps_per_epoch, desc=f"{label} epoch {epoch + 1}/{recipe.epochs}",
                                   disable=not progress, file=sys.stderr, leave=False):
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(images), labels, label_smoothing=recipe.label_smoothing)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        if not all(math.isfinite(value) for value in losses):
            raise FloatingPointError(f"{label or arch.space}: non-finite training loss in epoch {epoch + 1}; "
                                     f"{checkpoint} keeps the last good epoch")
        epoch += 1
        seconds += time.perf_counter() - started
        val = accuracy(model, epoch_val)
        history.append({"epoch": epoch, "loss": sum(losses) / max(len(losses), 1), "val": val})
        buffer = io.BytesIO()
        torch.save({"format": STANDALONE_FORMAT, "identity": identity, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch,
                    "history": history, "seconds": seconds}, buffer)
        write_bytes_atomic(checkpoint, buffer.getvalue())
    scores = {split: accuracy(model, DataLoader(bundle.split(split), batch_size=256))
              for split in bundle.splits if split != "train"}
    return StandaloneResult(arch, scores, count_params(arch), epoch, len(train), seconds, tuple(history))
