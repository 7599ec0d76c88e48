"""`python -m nas.sweep`: many searches (targets × devices × objectives × strategies) as Ray Tune trials.

    python -m nas.sweep --targets 1.0ms,1.5ms,2.0ms --devices iphone12,ort-cpu [--objectives mes,latency]
        [--strategies greedy] [--space efficientformer_v2] [--max-params 6M] [--budget N] [--seed N]
        [--supernet CKPT --data SPEC] [--ray-address ADDR] [--cpus-per-trial 1] --out DIR

Every combination is one trial that runs a search through `nas.api.run_search` and writes, atomically,

    DIR/trials/<name>.yaml          the found architecture (status found)
    DIR/trials/<name>.jsonl         the search trace
    DIR/trials/<name>.status.json   found | unreachable | error, with latency, params, MES, score, ...

where <name> is `<space>-<device>-<target>-<objective>-<strategy>` (e.g.
`efficientformer_v2-iphone12-1.5ms-mes-greedy`). At the end `DIR/summary.csv` and `DIR/summary.md`
are regenerated from the status files, one row per combination. `DIR/sweep.json` records the
sweep's settings and a log of its runs: re-running the same command skips every combination whose
status is found or unreachable (not even submitted to Tune) and runs the rest; a re-run with other
settings into the same DIR is refused (exit 2, naming the field). Trials write their files
themselves, so DIR must be on a filesystem that the Ray workers share with the driver (always true
for a local Ray).

Exit 0 when every trial finished (found or unreachable), 1 when one errored (the summary says
which), 2 on bad input (validated before Ray starts; nothing in DIR is touched).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from nas.objectives import OBJECTIVES
from nas.search import LATENCY_FORMS, SIZE_FORMS, parse_latency, parse_size
from search_spaces import count_params, get_space, list_spaces
from search_spaces.command_line import (
    EXIT_OK,
    ArgumentParser,
    UsageError,
    integer_in,
    number_in,
    run_command,
)
from search_spaces.cluster import check_ray_address, ray_session
from search_spaces.files import check_input_file, check_outputs, write_text_atomic
from search_spaces.limits import EVALUATION_BUDGET, MAX_CHECKPOINT_BYTES, SEED, FloatRange

PROG = "python -m nas.sweep"
STRATEGIES = ("greedy", "random", "evolution")
CPUS_PER_TRIAL = FloatRange(0.0, 1024.0, low_open=True)
FOUND, UNREACHABLE, ERROR = "found", "unreachable", "error"
FINISHED = (FOUND, UNREACHABLE)
EXIT_TRIAL_ERROR = 1
SWEEP_SCHEMA = "latnas/sweep@1"
TRIAL_SCHEMA = "latnas/sweep-trial@1"
TRIALS_DIR = "trials"
RAY_RESULTS_DIR = "ray_results"
SWEEP_FILE = "sweep.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
SUMMARY_COLUMNS = ("space", "device", "target_ms", "objective", "strategy", "status", "latency_ms", "params_M",
                   "MES", "score", "evaluator", "evaluations", "wall_s", "file", "message")
# The settings that decide a sweep's results, in the order a mismatch is reported, with their flags.
# `--ray-address` and `--cpus-per-trial` only decide where and how fast trials run, so they may change.
RECORDED_FIELDS = {
    "space": "--space",
    "targets_ms": "--targets",
    "devices": "--devices",
    "objectives": "--objectives",
    "strategies": "--strategies",
    "max_params": "--max-params",
    "budget": "--budget",
    "seed": "--seed",
    "supernet": "--supernet",
    "data": "--data",
}
# Data specs whose argument is a path (supernet.data): made absolute, because trials run elsewhere.
_PATH_DATA_KINDS = ("imagefolder", "cifar10")
# options whose value may start with "-" ("-1ms"): argparse would take it for an option
_DASH_VALUE_OPTIONS = ("--targets", "--max-params")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


# -- settings and combinations -------------------------------------------------------------------
@dataclass(frozen=True)
class SweepConfig:
    """One sweep: the cross product of targets, devices, objectives and strategies over one space.

    `targets_ms` are milliseconds. `budget` is passed to non-greedy strategies only; `supernet` and
    `data` go together (the supernet evaluator, else the training-free proxy). `ray_address` and
    `cpus_per_trial` say where and how trials run and are not part of the recorded settings.
    """

    out: Path
    targets_ms: tuple[float, ...]
    devices: tuple[str, ...]
    objectives: tuple[str, ...] = ("mes",)
    strategies: tuple[str, ...] = ("greedy",)
    space: str = "efficientformer_v2"
    max_params: int | None = None
    budget: int | None = None
    seed: int = 0
    supernet: str | None = None
    data: str | None = None
    ray_address: str | None = None
    cpus_per_trial: float = 1.0

    def recorded(self) -> dict[str, Any]:
        """The settings that decide the results (what `sweep.json` records and a re-run must match)."""
        return {name: _plain(getattr(self, name)) for name in RECORDED_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON types (paths as strings, tuples as lists)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepConfig:
        """The inverse of `to_dict`."""
        values = dict(data)
        values["out"] = Path(values["out"])
        for name in ("targets_ms", "devices", "objectives", "strategies"):
            values[name] = tuple(values[name])
        return cls(**values)

    def combinations(self) -> list[Combination]:
        """Every (target, device, objective, strategy), in that nesting order."""
        return [Combination(self.space, device, target, objective, strategy)
                for target in self.targets_ms for device in self.devices
                for objective in self.objectives for strategy in self.strategies]


@dataclass(frozen=True)
class Combination:
    """One point of a sweep: one search, one Tune trial, one row of the summary."""

    space: str
    device: str
    target_ms: float
    objective: str
    strategy: str

    @property
    def name(self) -> str:
        """Filesystem-safe trial name, e.g. `efficientformer_v2-iphone12-1.5ms-mes-greedy`."""
        parts = (self.space, self.device, format_ms(self.target_ms), self.objective, self.strategy)
        return "-".join(_SAFE_NAME.sub("_", part) for part in parts)

    def request(self, config: SweepConfig):
        """The `nas.api.SearchRequest` of this combination (the device's default table)."""
        from lut import get_device

        from nas.api import SearchRequest
        from nas.evaluators import ProxyEvaluation, SupernetEvaluation

        device = get_device(self.device)
        evaluator = (SupernetEvaluation(Path(config.supernet), config.data or "") if config.supernet is not None
                     else ProxyEvaluation())
        return SearchRequest(
            space=self.space, predictor=device.default_table(self.space), target_latency=self.target_ms,
            evaluator=evaluator, objective=self.objective, max_params=config.max_params, strategy=self.strategy,
            budget=config.budget if self.strategy != "greedy" else None,  # greedy needs no budget
            seed=config.seed, table_name=device.table_name(self.space),
        )


def format_ms(milliseconds: float) -> str:
    """A target as written in trial names and tables: 1.5 -> '1.5ms', 1.0 -> '1ms'."""
    short = f"{milliseconds:g}"
    return f"{short if float(short) == milliseconds else repr(milliseconds)}ms"


# -- per-trial result ----------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialStatus:
    """What one trial ended with; stored as `trials/<name>.status.json` and reported to Tune.

    `status` is found (then latency .. evaluations describe the architecture in `yaml`),
    unreachable (`smallest_latency_ms` is the lowest latency the space reaches on the device) or
    error (`message` says why). `wall_s` is the search's own time, None when it never ran. `yaml`
    and `trace` are paths relative to the sweep folder, None when not written.
    """

    name: str
    space: str
    device: str
    target_ms: float
    objective: str
    strategy: str
    status: str
    message: str
    wall_s: float | None = None
    latency_ms: float | None = None
    params: int | None = None
    mes: float | None = None
    score: float | None = None
    evaluator: str | None = None
    steps: int | None = None
    evaluations: int | None = None
    smallest_latency_ms: float | None = None
    yaml: str | None = None
    trace: str | None = None

    @property
    def finished(self) -> bool:
        """Found or unreachable: a re-run of the sweep keeps it."""
        return self.status in FINISHED

    def to_dict(self) -> dict[str, Any]:
        """The status file's content (with its schema tag)."""
        return {"schema": TRIAL_SCHEMA, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialStatus:
        """The inverse of `to_dict`; ValueError when `data` is not a trial status."""
        if not isinstance(data, Mapping) or data.get("schema") != TRIAL_SCHEMA:
            raise ValueError(f"not a {TRIAL_SCHEMA} record")
        names = {f.name for f in fields(cls)}
        status = cls(**{key: value for key, value in data.items() if key in names})
        if status.status not in (FOUND, UNREACHABLE, ERROR):
            raise ValueError(f"unknown status {status.status!r}")
        return status

    @classmethod
    def of(cls, combination: Combination, status: str, message: str, **values: Any) -> TrialStatus:
        """A status for `combination`."""
        return cls(combination.name, combination.space, combination.device, combination.target_ms,
                   combination.objective, combination.strategy, status, message, **values)


# -- validation ----------------------------------------------------------------------------------
def parse_list(text: str, flag: str, what: str = "value") -> tuple[str, ...]:
    """'a,b, c' -> ('a', 'b', 'c'); UsageError naming `flag` for an empty list or an empty entry ('1ms,,2ms')."""
    parts = [item.strip() for item in (text or "").split(",")]
    if not any(parts):
        raise UsageError(f"{flag}: give at least one {what} (a comma-separated list)")
    if not all(parts):
        raise UsageError(f"{flag}: entry {parts.index('') + 1} of {text!r} is empty; give a comma-separated list of "
                         f"{what.split(';')[0]} values")
    return tuple(parts)


def parse_targets(text: str) -> tuple[float, ...]:
    """'1.0ms,1500us' -> (1.0, 1.5); UsageError naming --targets and the accepted forms."""
    targets = []
    for item in parse_list(text, "--targets", f"latency; {LATENCY_FORMS}"):
        try:
            targets.append(parse_latency(item))
        except UsageError:  # its message names nas.search's own option
            raise UsageError(f"--targets: bad latency {item!r}; a positive latency, {LATENCY_FORMS}") from None
    return tuple(targets)


def validate_config(config: SweepConfig) -> SweepConfig:
    """`config` checked and normalised (absolute paths, duplicates dropped); UsageError naming the field.

    Touches neither Ray nor the output folder (a `ray_address` is only probed for an answer).
    """
    if config.space not in list_spaces():
        raise UsageError(f"--space: unknown space {config.space!r}; choose from {', '.join(list_spaces())}")
    space = get_space(config.space)
    targets = _unique(round(float(t), 9) for t in config.targets_ms)
    if not targets:
        raise UsageError(f"--targets: give at least one latency ({LATENCY_FORMS})")
    for target in targets:
        if not (math.isfinite(target) and target > 0):
            raise UsageError(f"--targets: {target!r} ms is not a positive latency ({LATENCY_FORMS})")
    devices = _unique(config.devices)
    if not devices:
        raise UsageError("--devices: give at least one device")
    for device in devices:
        _check_device(device, space)
    objectives = _checked_choices(config.objectives, sorted(OBJECTIVES), "--objectives", "objective")
    strategies = _checked_choices(config.strategies, STRATEGIES, "--strategies", "strategy")
    if config.max_params is not None:
        smallest = count_params(space.smallest())
        if config.max_params < smallest:
            raise UsageError(f"--max-params: {config.max_params} is below the smallest network of {space.name} "
                             f"({smallest} params)")
    if config.budget is not None and config.budget not in EVALUATION_BUDGET:
        raise UsageError(f"--budget: {config.budget!r} is not {EVALUATION_BUDGET.describe()}")
    if config.seed not in SEED:
        raise UsageError(f"--seed: {config.seed!r} is not {SEED.describe()}")
    if config.cpus_per_trial not in CPUS_PER_TRIAL:
        raise UsageError(f"--cpus-per-trial: {config.cpus_per_trial!r} is not {CPUS_PER_TRIAL.describe()}")
    if config.ray_address:  # a bounded TCP probe: a dead address is one line now, not a hang in ray.init
        check_ray_address(config.ray_address, "--ray-address")
    if (config.supernet is None) != (config.data is None):
        raise UsageError("--supernet and --data go together")
    supernet, data = config.supernet, config.data
    if supernet is not None:
        supernet_path = Path(supernet).expanduser()
        _check_supernet(supernet_path, space.name)
        supernet, data = str(supernet_path.resolve()), _absolute_data_spec(data or "")
    out = check_outputs({}, {"--out": Path(config.out).expanduser()})["--out"]
    config = replace(config, out=out, targets_ms=targets, devices=devices, objectives=objectives,
                     strategies=strategies, supernet=supernet, data=data)
    names = [combination.name for combination in config.combinations()]
    if len(set(names)) != len(names):
        raise UsageError("--targets/--devices: two combinations get the same trial name; give distinct values")
    return config


def _check_supernet(path: Path, space: str) -> None:
    """The checkpoint loads (digest, finite weights) and is of `space`: refused here, not in a trial."""
    from supernet import CheckpointError, read_checkpoint

    check_input_file(path, "--supernet", MAX_CHECKPOINT_BYTES)
    try:
        payload = read_checkpoint(path)
    except CheckpointError as error:
        raise UsageError(f"--supernet: {str(error).strip().splitlines()[0]}") from None
    if payload["space"] != space:
        raise UsageError(f"--supernet: {path} is a supernet of {payload['space']!r}, not of --space {space!r}")


def _unique(values) -> tuple:
    return tuple(dict.fromkeys(values))


def _checked_choices(values: Sequence[str], allowed: Sequence[str], flag: str, what: str) -> tuple[str, ...]:
    chosen = _unique(values)
    if not chosen:
        raise UsageError(f"{flag}: give at least one {what}; choose from {', '.join(allowed)}")
    for value in chosen:
        if value not in allowed:
            raise UsageError(f"{flag}: unknown {what} {value!r}; choose from {', '.join(allowed)}")
    return chosen


def _check_device(name: str, space) -> None:
    """The device exists and has a latency table for the space (else every trial would fail)."""
    from lut import DeviceError, TableError, get_device

    try:
        get_device(name).default_table(space)
    except (DeviceError, TableError, OSError, ValueError) as error:  # unknown device, missing or corrupt table
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"--devices: {first_line}") from None


def _absolute_data_spec(spec: str) -> str:
    kind, separator, argument = spec.partition(":")
    if kind in _PATH_DATA_KINDS and separator and argument.strip():
        return f"{kind}:{Path(argument.strip()).expanduser().resolve()}"
    return spec


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


# -- one trial -----------------------------------------------------------------------------------
def trial_paths(out: Path, name: str) -> tuple[Path, Path, Path]:
    """(architecture YAML, trace, status file) of trial `name` in sweep folder `out`."""
    folder = Path(out) / TRIALS_DIR
    return folder / f"{name}.yaml", folder / f"{name}.jsonl", folder / f"{name}.status.json"


def run_trial(config: SweepConfig, combination: Combination) -> TrialStatus:
    """Run one search (`nas.api.run_search`) and write its YAML, trace and status file.

    `config.out` must be absolute (`validate_config` makes it so). A refused request and any other
    failure become an error status; the sweep goes on. The YAML and trace are written under
    temporary names and renamed when the search ends, and the status file is written last, so a
    status file always describes complete files beside it.
    """
    from nas.api import RequestError, run_search
    from nas.search import OPTION_OF_FIELD, step_record

    yaml_path, trace_path, _ = trial_paths(config.out, combination.name)
    yaml_path.parent.mkdir(parents=True, exist_ok=True)
    partial_yaml = yaml_path.with_name(f".{yaml_path.name}.partial")
    partial_trace = trace_path.with_name(f".{trace_path.name}.partial")
    for partial in (partial_yaml, partial_trace):
        partial.unlink(missing_ok=True)
    outcome, message = None, ""
    start = time.perf_counter()
    try:
        with open(partial_trace, "w", encoding="utf-8") as trace:
            def on_step(step) -> None:
                trace.write(json.dumps(step_record(step), sort_keys=True) + "\n")

            outcome = run_search(combination.request(config), on_step=on_step)
    except RequestError as error:
        message = f"bad input to the search: {OPTION_OF_FIELD.get(error.field, error.field)}: {error}"
    except Exception as error:  # noqa: BLE001  (any failure of one search is that trial's error; the sweep goes on)
        message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": ")
    wall = round(time.perf_counter() - start, 3)
    if outcome is not None and outcome.reachable:
        write_text_atomic(partial_yaml, outcome.arch.to_yaml())
        result, meta = outcome.result, outcome.arch.meta
        status = TrialStatus.of(
            combination, FOUND, f"{result.latency:.4f} ms, {result.params} params, MES {result.mes:.2f}, score "
                                f"{result.score:.3f} ({outcome.evaluator_name}), {result.evaluations} evaluations",
            wall_s=wall, latency_ms=meta["predicted_latency_ms"], params=meta["params"], mes=meta["mes"],
            score=meta["score"], evaluator=meta["evaluator"], steps=meta.get("steps"), evaluations=result.evaluations,
        )
    elif outcome is not None:
        status = TrialStatus.of(combination, UNREACHABLE,
                                f"target cannot be met; the smallest latency {combination.space} reaches is "
                                f"{outcome.smallest_latency:.4f} ms", wall_s=wall,
                                smallest_latency_ms=outcome.smallest_latency)
    else:
        status = TrialStatus.of(combination, ERROR, message, wall_s=wall)
    keep = status.status != ERROR
    for partial, final, field in ((partial_yaml, yaml_path, "yaml"), (partial_trace, trace_path, "trace")):
        if keep and partial.is_file():
            os.replace(partial, final)  # atomic: a reader sees the old file or the whole new one
            status = replace(status, **{field: f"{TRIALS_DIR}/{final.name}"})
        else:  # nothing of this run to keep: no stale output of an earlier run may sit beside the status
            partial.unlink(missing_ok=True)
            final.unlink(missing_ok=True)
    write_status(config.out, status)
    return status


def write_status(out: Path, status: TrialStatus) -> None:
    """Write `trials/<name>.status.json` atomically."""
    write_text_atomic(trial_paths(out, status.name)[2], json.dumps(status.to_dict(), indent=2) + "\n")


def read_status(out: Path, combination: Combination) -> TrialStatus | None:
    """The stored status of `combination`, None when missing, unreadable or for another combination."""
    path = trial_paths(out, combination.name)[2]
    try:
        status = TrialStatus.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None
    if status.name != combination.name:
        return None
    if status.status == FOUND and not (status.yaml and (Path(out) / status.yaml).is_file()):
        return None  # a found status without its architecture is not finished
    return status


# -- the sweep record ----------------------------------------------------------------------------
def _load_record(out: Path, config: SweepConfig) -> dict[str, Any] | None:
    """The existing `sweep.json` of `out` (None when new); UsageError if its settings differ from `config`."""
    path = out / SWEEP_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("schema") != SWEEP_SCHEMA or not isinstance(record.get("config"), dict):
            raise ValueError(f"not a {SWEEP_SCHEMA} record")
    except (OSError, ValueError, AttributeError) as error:
        raise UsageError(f"--out: {path} cannot be read as a sweep record ({error}); use another --out") from None
    given = config.recorded()
    for name, flag in RECORDED_FIELDS.items():
        if record["config"].get(name) != given[name]:
            raise UsageError(
                f"{flag} differs from the sweep recorded in {path} (recorded {_show(name, record['config'].get(name))}, "
                f"given {_show(name, given[name])}); re-run with the recorded settings or use another --out")
    return record


def _show(name: str, value: Any) -> str:
    if value is None:
        return "none"
    if name == "targets_ms":
        return ",".join(format_ms(v) for v in value)
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _write_record(out: Path, config: SweepConfig, runs: list[dict[str, Any]]) -> None:
    record = {"schema": SWEEP_SCHEMA, "config": config.recorded(), "runs": runs}
    write_text_atomic(out / SWEEP_FILE, json.dumps(record, indent=2) + "\n")


# -- summary -------------------------------------------------------------------------------------
def summary_rows(statuses: Sequence[TrialStatus]) -> list[dict[str, str]]:
    """One row per status with `SUMMARY_COLUMNS` as text (empty where a value does not apply)."""
    def number(value: float | None, digits: int) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    rows = []
    for status in statuses:
        file = status.yaml if status.status == FOUND else f"{TRIALS_DIR}/{status.name}.status.json"
        rows.append({
            "space": status.space, "device": status.device, "target_ms": f"{status.target_ms:g}",
            "objective": status.objective, "strategy": status.strategy, "status": status.status,
            "latency_ms": number(status.latency_ms, 4),
            "params_M": number(None if status.params is None else status.params / 1e6, 3),
            "MES": number(status.mes, 2), "score": number(status.score, 6), "evaluator": status.evaluator or "",
            "evaluations": "" if status.evaluations is None else str(status.evaluations),
            "wall_s": number(status.wall_s, 1), "file": file or "", "message": status.message,
        })
    return rows


def write_summary(out: Path, statuses: Sequence[TrialStatus]) -> str:
    """Write `summary.csv` and `summary.md` atomically; returns the markdown."""
    rows = summary_rows(statuses)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / SUMMARY_CSV, table.getvalue())
    counts = {state: sum(s.status == state for s in statuses) for state in (FOUND, UNREACHABLE, ERROR)}
    lines = [
        "# Sweep summary", "",
        f"{len(statuses)} combinations: {counts[FOUND]} found, {counts[UNREACHABLE]} unreachable, {counts[ERROR]} error.",
        "",
        "| " + " | ".join(SUMMARY_COLUMNS) + " |",
        "|" + "|".join(" --- " for _ in SUMMARY_COLUMNS) + "|",
    ]
    for row in rows:
        cells = [(row[column] or "-").replace("|", "\\|") for column in SUMMARY_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    markdown = "\n".join(lines) + "\n"
    write_text_atomic(out / SUMMARY_MD, markdown)
    return markdown


# -- the sweep -----------------------------------------------------------------------------------
def run_sweep(config: SweepConfig) -> list[TrialStatus]:
    """Run every unfinished combination of `config` as a Ray Tune trial; statuses in combination order.

    Validates first (UsageError naming the field; nothing is written then). Reuses an initialised
    Ray, else connects to `config.ray_address` or starts a local one, and shuts down only what it
    started. Combinations already found or unreachable in `config.out` are kept as they are.
    Writes `sweep.json` (settings + run log) and the summary.
    """
    config = validate_config(config)
    record = _load_record(config.out, config)
    runs: list[dict[str, Any]] = list(record.get("runs", [])) if record else []
    combinations = config.combinations()
    stored = {c.name: read_status(config.out, c) for c in combinations}
    pending = [c for c in combinations if not (stored[c.name] and stored[c.name].finished)]
    run = {"run": len(runs) + 1, "ray_results": None, "executed": [c.name for c in pending],
           "reused": [c.name for c in combinations if c not in pending]}
    print(f"{PROG}: {len(combinations)} combinations, {len(combinations) - len(pending)} already finished, "
          f"running {len(pending)}", file=sys.stderr)
    if pending:
        # a local Ray gets every core; one started here is shut down on leaving, on SIGTERM, and by a
        # reaper process when this one is SIGKILLed
        with ray_session(config.ray_address, "--ray-address", num_cpus=os.cpu_count()):
            _check_cluster_cpus(config)
            config.out.mkdir(parents=True, exist_ok=True)
            _write_record(config.out, config, runs)  # claims DIR for these settings before any trial runs
            run_name = _fresh_run_name(config.out, run["run"])
            run["ray_results"] = f"{RAY_RESULTS_DIR}/{run_name}"
            failures = _run_trials(config, pending, run_name)
        for combination in pending:  # a trial that died before writing its status still gets a row
            if read_status(config.out, combination) is None:
                reason = failures.get(combination.name) or "the trial did not finish (interrupted?)"
                write_status(config.out, TrialStatus.of(combination, ERROR, reason))
    config.out.mkdir(parents=True, exist_ok=True)
    statuses = []
    for combination in combinations:
        status = read_status(config.out, combination)
        if status is None:  # unreadable after the run: say so rather than drop the row
            status = TrialStatus.of(combination, ERROR, "the status file cannot be read")
            write_status(config.out, status)
        statuses.append(status)
    _write_record(config.out, config, runs + [run])
    write_summary(config.out, statuses)
    return statuses


def _fresh_run_name(out: Path, index: int) -> str:
    while (out / RAY_RESULTS_DIR / f"run-{index}").exists():  # an earlier run that died before logging itself
        index += 1
    return f"run-{index}"


def _run_trials(config: SweepConfig, pending: Sequence[Combination], run_name: str) -> dict[str, str]:
    """Run `pending` as one Tune experiment on the connected Ray; {trial name: error} for trials Tune saw fail."""
    from ray import tune
    from tqdm import tqdm

    with tqdm(total=len(pending), desc="sweep", unit="trial", file=sys.stderr, dynamic_ncols=True) as bar:
        tuner = tune.Tuner(
            tune.with_resources(_tune_trial, {"cpu": config.cpus_per_trial}),
            param_space={"sweep": config.to_dict(), "combination": tune.grid_search([asdict(c) for c in pending])},
            tune_config=tune.TuneConfig(trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(storage_path=str(config.out / RAY_RESULTS_DIR), name=run_name, verbose=0,
                                      callbacks=[_progress_callback(bar)]),
        )
        with _quiet_tune():
            results = tuner.fit()
    failures = {}
    for result in results:
        if result.error is not None:
            name = Combination(**result.config["combination"]).name
            text = str(result.error).strip().splitlines()
            failures[name] = f"trial failed in Ray: {text[-1] if text else type(result.error).__name__}"
    return failures


def _check_cluster_cpus(config: SweepConfig) -> None:
    """The connected Ray cluster must be able to place one trial."""
    import ray

    available = ray.cluster_resources().get("CPU", 0)
    if available < config.cpus_per_trial:
        raise UsageError(f"--cpus-per-trial: {config.cpus_per_trial:g} is more than the {available:g} CPUs "
                         "of the Ray cluster")


@contextlib.contextmanager
def _quiet_tune() -> Iterator[None]:
    """Tune without its tables and INFO lines: the sweep prints its own line per trial."""
    previous_output = os.environ.get("RAY_AIR_NEW_OUTPUT")
    logger = logging.getLogger("ray.tune")
    previous_level = logger.level
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the new output engine prints its header even at verbose=0
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(previous_level)
        if previous_output is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = previous_output


def _trial_name(trial) -> str:
    return Combination(**trial.config["combination"]).name


def _progress_callback(bar):
    """A Tune callback that advances `bar` and prints one line per finished trial."""
    from ray import tune

    class Progress(tune.Callback):
        def __init__(self, bar) -> None:  # an argument, not a closure: the class is pickled with its code
            self.bar = bar

        def __getstate__(self) -> dict[str, Any]:
            return {"bar": None}  # Tune pickles its callbacks with the experiment; a terminal stream is not state

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._finished(trial, trial.last_result or {})

        def on_trial_error(self, iteration, trials, trial, **info):
            self._finished(trial, {"status": ERROR, "message": "the trial failed in Ray"})

        def _finished(self, trial, result: Mapping[str, Any]) -> None:
            if self.bar is not None:
                self.bar.update(1)
                self.bar.write(f"{_trial_name(trial)}: {result.get('status', ERROR)}: {result.get('message', '')}",
                               file=sys.stderr)

    return Progress(bar)


def _tune_trial(tune_config: dict[str, Any]) -> None:
    """Tune's trial function: one thread per CPU of the trial, `run_trial`, the status as final metrics."""
    from ray import tune

    config = SweepConfig.from_dict(tune_config["sweep"])
    threads = max(1, int(config.cpus_per_trial))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    status = run_trial(config, Combination(**tune_config["combination"]))
    tune.report(status.to_dict())


# -- command line --------------------------------------------------------------------------------
def build_parser() -> ArgumentParser:
    """The `python -m nas.sweep` options."""
    parser = ArgumentParser(prog=PROG, description="Run a grid of latency-aware searches as Ray Tune trials.")
    parser.add_argument("--targets", required=True, help=f"comma-separated latency budgets ({LATENCY_FORMS})")
    parser.add_argument("--devices", required=True, help="comma-separated devices with latency tables (e.g. iphone12)")
    parser.add_argument("--objectives", default="mes", help="comma-separated objectives: mes (default), latency")
    parser.add_argument("--strategies", default="greedy", help=f"comma-separated strategies: {', '.join(STRATEGIES)}")
    parser.add_argument("--space", default="efficientformer_v2", help="search space (default efficientformer_v2)")
    parser.add_argument("--max-params", help=f"size budget for every search ({SIZE_FORMS})")
    parser.add_argument("--budget", type=integer_in(EVALUATION_BUDGET), help="evaluations for the random and evolution strategies")
    parser.add_argument("--seed", type=integer_in(SEED), default=0, help="seed for every search (default 0)")
    parser.add_argument("--supernet", help="trained supernet checkpoint (accuracy evaluator)")
    parser.add_argument("--data", help="held-out data spec for --supernet")
    parser.add_argument("--ray-address", help="connect to this Ray cluster (default: a local Ray)")
    parser.add_argument("--cpus-per-trial", type=number_in(CPUS_PER_TRIAL), default=1.0, help="CPUs per trial (default 1)")
    parser.add_argument("--out", required=True, help="sweep folder (trials/, summary.csv, summary.md, sweep.json)")
    return parser


def config_from_args(argv: Sequence[str] | None = None) -> SweepConfig:
    """Parse the command line into a (not yet validated) `SweepConfig`; UsageError naming the field."""
    args = build_parser().parse_args(_attach_dash_values(sys.argv[1:] if argv is None else list(argv)))
    max_params = None
    if args.max_params is not None:
        try:
            max_params = parse_size(args.max_params)
        except UsageError:  # its message may name nas.search's option; this one is ours
            raise UsageError(f"--max-params: bad size {args.max_params!r}; a positive count, {SIZE_FORMS}") from None
    return SweepConfig(
        out=Path(args.out), targets_ms=parse_targets(args.targets), devices=parse_list(args.devices, "--devices", "device"),
        objectives=parse_list(args.objectives, "--objectives", "objective"),
        strategies=parse_list(args.strategies, "--strategies", "strategy"),
        space=args.space, max_params=max_params, budget=args.budget, seed=args.seed, supernet=args.supernet,
        data=args.data, ray_address=args.ray_address, cpus_per_trial=args.cpus_per_trial,
    )


def _attach_dash_values(argv: list[str]) -> list[str]:
    """`--targets -1ms` -> `--targets=-1ms`, so that our parser, not argparse, judges a negative value."""
    result: list[str] = []
    for item in argv:
        if result and result[-1] in _DASH_VALUE_OPTIONS and item.startswith("-") and not item.startswith("--"):
            result[-1] = f"{result[-1]}={item}"
        else:
            result.append(item)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """The command: exit 0 when every trial found or proved unreachable, 1 when one errored, 2 on bad input."""
    config = config_from_args(argv)
    statuses = run_sweep(config)
    out = Path(config.out).expanduser().resolve()
    sys.stdout.write((out / SUMMARY_MD).read_text(encoding="utf-8"))
    errors = [s.name for s in statuses if s.status == ERROR]
    found = sum(s.status == FOUND for s in statuses)
    print(f"{PROG}: {found} found, {len(statuses) - found - len(errors)} unreachable, {len(errors)} error"
          f"{' (' + ', '.join(errors) + ')' if errors else ''}; summary in {out / SUMMARY_MD}", file=sys.stderr)
    return EXIT_TRIAL_ERROR if errors else EXIT_OK


if __name__ == "__main__":
    sys.exit(run_command(main, prog=PROG))
