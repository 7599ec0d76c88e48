"""The search study's runner (`experiments/search_fashion/run.py`): which searches a shard takes,
which networks are trained standalone when, and refusals of a bad config, without any training."""

from __future__ import annotations

import json

import pytest
import yaml

from experiments.search_fashion import run as study
from experiments.study import exit_code_of
from tests.supernet.test_data import make_fashion_mnist

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


def _recorded_searches(tmp_path, monkeypatch) -> tuple[dict, object, list]:
    """The study's config written under tmp_path, with searches that only record (target, run) and
    write a result."""
    config = _config(tmp_path)
    config["runs"] = str(tmp_path / "runs")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    monkeypatch.setattr(study, "build_evaluator", lambda config, space: None)
    ran = []

    def search_one(config, space, table, evaluator, target, run, settings, seed, extend=False):
        ran.append((target.label, run))
        _finish(config, target, run, 80.0)

    monkeypatch.setattr(study, "search_one", search_one)
    return config, path, ran


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
    greedy = [name for name, settings in config["strategies"].items() if settings["strategy"] == "greedy"]
    assert {"greedy_mes", "greedy_latency"} <= set(greedy)
    assert needs[("1.1ms", "random_seed0")] == needs[("1.1ms", "random_5x_seed0")] == [("1.1ms", g) for g in greedy]


def test_target_runs_only_the_searches_at_that_label_and_a_label_not_configured_is_one_line_and_exit_2(
        tmp_path, monkeypatch, capsys):
    config, path, ran = _recorded_searches(tmp_path, monkeypatch)
    assert exit_code_of(lambda: study.main(["--config", str(path), "--phase", "search", "--target", "1.1ms"])) == 0
    runs = [run for run, _, _ in study.runs_of(config)]
    assert ran == [("1.1ms", run) for run in runs]  # greedy first; not waiting for 1.6ms's greedy path
    assert exit_code_of(lambda: study.main(["--config", str(path), "--phase", "search", "--target", "0.3x"])) == 2
    error = capsys.readouterr().err.strip()
    assert error == "--target 0.3x: choose from 1.6ms, 1.1ms, 0.9ms"


def test_strategy_runs_only_the_named_strategies_at_every_target_and_an_unknown_name_is_one_line_and_exit_2(
        tmp_path, monkeypatch, capsys):
    config, path, ran = _recorded_searches(tmp_path, monkeypatch)
    argv = ["--config", str(path), "--phase", "search", "--strategy", "greedy_mes"]
    assert exit_code_of(lambda: study.main(argv)) == 0
    assert ran == [(label, "greedy_mes") for label in ("1.6ms", "1.1ms", "0.9ms")]
    # random's budget is set by every greedy run: without the other greedy runs' results it would wait forever
    others = [name for name, settings in config["strategies"].items()
              if settings["strategy"] == "greedy" and name != "greedy_mes"]
    assert exit_code_of(lambda: study.main([*argv, "--strategy", "random"])) == 2
    assert capsys.readouterr().err.strip() == (f"--strategy random: its budget at 1.6ms is set by {others[0]}, "
                                               f"which has no result there; name --strategy {others[0]} too, or run it first")
    named = [option for name in ("random", *others) for option in ("--strategy", name)]
    assert exit_code_of(lambda: study.main([*argv, *named])) == 0
    random_seeds = [run for run, _, _ in study.runs_of(config) if run.startswith("random_seed")]
    assert ran[3:] == [(label, run) for label in ("1.6ms", "1.1ms", "0.9ms") for run in (*others, *random_seeds)]
    assert exit_code_of(lambda: study.main(["--config", str(path), "--phase", "search", "--strategy", "greedy"])) == 2
    assert capsys.readouterr().err.strip() == f"--strategy greedy: choose from {', '.join(config['strategies'])}"


def test_rescore_measures_each_pick_once_and_remeasure_measures_every_one_again_keeping_the_load(tmp_path, monkeypatch):
    from types import SimpleNamespace

    config = _config(tmp_path)
    config["tables"]["iphone12"]["measure"] = "ort-cpu"
    config["tables"]["iphone12"]["references"] = {}
    profiled = []

    class Stored:
        evaluator = SimpleNamespace(test_accuracy=lambda arch: 80.0)

        def score(self, arch):
            return 70.0

        def save(self):
            pass

    def device(name, threads):
        def profile_network(arch):
            profiled.append(name)
            return SimpleNamespace(p50_ms=3.0 + len(profiled))
        return SimpleNamespace(profile_network=profile_network)

    _finish(config, _targets(config)[0], "greedy_mes", 80.0)  # the s0 pick at 1.6ms
    monkeypatch.setattr(study, "build_evaluator", lambda config, space: Stored())
    monkeypatch.setattr(study, "get_device", device)
    path = study.results_of(config) / "rescored.json"
    study.rescore_phase(config)
    first = json.loads(path.read_text())
    assert profiled == ["ort-cpu"] and list(first["measured_ms"].values()) == [4.0]
    assert first["last_measurements"]["count"] == 1 and set(first["last_measurements"]) >= {"load_before", "load_after"}
    study.rescore_phase(config)  # nothing new to measure
    assert profiled == ["ort-cpu"] and json.loads(path.read_text())["measured_ms"] == first["measured_ms"]
    study.rescore_phase(config, remeasure=True)
    again = json.loads(path.read_text())
    assert len(profiled) == 2 and list(again["measured_ms"].values()) == [5.0]
    assert again["test_accuracy"] == first["test_accuracy"]


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
    named = config["standalone"].get("also_train", [])  # trained too, at the one finished target
    assert len(study.standalone_jobs(config)) == (4 + len(named)) * seeds


def test_a_pick_named_in_also_train_is_trained_once_its_search_finished_and_once_only_if_it_is_the_best(tmp_path):
    config = _config(tmp_path)
    config["standalone"]["also_train"] = ["greedy_mes", "random_seed1"]
    target = next(t for t in _targets(config) if t.label == "1.6ms")
    _finish(config, target, "greedy_mes", 70.0)
    names = {name for name, _, _ in study.standalone_jobs(config)}
    assert "iphone12_1.6ms_greedy_mes" in names and "iphone12_1.6ms_found" not in names
    assert not any("random_seed1" in name for name in names)  # its search has not finished
    runs = [run for run, _, _ in study.runs_of(config)]
    for index, run in enumerate(runs):
        if run != "greedy_mes":
            _finish(config, target, run, 99.0 if run == "random_seed1" else 80.0 + index / 100)
    names = [name for name, _, _ in study.standalone_jobs(config) if name.startswith("iphone12_1.6ms")]
    # random_seed1 is the best pick on val and named in also_train: trained once, under its run name
    # (greedy_mes, trained as soon as its search finished, would otherwise be trained again as `found`)
    assert sorted(set(names)) == ["iphone12_1.6ms_greedy_mes", "iphone12_1.6ms_random_seed1", "iphone12_1.6ms_reference"]
    config["standalone"]["also_train"] = ["greedy_mes"]
    names = [name for name, _, _ in study.standalone_jobs(config) if name.startswith("iphone12_1.6ms")]
    assert sorted(set(names)) == ["iphone12_1.6ms_found", "iphone12_1.6ms_greedy_mes", "iphone12_1.6ms_reference"]
    assert study.recipe_of(config, 0) == study.recipe_of(study.load_config(CONFIG), 0)  # not a recipe field


def test_the_standalone_must_holds_need_every_reference_target_and_no_loss():
    def verdict(target, verdict):
        return {"table": "iphone12", "target": target, "verdict": verdict}

    assert study.standalone_must_holds({"comparisons": []}) == {
        "found_better_than_references_beyond_spread": False, "found_not_worse_than_references": False}
    mixed = {"comparisons": [verdict("0.9ms", "found better"), verdict("1.1ms", "tie within the seed spread"),
                             verdict("1.1ms", "found better")]}
    assert study.standalone_must_holds(mixed) == {
        "found_better_than_references_beyond_spread": True, "found_not_worse_than_references": True}
    mixed["comparisons"].append(verdict("1.6ms", "reference better"))
    assert study.standalone_must_holds(mixed) == {
        "found_better_than_references_beyond_spread": False, "found_not_worse_than_references": False}


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.pop("mes"), "mes"),
    (lambda c: c["strategies"]["random"].update(budget_multiple=1, extra=1), "strategies.random"),
    (lambda c: c["strategies"].update(greedy_late={"strategy": "greedy", "objective": "mes", "drop_floor": 0.5}), "greedy runs come first"),
    (lambda c: c["standalone"].update(also_train=["greedy_nonexistent"]), "standalone.also_train"),
    (lambda c: c["standalone"].update(also_train="greedy_mes"), "standalone.also_train"),
    (lambda c: c["standalone"].update(epochz=3), "standalone: keys"),
    (lambda c: c["strategies"]["greedy_mes"].update(actions="v3"), "strategies.greedy_mes.actions"),
    (lambda c: c["strategies"]["greedy_mes"].update(objective="speed"), "strategies.greedy_mes.objective: unknown objective 'speed'"),
    (lambda c: c["strategies"]["greedy_mes"].update(drop_floor=-1), "strategies.greedy_mes.drop_floor"),
    (lambda c: c["strategies"]["greedy_mes"].update(drop_floor=500),
     "strategies.greedy_mes.drop_floor: 500 is not a number of accuracy points from 0 to 100"),
    (lambda c: c["strategies"]["random"].update(seeds=[2**40]), "strategies.random.seeds"),
    (lambda c: c["strategies"]["greedy_mes_steps"].update(min_step_ms=0), "strategies.greedy_mes_steps.min_step_ms"),
    (lambda c: c["strategies"]["greedy_mes"].update(steps_past_target=1.5), "strategies.greedy_mes.steps_past_target"),
    (lambda c: c["strategies"]["greedy_mes"].update(shortlist_extra=-1), "strategies.greedy_mes.shortlist_extra: -1"),
    (lambda c: c["strategies"]["greedy_mes"].update(shortlist_extra=True), "strategies.greedy_mes.shortlist_extra"),
    (lambda c: (c["strategies"]["greedy_mes"].update(shortlist_extra=4), c["evaluator"].update(shortlist=0)),
     "strategies.greedy_mes.shortlist_extra: widens the evaluator's shortlist"),
    (lambda c: c["strategies"]["random"].update(shortlist_extra=4), "strategies.random: keys"),
    (lambda c: c["strategies"]["random"].update(seeds=[0, 0]), "strategies.random.seeds"),
    (lambda c: c["strategies"]["random"].update(seeds=[]), "strategies.random.seeds"),
    (lambda c: c["strategies"]["random_5x"].update(budget_multiple=0), "strategies.random_5x.budget_multiple"),
    (lambda c: c["strategies"]["evolution"].update(sample_size=21), "strategies.evolution.sample_size: 21; give a whole"),
])
def test_a_bad_config_is_one_line_and_exit_2(tmp_path, capsys, edit, message):
    config = yaml.safe_load(CONFIG.read_text())
    edit(config)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert exit_code_of(lambda: study.main(["--config", str(path), "--phase", "evaluate"])) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error


def test_every_phase_runs_end_to_end_on_a_tiny_supernet_and_a_second_run_does_nothing_again(tmp_path):
    """search (two greedy objectives, random at 1x and 5x, evolution), rescore on test, standalone
    (found and reference, two seeds), evaluate: outputs, budgets, checks and the verdict's shape."""
    import torch

    from supernet import Supernet

    torch.manual_seed(0)
    Supernet.from_space("efficientformer_v2", num_classes=10, resolution=32).save(tmp_path / "supernet.pt")
    data = make_fashion_mnist(tmp_path / "fashion")  # 100 train, 20 val, 30 test images
    config = yaml.safe_load(CONFIG.read_text())
    config.update(data=f"fashion-mnist:{data}", supernet=str(tmp_path / "supernet.pt"), runs=str(tmp_path / "runs"),
                  results=str(tmp_path / "results"),
                  evaluator={"batch_size": 5, "eval_batches": 4, "recalibrate": 0, "screen_batches": 1, "shortlist": 1})
    config["tables"]["iphone12"].update(targets_ms=[2.65], references={"s2": 2.65})  # one greedy step
    config["strategies"] = {
        "greedy_mes": {"strategy": "greedy", "objective": "mes", "drop_floor": 10.0},
        "greedy_latency": {"strategy": "greedy", "objective": "latency", "drop_floor": 10.0},
        "random": {"strategy": "random", "objective": "mes", "seeds": [0], "budget_multiple": 1},
        "evolution": {"strategy": "evolution", "objective": "mes", "seeds": [0], "budget_multiple": 1,
                      "population_size": 4, "sample_size": 2},
        "random_5x": {"strategy": "random", "objective": "mes", "seeds": [0], "budget_multiple": 2}}
    config["standalone"].update(seeds=[0, 1], epochs=1, train_images=20, val_images=10, batch_size=10,
                                also_train=["greedy_latency"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    for phase in study.PHASES:
        assert exit_code_of(lambda phase=phase: study.main(["--config", str(path), "--phase", phase])) == 0
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert results["searches"] == 5
    budget = {row["run"]: row["budget"] for row in results["rows"]}
    greedy = max(row["evaluations"] + -(-row["screenings"] // 4) for row in results["rows"]
                 if row["strategy"].startswith("greedy"))
    assert budget["random_seed0"] == budget["evolution_seed0"] == greedy and budget["random_5x_seed0"] == 2 * greedy
    assert all(row["test_accuracy"] is not None and row["latency_ms"] <= 2.65 for row in results["rows"])
    assert {check["greedy"] for check in results["checks"]["greedy_vs_random"]} == {"greedy_mes", "greedy_latency"}
    assert all(c["equal_budget_covered"] and c["rival_budget"] >= c["greedy_cost"] for c in results["checks"]["greedy_vs_random"])
    assert set(results["must_hold"]["greedy_at_least_random_at_every_target"]) == {"greedy_mes", "greedy_latency"}
    verdicts = results["standalone"]["comparisons"]
    (verdict,) = [v for v in verdicts if v["selected"] == "best on val"]
    assert verdict["reference"] == "s2" and set(verdict["found_test"]) == set(verdict["reference_test"]) == {"0", "1"}  # JSON keys
    assert "greedy_latency" in {v["found_run"] for v in verdicts}  # also_train's (unless it is the best on val)
    assert len(verdicts) == 1 + (verdict["found_run"] != "greedy_latency")
    assert set(results["must_hold"]) >= {"found_better_than_references_beyond_spread", "found_not_worse_than_references"}
    assert (tmp_path / "results" / "search_iphone12.png").stat().st_size > 0
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "results").rglob("*.json") if p.name != "results.json"}
    for phase in ("search", "rescore", "standalone"):  # everything is done: nothing is redone
        assert exit_code_of(lambda phase=phase: study.main(["--config", str(path), "--phase", phase])) == 0
    assert {p: p.stat().st_mtime_ns for p in written} == written


def _tiny_study(tmp_path, folder: str) -> tuple[dict, object]:
    """A one-target study on a tiny untrained supernet: one greedy run, random and evolution."""
    import torch

    from supernet import Supernet

    checkpoint = tmp_path / "supernet.pt"
    if not checkpoint.is_file():
        torch.manual_seed(0)
        Supernet.from_space("efficientformer_v2", num_classes=10, resolution=32).save(checkpoint)
    data = tmp_path / "fashion"
    if not data.is_dir():
        make_fashion_mnist(data)
    config = yaml.safe_load(CONFIG.read_text())
    config.update(data=f"fashion-mnist:{data}", supernet=str(checkpoint), runs=str(tmp_path / folder / "runs"),
                  results=str(tmp_path / folder / "results"),
                  evaluator={"batch_size": 5, "eval_batches": 4, "recalibrate": 0, "screen_batches": 1, "shortlist": 1})
    config["tables"]["iphone12"].update(targets_ms=[2.65], references={"s2": 2.65})
    config["strategies"] = {
        "greedy_mes": {"strategy": "greedy", "objective": "mes", "drop_floor": 10.0},
        "random": {"strategy": "random", "objective": "mes", "seeds": [0], "budget_multiple": 1},
        "evolution": {"strategy": "evolution", "objective": "mes", "seeds": [0], "budget_multiple": 1,
                      "population_size": 3, "sample_size": 2}}
    config["standalone"].pop("also_train", None)
    path = tmp_path / f"{folder}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config, path


@pytest.mark.slow
def test_extend_budgets_brings_sampling_runs_to_a_costlier_greedy_runs_budget_as_a_fresh_run_at_it_would(tmp_path):
    """A greedy run that costs more than the one that set the sampling budgets (here its result
    edited to cost 3 more): a plain search phase leaves the sampling results alone; with
    `--extend-budgets` they are extended from their state files to the new budget, and end exactly
    where searches run from the start at that budget end, with both runs' seconds."""
    config, path = _tiny_study(tmp_path, "first")
    search = ["--config", str(path), "--phase", "search"]
    assert exit_code_of(lambda: study.main(search)) == 0
    (target,) = _targets(config)
    folder = target.folder(study.results_of(config))
    greedy = json.loads((folder / "greedy_mes.json").read_text())
    old_budget = study.greedy_cost(config, greedy)
    first = {run: json.loads((folder / f"{run}.json").read_text()) for run in ("random_seed0", "evolution_seed0")}
    assert {result["budget"] for result in first.values()} == {old_budget}
    greedy["evaluations"] += 3
    (folder / "greedy_mes.json").write_text(json.dumps(greedy))
    written = {run: (folder / f"{run}.json").stat().st_mtime_ns for run in first}
    assert exit_code_of(lambda: study.main(search)) == 0  # not asked to extend: nothing is redone
    assert {run: (folder / f"{run}.json").stat().st_mtime_ns for run in first} == written
    assert exit_code_of(lambda: study.main([*search, "--extend-budgets"])) == 0
    extended = {run: json.loads((folder / f"{run}.json").read_text()) for run in first}
    fresh_config, fresh_path = _tiny_study(tmp_path, "fresh")
    fresh_folder = target.folder(study.results_of(fresh_config))
    fresh_folder.mkdir(parents=True)
    (fresh_folder / "greedy_mes.json").write_text(json.dumps(greedy))  # the costlier greedy run, as if it ran there
    assert exit_code_of(lambda: study.main(["--config", str(fresh_path), "--phase", "search"])) == 0
    for run, result in extended.items():
        fresh = json.loads((fresh_folder / f"{run}.json").read_text())
        assert result["budget"] == fresh["budget"] == old_budget + 3 and result["extended_from_budget"] == old_budget
        assert result["evaluated"] == fresh["evaluated"] and len(result["evaluated"]) == old_budget + 3
        assert result["pick"] == fresh["pick"] and result["evaluations"] == fresh["evaluations"]
        assert result["seconds"] >= first[run]["seconds"]
    again = {run: (folder / f"{run}.json").stat().st_mtime_ns for run in first}
    assert exit_code_of(lambda: study.main([*search, "--extend-budgets"])) == 0  # at the budget now: nothing redone
    assert {run: (folder / f"{run}.json").stat().st_mtime_ns for run in first} == again


def test_a_greedy_run_holds_only_with_a_check_at_every_configured_target(tmp_path):
    config = _config(tmp_path)
    greedy = [name for name, settings in config["strategies"].items() if settings["strategy"] == "greedy"]

    def check(name, target, holds):
        return {"table": "iphone12", "target": target, "greedy": name, "holds": holds}

    checks = {"greedy_vs_random": [check(g, t, True) for g in greedy for t in ("1.6ms", "0.9ms")],
              "greedy_vs_random_5x": [check(g, t, t == "1.6ms") for g in greedy for t in ("1.6ms", "0.9ms")]}
    checks["greedy_vs_random"][-1]["holds"] = False  # the last greedy run misses at 0.9 ms
    targets = [study.Target("iphone12", 1.6, "1.6ms"), study.Target("iphone12", 0.9, "0.9ms")]
    holds = study.greedy_must_holds(config, checks, targets)
    assert holds["greedy_at_least_random_at_every_target"] == {g: g != greedy[-1] for g in greedy}
    assert not any(holds["greedy_at_least_random_5x_at_most_targets"].values())  # 1 of 2 is not most
    checks["greedy_vs_random_5x"] = [check(g, t, True) for g in greedy for t in ("1.6ms", "0.9ms")]
    assert all(study.greedy_must_holds(config, checks, targets)["greedy_at_least_random_5x_at_most_targets"].values())
    # a configured target whose searches have not all run has no check: it counts as missed
    deeper = [*targets, study.Target("iphone12", 0.5, "0.5ms")]
    holds = study.greedy_must_holds(config, checks, deeper)
    assert not any(holds["greedy_at_least_random_at_every_target"].values())
    assert all(holds["greedy_at_least_random_5x_at_most_targets"].values())  # 2 of 3 is most
    assert not any(study.greedy_must_holds(config, checks, [*deeper, study.Target("iphone12", 0.4, "0.4ms")])
                   ["greedy_at_least_random_5x_at_most_targets"].values())  # 2 of 4 is not
    checks["greedy_vs_random"] = [c for c in checks["greedy_vs_random"] if c["greedy"] != greedy[0] or c["target"] == "1.6ms"]
    assert study.greedy_must_holds(config, checks, targets)["greedy_at_least_random_at_every_target"][greedy[0]] is False


def test_the_v1_config_loads_with_v1_and_v2_greedy_runs_and_its_targets_from_the_highest_down(tmp_path):
    config = study.load_config(study.HERE / "config_v1.yaml")
    assert config["space"] == "efficientformer_v1"
    actions = {name: settings.get("actions") for name, settings in config["strategies"].items()
               if settings["strategy"] == "greedy"}
    assert "v1" in actions.values() and "v2" in actions.values()
    latencies = [t.latency_ms for t in _targets(config)]
    assert latencies == sorted(latencies, reverse=True) and 3.0 in latencies and 1.6 in latencies


@pytest.mark.slow
def test_a_greedy_run_takes_the_action_set_it_is_configured_with_and_records_it(tmp_path):
    """On a supernet with trained MetaPath logits, `actions: v1` walks the V1 steps (a MetaPath to
    identity, an attention block to the conv type, a stage one width down) and `actions: v2` the
    V2 ones; each result says which it took."""
    from tests.gumbel_support import gumbel_checkpoint

    checkpoint = gumbel_checkpoint(tmp_path / "supernet.pt", (3, 2))
    data = make_fashion_mnist(tmp_path / "fashion")
    config = yaml.safe_load((study.HERE / "config_v1.yaml").read_text())
    config.update(space="edgenext", data=f"fashion-mnist:{data}", supernet=str(checkpoint), runs=str(tmp_path / "runs"),
                  results=str(tmp_path / "results"),
                  evaluator={"batch_size": 5, "eval_batches": 2, "recalibrate": 0, "untrained_norms": "estimate",
                             "screen_batches": 1, "shortlist": 1})
    config["tables"]["iphone12"].update(targets_ms=[], target_fractions=[0.97], references={})
    config["strategies"] = {name: {**settings, "min_step_ms": None} for name, settings in config["strategies"].items()
                            if name in ("greedy_latency_v1", "greedy_latency_v2")}
    config["standalone"].update(also_train=[])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert exit_code_of(lambda: study.main(["--config", str(path), "--phase", "search"])) == 0
    results = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "results").rglob("greedy_*.json")}
    assert {name: result["actions"] for name, result in results.items()} == {"greedy_latency_v1": "v1",
                                                                             "greedy_latency_v2": "v2"}
    v1_steps = [step["action"] for step in results["greedy_latency_v1"]["path"]][1:]
    assert v1_steps and all(a.startswith(("metapath ", "sdta->conv_encoder ", "width ")) for a in v1_steps)
    assert v1_steps[0] == "metapath s3b2"  # the MetaPath its logits rank least important


@pytest.mark.parametrize("name", sorted(path.name for path in study.HERE.glob("config*.yaml")))
def test_every_committed_config_loads(name):
    config = study.load_config(study.HERE / name)
    assert _targets(config)


def test_the_at_references_config_targets_each_reference_at_its_own_predicted_latency_rounded_up_to_the_microsecond():
    config = study.load_config(study.HERE / "config_at_references.yaml")
    space = study.get_space(config["space"])
    tables = study.tables_of(config, space)
    for table, settings in config["tables"].items():
        assert sorted(settings["targets_ms"]) == sorted(settings["references"].values())
        for reference, target_ms in settings["references"].items():
            predicted = float(tables[table].predict(space.reference(reference)))
            assert predicted <= target_ms < predicted + 0.001, (reference, predicted, target_ms)
