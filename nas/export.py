"""`python -m nas.export`: a found architecture as an ONNX, Core ML or TorchScript file, checked against torch.

    python -m nas.export ARCH.yaml [--supernet CKPT [--data SPEC --recalibrate N]]
                         --format onnx|coreml|torchscript --out FILE
                         [--resolution R] [--batch B] [--seed N] [--report FILE.json]

The static network of the architecture is built with random weights (`torch.manual_seed(--seed)`,
then `search_spaces.build_model`) or, with `--supernet`, extracted from the trained supernet at the
supernet's resolution and class count, optionally with its BatchNorm statistics re-estimated on
`--recalibrate N` batches of `--data`. The input shape is fixed: (B, 3, R, R).

Every format is checked before anything is written: the exported model and the torch model (eval,
no grad) run on the same seeded random input, and the export fails (exit 1, output not written)
when max|exported - torch| / max|torch| exceeds the format's tolerance.

- `onnx`: TorchScript exporter, opset 17 (`lut.profiler.export_onnx`, the exporter the latency
  tables were profiled with), `onnx.checker`, run by onnxruntime (CPUExecutionProvider).
- `coreml`: `torch.export` + `coremltools.convert` to an fp16 ML program, iOS 16 target (the
  `lut.coreml` conversion). The output is an `.mlpackage` directory. Core ML predicts only on
  macOS; elsewhere the package is written and its numerics are reported as not checked.
- `torchscript`: `torch.jit.trace` at the fixed shape; the saved file is loaded back and run.

Outputs are written atomically (a temporary beside the target, then a rename) and a temporary is
removed on failure. A JSON report (format, file, architecture, params, MACs, input shape, weight
source with the checkpoint's sha256, recalibration batches, differences, exporter, size) is
summarised in one line on stderr and written to `--report`. Exit codes: 0 ok, 1 export failed or
outputs differ, 2 bad input (one line).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import json
import os
import platform
import shutil
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import nas
from search_spaces import (
    Architecture,
    ArchitectureError,
    build_model,
    count_macs,
    count_params,
    get_space,
    list_spaces,
)
from search_spaces.command_line import (
    EXIT_OK,
    ArgumentParser,
    UsageError,
    integer_in,
    run_command,
)
from search_spaces.files import check_input_file, check_outputs, make_temporary_directory, write_text_atomic
from search_spaces.limits import (
    EXPORT_BATCH,
    MAX_ARCHITECTURE_BYTES,
    MAX_CHECKPOINT_BYTES,
    RECALIBRATION_BATCHES,
    RESOLUTION,
    SEED,
)

PROG = "python -m nas.export"
REPORT_SCHEMA = "latnas/export-report@1"
FORMATS = ("onnx", "coreml", "torchscript")
EXIT_EXPORT_FAILED = 1
IMAGE_CHANNELS = 3  # every space takes RGB images
CHECK_SEED = 0  # the seeded random input both sides of a numerics check run on
# Relative tolerance on max|exported - torch| / max|torch|. fp32 runtimes only reorder sums and fuse
# ops (the networks here differ by ~1e-6 relative); fp16 Core ML keeps 11 mantissa bits, ~5e-4 per
# op, which accumulates over a network's depth.
TOLERANCE = {"onnx": 1e-4, "torchscript": 1e-4, "coreml": 1e-2}
COREML_SUFFIX = ".mlpackage"
COREML_NOT_CHECKED = "not checked (Core ML runs on macOS only)"
# Images per BatchNorm recalibration batch: large enough for stable batch statistics, small enough
# to run on a CPU at 224 px.
RECALIBRATION_BATCH_SIZE = 64
EXPORTERS = {
    "onnx": "torch.onnx.export (TorchScript exporter, dynamo=False, opset 17)",
    "coreml": "torch.export.export + run_decompositions({}) -> coremltools.convert (mlprogram, fp16, iOS16)",
    "torchscript": "torch.jit.trace (fixed input shape)",
}


class ExportError(RuntimeError):
    """An export that failed or whose outputs differ from torch; the message is one line, and
    nothing was written to the output path."""


@dataclasses.dataclass(frozen=True)
class ExportReport:
    """What `export_network` wrote and how closely it matches torch.

    `max_abs_diff` is max|exported - torch| and `max_rel_diff` that over max|torch|, on one seeded
    random input of `input_shape`; both are None when the runtime cannot run here (`numerics` says
    why). `file_size_bytes` is the file's size, or the sum of a package directory's files.
    """

    format: str
    path: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    exporter: str
    file_size_bytes: int
    numerics: str
    max_abs_diff: float | None
    max_rel_diff: float | None
    tolerance: float
    tools: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (shapes as lists)."""
        data = dataclasses.asdict(self)
        data["input_shape"] = list(self.input_shape)
        data["output_shape"] = list(self.output_shape)
        data["tools"] = dict(self.tools)
        return data


@dataclasses.dataclass(frozen=True)
class WeightSource:
    """Where an exported network's weights came from: a seeded random init, or a supernet checkpoint
    (path and sha256 of the file) with `recalibrate` BatchNorm recalibration batches of `data`."""

    seed: int = 0
    checkpoint: str | None = None
    sha256: str | None = None
    data: str | None = None
    recalibrate: int = 0

    @classmethod
    def of(cls, supernet_path: str | os.PathLike[str] | None, data: str | None = None, recalibrate: int = 0, seed: int = 0) -> WeightSource:
        """The source of `build_network` with these arguments (hashes the checkpoint file)."""
        if supernet_path is None:
            return cls(seed=seed)
        return cls(seed, str(supernet_path), _sha256(Path(supernet_path)), data, recalibrate)

    def label(self) -> str:
        """`random-init seed N` or `checkpoint`."""
        return "checkpoint" if self.checkpoint else f"random-init seed {self.seed}"

    def to_dict(self) -> dict[str, Any]:
        """The report's weight fields."""
        return {
            "weights": self.label(),
            "checkpoint": {"path": self.checkpoint, "sha256": self.sha256} if self.checkpoint else None,
            "data": self.data,
            "bn_recalibration_batches": self.recalibrate,
            "seed": self.seed,
        }


# -- building the network -------------------------------------------------------------------------
class UntrainedStatisticsWarning(UserWarning):
    """An exported sub-network runs BatchNorm widths whose statistics no training step updated."""


def build_network(
    arch: Architecture,
    supernet_path: str | os.PathLike[str] | None = None,
    data: str | None = None,
    recalibrate: int = 0,
    seed: int = 0,
) -> tuple[nn.Module, Architecture]:
    """The static network of `arch` in eval mode, and the architecture it was built for.

    Without `supernet_path`: `build_model(arch)` after `torch.manual_seed(seed)` (random weights,
    `arch` as given). With it: the supernet checkpoint of `arch.space` is loaded, `arch` is fitted to
    its resolution and class count, and the sub-network is extracted with the shared weights; with
    `recalibrate` > 0 its BatchNorm statistics are re-estimated on that many shuffled (seeded)
    training batches of the data spec `data` (`supernet.training.recalibrate_bn`).

    Raises `ArchitectureError` (arch not in its space), `CheckpointError`, `DataError`, and
    `ValueError` for inconsistent arguments (data or recalibration without a supernet).
    """
    space = _space_of(arch)
    space.validate(arch)
    if recalibrate < 0:
        raise ValueError(f"recalibrate must be a non-negative number of batches, got {recalibrate}")
    if supernet_path is None:
        if data is not None or recalibrate:
            raise ValueError("BN recalibration (data, recalibrate) needs a supernet")
        torch.manual_seed(seed)
        return build_model(arch).eval(), arch
    if bool(recalibrate) != (data is not None):
        raise ValueError("data and recalibrate go together: recalibrate > 0 batches of the data spec")

    from supernet import Supernet

    net = Supernet.load(supernet_path, space=arch.space)
    arch = net.fit(arch)
    if not recalibrate:
        from supernet.untrained_norms import untrained_batch_norms

        untrained = untrained_batch_norms(net, arch)
        if untrained:
            warnings.warn(UntrainedStatisticsWarning(
                f"the network runs {len(untrained)} BatchNorm width(s) no training step of the supernet updated "
                f"(first {untrained[0]}): they keep the initial statistics (mean 0, variance 1); give --data SPEC "
                "--recalibrate N to estimate every statistic on training images"), stacklevel=2)
        return net.eval().extract(arch).eval(), arch

    from torch.utils.data import DataLoader

    from supernet.data import DataError, load_data
    from supernet.training import recalibrate_bn

    bundle = load_data(data, net.resolution, seed=seed)
    loader = DataLoader(
        bundle.train,
        batch_size=RECALIBRATION_BATCH_SIZE,
        shuffle=True,  # the first N batches should cover the classes, not the first few of them
        generator=torch.Generator().manual_seed(seed),
    )
    if len(loader) < recalibrate:
        raise DataError(
            f"data {data}: {recalibrate} recalibration batches asked for, but its training split has "
            f"{len(loader)} batches of {RECALIBRATION_BATCH_SIZE}"
        )
    return recalibrate_bn(net, arch, loader, recalibrate).eval(), arch


def _space_of(arch: Architecture):
    try:
        return get_space(arch.space)
    except KeyError:
        raise ArchitectureError("space", f"unknown space {arch.space!r}; known: {', '.join(list_spaces())}") from None


# -- exporting ------------------------------------------------------------------------------------
def export_network(model: nn.Module, fmt: str, out: Path, input_shape: tuple[int, ...]) -> ExportReport:
    """Export `model` (a float32 CPU module, put in eval mode) as `fmt` for the fixed `input_shape`,
    check it against torch, write `out`.

    The exported model and `model` run on one seeded random input; when the relative difference
    exceeds `TOLERANCE[fmt]` (or the exporter fails) `ExportError` is raised and `out` is left as it
    was. Otherwise `out` is written atomically (for `coreml`, an `.mlpackage` directory renamed into
    place, replacing an existing package). `ValueError` for an unknown `fmt` or a `coreml` `out`
    not ending in `.mlpackage`.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; accepted: {', '.join(FORMATS)}")
    out = Path(out)
    if fmt == "coreml" and not out.name.endswith(COREML_SUFFIX):
        raise ValueError(f"a Core ML package path must end in {COREML_SUFFIX}, got {out}")
    input_shape = tuple(int(size) for size in input_shape)
    model = model.eval()
    example = torch.randn(*input_shape, generator=torch.Generator().manual_seed(CHECK_SEED))
    with torch.no_grad():
        expected = model(example)
    if not isinstance(expected, torch.Tensor):
        raise ExportError(f"the model returns {type(expected).__name__}; export needs one output tensor")
    expected_array = expected.numpy()
    exporter = {"onnx": _export_onnx, "coreml": _export_coreml, "torchscript": _export_torchscript}[fmt]
    return exporter(model, out, input_shape, example.numpy(), expected_array)


def _export_onnx(model: nn.Module, out: Path, shape: tuple[int, ...], example: np.ndarray, expected: np.ndarray) -> ExportReport:
    import onnx
    import onnxruntime

    from lut.profiler import export_onnx

    try:
        with warnings.catch_warnings():
            # the exporter's notes on ops it cannot constant-fold (strided slices) are not the user's concern
            warnings.simplefilter("ignore", UserWarning)
            data = export_onnx(model, shape)
        onnx.checker.check_model(onnx.load_from_string(data))
        session = _ort_session(data)
        (actual,) = session.run(None, {session.get_inputs()[0].name: example})
    except Exception as error:
        raise ExportError(f"onnx export failed: {_first_line(error)}") from error
    return _write_checked_file(
        "onnx", out, data, shape, actual, expected, numerics="checked with onnxruntime (CPUExecutionProvider)",
        tools={"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
    )


def _write_checked_file(fmt: str, out: Path, data: bytes, shape: tuple[int, ...], actual: np.ndarray,
                        expected: np.ndarray, numerics: str, tools: dict[str, str]) -> ExportReport:
    """Compare the exported model's output with torch's (`ExportError` beyond the format's
    tolerance, nothing written), then write the file atomically and report."""
    absolute, relative = _check(fmt, actual, expected, out)
    _write_file_atomic(out, data)
    return ExportReport(
        format=fmt,
        path=str(out),
        input_shape=shape,
        output_shape=tuple(actual.shape),
        exporter=EXPORTERS[fmt],
        file_size_bytes=len(data),
        numerics=numerics,
        max_abs_diff=absolute,
        max_rel_diff=relative,
        tolerance=TOLERANCE[fmt],
        tools=tools,
    )


def _ort_session(data: bytes):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL  # as deployed
    options.log_severity_level = 3  # unused-initializer warnings are noise here
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _export_torchscript(
    model: nn.Module, out: Path, shape: tuple[int, ...], example: np.ndarray, expected: np.ndarray
) -> ExportReport:
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # shape checks inside forward (the attention-bias grid) are constant for a fixed input
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is the format asked for
            traced = torch.jit.trace(model, torch.from_numpy(example), check_trace=False)  # checked below, after a reload
            torch.jit.save(traced, buffer)
            data = buffer.getvalue()
            reloaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
            actual = reloaded(torch.from_numpy(example)).numpy()
    except Exception as error:
        raise ExportError(f"torchscript export failed: {_first_line(error)}") from error
    return _write_checked_file("torchscript", out, data, shape, actual, expected,
                               numerics="checked by torch.jit.load of the saved file", tools={"torch": torch.__version__})


def _export_coreml(model: nn.Module, out: Path, shape: tuple[int, ...], example: np.ndarray, expected: np.ndarray) -> ExportReport:
    from lut import coreml

    ct = coreml.coremltools()
    try:
        mlmodel = coreml.convert_program(coreml.export_program(model, shape), load=coreml.IS_MACOS)
        output_shape = tuple(mlmodel.get_spec().description.output[0].type.multiArrayType.shape)
        actual = None
        if coreml.IS_MACOS:
            prediction = mlmodel.predict({coreml.input_name(mlmodel): example.astype(np.float32)})
            actual = np.asarray(next(iter(prediction.values())), dtype=np.float32)
    except Exception as error:
        raise ExportError(f"coreml export failed: {_first_line(error)}") from error
    absolute = relative = None
    numerics = COREML_NOT_CHECKED
    if actual is not None:
        absolute, relative = _check("coreml", actual, expected, out)
        output_shape = tuple(actual.shape)
        numerics = "checked with Core ML (fp16) on macOS"
    package_bytes = _write_package_atomic(out, mlmodel)
    return ExportReport(
        format="coreml",
        path=str(out),
        input_shape=shape,
        output_shape=tuple(int(dimension) for dimension in output_shape),
        exporter=EXPORTERS["coreml"],
        file_size_bytes=package_bytes,
        numerics=numerics,
        max_abs_diff=absolute,
        max_rel_diff=relative,
        tolerance=TOLERANCE["coreml"],
        tools={"torch": torch.__version__, "coremltools": ct.__version__},
    )


def _check(fmt: str, actual: np.ndarray, expected: np.ndarray, out: Path) -> tuple[float, float]:
    """(max abs diff, max rel diff) of the exported output; `ExportError` when over the tolerance."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise ExportError(f"{fmt} output has shape {list(actual.shape)}, torch's {list(expected.shape)}; {out} not written")
    if not np.isfinite(actual).all():
        raise ExportError(f"{fmt} output holds non-finite values; {out} not written")
    absolute = float(np.abs(actual - expected).max()) if actual.size else 0.0
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    relative = absolute / scale if scale > 0 else (0.0 if absolute == 0 else float("inf"))
    if relative > TOLERANCE[fmt]:
        raise ExportError(
            f"{fmt} output differs from torch: max relative diff {relative:.3g} > {TOLERANCE[fmt]:g} "
            f"(max abs diff {absolute:.3g}); {out} not written"
        )
    return absolute, relative


def _write_file_atomic(out: Path, data: bytes) -> None:
    from search_spaces.files import write_bytes_atomic

    try:
        write_bytes_atomic(out, data)
    except OSError as error:
        raise ExportError(f"cannot write {out}: {error.strerror or error}") from error


def _write_package_atomic(out: Path, mlmodel) -> int:
    """Save `mlmodel` into a temporary folder beside `out`, rename it into place; its size in bytes."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = make_temporary_directory(out)
    except OSError as error:
        raise ExportError(f"cannot write {out}: {error.strerror or error}") from error
    try:
        package = staging / out.name  # coremltools wants the .mlpackage suffix on the path it saves to
        mlmodel.save(str(package))
        size = sum(path.stat().st_size for path in package.rglob("*") if path.is_file())
        old = staging / f"old{COREML_SUFFIX}"
        if out.exists():
            # a directory cannot be renamed over a non-empty one: move the old package aside first
            os.replace(out, old)
        try:
            os.replace(package, out)
        except OSError:
            if old.exists():
                os.replace(old, out)  # put the previous package back
            raise
    except OSError as error:
        raise ExportError(f"cannot write {out}: {error.strerror or error}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return size


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


# -- the command ----------------------------------------------------------------------------------
def build_parser() -> ArgumentParser:
    """The `python -m nas.export` argument parser (one-line errors, exit 2)."""
    parser = ArgumentParser(prog=PROG, description="Export an architecture as ONNX, Core ML or TorchScript, checked against torch.")
    parser.add_argument("arch", metavar="ARCH.yaml", help="architecture file (schema latnas/architecture@1)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="output format: " + ", ".join(FORMATS))
    parser.add_argument("--out", required=True, help=f"output file (coreml: a directory ending in {COREML_SUFFIX})")
    parser.add_argument("--supernet", help="trained supernet checkpoint to take the weights from (default: random init)")
    parser.add_argument("--data", help="data spec for --recalibrate (e.g. digits, synthetic, imagefolder:PATH)")
    parser.add_argument("--recalibrate", type=integer_in(RECALIBRATION_BATCHES), default=0, metavar="N",
                        help="re-estimate BatchNorm statistics on N batches of --data (needs --supernet)")
    parser.add_argument("--resolution", type=integer_in(RESOLUTION),
                        help="input resolution (default: the architecture's; with --supernet, the supernet's)")
    parser.add_argument("--batch", type=integer_in(EXPORT_BATCH), default=1, help="fixed batch size of the input (default 1)")
    parser.add_argument("--seed", type=integer_in(SEED), default=0, help="seed of the random init and the data shuffle (default 0)")
    parser.add_argument("--report", help="write the JSON report here too")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code (bad input raises `UsageError`, see `run_command`)."""
    from supernet import CheckpointError
    from supernet.data import DataError

    args = build_parser().parse_args(argv)
    outputs = _check_arguments(args)
    out = outputs["--out"]
    arch = _read_arch(args)
    if args.supernet and args.resolution is not None:
        _check_supernet_resolution(Path(args.supernet), args.resolution)
    weights = WeightSource.of(args.supernet, args.data, args.recalibrate, args.seed)  # hashed before it is read
    progress = _progress()
    try:
        progress.set_description("loading supernet" if args.supernet else "building network")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UntrainedStatisticsWarning)
                model, arch = build_network(arch, args.supernet, args.data, args.recalibrate, args.seed)
            for warning in caught:
                print(f"{PROG}: warning: {warning.message}", file=sys.stderr)
        except ArchitectureError as error:
            raise UsageError(f"{args.arch}: {error}") from None
        except (CheckpointError, DataError) as error:
            raise UsageError(_first_line_of(error)) from None
        progress.update()
        progress.set_description(f"exporting {args.format}")
        shape = (args.batch, IMAGE_CHANNELS, arch.resolution, arch.resolution)
        try:
            report = export_network(model, args.format, out, shape)
        except ExportError as error:
            progress.close()
            print(f"{PROG}: error: {error}", file=sys.stderr)
            return EXIT_EXPORT_FAILED
        progress.update()
    finally:
        progress.close()
    document = report_document(report, arch, weights, args.arch)
    if args.report:
        write_text_atomic(outputs["--report"], json.dumps(document, indent=2, sort_keys=True) + "\n")
    print(summary_line(document), file=sys.stderr)
    return EXIT_OK


def report_document(
    report: ExportReport, arch: Architecture, weights: WeightSource, arch_file: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """The JSON report of one export: `report`'s fields, the architecture, its size and the weight source."""
    return {
        "schema": REPORT_SCHEMA,
        **report.to_dict(),
        "architecture": {
            "file": None if arch_file is None else str(arch_file),
            "space": arch.space,
            "resolution": arch.resolution,
            "num_classes": arch.num_classes,
            "widths": list(arch.widths),
            "depths": list(arch.depths),
        },
        "params": count_params(arch),
        "macs": count_macs(arch),
        **weights.to_dict(),
        "version": nas.__version__,
        "python": platform.python_version(),
    }


def summary_line(document: Mapping[str, Any]) -> str:
    """One stderr line that says what was written and how closely it matches torch."""
    if document["max_rel_diff"] is None:
        numerics = f"numerics {document['numerics']}"
    else:
        numerics = f"max abs diff {document['max_abs_diff']:.2e}, max rel diff {document['max_rel_diff']:.2e}"
    shape = "x".join(str(size) for size in document["input_shape"])
    weights = document["weights"]
    if document["checkpoint"]:
        weights = f"from {document['checkpoint']['path']}"
        if document["bn_recalibration_batches"]:
            weights += f", BN recalibrated on {document['bn_recalibration_batches']} batches of {document['data']}"
    return (
        f"{PROG}: wrote {document['path']} ({document['format']}, {document['file_size_bytes'] / 1e6:.2f} MB, "
        f"input {shape}, {document['params'] / 1e6:.2f} M params, {document['macs'] / 1e6:.1f} M MACs, "
        f"weights {weights}; {numerics})"
    )


def _check_arguments(args) -> dict[str, Path]:
    """Refuse inconsistent options and unusable output paths before any slow work; the outputs'
    resolved paths by option."""
    if args.recalibrate and not args.supernet:
        raise UsageError("--recalibrate needs --supernet (it re-estimates the BatchNorm statistics of supernet weights)")
    if args.recalibrate and not args.data:
        raise UsageError("--recalibrate needs --data SPEC (the images the BatchNorm statistics are estimated on)")
    if args.data and not args.recalibrate:
        raise UsageError("--data is only read for --recalibrate N; give both or neither")
    if args.data and not args.supernet:
        raise UsageError("--data needs --supernet and --recalibrate N")
    if args.supernet:
        check_input_file(args.supernet, "--supernet", MAX_CHECKPOINT_BYTES)
    out = Path(args.out)
    if args.format == "coreml":
        if not out.name.endswith(COREML_SUFFIX) or out.name == COREML_SUFFIX:
            raise UsageError(f"--out: a Core ML package is a directory ending in {COREML_SUFFIX}, got {args.out!r}")
        if out.exists() and not (out / "Manifest.json").is_file():
            raise UsageError(f"--out: {out} exists and is not a Core ML package; remove it or choose another path")
        if importlib.util.find_spec("coremltools") is None:
            raise UsageError("--format coreml needs the coremltools package (pip install coremltools)")
        resolved = check_outputs({"--report": args.report}, {"--out": out})
    else:
        resolved = check_outputs({"--out": out, "--report": args.report})
    return resolved


def _check_supernet_resolution(path: Path, resolution: int) -> None:
    """Refuse a `--resolution` other than the checkpoint's before the (slow) supernet is built."""
    from supernet import CheckpointError, read_checkpoint

    try:
        built_for = read_checkpoint(path)["resolution"]
    except CheckpointError as error:
        raise UsageError(_first_line_of(error)) from None
    if resolution != built_for:
        raise UsageError(
            f"--resolution {resolution}: the supernet is built for {built_for} (its attention biases are "
            "tied to it); drop --resolution or use that value"
        )


def _read_arch(args) -> Architecture:
    """The architecture file, validated, at `--resolution` when given (without a supernet)."""
    path = check_input_file(args.arch, "", MAX_ARCHITECTURE_BYTES)
    try:
        arch = Architecture.from_yaml(path)
        space = _space_of(arch)
        space.validate(arch)
        if args.resolution is not None and not args.supernet:
            arch = dataclasses.replace(arch, resolution=args.resolution)
            try:
                space.validate(arch)
            except ArchitectureError as error:
                raise UsageError(f"--resolution {args.resolution}: {error.reason}") from None
    except ArchitectureError as error:
        raise UsageError(f"{args.arch}: {error}") from None
    return arch


def _progress():
    """A phase bar on stderr (silent when stderr is not a terminal)."""
    from tqdm import tqdm

    return tqdm(total=2, file=sys.stderr, disable=None, leave=False, bar_format="{desc}: {n}/{total} [{elapsed}]")


def _first_line_of(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


if __name__ == "__main__":
    sys.exit(run_command(main, prog=PROG))
