"""Devices: named targets that price layers, either by measuring them here or by a model.

    python -m lut.devices          # list the registered devices, what each needs, whether usable here

A `Device` is registered by name (`register_device`) and made with its settings by `get_device`
(`get_device("ort-cpu", threads=1)`). Measuring devices (`measures = True`) run a real runtime on
this host: they turn a torch module into a runnable (`load`) and know the empty model of an input
shape (`load_empty`), and `profile(spec)` / `profile_network(arch)` time them through the
`Profiler`. Devices that do not measure here (issue 6: `iphone12`, an analytic model; `coreml`,
which measures only on macOS) override `profile` or `make_table` and keep the rest.

`default_table(space)` finds the table built for the device and space: `$LATNAS_TABLES/<name>`
or `~/.cache/latnas/tables/<name>` (where `lut.build` writes by default), then tables shipped in
`lut/tables/`.
"""

from __future__ import annotations

import abc
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from lut.profiler import Profiler, Runnable, TimingSettings, empty_onnx, export_onnx
from lut.table import LatencyRecord, LatencyTable, TableError, load_table

if TYPE_CHECKING:
    from torch import nn

    from search_spaces import Architecture, LayerSpec, SearchSpace


class DeviceError(RuntimeError):
    """A device that cannot be used here (missing runtime, no GPU) or is unknown; one-line message."""


@dataclass(frozen=True)
class DeviceInfo:
    """What `python -m lut.devices` shows for one device."""

    name: str
    summary: str
    needs: str
    measures: bool
    available: bool
    reason: str


class Device(abc.ABC):
    """A latency target. Contract for every device:

    `name` is its registry name and the Ray custom resource its build tasks need; `settings()` is
    the JSON-able dict that `get_device(name, **settings)` recreates it from (how Ray workers get
    it); `availability()` says whether it works here and why not; `profile(spec)` returns the
    `LatencyRecord` of one layer (measured or modelled); `metadata_fields()` the device part of a
    table's metadata; `default_table(space)` the table for this device and space, or `TableError`.
    """

    name: str = ""
    summary: str = ""
    needs: str = ""
    measures: bool = True
    precision: str = "fp32"

    def __init__(self, threads: int = 1, batch: int = 1, timing: TimingSettings | None = None) -> None:
        if threads < 1 or batch < 1:
            raise DeviceError(f"{self.name}: threads and batch must be positive, got {threads}, {batch}")
        self.threads = threads
        self.batch = batch
        self.timing = timing or TimingSettings()

    # -- identity and availability -------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        return {"threads": self.threads, "batch": self.batch, "timing": self.timing.to_dict()}

    @abc.abstractmethod
    def availability(self) -> tuple[bool, str]:
        """(usable here, why not / what it uses)."""

    def require_available(self) -> None:
        usable, reason = self.availability()
        if not usable:
            raise DeviceError(f"device {self.name!r} is not available here: {reason}")

    def runtime_versions(self) -> dict[str, str]:
        import numpy
        import torch

        return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}

    #: the `runtime_versions` components that run the timed models (whose version moves latencies)
    timed_runtime: tuple[str, ...] = ("torch",)

    def runtime_differences(self, recorded: "Mapping[str, str]") -> list[str]:
        """How this host's timing runtime differs from a table's `recorded` runtime versions, one
        phrase per component ("onnxruntime 1.20.1 in the table, 1.32.0 here"); empty when the same.
        A table measured under another version prices networks this host does not run."""
        here = self.runtime_versions()
        return [f"{name} {recorded.get(name, 'unrecorded')} in the table, {here.get(name, 'none')} here"
                for name in self.timed_runtime if recorded.get(name) != here.get(name)]

    def metadata_fields(self) -> dict[str, Any]:
        """Device-side metadata of a table: runtime versions, host, threads, precision, batch."""
        return {
            "device": self.name,
            "batch": self.batch,
            "threads": self.threads,
            "precision": self.precision,
            "runtime": self.runtime_versions(),
            "host_cpu": host_cpu(),
            "host": f"{platform.system()} {platform.release()} {platform.machine()}",
        }

    # -- measuring -----------------------------------------------------------------------------
    def load(self, module: "nn.Module", input_shape: tuple[int, ...]) -> Runnable:
        raise DeviceError(f"device {self.name!r} does not run models on this host")

    def load_empty(self, input_shape: tuple[int, ...]) -> Runnable:
        raise DeviceError(f"device {self.name!r} does not run models on this host")

    def profiler(self, clock: Callable[[], float] | None = None) -> Profiler:
        self.require_available()
        if clock is None:
            return Profiler(self, self.batch, self.timing)
        return Profiler(self, self.batch, self.timing, clock)

    def profile(self, spec: "LayerSpec") -> LatencyRecord:
        """The latency record of one layer spec on this device."""
        return self.profiler().profile_spec(spec)

    def profile_network(self, arch: "Architecture") -> LatencyRecord:
        """End-to-end latency of the whole network of `arch`, with the same settings as `profile`."""
        return self.profiler().profile_network(arch)

    def session_loader(self, module: "nn.Module", input_shape: tuple[int, ...]) -> Callable[[], Runnable]:
        """A function that loads `module` into a fresh runtime session each call; whatever the
        runtime needs made once (an export) is made here, once."""
        return lambda: self.load(module, input_shape)

    # -- tables --------------------------------------------------------------------------------
    def table_name(self, space: "SearchSpace | str", resolution: int | None = None) -> str:
        space_name = space if isinstance(space, str) else space.name
        if resolution is None:
            from search_spaces import get_space

            resolution = get_space(space_name).default_resolution
        threads = f"_t{self.threads}" if self.measures else ""
        return f"{self.name}_{space_name}_r{resolution}{threads}.json"

    def default_table_path(self, space: "SearchSpace | str", resolution: int | None = None) -> Path:
        """Where `lut.build` writes this device's table by default (the user's table folder)."""
        return tables_folder() / self.table_name(space, resolution)

    def default_table(self, space: "SearchSpace | str", resolution: int | None = None) -> LatencyTable:
        """The table built (user folder) or shipped (`lut/tables/`) for this device and space."""
        name = self.table_name(space, resolution)
        candidates = [tables_folder() / name, Path(__file__).with_name("tables") / name]
        for path in candidates:
            if path.is_file():
                return load_table(path)
        space_name = space if isinstance(space, str) else space.name
        raise TableError(
            f"no {self.name} table for {space_name} (looked for {candidates[0]} and the shipped {candidates[1].name}); "
            f"build one: python -m lut.build --device {self.name} --space {space_name}"
        )

    def __repr__(self) -> str:
        return f"<Device {self.name} threads={self.threads} batch={self.batch}>"


def tables_folder() -> Path:
    """The user's table folder: `$LATNAS_TABLES`, else `~/.cache/latnas/tables`."""
    configured = os.environ.get("LATNAS_TABLES")
    return Path(configured) if configured else Path.home() / ".cache" / "latnas" / "tables"


def host_cpu() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            for line in stream:
                if line.lower().startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical CPUs)"


def loadavg() -> str:
    """/proc/loadavg (1, 5, 15 minute load, runnable/total tasks), or '' where there is none."""
    try:
        with open("/proc/loadavg", encoding="utf-8") as stream:
            return stream.read(200).strip()
    except OSError:
        return ""


def load_1min(text: str | None = None) -> float | None:
    """The 1-minute load average of a `loadavg()` text (read now when None); None where unknown."""
    text = loadavg() if text is None else text
    try:
        return float(text.split()[0])
    except (IndexError, ValueError):
        return None


def busy_load_threshold() -> float:
    """The 1-minute load above which this host is too busy to measure on: half its cores.

    A profiler run with one thread needs a core to itself; with more runnable tasks than half the
    cores, the chance that another task shares its core during a timed call is high enough to
    inflate records (a table built at load 3.1-3.8 on 2 cores predicted 30% of held-out networks
    within 10%, against 95% on a quiet machine).
    """
    return (os.cpu_count() or 1) / 2


def wait_for_quiet(timeout_s: float, threshold: float, report: Callable[[str], Any], poll_s: float = 5.0) -> float | None:
    """Wait until the 1-minute load is at most `threshold`, for at most `timeout_s` seconds; the last
    load read (None where unknown: nothing to wait for). `report` gets one line when waiting starts."""
    current = load_1min()
    if current is None or current <= threshold:
        return current
    report(f"waiting up to {timeout_s:g} s for the 1-minute load ({current:.2f}) to fall to {threshold:g} "
           f"(half of {os.cpu_count() or 1} cores)")
    deadline = time.monotonic() + timeout_s
    while current is not None and current > threshold and time.monotonic() < deadline:
        time.sleep(max(0.0, min(poll_s, deadline - time.monotonic())))
        current = load_1min()
    return current


# -- onnxruntime ---------------------------------------------------------------------------------
class OrtCpuDevice(Device):
    """onnxruntime, CPU execution provider, fp32, fixed intra-op threads, one inter-op thread.

    A module is exported with the TorchScript ONNX exporter (opset 17) and run in a session with
    all graph optimisations (what a deployment would use) and sequential execution.
    """

    name = "ort-cpu"
    summary = "onnxruntime CPU execution provider (fp32, threads fixed by --threads)"
    needs = "onnxruntime and onnx (Python packages)"

    def availability(self) -> tuple[bool, str]:
        try:
            import onnx  # noqa: F401
            import onnxruntime
        except ImportError as error:
            return False, f"missing Python package ({error.name})"
        if "CPUExecutionProvider" not in onnxruntime.get_available_providers():
            return False, "this onnxruntime has no CPUExecutionProvider"
        return True, f"onnxruntime {onnxruntime.__version__}"

    def runtime_versions(self) -> dict[str, str]:
        import onnx
        import onnxruntime

        return {**super().runtime_versions(), "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__}

    timed_runtime = ("onnxruntime",)

    def session(self, model: bytes, profile_prefix: str | None = None):
        """An onnxruntime session of a serialised model with this device's settings; with
        `profile_prefix`, onnxruntime's per-node profiler writes `<prefix>*.json` (`end_profiling`)."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # warnings about unused initializers are noise here
        if self.threads == 1:
            # with one thread there is no pool to spin; spinning would only steal the shared core
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if profile_prefix is not None:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def load_onnx(self, model: bytes, input_shape: tuple[int, ...]) -> Runnable:
        """A runnable of a serialised ONNX model (an exported network, or a layer) fed random input."""
        import numpy as np

        session = self.session(model)
        feed = {"input": np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)}
        return lambda: session.run(None, feed)

    def load(self, module: "nn.Module", input_shape: tuple[int, ...]) -> Runnable:
        return self.load_onnx(export_onnx(module, input_shape), input_shape)

    def session_loader(self, module: "nn.Module", input_shape: tuple[int, ...]) -> Callable[[], Runnable]:
        model = export_onnx(module, input_shape)
        return lambda: self.load_onnx(model, input_shape)

    def load_empty(self, input_shape: tuple[int, ...]) -> Runnable:
        return self.load_onnx(empty_onnx(input_shape), input_shape)


# -- torch ---------------------------------------------------------------------------------------
class TorchDevice(Device):
    """Eager torch in eval mode under `inference_mode`, fp32; the empty model is `nn.Identity`."""

    torch_device = "cpu"

    def availability(self) -> tuple[bool, str]:
        import torch

        return True, f"torch {torch.__version__}"

    def _prepare(self, module: "nn.Module", input_shape: tuple[int, ...]) -> Runnable:
        import torch

        torch.set_num_threads(self.threads)
        module = module.eval().to(self.torch_device)
        example = torch.randn(*input_shape, generator=torch.Generator().manual_seed(0)).to(self.torch_device)
        synchronize = torch.cuda.synchronize if self.torch_device == "cuda" else (lambda: None)

        def run() -> None:
            with torch.inference_mode():
                module(example)
            synchronize()  # a GPU call is asynchronous: time until the result exists

        return run

    def load(self, module: "nn.Module", input_shape: tuple[int, ...]) -> Runnable:
        return self._prepare(module, input_shape)

    def load_empty(self, input_shape: tuple[int, ...]) -> Runnable:
        from torch import nn

        return self._prepare(nn.Identity(), input_shape)


class TorchCpuDevice(TorchDevice):
    name = "torch-cpu"
    summary = "eager PyTorch on the CPU (fp32, torch.set_num_threads(--threads))"
    needs = "torch (CPU build is enough)"


class TorchCudaDevice(TorchDevice):
    name = "torch-cuda"
    summary = "eager PyTorch on a CUDA GPU (fp32, synchronised timing)"
    needs = "torch built with CUDA and a visible NVIDIA GPU"
    torch_device = "cuda"

    def availability(self) -> tuple[bool, str]:
        import torch

        if not torch.backends.cuda.is_built():
            return False, f"this torch ({torch.__version__}) is a CPU-only build"
        if not torch.cuda.is_available():
            return False, "no CUDA GPU is visible"
        return True, torch.cuda.get_device_name(0)

    def runtime_versions(self) -> dict[str, str]:
        import torch

        versions = {**super().runtime_versions(), "cuda": str(torch.version.cuda)}
        if torch.cuda.is_available():
            versions["gpu"] = torch.cuda.get_device_name(0)
        return versions

    timed_runtime = ("torch", "cuda", "gpu")


# -- iphone12: analytic model (issue 6) ------------------------------------------------------------
class IPhone12Device(Device):
    """iPhone 12 (A14 Neural Engine, Core ML, iOS 16) priced by the analytic model in
    `lut/device_models/iphone12.yaml` (see `lut.analytic`); measures nothing on this host.

    `profile(spec)` is the modelled layer latency; `make_table` prices every spec of a space
    (what `lut.build --device iphone12` writes); `profile_network` is refused: a model cannot
    check itself, whole-network numbers come from the phone.
    """

    name = "iphone12"
    summary = "iPhone 12 Neural Engine (Core ML, iOS 16): analytic model fitted to published latencies"
    needs = "nothing (model parameters in lut/device_models/iphone12.yaml)"
    measures = False
    precision = "fp16"

    def availability(self) -> tuple[bool, str]:
        return True, "analytic model, no phone needed"

    def model(self):
        from lut.analytic import load_model, model_path

        return load_model(model_path(self.name))

    def runtime_versions(self) -> dict[str, str]:
        return {"toolchain": "Core ML mlprogram, iOS 16 (modelled)", "model": f"lut/device_models/{self.name}.yaml"}

    def metadata_fields(self) -> dict[str, Any]:
        return {
            "device": self.name,
            "batch": 1,
            "threads": 1,
            "precision": self.precision,
            "runtime": self.runtime_versions(),
            "host_cpu": "",
            "host": "analytic model (no measurement)",
        }

    def profile(self, spec: "LayerSpec") -> LatencyRecord:
        ms = self.model().layer_ms(spec)
        return LatencyRecord(p50_ms=ms, p10_ms=ms, p90_ms=ms, mean_ms=ms, std_ms=0.0, runs=0)

    def profile_network(self, arch: "Architecture") -> LatencyRecord:
        raise DeviceError(f"device {self.name!r} is a model: it cannot measure a network (measure on the phone)")

    def make_table(
        self, space: "SearchSpace", resolution: int, num_classes: int | None = None, widths: Sequence[Sequence[int]] | None = None
    ) -> LatencyTable:
        """The table of every spec of `space`, priced by the model (see `lut.analytic.model_table`)."""
        from lut.analytic import model_table

        return model_table(self.model(), space, resolution, self.metadata_fields(), num_classes, widths)


if __name__ == "__main__":  # `python -m lut.devices`: the device list (lut.registry registers them all)
    from search_spaces.command_line import run_command

    from lut.registry import PROG, main

    sys.exit(run_command(main, prog=PROG))
