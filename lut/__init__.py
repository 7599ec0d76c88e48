"""lut: latency tables — layer specs profiled on devices, stored, summed and checked.

`get_device(name)` gives a registered device (`ort-cpu`, `torch-cpu`, `torch-cuda`, `iphone12`,
`coreml`; all registered in `lut.registry`); `python -m lut.build` profiles every layer spec of a space into a
`LatencyTable` (JSON `latnas/lut@1`); `load_table(path).predict(arch)` is an architecture's
latency in milliseconds; `python -m lut.validate` measures sampled networks end to end and
reports how far the table is from them. `lut` imports `search_spaces` only.

Names are imported on first use (PEP 562), so `python -m lut.devices` runs its module once,
not a second copy of an already imported one. Import order: `table`, `profiler` <- `devices`,
`coreml` <- `registry` <- `command_line` <- the commands (`build`, `predict`, `validate`, `import`).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SCHEMA": "lut.table",
    "Calibration": "lut.table",
    "LatencyRecord": "lut.table",
    "LatencyTable": "lut.table",
    "MissingKeysError": "lut.table",
    "TableError": "lut.table",
    "TableMetadata": "lut.table",
    "load_table": "lut.table",
    "Device": "lut.devices",
    "DeviceError": "lut.devices",
    "get_device": "lut.registry",
    "list_devices": "lut.registry",
    "register_device": "lut.registry",
    "Profiler": "lut.profiler",
    "TimingSettings": "lut.profiler",
    "fit_calibration": "lut.calibration",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lut' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
