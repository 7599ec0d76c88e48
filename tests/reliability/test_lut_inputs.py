"""The reliability corpus of `python -m lut.build`, `lut.validate`, `lut.import` and `lut.predict`:
hostile inputs of every kind issue 19 lists (numbers out of range, files that are not files or are
nested too deep, CSV fields too long, CSV rows naming files outside, tables whose checksum was
recomputed after editing, outputs that must not be replaced, flags that contradict each other, Ray
addresses where nothing answers), each refused by the contract: exit 2, one line, no traceback,
every pre-existing output and every input byte-identical. Nothing here measures: the refusals come
before any work, and the tables are tiny analytic (iphone12) ones."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import lut.build
import lut.importer
import lut.predict
import lut.validate
from lut.build import Journal, journal_path
from lut.command_line import device_from_args, parse_widths_subset
from lut.coreml import BUNDLE_SCHEMA
from lut.registry import get_device
from lut.table import content_sha256
from search_spaces import get_space
from search_spaces.limits import MAX_TABLE_BYTES
from tests.reliability.harness import (
    assert_refused,
    check_one_line,
    run_module,
    snapshot,
)

ROOT = Path(__file__).resolve().parents[2]
V224 = ROOT / "lut" / "tables" / "iphone12_edgevit_r224.json"
EARLIER = "an earlier table\n"
SECRET = "root:x:0:0:SECRET-OF-THE-HOST:/root:/bin/bash"
#: the shared inputs no case may change
SHARED = ("iphone12.json", "iphone12_r224.json", "arch.yaml", "manifest.json", "measured.csv", "networks.csv")
EDGEVIT_SUBSET = ("36", "72", "144", "288")
V2_SUBSET = ("24", "40", "80", "160")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder of valid and hostile inputs shared by every case (none of them writes here)."""
    root = tmp_path_factory.mktemp("hostile")
    space = get_space("edgevit")
    widths = [(int(width),) for width in EDGEVIT_SUBSET]
    table = lut.build.build_table(get_device("iphone12"), space, 64, root / "iphone12.json", widths=widths)
    shutil.copy(V224, root / "iphone12_r224.json")
    reference = space.reference("xxs")
    reference.__class__(reference.space, 64, 1000, reference.stages).to_yaml(root / "arch.yaml")
    text = (root / "arch.yaml").read_text()
    (root / "huge_resolution.yaml").write_text(text.replace("resolution: 64", "resolution: 1000000000"))
    (root / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (root / "deep.yaml").write_text("[" * 100_000 + "]" * 100_000)
    (root / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    (root / "long_number.json").write_text('{"schema": "latnas/lut@1", "resolution": 1' + "0" * 5000 + "}")
    with open(root / "oversize.json", "wb") as stream:
        stream.truncate(MAX_TABLE_BYTES + 1)  # sparse: nothing on disk
    os.mkfifo(root / "fifo")
    (root / "folder").mkdir()
    keys = list(table.records)
    manifest = {"schema": BUNDLE_SCHEMA, "space": "edgevit", "resolution": 64, "num_classes": 1000, "compute_units": "all",
                "packages": {key: {"file": f"k{index}.mlpackage", "input_shape": [1, 3, 64, 64], "kind": key.split(":")[0]}
                             for index, key in enumerate(keys)}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "measured.csv").write_text("key,p50_ms\n" + "".join(f"{key},0.5\n" for key in keys))
    (root / "networks.csv").write_text("architecture,measured_ms\nref:xxs,2.4\nref:xs,3.6\nref:s,4.6\n")
    return root


# --- makers of hostile files, in the case's own folder ------------------------------------------------------------

def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _symlink(path: Path, target: Path) -> Path:
    path.symlink_to(target)
    return path


def _text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _forged_table(source: Path, target: Path, edit: Callable[[dict], None], recompute: bool = True) -> Path:
    """`source` edited by `edit`, its sha256 recomputed the way `lut.table` computes it: the checksum
    passes, so the table must be refused on its meaning."""
    data = json.loads(source.read_text())
    edit(data)
    if recompute:
        data["sha256"] = content_sha256({name: data[name] for name in ("schema", "metadata", "calibration", "records")})
    target.write_text(json.dumps(data, indent=1, sort_keys=True, allow_nan=True))
    return target


def _records(data: dict) -> list[dict]:
    return list(data["records"].values())


def _set_all(field: str, value: float) -> Callable[[dict], None]:
    return lambda data: [record.__setitem__(field, value) for record in _records(data)]


def _all_zero(data: dict) -> None:
    for record in _records(data):
        record.update(p50_ms=0.0, p10_ms=0.0, p90_ms=0.0, mean_ms=0.0, std_ms=0.0)


def _p10_above_p90(data: dict) -> None:
    _records(data)[0].update(p10_ms=5.0, p50_ms=1.0, p90_ms=0.5)


FORGERIES: dict[str, Callable[[dict], None]] = {
    "negative-intercept": lambda data: data["calibration"].__setitem__("intercept_ms", -99.492),
    "negative-scale": lambda data: data["calibration"].__setitem__("scales", {"lgl": -0.149}),
    "zero-scale": lambda data: data["calibration"].__setitem__("scales", {"lgl": 0.0}),
    "records-1e308": _set_all("p50_ms", 1e308),
    "records-all-zero": _all_zero,
    "records-p10-above-p90": _p10_above_p90,
    "records-negative-std": _set_all("std_ms", -1.0),
    "records-runs-negative": _set_all("runs", -3),
    "resolution-negative": lambda data: data["metadata"].__setitem__("resolution", -1),
    "classes-a-word": lambda data: data["metadata"].__setitem__("num_classes", "ten"),
    "threads-zero": lambda data: data["metadata"].__setitem__("threads", 0),
    "space-unknown": lambda data: data["metadata"].__setitem__("space", "mobilenet"),
}


def _forged(name: str) -> Callable[[Path, Path], Path]:
    return lambda d, f: _forged_table(d / "iphone12.json", f / f"{name}.json", FORGERIES[name])


def _long_field_csv(path: Path, header: str, length: int, rest: str) -> Path:
    """A CSV whose second line has a first field of `length` characters (quoted, so it is one field)."""
    return _text(path, f'{header}\n"{"x" * length}",{rest}\n')


def _passwd_relative(f: Path) -> Path:
    """A CSV in f/a/b/c naming ../../../etc/passwd, which is f/etc/passwd: a file of secrets."""
    _text(f / "etc" / "passwd", SECRET + "\n" + "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    return _text(f / "a" / "b" / "c" / "networks.csv", "architecture,measured_ms\n../../../etc/passwd,1.0\nref:xxs,2.4\n")


def _journal(f: Path, lines: list[str], identity: dict | None = None) -> Path:
    """A journal beside f/table.json, headed by the identity the BUILD command line gives (or `identity`)."""
    if identity is None:
        args = lut.build.build_parser().parse_args(_build_argv(f))
        space = get_space("efficientformer_v2")
        identity = {"device": "ort-cpu", "settings": device_from_args(args).settings(), "space": space.name,
                    "resolution": 64, "num_classes": space.default_num_classes,
                    "widths": [list(w) for w in parse_widths_subset(space, list(V2_SUBSET))]}
    path = journal_path(f / "table.json")
    Journal(path, identity).start()
    with open(path, "a") as stream:
        stream.writelines(line + "\n" for line in lines)
    return path


def _given(argv: list[str], *prepared: object) -> list[str]:
    """`argv`, once the files a case needs (`prepared`, made while calling) are in place."""
    return argv


def _free_port() -> int:
    with socket.socket() as probe:  # a free port: nothing listens on it
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


RECORD = {"p50_ms": 1.0, "p10_ms": 1.0, "p90_ms": 1.0, "mean_ms": 1.0, "std_ms": 0.0, "runs": 3}


def _refused(main, prog, argv, d: Path, f: Path, capsys, words: str) -> str:
    """The contract for one in-process case: the case's folder and the shared inputs unchanged."""
    started = time.monotonic()
    line = assert_refused(main, prog, argv, capsys, keep=[f, *(d / name for name in SHARED)], match=words)
    assert time.monotonic() - started < 20, "a refusal must not take long"
    assert len(line) < 600 and SECRET not in line and "SECRET" not in line
    return line


@pytest.fixture
def case_folder(tmp_path) -> Path:
    """The case's own folder, holding an earlier table where the commands write (`table.json`)."""
    folder = tmp_path / "case"
    folder.mkdir()
    (folder / "table.json").write_text(EARLIER)
    return folder


# --- lut.build ----------------------------------------------------------------------------------------------------

def _build_argv(f: Path, *extra: object) -> list[str]:
    return ["--device", "ort-cpu", "--space", "efficientformer_v2", "--resolution", "64", "--widths-subset", *V2_SUBSET,
            "--runs", "3", "--warmup", "1", "--budget", "0.001", "--calibrate", "0", "--out", str(f / "table.json"),
            *map(str, extra)]


def _iphone_build_argv(f: Path, *extra: object) -> list[str]:
    return ["--device", "iphone12", "--space", "edgevit", "--resolution", "64", "--out", str(f / "table.json"),
            *map(str, extra)]


BUILD_CASES: dict[str, tuple[Callable[[Path, Path], list[str]], str]] = {
    # numbers out of range
    "threads-huge": (lambda d, f: _build_argv(f, "--threads", "100000"), "--threads: must be an integer in 1.."),
    "threads-zero": (lambda d, f: _build_argv(f, "--threads", "0"), "--threads: must be an integer in 1.."),
    "resolution-huge": (lambda d, f: _build_argv(f, "--resolution", "100000"), "--resolution: must be an integer in 16..1024"),
    "resolution-not-a-multiple": (lambda d, f: _build_argv(f, "--resolution", "48"),
                                  "--resolution: must be a positive multiple"),
    "seed-overflow": (lambda d, f: _build_argv(f, "--calibrate", "3", "--seed", "99999999999999999999999"),
                      "--seed: must be an integer in 0..4294967295"),
    "seed-with-calibrate-0": (lambda d, f: _build_argv(f, "--seed", "3"), "--seed: not used with --calibrate 0"),
    "calibrate-one": (lambda d, f: _build_argv(f, "--calibrate", "1"), "--calibrate: must be 0 (no calibration) or 2.."),
    "calibrate-huge": (lambda d, f: _build_argv(f, "--calibrate", "1000000000000"), "--calibrate: must be an integer"),
    "calibrate-negative": (lambda d, f: _build_argv(f, "--calibrate=-2"), "--calibrate"),
    "runs-huge": (lambda d, f: _build_argv(f, "--runs", "99999999999999999999"), "--runs: must be an integer in 1..100000"),
    "runs-zero": (lambda d, f: _build_argv(f, "--runs", "0"), "--runs"),
    "warmup-huge": (lambda d, f: _build_argv(f, "--warmup", "100000000"), "--warmup: must be an integer"),
    "warmup-negative": (lambda d, f: _build_argv(f, "--warmup=-1"), "--warmup"),
    "budget-inf": (lambda d, f: _build_argv(f, "--budget", "inf"), "--budget"),
    "budget-nan": (lambda d, f: _build_argv(f, "--budget", "nan"), "--budget"),
    "wait-quiet-huge": (lambda d, f: _build_argv(f, "--wait-quiet", "99999999999"), "--wait-quiet: must be an integer"),
    "widths-subset-off-the-space": (lambda d, f: _build_argv(f, "--widths-subset", "99999999999999999999", "40", "80", "160"),
                                    "--widths-subset: stage 1"),
    "widths-subset-one-stage": (lambda d, f: _build_argv(f, "--widths-subset", "24"), "--widths-subset"),
    # outputs that must not be replaced
    "out-folder": (lambda d, f: _build_argv(f, "--out", _folder(f / "tables")), "is a directory, expected a file path"),
    "out-fifo": (lambda d, f: _build_argv(f, "--out", _fifo(f / "out.fifo")), "is a FIFO; refusing to replace it"),
    "out-below-a-file": (lambda d, f: _build_argv(f, "--out", f / "table.json" / "t.json"), "is not a directory"),
    "journal-is-a-folder": (lambda d, f: _given(_build_argv(f), _folder(journal_path(f / "table.json"))), "is a directory"),
    "journal-is-a-fifo": (lambda d, f: _given(_build_argv(f), _fifo(journal_path(f / "table.json"))), "is a FIFO"),
    "journal-without-resume": (lambda d, f: _given(_build_argv(f), _journal(f, [])),
                               "exists (an unfinished build); pass --resume"),
    "journal-of-another-build": (lambda d, f: _given(_build_argv(f, "--resume"), _journal(f, [], {"device": "x"})),
                                 "belongs to a different build"),
    "journal-record-1e308": (lambda d, f: _given(_build_argv(f, "--resume"), _journal(f, [
        json.dumps({"key": "stem", "record": {**RECORD, "p50_ms": 1e308, "p90_ms": 1e308}}), "{}"])),
                             "must be a number in [0, 1e+06] ms"),
    "journal-record-p10-above-p90": (lambda d, f: _given(_build_argv(f, "--resume"), _journal(f, [
        json.dumps({"key": "stem", "record": {**RECORD, "p10_ms": 9.0}}), "{}"])), "p10_ms <= p50_ms <= p90_ms"),
    "journal-line-nested-deep": (lambda d, f: _given(_build_argv(f, "--resume"), _journal(f, [
        "[" * 100_000 + "]" * 100_000, "{}"])), "line 2 is damaged"),
    # flags that contradict each other or would be ignored
    "iphone12-with-threads": (lambda d, f: _iphone_build_argv(f, "--threads", "1"),
                              "--threads: not used with --device iphone12"),
    "iphone12-with-calibrate": (lambda d, f: _iphone_build_argv(f, "--calibrate", "3"),
                                "--calibrate: not used with --device iphone12"),
    "iphone12-with-resume": (lambda d, f: _iphone_build_argv(f, "--resume"), "--resume: not used with --device iphone12"),
    "iphone12-with-ray": (lambda d, f: _iphone_build_argv(f, "--ray"), "--ray: not used with --device iphone12"),
    "compute-units-without-coreml": (lambda d, f: _build_argv(f, "--compute-units", "all"),
                                     "--compute-units: only for --device coreml"),
    "unknown-device": (lambda d, f: [*_build_argv(f), "--device", "pixel99"], "--device: unknown device 'pixel99'"),
    # a Ray address that does not answer: one line, at once
    "ray-address-bad-ip": (lambda d, f: _build_argv(f, "--ray", "256.1.1.1:1"), "--ray: '256.1.1.1' is not an IP address"),
    "ray-address-bad-port": (lambda d, f: _build_argv(f, "--ray", "127.0.0.1:99999"), "--ray: expected HOST:PORT"),
    "ray-address-nothing-listens": (lambda d, f: _build_argv(f, "--ray", f"127.0.0.1:{_free_port()}"),
                                    "--ray: no Ray cluster answers at 127.0.0.1"),
}


@pytest.mark.parametrize("case", list(BUILD_CASES))
def test_build_refuses(case, inputs, case_folder, capsys):
    make, words = BUILD_CASES[case]
    argv = make(inputs, case_folder)
    _refused(lut.build.main, lut.build.PROG, argv, inputs, case_folder, capsys, words)


# --- lut.validate -------------------------------------------------------------------------------------------------

def _validate_argv(*extra: object) -> list[str]:
    """Measuring validation on ort-cpu: every case is refused before a network is measured."""
    return ["--device", "ort-cpu", "--space", "edgevit", "--resolution", "64", "--samples", "4", *map(str, extra)]


def _measured_argv(d: Path, csv: Path | str, *extra: object, lut_file: Path | None = None) -> list[str]:
    """Validation against networks measured elsewhere (nothing measured here) of the 64 px iphone12 table."""
    return ["--device", "iphone12", "--space", "edgevit", "--resolution", "64", "--lut", str(lut_file or d / "iphone12.json"),
            "--measurements", str(csv), *map(str, extra)]


def _networks(f: Path, rows: str) -> Path:
    """A `lut.validate --measurements` CSV of `rows` in the case's folder."""
    return _text(f / "networks.csv", "architecture,measured_ms\n" + rows)


def _refit_argv(f: Path, d: Path, rows: str) -> list[str]:
    """--refit of a copy of the full 224 px iphone12 table (the output a refused refit must leave alone)."""
    table = f / "table.json"
    shutil.copy(d / "iphone12_r224.json", table)
    csv = _networks(f, rows)
    return ["--device", "iphone12", "--space", "edgevit", "--lut", str(table), "--measurements", str(csv), "--refit"]


VALIDATE_CASES: dict[str, tuple[Callable[[Path, Path], list[str]], str]] = {
    # numbers out of range
    "threads-huge": (lambda d, f: _validate_argv("--threads", "100000"), "--threads: must be an integer in 1.."),
    "threads-zero": (lambda d, f: _validate_argv("--threads", "0"), "--threads: must be an integer in 1.."),
    "resolution-huge": (lambda d, f: _validate_argv("--resolution", "100000"), "--resolution: must be an integer in 16..1024"),
    "seed-overflow": (lambda d, f: _validate_argv("--seed", "99999999999999999999999"), "--seed: must be an integer in 0.."),
    "samples-zero": (lambda d, f: _validate_argv("--samples", "0"), "--samples: must be an integer in 1..100000"),
    "samples-huge": (lambda d, f: _validate_argv("--samples", "1000000000000"), "--samples: must be an integer in 1..100000"),
    "runs-huge": (lambda d, f: _validate_argv("--runs", "1000000000"), "--runs: must be an integer in 1..100000"),
    "warmup-negative": (lambda d, f: _validate_argv("--warmup=-5"), "--warmup"),
    "budget-inf": (lambda d, f: _validate_argv("--budget", "1e309"), "--budget"),
    # tables that are not files, too deep, too big, or forged with a recomputed checksum
    "lut-folder": (lambda d, f: _validate_argv("--lut", d / "folder"), "is a directory, expected a file"),
    "lut-deep": (lambda d, f: _validate_argv("--lut", d / "deep.json"), "nested deeper than"),
    "lut-oversize": (lambda d, f: _validate_argv("--lut", d / "oversize.json"), "more than the"),
    "lut-forged-negative-intercept": (lambda d, f: _measured_argv(d, d / "networks.csv",
                                                                  lut_file=_forged("negative-intercept")(d, f)),
                                      "predictions must stay positive"),
    "lut-forged-p10-above-p90": (lambda d, f: _measured_argv(d, d / "networks.csv",
                                                             lut_file=_forged("records-p10-above-p90")(d, f)),
                                 "p10_ms <= p50_ms <= p90_ms"),
    "device-and-foreign-lut": (lambda d, f: _validate_argv("--lut", d / "iphone12.json"),
                               "--lut: the table is for iphone12 edgevit@64, not ort-cpu edgevit@64"),
    # measurement CSVs: not files, fields too long, rows naming files outside, numbers that are no measurement
    "measurements-folder": (lambda d, f: _measured_argv(d, d / "folder"), "is a directory, expected a file"),
    "measurements-binary": (lambda d, f: _measured_argv(d, d / "binary.json"), "not UTF-8 text"),
    "measurements-field-over-csv-limit": (lambda d, f: _measured_argv(d, _long_field_csv(
        f / "long.csv", "architecture,measured_ms", 140_000, "1.0")), "line 2"),
    "measurements-field-over-our-limit": (lambda d, f: _measured_argv(d, _long_field_csv(
        f / "long.csv", "architecture,measured_ms", 70_000, "1.0")), "more than the 65536"),
    "measurements-row-names-etc-passwd": (lambda d, f: _measured_argv(d, _passwd_relative(f)),
                                          "../../../etc/passwd: not a latnas/architecture@1 document"),
    "measurements-row-names-absolute-passwd": (lambda d, f: _measured_argv(d, _networks(f, "/etc/passwd,1.0\nref:xxs,2.4\n")),
                                               "line 2: /etc/passwd: not a latnas/architecture@1 document"),
    "measurements-1e308-ms": (lambda d, f: _measured_argv(d, _networks(f, "ref:xxs,1e308\nref:xxs,2.4\n")),
                              "measured_ms must be a positive number"),
    "measurements-nan-ms": (lambda d, f: _measured_argv(d, _networks(f, "ref:xxs,nan\nref:xxs,2.4\n")),
                            "measured_ms must be a positive number"),
    "measurements-with-samples": (lambda d, f: [*_measured_argv(d, d / "networks.csv"), "--samples", "5"],
                                  "--samples: not used with --measurements"),
    "measurements-with-timing": (lambda d, f: [*_measured_argv(d, d / "networks.csv"), "--runs", "5"],
                                 "--runs: not used with --measurements"),
    "refit-one-network-three-ways": (lambda d, f: _refit_argv(f, d, "ref:xxs,1.0\nref:xxs,3.0\nref:xxs,9.0\n"),
                                     "needs at least 2 distinct networks"),
    "refit-repeats-that-disagree": (lambda d, f: _refit_argv(f, d, "ref:xxs,2.4\nref:xxs,7.0\nref:xs,3.6\nref:s,4.6\n"),
                                    "was measured 2 times"),
    "refit-measurements-that-explain-nothing": (lambda d, f: _refit_argv(f, d, "ref:xxs,90\nref:xs,0.5\nref:s,40\n"),
                                                "--refit: no calibration from"),
    # outputs
    "report-folder": (lambda d, f: _measured_argv(d, d / "networks.csv", "--report", _folder(f / "reports")),
                      "--report: " ),
    "report-fifo": (lambda d, f: _measured_argv(d, d / "networks.csv", "--report", _fifo(f / "report.fifo")),
                    "is a FIFO; refusing to replace it"),
    "plot-folder": (lambda d, f: _measured_argv(d, d / "networks.csv", "--plot", _folder(f / "plot.png")),
                    "--plot: "),
    "report-same-as-plot": (lambda d, f: _measured_argv(d, d / "networks.csv", "--report", f / "same.png",
                                                        "--plot", f / "same.png"), "is the same file as --report"),
    "report-over-the-table": (lambda d, f: _measured_argv(d, d / "networks.csv", "--report", f / "table.json",
                                                          lut_file=shutil.copy(d / "iphone12.json", f / "table.json")),
                              "--report: "),
    "report-over-the-measurements": (lambda d, f: _measured_argv(d, shutil.copy(d / "networks.csv", f / "n.csv"), "--report",
                                                                 f / "n.csv"), "is the input of --measurements"),
    "report-below-a-file": (lambda d, f: _measured_argv(d, d / "networks.csv", "--report", f / "table.json" / "r.json"),
                            "is not a directory"),
}


@pytest.mark.parametrize("case", list(VALIDATE_CASES))
def test_validate_refuses(case, inputs, case_folder, capsys):
    make, words = VALIDATE_CASES[case]
    argv = make(inputs, case_folder)
    _refused(lut.validate.main, lut.validate.PROG, argv, inputs, case_folder, capsys, words)


# --- lut.predict --------------------------------------------------------------------------------------------------

PREDICT_CASES: dict[str, tuple[Callable[[Path, Path], list[str]], str]] = {
    "threads-zero": (lambda d, f: ["--device", "iphone12", "--threads", "0", str(d / "arch.yaml")], "--threads: must be"),
    "threads-huge": (lambda d, f: ["--device", "ort-cpu", "--threads", "100000", str(d / "arch.yaml")], "--threads: must be"),
    "threads-with-lut": (lambda d, f: ["--lut", str(d / "iphone12.json"), "--threads", "2", str(d / "arch.yaml")],
                         "--threads: not used with --lut"),
    "device-and-lut": (lambda d, f: ["--device", "ort-cpu", "--lut", str(d / "iphone12.json"), str(d / "arch.yaml")],
                       "not allowed with argument"),
    "input-shape-huge": (lambda d, f: ["--device", "iphone12", "--input-shape", "1,3,100000,100000", str(f / "m.onnx")],
                         "--input-shape"),
    "input-shape-overflow": (lambda d, f: ["--device", "iphone12", "--input-shape", "9" * 5000, str(f / "m.onnx")],
                             "--input-shape"),
    "lut-folder": (lambda d, f: ["--lut", str(d / "folder"), str(d / "arch.yaml")], "is a directory, expected a file"),
    "lut-deep": (lambda d, f: ["--lut", str(d / "deep.json"), str(d / "arch.yaml")], "nested deeper than"),
    "lut-oversize": (lambda d, f: ["--lut", str(d / "oversize.json"), str(d / "arch.yaml")], "more than the"),
    "lut-binary": (lambda d, f: ["--lut", str(d / "binary.json"), str(d / "arch.yaml")], "not UTF-8 text"),
    "lut-number-too-long": (lambda d, f: ["--lut", str(d / "long_number.json"), str(d / "arch.yaml")], "a number too long"),
    "lut-edited-without-checksum": (lambda d, f: ["--lut", str(_forged_table(d / "iphone12.json", f / "e.json",
                                                                           FORGERIES["negative-intercept"], recompute=False)),
                                                  str(d / "arch.yaml")], "sha256 mismatch"),
    "lut-nan": (lambda d, f: ["--lut", str(_forged_table(d / "iphone12.json", f / "nan.json", _set_all("p50_ms", float("nan")),
                                                         recompute=False)), str(d / "arch.yaml")], "--lut: "),
    "arch-folder": (lambda d, f: ["--device", "iphone12", str(d / "folder")], "is a directory"),
    "arch-deep": (lambda d, f: ["--device", "iphone12", str(d / "deep.yaml")], "nested deeper than"),
    "arch-huge-resolution": (lambda d, f: ["--device", "iphone12", str(d / "huge_resolution.yaml")], "resolution"),
    "arch-resolution-the-table-lacks": (lambda d, f: ["--lut", str(d / "iphone12_r224.json"), str(d / "arch.yaml")],
                                        "has no record of"),
    **{f"lut-forged-{name}": (lambda d, f, name=name: ["--lut", str(_forged(name)(d, f)), str(d / "arch.yaml")], words)
       for name, words in {
           "negative-intercept": "predictions must stay positive",
           "negative-scale": "calibration.scales['lgl']: must be a number in (0, 100]",
           "zero-scale": "calibration.scales['lgl']: must be a number in (0, 100]",
           "records-1e308": "p50_ms must be a number in [0, 1e+06] ms",
           "records-all-zero": "all measure 0 ms",
           "records-p10-above-p90": "p10_ms <= p50_ms <= p90_ms",
           "records-negative-std": "std_ms must be a number in [0, 1e+06] ms",
           "records-runs-negative": "runs must be an integer in 0..",
           "resolution-negative": "metadata.resolution: must be an integer in 16..1024",
           "classes-a-word": "metadata.num_classes: must be an integer",
           "threads-zero": "metadata.threads: must be an integer in 1..1024",
           "space-unknown": "metadata.space: unknown space",
       }.items()},
}


@pytest.mark.parametrize("case", list(PREDICT_CASES))
def test_predict_refuses(case, inputs, case_folder, capsys):
    make, words = PREDICT_CASES[case]
    argv = make(inputs, case_folder)
    _refused(lut.predict.main, lut.predict.PROG, argv, inputs, case_folder, capsys, words)


def test_predict_threads_zero_blames_threads_not_device(inputs, capsys):
    line = assert_refused(lut.predict.main, lut.predict.PROG, ["--device", "iphone12", "--threads", "0", inputs / "arch.yaml"],
                          capsys)
    assert "--threads" in line and "--device" not in line


# --- lut.import ---------------------------------------------------------------------------------------------------

def _import_argv(d: Path, f: Path, manifest: Path | None = None, measurements: Path | None = None,
                 out: Path | None = None) -> list[str]:
    return ["--manifest", str(manifest or d / "manifest.json"), "--measurements", str(measurements or d / "measured.csv"),
            "--out", str(out or f / "table.json")]


def _manifest(d: Path, f: Path, **changes: object) -> Path:
    data = json.loads((d / "manifest.json").read_text())
    data.update(changes)
    return _text(f / "manifest.json", json.dumps(data))


def _measured(d: Path, f: Path, row: str) -> Path:
    """Measurements `key,p50_ms,p10_ms,p90_ms` of every manifest key, the first one's being `row` ({key})."""
    first, *rest = json.loads((d / "manifest.json").read_text())["packages"]
    rows = [row.format(key=first), *(f"{key},0.5,," for key in rest)]
    return _text(f / "measured.csv", "key,p50_ms,p10_ms,p90_ms\n" + "".join(line + "\n" for line in rows))


IMPORT_CASES: dict[str, tuple[Callable[[Path, Path], list[str]], str]] = {
    # manifests the loader of the table would refuse, or that are not files
    "manifest-resolution-negative": (lambda d, f: _import_argv(d, f, _manifest(d, f, resolution=-1)),
                                     "resolution: must be an integer in 16..1024"),
    "manifest-classes-a-word": (lambda d, f: _import_argv(d, f, _manifest(d, f, num_classes="ten")),
                                "num_classes: must be an integer"),
    "manifest-space-unknown": (lambda d, f: _import_argv(d, f, _manifest(d, f, space="mobilenet")), "space: not a known space"),
    "manifest-resolution-not-a-multiple": (lambda d, f: _import_argv(d, f, _manifest(d, f, resolution=48)), "multiples of 32"),
    "manifest-folder": (lambda d, f: _import_argv(d, f, d / "folder"), "is a directory, expected a file"),
    "manifest-deep": (lambda d, f: _import_argv(d, f, d / "deep.json"), "nested deeper than"),
    "manifest-oversize": (lambda d, f: _import_argv(d, f, d / "oversize.json"), "more than the"),
    "manifest-number-too-long": (lambda d, f: _import_argv(d, f, d / "long_number.json"), "a number too long"),
    "manifest-package-outside": (lambda d, f: _import_argv(d, f, _manifest(d, f, packages={
        "edgevit.stem:c3-36:hw64x64:s4": {"file": "../../../etc/passwd", "input_shape": [1, 3, 64, 64], "kind": "x"}})),
                                 "file: expected a package name inside the bundle"),
    # measurements the loader would refuse
    "measurements-1e308-ms": (lambda d, f: _import_argv(d, f, measurements=_measured(d, f, "{key},1e308,,")),
                              "p50_ms must be a number in [0, 1e+06] ms"),
    "measurements-p10-above-p90": (lambda d, f: _import_argv(d, f, measurements=_measured(d, f, "{key},1,5,0.5")),
                                   "p10_ms <= p50_ms <= p90_ms"),
    "measurements-zero-ms": (lambda d, f: _import_argv(d, f, measurements=_measured(d, f, "{key},0,,")),
                             "p50_ms must be positive"),
    "measurements-inf-ms": (lambda d, f: _import_argv(d, f, measurements=_measured(d, f, "{key},inf,,")),
                            "p50_ms must be finite"),
    "measurements-field-over-csv-limit": (lambda d, f: _import_argv(d, f, measurements=_long_field_csv(
        f / "long.csv", "key,p50_ms", 140_000, "1.0")), "line 2"),
    "measurements-field-over-our-limit": (lambda d, f: _import_argv(d, f, measurements=_long_field_csv(
        f / "long.csv", "key,p50_ms", 70_000, "1.0")), "more than the 65536"),
    "measurements-key-names-etc-passwd": (lambda d, f: _import_argv(d, f, measurements=_text(
        f / "m.csv", (d / "measured.csv").read_text() + "../../../etc/passwd,1.0\n")), "is not in the manifest"),
    "measurements-nul-byte": (lambda d, f: _import_argv(d, f, measurements=_text(f / "m.csv", "key,p50_ms\nx\x00y,1\n")),
                              "line 2: not a valid CSV row"),
    "measurements-folder": (lambda d, f: _import_argv(d, f, measurements=d / "folder"), "is a directory, expected a file"),
    "measurements-binary": (lambda d, f: _import_argv(d, f, measurements=d / "binary.json"), "not UTF-8 text"),
    # outputs
    "out-folder": (lambda d, f: _import_argv(d, f, out=_folder(f / "tables")), "is a directory, expected a file path"),
    "out-fifo": (lambda d, f: _import_argv(d, f, out=_fifo(f / "out.fifo")), "is a FIFO; refusing to replace it"),
    "out-symlink-to-a-fifo": (lambda d, f: _import_argv(d, f, out=_symlink(f / "link.json", _fifo(f / "out.fifo"))),
                              "is a FIFO; refusing to replace it"),
    "out-over-the-measurements": (lambda d, f: _import_argv(d, f, measurements=shutil.copy(d / "measured.csv", f / "m.csv"),
                                                            out=f / "m.csv"), "is the input of --measurements"),
    "out-over-the-manifest": (lambda d, f: _import_argv(d, f, manifest=shutil.copy(d / "manifest.json", f / "manifest.json"),
                                                        out=f / "manifest.json"), "is the input of --manifest"),
    "out-below-a-file": (lambda d, f: _import_argv(d, f, out=f / "table.json" / "t.json"), "is not a directory"),
}


@pytest.mark.parametrize("case", list(IMPORT_CASES))
def test_import_refuses(case, inputs, case_folder, capsys):
    make, words = IMPORT_CASES[case]
    argv = make(inputs, case_folder)
    _refused(lut.importer.main, lut.importer.PROG, argv, inputs, case_folder, capsys, words)


# --- inputs that are FIFOs: they would block a careless reader, so never in the test process ----------------------

FIFO_CASES: dict[str, tuple[str, Callable[[Path], list[str]]]] = {
    "predict-lut": ("lut.predict", lambda d: ["--lut", str(d / "fifo"), str(d / "arch.yaml")]),
    "predict-arch": ("lut.predict", lambda d: ["--device", "iphone12", str(d / "fifo")]),
    "validate-measurements": ("lut.validate", lambda d: _measured_argv(d, d / "fifo")),
    "import-manifest": ("lut.import", lambda d: ["--manifest", str(d / "fifo"), "--measurements", str(d / "measured.csv"),
                                                 "--out", str(d / "case" / "table.json")]),
    "import-measurements": ("lut.import", lambda d: ["--manifest", str(d / "manifest.json"), "--measurements", str(d / "fifo"),
                                                     "--out", str(d / "case" / "table.json")]),
}


@pytest.mark.parametrize("case", list(FIFO_CASES))
def test_a_fifo_input_is_refused_without_blocking(case, inputs):
    module, make = FIFO_CASES[case]
    (inputs / "case").mkdir(exist_ok=True)
    out = inputs / "case" / "table.json"
    out.write_text(EARLIER)
    keep = [out, *(inputs / name for name in SHARED)]
    before = snapshot(keep)
    completed = run_module(module, make(inputs), inputs, timeout_s=60)
    line = check_one_line(completed.returncode, completed.stderr)
    assert "is a FIFO" in line, line
    assert snapshot(keep) == before


def test_an_unreachable_ray_address_fails_within_seconds_in_one_line(inputs, case_folder):
    """The address of issue 19, in a process of its own: nothing of Ray may hang or print."""
    started = time.monotonic()
    completed = run_module("lut.build", _build_argv(case_folder, "--ray", "256.1.1.1:1"), case_folder, timeout_s=60)
    line = check_one_line(completed.returncode, completed.stderr)
    assert time.monotonic() - started < 30 and "--ray" in line
    assert (case_folder / "table.json").read_text() == EARLIER and not journal_path(case_folder / "table.json").exists()
