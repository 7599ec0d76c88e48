"""`nas.export` (issue 8): ONNX / TorchScript / Core ML of found networks match torch, supernet weights
really come from the checkpoint, and bad input is refused with one line and no output left behind."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nas import export
from nas.export import ExportError, build_network, export_network
from search_spaces import Architecture, build_model, count_macs, count_params, get_space
from tests.cli_support import invoke

RESOLUTION = 64
NUM_CLASSES = 10


def found_like(space_name: str, seed: int | None) -> Architecture:
    """The smallest network of a space (seed None) or a seeded sample, at 64 px and 10 classes."""
    space = get_space(space_name)
    if seed is None:
        return space.smallest(RESOLUTION, NUM_CLASSES)
    return space.sample(np.random.default_rng(seed), RESOLUTION, NUM_CLASSES)


def run(argv, capsys) -> tuple[int, str, str]:
    return invoke(export.main, export.PROG, [str(item) for item in argv], capsys)


def seeded_input(shape: tuple[int, ...], seed: int = 7) -> np.ndarray:
    """A random input of our own (not the exporter's check input)."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def torch_output(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


def onnx_output(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: x})
    return output


def relative_difference(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def write_arch(tmp_path: Path, arch: Architecture, name: str = "found.yaml") -> Path:
    path = tmp_path / name
    arch.to_yaml(path)
    return path


# -- formats --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("space_name", "seed"), [("efficientformer_v2", None), ("edgenext", 3), ("edgevit", 5), ("hybrid", 0)],
    ids=["v2-smallest", "edgenext", "edgevit", "hybrid"],
)
def test_onnx_runs_in_onnxruntime_and_matches_torch(tmp_path, capsys, space_name, seed):
    import onnx

    arch = found_like(space_name, seed)
    out, report = tmp_path / "found.onnx", tmp_path / "report.json"
    code, stdout, err = run([write_arch(tmp_path, arch), "--format", "onnx", "--out", out, "--batch", 2, "--report", report], capsys)
    assert code == 0, err
    assert stdout == "" and err.count("\n") == 1 and "max rel diff" in err

    onnx.checker.check_model(str(out))
    torch.manual_seed(0)  # the command's default --seed
    model = build_model(arch)
    x = seeded_input((2, 3, RESOLUTION, RESOLUTION))
    expected = torch_output(model, x)
    actual = onnx_output(out, x)
    assert actual.shape == (2, NUM_CLASSES)
    assert relative_difference(actual, expected) < 1e-4

    document = json.loads(report.read_text())
    assert document["format"] == "onnx" and document["path"] == str(out)
    assert document["input_shape"] == [2, 3, RESOLUTION, RESOLUTION] and document["output_shape"] == [2, NUM_CLASSES]
    assert document["params"] == count_params(arch) == sum(p.numel() for p in model.parameters())
    assert document["macs"] == count_macs(arch)
    assert document["weights"] == "random-init seed 0" and document["checkpoint"] is None
    assert document["file_size_bytes"] == out.stat().st_size
    assert 0 <= document["max_rel_diff"] <= 1e-4 and document["max_abs_diff"] >= 0
    assert document["bn_recalibration_batches"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["found.onnx", "found.yaml", "report.json"]  # no temporaries


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_round_trip_matches_torch(tmp_path, capsys):
    arch = found_like("edgenext", 1)
    out = tmp_path / "found.pt"
    code, _, err = run([write_arch(tmp_path, arch), "--format", "torchscript", "--out", out, "--seed", 4], capsys)
    assert code == 0, err
    torch.manual_seed(4)
    expected_model = build_model(arch)
    loaded = torch.jit.load(str(out))
    x = seeded_input((1, 3, RESOLUTION, RESOLUTION))
    assert relative_difference(torch_output(loaded, x), torch_output(expected_model, x)) < 1e-4
    assert "weights random-init seed 4" in err


def test_resolution_option_sets_the_input_shape(tmp_path, capsys):
    arch = found_like("efficientformer_v2", None)  # written at 64 px
    out, report = tmp_path / "found.onnx", tmp_path / "report.json"
    code, _, err = run([write_arch(tmp_path, arch), "--format", "onnx", "--out", out, "--resolution", 96, "--report", report], capsys)
    assert code == 0, err
    document = json.loads(report.read_text())
    assert document["input_shape"] == [1, 3, 96, 96] and document["architecture"]["resolution"] == 96
    assert onnx_output(out, seeded_input((1, 3, 96, 96))).shape == (1, NUM_CLASSES)


@pytest.mark.slow
def test_coreml_package_is_written_on_any_os(tmp_path, capsys):
    pytest.importorskip("coremltools")
    arch = found_like("efficientformer_v2", None)
    out, report = tmp_path / "found.mlpackage", tmp_path / "report.json"
    code, _, err = run([write_arch(tmp_path, arch), "--format", "coreml", "--out", out, "--report", report], capsys)
    assert code == 0, err
    assert out.is_dir() and (out / "Manifest.json").is_file()
    document = json.loads(report.read_text())
    assert document["format"] == "coreml" and document["output_shape"] == [1, NUM_CLASSES]
    assert document["file_size_bytes"] == sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    if sys.platform != "darwin":
        assert document["numerics"] == "not checked (Core ML runs on macOS only)"
        assert document["max_rel_diff"] is None
    else:
        assert document["max_rel_diff"] <= 1e-2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["found.mlpackage", "found.yaml", "report.json"]


# -- supernet weights -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, object]:
    """A v2 supernet (64 px, 10 classes) whose weights are not any seed's random init, saved."""
    from supernet import Supernet

    torch.manual_seed(11)
    net = Supernet.from_space("efficientformer_v2", num_classes=NUM_CLASSES, resolution=RESOLUTION)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    path = tmp_path_factory.mktemp("supernet") / "v2.pt"
    net.save(path)
    return path, net.eval()


def test_supernet_export_carries_the_checkpoint_weights(tmp_path, capsys, checkpoint):
    path, net = checkpoint
    space = get_space("efficientformer_v2")
    arch = space.sample(np.random.default_rng(2))  # written at the space's 224 px / 1000 classes
    out, report = tmp_path / "found.onnx", tmp_path / "report.json"
    code, _, err = run([write_arch(tmp_path, arch), "--supernet", path, "--format", "onnx", "--out", out, "--report", report], capsys)
    assert code == 0, err
    warning = [line for line in err.splitlines() if "warning" in line]  # no training step updated this checkpoint's norms
    assert len(warning) == 1 and "no training step" in warning[0] and "--recalibrate" in warning[0]

    fitted = net.fit(arch)
    x = seeded_input((1, 3, RESOLUTION, RESOLUTION))
    expected = torch_output(net.extract(fitted), x)
    actual = onnx_output(out, x)
    assert relative_difference(actual, expected) < 1e-4
    torch.manual_seed(0)
    random_init = torch_output(build_model(fitted), x)
    assert relative_difference(actual, random_init) > 1e-2  # not the random-init network

    document = json.loads(report.read_text())
    assert document["weights"] == "checkpoint"
    assert document["checkpoint"] == {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert document["architecture"]["resolution"] == RESOLUTION and document["architecture"]["num_classes"] == NUM_CLASSES
    assert document["input_shape"] == [1, 3, RESOLUTION, RESOLUTION]


def test_recalibration_re_estimates_batchnorm_statistics(tmp_path, capsys, checkpoint, monkeypatch):
    from supernet import Supernet
    from supernet.data import DataError

    path, net = checkpoint
    # loading the checkpoint takes seconds and is covered above; here the fixture's supernet stands in
    monkeypatch.setattr(Supernet, "load", classmethod(lambda cls, file, space=None: net))
    arch = found_like("efficientformer_v2", None)
    model, fitted = build_network(arch, path, data="synthetic:64", recalibrate=1)
    again, _ = build_network(arch, path, data="synthetic:64", recalibrate=1)
    with pytest.raises(DataError, match="5 recalibration batches"):
        build_network(arch, path, data="synthetic:64", recalibrate=5)  # 64 images are one batch
    assert fitted == arch
    running = [m.running_mean for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    stored = [m.running_mean for m in net.extract(arch).modules() if isinstance(m, nn.BatchNorm2d)]
    assert running and len(running) == len(stored)
    assert not all(torch.allclose(a, b) for a, b in zip(running, stored))
    x = seeded_input((1, 3, RESOLUTION, RESOLUTION))
    np.testing.assert_array_equal(torch_output(model, x), torch_output(again, x))  # seeded data order

    out, report = tmp_path / "found.onnx", tmp_path / "report.json"
    argv = [write_arch(tmp_path, arch), "--supernet", path, "--data", "synthetic:64", "--recalibrate", 1]
    code, _, err = run([*argv, "--format", "onnx", "--out", out, "--report", report], capsys)
    assert code == 0, err
    assert "warning" not in err  # every statistic is estimated
    assert relative_difference(onnx_output(out, x), torch_output(model, x)) < 1e-4
    document = json.loads(report.read_text())
    assert document["bn_recalibration_batches"] == 1 and document["data"] == "synthetic:64"

    code, _, err = run([*argv[:-1], 5, "--format", "onnx", "--out", tmp_path / "more.onnx"], capsys)
    assert code == 2 and err.count("\n") == 1 and "5 recalibration batches" in err
    assert not (tmp_path / "more.onnx").exists()


def test_supernet_of_another_space_is_refused(tmp_path, capsys, checkpoint):
    path, _ = checkpoint
    other = write_arch(tmp_path, found_like("edgenext", None))
    out = tmp_path / "found.onnx"
    code, _, err = run([other, "--supernet", path, "--format", "onnx", "--out", out], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "'efficientformer_v2', not 'edgenext'" in err and "Traceback" not in err
    assert not out.exists()


def test_resolution_other_than_the_supernets_is_refused_before_building(tmp_path, capsys):
    from supernet.supernet import CHECKPOINT_FORMAT

    # the header fields are all the check reads (a full v2 checkpoint takes seconds to read)
    header = {"format": CHECKPOINT_FORMAT, "space": "efficientformer_v2", "resolution": 64, "num_classes": 10, "state_dict": {}}
    path = tmp_path / "header-only.pt"
    torch.save(header, path)
    v2 = write_arch(tmp_path, found_like("efficientformer_v2", None))
    out = tmp_path / "found.onnx"
    code, _, err = run([v2, "--supernet", path, "--format", "onnx", "--out", out, "--resolution", 128], capsys)
    assert code == 2 and err.count("\n") == 1 and "--resolution 128" in err and "built for 64" in err
    assert not out.exists()


# -- numerics failures and the library API -------------------------------------------------------
class Noisy(nn.Module):
    """Adds fresh noise per call: no exported copy can reproduce torch's output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.rand_like(x)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_mismatching_export_fails_and_writes_nothing(tmp_path, fmt):
    out = tmp_path / f"noisy.{fmt}"
    with pytest.raises(ExportError, match=f"{fmt} output differs from torch: max relative diff"):
        export_network(Noisy(), fmt, out, (1, 3, 8, 8))
    assert list(tmp_path.iterdir()) == []


def test_command_exits_1_without_output_or_report_when_numerics_differ(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(export.TOLERANCE, "onnx", -1.0)  # no difference can pass: the failure path runs
    out, report = tmp_path / "found.onnx", tmp_path / "report.json"
    code, _, err = run([write_arch(tmp_path, found_like("efficientformer_v2", None)), "--format", "onnx", "--out", out, "--report", report], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "onnx output differs from torch" in err and "not written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["found.yaml"]


class FakePackage:
    """Stands in for a converted Core ML model: `save` writes a package folder (or fails)."""

    def __init__(self, marker: str, fail: bool = False) -> None:
        self.marker, self.fail = marker, fail

    def save(self, path: str) -> None:
        Path(path).mkdir()
        (Path(path) / "Manifest.json").write_text(self.marker)
        if self.fail:
            raise OSError(28, "No space left on device")


def test_package_write_replaces_an_old_package_and_keeps_it_on_failure(tmp_path):
    out = tmp_path / "found.mlpackage"
    export._write_package_atomic(out, FakePackage("first"))
    size = export._write_package_atomic(out, FakePackage("second"))
    assert (out / "Manifest.json").read_text() == "second" and size == len("second")
    with pytest.raises(ExportError, match="No space left"):
        export._write_package_atomic(out, FakePackage("third", fail=True))
    assert (out / "Manifest.json").read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["found.mlpackage"]  # no staging folder left


def test_export_network_reports_what_it_wrote(tmp_path):
    torch.manual_seed(0)
    model = build_model(found_like("efficientformer_v2", None))
    report = export_network(model, "torchscript", tmp_path / "net.pt", (1, 3, RESOLUTION, RESOLUTION))
    assert report.format == "torchscript" and report.path == str(tmp_path / "net.pt")
    assert report.input_shape == (1, 3, RESOLUTION, RESOLUTION) and report.output_shape == (1, NUM_CLASSES)
    assert report.file_size_bytes == (tmp_path / "net.pt").stat().st_size
    assert report.max_rel_diff is not None and report.max_rel_diff <= report.tolerance
    with pytest.raises(ValueError, match="accepted: onnx, coreml, torchscript"):
        export_network(model, "tflite", tmp_path / "net.tflite", (1, 3, RESOLUTION, RESOLUTION))
    with pytest.raises(ValueError, match=".mlpackage"):
        export_network(model, "coreml", tmp_path / "net.onnx", (1, 3, RESOLUTION, RESOLUTION))


def test_build_network_is_seeded_and_refuses_recalibration_without_a_supernet():
    arch = found_like("edgevit", None)
    first, _ = build_network(arch, seed=3)
    second, _ = build_network(arch, seed=3)
    third, _ = build_network(arch, seed=4)
    x = seeded_input((1, 3, RESOLUTION, RESOLUTION))
    np.testing.assert_array_equal(torch_output(first, x), torch_output(second, x))
    assert not np.array_equal(torch_output(first, x), torch_output(third, x))
    with pytest.raises(ValueError, match="needs a supernet"):
        build_network(arch, data="synthetic", recalibrate=1)


# -- bad input ------------------------------------------------------------------------------------
CORRUPT_YAML = "schema: latnas/architecture@1\nspace: [unclosed\n"


def bad_width(arch: Architecture) -> str:
    text = arch.to_yaml()
    return text.replace(f"width: {arch.stages[0].width}", "width: 33", 1)


BAD_INPUT = {
    # name: (argv after the arch file, text of the arch file or None for the good one, words in the error)
    "unknown format": (["--format", "tflite", "--out", "OUT/x.tflite"], None, ["--format", "'onnx', 'coreml', 'torchscript'"]),
    "missing arch file": (["--format", "onnx", "--out", "OUT/x.onnx"], "MISSING", ["no such file"]),
    "corrupt yaml": (["--format", "onnx", "--out", "OUT/x.onnx"], CORRUPT_YAML, ["malformed YAML"]),
    "width outside the space": (["--format", "onnx", "--out", "OUT/x.onnx"], "BAD_WIDTH", ["stages[0].width", "33"]),
    "onnx name for coreml": (["--format", "coreml", "--out", "OUT/x.onnx"], None, ["--out", ".mlpackage"]),
    "recalibrate without supernet": (["--format", "onnx", "--out", "OUT/x.onnx", "--recalibrate", "2"], None, ["--recalibrate", "--supernet"]),
    "recalibrate without data": (
        ["--format", "onnx", "--out", "OUT/x.onnx", "--recalibrate", "2", "--supernet", "OUT/../ckpt.pt"], None, ["--recalibrate", "--data"]
    ),
    "data without recalibrate": (["--format", "onnx", "--out", "OUT/x.onnx", "--data", "digits"], None, ["--data", "--recalibrate"]),
    "missing checkpoint": (["--format", "onnx", "--out", "OUT/x.onnx", "--supernet", "OUT/none.pt"], None, ["--supernet", "no such"]),
    "resolution not in the space": (["--format", "onnx", "--out", "OUT/x.onnx", "--resolution", "100"], None, ["--resolution", "multiple of 32"]),
    "zero batch": (["--format", "onnx", "--out", "OUT/x.onnx", "--batch", "0"], None, ["--batch", "1..256"]),
    "out under a file": (["--format", "onnx", "--out", "OUT/../found.yaml/x.onnx"], None, ["--out", "not a directory"]),
    "out is a directory": (["--format", "torchscript", "--out", "OUT"], None, ["--out", "is a directory"]),
    "report under a file": (["--format", "onnx", "--out", "OUT/x.onnx", "--report", "OUT/../found.yaml/r.json"], None, ["--report"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, capsys, case):
    options, arch_text, words = BAD_INPUT[case]
    arch = found_like("efficientformer_v2", None)
    arch_file = write_arch(tmp_path, arch)
    if arch_text == "MISSING":
        arch_file = tmp_path / "missing.yaml"
    elif arch_text == "BAD_WIDTH":
        arch_file.write_text(bad_width(arch))
    elif arch_text is not None:
        arch_file.write_text(arch_text)
    (tmp_path / "ckpt.pt").write_bytes(b"not used: the command refuses before reading it")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    argv = [arch_file, *[item.replace("OUT", str(out_dir)) for item in options]]
    code, stdout, err = run(argv, capsys)
    assert code == 2, err
    assert stdout == "" and err.count("\n") == 1 and "Traceback" not in err
    assert all(word in err for word in words), err
    assert list(out_dir.iterdir()) == []
