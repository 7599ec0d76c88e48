"""`python -m search_spaces`: each command's output and exit code, and bad input as one line, exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from search_spaces import Architecture, get_space, list_spaces
from search_spaces.__main__ import PROG, main
from tests.cli_support import invoke


def run(argv, capsys):
    return invoke(main, PROG, argv, capsys)


def test_list_shows_every_space_and_reference(capsys):
    code, out, _ = run(["list"], capsys)
    assert code == 0
    for space in list_spaces():
        assert space in out
    assert "s0" in out and "l7" in out and "params" in out and "MACs" in out


def test_show_ref_prints_the_reference_yaml(capsys):
    code, out, _ = run(["show", "efficientformer_v2", "--ref", "s0"], capsys)
    assert code == 0
    assert Architecture.from_yaml(out) == get_space("efficientformer_v2").reference("s0")


def test_show_describes_the_space(capsys):
    code, out, _ = run(["show", "edgevit"], capsys)
    assert code == 0
    assert "stage 3" in out and "heads" in out and "references: s, xs, xxs" in out


def test_sample_to_stdout_is_seeded(capsys):
    _, first, _ = run(["sample", "edgenext", "--n", "3", "--seed", "5"], capsys)
    _, again, _ = run(["sample", "edgenext", "--n", "3", "--seed", "5"], capsys)
    assert first == again
    documents = first.split("---\n")
    assert len(documents) == 3
    space = get_space("edgenext")
    assert all(space.contains(Architecture.from_yaml(doc)) for doc in documents)


def test_sample_to_a_directory_then_validate(tmp_path, capsys):
    code, _, err = run(["sample", "efficientformer_v1", "--n", "4", "--seed", "1", "--out-dir", str(tmp_path / "archs")], capsys)
    assert code == 0 and "wrote 4" in err
    files = sorted(str(p) for p in (tmp_path / "archs").glob("*.yaml"))
    assert len(files) == 4
    code, out, _ = run(["validate", *files], capsys)
    assert code == 0 and out.count(": ok (") == 4


def test_validate_reports_each_bad_file_and_exits_2(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    get_space("efficientformer_v2").reference("s1").to_yaml(good)
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("width: 120", "width: 121"))
    code, out, err = run(["validate", str(good), str(bad), str(tmp_path / "none.yaml")], capsys)
    assert code == 2
    assert "good.yaml: ok" in out
    lines = err.strip().splitlines()
    assert len(lines) == 2
    assert "stages[2].width: 121 is not one of" in lines[0]
    assert "no such file" in lines[1]


@pytest.mark.parametrize(
    "argv, words",
    [
        (["show", "mobilenet"], "unknown space 'mobilenet'"),
        (["show", "efficientformer_v2", "--ref", "s9"], "no reference 's9'"),
        (["sample", "edgevit", "--n", "0"], "--n: must be an integer in 1..100000"),
        (["sample", "edgevit", "--n", "many"], "--n: expected an integer in 1..100000"),
        (["sample", "edgevit", "--seed", "-3"], "--seed: must be an integer in 0..4294967295"),
        (["sample", "edgevit", "--resolution", "100"], "resolution: must be a positive multiple of 32"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, words, capsys):
    code, _, err = run(argv, capsys)
    assert code == 2
    assert words in err and len(err.strip().splitlines()) == 1


def test_sample_refuses_a_file_as_out_dir(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("keep me")
    code, _, err = run(["sample", "edgevit", "--out-dir", str(target)], capsys)
    assert code == 2 and "not a directory" in err
    assert target.read_text() == "keep me"


def test_module_entry_point_has_no_traceback(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("schema: [unclosed\n")
    result = subprocess.run(
        [sys.executable, "-m", "search_spaces", "validate", str(bad)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "malformed YAML" in result.stderr
