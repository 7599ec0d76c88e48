"""Study `hybrid_space`: is a cross-family block choice a better use of a millisecond than V2's?

    python experiments/hybrid_space/run.py --phase supernet     # the hybrid supernet (hours on 2 cores)
    python experiments/hybrid_space/run.py --phase search       # one process per core
    python experiments/hybrid_space/run.py --phase rescore      # every pick on the test split
    python experiments/hybrid_space/run.py --phase standalone   # one process per core
    python experiments/hybrid_space/run.py --phase evaluate     # the search study's tables and verdicts
    python experiments/hybrid_space/run.py --phase fronts       # each front's network trained standalone
    python experiments/hybrid_space/run.py --phase compare      # hybrid vs single-family fronts, block types
    python experiments/hybrid_space/run.py --phase all

Nothing of the two earlier studies is written again here; this runner composes them:

1. supernet: the `hybrid` supernet trained with the ranking study's recipe, read from that study's
   config (`recipe`): its data, resolution, accelerator and `supernet` section, with only the
   space and the checkpoint folder replaced (`experiments/supernet_ranking/run.py`'s
   `train_supernet`). The checkpoint resumes.
2. search, rescore, standalone, evaluate: `experiments/search_fashion/run.py` on the config named
   by `search` (the search study's own format, with `space: hybrid` and this supernet): the same
   targets, strategies, budgets, test-split re-scoring and standalone verdicts as the V2 study.
3. fronts: the network of every study's front at every target (below) trained from scratch with the
   hybrid search config's standalone recipe at each of its seeds, unless a training of the same
   layers with the same recipe and seed is already in one of the studies' `standalone/` folders (a
   V2 network trains the same under either space's name), and for a target `confirm` names, also
   at its confirmation seeds (new seeds fixed in advance). Several processes may run it at once.
4. compare: per table, the hybrid picks against the picks of every single-family study in
   `compare_with`, each of their picks priced again with the hybrid study's table (a V2 network is
   a network of this space, so on `ort-cpu` both sides are priced by one table measured on one
   host, and on `iphone12` the two tables agree exactly). At each target, the front's network is
   the pick of the highest **val** accuracy within the target (a decision, so made on val), and its
   test accuracy is what is compared. Then the block types the hybrid picks use per stage, per
   table (all picks, the fronts, and greedy's alone: greedy's steps are priced by the table, the
   sampling strategies' picks mostly by the supernet), and how far the two devices' choices differ
   (total variation distance per stage, over all picks and over greedy's); and
   what each block type costs in place of an `ffn` per stage on each table (`type_prices`), the
   device's side of that question, which no supernet colours. Trained standalone, hybrid minus rival
   in mean test accuracy over the seeds both fronts were trained at, against the t quantile of its
   standard error from the recipe's seed noise (`experiments.seed_blocks`: every network trained with
   it that the studies hold, the seeds' shared effect removed); a confirmation is judged the same
   way on its own seeds alone, and only once every one of them is trained.

Outputs (under `results`): supernet_training.json, the search study's files (searches/,
rescored.json, standalone/, results.json, results.csv, search_<table>.png), standalone_fronts/,
comparison.json and fronts_<table>.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from nas.actions import type_actions  # noqa: E402
from search_spaces import Architecture, ArchitectureError, get_space  # noqa: E402
from search_spaces.files import write_bytes_atomic  # noqa: E402

import experiments.search_fashion.run as search_study  # noqa: E402
import experiments.supernet_ranking.run as ranking_study  # noqa: E402
from experiments.seed_blocks import SeedNoise, paired_difference, seed_noise  # noqa: E402
from experiments.study import Claim, exit_code_of, load_settings, log, png_bytes, read_json, seed_list_refusal, write_json  # noqa: E402
from supernet.data import load_data  # noqa: E402
from supernet.standalone import train_standalone  # noqa: E402

SPACE = "hybrid"
PHASES = ("supernet", *search_study.PHASES, "fronts", "compare")
FRONTS = "standalone_fronts"  # under `results`: the fronts' standalone trainings
KEYS = ("recipe", "checkpoints", "results", "searches")
OPTIONAL_KEYS = ("confirm",)  # confirmation runs: a comparison trained again at new seeds, judged on those alone


@dataclasses.dataclass(frozen=True)
class Pick:
    """One search's pick as the comparison sees it: priced by the hybrid study's table."""

    study: str
    run: str
    arch: Architecture
    latency_ms: float
    val_accuracy: float
    test_accuracy: float | None


# -- configuration -------------------------------------------------------------------------------
def load_config(path: Path) -> dict[str, Any]:
    """The study's settings; each entry of `searches` is a search-study config of this space and
    this supernet, with the single-family search-study configs it is compared with (same table names)."""
    config = load_settings(path, KEYS, OPTIONAL_KEYS)
    supernet = str(Path(config["checkpoints"]) / "supernet.pt")
    if not isinstance(config["searches"], list) or not config["searches"]:
        raise SystemExit(f"{path}: searches: a list of {{search: CONFIG, compare_with: {{LABEL: CONFIG}}}}")
    for index, entry in enumerate(config["searches"]):
        where = f"{path}: searches[{index}]"
        if not isinstance(entry, dict) or set(entry) != {"search", "compare_with"} or not isinstance(entry["compare_with"], dict):
            raise SystemExit(f"{where}: give search (a search-study config) and compare_with (label -> search-study config)")
        search = search_study.load_config(ROOT / entry["search"])
        if search["space"] != SPACE or search["supernet"] != supernet:
            raise SystemExit(f"{where}: {entry['search']} searches {search['space']!r} with {search['supernet']}; "
                             f"this study searches {SPACE!r} with {supernet}")
        for label, other in entry["compare_with"].items():
            missing = sorted(set(search["tables"]) - set(search_study.load_config(ROOT / other)["tables"]))
            if missing:
                raise SystemExit(f"{where}: compare_with.{label}: {other} has no table {missing[0]!r}")
    check_confirmations(path, config)
    return config


def check_confirmations(path: Path, config: dict[str, Any]) -> None:
    """`confirm`: a list of {table, target, seeds}, each naming a target of a table the searches
    compare at, with distinct seeds none of which the hybrid search config's recipe trains already
    (a confirmation is judged on fresh seeds only)."""
    entries = config.get("confirm", [])
    if not isinstance(entries, list):
        raise SystemExit(f"{path}: confirm: a list of {{table: NAME, target: LABEL, seeds: [N, ...]}}")
    if not entries:  # nothing to check: no search config read again, no table built
        return
    space = get_space(SPACE)
    known: dict[tuple[str, str], list[int]] = {}  # (table, target label) -> the recipe's own seeds
    for entry in config["searches"]:
        search = search_study.load_config(ROOT / entry["search"])
        for target in search_study.targets_of(search, space, search_study.tables_of(search, space)):
            known[(target.table, target.label)] = [int(seed) for seed in search["standalone"]["seeds"]]
    seen: set[tuple[str, str]] = set()
    for index, entry in enumerate(entries):
        where = f"{path}: confirm[{index}]"
        if not isinstance(entry, dict) or set(entry) != {"table", "target", "seeds"}:
            raise SystemExit(f"{where}: give table, target and seeds")
        key = (entry["table"], entry["target"])
        if key not in known:
            raise SystemExit(f"{where}: {entry['table']!r} {entry['target']!r} is not a compared target; choose from "
                             + ", ".join(f"{table} {label}" for table, label in known))
        if key in seen:
            raise SystemExit(f"{where}: {entry['table']} {entry['target']} is confirmed twice; give each target once")
        seen.add(key)
        seeds = entry["seeds"]
        if (refusal := seed_list_refusal(seeds)) is not None:
            raise SystemExit(f"{where}.seeds: {seeds!r}; {refusal}")
        reused = sorted(set(seeds) & set(known[key]))
        if reused:
            raise SystemExit(f"{where}.seeds: {reused} are seeds of the recipe already ({known[key]}); "
                             "a confirmation takes new seeds only")


def confirmation_seeds(config: dict[str, Any], table: str) -> dict[str, list[int]]:
    """Target label -> the confirmation seeds `confirm` gives it on `table`."""
    return {entry["target"]: [int(seed) for seed in entry["seeds"]]
            for entry in config.get("confirm", []) if entry["table"] == table}


def training_config(config: dict[str, Any]) -> dict[str, Any]:
    """The ranking study's config with this study's space, checkpoints and results."""
    recipe = ranking_study.load_config(ROOT / config["recipe"])
    return {**recipe, "space": SPACE, "checkpoints": config["checkpoints"], "results": config["results"]}


# -- 3. compare ----------------------------------------------------------------------------------
def picks_of(label: str, study: dict[str, Any], table: str, predictor) -> list[Pick]:
    """Every pick of `study` on its `table`, priced by `predictor` (a hybrid-space table)."""
    space = get_space(SPACE)
    rescored_path = search_study.results_of(study) / "rescored.json"
    test = read_json(rescored_path)["test_accuracy"] if rescored_path.is_file() else {}
    picks = []
    for result in search_study.search_results(study):
        if result["table"] != table:
            continue
        theirs = Architecture.from_dict(result["pick"]["arch"])
        try:
            mine = space.validate(dataclasses.replace(theirs, space=SPACE))
        except ArchitectureError as error:
            raise SystemExit(f"compare_with.{label}: a {theirs.space} network is not a network of the {SPACE} space "
                             f"({error}); only EfficientFormerV2 studies can be compared on one table") from None
        picks.append(Pick(label, result["run"], mine, float(predictor.predict(mine)), float(result["pick"]["val_accuracy"]),
                          test.get(search_study.arch_key(theirs))))
    return picks


def front_at(picks: list[Pick], target_ms: float) -> Pick | None:
    """The pick within `target_ms` of the highest val accuracy (ties: the faster one)."""
    within = [pick for pick in picks if pick.latency_ms <= target_ms * (1 + 1e-9)]
    return max(within, key=lambda pick: (pick.val_accuracy, -pick.latency_ms)) if within else None


def front_margin(picks: list[Pick], target_ms: float, val_images: int) -> dict[str, Any] | None:
    """How firmly the front within `target_ms` was chosen: its val lead over the best pick of other
    layers within the target, beside one image's worth of val accuracy (the scores are counts of
    `val_images` images) and the binomial standard error of one score."""
    best = front_at(picks, target_ms)
    if best is None:
        return None
    layers = search_study.layers_key(best.arch.to_dict())
    others = [pick for pick in picks if search_study.layers_key(pick.arch.to_dict()) != layers]
    runner_up = front_at(others, target_ms)
    share = best.val_accuracy / 100
    standard_error = 100 * float(np.sqrt(share * (1 - share) / val_images))
    return {"val_images": val_images, "one_image_points": round(100 / val_images, 4),
            "val_standard_error_points": round(standard_error, 3),
            "runner_up": None if runner_up is None else runner_up.run,
            "margin_points": None if runner_up is None else round(best.val_accuracy - runner_up.val_accuracy, 4),
            "picks_within_one_standard_error": sum(
                1 for pick in others if pick.latency_ms <= target_ms * (1 + 1e-9)
                and best.val_accuracy - pick.val_accuracy <= standard_error)}


def evaluator_vs_standalone(picks: list[Pick], done: list[dict[str, Any]], seeds: list[int],
                            recipes: dict[int, Any], bootstrap: dict[str, Any]) -> dict[str, Any] | None:
    """Does a study's supernet order the networks it picked the way training them does? Kendall τ
    and Spearman ρ (bootstrap 95% intervals) of the picks' supernet val scores against their mean
    standalone test accuracy, over every pick trained at all of `seeds` (pooled over tables: one
    supernet scores them all); `bootstrap` is the ranking study's `evaluation` section."""
    best: dict[str, Pick] = {}  # layers -> its pick of the highest val score
    for pick in picks:
        key = search_study.layers_key(pick.arch.to_dict())
        if key not in best or pick.val_accuracy > best[key].val_accuracy:
            best[key] = pick
    pairs = [(pick.val_accuracy, float(np.mean(list(tests.values())))) for pick in best.values()
             if len(tests := trained_test(done, pick.arch, recipes)) == len(seeds)]
    if len(pairs) < 3:
        return None
    return ranking_study.rank_correlations([test for _, test in pairs], [score for score, _ in pairs],
                                           bootstrap["bootstrap"], bootstrap["bootstrap_seed"])


def block_types(picks: list[Pick]) -> list[dict[str, float]]:
    """Per stage, the share of each block type over the picks' blocks."""
    shares = []
    for index in range(len(get_space(SPACE).stages)):
        counts = Counter(block.type for pick in picks for block in pick.arch.stages[index].blocks)
        total = sum(counts.values())
        shares.append({name: round(count / total, 4) for name, count in sorted(counts.items())} if total else {})
    return shares


def type_prices(predictor) -> list[dict[str, float]]:
    """Per stage, what each block type (each variant: kernel, heads x sample ratio) costs in place of
    a V2 `ffn` block, in percent of the largest network's latency on `predictor`'s table: the
    stage's last block of the largest network swapped to it (`nas.actions.type_actions`, the swaps
    greedy screens), less the same swap to `ffn`. A price of the table, not of any search: what a
    slimming search weighs against accuracy at its first step."""
    space = get_space(SPACE)
    largest = space.largest()
    base = float(predictor.predict(largest))
    prices: list[dict[str, float]] = [{largest.stages[s].blocks[-1].type: 0.0} for s in range(len(space.stages))]
    for action in type_actions(space, largest):
        swap, swapped = action.swap, action.apply(largest)
        if swapped.stages[swap.stage].blocks[:-1] == largest.stages[swap.stage].blocks[:-1]:  # not a swap of an earlier block
            prices[swap.stage][swap.variant] = float(predictor.predict(swapped)) - base
    return [{name: round(100 * (delta - stage["ffn"]) / base, 3) for name, delta in stage.items()} for stage in prices]


def total_variation(first: dict[str, float], second: dict[str, float]) -> float:
    return round(0.5 * sum(abs(first.get(name, 0.0) - second.get(name, 0.0)) for name in set(first) | set(second)), 4)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One table of one `searches` entry: its predictor, its targets, and every study's picks
    priced by that table (the hybrid study's first)."""

    table: str
    predictor: Any
    targets: list
    picks: dict[str, list[Pick]]
    studies: dict[str, dict[str, Any]]  # label -> search-study config, the hybrid study's first

    @property
    def search(self) -> dict[str, Any]:
        """The hybrid search-study config (its standalone recipe trains the fronts)."""
        return self.studies[SPACE]


def comparisons_of(config: dict[str, Any]) -> list[Comparison]:
    """Every table of every `searches` entry, with the picks of the hybrid study and its rivals."""
    space = get_space(SPACE)
    found = []
    for entry in config["searches"]:
        search = search_study.load_config(ROOT / entry["search"])
        studies = {SPACE: search, **{label: search_study.load_config(ROOT / other)
                                     for label, other in entry["compare_with"].items()}}
        tables = search_study.tables_of(search, space)
        targets = search_study.targets_of(search, space, tables)
        for table, predictor in tables.items():
            picks = {label: picks_of(label, study, table, predictor) for label, study in studies.items()}
            found.append(Comparison(table, predictor, [t for t in targets if t.table == table], picks, studies))
    return found


def front_jobs(comparison: Comparison) -> list[tuple[Any, str, Pick]]:
    """(target, study label, front pick) for every study's front at every target of `comparison`."""
    return [(target, label, pick) for target in comparison.targets
            for label, picks in comparison.picks.items() if (pick := front_at(picks, target.latency_ms)) is not None]


def trainings(comparison: Comparison, config: dict[str, Any]) -> list[dict[str, Any]]:
    """Every standalone training result the comparison can use: the studies' `standalone/`
    folders and this study's fronts folder."""
    folders = [search_study.results_of(study) / "standalone" for study in comparison.studies.values()]
    folders.append(ROOT / config["results"] / FRONTS)
    return [read_json(path) for folder in folders if folder.is_dir() for path in sorted(folder.glob("*.json"))]


def _recipe_text(recipe: dict[str, Any]) -> str:
    return json.dumps(recipe, sort_keys=True)


def trained_test(done: list[dict[str, Any]], arch: Architecture, recipes: dict[int, Any]) -> dict[int, float]:
    """Per seed, the test accuracy (%) of `arch` trained with `recipes[seed]`, where `done` holds it."""
    wanted = {_recipe_text(search_study.recipe_record(recipe)): seed for seed, recipe in recipes.items()}
    layers = search_study.layers_key(arch.to_dict())
    return {wanted[_recipe_text(result["recipe"])]: 100 * float(result["accuracy"]["test"]) for result in done
            if _recipe_text(result["recipe"]) in wanted and search_study.layers_key(result["arch"]) == layers}


def study_seed_noise(done: list[dict[str, Any]]) -> SeedNoise | None:
    """The recipe's seed noise (`experiments.seed_blocks`) from every training in `done`: a network
    is its layers and its recipe apart from the seed, counted once wherever it was trained."""
    runs: dict[tuple[str, str], dict[int, float]] = {}
    for result in done:
        recipe = dict(result["recipe"])
        seed = recipe.pop("seed")
        runs.setdefault((search_study.layers_key(result["arch"]), _recipe_text(recipe)), {})[seed] = (
            100 * float(result["accuracy"]["test"]))
    return seed_noise(runs)


def fronts_phase(config: dict[str, Any]) -> None:
    """Train the network of every front (`front_jobs`) at each seed of the hybrid search config's
    recipe, and at a target's confirmation seeds (`confirm`), unless `trainings` already holds it;
    processes share the jobs through claim files."""
    bundles: dict[tuple[str, int], Any] = {}
    for comparison in comparisons_of(config):
        search = comparison.search
        done = trainings(comparison, config)  # read once: this phase writes only its own files, checked by name
        confirm = confirmation_seeds(config, comparison.table)
        for target, label, pick in front_jobs(comparison):
            for seed in [int(seed) for seed in search["standalone"]["seeds"]] + confirm.get(target.label, []):
                _train_front(config, comparison, target, label, pick, seed, done, bundles)


def _train_front(config: dict[str, Any], comparison: Comparison, target, label: str, pick: Pick, seed: int,
                 done: list[dict[str, Any]], bundles: dict[tuple[str, int], Any]) -> None:
    """One front network at one seed, unless `done` or this study's own file (written by this or
    another process since `done` was read) already holds its training."""
    search = comparison.search
    recipe = search_study.recipe_of(search, seed)
    name = f"{hashlib.sha256(search_study.layers_key(pick.arch.to_dict()).encode()).hexdigest()[:12]}_seed{seed}"
    out = ROOT / config["results"] / FRONTS / f"{name}.json"
    if trained_test(done, pick.arch, {seed: recipe}) or search_study.trained(out, pick.arch.to_dict(), recipe):
        return
    with Claim(ROOT / search["runs"] / "claims" / FRONTS / f"{name}.pid") as mine:
        if mine and not search_study.trained(out, pick.arch.to_dict(), recipe):
            data = (search["data"], search_study.get_resolution(search))
            if data not in bundles:
                bundles[data] = load_data(*data)
            log(f"fronts {comparison.table} {target.label} {label} ({pick.run}) seed {seed}: training")
            checkpoint = ROOT / search["runs"] / FRONTS / f"{name}.pt"
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            result = train_standalone(pick.arch, bundles[data], recipe, checkpoint, label=f"{label} {target.label}")
            write_json(out, {"name": name, "study": label, "run": pick.run, "table": comparison.table,
                             "target": target.label,
                             "seed": seed, "arch": pick.arch.to_dict(), "recipe": dataclasses.asdict(recipe),
                             **result.to_dict()})
            log(f"fronts {comparison.table} {target.label} {label} seed {seed}: test {100 * result.accuracy['test']:.2f}%")


def standalone_verdict(ours: dict[str, Any], theirs: dict[str, Any], noise: SeedNoise | None) -> dict[str, Any]:
    """Hybrid minus rival in mean standalone test accuracy over the seeds both were trained at,
    judged against its standard error from the recipe's seed noise, as the search study judges
    found vs reference (`experiments.seed_blocks.paired_difference`)."""
    paired = paired_difference({int(k): v for k, v in ours["test_by_seed"].items()},
                               {int(k): v for k, v in theirs["test_by_seed"].items()}, noise)
    return {**paired.to_dict(), "verdict": paired.verdict("hybrid better", "hybrid worse")}


def standalone_fronts(comparison: Comparison, target_ms: float, done: list[dict[str, Any]], seeds: list[int],
                      noise: SeedNoise | None) -> dict[str, Any]:
    """Each study's front network within `target_ms` trained standalone at `seeds` (where `done`
    holds it), and the hybrid front against each rival's, judged with the recipe's seed `noise`."""
    recipes = {seed: search_study.recipe_of(comparison.search, seed) for seed in seeds}
    standalone: dict[str, Any] = {}
    for label, picks in comparison.picks.items():
        best = front_at(picks, target_ms)
        tests = {} if best is None else trained_test(done, best.arch, recipes)
        if tests:
            standalone[label] = {"run": best.run, "mean": round(float(np.mean(list(tests.values()))), 4),
                                 "test_by_seed": {str(seed): round(tests[seed], 4) for seed in sorted(tests)}}
    return {**standalone, "hybrid_vs": {label: standalone_verdict(standalone[SPACE], standalone[label], noise)
                                        for label in comparison.picks
                                        if label != SPACE and SPACE in standalone and label in standalone}}


def verdicts_of_record(row: dict[str, Any]) -> dict[str, Any]:
    """Per rival, the standalone verdict a target's row stands on: its confirmation's, where one
    was fixed in advance and is complete (it replaces the recipe seeds' verdict that prompted it,
    whatever later noise estimates make of that one), else the recipe seeds'."""
    confirmation = row.get("confirmation") or {}
    record = {}
    for label, verdict in row["standalone"]["hybrid_vs"].items():
        confirmed = confirmation.get("hybrid_vs", {}).get(label) if confirmation.get("complete") else None
        chosen, basis = (confirmed, "confirmation") if confirmed is not None else (verdict, "recipe seeds")
        record[label] = {"verdict": chosen["verdict"], "difference_points": chosen["difference_points"],
                         "critical_points": chosen["critical_points"], "seeds": chosen["seeds"], "basis": basis}
    return record


def compare_table(comparison: Comparison, done: list[dict[str, Any]], results: Path,
                  noise: SeedNoise | None, confirm: dict[str, list[int]] | None = None) -> dict[str, Any]:
    """One table: the fronts at its targets (in the supernets and, where `done` holds their
    trainings, standalone at the recipe's seeds and, for a target `confirm` names, separately at
    its confirmation seeds; judged with the recipe's seed `noise`), the hybrid picks' block
    types, the block types' prices, the plot."""
    ours = comparison.picks[SPACE]
    rivals = [label for label in comparison.picks if label != SPACE]
    seeds = [int(seed) for seed in comparison.search["standalone"]["seeds"]]
    val_images = comparison.search["evaluator"]["batch_size"] * comparison.search["evaluator"]["eval_batches"]
    rows = []
    for target in comparison.targets:
        row: dict[str, Any] = {"target": target.label, "target_ms": target.latency_ms}
        for label, picks in comparison.picks.items():
            best = front_at(picks, target.latency_ms)
            row[label] = None if best is None else {
                "run": best.run, "latency_ms": round(best.latency_ms, 5), "val_accuracy": round(best.val_accuracy, 4),
                "test_accuracy": None if best.test_accuracy is None else round(best.test_accuracy, 4)}
        mine = row[SPACE]
        row["front_margin"] = {label: front_margin(picks, target.latency_ms, val_images)
                               for label, picks in comparison.picks.items()}
        row["hybrid_at_least_as_good"] = {
            label: None if mine is None or row[label] is None or None in (mine["test_accuracy"], row[label]["test_accuracy"])
            else mine["test_accuracy"] >= row[label]["test_accuracy"] for label in rivals}
        row["standalone"] = standalone_fronts(comparison, target.latency_ms, done, seeds, noise)
        if (confirm or {}).get(target.label):
            fresh = confirm[target.label]
            block = standalone_fronts(comparison, target.latency_ms, done, fresh, noise)
            fronts = [label for label in comparison.picks if row[label] is not None]
            complete = all(len(block.get(label, {}).get("test_by_seed", {})) == len(fresh) for label in fronts)
            if not complete:  # judged once, on every seed it was fixed with: no verdict from a part of them
                block["hybrid_vs"] = {}
            row["confirmation"] = {"seeds": fresh, "complete": complete, **block}
        row["verdict_of_record"] = verdicts_of_record(row)
        rows.append(row)
    plot_fronts(comparison.table, ours, {label: comparison.picks[label] for label in rivals}, rows,
                results / f"fronts_{comparison.table}.png")
    fronts = [pick for pick in (front_at(ours, row["target_ms"]) for row in rows) if pick is not None]
    strategies = comparison.search["strategies"]
    greedy = [pick for pick in ours if strategies.get(pick.run, {}).get("strategy") == "greedy"]  # priced by the table
    return {"targets": rows, "picks": len(ours), "block_types_per_stage": block_types(ours),
            "front_block_types_per_stage": block_types(fronts), "greedy_block_types_per_stage": block_types(greedy),
            "type_price_vs_ffn_percent_per_stage": type_prices(comparison.predictor)}


def must_hold_summary(tables: dict[str, Any]) -> dict[str, Any]:
    """Issue 20's two must-holds read off the verdicts of record: the targets where the hybrid
    front is worse than a rival's trained standalone (the first must-hold holds where there are
    none) and those where it is better (the second asks for at least one)."""
    def targets_where(verdict: str) -> list[dict[str, Any]]:
        return [{"table": table, "target": row["target"], "rival": label, **record}
                for table, summary in tables.items() for row in summary["targets"]
                for label, record in row.get("verdict_of_record", {}).items() if record["verdict"] == verdict]
    worse, better = targets_where("hybrid worse"), targets_where("hybrid better")
    return {"at_least_as_good_everywhere": not worse, "worse": worse,
            "strictly_better_somewhere": bool(better), "better": better}


def compare_phase(config: dict[str, Any]) -> dict[str, Any]:
    results = ROOT / config["results"]
    report: dict[str, Any] = {"study": "hybrid_space", "config": config, "tables": {}}
    comparisons = comparisons_of(config)
    done = {comparison.table: trainings(comparison, config) for comparison in comparisons}
    trained_anywhere = [result for results_of_table in done.values() for result in results_of_table]
    # one recipe for the whole study: its seed noise from every network trained, on any table
    noise = study_seed_noise(trained_anywhere)
    report["standalone_seed_noise"] = None if noise is None else noise.to_dict()
    for comparison in comparisons:
        report["tables"][comparison.table] = compare_table(comparison, done[comparison.table], results, noise,
                                                           confirmation_seeds(config, comparison.table))
    names = list(report["tables"])
    if len(names) == 2:  # do the two devices pick differently? (the papers say they should)
        report["device_difference"] = {"tables": names}
        for picks, key in (("block_types_per_stage", "total_variation_per_stage"),
                           ("greedy_block_types_per_stage", "greedy_total_variation_per_stage")):
            first, second = (report["tables"][name][picks] for name in names)
            report["device_difference"][key] = [
                total_variation(a, b) for a, b in zip(first, second, strict=True)]
    report["must_hold"] = must_hold_summary(report["tables"])
    # one supernet per study scores its picks on every table: its ranking of what was trained, pooled
    # over the tables at the seeds every table's recipe trains
    seeds = sorted(set.intersection(*({int(seed) for seed in comparison.search["standalone"]["seeds"]}
                                      for comparison in comparisons)))
    recipes = {seed: search_study.recipe_of(comparisons[0].search, seed) for seed in seeds}
    bootstrap = ranking_study.load_config(ROOT / config["recipe"])["evaluation"]
    labels = list(comparisons[0].picks)
    report["evaluator_vs_standalone"] = {
        label: evaluator_vs_standalone([pick for comparison in comparisons for pick in comparison.picks[label]],
                                       trained_anywhere, seeds, recipes, bootstrap) for label in labels}
    write_json(results / "comparison.json", report)
    for table, summary in report["tables"].items():
        for row in summary["targets"]:
            log(f"compare {table} {row['target']}: " + ", ".join(
                f"{label} {row[label]['test_accuracy'] if row[label] else 'none'}" for label in labels)
                + "".join(f"; {kind} vs {label}: {verdict['difference_points']:+.2f} points ({verdict['verdict']})"
                          for kind in ("standalone", "confirmation") if kind in row
                          for label, verdict in row[kind]["hybrid_vs"].items()))
    return report


def plot_fronts(table: str, ours: list[Pick], rivals: dict[str, list[Pick]], rows: list[dict[str, Any]], path: Path) -> None:
    """Left: test accuracy in each supernet against the hybrid table's latency, every pick and each
    study's front (the val-best pick within each target) joined. Right: each study's front trained
    standalone, at its target (mean over seeds, bars from the lowest to the highest seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (inside, alone) = plt.subplots(1, 2, figsize=(11.0, 4.6))
    for index, (label, picks) in enumerate({SPACE: ours, **rivals}.items()):
        colour = plt.get_cmap("tab10")(index)
        scored = [p for p in picks if p.test_accuracy is not None]
        inside.scatter([p.latency_ms for p in scored], [p.test_accuracy for p in scored], s=14, alpha=0.45, color=colour)
        front = [(row["target_ms"], row[label]["test_accuracy"]) for row in rows
                 if row.get(label) and row[label]["test_accuracy"] is not None]
        if front:
            inside.plot(*zip(*sorted(front)), "-o", color=colour, lw=1.5, ms=5, label=f"{label}: val-best pick per target")
        trained = sorted((row["target_ms"], row["standalone"][label]) for row in rows if label in row["standalone"])
        if trained:
            means = [entry["mean"] for _, entry in trained]
            low = [mean - min(entry["test_by_seed"].values()) for mean, (_, entry) in zip(means, trained, strict=True)]
            high = [max(entry["test_by_seed"].values()) - mean for mean, (_, entry) in zip(means, trained, strict=True)]
            alone.errorbar([ms for ms, _ in trained], means, yerr=[low, high], fmt="-o", color=colour, capsize=3,
                           label=f"{label}: trained pick per target")
    for axis in (inside, alone):
        for row in rows:
            axis.axvline(row["target_ms"], color="black", ls=":", lw=0.8)
        axis.set_xlabel(f"latency on {table}, priced by the hybrid table (ms)")
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    inside.set_ylabel("test accuracy in the supernet (%)")
    inside.set_title(f"hybrid vs single-family picks, {table}: in each supernet", fontsize=10)
    alone.set_ylabel("test accuracy trained standalone (%)")
    alone.set_title("the same fronts trained standalone (at the target)", fontsize=10)
    figure.tight_layout()
    write_bytes_atomic(path, png_bytes(figure))
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=HERE / "config.yaml")
    parser.add_argument("--phase", required=True, choices=(*PHASES, "all"))
    parser.add_argument("--threads", type=int, help="supernet: torch threads, instead of the recipe's "
                        "(which are set for training beside other processes; threads change no result)")
    args = parser.parse_args(argv)
    if args.threads is not None and not 1 <= args.threads <= 256:
        raise SystemExit(f"--threads: an integer from 1 to 256, got {args.threads}")
    config = load_config(args.config)
    for phase in PHASES if args.phase == "all" else (args.phase,):
        if phase == "supernet":
            training = training_config(config)
            torch.set_num_threads(args.threads or int(training["threads"]))
            ranking_study.train_supernet(training)
        elif phase == "compare":
            compare_phase(config)
        elif phase == "fronts":
            torch.set_num_threads(args.threads or 1)
            fronts_phase(config)
        else:
            for entry in config["searches"]:
                search_study.main(["--config", str(ROOT / entry["search"]), "--phase", phase])
    return 0


if __name__ == "__main__":
    sys.exit(exit_code_of(main))
