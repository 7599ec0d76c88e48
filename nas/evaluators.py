"""Evaluators: a score per architecture (higher is better), cached per architecture.

- `SupernetEvaluator`: top-1 accuracy (%) of the sub-network run inside a trained supernet on
  held-out data (`supernet.training.evaluate`), optionally after BN recalibration.
- `nas.synflow.SynFlowEvaluator`: the training-free proxy (SynFlow saliency a sub-network keeps),
  used when no supernet is given; the output then says `evaluator: proxy`.
"""

from __future__ import annotations

import itertools
from typing import Any, Protocol

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
    """

    name = "supernet"

    def __init__(self, net, loader, max_batches: int | None = None, recalibrate: int = 0,
                 calibration_loader=None) -> None:
        self.net = net
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
        return 100.0 * float(evaluate(self.net, arch, self.batches))

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "recalibrate_batches": self.recalibrate, "images": sum(len(y) for _, y in self.batches)}
