"""`python -m lut.predict`: print the predicted latency of architecture files or ONNX models.

    python -m lut.predict --device ort-cpu found.yaml other.yaml     # the device's default table
    python -m lut.predict --lut table.json found.yaml                # a given table file
    python -m lut.predict --device iphone12 MODEL.onnx [--input-shape 1,3,224,224] [--breakdown]

One line per file on stdout: `<file>: <ms> ms (naive sum <ms> ms, <table>)` for an architecture,
`<file>: <ms> ms (<device> analytic model, ONNX graph)` for an ONNX model. An ONNX model is any
network, inside the spaces or not: a device with an analytic model (`iphone12`) prices its graph's
op classes (`lut.onnx_costs`), the same ones a trace of an architecture gives; `--input-shape`
fixes a dynamic input. `--breakdown` adds one line per op class (ms and share).

A file that is not a valid architecture or ONNX model, one the table cannot price (missing keys,
listed), a dynamic input without `--input-shape`, or an op the model has no class for, is bad
input: one line on stderr, exit 2, after every other file has been printed. Every file is opened
only as a regular file within its cap (an architecture `MAX_ARCHITECTURE_BYTES`, an ONNX model
`MAX_ONNX_BYTES`, a table `MAX_TABLE_BYTES`), and a table is checked for meaning when loaded
(`lut.table`). `--threads` (1..1024, the threads a table was built with) picks the device's table
and is refused with `--lut` (a table file records its own). From Python,
`predict_module(module, input_shape)` prices any `nn.Module` through a trace.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from search_spaces import Architecture, ArchitectureError, get_space
from search_spaces.command_line import EXIT_BAD_INPUT, EXIT_OK, ArgumentParser, UsageError, integer_in, run_command
from search_spaces.files import FileError, read_input_bytes
from search_spaces.limits import MAX_ONNX_BYTES

from lut.devices import DeviceError
from lut.registry import get_device, list_devices
from lut.table import TABLE_THREADS, LatencyTable, MissingKeysError, TableError, load_table

if TYPE_CHECKING:
    from torch import nn

    from search_spaces.tracing import LayerCost

PROG = "python -m lut.predict"
ONNX_SUFFIX = ".onnx"
#: the largest input a priced ONNX model may declare (a 4096 x 4096 image at batch 64 is more than any mobile network takes)
MAX_INPUT_ELEMENTS = 64 * 3 * 4096 * 4096
MAX_INPUT_DIMENSIONS = 8


def analytic_model(device: str):
    """The analytic model of `device`; `DeviceError` when the device has none (tables price only
    the layers of a space, so a network outside the spaces needs a model)."""
    device_object = get_device(device)
    model = getattr(device_object, "model", None)
    if not callable(model):
        raise DeviceError(f"device {device!r} prices only architectures of its spaces (a table); a network given as "
                          "ONNX or torch needs a device with an analytic model (iphone12)")
    return model()


def predict_module(module: "nn.Module", input_shape: Sequence[int], device: str = "iphone12") -> float:
    """Modelled end-to-end milliseconds of any torch module on `device` (a trace of its forward)."""
    from search_spaces.tracing import trace_costs

    cost = trace_costs(module, tuple(input_shape))
    if cost.unclassified:
        raise ValueError(f"cannot price ATen op(s) {', '.join(cost.unclassified)}: no op class for them")
    return analytic_model(device).module_ms(cost)


def onnx_cost(path: Path, input_shape: Sequence[int] | None) -> "LayerCost":
    """The op counts of an ONNX file; `OnnxCostError` (one line) for anything that cannot be priced."""
    from lut.onnx_costs import OnnxCostError, onnx_costs

    try:
        data = read_input_bytes(path, "", MAX_ONNX_BYTES)
    except FileError as error:
        raise OnnxCostError(str(error).removeprefix(f"{path}: ")) from None
    return onnx_costs(data, input_shape)


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """'1,3,224,224' -> (1, 3, 224, 224); UsageError naming --input-shape otherwise."""
    if text is None:
        return None
    shown = text if len(text) <= 60 else text[:57] + "..."
    try:
        shape = tuple(int(part) for part in text.split(",")[:MAX_INPUT_DIMENSIONS + 1])
    except ValueError:
        raise UsageError(f"--input-shape: {shown!r} is not a comma-separated list of sizes (e.g. 1,3,224,224)") from None
    size = 1
    for dim in shape:
        size *= max(dim, 0)
    if not shape or len(shape) > MAX_INPUT_DIMENSIONS or any(dim < 1 for dim in shape) or size > MAX_INPUT_ELEMENTS:
        raise UsageError(f"--input-shape: {shown!r} needs 1..{MAX_INPUT_DIMENSIONS} positive sizes of at most "
                         f"{MAX_INPUT_ELEMENTS} elements in all")
    return shape


def _table_for(args, arch: Architecture, cache: dict[tuple[str, int], LatencyTable]) -> LatencyTable:
    if args.lut:
        key = ("", 0)
        if key not in cache:
            cache[key] = load_table(args.lut)
        return cache[key]
    key = (arch.space, arch.resolution)
    if key not in cache:
        device = get_device(args.device, threads=args.threads or 1)
        cache[key] = device.default_table(get_space(arch.space), arch.resolution)
    return cache[key]


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Print the predicted latency of architecture YAML files or ONNX models.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--device", help=f"use the device's default table or model; one of: {', '.join(list_devices())}")
    source.add_argument("--lut", help="a latency table file")
    parser.add_argument("--threads", type=integer_in(TABLE_THREADS),
                        help=f"--device only: threads of the device's table, {TABLE_THREADS.low}..{TABLE_THREADS.high} (default 1)")
    parser.add_argument("--input-shape", help="ONNX models: the input shape, for a model with dynamic dimensions")
    parser.add_argument("--breakdown", action="store_true", help="ONNX models and analytic devices: ms per op class")
    parser.add_argument("files", nargs="+", metavar="ARCH.yaml|MODEL.onnx")
    return parser


def _breakdown_lines(model, cost) -> list[str]:
    parts = {**model.breakdown(cost), "network_fixed": model.value("network_fixed")}
    total = sum(parts.values())
    return [f"    {name:<14} {ms:8.4f} ms  {100 * ms / total:5.1f}%" for name, ms in sorted(parts.items(), key=lambda p: -p[1])
            if ms > 0]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.lut and args.threads is not None:
        raise UsageError("--threads: not used with --lut (a table file records the threads it was built with)")
    if args.device:
        try:
            get_device(args.device, threads=args.threads or 1)
        except DeviceError as error:
            raise UsageError(f"--device: {error}") from None
    input_shape = parse_shape(args.input_shape)
    onnx_files = [path for path in args.files if path.lower().endswith(ONNX_SUFFIX)]
    model = None
    if onnx_files or args.breakdown:
        if args.lut:
            raise UsageError("--lut: a table prices architectures of its space; ONNX models and --breakdown need "
                             "--device with an analytic model (iphone12)")
        try:
            model = analytic_model(args.device)
        except DeviceError as error:
            raise UsageError(f"--device: {error}") from None
    if input_shape is not None and not onnx_files:
        raise UsageError("--input-shape applies to ONNX models only")
    cache: dict[tuple[str, int], LatencyTable] = {}
    if args.lut:  # a bad table is refused before any file is read
        try:
            cache[("", 0)] = load_table(args.lut)
        except TableError as error:
            raise UsageError(f"--lut: {error}") from None
    failures = 0
    for path in args.files:
        if path in onnx_files:
            from lut.onnx_costs import OnnxCostError

            try:
                cost = onnx_cost(Path(path), input_shape)
            except OnnxCostError as error:
                failures += 1
                print(f"{path}: {error}", file=sys.stderr)
                continue
            print(f"{path}: {model.module_ms(cost):.3f} ms ({args.device} analytic model, ONNX graph)")
            if args.breakdown:
                print("\n".join(_breakdown_lines(model, cost)))
            continue
        try:
            arch = Architecture.from_yaml(Path(path))
            try:
                get_space(arch.space).validate(arch)
            except KeyError:
                raise ArchitectureError("space", f"unknown space {arch.space!r}") from None
            table = _table_for(args, arch, cache)
            predicted, naive = table.predict(arch), table.predict_naive(arch)
        except TableError as error:
            raise UsageError(str(error)) from None
        except (ArchitectureError, MissingKeysError) as error:
            failures += 1
            message = str(error)
            print(message if message.startswith(f"{path}:") else f"{path}: {message}", file=sys.stderr)
            continue
        meta = table.metadata
        print(f"{path}: {predicted:.3f} ms (naive sum {naive:.3f} ms, {meta.device} {meta.space}@{meta.resolution}, {table.calibration.method})")
        if args.breakdown:
            from search_spaces.counting import cost as network_cost

            print("\n".join(_breakdown_lines(model, network_cost(arch))))
    return EXIT_BAD_INPUT if failures else EXIT_OK


if __name__ == "__main__":
    sys.exit(run_command(main, prog=PROG))
