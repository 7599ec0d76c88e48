"""`python -m nas.search`: find an architecture under a latency (and size) budget.

    python -m nas.search --target-latency 1.5ms --device iphone12 [--space S] [--objective mes|latency]
        [--max-params 6M] [--supernet CKPT --data SPEC] [--seed N] [--out FILE.yaml] [--trace FILE.jsonl]
        [--lut FILE]

YAML (with a provenance `meta` block) to `--out` or stdout; exit 2 on bad input, 3 when the
target cannot be met (naming the smallest reachable latency). The output is a pure function of
the inputs (no wall-clock date in `meta`), so the same inputs and seed give byte-identical YAML.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Sequence

from search_spaces import count_macs, count_params, get_space, list_spaces
from search_spaces.command_line import EXIT_OK, EXIT_UNREACHABLE, ArgumentParser, UsageError, run_command

import nas
from nas.evaluators import ProxyEvaluator, SupernetEvaluator
from nas.greedy import Unreachable, greedy_search
from nas.objectives import OBJECTIVES, get_objective

PROG = "python -m nas.search"
LATENCY_FORMS = "accepted forms: 1.5ms, 1500us, 0.0015s"
SIZE_FORMS = "accepted forms: 6M, 6000000"
_LATENCY = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|us|s)\s*$")
_SCALE = {"ms": 1.0, "us": 1e-3, "s": 1e3}


def parse_latency(text: str) -> float:
    """'1.5ms' / '1500us' / '0.0015s' -> milliseconds; anything else raises UsageError."""
    match = _LATENCY.match(text or "")
    if not match:
        raise UsageError(f"bad latency {text!r}; {LATENCY_FORMS}")
    value = float(match.group(1)) * _SCALE[match.group(2)]
    if not value > 0:
        raise UsageError(f"bad latency {text!r}: must be positive; {LATENCY_FORMS}")
    return value


def parse_size(text: str) -> int:
    match = re.match(r"^\s*([0-9]*\.?[0-9]+)\s*([MmKk]?)\s*$", text or "")
    if not match:
        raise UsageError(f"bad size {text!r}; {SIZE_FORMS}")
    value = float(match.group(1)) * {"": 1, "k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6}[match.group(2)]
    if not value >= 1:
        raise UsageError(f"bad size {text!r}: must be positive; {SIZE_FORMS}")
    return int(round(value))


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Greedy latency-aware architecture search.")
    parser.add_argument("--target-latency", required=True, help=f"latency budget ({LATENCY_FORMS})")
    parser.add_argument("--device", help="a device with a latency table (e.g. iphone12)")
    parser.add_argument("--lut", help="a latency table file instead of the device's default")
    parser.add_argument("--space", default="efficientformer_v2", help="search space (default efficientformer_v2)")
    parser.add_argument("--objective", default="mes", help="mes (default) or latency")
    parser.add_argument("--max-params", help=f"size budget ({SIZE_FORMS})")
    parser.add_argument("--supernet", help="trained supernet checkpoint (accuracy evaluator)")
    parser.add_argument("--data", help="held-out data spec for --supernet")
    parser.add_argument("--seed", type=int, default=0, help="seed (recorded; the greedy search is deterministic)")
    parser.add_argument("--out", help="output YAML (default stdout)")
    parser.add_argument("--trace", help="write every step as JSON lines")
    return parser


def _table(args, space):
    from lut import get_device, load_table

    try:
        if args.lut:
            if not Path(args.lut).is_file():
                raise UsageError(f"no such table file: {args.lut}")
            return load_table(args.lut), Path(args.lut).name
        if not args.device:
            raise UsageError("give --device or --lut")
        device = get_device(args.device)
        return device.default_table(space), device.table_name(space)
    except UsageError:
        raise
    except Exception as error:  # unknown device, missing/corrupt table
        raise UsageError(str(error).splitlines()[0] if str(error) else type(error).__name__) from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    target = parse_latency(args.target_latency)
    if args.space not in list_spaces():
        raise UsageError(f"unknown space {args.space!r}; choose from {', '.join(list_spaces())}")
    if args.objective not in OBJECTIVES:
        raise UsageError(f"unknown objective {args.objective!r}; choose from {', '.join(sorted(OBJECTIVES))}")
    space = get_space(args.space)
    max_params = parse_size(args.max_params) if args.max_params else None
    smallest_params = count_params(space.smallest())
    if max_params is not None and max_params < smallest_params:
        raise UsageError(f"--max-params {max_params} is below the smallest network of {args.space} ({smallest_params} params)")
    table, table_name = _table(args, space)
    if table.metadata.space != space.name:
        raise UsageError(f"table {table_name} is for space {table.metadata.space!r}, not {space.name!r}")
    if bool(args.supernet) != bool(args.data):
        raise UsageError("--supernet and --data go together")
    if args.supernet:
        evaluator = _supernet_evaluator(args, space)
    else:
        evaluator = ProxyEvaluator(space)
    objective = get_objective(args.objective)
    smallest_latency = table.predict(space.smallest())
    if target < smallest_latency:
        print(f"{PROG}: target {target:g} ms cannot be met on {table.metadata.device}; the smallest latency "
              f"{space.name} reaches is {smallest_latency:.4f} ms", file=sys.stderr)
        return EXIT_UNREACHABLE
    trace = open(args.trace, "w", encoding="utf-8") if args.trace else None
    try:
        on_step = (lambda step: trace.write(json.dumps(step.to_dict(), sort_keys=True) + "\n")) if trace else None
        result = greedy_search(space, table, evaluator, objective, target, max_params, on_step=on_step)
    except Unreachable as error:
        print(f"{PROG}: target cannot be met; the smallest latency {space.name} reaches is "
              f"{error.smallest_latency:.4f} ms", file=sys.stderr)
        return EXIT_UNREACHABLE
    finally:
        if trace:
            trace.close()
    arch = result.arch.with_meta(
        device=table.metadata.device,
        table={"name": table_name, "sha256": table.sha256},
        predicted_latency_ms=round(result.latency, 6),
        params=result.params,
        macs=count_macs(result.arch),
        mes=round(result.mes, 4),
        objective=objective.settings(),
        target_latency_ms=target,
        max_params=max_params,
        evaluator=evaluator.name,
        score=round(result.score, 6),
        steps=len(result.steps) - 1,
        seed=args.seed,
        version=nas.__version__,
        strategy="greedy",
    )
    text = arch.to_yaml()
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    print(f"{PROG}: {result.latency:.4f} ms, {result.params} params, MES {result.mes:.2f}, "
          f"{len(result.steps) - 1} steps, {result.evaluations} evaluations", file=sys.stderr)
    return EXIT_OK


def _supernet_evaluator(args, space):
    from supernet import Supernet
    from supernet.data import load_data

    try:
        net = Supernet.load(args.supernet, space=space.name)
    except Exception as error:
        raise UsageError(f"cannot use supernet {args.supernet}: {str(error).splitlines()[0] if str(error) else error}") from None
    try:
        data = load_data(args.data, net.resolution, seed=args.seed)
    except Exception as error:
        raise UsageError(f"bad --data {args.data!r}: {error}") from None
    from torch.utils.data import DataLoader

    return SupernetEvaluator(net, DataLoader(data.val, batch_size=128, shuffle=False))


if __name__ == "__main__":
    sys.exit(run_command(main, prog=PROG))
