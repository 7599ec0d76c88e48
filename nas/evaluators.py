"""Evaluators: a score per architecture (higher is better), cached per architecture.

- `SupernetEvaluator`: top-1 accuracy (%) of the sub-network run inside a trained supernet on
  held-out data (`supernet.training.evaluate`), optionally after BN recalibration.
- `nas.synflow.SynFlowEvaluator`: the training-free proxy (SynFlow saliency a sub-network keeps),
  used when no supernet is given; the output then says `evaluator: proxy`.
"""

from __future__ import annotations

import collections
import itertools
from typing import Any, Protocol

import torch

from search_spaces import Architecture


class Evaluator(Protocol):
    """What the search strategies ask of a scorer: `score` (cached per architecture) and its settings."""

    name: str
    evaluations: int

    def score(self, arch: Architecture) -> float:
        """Higher is better (accuracy in % for `supernet`, arbitrary units for `proxy`)."""

    def settings(self) -> dict[str, Any]:
        """Name and settings for the output's provenance."""


class SupernetEvaluator:
    """Top-1 accuracy (%) of `arch` inside a trained supernet on held-out data.

    The first `max_batches` batches of `loader` (all when None) are read once and kept, so every
    architecture is scored on the same images without re-reading them. `recalibrate` > 0
    re-estimates the sub-network's BN statistics on that many batches of `calibration_loader`
    (training data; default `loader`) before evaluating.

    Without recalibration, the activations after the stem and after each stage are cached by the
    architecture prefix that produced them (stage i's output depends on stages 0..i only, and the
    supernet in eval mode is deterministic): a greedy step's candidates differ from each other in
    one place, so most of them re-run only the stages from that place on. `prefix_cache` bounds
    how many prefixes are kept (each holds one activation tensor per batch).
    """

    name = "supernet"

    def __init__(self, net, loader, max_batches: int | None = None, recalibrate: int = 0,
                 calibration_loader=None, prefix_cache: int = 256) -> None:
        self.net = net
        self._prefixes: collections.OrderedDict[tuple, list[torch.Tensor]] = collections.OrderedDict()
        self.prefix_cache = prefix_cache
        self.batches = list(itertools.islice(loader, max_batches))
        if not self.batches:
            raise ValueError("the evaluation data has no batches")
        self.max_batches = max_batches
        self.recalibrate = recalibrate
        self.calibration_loader = calibration_loader if calibration_loader is not None else loader
        self._cache: dict[Architecture, float] = {}
        self.evaluations = 0

    def score(self, arch: Architecture) -> float:
        value = self._cache.get(arch)
        if value is None:
            self.evaluations += 1
            value = self._evaluate(self.net.fit(arch))
            self._cache[arch] = value
        return value

    def _evaluate(self, arch: Architecture) -> float:
        from supernet.training import accuracy, evaluate, recalibrate_bn

        if self.recalibrate:
            model = recalibrate_bn(self.net, arch, self.calibration_loader, self.recalibrate)
            return 100.0 * float(accuracy(model, self.batches))
        if not self.prefix_cache:
            return 100.0 * float(evaluate(self.net, arch, self.batches))
        return self._evaluate_by_stage(arch)

    def _evaluate_by_stage(self, arch: Architecture) -> float:
        net = self.net
        was_training = net.training
        net.set_arch(arch)
        net.eval()
        try:
            with torch.no_grad():
                key: tuple = ("stem", arch.stages[0].width)
                outputs = self._prefix(key, lambda: [net.stem(images) for images, _ in self.batches])
                for index, stage in enumerate(net.stages):
                    previous = outputs
                    key = (*key, arch.stages[index])
                    outputs = self._prefix(key, lambda stage=stage, previous=previous: [stage(x) for x in previous])
                correct = sum(int((net.head(x).argmax(1) == labels).sum()) for x, (_, labels) in zip(outputs, self.batches))
        finally:
            net.train(was_training)
        return 100.0 * (correct / sum(len(labels) for _, labels in self.batches))  # as `evaluate` rounds

    def _prefix(self, key: tuple, compute) -> list[torch.Tensor]:
        cached = self._prefixes.get(key)
        if cached is None:
            cached = compute()
            self._prefixes[key] = cached
            if len(self._prefixes) > self.prefix_cache:
                self._prefixes.popitem(last=False)
        else:
            self._prefixes.move_to_end(key)
        return cached

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "recalibrate_batches": self.recalibrate, "images": sum(len(y) for _, y in self.batches)}
