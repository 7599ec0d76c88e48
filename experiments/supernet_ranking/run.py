"""Study `supernet_ranking`: the Fashion-MNIST supernet's ranking of sub-networks against standalone training.

    python experiments/supernet_ranking/run.py --phase select          # which networks (seconds)
    python experiments/supernet_ranking/run.py --phase supernet        # train the V2 supernet (resumable)
    python experiments/supernet_ranking/run.py --phase standalone [--shard 1/2]   # train each network alone
    python experiments/supernet_ranking/run.py --phase budget          # a few networks at twice the epochs
    python experiments/supernet_ranking/run.py --phase seeds           # the same few again with another seed
    python experiments/supernet_ranking/run.py --phase evaluate [--partial]   # score, correlate, plot
    python experiments/supernet_ranking/run.py --phase attempts [--attempt NAME [--shard 1/2]]   # what was tried
    python experiments/supernet_ranking/run.py --phase all             # everything, in that order

1. select: networks spread over the `iphone12` latency range of the V2 space: `strata` equal-width
   bins between the smallest and the largest network's predicted latency, each filled by the first
   candidate falling in it (candidates: uniform samples and slimmed networks, alternately, seeded),
   plus the largest, the smallest and EfficientFormerV2 S0/S1/S2.
2. supernet: the V2 supernet trained on Fashion-MNIST with the sandwich rule (`supernet.training`).
3. standalone: every selected network trained from scratch with one recipe
   (`supernet.standalone`); each is a checkpoint and a result file, so a killed run resumes.
   `--shard i/n` trains every n-th network, so two processes share two cores.
4. budget: the same recipe at twice the epochs for a few networks spread over the range, to show
   whether the ranking at the chosen budget holds with more training.
5. seeds: the same networks with the same recipe and another seed: how far a network's accuracy
   moves between two runs, against how far apart the networks are (the ranking cannot be read
   more finely than the seed spread).
6. evaluate: each network's accuracy inside the supernet on a fixed part of val (with the
   supernet's shared BN statistics and after recalibrating BN on 2 and 10 training batches), the
   SynFlow proxy, params, MACs and latency predicted by today's table, against the standalone
   accuracy: Kendall τ and Spearman ρ with bootstrap 95% intervals, one scatter plot per
   predictor. The BN handling is chosen on the standalone val accuracy; the test accuracy only
   reports. `--partial` evaluates while phases are still running: over the networks trained so
   far and the supernet's latest epoch, written to the `*_partial` outputs, never to the final ones.
7. attempts: the improvement attempts of `evaluation.attempts`, each correlated like `evaluate`:
   the supernet scored with other evaluation settings, a supernet trained with other settings, or
   each network briefly trained (`short_training`: inherited from the supernet, or from scratch as
   the control). `--attempt NAME` runs one; `--shard i/n` with it splits a short training's networks.

Outputs (this folder): networks.json, supernet_training.json, standalone/<id>.json,
budget/<id>.json, seeds/<id>.json, results.json, ranking.csv, ranking.png (and results_partial.json,
ranking_partial.csv, ranking_partial.png from `--partial`).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from search_spaces import Architecture, count_macs, count_params, get_space  # noqa: E402
from search_spaces.files import write_bytes_atomic, write_text_atomic  # noqa: E402

from experiments.study import exit_code_of, load_settings, log, png_bytes, relative, read_json, shard, versions, write_json  # noqa: E402
from lut import get_device  # noqa: E402
from lut.devices import host_cpu, loadavg  # noqa: E402
from supernet.data import load_data, stratified_subset  # noqa: E402
from supernet.standalone import StandaloneRecipe, train_standalone  # noqa: E402
from supernet.training import TrainConfig, Trainer, metrics_path  # noqa: E402

PHASES = ("select", "supernet", "standalone", "budget", "seeds", "evaluate", "attempts")
#: the keys of `standalone` that are checks run with the recipe, not part of it
CHECKS = ("budget_check", "seed_check")
KEYS = ("space", "data", "resolution", "num_classes", "device", "accelerator", "threads", "checkpoints", "results",
        "selection", "supernet", "standalone", "evaluation")
ACCELERATORS = ("cpu", "cuda")  # where every network trains and is scored (`accelerator`)
HERE_CONFIG = HERE / "config.yaml"


def load_config(path: Path) -> dict[str, Any]:
    config = load_settings(path, KEYS)
    if config["accelerator"] not in ACCELERATORS:
        raise SystemExit(f"{path}: accelerator: must be one of {', '.join(ACCELERATORS)}, got {config['accelerator']!r}")
    if config["accelerator"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"{path}: accelerator: cuda, but torch sees no CUDA device here (use cpu)")
    return config


def accelerator_name(config: dict[str, Any]) -> str:
    """What trained and scored the networks: "cpu", or the CUDA device's name."""
    return torch.cuda.get_device_name() if config["accelerator"] == "cuda" else "cpu"


def results_of(config: dict[str, Any]) -> Path:
    """The folder the study's results go to (`results`, relative to the repository root)."""
    return ROOT / config["results"]


# -- 1. selection --------------------------------------------------------------------------------
def select(config: dict[str, Any]) -> list[dict[str, Any]]:
    space = get_space(config["space"])
    table = get_device(config["device"]).default_table(space)
    settings = config["selection"]
    rng = np.random.default_rng(settings["seed"])
    named = {"largest": space.largest(), "smallest": space.smallest(),
             **{name: space.reference(name) for name in space.references()}}
    chosen = [(name, named[name]) for name in settings["always"]]
    low, high = table.predict(space.smallest()), table.predict(space.largest())
    edges = np.linspace(low, high, settings["strata"] + 1)
    filled: dict[int, Architecture] = {}
    seen = {arch for _, arch in chosen}
    for _ in range(settings["pool"]):
        for arch in (space.sample(rng), space.sample_slimmed(rng)):
            stratum = min(int(np.searchsorted(edges, table.predict(arch), side="right")) - 1, settings["strata"] - 1)
            if 0 <= stratum and stratum not in filled and arch not in seen:
                filled[stratum] = arch
                seen.add(arch)
        if len(filled) == settings["strata"]:
            break
    chosen += [(f"stratum{index:02d}", filled[index]) for index in sorted(filled)]
    networks = []
    for index, (name, arch) in enumerate(chosen):
        networks.append({"id": f"n{index:02d}", "name": name, "latency_ms": round(table.predict(arch), 5),
                         "params": count_params(arch), "macs": count_macs(arch), "arch": arch.to_dict()})
    missing = [index for index in range(settings["strata"]) if index not in filled]
    write_json(results_of(config) / "networks.json", {"table": {"device": config["device"], "sha256": table.sha256},
                                        "latency_range_ms": [round(low, 5), round(high, 5)],
                                        "empty_strata": missing, "networks": networks})
    log(f"selected {len(networks)} networks ({len(filled)} of {settings['strata']} strata filled) over "
        f"{low:.3f}-{high:.3f} ms")
    return networks


def networks_of(config: dict[str, Any]) -> list[dict[str, Any]]:
    path = results_of(config) / "networks.json"
    if not path.is_file():
        raise SystemExit(f"{relative(path)} is missing: run --phase select first")
    return read_json(path)["networks"]


# -- 2. supernet ---------------------------------------------------------------------------------
def supernet_path(config: dict[str, Any]) -> Path:
    return ROOT / config["checkpoints"] / "supernet.pt"


def train_config_of(config: dict[str, Any]) -> TrainConfig:
    return TrainConfig(space=config["space"], data=config["data"], resolution=config["resolution"], **config["supernet"])


def train_supernet(config: dict[str, Any], log_path: Path | None = None) -> None:
    """Train (or resume) the study's supernet at `supernet_path(config)`; its training log goes to
    `log_path` (default: `supernet_training.json` in the results folder)."""
    train_config = train_config_of(config)
    bundle = load_data(config["data"], config["resolution"], train_config.seed)
    path = supernet_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(train_config, bundle, path, progress=True, device=config["accelerator"])
    if path.is_file():
        trainer.load(path)
    resumed, started, load = trainer.epoch, time.perf_counter(), loadavg()
    log(f"supernet: epochs {resumed + 1}..{train_config.epochs} of {train_config.epochs} (load {load})")
    trainer.run()
    write_json(log_path or results_of(config) / "supernet_training.json", {
        "config": dataclasses.asdict(train_config), "data": bundle.describe(), "checkpoint": relative(path),
        "accelerator": accelerator_name(config), "resumed_from_epoch": resumed, "seconds_this_run": round(time.perf_counter() - started, 1),
        "epoch_seconds_sum": round(sum(epoch["seconds"] for epoch in trainer.history), 1),
        "load": {"start": load, "end": loadavg()}, "epochs": trainer.history})


# -- 3./4. standalone ----------------------------------------------------------------------------
def recipe_of(config: dict[str, Any], epochs: int | None = None) -> StandaloneRecipe:
    settings = {key: value for key, value in config["standalone"].items() if key not in CHECKS}
    if epochs is not None:
        settings["epochs"] = epochs
    return StandaloneRecipe(**settings)


def seed_recipe(config: dict[str, Any]) -> StandaloneRecipe:
    """The study's recipe with the seed check's seed (weights, data order and augmentation)."""
    return dataclasses.replace(recipe_of(config), seed=int(config["standalone"]["seed_check"]["seed"]))


def train_networks(config: dict[str, Any], networks: list[dict[str, Any]], recipe: StandaloneRecipe,
                   folder: str) -> None:
    bundle = load_data(config["data"], config["resolution"], recipe.seed)
    for network in networks:
        out = results_of(config) / folder / f"{network['id']}.json"
        if out.is_file() and read_json(out)["recipe"] == dataclasses.asdict(recipe):
            continue
        checkpoint = ROOT / config["checkpoints"] / folder / f"{network['id']}.pt"
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        log(f"{folder} {network['id']} ({network['name']}, {network['latency_ms']:.3f} ms, "
            f"{network['params'] / 1e6:.2f} M): training (load {loadavg()})")
        result = train_standalone(Architecture.from_dict(network["arch"]), bundle, recipe, checkpoint,
                                  label=network["id"], device=config["accelerator"])
        write_json(out, {"id": network["id"], "name": network["name"], "recipe": dataclasses.asdict(recipe),
                         "checkpoint": relative(checkpoint), **result.to_dict()})
        log(f"{folder} {network['id']}: test {100 * result.accuracy['test']:.2f}%, val "
            f"{100 * result.accuracy['val']:.2f}% in {result.seconds:.0f} s")


def check_networks(config: dict[str, Any], networks: list[dict[str, Any]], check: str = "budget_check"
                   ) -> list[dict[str, Any]]:
    """`standalone.<check>.networks` networks evenly spread over the latency order."""
    ordered = sorted(networks, key=lambda network: network["latency_ms"])
    count = config["standalone"][check]["networks"]
    picks = np.linspace(0, len(ordered) - 1, count).round().astype(int)
    return [ordered[index] for index in sorted(set(picks.tolist()))]


# -- 5. evaluation -------------------------------------------------------------------------------
def rank_correlations(truth: list[float], predictor: list[float], resamples: int, seed: int) -> dict[str, Any]:
    """Kendall τ and Spearman ρ of `predictor` against `truth`, with bootstrap 95% intervals."""
    from scipy.stats import kendalltau, spearmanr

    truth_array, predicted = np.asarray(truth, dtype=float), np.asarray(predictor, dtype=float)
    rng = np.random.default_rng(seed)
    taus, rhos = [], []
    for _ in range(resamples):
        index = rng.integers(0, len(truth_array), len(truth_array))
        if len(set(index.tolist())) < 3:
            continue
        taus.append(kendalltau(truth_array[index], predicted[index]).statistic)
        rhos.append(spearmanr(truth_array[index], predicted[index]).statistic)
    taus, rhos = np.asarray(taus, dtype=float), np.asarray(rhos, dtype=float)
    interval = lambda values: [round(float(np.nanpercentile(values, 2.5)), 4),  # noqa: E731
                               round(float(np.nanpercentile(values, 97.5)), 4)]
    return {"kendall_tau": round(float(kendalltau(truth_array, predicted).statistic), 4),
            "kendall_tau_95": interval(taus),
            "spearman_rho": round(float(spearmanr(truth_array, predicted).statistic), 4),
            "spearman_rho_95": interval(rhos), "networks": len(truth_array)}


def supernet_scores(config: dict[str, Any], networks: list[dict[str, Any]],
                    settings: dict[str, Any] | None = None) -> dict[str, dict[str, float]]:
    """Each network's accuracy (%) inside the supernet on the evaluation part of val, per BN handling,
    with the seconds each evaluation took; `settings` replaces the config's `evaluation` section.

    The scores are kept in `<checkpoints>/supernet_scores.json`, keyed by everything they depend on
    (the supernet file's size and modification time, the evaluation settings, the networks), so
    `evaluate` reruns in seconds when only the standalone results changed."""
    from torch.utils.data import DataLoader

    from nas.evaluators import SupernetEvaluator
    from supernet import Supernet

    settings = config["evaluation"] if settings is None else settings
    checkpoint = supernet_path(config)
    cache_path = checkpoint.with_name("supernet_scores.json")
    cache = read_json(cache_path) if cache_path.is_file() else {}
    loaded: dict[str, Any] = {}

    def inputs():  # the supernet and the images, read only when a score is missing
        if not loaded:
            bundle = load_data(config["data"], config["resolution"], config["supernet"]["seed"])
            loaded["net"] = Supernet.load(checkpoint, space=config["space"]).to(config["accelerator"])
            loaded["val"] = DataLoader(stratified_subset(bundle.val, settings["val_images"]), batch_size=250)
            loaded["train"] = DataLoader(stratified_subset(bundle.train, config["supernet"]["train_images"]),
                                         batch_size=settings["recalibration_batch_size"], shuffle=False)
        return loaded["net"], loaded["val"], loaded["train"]

    stat = checkpoint.stat()
    scores: dict[str, dict[str, float]] = {}
    for batches in settings["recalibration_batches"]:
        name = f"supernet_bn{batches}" if batches else "supernet_shared_bn"
        untrained = {} if batches else {"untrained_norms": settings["untrained_norms"]}
        key = json.dumps({"supernet": [stat.st_size, stat.st_mtime_ns], "recalibrate": batches,
                          "val_images": settings["val_images"], "batch_size": settings["recalibration_batch_size"],
                          "train_images": config["supernet"]["train_images"], **untrained,
                          "networks": {n["id"]: n["arch"] for n in networks}}, sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()
        if digest not in cache:
            net, val, train = inputs()
            evaluator = SupernetEvaluator(net, val, recalibrate=batches, calibration_loader=train, **untrained)
            started = time.perf_counter()
            values = {network["id"]: evaluator.score(Architecture.from_dict(network["arch"])) for network in networks}
            cache[digest] = {"scores": values, "seconds_per_evaluation": (time.perf_counter() - started) / len(networks)}
            write_json(cache_path, cache)
        scores[name] = {**cache[digest]["scores"], "_seconds_per_evaluation": cache[digest]["seconds_per_evaluation"]}
        log(f"{name}: {scores[name]['_seconds_per_evaluation']:.2f} s per network")
    return scores


def supernet_weights_sha256(config: dict[str, Any]) -> str:
    """The sha256 of the study's supernet's weights (`SupernetEvaluator.weights_sha256`): which
    training a score came from, equal for two trainings only when their weights are."""
    from supernet import Supernet
    from supernet.checkpoint import content_digest

    return content_digest(dict(Supernet.load(supernet_path(config), space=config["space"]).state_dict()))


def seed_spread(config: dict[str, Any], networks: list[dict[str, Any]], standalone: dict[str, Any]) -> dict | None:
    """Test accuracy of the seed-check networks at the study's seed and at the check's seed: the
    per-network change, and its standard deviation as one run's (differences / sqrt 2)."""
    pairs = {}
    for network in check_networks(config, networks, "seed_check"):
        path = results_of(config) / "seeds" / f"{network['id']}.json"
        if path.is_file() and network["id"] in standalone:
            pairs[network["id"]] = (standalone[network["id"]]["accuracy"]["test"], read_json(path)["accuracy"]["test"])
    if len(pairs) < 2:
        return None
    differences = np.asarray([second - first for first, second in pairs.values()])
    spread = [first for first, _ in pairs.values()]
    # a shift shared by every network (the other seed's runs all a little better or worse) moves
    # no network past another; what reorders them is the spread of the differences about it
    return {"networks": sorted(pairs), "seed": config["standalone"]["seed_check"]["seed"],
            "test_at_study_seed": [pairs[i][0] for i in sorted(pairs)],
            "test_at_other_seed": [pairs[i][1] for i in sorted(pairs)],
            "mean_abs_difference": round(float(np.abs(differences).mean()), 5),
            "one_run_std": round(float(np.sqrt(np.mean(differences ** 2) / 2.0)), 5),
            "shared_shift": round(float(differences.mean()), 5),
            "one_run_std_about_the_shift": round(float(differences.std(ddof=1) / np.sqrt(2.0)), 5),
            "range_of_these_networks": round(float(max(spread) - min(spread)), 5)}


def noise_ceiling(test_accuracy: list[float], one_run_std: float, resamples: int, seed: int) -> dict[str, Any]:
    """The Kendall τ a perfect predictor could reach against one run of the recipe.

    A predictor is judged against one training run per network, and a run differs from the recipe's
    expected accuracy by about `one_run_std`. The spread of the expected accuracies is estimated by
    shrinking the observed ones towards their mean (observed variance = true variance + run variance);
    then one run is simulated `resamples` times and τ(expected, expected + noise) is summarised. No
    predictor can be expected to beat this ceiling; a τ goal above it cannot be met by any evaluator."""
    from scipy.stats import kendalltau

    observed = np.asarray(test_accuracy, dtype=float)
    observed_variance = float(observed.var(ddof=1))
    true_variance = max(observed_variance - one_run_std ** 2, 0.0)
    shrink = float(np.sqrt(true_variance / observed_variance)) if observed_variance > 0 else 0.0
    expected = observed.mean() + (observed - observed.mean()) * shrink
    rng = np.random.default_rng(seed)
    taus = np.asarray([kendalltau(expected, expected + rng.normal(0.0, one_run_std, expected.size)).statistic
                       for _ in range(resamples)], dtype=float)
    taus = np.nan_to_num(taus, nan=0.0)  # no spread left: expected accuracies tie, τ 0
    return {"one_run_std": one_run_std, "observed_std": round(float(np.sqrt(observed_variance)), 5),
            "estimated_true_std": round(float(np.sqrt(true_variance)), 5),
            "kendall_tau_median": round(float(np.nanmedian(taus)), 4),
            "kendall_tau_90": [round(float(np.nanpercentile(taus, 5)), 4), round(float(np.nanpercentile(taus, 95)), 4)],
            "resamples": resamples}


def trained_standalone(config: dict[str, Any], partial: bool) -> dict[str, dict[str, Any]]:
    """The standalone result of every selected network trained so far, by id; unless `partial`, a
    missing one ends the run with the phase to run first."""
    standalone = {}
    for network in networks_of(config):
        path = results_of(config) / "standalone" / f"{network['id']}.json"
        if path.is_file():
            standalone[network["id"]] = read_json(path)
        elif not partial:
            raise SystemExit(f"{relative(path)} is missing: run --phase standalone first (or --partial)")
    return standalone


def beyond_latency(truth: list[float], predictor: list[float], latency_ms: list[float]) -> float | None:
    """Spearman ρ between what is left of `truth` and of `predictor` once each one's least-squares
    line in log latency is removed: whether a predictor knows anything about accuracy that the
    networks' latency (their size, roughly) does not. Near 0: it ranks by size and nothing else."""
    from scipy.stats import spearmanr

    x = np.log(np.asarray(latency_ms, dtype=float))
    design = np.stack([x, np.ones_like(x)], axis=1)

    def residual(values: list[float]) -> np.ndarray:
        y = np.asarray(values, dtype=float)
        return y - design @ np.linalg.lstsq(design, y, rcond=None)[0]

    left = [residual(truth), residual(predictor)]
    # a line in log latency and nothing else: what is left is rounding
    if any(float(rest.std()) <= 1e-9 * max(float(np.abs(values).max()), 1.0) for rest, values in zip(left, (truth, predictor), strict=True)):
        return None
    return round(float(spearmanr(*left).statistic), 4)


def add_beyond_latency(record: dict[str, Any], standalone: dict[str, dict[str, Any]],
                       networks: list[dict[str, Any]]) -> bool:
    """Give each handling of an attempt's record its `spearman_rho_beyond_latency` against the
    standalone test accuracy (latency: the selection's table, `networks.json`); False when every
    handling had it already."""
    latency = {network["id"]: network["latency_ms"] for network in networks}
    changed = False
    for values in record["handlings"].values():
        ids = [i for i in values["scores"] if i in standalone]
        if "spearman_rho_beyond_latency" in values or len(ids) < 3:
            continue
        values["spearman_rho_beyond_latency"] = beyond_latency(
            [standalone[i]["accuracy"]["test"] for i in ids], [values["scores"][i] for i in ids], [latency[i] for i in ids])
        changed = True
    return changed


def correlations_with(config: dict[str, Any], standalone: dict[str, dict[str, Any]],
                      predictors: dict[str, dict[str, float]], split: str) -> dict[str, dict[str, Any]]:
    """Kendall τ and Spearman ρ (bootstrap intervals as `evaluation` says) of each predictor's
    values with the standalone accuracy on `split`, over the networks of `standalone`."""
    settings, ids = config["evaluation"], list(standalone)
    accuracy = [standalone[i]["accuracy"][split] for i in ids]
    return {name: rank_correlations(accuracy, [values[i] for i in ids], settings["bootstrap"], settings["bootstrap_seed"])
            for name, values in predictors.items()}


def evaluate(config: dict[str, Any], partial: bool = False) -> dict[str, Any]:
    from nas.synflow import SynFlowEvaluator

    standalone = trained_standalone(config, partial)
    networks = [network for network in networks_of(config) if network["id"] in standalone]
    if len(networks) < 3:
        raise SystemExit(f"{len(networks)} standalone networks trained: a ranking needs at least 3")
    space = get_space(config["space"])
    proxy = SynFlowEvaluator.from_space(space, seed=config["evaluation"]["proxy_seed"])
    predictors: dict[str, dict[str, float]] = supernet_scores(config, networks)
    seconds = {name: values.pop("_seconds_per_evaluation") for name, values in predictors.items()}
    predictors["synflow"] = {n["id"]: proxy.score(Architecture.from_dict(n["arch"])) for n in networks}
    predictors["params"] = {n["id"]: n["params"] for n in networks}
    predictors["macs"] = {n["id"]: n["macs"] for n in networks}
    # priced by today's table (networks.json keeps the latency the selection saw, with its table's sha256)
    table = get_device(config["device"]).default_table(space)
    predictors["latency"] = {n["id"]: table.predict(Architecture.from_dict(n["arch"])) for n in networks}
    ids = [network["id"] for network in networks]
    settings = config["evaluation"]
    # the BN handling is a decision: it is chosen on the standalone networks' val accuracy, and
    # only then are all predictors reported against their test accuracy
    val_correlations, correlations = (correlations_with(config, standalone, predictors, split) for split in ("val", "test"))
    budget = {}
    for network in check_networks(config, networks):
        path = results_of(config) / "budget" / f"{network['id']}.json"
        if path.is_file():
            budget[network["id"]] = read_json(path)["accuracy"]["test"]
    budget_check = None
    if len(budget) >= 3:
        budget_ids = sorted(budget)
        budget_check = {"networks": budget_ids,
                        "test_at_budget": [standalone[i]["accuracy"]["test"] for i in budget_ids],
                        "test_at_twice_the_epochs": [budget[i] for i in budget_ids],
                        **rank_correlations([budget[i] for i in budget_ids],
                                            [standalone[i]["accuracy"]["test"] for i in budget_ids], 0, 0)}
    # the epochs the scored checkpoint holds (its metrics file is rewritten with each checkpoint)
    supernet_epochs = len(metrics_path(supernet_path(config)).read_text(encoding="utf-8").splitlines())
    rows = [{"id": n["id"], "name": n["name"], "latency_ms": round(predictors["latency"][n["id"]], 5),
             "params": n["params"], "macs": n["macs"],
             "standalone_test": standalone[n["id"]]["accuracy"]["test"], "standalone_val": standalone[n["id"]]["accuracy"]["val"],
             **{name: round(values[n["id"]], 6) for name, values in predictors.items() if name not in ("params", "macs", "latency")}}
            for n in networks]
    baselines = ("synflow", "params", "macs", "latency")
    seeds = seed_spread(config, networks, standalone)
    best_supernet = max((name for name in predictors if name.startswith("supernet")),
                        key=lambda name: val_correlations[name]["kendall_tau"])
    result = {
        "study": "supernet_ranking",
        "complete": not partial,
        "supernet_epochs_trained": supernet_epochs,
        "config": config,
        "machine": {"cpu": host_cpu(), "platform": platform.platform(), "load_at_evaluation": loadavg(),
                    "accelerator": accelerator_name(config)},
        "versions": versions("torch", "numpy"),
        "networks": len(networks),
        "latency_table": {"device": config["device"], "sha256": table.sha256},
        "correlations_with_standalone_val_accuracy": val_correlations,
        "correlations_with_standalone_test_accuracy": correlations,
        "seconds_per_supernet_evaluation": {name: round(value, 3) for name, value in seconds.items()},
        "best_supernet_bn_handling": best_supernet,
        "goal": {"supernet_kendall_tau_at_least": 0.6,
                 "met": correlations[best_supernet]["kendall_tau"] >= 0.6 and all(
                     correlations[best_supernet]["kendall_tau"] > correlations[name]["kendall_tau"] for name in baselines)},
        "best_baseline": max(baselines, key=lambda name: correlations[name]["kendall_tau"]),
        "budget_check": budget_check,
        "seed_check": seeds,
        "noise_ceiling": None if seeds is None else noise_ceiling(
            [standalone[i]["accuracy"]["test"] for i in ids], seeds["one_run_std_about_the_shift"],
            settings["bootstrap"], settings["bootstrap_seed"]),
        "standalone_seconds_total": round(sum(s["seconds"] for s in standalone.values()), 1),
        "rows": rows,
    }
    suffix = "_partial" if partial else ""
    write_json(results_of(config) / f"results{suffix}.json", result)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(results_of(config) / f"ranking{suffix}.csv", buffer.getvalue())
    title = (f"{len(networks)} networks, supernet after {supernet_epochs} of {config['supernet']['epochs']} epochs"
             if partial else "")
    plot(rows, predictors, correlations, ids, results_of(config) / f"ranking{suffix}.png", title)
    for name, values in correlations.items():
        log(f"{name:<22} τ {values['kendall_tau']:+.3f} {values['kendall_tau_95']}  ρ {values['spearman_rho']:+.3f}")
    if result["noise_ceiling"]:
        log(f"noise ceiling: a perfect predictor reaches τ {result['noise_ceiling']['kendall_tau_median']:+.3f} "
            f"{result['noise_ceiling']['kendall_tau_90']} against one run (one-run std "
            f"{100 * result['noise_ceiling']['one_run_std']:.2f} pts)")
    return result


def attempt_config(config: dict[str, Any], name: str, changes: dict[str, Any]) -> dict[str, Any]:
    """The study's config as attempt `name` scores with it: unchanged, or, when the attempt changes
    the supernet's training (`supernet:` with `TrainConfig` fields), that training in a checkpoint
    folder of its own (`<checkpoints>/attempts/<name>/`)."""
    if "supernet" not in changes:
        return config
    if not isinstance(changes["supernet"], dict):
        raise SystemExit(f"evaluation.attempts.{name}.supernet: a mapping of supernet settings, got {changes['supernet']!r}")
    unknown = sorted(set(changes["supernet"]) - {field.name for field in dataclasses.fields(TrainConfig)})
    if unknown:
        raise SystemExit(f"evaluation.attempts.{name}.supernet: unknown setting(s) {unknown}")
    scored = {**config, "supernet": {**config["supernet"], **changes["supernet"]},
              "checkpoints": str(Path(config["checkpoints"]) / "attempts" / name)}
    try:
        train_config_of(scored)
    except ValueError as error:
        raise SystemExit(f"evaluation.attempts.{name}.supernet.{error}") from None
    return scored


#: `evaluation.attempts.<name>.short_training`: each network trained briefly and scored on the
#: evaluation's val images, from the supernet's weights (`initial: supernet`) or from scratch
SHORT_TRAINING_KEYS = ("initial", "steps", "lr")
SHORT_TRAINING_INITIAL = ("supernet", "scratch")


def from_scratch(changes: dict[str, Any]) -> bool:
    """Whether an attempt trains its networks from scratch (reads no supernet at all)."""
    return changes.get("short_training", {}).get("initial") == "scratch"


def short_training_recipe(config: dict[str, Any], name: str, settings: Any) -> StandaloneRecipe:
    """The recipe of a short-training attempt: the study's standalone recipe for `steps` steps
    (one epoch over `steps` batches of a fixed training subset, no warm-up) at `lr`, its per-epoch
    validation on the evaluation's val images (the ones the supernet is scored on)."""
    where = f"evaluation.attempts.{name}.short_training"
    if not isinstance(settings, dict) or sorted(settings) != sorted(SHORT_TRAINING_KEYS):
        raise SystemExit(f"{where}: a mapping with exactly the keys {list(SHORT_TRAINING_KEYS)}, got {settings!r}")
    if settings["initial"] not in SHORT_TRAINING_INITIAL:
        raise SystemExit(f"{where}.initial: one of {list(SHORT_TRAINING_INITIAL)}, got {settings['initial']!r}")
    if not isinstance(settings["steps"], int) or isinstance(settings["steps"], bool) or not 1 <= settings["steps"] <= 10_000:
        raise SystemExit(f"{where}.steps: an integer in [1, 10000], got {settings['steps']!r}")
    recipe = recipe_of(config)
    try:
        return dataclasses.replace(recipe, epochs=1, warmup_epochs=0.0, lr=settings["lr"],
                                   train_images=settings["steps"] * recipe.batch_size,
                                   val_images=config["evaluation"]["val_images"])
    except (ValueError, TypeError) as error:
        raise SystemExit(f"{where}.{error}") from None


def short_training_scores(config: dict[str, Any], networks: list[dict[str, Any]], name: str,
                          settings: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each network's accuracy (%) on the evaluation's val images after `short_training_recipe`,
    started from its weights inside the study's supernet (inherited weights fine-tuned: BN
    statistics re-estimated by the training steps) or from scratch (the control: what the same
    steps give without the supernet). Every network is a checkpoint under
    `<checkpoints>/attempts/<name>/`, so a killed attempt resumes; the seconds include training."""
    recipe = short_training_recipe(config, name, settings)
    bundle = load_data(config["data"], config["resolution"], recipe.seed)
    net = None
    if settings["initial"] == "supernet":
        from supernet import Supernet

        net = Supernet.load(supernet_path(config), space=config["space"]).to(config["accelerator"])
    folder = ROOT / config["checkpoints"] / "attempts" / name
    folder.mkdir(parents=True, exist_ok=True)
    values, started = {}, time.perf_counter()
    for network in networks:
        arch = dataclasses.replace(Architecture.from_dict(network["arch"]), resolution=config["resolution"],
                                   num_classes=config["num_classes"])
        weights = None if net is None else net.extract(arch).state_dict()  # the extracted network's own copies
        result = train_standalone(arch, bundle, recipe, folder / f"{network['id']}.pt", label=f"{name} {network['id']}",
                                  device=config["accelerator"], initial_weights=weights, splits=())
        values[network["id"]] = 100.0 * result.history[-1]["val"]
        log(f"attempt {name} {network['id']} ({network['name']}): {values[network['id']]:.2f}% on val "
            f"after {settings['steps']} steps (load {loadavg()})")
    handling = f"{settings['initial']}_{settings['steps']}_steps"
    return {handling: {**values, "_seconds_per_evaluation": (time.perf_counter() - started) / len(networks)}}


def attempts(config: dict[str, Any], only: str | None = None, part: str | None = None) -> dict[str, Any]:
    """The improvement attempts of `evaluation.attempts`: the supernet scored as `evaluation` says
    with each attempt's changes (e.g. more val images), correlated with the standalone val and test
    accuracy like `evaluate`. An attempt with a `supernet:` section trains that supernet first
    (`attempt_config`; resumable), its log in `attempts/<name>_supernet_training.json`; one with a
    `short_training:` section scores each network after a few training steps instead
    (`short_training_scores`). Each finished attempt is kept in attempts.json with the digest of the
    weights it scored; a rerun skips it unless its settings, networks or supernet changed. `only`
    runs one attempt (two processes can run two: each merges its record into the file as it is then);
    with `part` (`--shard i/n`) a short-training attempt trains every n-th network only and records
    nothing: a run without it then scores all from their finished checkpoints."""
    standalone = trained_standalone(config, partial=True)
    networks = [network for network in networks_of(config) if network["id"] in standalone]
    path = results_of(config) / "attempts.json"
    done = read_json(path) if path.is_file() else {}
    settings = config["evaluation"]
    chosen = settings.get("attempts", {})
    if only is not None:
        if only not in chosen:
            raise SystemExit(f"--attempt: one of {sorted(chosen)} (evaluation.attempts), got {only!r}")
        chosen = {only: chosen[only]}
    if part is not None and (only is None or "short_training" not in chosen[only]):
        raise SystemExit(f"--shard {part}: splits a short_training attempt's networks; name one with --attempt")
    for name, changes in chosen.items():
        if "short_training" in changes:
            short_training_recipe(config, name, changes["short_training"])  # refused before any work
    scores_study_supernet = any("supernet" not in changes and not from_scratch(changes) for changes in chosen.values())
    weights = supernet_weights_sha256(config) if scores_study_supernet else None
    for name, changes in chosen.items():
        scored, log_path = attempt_config(config, name, changes), None
        variant = {**{k: v for k, v in settings.items() if k != "attempts"},
                   **{k: v for k, v in changes.items() if k != "supernet"}}
        recorded = name in done and done[name]["settings"] == variant and done[name]["networks"] == len(networks)
        if "supernet" in changes:  # its own supernet, trained (or resumed) here first
            log_path = results_of(config) / "attempts" / f"{name}_supernet_training.json"
            trained = read_json(log_path) if log_path.is_file() else None
            finished = (trained is not None and len(trained["epochs"]) == trained["config"]["epochs"]
                        and trained["config"] == dataclasses.asdict(train_config_of(scored)))
            if finished and recorded and not supernet_path(scored).is_file():
                # recorded from a supernet trained with these settings that this host no longer holds
                # (not committed: 60 M parameters): keep the record rather than retrain it for an hour
                log(f"attempt {name}: recorded, its supernet ({supernet_path(scored)}) is not on this host; kept")
                continue
            if not (finished and supernet_path(scored).is_file()):
                log(f"attempt {name}: training its supernet with {changes['supernet']} (load {loadavg()})")
                train_supernet(scored, log_path)
        digest = None if from_scratch(changes) else weights if "supernet" not in changes else supernet_weights_sha256(scored)
        if recorded and done[name].get("supernet_weights_sha256") == digest:
            continue
        log(f"attempt {name}: {changes} (load {loadavg()})")
        if part is not None:
            short_training_scores(scored, shard(networks, part), name, changes["short_training"])
            log(f"attempt {name}: shard {part} trained; run --phase attempts without --shard to record it")
            return done
        if "short_training" in changes:
            scores = short_training_scores(scored, networks, name, changes["short_training"])
        else:
            scores = supernet_scores(scored, networks, variant)
        ids = [network["id"] for network in networks]
        record: dict[str, Any] = {"settings": variant, "changes": changes, "networks": len(networks),
                                  "supernet_weights_sha256": digest, "load": loadavg(), "handlings": {}}
        if log_path is not None:
            record["supernet_training"] = relative(log_path)
        seconds = {handling: values.pop("_seconds_per_evaluation") for handling, values in scores.items()}
        by_split = {split: correlations_with(config, standalone, scores, split) for split in ("val", "test")}
        for handling, values in scores.items():
            record["handlings"][handling] = {
                "seconds_per_evaluation": round(seconds[handling], 3),
                **{f"correlations_with_standalone_{split}_accuracy": by_split[split][handling] for split in by_split},
                "scores": {i: round(values[i], 4) for i in ids}}
            test = record["handlings"][handling]["correlations_with_standalone_test_accuracy"]
            log(f"attempt {name} {handling}: τ vs test {test['kendall_tau']:+.3f} {test['kendall_tau_95']}")
        done = {**(read_json(path) if path.is_file() else {}), name: record}  # another process may have added one
        write_json(path, done)
    done = read_json(path) if path.is_file() else {}  # with what another process (--attempt) added
    if any([add_beyond_latency(record, standalone, networks) for record in done.values()]):
        write_json(path, done)
    plot_attempts(done, standalone, networks, results_of(config) / "attempts.png")
    return done


def plot_attempts(done: dict[str, Any], standalone: dict[str, dict[str, Any]], networks: list[dict[str, Any]],
                  path: Path) -> None:
    """attempts.png: each attempt's supernet scores (per BN handling) against standalone test
    accuracy, over the networks every panel shares (attempts scored on fewer are left out)."""
    ids = [network["id"] for network in networks]
    predictors, correlations = {}, {}
    for name, record in done.items():
        for handling, values in record["handlings"].items():
            if set(ids) <= set(values["scores"]):
                label = f"{name} ({handling})"
                predictors[label] = values["scores"]
                correlations[label] = values["correlations_with_standalone_test_accuracy"]
    if not predictors:
        return
    rows = [{"name": network["name"], "standalone_test": standalone[network["id"]]["accuracy"]["test"]}
            for network in networks]
    plot(rows, predictors, correlations, ids, path,
         title=f"{PLOT_SUBJECT}: each attempt's scores (%) against standalone training")


PLOT_SUBJECT = "Fashion-MNIST, EfficientFormerV2 space at 64 px"
PLOT_TITLE = f"{PLOT_SUBJECT}: each predictor against standalone training"


def plot(rows, predictors, correlations, ids, path: Path, note: str = "", title: str = PLOT_TITLE) -> None:
    import matplotlib.pyplot as plt

    names = list(predictors)
    columns = 4
    figure, axes = plt.subplots((len(names) + columns - 1) // columns, columns, figsize=(4.2 * columns, 3.6 * ((len(names) + columns - 1) // columns)), dpi=100)
    test = [100 * row["standalone_test"] for row in rows]
    for axis, name in zip(axes.flat, names):
        values = [predictors[name][i] for i in ids]
        axis.scatter(values, test, s=18)
        for value, accuracy, row in zip(values, test, rows):
            if not row["name"].startswith("stratum"):
                axis.annotate(row["name"], (value, accuracy), fontsize=7, xytext=(3, 3), textcoords="offset points")
        stats = correlations[name]
        axis.set_title(f"{name}: τ {stats['kendall_tau']:+.2f} [{stats['kendall_tau_95'][0]:+.2f}, "
                       f"{stats['kendall_tau_95'][1]:+.2f}]", fontsize=9)
        axis.set_xlabel(name, fontsize=8)
        axis.set_ylabel("standalone test accuracy (%)", fontsize=8)
        if name in ("params", "macs"):
            axis.set_xscale("log")
        axis.grid(True, linewidth=0.3)
    for axis in list(axes.flat)[len(names):]:
        axis.axis("off")
    figure.suptitle(title + (f" (partial: {note})" if note else ""), fontsize=10)
    figure.tight_layout()
    write_bytes_atomic(path, png_bytes(figure, colours=256))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=HERE_CONFIG)
    parser.add_argument("--phase", choices=(*PHASES, "all"), required=True)
    parser.add_argument("--shard", help="standalone/budget/seeds (and attempts with --attempt naming a short_training "
                                        "one): train every n-th network (i/n), for parallel processes")
    parser.add_argument("--attempt", help="attempts: run only this one of evaluation.attempts (two processes can run two)")
    parser.add_argument("--partial", action="store_true",
                        help="evaluate: over the networks trained so far and the supernet's latest epoch (*_partial outputs)")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    config = load_config(args.config)
    torch.set_num_threads(int(config["threads"]))
    if config["accelerator"] == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matrix products (cuDNN convolutions use TF32 by default)
    phases = PHASES if args.phase == "all" else (args.phase,)
    for phase in phases:
        if phase == "select":
            select(config)
        elif phase == "supernet":
            train_supernet(config)
        elif phase == "standalone":
            train_networks(config, shard(networks_of(config), args.shard), recipe_of(config), "standalone")
        elif phase == "budget":
            chosen = shard(check_networks(config, networks_of(config)), args.shard)
            train_networks(config, chosen, recipe_of(config, config["standalone"]["budget_check"]["epochs"]), "budget")
        elif phase == "seeds":
            chosen = shard(check_networks(config, networks_of(config), "seed_check"), args.shard)
            train_networks(config, chosen, seed_recipe(config), "seeds")
        elif phase == "evaluate":
            evaluate(config, partial=args.partial)
        else:
            attempts(config, args.attempt, args.shard)
    return 0


if __name__ == "__main__":
    sys.exit(exit_code_of(main))
