"""The one place where latency devices are registered: `get_device(name)` and friends.

The measured devices and the analytic one live in `lut.devices`, Core ML in `lut.coreml`; neither
imports the other nor this module, and this module imports both and registers every device here.

    python -m lut.devices            # the devices, what each needs and whether it works here
"""

from __future__ import annotations

from typing import Any, Sequence

from lut.coreml import CoreMLDevice
from lut.devices import (
    Device,
    DeviceError,
    DeviceInfo,
    IPhone12Device,
    OrtCpuDevice,
    TorchCpuDevice,
    TorchCudaDevice,
)
from lut.profiler import TimingSettings

_DEVICES: dict[str, type[Device]] = {}


def register_device(device_class: type[Device]) -> type[Device]:
    """Register a device class under its `name`."""
    if device_class.name in _DEVICES and _DEVICES[device_class.name] is not device_class:
        raise ValueError(f"device {device_class.name!r} is registered twice")
    _DEVICES[device_class.name] = device_class
    return device_class


for _device_class in (OrtCpuDevice, TorchCpuDevice, TorchCudaDevice, IPhone12Device, CoreMLDevice):
    register_device(_device_class)


def list_devices() -> list[str]:
    """Names of the registered devices."""
    return list(_DEVICES)


def device_class(name: str) -> type[Device]:
    """The registered class of device `name`; `DeviceError` if unknown."""
    if name not in _DEVICES:
        raise DeviceError(f"unknown device {name!r}; devices: {', '.join(list_devices())}")
    return _DEVICES[name]


def get_device(name: str, **settings: Any) -> Device:
    """The device `name` with its settings (threads, batch, timing); `DeviceError` if unknown."""
    cls = device_class(name)
    timing = settings.pop("timing", None)
    if isinstance(timing, dict):
        timing = TimingSettings(**timing)
    return cls(timing=timing, **settings)


def describe_devices() -> list[DeviceInfo]:
    infos = []
    for name, cls in _DEVICES.items():
        usable, reason = cls().availability()
        infos.append(DeviceInfo(name, cls.summary, cls.needs, cls.measures, usable, reason))
    return infos


PROG = "python -m lut.devices"


def main(argv: Sequence[str] | None = None) -> int:
    from search_spaces.command_line import ArgumentParser

    parser = ArgumentParser(prog=PROG, description="List the latency devices, what each needs and whether it works here.")
    parser.parse_args(argv)
    for info in describe_devices():
        state = "available" if info.available else "not available"
        kind = "measures on this host" if info.measures else "model / export"
        print(f"{info.name:<11} {state:<14} {info.summary}")
        print(f"{'':<11} needs: {info.needs}; {kind}; here: {info.reason}")
    return 0
