"""Evaluators: a score per architecture (higher is better), cached per architecture.

- `SupernetEvaluator`: top-1 accuracy (%) of the sub-network run inside a trained supernet on
  held-out data (`supernet.training.evaluate`), optionally after BN recalibration.
- `ProxyEvaluator`: a training-free, data-free score, used when no supernet is given (the output
  says `evaluator: proxy`).

Which proxy, and why. Zero-cost proxy studies (Abdelfattah et al., "Zero-Cost Proxies for
Lightweight NAS", ICLR 2021; Ning et al., "Evaluating Efficient Performance Estimators of Neural
Architectures", NeurIPS 2021) find that parameter/FLOP counts are strong, hard-to-beat baselines,
and SynFlow (Tanaka et al. 2020) — the best data-free proxy there — reduces, for a network with
all-ones weights, to a per-layer sum that grows with each layer's parameter mass. We use the
per-layer, log-compressed form of that signal:

    score(arch) = Σ over the architecture's layer specs of log(1 + params(spec))

It is computed analytically from the specs' shapes (`search_spaces.layer_cost`, cached per spec),
so it costs microseconds, needs no weights or data, and is deterministic. The log makes each layer
count with diminishing returns in its width, so removing a whole layer (depth) costs more than
trimming every layer a little (width/expansion), in line with the papers' observation that
depth matters for accuracy. It is a ranking heuristic, not an accuracy: its units are arbitrary
and only differences between candidates of one step are used.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from search_spaces import Architecture, LayerSpec, SearchSpace, layer_cost


class Evaluator(Protocol):
    name: str

    def score(self, arch: Architecture) -> float:
        """Higher is better (accuracy in % for `supernet`, arbitrary units for `proxy`)."""

    def settings(self) -> dict[str, Any]:
        """Name and settings for the output's provenance."""


class ProxyEvaluator:
    """Σ log(1 + params) over layer specs (see the module docstring)."""

    name = "proxy"

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self._cache: dict[Architecture, float] = {}
        self._spec_cache: dict[LayerSpec, float] = {}
        self.evaluations = 0

    def _spec_score(self, spec: LayerSpec) -> float:
        value = self._spec_cache.get(spec)
        if value is None:
            value = math.log1p(layer_cost(spec).params)
            self._spec_cache[spec] = value
        return value

    def score(self, arch: Architecture) -> float:
        value = self._cache.get(arch)
        if value is None:
            self.evaluations += 1
            value = sum(self._spec_score(spec) for spec in self.space.layer_specs(arch))
            self._cache[arch] = value
        return value

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "proxy": "sum_log1p_layer_params"}


class SupernetEvaluator:
    """Top-1 accuracy (%) of `arch` inside a trained supernet on held-out data.

    `loader` yields (images, labels) batches; `recalibrate` > 0 re-estimates BN statistics on that
    many batches of `calibration_loader` (default: `loader`) before evaluating.
    """

    name = "supernet"

    def __init__(self, net, loader, max_batches: int | None = None, recalibrate: int = 0,
                 calibration_loader=None) -> None:
        self.net = net
        self.loader = loader
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
        from supernet.training import evaluate, recalibrate_bn

        if self.recalibrate:
            import torch

            model = recalibrate_bn(self.net, arch, self.calibration_loader, self.recalibrate)
            model.eval()
            correct = total = 0
            with torch.no_grad():
                for index, (images, labels) in enumerate(self.loader):
                    if self.max_batches is not None and index >= self.max_batches:
                        break
                    correct += int((model(images).argmax(1) == labels).sum())
                    total += int(labels.numel())
            return 100.0 * correct / max(total, 1)
        return 100.0 * float(evaluate(self.net, arch, self.loader, self.max_batches))

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "recalibrate_batches": self.recalibrate, "max_batches": self.max_batches}
