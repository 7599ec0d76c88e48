"""Search objectives: how the greedy controller ranks candidate actions.

An `Objective` turns one candidate step (accuracy change, latency and params before and after)
into a ratio "accuracy lost per unit of objective gained"; the controller takes the action with
the smallest ratio. Two are built in (see ../shared/REFERENCE.md, "EfficientFormer search"):

- `LatencyObjective` (EfficientFormer V1): accuracy drop per millisecond saved.
- `MESObjective` (EfficientFormerV2): accuracy drop per MES gained, with
  MES = 100 · (params / U_size)^(−α_size) · (latency / U_lat)^(−α_lat).

Other objectives (energy, memory) implement the same protocol.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

# A step that gains nothing on the objective is never preferred to one that does.
NO_GAIN = math.inf


def mes(params: float, latency_ms: float, u_size: float = 3e6, u_lat: float = 1.0,
        alpha_size: float = 0.5, alpha_lat: float = 1.0) -> float:
    """MES = 100 · (params/U_size)^(−α_size) · (latency/U_lat)^(−α_lat) (EfficientFormerV2)."""
    if params <= 0 or latency_ms <= 0:
        raise ValueError("params and latency must be positive")
    return 100.0 * (params / u_size) ** (-alpha_size) * (latency_ms / u_lat) ** (-alpha_lat)


@dataclass(frozen=True)
class MobileEfficiencyScore:
    """The MES of EfficientFormerV2 with its four constants: units U_size (parameters) and U_lat
    (ms) and exponents α_size and α_lat; the defaults are the paper's (3 M, 1 ms, 0.5, 1.0).

    One instance is the definition a whole search reports (every step, the result, evolution's
    tie-break) and, for the `mes` objective, what it ranks by.
    """

    u_size: float = 3e6
    u_lat: float = 1.0
    alpha_size: float = 0.5
    alpha_lat: float = 1.0

    def __post_init__(self) -> None:
        for name in ("u_size", "u_lat"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: {value!r} is not a positive number")
        for name in ("alpha_size", "alpha_lat"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 10):
                raise ValueError(f"{name}: {value!r} is not a number between 0 and 10")

    def __call__(self, params: float, latency_ms: float) -> float:
        return mes(params, latency_ms, self.u_size, self.u_lat, self.alpha_size, self.alpha_lat)

    def settings(self) -> dict[str, Any]:
        return {"u_size": self.u_size, "u_lat_ms": self.u_lat, "alpha_size": self.alpha_size,
                "alpha_lat": self.alpha_lat}


class Objective(Protocol):
    name: str

    def gain(self, latency_before: float, params_before: int, latency_after: float, params_after: int) -> float:
        """How much the step improves the objective (positive = better)."""

    def ratio(self, accuracy_drop: float, gain: float) -> float:
        """Accuracy lost per unit gained; smaller is better, `NO_GAIN` when nothing is gained."""

    def settings(self) -> dict[str, Any]:
        """The objective's name and settings, for the output's provenance."""


def _ratio(accuracy_drop: float, gain: float) -> float:
    if not gain > 0:
        return NO_GAIN
    return accuracy_drop / gain


@dataclass(frozen=True)
class LatencyObjective:
    """EfficientFormer V1: the action with the smallest accuracy drop per ms saved."""

    name: str = "latency"

    def gain(self, latency_before: float, params_before: int, latency_after: float, params_after: int) -> float:
        return latency_before - latency_after

    def ratio(self, accuracy_drop: float, gain: float) -> float:
        return _ratio(accuracy_drop, gain)

    def settings(self) -> dict[str, Any]:
        return {"name": self.name}


@dataclass(frozen=True)
class MESObjective:
    """EfficientFormerV2: the action with the smallest accuracy drop per MES gained (`definition`)."""

    definition: MobileEfficiencyScore = MobileEfficiencyScore()
    name: str = "mes"

    def score(self, params: int, latency_ms: float) -> float:
        return self.definition(params, latency_ms)

    def gain(self, latency_before: float, params_before: int, latency_after: float, params_after: int) -> float:
        return self.score(params_after, latency_after) - self.score(params_before, latency_before)

    def ratio(self, accuracy_drop: float, gain: float) -> float:
        return _ratio(accuracy_drop, gain)

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, **self.definition.settings()}


OBJECTIVES = {"latency": LatencyObjective, "mes": MESObjective}


def get_objective(name: str, definition: MobileEfficiencyScore | None = None) -> Objective:
    """The objective called `name`; `mes` ranks by `definition` (the paper's constants by default)."""
    if name not in OBJECTIVES:
        raise KeyError(f"unknown objective {name!r}; choose from {', '.join(sorted(OBJECTIVES))}")
    if name == "mes":
        return MESObjective(definition or MobileEfficiencyScore())
    return LatencyObjective()
