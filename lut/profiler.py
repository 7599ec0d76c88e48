"""Timing one layer or one network on a device: warm-up, interleaved runs, percentiles.

The profiler never knows which runtime it drives. A device turns a torch module and an input shape
into a `Runnable` (one call = one inference), and an input shape alone into the *empty* runnable:
a model that does nothing but take that input and return a tensor of the same shape. Every number
the profiler records is `time(subject) - median(time(empty))`, measured interleaved (subject,
empty, subject, empty, ...) so that a load change on a shared machine hits both alike. Subtracting
the empty call removes the fixed cost of one runtime call (argument checks, input binding, output
allocation and hand-back), which a network pays once but a naive per-layer sum would pay per layer.

The clock is injectable (`clock=`), which is how the tests check that per-layer numbers add up to
the network's without relying on real timings.
"""

from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

import numpy as np

from search_spaces.limits import FloatRange, IntRange

from lut.table import LatencyRecord

if TYPE_CHECKING:
    from torch import nn

    from search_spaces import Architecture, LayerSpec

Clock = Callable[[], float]  # seconds, monotonic
Runnable = Callable[[], object]  # one inference on a fixed, pre-made input


class RuntimeBackend(Protocol):
    """What a measuring device gives the profiler: runnables for a module and for the empty model."""

    def load(self, module: "nn.Module", input_shape: tuple[int, ...]) -> Runnable: ...

    def load_empty(self, input_shape: tuple[int, ...]) -> Runnable: ...


#: untimed calls before timing a subject (--warmup): 0 is allowed, 10,000 warms anything up
WARMUP_RUNS = IntRange(0, 10_000)
#: seconds of timed calls per subject (--budget): a minute per layer would take a day per table
BUDGET_S = FloatRange(0.0, 60.0)


@dataclass(frozen=True)
class TimingSettings:
    """How long to measure one subject.

    `warmup` untimed calls first (first calls allocate arenas, fault pages in and let the runtime
    pick kernels); then interleaved timed calls until both `min_runs` are done and `budget_s` of
    subject time is spent, but never more than `max_runs`. The defaults keep a full
    efficientformer_v2 table (866 specs) under 10 minutes on one core while giving every layer at
    least 25 timed calls; re-measured on this (loaded) host, undisturbed records moved by up to ~6%.
    """

    warmup: int = 10
    min_runs: int = 25
    max_runs: int = 400
    budget_s: float = 0.25
    # Disturbed windows: another process taking the core shows up as a median far above the 10th
    # percentile (undisturbed layers here had p50/p10 of 1.01-1.08; under contention we saw 3x). Such a
    # window is measured again, up to `retries` times, and the one with the lowest median is kept.
    max_spread: float = 0.15
    retries: int = 3

    def to_dict(self) -> dict[str, float]:
        return {
            "warmup": self.warmup,
            "min_runs": self.min_runs,
            "max_runs": self.max_runs,
            "budget_s": self.budget_s,
            "max_spread": self.max_spread,
            "retries": self.retries,
        }


def summarize(samples_ms: Sequence[float]) -> LatencyRecord:
    """Percentiles, mean and standard deviation of timed runs, in milliseconds."""
    values = np.asarray(samples_ms, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no timed runs to summarize")
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    return LatencyRecord(
        p50_ms=float(p50),
        p10_ms=float(p10),
        p90_ms=float(p90),
        mean_ms=float(values.mean()),
        std_ms=float(values.std()),
        runs=int(values.size),
    )


def time_interleaved(
    subject: Runnable, empty: Runnable, settings: TimingSettings, clock: Clock = time.perf_counter
) -> tuple[list[float], list[float]]:
    """Warm both up, then alternate timed calls; returns (subject_ms, empty_ms) per run."""
    for _ in range(settings.warmup):
        subject()
        empty()
    subject_ms: list[float] = []
    empty_ms: list[float] = []
    spent = 0.0
    while len(subject_ms) < settings.max_runs and (len(subject_ms) < settings.min_runs or spent < settings.budget_s):
        start = clock()
        subject()
        middle = clock()
        empty()
        end = clock()
        subject_ms.append((middle - start) * 1e3)
        empty_ms.append((end - middle) * 1e3)
        spent += middle - start
    return subject_ms, empty_ms


def net_record(subject_ms: Sequence[float], empty_ms: Sequence[float]) -> LatencyRecord:
    """The subject's runs less the median empty call, floored at zero (a layer cannot take < 0 ms)."""
    overhead = float(np.median(empty_ms))
    return summarize([max(value - overhead, 0.0) for value in subject_ms])


def export_onnx(module: "nn.Module", input_shape: tuple[int, ...]) -> bytes:
    """The ONNX model of `module` in eval mode for a fixed input shape (TorchScript exporter),
    with the BatchNorm folds onnxruntime does not make itself (`lut.onnx_fusion`)."""
    import onnx
    import torch

    from lut.onnx_fusion import fold_batch_norms_into_pointwise_convs

    module = module.eval()
    example = torch.randn(*input_shape, generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # shape checks inside forward (e.g. the attention-bias grid) are constant for a fixed input
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is chosen on purpose
        # opset 17: LayerNormalization is a single op (from 17), which onnxruntime runs fused.
        torch.onnx.export(
            module,
            (example,),
            buffer,
            input_names=["input"],
            output_names=["output"],
            opset_version=17,
            dynamo=False,
        )
    model = onnx.load_from_string(buffer.getvalue())
    if not fold_batch_norms_into_pointwise_convs(model):
        return buffer.getvalue()
    return model.SerializeToString()


def empty_onnx(input_shape: tuple[int, ...]) -> bytes:
    """An ONNX model that returns its input (one Identity node): the cost of a call doing nothing."""
    import onnx
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info("input", TensorProto.FLOAT, list(input_shape))
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, list(input_shape))
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "empty", [value], [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime >= 1.14
    onnx.checker.check_model(model)
    return model.SerializeToString()


def network_under_test(arch: "Architecture", batch: int) -> tuple["nn.Module", tuple[int, ...]]:
    """The network every end-to-end measurement of `arch` times (built from seed 0, in eval mode)
    and its image input shape at `batch`."""
    import torch

    from search_spaces import build_model

    torch.manual_seed(0)
    return build_model(arch).eval(), (batch, 3, arch.resolution, arch.resolution)


class Profiler:
    """Measures specs and whole networks on one backend with one set of timing settings.

    Contract: `profile_spec(spec)` builds the static module of `spec` with `search_spaces.build_layer`
    (random init, eval mode), loads it on the backend and returns the net latency record
    (subject minus the empty call of the same input shape). `profile_network(arch)` does the same
    for `build_model(arch)` with the image input, so the two are directly comparable.
    """

    def __init__(
        self, backend: RuntimeBackend, batch: int = 1, settings: TimingSettings | None = None, clock: Clock = time.perf_counter
    ) -> None:
        self.backend = backend
        self.batch = batch
        self.settings = settings or TimingSettings()
        self.clock = clock

    def profile_module(self, module: "nn.Module", input_shape: tuple[int, ...]) -> LatencyRecord:
        return self.profile_runnable(self.backend.load(module, input_shape), input_shape)

    def profile_runnable(self, subject: Runnable, input_shape: tuple[int, ...]) -> LatencyRecord:
        """The net latency of an already loaded model (e.g. an exported ONNX file) taking `input_shape`."""
        empty = self.backend.load_empty(input_shape)
        best = net_record(*time_interleaved(subject, empty, self.settings, self.clock))
        for _ in range(self.settings.retries):
            if best.p50_ms <= best.p10_ms * (1 + self.settings.max_spread):
                break
            again = net_record(*time_interleaved(subject, empty, self.settings, self.clock))
            best = min(best, again, key=lambda record: record.p50_ms)
        return best

    def profile_spec(self, spec: "LayerSpec") -> LatencyRecord:
        import torch

        from search_spaces import build_layer

        torch.manual_seed(0)
        return self.profile_module(build_layer(spec), spec.input_shape(self.batch))

    def profile_network(self, arch: "Architecture") -> LatencyRecord:
        return self.profile_module(*network_under_test(arch, self.batch))

