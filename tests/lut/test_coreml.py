"""Core ML (issue 6): every layer kind converts on Linux, the bundle / manifest / import round trip,
measuring refused off macOS with one line, bad measurement CSVs refused with one line."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from contextlib import redirect_stderr
from pathlib import Path

import pytest

from tests.cli_support import invoke

pytest.importorskip("coremltools")

from lut import build, coreml, importer, validate  # noqa: E402
from lut.registry import get_device, list_devices  # noqa: E402
from lut.table import load_table  # noqa: E402
from search_spaces import build_layer, get_space, list_spaces  # noqa: E402
from search_spaces.command_line import run_command  # noqa: E402
from search_spaces.enumeration import enumerate_specs  # noqa: E402

RESOLUTION = 64
ROOT = Path(__file__).resolve().parents[2]
off_macos = pytest.mark.skipif(sys.platform == "darwin", reason="on macOS Core ML measures")


def one_spec_per_kind() -> dict[str, object]:
    """For every space: the smallest spec of each layer kind and each setting of its on/off options
    (layout flags, attention downsample, strided attention, positional encoding) at 64 px."""
    chosen: dict[str, object] = {}
    for space_name in list_spaces():
        for spec in enumerate_specs(get_space(space_name), RESOLUTION).values():
            flags = [f"{name}={int(value)}" for name, value in spec.options if isinstance(value, bool)]
            label = f"{space_name}/{':'.join([spec.kind, *flags])}"
            size = spec.in_channels * spec.out_channels * spec.input_size[0] * spec.input_size[1]
            if label not in chosen or size < chosen[label][0]:
                chosen[label] = (size, spec)
    return {label: spec for label, (_, spec) in chosen.items()}


KIND_SPECS = one_spec_per_kind()


def run(module, argv, capsys):
    return invoke(module.main, module.PROG, argv, capsys)


def test_every_space_and_kind_is_covered():
    spaces = {label.split("/")[0] for label in KIND_SPECS}
    assert spaces == set(list_spaces())
    kinds = {spec.kind for spec in KIND_SPECS.values()}
    for space_name in list_spaces():
        assert kinds >= {spec.kind for spec in enumerate_specs(get_space(space_name), RESOLUTION).values()}


@pytest.mark.slow
@pytest.mark.parametrize("label", sorted(KIND_SPECS))
def test_every_layer_kind_converts_to_core_ml(label):
    spec = KIND_SPECS[label]
    shape = spec.input_shape(1)
    mlmodel = coreml.convert_module(build_layer(spec), shape, load=False)
    spec_proto = mlmodel.get_spec()
    assert spec_proto.WhichOneof("Type") == "mlProgram"
    assert list(spec_proto.description.input[0].type.multiArrayType.shape) == list(shape)
    assert spec_proto.specificationVersion >= 7  # iOS 16


def test_coreml_is_registered_and_says_what_it_needs():
    assert "coreml" in list_devices()
    device = get_device("coreml", compute_units="cpu_and_ne")
    assert device.settings()["compute_units"] == "cpu_and_ne"
    assert device.table_name("edgevit", 64) == "coreml_edgevit_r64_cpu_and_ne.json"
    if sys.platform != "darwin":
        usable, reason = device.availability()
        assert not usable and "needs macOS" in reason and "lut.import" in reason


def test_package_names_are_safe_and_distinct():
    keys = sorted({spec.key() for spec in KIND_SPECS.values()})  # hybrid shares V2's stem, downsamples, head
    names = [coreml.package_name(key) for key in keys]
    assert len(set(names)) == len(names)
    for name in names:
        assert name.endswith(".mlpackage") and all(c.isalnum() or c in "._-" for c in name)


# -- the bundle and its round trip -------------------------------------------------------------
TWO = ("edgevit/edgevit.stem", "edgevit/edgevit.head")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A bundle built by the command, with `enumerate_specs` patched to two small edgevit specs."""
    directory = tmp_path_factory.mktemp("bundle") / "edgevit"
    specs = {KIND_SPECS[label].key(): KIND_SPECS[label] for label in TWO}
    patch = pytest.MonkeyPatch()
    patch.setattr("search_spaces.enumeration.enumerate_specs", lambda *args, **kwargs: dict(specs))
    try:
        argv = ["--device", "coreml", "--space", "edgevit", "--resolution", "64", "--out", str(directory), "--compute-units", "cpu_and_ne"]
        stream = io.StringIO()
        with redirect_stderr(stream):
            code = run_command(build.main, argv, prog=build.PROG)
    finally:
        patch.undo()
    assert code == 0, stream.getvalue()
    return directory, stream.getvalue(), specs


@pytest.mark.slow
def test_build_writes_a_bundle_and_says_how_to_measure(bundle):
    directory, err, specs = bundle
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["schema"] == "latnas/coreml-bundle@1"
    assert (manifest["space"], manifest["resolution"], manifest["compute_units"]) == ("edgevit", 64, "cpu_and_ne")
    assert manifest["precision"] == "fp16" and manifest["minimum_deployment_target"] == "iOS16"
    assert set(manifest["packages"]) == set(specs)
    for key, entry in manifest["packages"].items():
        assert (directory / entry["file"] / "Manifest.json").is_file()
        assert entry["kind"] == specs[key].kind
        assert tuple(entry["input_shape"]) == specs[key].input_shape(1)
    if sys.platform != "darwin":
        assert "Xcode" in err and "python -m lut.import --manifest" in err


@pytest.mark.slow
def test_a_second_build_converts_nothing(bundle, monkeypatch, capsys):
    directory, _, specs = bundle
    monkeypatch.setattr("search_spaces.enumeration.enumerate_specs", lambda *args, **kwargs: dict(specs))

    def refuse(*args, **kwargs):
        raise AssertionError("converted a package the manifest already has")

    monkeypatch.setattr(coreml, "convert_module", refuse)
    argv = ["--device", "coreml", "--space", "edgevit", "--resolution", "64", "--out", str(directory), "--compute-units", "cpu_and_ne"]
    code, _, err = run(build, argv, capsys)
    assert code == 0, err
    code, _, err = run(build, ["--device", "coreml", "--space", "edgevit", "--resolution", "96", "--out", str(directory)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "bundle of" in err


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.slow
def test_import_round_trip(bundle, tmp_path, capsys):
    directory, _, specs = bundle
    first, second = specs
    measured = write_csv(
        tmp_path / "measured.csv",
        ["# from the Xcode performance report", "key,p50_ms,p10_ms,p90_ms,runs", f"{first},0.25,0.2,0.3,50", "", f'"{second}",1.5,,,'],
    )
    out = tmp_path / "coreml_edgevit_r64.json"
    code, _, err = run(importer, ["--manifest", str(directory / "manifest.json"), "--measurements", str(measured), "--out", str(out)], capsys)
    assert code == 0, err
    table = load_table(out)
    meta = table.metadata
    assert (meta.device, meta.space, meta.resolution, meta.precision) == ("coreml", "edgevit", 64, "fp16")
    assert meta.build["source"] == "measured-on-device" and meta.runtime["compute_units"] == "cpu_and_ne"
    assert set(table.records) == set(specs)
    assert table.records[first].p50_ms == 0.25 and table.records[first].p90_ms == 0.3 and table.records[first].runs == 50
    assert table.records[second].p10_ms == 1.5 and table.records[second].runs == 0  # defaults for the empty optionals


@pytest.mark.slow
def test_import_runs_as_a_module(bundle, tmp_path):
    directory, _, specs = bundle
    measured = write_csv(tmp_path / "m.csv", ["key,p50_ms", *(f"{key},0.5" for key in specs)])
    out = tmp_path / "table.json"
    argv = ["--manifest", str(directory / "manifest.json"), "--measurements", str(measured), "--out", str(out)]
    result = subprocess.run([sys.executable, "-m", "lut.import", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(load_table(out)) == 2


@pytest.mark.slow
@pytest.mark.parametrize(
    "rows, words",
    [
        (["p50_ms", "0.5"], "missing column(s) ['key']"),
        (["key,p50_ms,latency", "{0},1,2"], "unknown column(s) ['latency']"),
        (["key,p50_ms", "{0},fast", "{1},1"], "line 2: p50_ms is not a number"),
        (["key,p50_ms", "{0},1", "{1},0"], "line 3: p50_ms must be positive"),
        (["key,p50_ms", "{0},-1", "{1},1"], "line 2: p50_ms must be positive"),
        (["key,p50_ms", "{0},nan", "{1},1"], "line 2: p50_ms must be finite"),
        (["key,p50_ms,runs", "{0},1,2.5", "{1},1,3"], "line 2: runs must be a non-negative integer"),
        (["key,p50_ms", "{0},1", "{0},2", "{1},1"], "line 3: key"),
        (["key,p50_ms", "{0},1", "{1},1", "stem:c3-1:hw1x1:s1,1"], "line 4: key 'stem:c3-1:hw1x1:s1' is not in the manifest"),
        (["key,p50_ms", "{0},1"], "1 of 2 manifest key(s) have no measurement: {1}"),
        (["key,p50_ms", "{0},1,3"], "line 2: 3 field(s)"),
        ([], "empty"),
    ],
)
def test_bad_measurements_are_one_line(bundle, tmp_path, capsys, rows, words):
    directory, _, specs = bundle
    keys = list(specs)
    measured = write_csv(tmp_path / "bad.csv", [row.format(*keys) for row in rows])
    out = tmp_path / "table.json"
    code, _, err = run(importer, ["--manifest", str(directory / "manifest.json"), "--measurements", str(measured), "--out", str(out)], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert words.format(*keys) in err
    assert not out.exists()


def test_import_refuses_a_bad_manifest(tmp_path, capsys):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"schema": "something-else"}))
    measured = write_csv(tmp_path / "m.csv", ["key,p50_ms"])
    code, _, err = run(importer, ["--manifest", str(manifest), "--measurements", str(measured), "--out", str(tmp_path / "t.json")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "latnas/coreml-bundle@1" in err


# -- measuring off macOS -------------------------------------------------------------------------
@off_macos
def test_measuring_on_linux_is_one_line_exit_2(capsys):
    code, _, err = run(validate, ["--device", "coreml", "--space", "edgevit", "--resolution", "64", "--samples", "4"], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "needs macOS" in err and "lut.import" in err


@off_macos
def test_measuring_on_linux_refused_from_the_api():
    from lut.devices import DeviceError

    with pytest.raises(DeviceError, match="needs macOS"):
        get_device("coreml").profile(KIND_SPECS["edgevit/edgevit.head"])


def test_compute_units_only_for_coreml(capsys):
    code, _, err = run(build, ["--device", "ort-cpu", "--space", "edgevit", "--compute-units", "all"], capsys)
    assert code == 2 and "only for --device coreml" in err
    code, _, err = run(build, ["--device", "coreml", "--space", "edgevit", "--compute-units", "gpu"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_devices_command_lists_coreml():
    result = subprocess.run([sys.executable, "-m", "lut.devices"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "coreml" in result.stdout, result.stderr
