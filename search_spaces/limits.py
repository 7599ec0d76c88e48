"""The documented range of every size and count a latnas input may name.

Each command checks its options and every loaded field against these before it allocates
anything, so an absurd value (a resolution of 100000, 10^11 classes, a seed of 10^23) is one
line naming the field, not minutes of allocation or an overflow deep inside numpy. The ranges are
generous for the mission (mobile backbones at 224-256 px, ImageNet-size label sets) and are part
of the command-line contract in DESIGN.md; the README lists them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class IntRange:
    """An inclusive integer range with the name users see in messages."""

    low: int
    high: int
    unit: str = ""

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high

    def describe(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"an integer in {self.low}..{self.high}{unit}"


@dataclass(frozen=True)
class FloatRange:
    """A finite float range; `low_open` excludes `low` itself (e.g. a learning rate > 0)."""

    low: float
    high: float
    low_open: bool = False

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
        value = float(value)
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high  # nan fails both comparisons

    def describe(self) -> str:
        return f"a number in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"


SEED = IntRange(0, 2**32 - 1)  # numpy's Generator and torch both take it
RESOLUTION = IntRange(16, 1024, "px")  # the references run at 224-256; 1024 is 16x their pixels
NUM_CLASSES = IntRange(1, 100_000)  # ImageNet-21k has 21,843
EXPORT_BATCH = IntRange(1, 256)
TRAIN_BATCH = IntRange(1, 4096)
EPOCHS = IntRange(1, 10_000)
IMAGES = IntRange(1, 10_000_000)  # a synthetic data set or a train/val subset
EVALUATION_BUDGET = IntRange(1, 1_000_000)
SAMPLES = IntRange(1, 100_000)  # networks drawn by search_spaces sample, lut.validate, lut.build --calibrate
RECALIBRATION_BATCHES = IntRange(0, 10_000)
EVALUATION_BATCHES = IntRange(1, 10_000)
STEPS_PAST_TARGET = IntRange(0, 1000, "steps")  # greedy steps walked on past the target
SHORTLIST = IntRange(1, 1000)  # candidates a screening greedy step scores fully (a step has ~10-100)
SHORTLIST_EXTRA = IntRange(0, 1000)  # more candidates a greedy step may score fully when its shortlist disappoints
TIMING_RUNS = IntRange(1, 100_000)
RAY_WORKERS = IntRange(1, 1024)
VERIFY_ROUNDS = IntRange(1, 20)
LEARNING_RATE = FloatRange(0.0, 10.0, low_open=True)
WEIGHT_DECAY = FloatRange(0.0, 10.0)
GRAD_CLIP = FloatRange(0.0, 1e6, low_open=True)
FRACTION = FloatRange(0.0, 1.0)
TEMPERATURE = FloatRange(0.0, 1e3, low_open=True)
WARMUP_EPOCHS = FloatRange(0.0, float(EPOCHS.high))
LABEL_SMOOTHING = FloatRange(0.0, 0.99)  # 1 would make every target uniform: nothing left to learn
SUBNETWORKS_PER_STEP = IntRange(0, 64)  # random sub-networks per sandwich step or per validation
LATENCY_MS = FloatRange(0.0, 1e6, low_open=True)  # a target or a unit: up to 1000 s


def thread_range() -> IntRange:
    """Measurement threads: at most this machine's cores (more measures contention, not the device)."""
    return IntRange(1, max(1, os.cpu_count() or 1))


# Input files: refused beyond these sizes before they are read.
MAX_ARCHITECTURE_BYTES = 1 << 20
MAX_TABLE_BYTES = 256 << 20
MAX_CSV_BYTES = 64 << 20
MAX_CSV_FIELD = 65_536  # characters in one CSV field
MAX_STATE_BYTES = 512 << 20
MAX_ONNX_BYTES = 2 << 30  # protobuf's own limit
MAX_CHECKPOINT_BYTES = 16 << 30
MAX_NESTING = 64  # depth of a YAML/JSON document; latnas' own files use at most 6
