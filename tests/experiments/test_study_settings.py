"""Every study runner refuses bad settings with one line and exit 2, before any work (not a
traceback: the older runners raised `KeyError` for a missing key)."""

from __future__ import annotations

import pytest
import yaml

from experiments.iphone12_model import run as iphone12_model
from experiments.reference_models import run as reference_models
from experiments.study import exit_code_of

RUNNERS = {"iphone12_model": iphone12_model, "reference_models": reference_models}


def _config(name: str) -> dict:
    return yaml.safe_load((RUNNERS[name].HERE / "config.yaml").read_text("utf-8"))


@pytest.mark.parametrize("name", sorted(RUNNERS))
@pytest.mark.parametrize(("edit", "message"), [
    (lambda config: config.pop(next(iter(config))), "missing key"),
    (lambda config: config.update(surplus=1), "unknown key(s) ['surplus']"),
])
def test_missing_or_unknown_key_is_one_line_and_exit_2(tmp_path, capsys, name, edit, message):
    config = _config(name)
    edit(config)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), "utf-8")
    assert exit_code_of(lambda: RUNNERS[name].main(["--config", str(path)])) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error and str(path) in error


@pytest.mark.parametrize("name", sorted(RUNNERS))
@pytest.mark.parametrize(("text", "message"), [("families: [", "not valid YAML"), ("- a list\n", "not a mapping")])
def test_unreadable_settings_are_one_line_and_exit_2(tmp_path, capsys, name, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text, "utf-8")
    assert exit_code_of(lambda: RUNNERS[name].main(["--config", str(path)])) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error


@pytest.mark.parametrize("name", sorted(RUNNERS))
def test_a_config_that_does_not_exist_is_one_line_and_exit_2(tmp_path, capsys, name):
    missing = tmp_path / "nowhere.yaml"
    assert exit_code_of(lambda: RUNNERS[name].main(["--config", str(missing)])) == 2
    assert capsys.readouterr().err.strip() == f"--config {missing}: no such file"
