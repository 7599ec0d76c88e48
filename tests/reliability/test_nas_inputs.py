"""The reliability corpus of `nas.search`, `nas.export`, `nas.sweep` and `python -m search_spaces`:
hostile inputs of every kind issue 19 lists (sizes and ranges, files that are not files, outputs
that must not be replaced, state files that lie, flags that contradict each other), each refused
by the contract: exit 2 (or 3), one line, no traceback, every pre-existing output byte-identical."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import nas.export
import nas.search
import nas.sweep
import search_spaces.__main__ as spaces_command
from search_spaces import get_space
from tests.cli_support import invoke
from tests.reliability.harness import assert_refused, run_module, snapshot

V2_TABLE = Path(__file__).resolve().parents[2] / "lut" / "tables" / "iphone12_efficientformer_v2_r224.json"
SEARCH = ["--target-latency", "1.2ms", "--device", "iphone12"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder of hostile inputs and of outputs that exist before a command runs."""
    root = tmp_path_factory.mktemp("hostile")
    arch = get_space("efficientformer_v2").reference("s0")
    arch.to_yaml(root / "arch.yaml")
    text = (root / "arch.yaml").read_text()
    (root / "huge_resolution.yaml").write_text(text.replace("resolution: 224", "resolution: 1000000000"))
    (root / "huge_classes.yaml").write_text(text.replace("num_classes: 1000", "num_classes: 100000000000"))
    (root / "at256.yaml").write_text(text.replace("resolution: 224", "resolution: 256"))
    (root / "deep.yaml").write_text("[" * 100_000 + "]" * 100_000)
    (root / "deep_block.yaml").write_text("".join("  " * i + "-\n" for i in range(200)))
    (root / "tagged.yaml").write_text("!!python/object/apply:os.system ['echo pwned']\n")
    (root / "binary.yaml").write_bytes(b"\xff\xfe\x00garbage")
    with open(root / "oversize.yaml", "wb") as stream:
        stream.truncate(64 << 20)  # sparse: 64 MiB of nothing
    (root / "not_a_checkpoint.pt").write_text("hello\n")
    os.mkfifo(root / "fifo")
    (root / "folder").mkdir()
    (root / "existing.yaml").write_text("an earlier result\n")
    (root / "existing.jsonl").write_text('{"an": "earlier trace"}\n')
    (root / "link.yaml").symlink_to(root / "existing.yaml")
    return root


def _search(*extra: str) -> list[str]:
    return [*SEARCH, *map(str, extra)]


def _export(arch: Path | str, out: Path | str, *extra: str) -> list[str]:
    return [str(arch), "--format", "onnx", "--out", str(out), *map(str, extra)]


SEARCH_CASES = {
    # sizes and ranges
    "seed-overflow": lambda d: _search("--seed", "99999999999999999999999"),
    "seed-negative": lambda d: _search("--seed=-1"),
    "target-infinite": lambda d: ["--target-latency", "1e309ms", "--device", "iphone12"],
    "target-inf-word": lambda d: ["--target-latency", "infms", "--device", "iphone12"],
    "target-zero": lambda d: ["--target-latency", "0ms", "--device", "iphone12"],
    "target-nan": lambda d: ["--target-latency", "nanms", "--device", "iphone12"],
    "budget-huge": lambda d: _search("--strategy", "random", "--budget", "99999999999999"),
    "recalibrate-huge": lambda d: _search("--recalibrate", "99999999999"),
    "eval-batches-zero": lambda d: _search("--eval-batches", "0"),
    "verify-rounds-huge": lambda d: _search("--verify", "--verify-rounds", "1000"),
    "max-params-huge": lambda d: _search("--max-params", "1e400"),
    "mes-alpha-nan": lambda d: _search("--mes-alpha-params", "nan"),
    # inputs that are not what they claim
    "start-folder": lambda d: _search("--start", d / "folder"),
    "start-fifo": lambda d: _search("--start", d / "fifo"),
    "start-dev-zero": lambda d: _search("--start", "/dev/zero"),
    "start-deep": lambda d: _search("--start", d / "deep.yaml"),
    "start-deep-block": lambda d: _search("--start", d / "deep_block.yaml"),
    "start-oversize": lambda d: _search("--start", d / "oversize.yaml"),
    "start-yaml-tag": lambda d: _search("--start", d / "tagged.yaml"),
    "start-binary": lambda d: _search("--start", d / "binary.yaml"),
    "start-huge-resolution": lambda d: _search("--start", d / "huge_resolution.yaml"),
    "start-resolution-table-lacks": lambda d: _search("--start", d / "at256.yaml"),
    "lut-fifo": lambda d: ["--target-latency", "1ms", "--lut", d / "fifo"],
    "lut-dev-zero": lambda d: ["--target-latency", "1ms", "--lut", "/dev/zero"],
    "lut-folder": lambda d: ["--target-latency", "1ms", "--lut", d / "folder"],
    "supernet-fifo": lambda d: _search("--supernet", d / "fifo", "--data", "digits"),
    "supernet-dev-zero": lambda d: _search("--supernet", "/dev/zero", "--data", "digits"),
    "supernet-not-a-checkpoint": lambda d: _search("--supernet", d / "not_a_checkpoint.pt", "--data", "digits"),
    "state-fifo": lambda d: _search("--state", d / "fifo"),
    "state-deep": lambda d: _search("--strategy", "random", "--state", d / "deep.yaml"),
    # outputs that must not be replaced
    "out-folder": lambda d: _search("--out", d / "folder"),
    "trace-folder": lambda d: _search("--trace", d / "folder"),
    "front-folder": lambda d: _search("--front", d / "folder"),
    "out-dev-full": lambda d: _search("--out", "/dev/full"),
    "trace-dev-null": lambda d: _search("--trace", "/dev/null"),
    "out-same-as-front": lambda d: _search("--out", d / "existing.yaml", "--front", d / "existing.yaml"),
    "out-same-as-trace-through-link": lambda d: _search("--out", d / "link.yaml", "--trace", d / "existing.yaml"),
    "out-same-as-state": lambda d: _search("--strategy", "random", "--out", d / "existing.yaml", "--state",
                                           d / "existing.yaml"),
    "out-under-a-file": lambda d: _search("--out", d / "existing.yaml" / "x.yaml"),
    # flags that contradict each other or are ignored
    "device-and-foreign-lut": lambda d: ["--target-latency", "1ms", "--device", "ort-cpu", "--lut", V2_TABLE],
    "data-without-supernet": lambda d: _search("--data", "digits"),
    "verify-rounds-without-verify": lambda d: _search("--verify-rounds", "3"),
    "budget-with-greedy": lambda d: _search("--budget", "5"),
    "start-with-random": lambda d: _search("--strategy", "random", "--start", d / "arch.yaml"),
    "unknown-space": lambda d: _search("--space", "nope"),
}


@pytest.mark.parametrize("case", sorted(SEARCH_CASES))
def test_search_refuses(case, inputs, capsys):
    argv = SEARCH_CASES[case](inputs)
    keep = [inputs / "existing.yaml", inputs / "existing.jsonl", inputs / "link.yaml"]
    if "fifo" in case:  # could block a careless reader: never in the test process
        before = snapshot(keep)
        completed = run_module("nas.search", argv, inputs, timeout_s=60)
        assert completed.returncode == 2 and "Traceback" not in completed.stderr, completed.stderr
        assert len(completed.stderr.strip().splitlines()) == 1, completed.stderr
        assert snapshot(keep) == before
        return
    assert_refused(nas.search.main, nas.search.PROG, argv, capsys, keep=keep)


def test_resolution_the_table_lacks_names_the_resolution(inputs, capsys):
    line = assert_refused(nas.search.main, nas.search.PROG, _search("--start", inputs / "at256.yaml"), capsys)
    assert "256 px" in line and "224 px" in line


EXPORT_CASES = {
    "seed-overflow": lambda d: _export(d / "arch.yaml", d / "x.onnx", "--seed", "99999999999999999999999"),
    "batch-huge": lambda d: _export(d / "arch.yaml", d / "x.onnx", "--batch", "100000"),
    "resolution-huge": lambda d: _export(d / "arch.yaml", d / "x.onnx", "--resolution", "100000"),
    "classes-huge": lambda d: _export(d / "huge_classes.yaml", d / "x.onnx"),
    "arch-resolution-huge": lambda d: _export(d / "huge_resolution.yaml", d / "x.onnx"),
    "arch-deep": lambda d: _export(d / "deep.yaml", d / "x.onnx"),
    "arch-folder": lambda d: _export(d / "folder", d / "x.onnx"),
    "arch-dev-zero": lambda d: _export("/dev/zero", d / "x.onnx"),
    "out-folder": lambda d: _export(d / "arch.yaml", d / "folder"),
    "out-dev-full": lambda d: _export(d / "arch.yaml", "/dev/full"),
    "report-same-as-out": lambda d: _export(d / "arch.yaml", d / "existing.yaml", "--report", d / "existing.yaml"),
    "report-folder": lambda d: _export(d / "arch.yaml", d / "x.onnx", "--report", d / "folder"),
    "supernet-dev-zero": lambda d: _export(d / "arch.yaml", d / "x.onnx", "--supernet", "/dev/zero"),
    "supernet-not-a-checkpoint": lambda d: _export(d / "arch.yaml", d / "x.onnx", "--supernet",
                                                   d / "not_a_checkpoint.pt"),
    "recalibrate-without-supernet": lambda d: _export(d / "arch.yaml", d / "x.onnx", "--recalibrate", "3"),
    "data-without-recalibrate": lambda d: _export(d / "arch.yaml", d / "x.onnx", "--data", "digits"),
    "coreml-out-not-a-package": lambda d: [str(d / "arch.yaml"), "--format", "coreml", "--out", str(d / "x.onnx")],
}


@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_export_refuses(case, inputs, capsys):
    assert_refused(nas.export.main, nas.export.PROG, EXPORT_CASES[case](inputs), capsys,
                   keep=[inputs / "existing.yaml"])
    assert not (inputs / "x.onnx").exists()


def _sweep(d: Path, *extra: str) -> list[str]:
    return ["--targets", "1ms", "--devices", "iphone12", "--out", str(d / "sweep"), *map(str, extra)]


SWEEP_CASES = {
    "empty-target-entry": lambda d: ["--targets", "1ms,,2ms", "--devices", "iphone12", "--out", str(d / "sweep")],
    "empty-device-entry": lambda d: ["--targets", "1ms", "--devices", "iphone12,", "--out", str(d / "sweep")],
    "seed-overflow": lambda d: _sweep(d, "--seed", "99999999999999999999999"),
    "budget-huge": lambda d: _sweep(d, "--budget", "99999999999"),
    "cpus-per-trial-huge": lambda d: _sweep(d, "--cpus-per-trial", "1e308"),
    "cpus-per-trial-nan": lambda d: _sweep(d, "--cpus-per-trial", "nan"),
    "truncated-supernet": lambda d: _sweep(d, "--supernet", d / "not_a_checkpoint.pt", "--data", "digits"),
    "supernet-without-data": lambda d: _sweep(d, "--supernet", d / "not_a_checkpoint.pt"),
    "ray-address-bad-ip": lambda d: _sweep(d, "--ray-address", "256.1.1.1:1"),
    "ray-address-bad-port": lambda d: _sweep(d, "--ray-address", "127.0.0.1:99999"),
    "out-is-a-file": lambda d: ["--targets", "1ms", "--devices", "iphone12", "--out", str(d / "existing.yaml")],
    "out-dev-full": lambda d: ["--targets", "1ms", "--devices", "iphone12", "--out", "/dev/full"],
    "unknown-device": lambda d: ["--targets", "1ms", "--devices", "pixel99", "--out", str(d / "sweep")],
}


@pytest.mark.parametrize("case", sorted(SWEEP_CASES))
def test_sweep_refuses_before_ray(case, inputs, capsys):
    assert_refused(nas.sweep.main, nas.sweep.PROG, SWEEP_CASES[case](inputs), capsys, keep=[inputs / "existing.yaml"])
    assert not (inputs / "sweep").exists()


def test_sweep_ray_address_where_nothing_answers_fails_fast(inputs, capsys):
    import socket

    with socket.socket() as probe:  # a free port: nothing listens on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    line = assert_refused(nas.sweep.main, nas.sweep.PROG, _sweep(inputs, "--ray-address", f"127.0.0.1:{port}"), capsys)
    assert "no Ray cluster answers" in line


SPACES_CASES = {
    "validate-huge-resolution": lambda d: ["validate", d / "huge_resolution.yaml"],
    "validate-huge-classes": lambda d: ["validate", d / "huge_classes.yaml"],
    "validate-deep": lambda d: ["validate", d / "deep.yaml"],
    "validate-oversize": lambda d: ["validate", d / "oversize.yaml"],
    "validate-dev-zero": lambda d: ["validate", "/dev/zero"],
    "validate-folder": lambda d: ["validate", d / "folder"],
    "validate-yaml-tag": lambda d: ["validate", d / "tagged.yaml"],
    "sample-seed-overflow": lambda d: ["sample", "edgevit", "--seed", "99999999999999999999999"],
    "sample-resolution-huge": lambda d: ["sample", "edgevit", "--resolution", "100000"],
    "sample-classes-huge": lambda d: ["sample", "edgevit", "--num-classes", "100000000000"],
    "sample-n-huge": lambda d: ["sample", "edgevit", "--n", "100000000"],
    "sample-out-dir-is-a-file": lambda d: ["sample", "edgevit", "--out-dir", d / "existing.yaml"],
}


@pytest.mark.parametrize("case", sorted(SPACES_CASES))
def test_search_spaces_command_refuses(case, inputs, capsys):
    assert_refused(spaces_command.main, spaces_command.PROG, SPACES_CASES[case](inputs), capsys,
                   keep=[inputs / "existing.yaml"])


def test_validate_refuses_a_fifo_without_blocking(inputs):
    completed = run_module("search_spaces", ["validate", inputs / "fifo"], inputs, timeout_s=60)
    assert completed.returncode == 2 and "is a FIFO" in completed.stderr and "Traceback" not in completed.stderr


# -- outputs are written through symlinks, never replacing the link or a device -----------------------
def test_a_symlinked_out_writes_its_target(tmp_path, capsys):
    target = tmp_path / "real.yaml"
    target.write_text("old\n")
    (tmp_path / "link.yaml").symlink_to(target)
    code, _, err = invoke(nas.search.main, nas.search.PROG, _search("--out", tmp_path / "link.yaml"), capsys)
    assert code == 0, err
    assert (tmp_path / "link.yaml").is_symlink() and target.read_text().startswith("schema: latnas/architecture@1")


# -- a state file is not believed ----------------------------------------------------------------------
RANDOM = ["--target-latency", "1.2ms", "--device", "iphone12", "--strategy", "random"]


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> dict:
    """The state file of a finished 3-evaluation random search (proxy evaluator)."""
    folder = tmp_path_factory.mktemp("state")
    code = nas.search.main([*RANDOM, "--budget", "3", "--state", str(folder / "state.json"),
                            "--out", str(folder / "found.yaml")])
    assert code == 0
    return json.loads((folder / "state.json").read_text())


def _forged(state: dict, edit) -> dict:
    forged = json.loads(json.dumps(state))
    edit(forged)
    return forged


FORGERIES = {
    "score-inflated": lambda s: s["history"][0].__setitem__("score", 1000.0),
    "score-nan": lambda s: s["history"][1].__setitem__("score", float("nan")),
    "counters-negative": lambda s: s["counters"].__setitem__("proposals", -3),
    "counters-not-integers": lambda s: s["counters"].__setitem__("duplicates", "many"),
    "rng-garbage": lambda s: s["rng"]["state"].__setitem__("state", 10**400),
    "rng-wrong-type": lambda s: s.__setitem__("rng", {"bit_generator": "MT19937", "state": []}),
    "arch-off-the-space": lambda s: s["history"][0]["arch"]["stages"][0].__setitem__("width", 1_000_000),
    "history-not-a-list": lambda s: s.__setitem__("history", {"a": 1}),
    "settings-of-another-search": lambda s: s["settings"].__setitem__("target_latency_ms", 9.0),
}


@pytest.mark.parametrize("case", sorted(FORGERIES))
def test_a_forged_state_is_refused(case, state, tmp_path, capsys):
    path = tmp_path / "state.json"
    text = json.dumps(_forged(state, FORGERIES[case]), allow_nan=True)
    path.write_text(text)
    out = tmp_path / "found.yaml"
    out.write_text("an earlier result\n")
    argv = [*RANDOM, "--budget", "4", "--state", str(path), "--out", str(out)]
    assert_refused(nas.search.main, nas.search.PROG, argv, capsys, keep=[out, path])


def test_an_untouched_state_resumes(state, tmp_path, capsys):
    path = tmp_path / "state.json"
    path.write_text(json.dumps(state))
    code, _, err = invoke(nas.search.main, nas.search.PROG, [*RANDOM, "--budget", "4", "--state", str(path)], capsys)
    assert code == 0, err
    assert len(json.loads(path.read_text())["history"]) == 4
