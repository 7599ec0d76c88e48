"""EfficientFormer V1 importance of MetaPaths and stages, from the trained path weights.

The paper scores a slot by its non-identity path weights against its identity weight: α4D/αI in
stages 1-2 (paths {4D, I}), (α3D + α4D)/αI in stages 3-4 ({4D, 3D, I}), and a stage by the sum
over its slots. Taken literally, both are decided by counting rather than by learning: with
untrained, uniform weights a two-path slot scores 1 and a three-path slot 2, and the sum makes the
deepest stage (18 slots in the V1 space) the most important whatever α learned. So here

- a slot's importance is the formula divided by its value under uniform weights (the number of
  non-identity paths k): `(Σ non-identity weights / identity weight) / k`, i.e. the mean
  non-identity weight over the identity weight. Uniform weights give 1 in every slot; above 1
  means training preferred keeping a block there, below 1 that it preferred identity;
- a stage's importance is the mean over its slots, so a stage is judged by how much its slots
  were preferred, not by how many it has.

Keys are `(stage, slot)` tuples in Python and `"stage.slot"` strings in JSON (checkpoints, state
files); `to_dict`/`from_dict` convert between them and nothing else does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

SlotKey = tuple[int, int]


def slot_importance(path_weights: Sequence[float]) -> float:
    """Normalised importance of one slot from its path weights (non-identity paths first, identity last)."""
    if len(path_weights) < 2:
        raise ValueError("a MetaPath has at least one block path and identity")
    *blocks, identity = (float(weight) for weight in path_weights)
    return (sum(blocks) / len(blocks)) / identity


@dataclass(frozen=True)
class MetaPathImportance:
    """V1 importance per slot (`slots[(stage, slot)]`) and per stage (`stages[stage]`), normalised
    as the module says, plus whether it was learned (`trained`: some α moved from its initial 0)."""

    slots: Mapping[SlotKey, float]
    stages: tuple[float, ...]
    trained: bool = True

    @classmethod
    def from_path_weights(cls, weights: Mapping[SlotKey, Sequence[float]], trained: bool = True) -> "MetaPathImportance":
        """From the softmax path weights of every slot (identity last)."""
        slots = {key: slot_importance(values) for key, values in sorted(weights.items())}
        count = 1 + max((stage for stage, _ in slots), default=-1)
        stages = []
        for stage in range(count):
            values = [value for (index, _), value in slots.items() if index == stage]
            stages.append(sum(values) / len(values) if values else 0.0)
        return cls(slots, tuple(stages), trained)

    def to_dict(self) -> dict[str, Any]:
        return {"slots": {f"{stage}.{slot}": value for (stage, slot), value in self.slots.items()},
                "stages": list(self.stages), "trained": self.trained,
                "normalised": "slot: mean non-identity weight / identity weight; stage: mean over its slots"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MetaPathImportance":
        try:
            slots = {}
            for key, value in data["slots"].items():
                stage, slot = key.split(".")
                slots[(int(stage), int(slot))] = float(value)
            stages = tuple(float(value) for value in data["stages"])
        except (KeyError, AttributeError, TypeError, ValueError) as error:
            raise ValueError(f"not a MetaPath importance record ({type(error).__name__})") from None
        if not all(math.isfinite(value) and value >= 0 for value in (*slots.values(), *stages)):
            raise ValueError("not a MetaPath importance record (importances must be finite and non-negative)")
        return cls(slots, stages, bool(data.get("trained", True)))

    def least_important_stage(self, candidates: Sequence[int]) -> int | None:
        """Among `candidates`, the stage of lowest importance (ties: the earlier stage)."""
        ranked = sorted(candidates, key=lambda stage: (self.stages[stage] if stage < len(self.stages) else 0.0, stage))
        return ranked[0] if ranked else None
