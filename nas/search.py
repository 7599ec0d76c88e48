"""`python -m nas.search`: find an architecture under a latency (and size) budget.

    python -m nas.search --target-latency 1.5ms --device iphone12 [--space S] [--objective mes|latency]
        [--max-params 6M] [--supernet CKPT --data SPEC [--recalibrate N] [--eval-batches N]]
        [--evaluator supernet|proxy] [--strategy greedy|random|evolution --budget N [--state FILE]]
        [--start ARCH.yaml] [--seed N] [--out FILE.yaml] [--trace FILE.jsonl] [--front FILE.yaml]
        [--lut FILE]

YAML (with a provenance `meta` block) to `--out` or stdout; exit 2 on bad input, 3 when the
target cannot be met (naming the smallest reachable latency). The output is a pure function of
the inputs (no wall-clock date in `meta`), so the same inputs and seed give byte-identical YAML.

The evaluator is the trained supernet's accuracy when `--supernet` is given, otherwise the
SynFlow proxy (`nas.synflow`) on a supernet initialised from `--seed`; `--evaluator proxy` with
`--supernet` computes the proxy on the trained weights instead.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from search_spaces import Architecture, ArchitectureError, count_macs, count_params, get_space, list_spaces
from search_spaces.command_line import (
    EXIT_OK,
    EXIT_UNREACHABLE,
    ArgumentParser,
    UsageError,
    non_negative_int,
    positive_int,
    run_command,
)
from search_spaces.files import write_text_atomic

import nas
from nas.evaluators import SupernetEvaluator
from nas.greedy import SearchResult, Step, Unreachable, greedy_search
from nas.objectives import OBJECTIVES, get_objective
from nas.verify import measuring_device, verify_search

PROG = "python -m nas.search"
LATENCY_FORMS = "accepted forms: 1.5ms, 1500us, 0.0015s"
SIZE_FORMS = "accepted forms: 6M, 6000000"
STRATEGY_NAMES = ("greedy", "random", "evolution")
EVALUATOR_NAMES = ("supernet", "proxy")
FRONT_SCHEMA = "latnas/front@1"
DEFAULT_BUDGET = 200
_LATENCY = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|us|s)\s*$")
_SCALE = {"ms": 1.0, "us": 1e-3, "s": 1e3}
#: options whose value may start with "-" (a negative latency must reach our parser, not argparse)
_VALUE_OPTIONS = ("--target-latency", "--max-params")


def parse_latency(text: str) -> float:
    """'1.5ms' / '1500us' / '0.0015s' -> milliseconds; anything else raises UsageError."""
    match = _LATENCY.match(text or "")
    if not match:
        raise UsageError(f"--target-latency: bad latency {text!r}; {LATENCY_FORMS}")
    value = float(match.group(1)) * _SCALE[match.group(2)]
    if not value > 0:
        raise UsageError(f"--target-latency: bad latency {text!r}: must be positive; {LATENCY_FORMS}")
    return value


def parse_size(text: str) -> int:
    """'6M' / '6000000' (also '500k') -> a parameter count; anything else raises UsageError."""
    match = re.match(r"^\s*([0-9]*\.?[0-9]+)\s*([MmKk]?)\s*$", text or "")
    if not match:
        raise UsageError(f"--max-params: bad size {text!r}; {SIZE_FORMS}")
    value = float(match.group(1)) * {"": 1, "k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6}[match.group(2)]
    if not value >= 1:
        raise UsageError(f"--max-params: bad size {text!r}: must be positive; {SIZE_FORMS}")
    return int(round(value))


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Latency-aware architecture search (greedy slimming, random, evolution).")
    parser.add_argument("--target-latency", required=True, help=f"latency budget ({LATENCY_FORMS})")
    parser.add_argument("--device", help="a device with a latency table (e.g. iphone12)")
    parser.add_argument("--lut", help="a latency table file instead of the device's default")
    parser.add_argument("--space", default="efficientformer_v2", help="search space (default efficientformer_v2)")
    parser.add_argument("--objective", default="mes", help="mes (default) or latency")
    parser.add_argument("--max-params", help=f"size budget ({SIZE_FORMS})")
    parser.add_argument("--strategy", default="greedy", help="greedy (default), random or evolution")
    parser.add_argument("--budget", type=positive_int, help=f"evaluations for random/evolution (default {DEFAULT_BUDGET})")
    parser.add_argument("--state", help="random/evolution: resumable state file (continued when it exists)")
    parser.add_argument("--start", help="greedy: start from this architecture YAML instead of the largest")
    parser.add_argument("--supernet", help="trained supernet checkpoint (accuracy evaluator)")
    parser.add_argument("--data", help="held-out data spec for --supernet (e.g. digits)")
    parser.add_argument("--evaluator", help="supernet (default with --supernet) or proxy (default without)")
    parser.add_argument("--recalibrate", type=non_negative_int, default=0,
                        help="re-estimate BN statistics on N training batches before each supernet evaluation")
    parser.add_argument("--eval-batches", type=positive_int, help="supernet evaluator: at most N validation batches")
    parser.add_argument("--seed", type=int, default=0, help="seed of the proxy's weights and the random strategies")
    parser.add_argument("--out", help="output YAML (default stdout)")
    parser.add_argument("--trace", help="write every step as JSON lines")
    parser.add_argument("--front", help="write the latency/score front (every architecture on the path) as YAML")
    parser.add_argument("--verify", action="store_true",
                        help="measure the found network end to end on the (measured) device; if it misses the target by "
                             "more than the table's error, correct the table with the measurement and search again")
    parser.add_argument("--verify-rounds", type=positive_int, default=3, help="--verify: at most N searches (default 3)")
    return parser


def attach_dash_values(argv: Sequence[str]) -> list[str]:
    """`--target-latency -1ms` -> `--target-latency=-1ms`, so our parser (not argparse) judges it."""
    result, index = [], 0
    while index < len(argv):
        item = argv[index]
        if item in _VALUE_OPTIONS and index + 1 < len(argv) and argv[index + 1].startswith("-") \
                and not argv[index + 1].startswith("--"):
            result.append(f"{item}={argv[index + 1]}")
            index += 2
        else:
            result.append(item)
            index += 1
    return result


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _table(args, space):
    from lut import get_device, load_table

    try:
        if args.lut:
            if not Path(args.lut).is_file():
                raise UsageError(f"--lut: no such table file: {args.lut}")
            return load_table(args.lut), Path(args.lut).name
        if not args.device:
            raise UsageError("give --device or --lut")
        device = get_device(args.device)
        return device.default_table(space), device.table_name(space)
    except UsageError:
        raise
    except Exception as error:  # unknown device, missing/corrupt table
        raise UsageError(_first_line(error)) from None


def _start(args, space) -> Architecture | None:
    if not args.start:
        return None
    if args.strategy != "greedy":
        raise UsageError("--start applies to --strategy greedy only")
    if not Path(args.start).is_file():
        raise UsageError(f"--start: no such file: {args.start}")
    try:
        arch = Architecture.from_yaml(Path(args.start))
        if arch.space != space.name:
            raise UsageError(f"--start: {args.start} is an architecture of {arch.space!r}, not {space.name!r}")
        return space.validate(arch)
    except ArchitectureError as error:
        raise UsageError(f"--start: {args.start}: {_first_line(error)}") from None


def _evaluator(args, space):
    name = args.evaluator or ("supernet" if args.supernet else "proxy")
    if name not in EVALUATOR_NAMES:
        raise UsageError(f"--evaluator: unknown evaluator {name!r}; choose from {', '.join(EVALUATOR_NAMES)}")
    if name == "supernet" and not args.supernet:
        raise UsageError("--evaluator supernet needs --supernet CKPT and --data SPEC")
    if args.supernet and name == "supernet" and not args.data:
        raise UsageError("--supernet needs --data SPEC (the held-out images it is evaluated on)")
    if (args.recalibrate or args.eval_batches) and name != "supernet":
        raise UsageError("--recalibrate and --eval-batches apply to the supernet evaluator only")
    from nas.synflow import SynFlowEvaluator

    if not args.supernet:
        return SynFlowEvaluator.from_space(space, seed=args.seed)
    net = _load_supernet(args.supernet, space)
    if name == "proxy":
        return SynFlowEvaluator.from_supernet(net, source=f"supernet {Path(args.supernet).name}")
    from torch.utils.data import DataLoader

    from supernet.data import load_data

    try:
        data = load_data(args.data, net.resolution, seed=args.seed)
    except Exception as error:
        raise UsageError(f"--data: bad data {args.data!r}: {_first_line(error)}") from None
    calibration = DataLoader(data.train, batch_size=64, shuffle=False) if args.recalibrate else None
    return SupernetEvaluator(net, DataLoader(data.val, batch_size=256, shuffle=False), args.eval_batches,
                             args.recalibrate, calibration)


def _load_supernet(path: str, space):
    from supernet import Supernet

    if not Path(path).is_file():
        raise UsageError(f"--supernet: no such file: {path}")
    try:
        return Supernet.load(path, space=space.name)
    except Exception as error:
        raise UsageError(f"--supernet: cannot use {path}: {_first_line(error)}") from None


def _strict_json(value: Any) -> Any:
    """JSON has no infinity: a step that gains nothing has ratio null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def step_record(step: Step) -> dict[str, Any]:
    return {key: _strict_json(value) for key, value in step.to_dict().items()}


def pareto_front(result: SearchResult) -> list[tuple[Step, Architecture]]:
    """The points of a result worth keeping: the greedy path as it is (each step is cheaper than
    the last); for sampling strategies, the evaluated architectures no other one beats on both
    latency and score, fastest first."""
    points = list(zip(result.steps, result.path, strict=True))
    if getattr(result, "strategy", "greedy") == "greedy":
        return points
    points.sort(key=lambda point: (point[0].latency, -point[0].score))
    front, best = [], -math.inf
    for step, arch in points:
        if step.score > best:
            front.append((step, arch))
            best = step.score
    return front


def front_document(result: SearchResult, provenance: dict[str, Any]) -> str:
    points = [
        {"latency_ms": round(step.latency, 6), "params": step.params, "mes": round(step.mes, 4),
         "score": round(step.score, 6), "action": step.action, "architecture": arch.to_dict()}
        for step, arch in pareto_front(result)
    ]
    return yaml.safe_dump({"schema": FRONT_SCHEMA, **provenance, "points": points}, sort_keys=False)


def _run_strategy(args, space, table, evaluator, objective, target, max_params, start, on_step) -> SearchResult:
    if args.strategy == "greedy":
        if args.budget or args.state:
            raise UsageError("--budget and --state apply to --strategy random|evolution")
        return greedy_search(space, table, evaluator, objective, target, max_params, start=start, on_step=on_step)
    from nas.strategies import STRATEGIES

    try:
        return STRATEGIES[args.strategy](space, table, evaluator, objective, target, max_params,
                                         budget=args.budget or DEFAULT_BUDGET, seed=args.seed, on_step=on_step,
                                         state_path=args.state, progress=sys.stderr.isatty())
    except ValueError as error:  # a state file of another search
        raise UsageError(f"--state: {_first_line(error)}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(attach_dash_values(sys.argv[1:] if argv is None else list(argv)))
    target = parse_latency(args.target_latency)
    if args.space not in list_spaces():
        raise UsageError(f"--space: unknown space {args.space!r}; choose from {', '.join(list_spaces())}")
    if args.objective not in OBJECTIVES:
        raise UsageError(f"--objective: unknown objective {args.objective!r}; choose from {', '.join(sorted(OBJECTIVES))}")
    if args.strategy not in STRATEGY_NAMES:
        raise UsageError(f"--strategy: unknown strategy {args.strategy!r}; choose from {', '.join(STRATEGY_NAMES)}")
    space = get_space(args.space)
    max_params = parse_size(args.max_params) if args.max_params else None
    smallest_params = count_params(space.smallest())
    if max_params is not None and max_params < smallest_params:
        raise UsageError(f"--max-params: {max_params} is below the smallest network of {args.space} ({smallest_params} params)")
    table, table_name = _table(args, space)
    if table.metadata.space != space.name:
        raise UsageError(f"--lut: table {table_name} is for space {table.metadata.space!r}, not {space.name!r}")
    start = _start(args, space)
    objective = get_objective(args.objective)
    smallest_latency = table.predict(space.smallest())
    if target < smallest_latency:
        print(f"{PROG}: target {target:g} ms cannot be met on {table.metadata.device}; the smallest latency "
              f"{space.name} reaches is {smallest_latency:.4f} ms", file=sys.stderr)
        return EXIT_UNREACHABLE
    device = measuring_device(table) if args.verify else None
    table_record = {"name": table_name, "sha256": table.sha256}  # the file's, before any --verify correction
    evaluator = _evaluator(args, space)
    trace_mode = "a" if args.state and Path(args.state).exists() else "w"
    trace = open(args.trace, trace_mode, encoding="utf-8", buffering=1) if args.trace else None  # line by line: tail -f works
    try:
        on_step = (lambda step: trace.write(json.dumps(step_record(step), sort_keys=True) + "\n")) if trace else None
        if device is None:
            result = _run_strategy(args, space, table, evaluator, objective, target, max_params, start, on_step)
            verification = None
        else:
            results: list[SearchResult] = []

            def search(current_table) -> tuple[Architecture, float]:
                results.append(_run_strategy(args, space, current_table, evaluator, objective, target, max_params,
                                             start, on_step))
                return results[-1].arch, results[-1].latency

            def measure(found: Architecture) -> float:
                milliseconds = device.profile_network(found).p50_ms
                print(f"{PROG}: --verify: predicted {results[-1].latency:.4f} ms, measured {milliseconds:.4f} ms",
                      file=sys.stderr)
                return milliseconds

            _, table, verification = verify_search(search, table, target, measure, args.verify_rounds)
            result = results[-1]
    except Unreachable as error:
        print(f"{PROG}: target cannot be met; the smallest latency {space.name} reaches is "
              f"{error.smallest_latency:.4f} ms", file=sys.stderr)
        return EXIT_UNREACHABLE
    finally:
        if trace:
            trace.close()
    provenance = {
        "device": table.metadata.device,
        "table": table_record,
        "objective": objective.settings(),
        "target_latency_ms": target,
        "max_params": max_params,
        "evaluator": evaluator.name,
        "evaluator_settings": evaluator.settings(),
        "strategy": args.strategy,
        "seed": args.seed,
        "version": nas.__version__,
    }
    search_counts = ({"steps": len(result.steps) - 1} if args.strategy == "greedy"
                     else {"budget": args.budget or DEFAULT_BUDGET, "stats": result.stats.to_dict()})
    arch = result.arch.with_meta(
        predicted_latency_ms=round(result.latency, 6),
        params=result.params,
        macs=count_macs(result.arch),
        mes=round(result.mes, 4),
        score=round(result.score, 6),
        evaluations=result.evaluations,
        **search_counts,
        **provenance,
        **({"start": Path(args.start).name} if start is not None else {}),
        **({"verify": verification.to_meta()} if verification is not None else {}),
    )
    if args.front:
        write_text_atomic(Path(args.front), front_document(result, provenance))
    text = arch.to_yaml()
    if args.out:
        write_text_atomic(Path(args.out), text)
    else:
        sys.stdout.write(text)
    if verification is not None and not verification.met:
        print(f"{PROG}: --verify: measured {verification.rounds[-1].measured_ms:.4f} ms still misses {target:g} ms "
              f"(+{verification.tolerance:.0%}) after {len(verification.rounds)} searches", file=sys.stderr)
    print(f"{PROG}: {result.latency:.4f} ms, {result.params} params, MES {result.mes:.2f}, score "
          f"{result.score:.3f} ({evaluator.name}), {result.evaluations} evaluations", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_command(main, prog=PROG))
