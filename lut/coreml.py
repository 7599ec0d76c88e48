"""Core ML: layer specs as `.mlpackage` bundles (any OS), measured with coremltools (macOS only).

    python -m lut.build --device coreml --space efficientformer_v2 [--resolution 224] [--out DIR]
                        [--compute-units all|cpu_and_ne|cpu_only] [--widths-subset ...]

converts every distinct spec of the space (`enumerate_specs`) to an ML program (fp16, minimum
deployment target iOS 16) and writes a bundle:

    DIR/manifest.json            schema latnas/coreml-bundle@1: space, resolution, num_classes,
                                 compute units, tools, and per layer key {file, input_shape,
                                 input_name, kind}
    DIR/<safe name>.mlpackage    one per key (file name: the key with unsafe characters replaced,
                                 plus 8 hex digits of its sha1, so two keys never share a file)

Each module is exported with `torch.export.export(module.eval(), (example,))` (not `torch.jit.trace`,
which fails for modules that read shapes in `forward`), decomposed to the ATen dialect and converted
with `coremltools.convert`. A package is written beside its final name and renamed into place, and
the manifest (written atomically) is updated after each one, so an interrupted build re-run with
the same settings converts only what the manifest lacks.

On Linux the command stops after the bundle and says how to measure on a phone (an Xcode Core ML
performance report per package, then `python -m lut.import`). On macOS it then measures each
package with `MLModel(...).predict` through the profiler's timing (warm-up, interleaved runs
against an identity ML program of the same input shape, p10/p50/p90) and writes a table
(`--out` given: `DIR/table.json`; else the device's default table path).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import platform
import re
import shutil
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from search_spaces.command_line import EXIT_OK, UsageError, parse_widths_subset, space_from_args
from search_spaces.files import FileError, check_outputs, parse_json_document, read_input_text, write_text_atomic
from search_spaces.limits import MAX_TABLE_BYTES, NUM_CLASSES, RESOLUTION

from lut.devices import Device, DeviceError, tables_folder
from lut.profiler import Runnable, TimingSettings, net_record, time_interleaved
from lut.table import MAX_NAME_CHARS, LatencyRecord, LatencyTable, TableMetadata, shown

if TYPE_CHECKING:
    from torch import nn

    from search_spaces import LayerSpec, SearchSpace

BUNDLE_SCHEMA = "latnas/coreml-bundle@1"
MANIFEST = "manifest.json"
# --compute-units value -> coremltools.ComputeUnit member
COMPUTE_UNITS = {"all": "ALL", "cpu_and_ne": "CPU_AND_NE", "cpu_only": "CPU_ONLY"}
DEFAULT_COMPUTE_UNITS = "all"
DEPLOYMENT_TARGET = "iOS16"
IS_MACOS = sys.platform == "darwin"

NEEDS_MACOS = (
    "measuring with Core ML needs macOS (coremltools predicts only there); instead build the bundle here "
    "(python -m lut.build --device coreml --space S --out DIR), measure each .mlpackage on the phone "
    "(Xcode Core ML performance report) and import the numbers: python -m lut.import --manifest DIR/manifest.json "
    "--measurements CSV --out TABLE"
)


class BundleError(ValueError):
    """A manifest that cannot be used (missing, damaged, another build's); one-line message."""


# -- coremltools ---------------------------------------------------------------------------------
def coremltools():
    """`import coremltools` without its import-time noise (missing native proxies on Linux,
    untested torch/scikit-learn versions), which it logs as warnings."""
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    try:
        import coremltools as ct
    except ImportError as error:
        raise DeviceError(f"device 'coreml' needs the coremltools package ({error})") from None
    _register_alias_op()
    return ct


def _register_alias_op() -> None:
    """Newer torch.export graphs (torch 2.13) hold `aten.alias` (a view of the whole tensor, e.g.
    the EdgeNeXt SDTA positional encoding), which coremltools 9 does not know; it is the same
    no-op as the `alias_copy`/`clone`/`detach` coremltools already maps to its `noop`."""
    from coremltools.converters.mil.frontend.torch import ops
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY

    if _TORCH_OPS_REGISTRY.get_func("alias") is None:
        _TORCH_OPS_REGISTRY.set_func_by_name(ops.noop, "alias")


def compute_unit(name: str):
    if name not in COMPUTE_UNITS:
        raise UsageError(f"--compute-units: expected one of {', '.join(COMPUTE_UNITS)}, got {name!r}")
    return getattr(coremltools().ComputeUnit, COMPUTE_UNITS[name])


def export_program(module: "nn.Module", input_shape: Sequence[int]):
    """The ATen-dialect `torch.export` program of `module` in eval mode for one fixed input shape."""
    import torch

    example = torch.randn(*input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(module.eval(), (example,))
        return program.run_decompositions({})


def convert_program(program, compute_units: str = DEFAULT_COMPUTE_UNITS, load: bool = IS_MACOS):
    """An fp16 ML program (iOS 16 target) of a torch.export program or a MIL program.

    The model is loaded (compiled) only where Core ML runs (`load`, macOS); coremltools' progress
    bars go to a buffer, not the user's terminal.
    """
    ct = coremltools()
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ct.convert(
            program,
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16,
            minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
            compute_units=compute_unit(compute_units),
            skip_model_load=not load,
        )


def convert_module(module: "nn.Module", input_shape: Sequence[int], compute_units: str = DEFAULT_COMPUTE_UNITS, load: bool = IS_MACOS):
    """`module` (eval mode, fixed input shape) as a Core ML ML program."""
    return convert_program(export_program(module, input_shape), compute_units, load)


def identity_program(input_shape: Sequence[int], compute_units: str = DEFAULT_COMPUTE_UNITS, load: bool = IS_MACOS):
    """The empty model of an input shape: an ML program whose output is its input (fp16 cast round trip)."""
    ct = coremltools()
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=tuple(input_shape))], opset_version=getattr(ct.target, DEPLOYMENT_TARGET))
    def program(input):  # noqa: A002  (the input's name in the model)
        return mb.identity(x=input, name="output")

    return convert_program(program, compute_units, load)


def input_name(mlmodel) -> str:
    return mlmodel.get_spec().description.input[0].name


def predict_runnable(mlmodel, input_shape: Sequence[int]) -> Runnable:
    """One `predict` call on a fixed random input (macOS only)."""
    import numpy as np

    feed = {input_name(mlmodel): np.random.default_rng(0).standard_normal(tuple(input_shape)).astype(np.float32)}
    return lambda: mlmodel.predict(feed)


# -- the device ----------------------------------------------------------------------------------
class CoreMLDevice(Device):
    """Core ML ML programs (fp16, iOS 16 target) run by coremltools on macOS.

    On macOS it measures like any device (`load` converts and compiles a module, `load_empty` an
    identity program; the profiler times `predict`). Elsewhere it cannot measure
    (`availability()` is False with the way round it: build a bundle with `lut.build`, measure on
    the phone, `lut.import`); `lut.build --device coreml` still converts there.
    """

    name = "coreml"
    summary = "Core ML ML program (fp16, iOS 16 target): bundle anywhere, measure on macOS or import phone numbers"
    needs = "coremltools; measuring needs macOS (elsewhere: lut.build writes a bundle, lut.import reads phone numbers)"
    measures = IS_MACOS
    precision = "fp16"

    @staticmethod
    def build_command(args) -> int:
        """`lut.build --device coreml`: the device owns its build (`build_bundle_command`)."""
        return build_bundle_command(args)

    def __init__(
        self, threads: int = 1, batch: int = 1, timing: TimingSettings | None = None, compute_units: str = DEFAULT_COMPUTE_UNITS
    ) -> None:
        super().__init__(threads, batch, timing)
        if compute_units not in COMPUTE_UNITS:
            raise DeviceError(f"coreml: compute units must be one of {', '.join(COMPUTE_UNITS)}, got {compute_units!r}")
        self.compute_units = compute_units

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "compute_units": self.compute_units}

    def availability(self) -> tuple[bool, str]:
        if not IS_MACOS:
            return False, NEEDS_MACOS
        try:
            ct = coremltools()
        except DeviceError as error:
            return False, str(error)
        return True, f"coremltools {ct.__version__}, compute units {self.compute_units}"

    timed_runtime = ("macos", "compute_units")  # Core ML ships with the OS

    def runtime_versions(self) -> dict[str, str]:
        versions = {**super().runtime_versions(), "coreml_target": DEPLOYMENT_TARGET, "compute_units": self.compute_units}
        try:
            versions["coremltools"] = coremltools().__version__
        except DeviceError:
            pass
        if IS_MACOS:
            versions["macos"] = platform.mac_ver()[0]
        return versions

    def table_name(self, space: "SearchSpace | str", resolution: int | None = None) -> str:
        # threads mean nothing to Core ML; the compute units do
        base = super().table_name(space, resolution)
        base = re.sub(r"_t\d+\.json$", ".json", base)
        suffix = "" if self.compute_units == DEFAULT_COMPUTE_UNITS else f"_{self.compute_units}"
        return base[: -len(".json")] + suffix + ".json"

    def load(self, module: "nn.Module", input_shape: tuple[int, ...]) -> Runnable:
        self.require_available()
        return predict_runnable(convert_module(module, input_shape, self.compute_units, load=True), input_shape)

    def load_empty(self, input_shape: tuple[int, ...]) -> Runnable:
        self.require_available()
        return predict_runnable(identity_program(input_shape, self.compute_units, load=True), input_shape)




# -- the bundle ----------------------------------------------------------------------------------
def package_name(key: str) -> str:
    """A file name for a layer key: safe characters only, unique through a short hash of the key."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._")[:120]
    return f"{safe}-{hashlib.sha1(key.encode('utf-8')).hexdigest()[:8]}.mlpackage"


def read_manifest(path: str | Path) -> dict[str, Any]:
    """A bundle manifest (a regular JSON file of at most `MAX_TABLE_BYTES`), checked for its schema
    and for every field `lut.import` turns into a table: a known space at a resolution it runs
    (`RESOLUTION`, a multiple of its stride), `NUM_CLASSES`, known compute units, and per layer key
    a package file name inside the bundle, an input shape and a kind. `BundleError` with one line
    otherwise."""
    from search_spaces.registry import get_space

    path = Path(path)
    try:
        data = parse_json_document(read_input_text(path, "", MAX_TABLE_BYTES), str(path))
    except FileError as error:
        raise BundleError(str(error)) from None
    except ValueError:  # an integer beyond Python's digit limit
        raise BundleError(f"{path}: not valid JSON (a number too long to read)") from None
    if not isinstance(data, dict) or data.get("schema") != BUNDLE_SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise BundleError(f"{path}: schema is {shown(found)}, expected {BUNDLE_SCHEMA!r}")
    required = ("space", "resolution", "num_classes", "compute_units", "packages")
    missing = [name for name in required if name not in data]
    if missing:
        raise BundleError(f"{path}: missing field(s) {missing}")
    try:
        space = get_space(data["space"]) if isinstance(data["space"], str) else None
    except KeyError:
        space = None
    if space is None:
        raise BundleError(f"{path}: space: not a known space, got {shown(data['space'])}")
    for name, allowed in (("resolution", RESOLUTION), ("num_classes", NUM_CLASSES)):
        if data[name] not in allowed:
            raise BundleError(f"{path}: {name}: must be {allowed.describe()}, got {shown(data[name])}")
    if data["resolution"] % space.resolution_multiple:
        raise BundleError(f"{path}: resolution: {space.name} runs multiples of {space.resolution_multiple} px, "
                          f"got {data['resolution']}")
    if data["compute_units"] not in COMPUTE_UNITS:
        raise BundleError(f"{path}: compute_units: expected one of {', '.join(COMPUTE_UNITS)}, got {shown(data['compute_units'])}")
    for name in ("precision", "minimum_deployment_target"):
        if name in data and not (isinstance(data[name], str) and len(data[name]) <= MAX_NAME_CHARS):
            raise BundleError(f"{path}: {name}: expected a string, got {shown(data[name])}")
    if "tools" in data and not isinstance(data["tools"], dict):
        raise BundleError(f"{path}: tools: expected a mapping")
    packages = data["packages"]
    if not isinstance(packages, dict):
        raise BundleError(f"{path}: packages: expected a mapping of layer key to package")
    for key, entry in packages.items():
        where = f"{path}: packages[{key[:80]!r}]"
        if len(key) > MAX_NAME_CHARS:
            raise BundleError(f"{where}: a layer key of at most {MAX_NAME_CHARS} characters")
        if not isinstance(entry, dict) or not {"file", "input_shape", "kind"} <= set(entry):
            raise BundleError(f"{where}: expected file, input_shape, kind")
        file = entry["file"]
        if not isinstance(file, str) or not file or Path(file).name != file or file in (".", ".."):
            raise BundleError(f"{where}: file: expected a package name inside the bundle, got {shown(file)}")
        shape = entry["input_shape"]
        if (not isinstance(shape, list) or not 1 <= len(shape) <= 8
                or not all(isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= 1 << 20 for size in shape)):
            raise BundleError(f"{where}: input_shape: expected 1..8 positive sizes, got {shown(shape)}")
        if not isinstance(entry["kind"], str) or len(entry["kind"]) > MAX_NAME_CHARS:
            raise BundleError(f"{where}: kind: expected a layer kind, got {shown(entry['kind'])}")
    return data


def write_manifest(directory: Path, manifest: Mapping[str, Any]) -> None:
    write_text_atomic(directory / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def existing_manifest(directory: Path, space: str, resolution: int, num_classes: int) -> dict[str, Any]:
    """The manifest a build into `directory` continues (a new, empty one if there is none);
    `UsageError` if `directory` is a file or holds the bundle of another space, resolution or classes."""
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"--out: {directory} is a file; a Core ML bundle is a directory")
    identity = {"space": space, "resolution": resolution, "num_classes": num_classes}
    manifest_path = directory / MANIFEST
    if not manifest_path.exists():
        return {"schema": BUNDLE_SCHEMA, **identity, "packages": {}}
    try:
        manifest = read_manifest(manifest_path)
    except BundleError as error:
        raise UsageError(f"--out: {error}") from None
    theirs = {name: manifest[name] for name in identity}
    if theirs != identity:
        raise UsageError(f"--out: {directory} holds the bundle of {theirs}, not {identity}; use another directory")
    return manifest


def build_bundle(
    space: "SearchSpace",
    resolution: int,
    directory: str | Path,
    *,
    compute_units: str = DEFAULT_COMPUTE_UNITS,
    num_classes: int | None = None,
    widths: Sequence[Sequence[int]] | None = None,
    specs: Mapping[str, "LayerSpec"] | None = None,
    progress: Callable[[int, int], Any] | None = None,
) -> dict[str, Any]:
    """Convert every spec of `space` (or the given `specs`) to a package in `directory`; the manifest.

    Keys already in the manifest whose package exists are skipped (a re-run resumes). A manifest
    of another space, resolution or class count is refused.
    """
    import torch

    from search_spaces import build_layer
    from search_spaces.enumeration import enumerate_specs

    ct = coremltools()
    num_classes = num_classes or space.default_num_classes
    directory = Path(directory)
    manifest = existing_manifest(directory, space.name, resolution, num_classes)
    if specs is None:
        specs = enumerate_specs(space, resolution, num_classes, widths)
    manifest.update(
        compute_units=compute_units,
        precision="fp16",
        minimum_deployment_target=DEPLOYMENT_TARGET,
        exporter="torch.export.export + run_decompositions({}) -> coremltools.convert(mlprogram)",
        tools={"coremltools": ct.__version__, "torch": torch.__version__, "python": platform.python_version()},
        widths_subset=[list(w) for w in widths] if widths else manifest.get("widths_subset"),
    )
    packages: dict[str, Any] = manifest["packages"]
    done = {key for key, entry in packages.items() if key in specs and (directory / entry["file"]).exists()}
    directory.mkdir(parents=True, exist_ok=True)
    write_manifest(directory, manifest)
    if progress:
        progress(len(done), len(specs))
    for key, spec in specs.items():
        if key in done:
            continue
        shape = spec.input_shape(1)
        torch.manual_seed(0)
        mlmodel = convert_module(build_layer(spec), shape, compute_units, load=False)
        file = package_name(key)
        final, partial = directory / file, directory / f".partial-{file}"  # coremltools wants the suffix
        for stale in (final, partial):
            if stale.exists():
                shutil.rmtree(stale)
        mlmodel.save(str(partial))
        partial.rename(final)
        packages[key] = {"file": file, "input_shape": list(shape), "input_name": input_name(mlmodel), "kind": spec.kind}
        write_manifest(directory, manifest)
        if progress:
            progress(1, len(specs))
    return manifest


def measure_bundle(
    directory: str | Path, device: CoreMLDevice, progress: Callable[[int, int], Any] | None = None
) -> LatencyTable:
    """Time every package of a bundle with `predict` (macOS): net of an identity program's call."""
    device.require_available()
    ct = coremltools()
    directory = Path(directory)
    manifest = read_manifest(directory / MANIFEST)
    units = compute_unit(device.compute_units)
    empties: dict[tuple[int, ...], Runnable] = {}
    records: dict[str, LatencyRecord] = {}
    started = time.perf_counter()
    for key, entry in manifest["packages"].items():
        shape = tuple(entry["input_shape"])
        if shape not in empties:
            empties[shape] = predict_runnable(identity_program(shape, device.compute_units, load=True), shape)
        subject = predict_runnable(ct.models.MLModel(str(directory / entry["file"]), compute_units=units), shape)
        records[key] = net_record(*time_interleaved(subject, empties[shape], device.timing))
        if progress:
            progress(1, len(manifest["packages"]))
    metadata = TableMetadata(
        space=manifest["space"],
        resolution=manifest["resolution"],
        num_classes=manifest["num_classes"],
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        build={
            "source": "measured-on-mac",
            "bundle": str(directory),
            "timing": device.timing.to_dict(),
            "specs": len(records),
            "seconds": round(time.perf_counter() - started, 1),
            "profiler": "coremltools MLModel.predict, net of an identity ML program's call, p50 of timed runs",
        },
        **device.metadata_fields(),
    )
    return LatencyTable(metadata, records)


def phone_instructions(directory: Path) -> str:
    return (
        f"Core ML bundle: {directory} ({MANIFEST} + one .mlpackage per layer key). This host cannot run Core ML; to measure on the phone:\n"
        "  1. open each .mlpackage in Xcode (macOS), Performance tab, + : pick the iPhone and compute units, run the report;\n"
        "     note the median prediction time in ms (or script it with coremltools on a Mac: python -m lut.build --device coreml "
        f"--space S --out {directory} measures there);\n"
        "  2. write a CSV with the header key,p50_ms (optionally p10_ms,p90_ms,mean_ms,std_ms,runs), one row per manifest key;\n"
        f"  3. python -m lut.import --manifest {directory / MANIFEST} --measurements CSV --out TABLE.json"
    )


def build_bundle_command(args) -> int:
    """`lut.build --device coreml`: the bundle, then (macOS) the measured table or (elsewhere) how to measure.

    The options a bundle build does not use are refused, not ignored: `--threads` (Core ML has no
    thread setting), `--ray`, `--resume` (a build always continues what DIR holds), `--calibrate`,
    `--seed`, `--wait-quiet`, and off macOS the timing options (nothing is timed here).
    """
    from lut.command_line import TIMING_OPTIONS, LazyProgress, refuse_options, timing_from_args

    refuse_options(args, ("--threads", "--ray", "--resume", "--calibrate", "--seed", "--wait-quiet"),
                   "with --device coreml (conversions run once each and continue what --out holds; measuring "
                   "happens on the Mac or the phone)")
    if not IS_MACOS:
        refuse_options(args, TIMING_OPTIONS, "with --device coreml off macOS: only the bundle is written here")
    space, resolution = space_from_args(args.space, args.resolution)
    widths = parse_widths_subset(space, args.widths_subset) if args.widths_subset else None
    units = args.compute_units or DEFAULT_COMPUTE_UNITS
    try:
        device = CoreMLDevice(timing=timing_from_args(args), compute_units=units)
        coremltools()
    except DeviceError as error:
        raise UsageError(f"--device: {error}") from None
    name = device.table_name(space, resolution)
    directory = Path(args.out) if args.out else tables_folder() / name.replace(".json", ".bundle")
    out = None
    if device.availability()[0]:
        out = directory / "table.json" if args.out else device.default_table_path(space, resolution)
    directory = check_outputs({}, {"--out": directory})["--out"]
    if out is not None:  # the measured table (inside the bundle with --out)
        out = check_outputs({"--out": out})["--out"]
    existing_manifest(directory, space.name, resolution, space.default_num_classes)  # refuse before any progress bar

    converting = LazyProgress(f"coreml convert {space.name}@{resolution}", "spec")
    try:
        manifest = build_bundle(space, resolution, directory, compute_units=units, widths=widths, progress=converting)
    finally:
        converting.close()
    print(f"wrote {directory / MANIFEST} ({len(manifest['packages'])} packages)", file=sys.stderr)
    if out is None:
        print(phone_instructions(directory), file=sys.stderr)
        return EXIT_OK
    measuring = LazyProgress(f"coreml measure {space.name}@{resolution}", "spec")
    try:
        table = measure_bundle(directory, device, measuring)
    finally:
        measuring.close()
    table.save(out)
    print(f"wrote {out} ({len(table)} records, {table.metadata.build['seconds']} s)", file=sys.stderr)
    return EXIT_OK
