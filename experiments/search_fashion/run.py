"""Study `search_fashion`: does greedy slimming find better networks than random search and
regularized evolution at equal budgets, and than the EfficientFormerV2 references?

    python experiments/search_fashion/run.py --phase search [--only iphone12] [--target 0.25x]   # one process per core
    python experiments/search_fashion/run.py --phase search --extend-budgets   # sampling runs to a costlier greedy's budget
    python experiments/search_fashion/run.py --phase rescore [--remeasure]   # every pick on the test split
    python experiments/search_fashion/run.py --phase standalone   # one process per core
    python experiments/search_fashion/run.py --phase evaluate     # tables, verdicts, plots
    python experiments/search_fashion/run.py --phase all

1. search: for every table and target (`targets_ms` and `target_fractions` x the largest network's
   predicted latency), every strategy of the config, through `nas.api.run_search`, with the ranking
   study's supernet as the evaluator (val split only). Greedy runs first at each target; its cost
   sets the sampling strategies' budgets: a greedy search scores some candidates fully and only
   screens the others on `screen_batches` of the `eval_batches` batches, so its budget in full
   evaluations is `evaluations + ceil(screenings x screen_batches / eval_batches)`, and random
   search and evolution get `budget_multiple` x that many evaluations. Scores are a deterministic
   function of the architecture, so one score cache (a file) serves every search: sharing it changes
   no result, only the wall time (each result records the evaluations it paid for, and the seconds
   it took with the cache it found). Each search keeps a state file (a killed search resumes where
   it stopped) and writes `searches/<table>/<target>/<run>.json` when it is done. Targets run from
   the highest latency down, so the first verdicts come from the cheapest targets; processes
   started side by side share the searches through claim files (`SearchJob` says what waits for
   what).
2. rescore: every distinct pick's accuracy inside the supernet on the whole test split (nothing any
   search decided read it), and for tables with `measure`, its latency measured on that device.
3. standalone: per table and reference target, the reference network (from the start) and, once
   every search at that target has finished, the most accurate pick on val (over every strategy and
   seed: a decision, so it is made on val), trained from scratch with the ranking study's recipe at
   each seed of `standalone.seeds` (checkpoints; a killed run resumes).
4. evaluate: per target the strategies' val/test accuracy (mean and spread over seeds), latency,
   params, MES, evaluations and wall time; the must-hold checks (greedy vs random at equal and at 5x
   budget; found vs reference standalone, beyond the seed spread); plots of accuracy vs latency.

Outputs (the config's `results` folder): searches/, rescored.json, standalone/, results.json,
results.csv, search_<table>.png.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from search_spaces import Architecture, get_space  # noqa: E402
from search_spaces.files import write_bytes_atomic, write_text_atomic  # noqa: E402

from experiments.seed_blocks import paired_difference, seed_noise  # noqa: E402
from experiments.study import (  # noqa: E402
    Claim, FileLock, exit_code_of, load_settings, log, png_bytes, read_json, seed_list_refusal, versions, write_json)
from lut import get_device, load_table  # noqa: E402
from lut.devices import host_cpu, loadavg  # noqa: E402
from nas.api import RequestError, SearchRequest, check_strategy_settings, run_search  # noqa: E402
from nas.evaluators import UNTRAINED_NORMS, SupernetEvaluation, SupernetEvaluator  # noqa: E402
from nas.objectives import MobileEfficiencyScore  # noqa: E402
from nas.strategies import RandomSearch, RegularizedEvolution  # noqa: E402
from supernet.data import load_data  # noqa: E402
from supernet.standalone import StandaloneRecipe, train_standalone  # noqa: E402

PHASES = ("search", "rescore", "standalone", "evaluate")
WAIT_S = 30.0  # how often a process with no free search looks again
KEYS = ("space", "data", "threads", "supernet", "runs", "results", "evaluator", "tables", "strategies", "mes", "standalone")
STRATEGY_KEYS = {"greedy": {"strategy", "objective", "drop_floor"},
                 "random": {"strategy", "objective", "seeds", "budget_multiple"},
                 "evolution": {"strategy", "objective", "seeds", "budget_multiple", "population_size", "sample_size"}}
OPTIONAL_STRATEGY_KEYS = {"greedy": {"min_step_ms", "steps_past_target", "actions", "shortlist_extra"}}


# -- configuration -------------------------------------------------------------------------------
def load_config(path: Path) -> dict[str, Any]:
    config = load_settings(path, KEYS)
    for name, settings in config["strategies"].items():
        kind = settings.get("strategy")
        if kind not in STRATEGY_KEYS:
            raise SystemExit(f"{path}: strategies.{name}.strategy: {kind!r}; choose from {', '.join(STRATEGY_KEYS)}")
        required, optional = STRATEGY_KEYS[kind], OPTIONAL_STRATEGY_KEYS.get(kind, set())
        if not required <= set(settings) <= required | optional:
            raise SystemExit(f"{path}: strategies.{name}: keys {sorted(settings)}; a {kind} run takes "
                             f"{sorted(required)}" + (f" and optionally {sorted(optional)}" if optional else ""))
        check_strategy_values(path, name, settings)
    greedy = [name for name, settings in config["strategies"].items() if settings["strategy"] == "greedy"]
    widened = [name for name in greedy if config["strategies"][name].get("shortlist_extra")]
    if widened and not config["evaluator"].get("shortlist"):
        raise SystemExit(f"{path}: strategies.{widened[0]}.shortlist_extra: widens the evaluator's shortlist; "
                         "set evaluator.shortlist too")
    if not greedy or list(config["strategies"])[:len(greedy)] != greedy:
        raise SystemExit(f"{path}: strategies: the greedy runs come first (they set the budgets)")
    check_standalone_settings(path, config)
    return config


def _whole(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def check_strategy_values(path: Path, name: str, settings: dict[str, Any]) -> None:
    """A strategy's values (its keys are checked before), refused when the config is read rather
    than when its search starts, possibly hours into a run: the search's own settings by the search
    API's checks (`nas.api.check_strategy_settings`), the study's seeds and budgets here."""
    def refuse(key: str, accepted: str) -> None:
        raise SystemExit(f"{path}: strategies.{name}.{key}: {settings[key]!r}; {accepted}")

    try:
        check_strategy_settings(settings["strategy"], objective=settings["objective"], actions=settings.get("actions"),
                                drop_floor=settings.get("drop_floor"), min_step_ms=settings.get("min_step_ms"),
                                steps_past_target=settings.get("steps_past_target", 0),
                                shortlist_extra=settings.get("shortlist_extra", 0))
    except RequestError as error:
        raise SystemExit(f"{path}: strategies.{name}.{error.field}: {error}") from None
    if settings["strategy"] == "greedy":
        return
    if (refusal := seed_list_refusal(settings["seeds"])) is not None:
        refuse("seeds", refusal)
    if not _whole(settings["budget_multiple"], 1):
        refuse("budget_multiple", "give a whole number >= 1")
    if settings["strategy"] == "evolution":
        if not _whole(settings["population_size"], 1):
            refuse("population_size", "give a whole number >= 1")
        if not _whole(settings["sample_size"], 1) or settings["sample_size"] > settings["population_size"]:
            refuse("sample_size", f"give a whole number from 1 to population_size ({settings['population_size']})")


STANDALONE_KEYS = {field.name for field in dataclasses.fields(StandaloneRecipe)} - {"seed"} | {"seeds"}


def check_standalone_settings(path: Path, config: dict[str, Any]) -> None:
    """`standalone`: the recipe's fields and `seeds`, and optionally `also_train`, runs of the config
    whose picks are trained and compared with the reference too (besides the best pick on val)."""
    settings = config["standalone"]
    if not isinstance(settings, dict) or not {"seeds"} <= set(settings) <= STANDALONE_KEYS | {"also_train"}:
        keys = sorted(settings) if isinstance(settings, dict) else settings
        raise SystemExit(f"{path}: standalone: keys {keys}; it takes seeds and {sorted(STANDALONE_KEYS - {'seeds'})}"
                         " (each optional) and optionally also_train")
    runs = [run for run, _, _ in runs_of(config)]
    also = settings.get("also_train", [])
    if not isinstance(also, list) or any(run not in runs for run in also):
        raise SystemExit(f"{path}: standalone.also_train: {also!r}; give a list of the config's runs ({', '.join(runs)})")


def results_of(config: dict[str, Any]) -> Path:
    """The folder the study's outputs go to (`results`, relative to the repository root)."""
    return ROOT / config["results"]


def arch_key(arch: Architecture) -> str:
    """A stable text key of an architecture (its dict, keys sorted)."""
    return json.dumps(arch.to_dict(), sort_keys=True, separators=(",", ":"))


@dataclasses.dataclass(frozen=True)
class Target:
    """One search question: a table (by its config name) and a target latency in ms."""

    table: str
    latency_ms: float
    label: str  # e.g. "1.1ms" or "0.45x"

    def folder(self, results: Path) -> Path:
        return results / "searches" / self.table / self.label


def tables_of(config: dict[str, Any], space) -> dict[str, Any]:
    tables = {}
    for name, settings in config["tables"].items():
        if "file" in settings:
            tables[name] = load_table(ROOT / settings["file"])
        else:
            tables[name] = get_device(settings["device"]).default_table(space)
    return tables


def targets_of(config: dict[str, Any], space, tables: dict[str, Any]) -> list[Target]:
    """Every table's targets, each table's from the highest latency down: the order a greedy path
    passes them, and the cheapest comparisons first (greedy's budget grows with its depth)."""
    targets = []
    for name, settings in config["tables"].items():
        largest = float(tables[name].predict(space.largest()))
        mine = [Target(name, float(ms), f"{ms:g}ms") for ms in settings["targets_ms"]]
        mine += [Target(name, round(fraction * largest, 5), f"{fraction:g}x") for fraction in settings["target_fractions"]]
        targets += sorted(mine, key=lambda target: -target.latency_ms)
    return targets


# -- the shared, persistent score cache ----------------------------------------------------------
class StoredScores:
    """A `ScreeningEvaluator` in front of a `SupernetEvaluator` whose scores and screenings are kept
    in a JSON file, so that every search of the study (and a resumed one) reuses what any search
    computed. `computed` counts the scores this process had to compute."""

    name = "supernet"

    def __init__(self, evaluator: SupernetEvaluator, path: Path) -> None:
        self.evaluator, self.path, self.lock = evaluator, path, path.with_suffix(".lock")
        stored = read_json(path) if path.is_file() else {}
        if stored and stored.get("settings") != evaluator.settings():
            raise SystemExit(f"{path.relative_to(ROOT)}: scores of other evaluator settings "
                             f"({stored.get('settings')}); remove it or change `runs`")
        self.scores: dict[str, float] = dict(stored.get("scores", {}))
        self.screened: dict[str, float] = dict(stored.get("screenings", {}))
        self.computed = 0
        self._unsaved = 0

    @property
    def net(self):
        """The supernet behind the scores (`nas.api` reads a Gumbel-trained one's MetaPath
        importance for the V1 actions)."""
        return self.evaluator.net

    @property
    def evaluations(self) -> int:
        return len(self.scores)

    @property
    def screenings(self) -> int:
        return len(self.screened)

    def settings(self) -> dict[str, Any]:
        return self.evaluator.settings()

    def _lookup(self, store: dict[str, float], arch: Architecture, compute) -> float:
        key = arch_key(arch)
        if key not in store:
            store[key] = float(compute(arch))
            self.computed += 1
            self._unsaved += 1
            if self._unsaved >= 10:
                self.save()
        return store[key]

    def score(self, arch: Architecture) -> float:
        return self._lookup(self.scores, arch, self.evaluator.score)

    def screen(self, arch: Architecture) -> float:
        return self._lookup(self.screened, arch, self.evaluator.screen)

    def refresh(self) -> None:
        """Add what other processes wrote to the file since it was read."""
        with FileLock(self.lock):
            self._merge()

    def _merge(self) -> None:
        if self.path.is_file():
            stored = read_json(self.path)
            self.scores = {**stored.get("scores", {}), **self.scores}
            self.screened = {**stored.get("screenings", {}), **self.screened}

    def save(self) -> None:
        """Write the cache, merged with what other processes wrote meanwhile (under a lock, so
        that no process overwrites another's scores)."""
        with FileLock(self.lock):
            self._merge()
            write_json(self.path, {"settings": self.evaluator.settings(), "scores": self.scores,
                                   "screenings": self.screened})
        self._unsaved = 0


def evaluation_spec(config: dict[str, Any]) -> SupernetEvaluation:
    settings = config["evaluator"]
    return SupernetEvaluation(ROOT / config["supernet"], config["data"], split="val",
                              recalibrate=settings["recalibrate"], eval_batches=settings["eval_batches"],
                              batch_size=settings["batch_size"], screen_batches=settings["screen_batches"],
                              untrained_norms=settings.get("untrained_norms", UNTRAINED_NORMS[0]))


def build_evaluator(config: dict[str, Any], space) -> StoredScores:
    evaluator, _ = evaluation_spec(config).build(space, seed=0)
    return StoredScores(evaluator, ROOT / config["runs"] / "scores.json")


# -- 1. search -----------------------------------------------------------------------------------
def runs_of(config: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], int | None]]:
    """(run name, strategy settings, seed) in config order; greedy runs have no seed."""
    for name, settings in config["strategies"].items():
        if settings["strategy"] == "greedy":
            yield name, settings, None
        else:
            for seed in settings["seeds"]:
                yield f"{name}_seed{seed}", settings, int(seed)


def greedy_cost(config: dict[str, Any], result: dict[str, Any]) -> int:
    """A greedy result's cost in full evaluations (screenings at their share of a full one)."""
    share = config["evaluator"]["screen_batches"] / config["evaluator"]["eval_batches"]
    return result["evaluations"] + math.ceil(result["screenings"] * share)


def greedy_budget(config: dict[str, Any], target: Target) -> int:
    """The target's largest greedy cost in full evaluations (`greedy_cost`)."""
    costs = []
    for name, settings in config["strategies"].items():
        if settings["strategy"] == "greedy":
            path = target.folder(results_of(config)) / f"{name}.json"
            if not path.is_file():
                raise SystemExit(f"{path.relative_to(ROOT)} is missing: the greedy runs set the budgets")
            costs.append(greedy_cost(config, read_json(path)))
    return max(costs)


def sampling_budget(config: dict[str, Any], target: Target, settings: dict[str, Any]) -> int:
    """A sampling run's budget at `target`: `budget_multiple` x the target's largest greedy cost."""
    return greedy_budget(config, target) * int(settings["budget_multiple"])


@dataclasses.dataclass(frozen=True)
class SearchJob:
    """One search of the study and the searches whose results it needs first: a sampling run
    needs every greedy run at its target (they set its budget); a greedy run needs itself at the
    table's previous target (its path passes through it, and replays it from the shared cache)."""

    target: Target
    run: str
    settings: dict[str, Any] = dataclasses.field(hash=False, compare=False)
    seed: int | None
    needs: tuple[tuple[Target, str], ...] = ()

    def result(self, config: dict[str, Any]) -> Path:
        return result_path(config, self.target, self.run)

    def done(self, config: dict[str, Any], extend: bool = False) -> bool:
        """Its result exists; with `extend`, a sampling run's result must also have the budget the
        target's greedy runs set now (a greedy run added later, or rerun, may have cost more)."""
        if extend and self.settings["strategy"] != "greedy" and self.result(config).is_file() \
                and not all(result_path(config, *need).is_file() for need in self.needs):
            return False  # its budget is not known yet: it waits for the greedy runs, then is checked
        return finished(config, self.target, self.run, self.settings, extend)


def finished(config: dict[str, Any], target: Target, run: str, settings: dict[str, Any], extend: bool) -> bool:
    """`run`'s result at `target` exists and, with `extend`, a sampling run's has the budget the
    target's greedy runs set now (which needs their results)."""
    path = result_path(config, target, run)
    if not path.is_file():
        return False
    if not extend or settings["strategy"] == "greedy":
        return True
    return read_json(path)["budget"] >= sampling_budget(config, target, settings)


def result_path(config: dict[str, Any], target: Target, run: str) -> Path:
    return target.folder(results_of(config)) / f"{run}.json"


def search_jobs(config: dict[str, Any], targets: list[Target]) -> list[SearchJob]:
    """Every search, target by target (each table's from the highest latency down): the greedy runs
    first, then the sampling runs; each with what it needs (`SearchJob`)."""
    runs = list(runs_of(config))
    greedy = [run for run, settings, _ in runs if settings["strategy"] == "greedy"]
    jobs, previous = [], {}
    for target in targets:
        for run, settings, seed in runs:
            if settings["strategy"] == "greedy":
                needs = ((previous[target.table], run),) if target.table in previous else ()
            else:
                needs = tuple((target, name) for name in greedy)
            jobs.append(SearchJob(target, run, settings, seed, needs))
        previous[target.table] = target
    return jobs


def search_one(config: dict[str, Any], space, table, evaluator: StoredScores, target: Target, run: str,
               settings: dict[str, Any], seed: int | None, extend: bool = False) -> None:
    """One search, unless its result exists. With `extend`, a sampling run whose result has a
    smaller budget than the target's greedy runs set now is extended to it: resumed from its state
    file (`nas.strategies`: a finished search resumed with a larger budget continues as if it had
    never stopped), or rerun from the start without one; the score cache makes the evaluations it
    already paid for free. Its `seconds` then add up both runs, and `extended_from_budget` says so."""
    if finished(config, target, run, settings, extend):
        return
    out = result_path(config, target, run)
    greedy = settings["strategy"] == "greedy"
    budget = None if greedy else sampling_budget(config, target, settings)
    previous = read_json(out) if out.is_file() else None  # a sampling result extended to `budget`
    evaluator.refresh()  # what other processes scored meanwhile (a greedy path another one walked)
    mes = MobileEfficiencyScore(**config["mes"])
    state = ROOT / config["runs"] / "state" / target.table / target.label / f"{run}.json"
    state.parent.mkdir(parents=True, exist_ok=True)
    if greedy:
        strategy: Any = "greedy"
    else:
        if settings["strategy"] == "random":
            strategy = RandomSearch(budget=budget, seed=seed)
        else:
            strategy = RegularizedEvolution(budget=budget, seed=seed, population_size=settings["population_size"],
                                            sample_size=settings["sample_size"])
    request = SearchRequest(space.name, table, target.latency_ms, evaluator=evaluator, objective=settings["objective"],
                            mes=mes, strategy=strategy, seed=seed or 0, state_path=state,
                            shortlist=config["evaluator"]["shortlist"] if greedy else 0,
                            shortlist_extra=settings.get("shortlist_extra", 0) if greedy else 0,
                            drop_floor=settings["drop_floor"] if greedy else None,
                            min_step_ms=settings.get("min_step_ms") if greedy else None,
                            actions=settings.get("actions") if greedy else None,
                            steps_past_target=settings.get("steps_past_target", 0) if greedy else 0)
    extending = f", extending budget {previous['budget']}" if previous is not None else ""
    log(f"{target.table} {target.label} ({target.latency_ms:.3f} ms) {run}: searching (budget {budget}{extending}, "
        f"load {loadavg()})")
    started, computed = time.perf_counter(), evaluator.computed
    outcome = run_search(request, progress=True)
    evaluator.save()
    seconds = time.perf_counter() - started
    if not outcome.reachable:
        raise SystemExit(f"{target.table} {target.label}: unreachable (smallest {outcome.smallest_latency:.4f} ms)")
    result = outcome.result
    write_json(out, {
        "table": target.table, "target_ms": target.latency_ms, "target": target.label, "run": run,
        "strategy": settings["strategy"], "objective": settings["objective"], "seed": seed, "budget": budget,
        **({"actions": outcome.meta["actions"]} if greedy else {}),
        "evaluations": result.evaluations, "screenings": result.screenings,
        "seconds": round(seconds + (previous["seconds"] if previous is not None else 0.0), 1),
        **({"extended_from_budget": previous["budget"]} if previous is not None else {}),
        "computed_this_run": evaluator.computed - computed, "load_at_end": loadavg(),
        "pick": {"arch": result.arch.to_dict(), "val_accuracy": result.score, "latency_ms": result.latency,
                 "params": result.params, "mes": result.mes},
        "steps": len(result.steps) if settings["strategy"] == "greedy" else None,
        "path": [step.to_dict() for step in result.steps] if settings["strategy"] == "greedy" else None,
        "evaluated": None if settings["strategy"] == "greedy" else
        [{"latency": step.latency, "params": step.params, "score": step.score} for step in result.steps],
    })
    log(f"{target.table} {target.label} {run}: {result.score:.2f}% val at {result.latency:.3f} ms, "
        f"{result.evaluations} evaluations + {result.screenings} screenings, {seconds:.0f} s")


def search_phase(config: dict[str, Any], only: str | None, target_label: str | None = None,
                 strategies: tuple[str, ...] = (), extend: bool = False) -> None:
    """Run every search not yet done (of one table with `only`, at the targets labelled
    `target_label` with it, of the `strategies` named with them: names under the config's
    `strategies`, e.g. its greedy runs at every target before any sampling run). Several processes
    may run this phase at once (one per core): each takes the first job that is neither done, nor
    claimed by a running process, nor waiting for another job's result (`experiments.study.Claim`),
    and waits when none is left. Jobs at targets
    left out are not waited for: a greedy run then starts without its shallower target's path in
    the score cache (the same result, more evaluations computed). With `extend`, sampling results
    at a smaller budget than the target's greedy runs set now are extended (`search_one`)."""
    space = get_space(config["space"])
    tables = tables_of(config, space)
    configured = targets_of(config, space, tables)
    labels = list(dict.fromkeys(t.label for t in configured))
    if target_label is not None and target_label not in labels:
        raise SystemExit(f"--target {target_label}: choose from {', '.join(labels)}")
    targets = [t for t in configured
               if (only is None or t.table == only) and (target_label is None or t.label == target_label)]
    unknown = [name for name in strategies if name not in config["strategies"]]
    if unknown:
        raise SystemExit(f"--strategy {unknown[0]}: choose from {', '.join(config['strategies'])}")
    evaluator = None  # built when the first search starts: a phase with nothing left to do reads no checkpoint
    pending = [job for job in search_jobs(config, targets)
               if not strategies or group_of(job.run) in strategies]
    for job in pending:  # a sampling run left to wait for a greedy run nobody was asked to run would wait forever
        for target, run in job.needs:
            if strategies and run not in strategies and not result_path(config, target, run).is_file():
                raise SystemExit(f"--strategy {group_of(job.run)}: its budget at {target.label} is set by {run}, "
                                 f"which has no result there; name --strategy {run} too, or run it first")
    claims = ROOT / config["runs"] / "claims"
    while pending:
        pending = [job for job in pending if not job.done(config, extend)]
        ready = [job for job in pending if all(result_path(config, *need).is_file() for need in job.needs)]
        for job in ready:
            with Claim(claims / job.target.table / job.target.label / f"{job.run}.pid") as mine:
                if mine:
                    if evaluator is None:
                        evaluator = build_evaluator(config, space)
                    search_one(config, space, tables[job.target.table], evaluator, job.target, job.run,
                               job.settings, job.seed, extend)
                    break
        else:
            if pending:
                log(f"{len(pending)} searches left, none free: waiting for the other processes' results")
                time.sleep(WAIT_S)


def search_results(config: dict[str, Any]) -> list[dict[str, Any]]:
    return [read_json(path) for path in sorted((results_of(config) / "searches").glob("*/*/*.json"))]


# -- 2. rescore ----------------------------------------------------------------------------------
def rescore_phase(config: dict[str, Any], remeasure: bool = False) -> None:
    """Every pick (and reference) not yet re-scored: its accuracy on the test split, and for a table
    with `measure`, its latency measured there. `remeasure` drops the stored measurements first, so
    that every pick is measured again in this run (after measurements taken on a busy machine); the
    load average around this run's measurements is kept as `last_measurements`."""
    path = results_of(config) / "rescored.json"
    rescored = read_json(path) if path.is_file() else {"test_accuracy": {}, "measured_ms": {}}
    if remeasure:
        rescored["measured_ms"] = {}
    measured, load_before = 0, loadavg()
    space = get_space(config["space"])
    stored = build_evaluator(config, space)
    evaluator = stored.evaluator
    rescored.setdefault("reference_val_accuracy", {})
    for name in space.references():  # the references as a search would have scored them (val)
        rescored["reference_val_accuracy"][name] = stored.score(space.reference(name))
    stored.save()
    picks = {}
    for result in search_results(config):
        picks[arch_key(Architecture.from_dict(result["pick"]["arch"]))] = result["table"]
    for name in space.references():
        picks.setdefault(arch_key(space.reference(name)), "")
    for index, (key, table) in enumerate(sorted(picks.items())):
        arch = Architecture.from_dict(json.loads(key))
        if key not in rescored["test_accuracy"]:
            accuracy = evaluator.test_accuracy(arch)
            if accuracy is None:
                raise SystemExit(f"data {config['data']}: has no test split to re-score the picks on")
            rescored["test_accuracy"][key] = accuracy
            log(f"rescore {index + 1}/{len(picks)}: test {rescored['test_accuracy'][key]:.2f}%")
            write_json(path, rescored)
        device_name = config["tables"].get(table, {}).get("measure") if table else None
        if device_name and f"{device_name}|{key}" not in rescored["measured_ms"]:
            record = get_device(device_name, threads=config["threads"]).profile_network(arch)
            rescored["measured_ms"][f"{device_name}|{key}"] = record.p50_ms
            measured += 1
            write_json(path, rescored)
    if measured:
        rescored["last_measurements"] = {"count": measured, "threads": int(config["threads"]),
                                         "load_before": load_before, "load_after": loadavg()}
        write_json(path, rescored)


# -- 3. standalone -------------------------------------------------------------------------------
def finished_at(config: dict[str, Any], target: Target) -> bool:
    """Whether every run of the config has its result at `target` (the best pick is final)."""
    folder = target.folder(results_of(config))
    return all((folder / f"{run}.json").is_file() for run, _, _ in runs_of(config))


def comparisons(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Per reference target: the reference network, the most accurate pick on val over every
    strategy and seed (`found`: None until every run at the target has finished, since a later
    run may still find a better one), and the picks of the runs `standalone.also_train` names
    (`also`: those whose search at the target has finished, less the best pick's run)."""
    space = get_space(config["space"])
    results = search_results(config)
    compared = []
    for table, settings in config["tables"].items():
        for reference, target_ms in settings["references"].items():
            target = Target(table, float(target_ms), f"{float(target_ms):g}ms")
            here = {r["run"]: r for r in results if r["table"] == table and r["target"] == target.label}
            found = None
            if finished_at(config, target):
                best = max(here.values(), key=lambda r: r["pick"]["val_accuracy"])
                found = {"run": best["run"], "arch": best["pick"]["arch"]}
            also = [{"run": run, "arch": here[run]["pick"]["arch"]} for run in config["standalone"].get("also_train", [])
                    if run in here and (found is None or run != found["run"])]
            compared.append({"table": table, "target": target.label, "reference": reference, "found": found,
                             "also": also, "reference_arch": space.reference(reference).to_dict()})
    return compared


def found_role(config: dict[str, Any], found: dict[str, Any]) -> str:
    """The name a target's best pick on val is trained under: its run's when `standalone.also_train`
    names that run (it was trained under that name as soon as its own search finished, and is the
    same network), else `found`."""
    return found["run"] if found["run"] in config["standalone"].get("also_train", []) else "found"


def recipe_of(config: dict[str, Any], seed: int) -> StandaloneRecipe:
    settings = {key: value for key, value in config["standalone"].items() if key not in ("seeds", "also_train")}
    return StandaloneRecipe(**settings, seed=seed)


def standalone_jobs(config: dict[str, Any]) -> list[tuple[str, dict[str, Any], int]]:
    """(name, architecture, seed) of every standalone training the study needs so far: the
    references from the start (they do not depend on any search), a target's found network once
    every search at that target has finished, a pick `standalone.also_train` names once its search
    has (named by its run); the highest target first, as the searches run."""
    jobs = []
    for comparison in sorted(comparisons(config), key=lambda c: -float(c["target"].removesuffix("ms"))):
        prefix = f"{comparison['table']}_{comparison['target']}"
        networks = [(pick["run"], pick["arch"]) for pick in comparison["also"]] + [("reference", comparison["reference_arch"])]
        if comparison["found"] is not None:
            networks.insert(0, (found_role(config, comparison["found"]), comparison["found"]["arch"]))
        for role, arch in networks:
            jobs += [(f"{prefix}_{role}", arch, int(seed)) for seed in config["standalone"]["seeds"]]
    return jobs


def trained(path: Path, arch: dict[str, Any], recipe: StandaloneRecipe) -> bool:
    """Whether `path` holds the result of training `arch` with `recipe`: the same blocks and widths
    (training sets the resolution and classes to the data's) and the same recipe, compared as JSON
    reads them back (a tuple written is a list read)."""
    if not path.is_file():
        return False
    done = read_json(path)
    return layers_key(done["arch"]) == layers_key(arch) and done["recipe"] == recipe_record(recipe)


def recipe_record(recipe: StandaloneRecipe) -> dict[str, Any]:
    """`recipe` as a training result records it, read back from JSON (a tuple written is a list read)."""
    return json.loads(json.dumps(dataclasses.asdict(recipe)))


def layers_key(arch: dict[str, Any]) -> str:
    """An architecture's blocks and widths as text: what training it depends on (not its space's
    name, resolution or classes, which training sets to the data's)."""
    return json.dumps(Architecture.from_dict(arch).to_dict()["stages"], sort_keys=True)


def standalone_phase(config: dict[str, Any]) -> None:
    """Train every network `standalone_jobs` lists that has no result yet; several processes may
    run this phase at once (each takes a free job, `experiments.study.Claim`). A found network
    whose target's searches are still running is left for a later run of this phase."""
    resolution = get_resolution(config)
    bundle = load_data(config["data"], resolution)  # the data do not depend on the recipe's seed
    claims = ROOT / config["runs"] / "claims" / "standalone"
    while True:
        for name, arch_dict, seed in standalone_jobs(config):
            out = results_of(config) / "standalone" / f"{name}_seed{seed}.json"
            recipe = recipe_of(config, seed)
            if trained(out, arch_dict, recipe):
                continue
            with Claim(claims / f"{name}_seed{seed}.pid") as mine:
                if not mine:
                    continue
                digest = hashlib.sha256(arch_key(Architecture.from_dict(arch_dict)).encode()).hexdigest()[:12]
                checkpoint = ROOT / config["runs"] / "standalone" / f"{name}_seed{seed}_{digest}.pt"
                checkpoint.parent.mkdir(parents=True, exist_ok=True)
                log(f"standalone {name} seed {seed}: training (load {loadavg()})")
                result = train_standalone(Architecture.from_dict(arch_dict), bundle, recipe, checkpoint, label=name)
                write_json(out, {"name": name, "seed": seed, "arch": arch_dict, "recipe": dataclasses.asdict(recipe),
                                 **result.to_dict()})
                log(f"standalone {name} seed {seed}: test {100 * result.accuracy['test']:.2f}%")
                break
        else:
            return


def get_resolution(config: dict[str, Any]) -> int:
    """The supernet's training resolution (what every searched network is trained and scored at)."""
    from supernet.supernet import read_checkpoint

    return int(read_checkpoint(ROOT / config["supernet"])["resolution"])


# -- 4. evaluate ---------------------------------------------------------------------------------
def spread(values: list[float]) -> dict[str, Any]:
    array = np.asarray(values, dtype=float)
    return {"mean": round(float(array.mean()), 4), "std": round(float(array.std(ddof=1)), 4) if len(array) > 1 else None,
            "min": round(float(array.min()), 4), "max": round(float(array.max()), 4), "n": len(array)}


def group_of(run: str) -> str:
    return run.split("_seed")[0]


def seconds_per_step(result: dict[str, Any], results: list[dict[str, Any]]) -> float | None:
    """A greedy run's wall time per step from the largest network to its target. The run at a
    deeper target replayed the shallower targets' path from the shared cache, so its own seconds
    are only the rest of the path: its time is the sum over the same run at every target of the
    table down to this one (the search phase runs them in that order)."""
    if not result["steps"]:
        return None
    walked = [r["seconds"] for r in results if r["table"] == result["table"] and r["run"] == result["run"]
              and r["target_ms"] >= result["target_ms"]]
    return round(sum(walked) / max(result["steps"] - 1, 1), 1)


def evaluate_phase(config: dict[str, Any]) -> dict[str, Any]:
    results = search_results(config)
    if not results:
        raise SystemExit("no search results: run --phase search first")
    space = get_space(config["space"])
    configured = targets_of(config, space, tables_of(config, space))
    rescored = read_json(results_of(config) / "rescored.json") if (results_of(config) / "rescored.json").is_file() else {"test_accuracy": {}, "measured_ms": {}}
    rows, targets = [], {}
    for result in results:
        key = arch_key(Architecture.from_dict(result["pick"]["arch"]))
        device = config["tables"][result["table"]].get("measure")
        row = {"table": result["table"], "target": result["target"], "target_ms": result["target_ms"],
               "strategy": group_of(result["run"]), "run": result["run"], "seed": result["seed"],
               "val_accuracy": round(result["pick"]["val_accuracy"], 4),
               "test_accuracy": None if key not in rescored["test_accuracy"] else round(rescored["test_accuracy"][key], 4),
               "latency_ms": round(result["pick"]["latency_ms"], 5),
               "measured_ms": rescored["measured_ms"].get(f"{device}|{key}") if device else None,
               "params": result["pick"]["params"], "mes": round(result["pick"]["mes"], 4),
               "evaluations": result["evaluations"], "screenings": result["screenings"],
               "budget": result["budget"], "seconds": result["seconds"],
               "seconds_per_step": seconds_per_step(result, results)}
        rows.append(row)
        targets.setdefault((result["table"], result["target"]), []).append(row)
    summary, checks = {}, {"greedy_vs_random": [], "greedy_vs_random_5x": []}
    for (table, label), members in sorted(targets.items()):
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in members:
            groups.setdefault(row["strategy"], []).append(row)
        per = {name: {metric: spread([r[metric] for r in group if r[metric] is not None])
                      for metric in ("val_accuracy", "test_accuracy", "latency_ms", "evaluations", "seconds")
                      if any(r[metric] is not None for r in group)} for name, group in groups.items()}
        summary[f"{table} {label}"] = per
        for greedy in (name for name in per if config["strategies"][name]["strategy"] == "greedy"):
            cost = greedy_cost(config, groups[greedy][0])
            for rival, check in (("random", "greedy_vs_random"), ("random_5x", "greedy_vs_random_5x")):
                if rival in per and "test_accuracy" in per[greedy] and "test_accuracy" in per[rival]:
                    ours, theirs = per[greedy]["test_accuracy"]["mean"], per[rival]["test_accuracy"]["mean"]
                    # the rival's budget is a multiple of the target's largest greedy cost; a greedy run
                    # that cost more than the rival's equal-budget share would be compared unfairly
                    multiple = int(config["strategies"][rival]["budget_multiple"])
                    budget = min(r["budget"] for r in groups[rival]) // multiple
                    checks[check].append({"table": table, "target": label, "greedy": greedy, "greedy_test": ours,
                                          "rival_test_mean": theirs, "rival_test_max": per[rival]["test_accuracy"]["max"],
                                          "greedy_cost": cost, "rival_budget": budget * multiple,
                                          "equal_budget_covered": budget >= cost,
                                          "holds": ours >= theirs and budget >= cost})
    verdicts = standalone_verdicts(config)
    result = {"study": "search_fashion", "config": config,
              "machine": {"cpu": host_cpu(), "platform": platform.platform(), "load_at_evaluation": loadavg()},
              "versions": versions("torch", "numpy", "onnxruntime"),
              "searches": len(results), "summary": summary, "checks": checks,
              "must_hold": {**greedy_must_holds(config, checks, configured), **standalone_must_holds(verdicts)},
              "standalone": verdicts, "reference_val_accuracy": rescored.get("reference_val_accuracy", {}),
              "last_measurements": rescored.get("last_measurements"), "rows": rows}
    write_json(results_of(config) / "results.json", result)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(results_of(config) / "results.csv", buffer.getvalue())
    for table in config["tables"]:
        plot_table(config, table, results, rescored)
    for name, items in checks.items():
        for c in items:
            log(f"{name}: {c['table']} {c['target']} {c['greedy']} test {c['greedy_test']:.2f}% vs "
                f"{c['rival_test_mean']:.2f}% (max {c['rival_test_max']:.2f}%): {'holds' if c['holds'] else 'MISSED'}")
    return result


def greedy_must_holds(config: dict[str, Any], checks: dict[str, list[dict[str, Any]]],
                      targets: list[Target]) -> dict[str, dict[str, bool]]:
    """Per greedy run of the config: at least random at equal budget at every configured target,
    and at least random at 5x budget at more than half of them. A target without a check (its
    searches not all run yet) counts as missed, so a partly run study never reads true."""
    holds: dict[str, dict[str, bool]] = {"greedy_at_least_random_at_every_target": {},
                                         "greedy_at_least_random_5x_at_most_targets": {}}
    for name, settings in config["strategies"].items():
        if settings["strategy"] != "greedy":
            continue
        equal = [c["holds"] for c in checks["greedy_vs_random"] if c["greedy"] == name]
        five = [c["holds"] for c in checks["greedy_vs_random_5x"] if c["greedy"] == name]
        holds["greedy_at_least_random_at_every_target"][name] = len(equal) == len(targets) > 0 and all(equal)
        holds["greedy_at_least_random_5x_at_most_targets"][name] = len(targets) > 0 and sum(five) > len(targets) / 2
    return holds


def standalone_verdicts(config: dict[str, Any]) -> dict[str, Any]:
    """Found vs reference, trained standalone: each side's test accuracy per seed, and the mean
    difference over the seeds both were trained at, judged against its standard error from the
    study's seed noise (`experiments.seed_blocks`: every network it trained, the seeds' shared
    effect removed)."""
    runs: dict[str, dict[int, float]] = {}
    jobs = standalone_jobs(config)
    for name, arch, seed in jobs:
        path = results_of(config) / "standalone" / f"{name}_seed{seed}.json"
        if trained(path, arch, recipe_of(config, seed)):  # not a stale pick's training
            runs.setdefault(name, {})[seed] = 100 * read_json(path)["accuracy"]["test"]
    layers = {name: layers_key(arch) for name, arch, _ in jobs}
    noise = seed_noise({layers[name]: seeds for name, seeds in runs.items()})  # a network trained under two names counts once
    compared = []
    for comparison in comparisons(config):
        prefix = f"{comparison['table']}_{comparison['target']}"
        reference = runs.get(f"{prefix}_reference", {})
        picks = ([(found_role(config, comparison["found"]), comparison["found"], "best on val")]
                 if comparison["found"] is not None else [])
        picks += [(pick["run"], pick, "also_train") for pick in comparison["also"]]
        for role, pick, selected in picks:
            found = runs.get(f"{prefix}_{role}", {})
            if not found or not reference:
                continue
            paired = paired_difference(found, reference, noise)
            compared.append({**{k: comparison[k] for k in ("table", "target", "reference")}, "found_run": pick["run"],
                             "selected": selected, "found_test": found, "reference_test": reference,
                             **paired.to_dict(), "verdict": paired.verdict("found better", "reference better")})
    return {"seed_noise": None if noise is None else noise.to_dict(), "comparisons": compared}


def standalone_must_holds(verdicts: dict[str, Any]) -> dict[str, bool]:
    """The issue's standalone must-hold as written (at every reference target some trained pick is
    more accurate than the reference beyond the seed spread), and the weaker reading that no trained
    pick is beaten by its reference beyond it. Both false while nothing is compared."""
    compared = verdicts["comparisons"]
    targets = {(v["table"], v["target"]) for v in compared}
    better = {(v["table"], v["target"]) for v in compared if v["verdict"] == "found better"}
    return {"found_better_than_references_beyond_spread": bool(compared) and better == targets,
            "found_not_worse_than_references": bool(compared) and all(v["verdict"] != "reference better" for v in compared)}


def plot_table(config: dict[str, Any], table: str, results: list[dict[str, Any]], rescored: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [r for r in results if r["table"] == table]
    labels = sorted({r["target"] for r in mine}, key=lambda label: min(r["target_ms"] for r in mine if r["target"] == label))
    if not labels:
        return
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(config["strategies"])}
    space = get_space(config["space"])
    predictor = tables_of(config, space)[table]
    references = {name: (float(predictor.predict(space.reference(name))), accuracy)
                  for name, accuracy in rescored.get("reference_val_accuracy", {}).items()}
    def test_of(result: dict[str, Any]) -> float | None:
        return rescored.get("test_accuracy", {}).get(arch_key(Architecture.from_dict(result["pick"]["arch"])))

    # row 0: everything evaluated; row 1: the same panels cut to the range of the picks and greedy's
    # paths, with every pick's test accuracy (x) beside its val accuracy (star)
    figure, axes = plt.subplots(2, len(labels), figsize=(4.2 * len(labels), 7.2), squeeze=False)
    for column, label in enumerate(labels):
        here = [r for r in mine if r["target"] == label]
        target_ms = here[0]["target_ms"]
        for row, axis in enumerate(axes[:, column]):
            for result in here:
                colour = colours.get(group_of(result["run"]), "grey")
                if result["path"]:
                    axis.plot([s["latency"] for s in result["path"]], [s["score"] for s in result["path"]], "-o",
                              ms=2, lw=1, color=colour, label=group_of(result["run"]))
                elif row == 0:
                    axis.scatter([e["latency"] for e in result["evaluated"]], [e["score"] for e in result["evaluated"]],
                                 s=3, alpha=0.25, color=colour)
                axis.scatter([result["pick"]["latency_ms"]], [result["pick"]["val_accuracy"]], marker="*", s=90,
                             color=colour, edgecolor="black", lw=0.5, zorder=5)
                test = test_of(result)
                if row == 1 and test is not None:
                    axis.scatter([result["pick"]["latency_ms"]], [test], marker="x", s=30, color=colour, zorder=5)
            axis.axvline(target_ms, color="black", ls=":", lw=1)
            for name, (reference_ms, accuracy) in references.items():
                axis.scatter([reference_ms], [accuracy], marker="D", s=30, color="black", zorder=6)
                axis.annotate(name.upper(), (reference_ms, accuracy), fontsize=7, xytext=(3, 3), textcoords="offset points")
            axis.set_xlabel("predicted latency (ms)")
            axis.grid(alpha=0.3)
        axes[0, column].set_title(f"{table}, target {label} ({target_ms:.2f} ms)", fontsize=9)
        axes[0, column].set_ylabel("val accuracy in the supernet (%)")
        axes[1, column].set_ylabel("accuracy in the supernet (%): * val, x test", fontsize=8)
        shown = [r["pick"]["val_accuracy"] for r in here] + [s["score"] for r in here if r["path"] for s in r["path"]]
        shown += [test for test in map(test_of, here) if test is not None]
        axes[1, column].set_ylim(min(shown) - 0.5, max(shown) + 0.5)
    lines = {}  # the greedy paths of every panel (a run may be missing from the first)
    for axis in axes[0]:
        for handle, name in zip(*axis.get_legend_handles_labels()):
            lines.setdefault(name, handle)
    handles, names = list(lines.values()), list(lines)
    handles += [plt.Line2D([], [], marker="o", ls="", color=colour, alpha=0.5) for name, colour in colours.items()
                if config["strategies"][name]["strategy"] != "greedy"]
    names += [f"{name} (evaluated)" for name in colours if config["strategies"][name]["strategy"] != "greedy"]
    figure.legend(handles, names, loc="lower center", ncol=min(len(names), 4), fontsize=7)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    write_bytes_atomic(results_of(config) / f"search_{table}.png", png_bytes(figure))
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=HERE / "config.yaml")
    parser.add_argument("--phase", required=True, choices=(*PHASES, "all"))
    parser.add_argument("--only", help="search: only this table (a name under `tables`)")
    parser.add_argument("--target", help="search: only the targets with this label (e.g. 0.25x or 1.1ms)")
    parser.add_argument("--strategy", action="append", default=[],
                        help="search: only this strategy (a name under `strategies`; repeat for several)")
    parser.add_argument("--extend-budgets", action="store_true",
                        help="search: extend sampling results whose budget is below what the target's greedy runs "
                             "set now (a costlier greedy run added later); the scores they paid for come from the cache")
    parser.add_argument("--remeasure", action="store_true",
                        help="rescore: measure every pick's latency again (run it on an otherwise idle machine)")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    if args.only is not None and args.only not in config["tables"]:
        raise SystemExit(f"--only {args.only}: choose from {', '.join(config['tables'])}")
    torch.set_num_threads(int(config["threads"]))
    phases = PHASES if args.phase == "all" else (args.phase,)
    for phase in phases:
        if phase == "search":
            search_phase(config, args.only, args.target, tuple(args.strategy), args.extend_budgets)
        elif phase == "rescore":
            rescore_phase(config, args.remeasure)
        elif phase == "standalone":
            standalone_phase(config)
        else:
            evaluate_phase(config)
    return 0


if __name__ == "__main__":
    sys.exit(exit_code_of(main))
