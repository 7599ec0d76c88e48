"""Train the EfficientFormerV2 supernet on the scikit-learn digits, then search with it (issue 9).

    python experiments/search_digits/run.py [--config experiments/search_digits/config.yaml]
        [--retrain] [--results DIR]

1. Training: the `efficientformer_v2` supernet, sandwich rule, on the digits (`supernet.training`),
   by the `training` section of the config. The checkpoint goes to `training.checkpoint`
   (git-ignored `runs/`); a checkpoint of exactly the same configuration is reused, a shorter one
   of the same configuration is resumed (`--retrain` trains from scratch whatever is there).
2. Search on the `iphone12` table with the trained supernet as the evaluator (top-1 accuracy on
   the 359 held-out digits, `nas.evaluators.SupernetEvaluator`), at one target latency (a fraction
   of the largest network's predicted latency): greedy slimming with the `latency` objective,
   greedy with the `mes` objective, then random search and regularized evolution, each with the
   budget greedy(latency) used. The EfficientFormerV2 references are priced and evaluated the same way.
   One evaluator cache is shared: a score is a deterministic function of the architecture, so
   sharing changes no result, only the wall time; each strategy's `evaluations` counts the distinct
   architectures it scored (its cost), `computed` those not already cached.
3. Results, written atomically into the study folder (or `--results`): `results.json` (config,
   machine and load, versions, wall times, training curve, every evaluated architecture per
   strategy, greedy paths, final picks, references), `evaluations.csv` (one row per evaluated
   architecture per strategy), `results.md` (the table of final architectures), and the plots
   `latency_accuracy.png` and `mes_accuracy.png`.

Everything runs with `torch.set_num_threads(config.threads)`; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import io
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import matplotlib

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # for `experiments.study`: the studies are not an installed package
matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from tqdm import tqdm  # noqa: E402

import search_spaces  # noqa: E402
from experiments.study import png_bytes  # noqa: E402
from lut import get_device  # noqa: E402
from lut.devices import host_cpu, loadavg  # noqa: E402
from nas.evaluators import SupernetEvaluator  # noqa: E402
from nas.api import SearchRequest, pareto_points, run_search  # noqa: E402
from nas.objectives import MobileEfficiencyScore, get_objective  # noqa: E402
from nas.problem import SearchResult, Step  # noqa: E402
from nas.strategies import RandomSearch, RegularizedEvolution  # noqa: E402
from search_spaces import Architecture, count_params, get_space  # noqa: E402
from search_spaces.files import write_bytes_atomic, write_text_atomic  # noqa: E402
from supernet.data import load_data  # noqa: E402
from supernet.supernet import CheckpointError, read_checkpoint  # noqa: E402
from supernet.training import TrainConfig, Trainer  # noqa: E402

STUDY = Path(__file__).resolve().parent
ROOT = STUDY.parents[1]
COMMAND = "python experiments/search_digits/run.py"
CONFIG_KEYS = {"space", "threads", "training", "evaluator", "search"}
EVALUATOR_KEYS = {"batch_size", "recalibrate", "prefix_cache"}
SEARCH_KEYS = {"device", "target_fraction", "objectives", "random", "evolution", "references"}
BLOCK_CODES = {"ffn": "F", "attn_ffn": "A"}
# Strategy name -> (label in plots and tables, matplotlib colour).
STRATEGY_STYLE = {
    "greedy_latency": ("greedy, latency objective", "tab:blue"),
    "greedy_mes": ("greedy, MES objective", "tab:orange"),
    "random": ("random search", "tab:green"),
    "evolution": ("regularized evolution", "tab:red"),
}


# -- configuration -----------------------------------------------------------------------------------
def load_config(path: Path) -> dict[str, Any]:
    """The study configuration; exits with one line naming the problem when a section is wrong."""
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    problems = []
    if not isinstance(config, dict):
        raise SystemExit(f"{path}: not a mapping")
    problems += [f"unknown key {key!r}" for key in sorted(set(config) - CONFIG_KEYS)]
    problems += [f"missing key {key!r}" for key in sorted(CONFIG_KEYS - set(config))]
    if not problems:
        problems += [f"evaluator: unknown key {key!r}" for key in sorted(set(config["evaluator"]) - EVALUATOR_KEYS)]
        problems += [f"search: unknown key {key!r}" for key in sorted(set(config["search"]) - SEARCH_KEYS)]
        problems += [f"search: missing key {key!r}" for key in sorted(SEARCH_KEYS - set(config["search"]))]
        if "checkpoint" not in config["training"]:
            problems.append("training: missing key 'checkpoint'")
        if set(config["search"].get("objectives", {})) != {"latency", "mes"}:
            problems.append("search.objectives: needs exactly 'latency' and 'mes'")
    if problems:
        raise SystemExit(f"{path}: {problems[0]}")
    return config


def train_config(config: dict[str, Any]) -> TrainConfig:
    """The `TrainConfig` of the `training` section (all keys but `checkpoint`)."""
    settings = {key: value for key, value in config["training"].items() if key != "checkpoint"}
    try:
        return TrainConfig(space=config["space"], **settings)
    except (TypeError, ValueError) as error:
        raise SystemExit(f"training: {error}") from None


# -- machine -------------------------------------------------------------------------------------------
def versions() -> dict[str, str | None]:
    """Versions of what the numbers depend on."""
    try:
        import onnxruntime

        ort: str | None = onnxruntime.__version__
    except ImportError:
        ort = None
    return {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": ort,
            "numpy": np.__version__, "matplotlib": matplotlib.__version__, "latnas": search_spaces.__version__}


def log(message: str) -> None:
    print(f"[search_digits] {message}", file=sys.stderr, flush=True)


# -- 1. training ---------------------------------------------------------------------------------------
def train_supernet(config: dict[str, Any], retrain: bool) -> tuple[Trainer, dict[str, Any]]:
    """Train (or reuse / resume) the supernet; returns the trainer and what happened."""
    settings = train_config(config)
    checkpoint = ROOT / config["training"]["checkpoint"]
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    bundle = load_data(settings.data, settings.resolution, settings.seed)
    trainer = Trainer(settings, bundle, checkpoint, progress=True)
    if checkpoint.is_file() and not retrain:
        try:
            saved = read_checkpoint(checkpoint).get("extra", {}).get("training", {}).get("config")
        except CheckpointError as error:
            saved = None
            log(f"ignoring the checkpoint: {error}")
        if saved == dataclasses.asdict(settings):
            trainer.load(checkpoint)
            log(f"reusing {checkpoint.relative_to(ROOT)} (epoch {trainer.epoch} of {settings.epochs})")
        elif saved is not None:
            log(f"{checkpoint.relative_to(ROOT)} was trained with other settings: training from scratch")
    resumed_from = trainer.epoch
    log(f"training {settings.epochs - resumed_from} epoch(s) of the {settings.space} supernet on {settings.data}")
    started, cpu_started = time.perf_counter(), time.process_time()
    trainer.run()
    info = {
        "config": dataclasses.asdict(settings),
        "data": bundle.describe(),
        "checkpoint": str(checkpoint.relative_to(ROOT)),
        "checkpoint_mb": round(checkpoint.stat().st_size / 2**20, 1),
        "resumed_from_epoch": resumed_from,
        "wall_seconds_this_run": round(time.perf_counter() - started, 1),
        "cpu_seconds_this_run": round(time.process_time() - cpu_started, 1),
        "epoch_seconds_sum": round(sum(epoch["seconds"] for epoch in trainer.history), 1),
        "epochs": trainer.history,
    }
    return trainer, info


# -- 2. search -----------------------------------------------------------------------------------------
class Ledger:
    """One strategy's view of a shared `SupernetEvaluator`: the distinct architectures it scored, in order.

    `evaluations` is what the strategy paid (distinct architectures); `computed` counts those the
    shared cache did not hold yet. A tqdm bar on stderr counts evaluations when `label` is given.
    """

    name = "supernet"

    def __init__(self, shared: SupernetEvaluator, label: str | None = None) -> None:
        self.shared = shared
        self.records: dict[Architecture, float] = {}
        self.computed = 0
        self._bar = tqdm(desc=label, unit="eval", file=sys.stderr, leave=False) if label else None

    @property
    def evaluations(self) -> int:
        return len(self.records)

    def score(self, arch: Architecture) -> float:
        before = self.shared.evaluations
        value = self.shared.score(arch)
        self.computed += self.shared.evaluations - before
        if arch not in self.records:
            self.records[arch] = value
            if self._bar is not None:
                self._bar.update(1)
        return value

    def settings(self) -> dict[str, Any]:
        return self.shared.settings()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def arch_code(arch: Architecture) -> str:
    """Compact architecture: `width:blocks` per stage joined by `/`; F = ffn, A = attn_ffn, digit =
    expansion, `-` = identity slot (e.g. `32:F4F4-/48:F4F3/...`)."""
    stages = []
    for stage in arch.stages:
        blocks = "".join("-" if block.is_identity else f"{BLOCK_CODES.get(block.type, block.type)}{block.expansion or ''}"
                         for block in stage.blocks)
        stages.append(f"{stage.width}:{blocks}")
    return "/".join(stages)


@dataclasses.dataclass
class StrategyRun:
    """One strategy's outcome: the search result, the rows of every evaluated architecture, cost."""

    name: str
    result: SearchResult
    rows: list[dict[str, Any]]
    evaluations: int
    computed: int
    seconds: float
    cpu_seconds: float
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def evaluation_row(strategy: str, index: int, arch: Architecture, accuracy: float, table, mes_of,
                   action: str, path_step: int | None) -> dict[str, Any]:
    """One CSV/JSON row: an evaluated architecture with its latency, params, MES and accuracy."""
    latency, params = float(table.predict(arch)), count_params(arch)
    return {"strategy": strategy, "index": index, "path_step": path_step, "action": action,
            "latency_ms": round(latency, 5), "params": params, "mes": round(mes_of(params, latency), 4),
            "accuracy_percent": round(accuracy, 4), "depths": "-".join(map(str, arch.depths)),
            "widths": "-".join(map(str, arch.widths)), "arch": arch_code(arch)}


def search(name: str, space, table, evaluator, objective: str, target: float, mes_of: MobileEfficiencyScore,
           strategy="greedy", on_step=None) -> SearchResult:
    """One search through `nas.api.run_search`; an unreachable target ends the study."""
    request = SearchRequest(space.name, table, target, evaluator=evaluator, objective=objective, mes=mes_of,
                            strategy=strategy)
    outcome = run_search(request, on_step=on_step, progress=not isinstance(strategy, str))
    if not outcome.reachable:
        raise SystemExit(f"{name}: target {target:.4f} ms cannot be met (smallest {outcome.smallest_latency:.4f} ms)")
    return outcome.result


def run_greedy(name: str, space, table, shared: SupernetEvaluator, objective: str, target: float,
               mes_of: MobileEfficiencyScore) -> StrategyRun:
    """Greedy slimming from the largest network; every candidate it scored becomes a row."""
    ledger = Ledger(shared, label=name)

    def report(step: Step) -> None:
        ledger_note = f"{ledger.evaluations} evaluations"
        log(f"{name}: {step.action:<16} {step.latency:.3f} ms  {step.params / 1e6:6.2f} M  "
            f"acc {step.score:6.2f}%  ({ledger_note})")

    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        result = search(name, space, table, ledger, objective, target, mes_of, on_step=report)
    finally:
        ledger.close()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    on_path = {arch: index for index, arch in enumerate(result.path)}
    actions = {arch: step.action for arch, step in zip(result.path, result.steps)}
    rows = [evaluation_row(name, index, arch, accuracy, table, mes_of, actions.get(arch, "candidate"), on_path.get(arch))
            for index, (arch, accuracy) in enumerate(ledger.records.items())]
    path = [{**step.to_dict(), "mes": round(mes_of(step.params, step.latency), 4), "arch": arch_code(arch)}
            for step, arch in zip(result.steps, result.path)]
    return StrategyRun(name, result, rows, ledger.evaluations, ledger.computed, seconds, cpu_seconds,
                       {"steps": len(result.steps) - 1, "path": path,
                        "objective": get_objective(objective, mes_of).settings()})


def run_sampler(name: str, strategy, settings: dict[str, Any], space, table, shared: SupernetEvaluator,
                objective: str, target: float, budget: int, mes_of: MobileEfficiencyScore) -> StrategyRun:
    """Random search or regularized evolution (`strategy`: its class) at `budget` evaluations; every
    evaluation becomes a row."""
    ledger = Ledger(shared)
    started, cpu_started = time.perf_counter(), time.process_time()
    result = search(name, space, table, ledger, objective, target, mes_of, strategy(budget=budget, **settings))
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    rows = [evaluation_row(name, index, arch, step.score, table, mes_of, step.action, None)
            for index, (arch, step) in enumerate(zip(result.path, result.steps))]
    log(f"{name}: best {result.score:.2f}% at {result.latency:.3f} ms after {result.evaluations} evaluations "
        f"({result.stats.proposals} proposals, {seconds:.0f} s)")
    return StrategyRun(name, result, rows, ledger.evaluations, ledger.computed, seconds, cpu_seconds,
                       {"settings": settings, "proposal_stats": result.stats.to_dict()})


def final_record(arch: Architecture, accuracy: float, table, mes_of) -> dict[str, Any]:
    """Latency, params, MES, accuracy, depths, widths and the full architecture of one network."""
    latency, params = float(table.predict(arch)), count_params(arch)
    return {"latency_ms": round(latency, 4), "params": params, "mes": round(mes_of(params, latency), 3),
            "accuracy_percent": round(accuracy, 3), "depths": list(arch.depths), "widths": list(arch.widths),
            "arch_code": arch_code(arch), "arch": arch.to_dict()}


# -- 3. outputs ----------------------------------------------------------------------------------------
def pareto_front(points: Iterable[tuple[float, float]], lower_is_better: bool) -> list[tuple[float, float]]:
    """Non-dominated (x, accuracy) points, sorted by x ascending; x is minimised when
    `lower_is_better` (latency), maximised otherwise (MES); accuracy is always maximised
    (`nas.api.pareto_points`, with MES negated so that lower is better)."""
    sign = 1.0 if lower_is_better else -1.0
    return sorted((x, accuracy) for _, _, (x, accuracy) in pareto_points([(sign * x, a, (x, a)) for x, a in points]))


def plot(runs: dict[str, StrategyRun], finals: dict[str, dict[str, Any]], references: dict[str, dict[str, Any]],
         x_key: str, target: float | None, title: str, x_label: str, path: Path) -> None:
    """Accuracy against `x_key` (latency_ms or mes): greedy paths as lines, sampled points as a
    scatter with their Pareto front as a step line, the references as stars, the target as a line."""
    lower_is_better = x_key == "latency_ms"
    same_paths = runs["greedy_latency"].result.path == runs["greedy_mes"].result.path
    figure, axes = plt.subplots(figsize=(9.5, 6.0), dpi=110)
    for name, run in runs.items():
        label, colour = STRATEGY_STYLE[name]
        if name.startswith("greedy"):
            steps = run.extra["path"]
            xs = [s["latency"] if lower_is_better else s["mes"] for s in steps]
            style = {"linestyle": "-", "marker": "o", "linewidth": 3.0, "markersize": 6, "alpha": 0.75} \
                if name == "greedy_latency" else {"linestyle": "--", "marker": "s", "linewidth": 1.4, "markersize": 3}
            same = ", identical to the latency objective's" if same_paths and name == "greedy_mes" else ""
            axes.plot(xs, [s["score"] for s in steps], color=colour, zorder=4, **style,
                      label=f"{label}: path ({run.extra['steps']} steps, {run.evaluations} evaluations){same}")
            axes.plot(xs[-1:], [steps[-1]["score"]], "o", color=colour, markersize=10, markerfacecolor="none",
                      markeredgewidth=2, zorder=5)
        else:
            xs = [row[x_key] for row in run.rows]
            ys = [row["accuracy_percent"] for row in run.rows]
            axes.scatter(xs, ys, s=9, color=colour, alpha=0.3, linewidths=0, zorder=2,
                         label=f"{label}: {len(xs)} evaluated")
            front = pareto_front(zip(xs, ys), lower_is_better)
            axes.step([p[0] for p in front], [p[1] for p in front], where="post" if lower_is_better else "pre",
                      color=colour, linewidth=1.6, zorder=3, label=f"{label}: Pareto front")
            axes.plot([finals[name][x_key]], [finals[name]["accuracy_percent"]], "o", color=colour, markersize=10,
                      markerfacecolor="none", markeredgewidth=2, zorder=5)
    for name, ref in references.items():
        axes.plot(ref[x_key], ref["accuracy_percent"], "*", color="black", markersize=12, zorder=6)
        axes.annotate(f"V2-{name.upper()}", (ref[x_key], ref["accuracy_percent"]), textcoords="offset points",
                      xytext=(6, -12), fontsize=9)
    axes.plot([], [], "*", color="black", markersize=12, label="EfficientFormerV2 references")
    axes.plot([], [], "o", color="grey", markersize=10, markerfacecolor="none", markeredgewidth=2,
              label="final pick of each strategy")
    if target is not None:
        axes.axvline(target, color="grey", linestyle="--", linewidth=1.2, zorder=1, label=f"target {target:.3f} ms")
    if not lower_is_better:
        axes.set_xscale("log")
        axes.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axes.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes.set_xlabel(x_label)
    axes.set_ylabel("top-1 accuracy on the 359 held-out digits (%; one image = 0.28)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3, which="both")
    axes.legend(fontsize=8, loc="lower left" if lower_is_better else "lower right", framealpha=0.9)
    figure.tight_layout()
    write_bytes_atomic(path, png_bytes(figure))


def markdown_table(finals: dict[str, dict[str, Any]], runs: dict[str, StrategyRun],
                   references: dict[str, dict[str, Any]], largest: dict[str, Any], target: float) -> str:
    """The table of final architectures (with the largest network and the references for context)."""
    header = ("| network | latency (ms, iPhone 12 pred.) | params (M) | MES | digits acc. (%) | depths | widths "
              "| evaluations | wall time (s) |\n|---|---:|---:|---:|---:|---|---|---:|---:|\n")

    def line(label: str, record: dict[str, Any], evaluations: str, seconds: str) -> str:
        return (f"| {label} | {record['latency_ms']:.3f} | {record['params'] / 1e6:.2f} | {record['mes']:.1f} "
                f"| {record['accuracy_percent']:.2f} | {'-'.join(map(str, record['depths']))} "
                f"| {'-'.join(map(str, record['widths']))} | {evaluations} | {seconds} |\n")

    body = "".join(line(f"{STRATEGY_STYLE[name][0]} (target {target:.3f} ms)", finals[name], str(runs[name].evaluations),
                        f"{runs[name].seconds:.0f}") for name in runs)
    body += line("largest network (greedy start)", largest, "–", "–")
    body += "".join(line(f"EfficientFormerV2-{name.upper()} (reference)", ref, "–", "–") for name, ref in references.items())
    return header + body


def json_text(data: Any) -> str:
    """Indented JSON whose innermost lists (of numbers or strings) stay on one line: small, diffable."""
    text = json.dumps(data, indent=1)
    return re.sub(r"\[\n\s*([^\[\]{}]*?)\n\s*\]",
                  lambda m: "[" + " ".join(line.strip() for line in m.group(1).splitlines()) + "]", text) + "\n"


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


# -- main ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=STUDY / "config.yaml")
    parser.add_argument("--retrain", action="store_true", help="train from scratch even if the checkpoint exists")
    parser.add_argument("--results", type=Path, default=STUDY, help="folder for the results (default: the study folder)")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    torch.set_num_threads(int(config["threads"]))
    started, cpu_started = time.perf_counter(), time.process_time()
    machine: dict[str, Any] = {"cpu_count": os.cpu_count(), "cpu": host_cpu(), "platform": platform.platform(),
                               "torch_threads": torch.get_num_threads(), "niceness": os.nice(0),
                               "loadavg": {"start": loadavg()}}
    log(f"load at start: {machine['loadavg']['start']}")

    # 1. training
    trainer, training = train_supernet(config, args.retrain)
    machine["loadavg"]["after_training"] = loadavg()
    net = trainer.supernet
    net.set_mode("fixed")
    last = training["epochs"][-1]
    log(f"trained: largest {100 * last['val_largest']:.2f}%, smallest {100 * last['val_smallest']:.2f}%, "
        f"random mean {100 * last['val_random']:.2f}% (load {machine['loadavg']['after_training']})")

    # 2. search
    space = get_space(config["space"])
    search = config["search"]
    table = get_device(search["device"]).default_table(space)
    largest_arch = space.largest()
    largest_ms = float(table.predict(largest_arch))
    target = search["target_fraction"] * largest_ms
    mes_of = MobileEfficiencyScore(**search["objectives"]["mes"])
    settings = config["evaluator"]
    bundle = trainer.bundle
    calibration = DataLoader(bundle.train, batch_size=64, shuffle=False) if settings["recalibrate"] else None
    shared = SupernetEvaluator(net, DataLoader(bundle.val, batch_size=settings["batch_size"], shuffle=False),
                               recalibrate=settings["recalibrate"], calibration_loader=calibration,
                               prefix_cache=settings["prefix_cache"])
    log(f"{search['device']} table ({table.metadata.device}, {table.metadata.resolution} px): largest "
        f"{largest_ms:.3f} ms, target {target:.3f} ms ({search['target_fraction']:.0%})")

    runs: dict[str, StrategyRun] = {}
    for objective in ("latency", "mes"):
        name = f"greedy_{objective}"
        runs[name] = run_greedy(name, space, table, shared, objective, target, mes_of)
        machine["loadavg"][f"after_{name}"] = loadavg()
    budget = runs["greedy_latency"].evaluations
    samplers = {"random": (RandomSearch, search["random"]), "evolution": (RegularizedEvolution, search["evolution"])}
    for name, (strategy, strategy_settings) in samplers.items():
        log(f"{name}: budget {budget} evaluations (greedy(latency)'s)")
        runs[name] = run_sampler(name, strategy, dict(strategy_settings), space, table, shared, "latency",
                                 target, budget, mes_of)
        machine["loadavg"][f"after_{name}"] = loadavg()

    context = Ledger(shared)
    largest = final_record(largest_arch, context.score(largest_arch), table, mes_of)
    smallest = final_record(space.smallest(), context.score(space.smallest()), table, mes_of)
    references = {name: final_record(space.reference(name), context.score(space.reference(name)), table, mes_of)
                  for name in search["references"]}
    finals = {name: final_record(run.result.arch, run.result.score, table, mes_of) for name, run in runs.items()}
    machine["loadavg"]["end"] = loadavg()
    total, cpu_total = time.perf_counter() - started, time.process_time() - cpu_started

    # 3. outputs
    out = args.results
    out.mkdir(parents=True, exist_ok=True)
    rows = [row for run in runs.values() for row in run.rows]
    write_csv(rows, out / "evaluations.csv")
    table_md = markdown_table(finals, runs, references, largest, target)
    write_text_atomic(out / "results.md", table_md)
    plot(runs, finals, references, "latency_ms", target,
         f"Search on digits: {config['space']}, supernet evaluator, target {target:.3f} ms",
         "latency (ms, iPhone 12 predicted: analytic A14 model, Core ML, 224 px)", out / "latency_accuracy.png")
    plot(runs, finals, references, "mes", None,
         f"Search on digits: MES vs accuracy (target {target:.3f} ms; higher MES is better)",
         f"MES = 100 (params / {mes_of.u_size / 1e6:g} M)^-{mes_of.alpha_size:g} "
         f"(latency / {mes_of.u_lat:g} ms)^-{mes_of.alpha_lat:g} (log scale)", out / "mes_accuracy.png")
    columns = ["index", "path_step", "action", "latency_ms", "params", "mes", "accuracy_percent", "depths", "widths"]
    report = {
        "study": "search_digits",
        "command": COMMAND,
        "what": "\n\n".join(part.strip() for part in __doc__.split("\n\n")[2:]),
        "config": config,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "versions": versions(),
        "wall_seconds": {"total": round(total, 1), "training": training["wall_seconds_this_run"],
                         **{name: round(run.seconds, 1) for name, run in runs.items()}},
        "cpu_seconds": {"total": round(cpu_total, 1), "training": training["cpu_seconds_this_run"],
                        **{name: round(run.cpu_seconds, 1) for name, run in runs.items()},
                        "note": "time.process_time() of this process (1 torch thread): close to the wall time "
                                "on an otherwise idle core"},
        "training": training,
        "table": {"device": search["device"], "sha256": table.sha256, "resolution": table.metadata.resolution,
                  "num_classes": table.metadata.num_classes, "precision": table.metadata.precision,
                  "largest_ms": round(largest_ms, 4),
                  "smallest_ms": round(float(table.predict(space.smallest())), 4)},
        "target_ms": round(target, 4),
        "evaluator": {**shared.settings(), "batch_size": settings["batch_size"], "prefix_cache": settings["prefix_cache"],
                      "computed_evaluations": shared.evaluations},
        "greedy_paths_identical": runs["greedy_latency"].result.path == runs["greedy_mes"].result.path,
        "largest": largest,
        "smallest": smallest,
        "references": references,
        "strategies": {
            name: {"final": finals[name], "evaluations": run.evaluations, "computed": run.computed,
                   "wall_seconds": round(run.seconds, 1), "cpu_seconds": round(run.cpu_seconds, 1),
                   "cpu_seconds_per_computed_evaluation": round(run.cpu_seconds / max(run.computed, 1), 4),
                   **run.extra,
                   "evaluated": {"columns": columns, "rows": [[row[c] for c in columns] for row in run.rows]}}
            for name, run in runs.items()
        },
        "files": ["results.json", "evaluations.csv", "results.md", "latency_accuracy.png", "mes_accuracy.png"],
    }
    write_text_atomic(out / "results.json", json_text(report))
    sys.stdout.write(table_md)
    log(f"done in {total / 60:.1f} min; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
