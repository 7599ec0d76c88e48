"""The search study's runner (`experiments/search_fashion/run.py`): which searches a shard takes,
which networks are trained standalone when, and refusals of a bad config, without any training."""

from __future__ import annotations

import json

import pytest
import yaml

from experiments.search_fashion import run as study
from experiments.study import exit_code_of

CONFIG = study.HERE / "config.yaml"


def _config(tmp_path) -> dict:
    config = study.load_config(CONFIG)
    config["results"] = str(tmp_path / "results")
    return config


def _finish(config, target: study.Target, run: str, val: float) -> None:
    path = target.folder(study.results_of(config)) / f"{run}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    arch = study.get_space(config["space"]).reference("s0").to_dict()
    path.write_text(json.dumps({"table": target.table, "target": target.label, "target_ms": target.latency_ms,
                                "run": run, "pick": {"arch": arch, "val_accuracy": val}}))


def _targets(config) -> list[study.Target]:
    space = study.get_space(config["space"])
    return study.targets_of(config, space, study.tables_of(config, space))


def test_targets_run_from_the_highest_latency_down(tmp_path):
    assert [t.latency_ms for t in _targets(_config(tmp_path))] == [1.6, 1.1, 0.9]


def test_each_search_waits_for_what_it_needs_greedy_its_shallower_target_sampling_the_greedy_budgets(tmp_path):
    config = _config(tmp_path)
    jobs = study.search_jobs(config, _targets(config))
    runs = [run for run, _, _ in study.runs_of(config)]
    assert [(job.target.label, job.run) for job in jobs] == [(label, run) for label in ("1.6ms", "1.1ms", "0.9ms")
                                                             for run in runs]
    needs = {(job.target.label, job.run): [(target.label, run) for target, run in job.needs] for job in jobs}
    assert needs[("1.6ms", "greedy_mes")] == []
    assert needs[("1.1ms", "greedy_mes")] == [("1.6ms", "greedy_mes")]
    assert needs[("0.9ms", "greedy_latency")] == [("1.1ms", "greedy_latency")]
    assert needs[("1.1ms", "random_seed0")] == needs[("1.1ms", "random_5x_seed0")] == [
        ("1.1ms", "greedy_mes"), ("1.1ms", "greedy_latency")]


def test_a_claim_is_one_processes_until_released_and_a_dead_holders_claim_is_taken_over(tmp_path):
    import subprocess
    import sys

    from experiments.study import Claim

    path = tmp_path / "claims" / "job.pid"
    with Claim(path) as mine:
        assert mine and path.read_text() == str(__import__("os").getpid())
        with Claim(path) as again:  # held by a running process (this one)
            assert not again
        assert path.is_file()
    assert not path.exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text(dead.stdout.strip())  # the claim of a process that has exited
    with Claim(path) as mine:
        assert mine


def test_references_train_from_the_start_and_a_found_network_once_its_target_is_finished(tmp_path):
    config = _config(tmp_path)
    seeds = len(config["standalone"]["seeds"])
    assert sorted({name for name, _, _ in study.standalone_jobs(config)}) == [
        "iphone12_0.9ms_reference", "iphone12_1.1ms_reference", "iphone12_1.6ms_reference"]
    target = next(t for t in _targets(config) if t.label == "1.6ms")
    runs = [run for run, _, _ in study.runs_of(config)]
    for index, run in enumerate(runs[:-1]):
        _finish(config, target, run, 80.0 + index)
    assert not any("found" in name for name, _, _ in study.standalone_jobs(config))  # one run still missing
    _finish(config, target, runs[-1], 50.0)
    found = [(name, seed) for name, _, seed in study.standalone_jobs(config) if "found" in name]
    assert found == [("iphone12_1.6ms_found", seed) for seed in config["standalone"]["seeds"]]
    comparison = next(c for c in study.comparisons(config) if c["target"] == "1.6ms")
    assert comparison["found"]["run"] == runs[-2]  # the most accurate on val
    assert len(study.standalone_jobs(config)) == 4 * seeds


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.pop("mes"), "mes"),
    (lambda c: c["strategies"]["random"].update(budget_multiple=1, extra=1), "strategies.random"),
    (lambda c: c["strategies"].update(greedy_late={"strategy": "greedy", "objective": "mes", "drop_floor": 0.5}), "greedy runs come first"),
])
def test_a_bad_config_is_one_line_and_exit_2(tmp_path, capsys, edit, message):
    config = yaml.safe_load(CONFIG.read_text())
    edit(config)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert exit_code_of(lambda: study.main(["--config", str(path), "--phase", "evaluate"])) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error
