"""The hybrid study's runner (`experiments/hybrid_space/run.py`): its config refusals, the supernet
phase on tiny Fashion-MNIST-shaped files (the ranking study's recipe, this space), and the
comparison on hand-made search results: every pick priced by the hybrid table, fronts chosen on
val, each front's network trained standalone once (a training any study already holds is reused),
block types counted and priced per stage."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from experiments.hybrid_space import run as study
from experiments.search_fashion import run as search_study
from experiments.study import exit_code_of
from lut import get_device
from search_spaces import Block, Stage, get_space
from supernet.standalone import StandaloneResult
from tests.supernet.test_data import make_fashion_mnist


def _write(path, config: dict):
    path.write_text(yaml.safe_dump(config, sort_keys=False), "utf-8")
    return path


def _search_configs(tmp_path) -> tuple:
    """A hybrid and a V2 search-study config on the iPhone 12 table, results under tmp_path."""
    hybrid = search_study.load_config(study.HERE / "search_iphone12.yaml")
    hybrid["results"] = str(tmp_path / "hybrid")
    hybrid["supernet"] = str(tmp_path / "checkpoints" / "supernet.pt")
    hybrid["runs"] = str(tmp_path / "runs")
    hybrid["standalone"]["seeds"] = [0, 1]  # the tests' own count, whatever the committed study trains
    v2 = search_study.load_config(search_study.HERE / "config.yaml")
    v2["results"] = str(tmp_path / "v2")
    return _write(tmp_path / "hybrid.yaml", hybrid), _write(tmp_path / "v2.yaml", v2)


def _study_config(tmp_path, **changes) -> dict:
    hybrid, v2 = _search_configs(tmp_path)
    config = {"recipe": "experiments/supernet_ranking/config.yaml", "checkpoints": str(tmp_path / "checkpoints"),
              "results": str(tmp_path / "results"),
              "searches": [{"search": str(hybrid), "compare_with": {"efficientformer_v2": str(v2)}}]}
    config.update(changes)
    return config


def _pick(config_path, target: str, target_ms: float, run: str, arch, val: float, test: float) -> None:
    config = search_study.load_config(config_path)
    folder = search_study.results_of(config)
    path = folder / "searches" / "iphone12" / target / f"{run}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"table": "iphone12", "target": target, "target_ms": target_ms, "run": run,
                                "pick": {"arch": arch.to_dict(), "val_accuracy": val}}))
    rescored = folder / "rescored.json"
    scores = json.loads(rescored.read_text()) if rescored.is_file() else {"test_accuracy": {}, "measured_ms": {}}
    scores["test_accuracy"][search_study.arch_key(arch)] = test
    rescored.write_text(json.dumps(scores))


def _trained(config_path, target: str, role: str, arch, tests: tuple[float, ...], first_seed: int = 0) -> None:
    """`arch` trained standalone (as `role` at `target`) with the study's recipe, one test accuracy
    per seed from `first_seed` on."""
    config = search_study.load_config(config_path)
    for seed, test in enumerate(tests, start=first_seed):
        path = search_study.results_of(config) / "standalone" / f"iphone12_{target}_{role}_seed{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"arch": arch.to_dict(), "accuracy": {"test": test / 100},
                                    "recipe": dataclasses.asdict(search_study.recipe_of(config, seed))}))


def test_the_comparison_prices_both_sides_with_one_table_and_chooses_on_val(tmp_path):
    config = _study_config(tmp_path)
    path = _write(tmp_path / "study.yaml", config)
    hybrid_config, v2_config = config["searches"][0]["search"], config["searches"][0]["compare_with"]["efficientformer_v2"]
    v2, hybrid = get_space("efficientformer_v2"), get_space("hybrid")
    base = dataclasses.replace(v2.smallest(), space="hybrid")  # V2's smallest, a hybrid network too
    mixed = hybrid.validate(dataclasses.replace(base, stages=(
        dataclasses.replace(base.stages[0], blocks=tuple(dataclasses.replace(b, type="meta4d") for b in base.stages[0].blocks)),
        *base.stages[1:])))
    # the hybrid side: at 0.9 ms the val-best pick (mixed, 80.0 val) has the lower test accuracy
    _pick(hybrid_config, "0.9ms", 0.9, "random_seed0", hybrid.smallest(), 70.0, 79.0)
    _pick(hybrid_config, "0.9ms", 0.9, "greedy_mes_types", mixed, 80.0, 78.0)
    _pick(v2_config, "0.9ms", 0.9, "greedy_mes_steps_plain", v2.smallest(), 75.0, 77.0)
    # standalone, in the studies' own folders: each side's front at 0.9 ms and S0 (a training of the
    # same layers and recipe counts wherever it was made, under either space's name)
    _trained(hybrid_config, "0.9ms", "greedy_mes_types", mixed, (83.0, 82.2))
    _trained(v2_config, "0.9ms", "greedy_mes_steps_plain", v2.smallest(), (80.0, 79.0))
    for config_path, space in ((hybrid_config, hybrid), (v2_config, v2)):
        _trained(config_path, "0.9ms", "reference", space.reference("s0"), (83.5, 82.5))
    assert exit_code_of(lambda: study.main(["--config", str(path), "--phase", "compare"])) == 0
    report = json.loads((tmp_path / "results" / "comparison.json").read_text())
    rows = {row["target"]: row for row in report["tables"]["iphone12"]["targets"]}
    assert set(rows) == {"0.9ms", "1.1ms", "1.6ms"}
    predictor = get_device("iphone12").default_table(hybrid)  # V2's pick priced by the hybrid table
    assert rows["0.9ms"]["efficientformer_v2"]["latency_ms"] == pytest.approx(predictor.predict(base), abs=1e-5)
    assert rows["0.9ms"]["hybrid"]["run"] == "greedy_mes_types"  # chosen on val, not on test
    assert rows["0.9ms"]["hybrid"]["test_accuracy"] == 78.0
    assert rows["0.9ms"]["hybrid_at_least_as_good"] == {"efficientformer_v2": True}
    standalone = rows["0.9ms"]["standalone"]
    assert standalone["hybrid"]["run"] == "greedy_mes_types" and standalone["hybrid"]["mean"] == pytest.approx(82.6)
    assert standalone["efficientformer_v2"]["run"] == "greedy_mes_steps_plain"
    assert standalone["efficientformer_v2"]["mean"] == pytest.approx(79.5)
    # seed by seed: 3.0 and 3.2 points; three networks (S0 counted once though trained under both
    # spaces' names) with seed 0 above seed 1 by 0.8 / 1.0 / 1.0: seed effects +-0.467, what is left
    # 0.0816 on 2 degrees of freedom, so SE 0.0816 and the call needs t(0.975, 2) x SE = 0.351
    verdict = standalone["hybrid_vs"]["efficientformer_v2"]
    assert verdict == {"difference_points": 3.1, "standard_error_points": 0.082, "critical_points": 0.351,
                       "seeds": [0, 1], "verdict": "hybrid better"}
    assert rows["1.1ms"]["standalone"] == standalone  # the val-best picks within 1.1 ms are the same networks
    # how firmly each front was chosen: 10 points ahead of the next network, on 500 val images
    assert rows["0.9ms"]["front_margin"]["hybrid"] == {
        "val_images": 500, "one_image_points": 0.2, "val_standard_error_points": 1.789,
        "runner_up": "random_seed0", "margin_points": 10.0, "picks_within_one_standard_error": 0}
    assert rows["0.9ms"]["front_margin"]["efficientformer_v2"]["runner_up"] is None  # its only pick
    assert report["standalone_seed_noise"] == {"std_points": 0.082, "degrees_of_freedom": 2,
                                               "seed_effects_points": {"0": 0.467, "1": -0.467}}
    stage1 = report["tables"]["iphone12"]["block_types_per_stage"][0]
    assert set(stage1) <= {"meta4d", "ffn"} and stage1["meta4d"] > 0.5
    assert report["tables"]["iphone12"]["greedy_block_types_per_stage"][0] == {"meta4d": 1.0}  # greedy's pick alone
    assert (tmp_path / "results" / "fronts_iphone12.png").is_file()


def test_a_config_that_searches_another_space_or_lacks_a_table_is_refused_in_one_line(tmp_path, capsys):
    config = _study_config(tmp_path)
    search = search_study.load_config(config["searches"][0]["search"])
    search["space"] = "efficientformer_v2"
    _write(tmp_path / "hybrid.yaml", search)
    path = _write(tmp_path / "study.yaml", config)
    assert exit_code_of(lambda: study.main(["--config", str(path), "--phase", "compare"])) == 2
    assert "searches 'efficientformer_v2'" in capsys.readouterr().err
    config = _study_config(tmp_path)
    other = search_study.load_config(config["searches"][0]["compare_with"]["efficientformer_v2"])
    other["tables"] = {"elsewhere": other["tables"]["iphone12"]}
    _write(tmp_path / "v2.yaml", other)
    path = _write(tmp_path / "study.yaml", config)
    assert exit_code_of(lambda: study.main(["--config", str(path), "--phase", "compare"])) == 2
    err = capsys.readouterr().err.strip()
    assert "has no table 'iphone12'" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_the_supernet_phase_trains_the_hybrid_space_with_the_ranking_recipe(tmp_path):
    recipe = study.ranking_study.load_config(study.ROOT / "experiments/supernet_ranking/config.yaml")
    recipe.update(data=f"fashion-mnist:{make_fashion_mnist(tmp_path / 'fm', train_per_class=3, test_per_class=1)}",
                  resolution=32)
    recipe["supernet"].update(epochs=1, batch_size=30, train_images=0, val_images=0)
    config = _study_config(tmp_path, recipe=str(_write(tmp_path / "recipe.yaml", recipe)))
    path = _write(tmp_path / "study.yaml", config)
    assert exit_code_of(lambda: study.main(["--config", str(path), "--phase", "supernet"])) == 0
    training = json.loads((tmp_path / "results" / "supernet_training.json").read_text())
    assert training["config"]["space"] == "hybrid" and training["config"]["lr"] == recipe["supernet"]["lr"]
    assert (tmp_path / "checkpoints" / "supernet.pt").is_file()


def test_threads_out_of_range_is_one_line_and_exit_2(tmp_path, capsys):
    path = _write(tmp_path / "study.yaml", _study_config(tmp_path))
    assert exit_code_of(lambda: study.main(["--config", str(path), "--phase", "supernet", "--threads", "0"])) == 2
    assert capsys.readouterr().err.strip() == "--threads: an integer from 1 to 256, got 0"
    assert not (tmp_path / "checkpoints").exists()


def test_type_prices_cost_each_allowed_type_in_place_of_the_stages_last_block_against_ffn():
    hybrid = get_space("hybrid")
    predictor = get_device("iphone12").default_table(hybrid)
    prices = study.type_prices(predictor)
    largest = hybrid.largest()
    base = float(predictor.predict(largest))
    assert len(prices) == len(hybrid.stages)
    for index, (stage, choices) in enumerate(zip(prices, hybrid.stages, strict=True)):
        assert stage["ffn"] == 0.0
        assert {name.split("[")[0] for name in stage} == set(choices.block_types)
        last = largest.stages[index]

        def swapped(type_name: str, last=last, index=index) -> float:
            blocks = (*last.blocks[:-1], Block(type_name, expansion=last.blocks[-1].expansion))
            return float(predictor.predict(hybrid.validate(largest.replace_stage(index, Stage(last.width, blocks)))))

        ffn_ms, meta4d_ms = swapped("ffn"), swapped("meta4d")
        assert stage["meta4d"] == pytest.approx(100 * (meta4d_ms - ffn_ms) / base, abs=1e-3)
        # the last block's own type is priced as it stands, not by a swap of an earlier block
        assert stage[last.blocks[-1].type] == pytest.approx(100 * (base - ffn_ms) / base, abs=1e-3)
    assert "attn_ffn" not in prices[0]  # no global attention at 1/4 resolution
    assert largest.stages[2].blocks[-1].type == "attn_ffn" and prices[2]["attn_ffn"] > 0


def test_the_evaluators_ranking_of_what_was_trained_counts_each_network_once_at_every_seed():
    hybrid = get_space("hybrid")
    config = search_study.load_config(study.HERE / "search_iphone12.yaml")
    recipes = {seed: search_study.recipe_of(config, seed) for seed in (0, 1)}
    networks = [hybrid.smallest(), hybrid.reference("s0"), hybrid.reference("s1"), hybrid.reference("s2")]
    picks = [study.Pick("hybrid", "random_seed0", networks[0], 0.8, 80.0, None),
             study.Pick("hybrid", "random_seed1", networks[0], 0.8, 81.0, None),  # the same layers again: its best val
             study.Pick("hybrid", "greedy_mes_types", networks[1], 0.9, 82.0, None),
             study.Pick("hybrid", "evolution_seed0", networks[2], 1.1, 84.0, None),
             study.Pick("hybrid", "evolution_seed1", networks[3], 1.6, 85.0, None)]  # trained at seed 0 only
    tests = {0: (80.0, 81.0), 1: (84.0, 83.0), 2: (82.0, 83.0), 3: (90.0,)}
    done = [{"arch": networks[index].to_dict(), "accuracy": {"test": test / 100},
             "recipe": search_study.recipe_record(recipes[seed])}
            for index, values in tests.items() for seed, test in enumerate(values)]
    bootstrap = {"bootstrap": 200, "bootstrap_seed": 0}
    ranking = study.evaluator_vs_standalone(picks, done, [0, 1], recipes, bootstrap)
    # val 81 / 82 / 84 against mean test 80.5 / 83.5 / 82.5: two of three pairs in order
    assert ranking["networks"] == 3 and ranking["kendall_tau"] == pytest.approx(1 / 3, abs=1e-4)
    assert study.evaluator_vs_standalone(picks[:3], done, [0, 1], recipes, bootstrap) is None  # two networks


def _fronts_study(tmp_path, **changes) -> tuple:
    """A study config (with `changes`) whose hybrid search picked S1 at 1.6 ms and its smallest
    network at 0.9 ms, and whose V2 search picked its smallest at 0.9 ms."""
    config = _study_config(tmp_path, **changes)
    path = _write(tmp_path / "study.yaml", config)
    hybrid_config, v2_config = config["searches"][0]["search"], config["searches"][0]["compare_with"]["efficientformer_v2"]
    v2, hybrid = get_space("efficientformer_v2"), get_space("hybrid")
    _pick(hybrid_config, "1.6ms", 1.6, "greedy_mes_types", hybrid.reference("s1"), 81.0, 80.0)
    _pick(hybrid_config, "0.9ms", 0.9, "greedy_mes_types", hybrid.smallest(), 70.0, 69.0)
    _pick(v2_config, "0.9ms", 0.9, "greedy_mes_steps_plain", v2.smallest(), 75.0, 77.0)
    return path, hybrid_config, v2_config, hybrid, v2


def _fake_training(monkeypatch, test_of) -> list[tuple[str, int]]:
    """Standalone training replaced by `test_of(arch, seed)` (a test accuracy); returns the list
    the (architecture key, seed) of each training is appended to."""
    trained = []

    def train_standalone(arch, bundle, recipe, checkpoint, label=""):
        trained.append((search_study.arch_key(arch), recipe.seed))
        return StandaloneResult(arch, {"train": 0.9, "val": 0.8, "test": test_of(arch, recipe.seed)}, 1, recipe.epochs, 0, 1.0, ())

    monkeypatch.setattr(study, "train_standalone", train_standalone)
    monkeypatch.setattr(study, "load_data", lambda data, resolution: None)
    monkeypatch.setattr(search_study, "get_resolution", lambda search: 64)
    return trained


def test_the_fronts_phase_trains_each_fronts_network_once_and_reuses_any_studys_training(tmp_path, monkeypatch):
    path, hybrid_config, v2_config, hybrid, v2 = _fronts_study(tmp_path)
    _trained(v2_config, "0.9ms", "found", v2.smallest(), (80.0, 79.0))  # V2's front: trained already
    _trained(hybrid_config, "0.9ms", "reference", hybrid.smallest(), (71.0,))  # seed 0 only
    trained = _fake_training(monkeypatch, lambda arch, seed: 0.8 + seed / 100)
    assert exit_code_of(lambda: study.main(["--config", str(path), "--phase", "fronts"])) == 0
    # hybrid: S1 (the front at 1.6 ms) at both seeds, its smallest (0.9 and 1.1 ms) at seed 1 only; V2: nothing
    assert sorted(trained) == sorted([(search_study.arch_key(hybrid.reference("s1")), 0),
                                      (search_study.arch_key(hybrid.reference("s1")), 1),
                                      (search_study.arch_key(hybrid.smallest()), 1)])
    assert len(list((tmp_path / "results" / study.FRONTS).glob("*.json"))) == 3
    assert exit_code_of(lambda: study.main(["--config", str(path), "--phase", "fronts"])) == 0
    assert len(trained) == 3  # a second run trains nothing again
    assert exit_code_of(lambda: study.main(["--config", str(path), "--phase", "compare"])) == 0
    rows = {row["target"]: row for row in json.loads((tmp_path / "results" / "comparison.json").read_text())
            ["tables"]["iphone12"]["targets"]}
    assert rows["1.6ms"]["standalone"]["hybrid"] == {"run": "greedy_mes_types", "mean": 80.5,
                                                     "test_by_seed": {"0": 80.0, "1": 81.0}}
    assert rows["0.9ms"]["standalone"]["hybrid"]["test_by_seed"] == {"0": 71.0, "1": 81.0}


@pytest.mark.parametrize("confirm, message", [
    ([{"table": "iphone12", "target": "0.8ms", "seeds": [5]}], "'iphone12' '0.8ms' is not a compared target; choose from"),
    ([{"table": "iphone12", "target": "0.9ms", "seeds": [1, 5]}], "[1] are seeds of the recipe already ([0, 1])"),
    ([{"table": "iphone12", "target": "0.9ms", "seeds": [5, 5]}], "give a list of distinct whole numbers"),
    ([{"table": "iphone12", "target": "0.9ms", "seeds": [-1]}], "give a list of distinct whole numbers"),
    ([{"table": "iphone12", "target": "0.9ms"}], "give table, target and seeds"),
    ([{"table": "iphone12", "target": "0.9ms", "seeds": [5]}, {"table": "iphone12", "target": "0.9ms", "seeds": [6]}],
     "is confirmed twice"),
    ({"iphone12": "0.9ms"}, "confirm: a list of"),
])
def test_a_bad_confirmation_is_one_line_and_exit_2(tmp_path, capsys, confirm, message):
    path = _write(tmp_path / "study.yaml", _study_config(tmp_path, confirm=confirm))
    assert exit_code_of(lambda: study.main(["--config", str(path), "--phase", "compare"])) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "results").exists()


def test_a_confirmation_trains_its_targets_fronts_at_its_seeds_and_is_judged_on_them_alone(tmp_path, monkeypatch):
    path, _, _, hybrid, v2 = _fronts_study(tmp_path, confirm=[{"table": "iphone12", "target": "0.9ms", "seeds": [2, 3]}])
    tests = {search_study.arch_key(hybrid.smallest()): (83.0, 82.0, 82.0, 81.0),
             search_study.arch_key(hybrid.reference("s1")): (84.0, 83.4),
             search_study.arch_key(dataclasses.replace(v2.smallest(), space="hybrid")): (80.0, 79.2, 81.5, 80.1)}
    trained = _fake_training(monkeypatch, lambda arch, seed: tests[search_study.arch_key(arch)][seed] / 100)
    assert exit_code_of(lambda: study.main(["--config", str(path), "--phase", "fronts"])) == 0
    seeds = {}
    for key, seed in trained:
        seeds.setdefault(key, []).append(seed)
    # the 0.9 ms fronts (the hybrid's smallest is also its front at 1.1 ms) at seeds 0-3; S1, the
    # front at 1.6 ms only, at the recipe's seeds alone
    assert {key: sorted(value) for key, value in seeds.items()} == {
        search_study.arch_key(hybrid.smallest()): [0, 1, 2, 3],
        search_study.arch_key(dataclasses.replace(v2.smallest(), space="hybrid")): [0, 1, 2, 3],
        search_study.arch_key(hybrid.reference("s1")): [0, 1]}
    assert exit_code_of(lambda: study.main(["--config", str(path), "--phase", "compare"])) == 0
    report = json.loads((tmp_path / "results" / "comparison.json").read_text())
    rows = {row["target"]: row for row in report["tables"]["iphone12"]["targets"]}
    assert "confirmation" not in rows["1.1ms"] and "confirmation" not in rows["1.6ms"]
    recipe_seeds, confirmation = rows["0.9ms"]["standalone"]["hybrid_vs"]["efficientformer_v2"], rows["0.9ms"]["confirmation"]
    assert recipe_seeds["seeds"] == [0, 1] and recipe_seeds["difference_points"] == 2.9  # 3.0 and 2.8
    assert confirmation["seeds"] == [2, 3]
    assert confirmation["hybrid"]["test_by_seed"] == {"2": 82.0, "3": 81.0}
    verdict = confirmation["hybrid_vs"]["efficientformer_v2"]
    # 0.5 and 0.9 points: one noise estimate from all ten trainings (the seeds' shared effects removed),
    # and at two seeds a mean difference's SE is the noise itself
    noise = report["standalone_seed_noise"]
    assert verdict["seeds"] == [2, 3] and verdict["difference_points"] == 0.7
    assert verdict["standard_error_points"] == pytest.approx(noise["std_points"], abs=1e-3)
    assert set(noise["seed_effects_points"]) == {"0", "1", "2", "3"}
    assert confirmation["complete"] is True
    # the target stands on its confirmation, the others on the recipe's seeds; the must-holds read them
    record = rows["0.9ms"]["verdict_of_record"]["efficientformer_v2"]
    assert record["basis"] == "confirmation" and record["seeds"] == [2, 3] and record["difference_points"] == 0.7
    assert record["verdict"] == verdict["verdict"]
    assert rows["1.6ms"]["verdict_of_record"]["efficientformer_v2"]["basis"] == "recipe seeds"
    # 0.9 ms: +2.9 at the recipe's seeds would be called better (beyond 2.195), but its confirmation's
    # +0.7 is a tie and is the verdict of record, so only 1.6 and 1.1 ms count as better
    assert recipe_seeds["verdict"] == "hybrid better" and record["verdict"] == "tie within the seed spread"
    summary = report["must_hold"]
    assert summary["at_least_as_good_everywhere"] is True and summary["worse"] == []
    assert summary["strictly_better_somewhere"] is True
    assert [(entry["target"], entry["basis"]) for entry in summary["better"]] == [("1.6ms", "recipe seeds"),
                                                                               ("1.1ms", "recipe seeds")]
    # with one confirmation training missing there is no verdict (none from a part of the seeds)
    missing = next(path for path in (tmp_path / "results" / study.FRONTS).glob("*_seed3.json")
                   if json.loads(path.read_text())["study"] == "efficientformer_v2")
    missing.unlink()
    assert exit_code_of(lambda: study.main(["--config", str(path), "--phase", "compare"])) == 0
    report = json.loads((tmp_path / "results" / "comparison.json").read_text())
    confirmation = {row["target"]: row for row in report["tables"]["iphone12"]["targets"]}["0.9ms"]["confirmation"]
    assert confirmation["complete"] is False and confirmation["hybrid_vs"] == {}
    assert confirmation["efficientformer_v2"]["test_by_seed"] == {"2": 81.5}
    # ... and the target falls back on the recipe seeds' verdict
    row = {row["target"]: row for row in report["tables"]["iphone12"]["targets"]}["0.9ms"]
    assert row["verdict_of_record"]["efficientformer_v2"]["basis"] == "recipe seeds"
    assert row["verdict_of_record"]["efficientformer_v2"]["seeds"] == [0, 1]
