"""`python -m nas.search`: find an architecture under a latency (and size) budget.

    python -m nas.search --target-latency 1.5ms --device iphone12 [--space S] [--objective mes|latency]
        [--mes-params-unit 3M --mes-latency-unit 1ms --mes-alpha-params 0.5 --mes-alpha-latency 1.0]
        [--max-params 6M] [--supernet CKPT --data SPEC [--recalibrate N] [--eval-batches N]
        [--untrained-norms estimate|recalibrate] [--screen-batches N --shortlist K [--shortlist-extra N]]]
        [--drop-floor POINTS] [--min-step MS]
        [--evaluator supernet|proxy] [--strategy greedy|random|evolution] [--budget N] [--state FILE]
        [--actions v1|v2|v2-types] [--start ARCH.yaml] [--seed N] [--out FILE.yaml] [--trace FILE.jsonl]
        [--front FILE.yaml] [--lut FILE] [--verify [--verify-rounds N] [--verify-undershoot 5%]]

A thin adapter over `nas.api`: the options become a `SearchRequest`, `run_search` validates and
runs it, and the outcome is written. YAML (with a provenance `meta` block) to `--out` or stdout;
exit 2 on bad input (one line naming the option), 3 when the target cannot be met (naming the
smallest reachable latency). The output is a pure function of the inputs (no wall-clock date in
`meta`), so the same inputs and seed give byte-identical YAML.

The evaluator is the trained supernet's accuracy when `--supernet` is given, otherwise the
SynFlow proxy (`nas.synflow`) on a supernet initialised from `--seed`; `--evaluator proxy` with
`--supernet` computes the proxy on the trained weights instead. Greedy uses the V1 action set
(MetaPath importance) when the checkpoint's MetaPath logits were trained (`--mode gumbel`), else
V2's; `--actions` overrides (`v2-types`: V2's steps plus block-type swaps, for spaces whose slots
choose among block types).
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from search_spaces import Architecture, ArchitectureError
from search_spaces.command_line import (
    EXIT_OK,
    EXIT_UNREACHABLE,
    ArgumentParser,
    UsageError,
    integer_in,
    run_command,
)
from search_spaces.files import FileError, LineFile, check_input_file, check_outputs, write_text_atomic
from search_spaces.limits import (
    EVALUATION_BATCHES,
    EVALUATION_BUDGET,
    MAX_ARCHITECTURE_BYTES,
    MAX_TABLE_BYTES,
    RECALIBRATION_BATCHES,
    SEED,
    SHORTLIST,
    SHORTLIST_EXTRA,
    STEPS_PAST_TARGET,
    VERIFY_ROUNDS,
)

from nas.api import (
    RequestError,
    SearchOutcome,
    SearchRequest,
    VerifySettings,
    run_search,
    space_named,
    validate_request,
)
from nas.evaluators import UNTRAINED_NORMS, ProxyEvaluation, SupernetEvaluation
from nas.objectives import MobileEfficiencyScore
from nas.problem import Step
from nas.verify import DEFAULT_ROUNDS, DEFAULT_UNDERSHOOT

PROG = "python -m nas.search"
LATENCY_FORMS = "accepted forms: 1.5ms, 1500us, 0.0015s"
SIZE_FORMS = "accepted forms: 6M, 6000000"
EVALUATOR_NAMES = ("supernet", "proxy")
FRONT_SCHEMA = "latnas/front@1"
_LATENCY = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|us|s)\s*$")
_SCALE = {"ms": 1.0, "us": 1e-3, "s": 1e3}
#: options whose value may start with "-" (a negative latency must reach our parser, not argparse)
_VALUE_OPTIONS = ("--target-latency", "--max-params", "--mes-params-unit", "--mes-latency-unit",
                  "--mes-alpha-params", "--mes-alpha-latency", "--verify-undershoot")
#: the option that sets each SearchRequest field (a RequestError names the field)
OPTION_OF_FIELD = {
    "space": "--space", "target_latency": "--target-latency", "objective": "--objective", "strategy": "--strategy",
    "predictor": "--lut", "max_params": "--max-params", "budget": "--budget", "seed": "--seed",
    "start": "--start", "actions": "--actions", "state_path": "--state", "verify": "--verify",
    "evaluator": "--evaluator", "supernet": "--supernet", "data": "--data", "split": "--data",
    "recalibrate": "--recalibrate", "eval_batches": "--eval-batches", "batch_size": "--eval-batches",
    "untrained_norms": "--untrained-norms",
    "screen_batches": "--screen-batches", "shortlist": "--shortlist", "shortlist_extra": "--shortlist-extra",
    "drop_floor": "--drop-floor", "min_step_ms": "--min-step",
    "steps_past_target": "--steps-past-target",
    "mes": "--mes-*",
}


def parse_latency(text: str, option: str = "--target-latency") -> float:
    """'1.5ms' / '1500us' / '0.0015s' -> milliseconds; anything else raises UsageError naming `option`."""
    match = _LATENCY.match(text or "")
    if not match:
        raise UsageError(f"{option}: bad latency {text!r}; {LATENCY_FORMS}")
    value = float(match.group(1)) * _SCALE[match.group(2)]
    if not (value > 0 and math.isfinite(value)):
        raise UsageError(f"{option}: bad latency {text!r}: must be positive and finite; {LATENCY_FORMS}")
    return value


def parse_size(text: str, option: str = "--max-params") -> int:
    """'6M' / '6000000' (also '500k') -> a parameter count; anything else raises UsageError naming `option`."""
    match = re.match(r"^\s*([0-9]*\.?[0-9]+)\s*([MmKk]?)\s*$", text or "")
    if not match:
        raise UsageError(f"{option}: bad size {text!r}; {SIZE_FORMS}")
    value = float(match.group(1)) * {"": 1, "k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6}[match.group(2)]
    if not (value >= 1 and math.isfinite(value) and value <= 1e15):
        raise UsageError(f"{option}: bad size {text!r}: must be from 1 to 10^15; {SIZE_FORMS}")
    return int(round(value))


def parse_exponent(text: str, option: str) -> float:
    """An MES exponent: a number from 0 to 10."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UsageError(f"{option}: {text!r} is not a number (accepted: 0 to 10, e.g. 0.5)") from None
    if not (math.isfinite(value) and 0 <= value <= 10):
        raise UsageError(f"{option}: {text!r} is outside 0 to 10")
    return value


def parse_fraction(text: str, option: str) -> float:
    """'5%' or '0.05' -> 0.05; a fraction strictly between 0 and 1."""
    raw = (text or "").strip()
    try:
        value = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    except ValueError:
        raise UsageError(f"{option}: {text!r} is not a fraction (accepted: 5%, 0.05)") from None
    if not (math.isfinite(value) and 0 < value < 1):
        raise UsageError(f"{option}: {text!r} must be between 0 and 1 (accepted: 5%, 0.05)")
    return value


def _drop_floor(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--drop-floor: {text!r} is not a number of accuracy points (e.g. 0.5)") from None
    if not math.isfinite(value):
        raise UsageError(f"--drop-floor: {text!r} is not a number of accuracy points (e.g. 0.5)")
    return value  # its range is checked with the rest of the request (nas.api)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Latency-aware architecture search (greedy slimming, random, evolution).")
    parser.add_argument("--target-latency", required=True, help=f"latency budget ({LATENCY_FORMS})")
    parser.add_argument("--device", help="a device with a latency table (e.g. iphone12)")
    parser.add_argument("--lut", help="a latency table file instead of the device's default")
    parser.add_argument("--space", default="efficientformer_v2", help="search space (default efficientformer_v2)")
    parser.add_argument("--objective", default="mes", help="mes (default) or latency")
    parser.add_argument("--mes-params-unit", default="3M", help="MES size unit U_size (default 3M)")
    parser.add_argument("--mes-latency-unit", default="1ms", help="MES latency unit U_lat (default 1ms)")
    parser.add_argument("--mes-alpha-params", default="0.5", help="MES size exponent α_size (default 0.5)")
    parser.add_argument("--mes-alpha-latency", default="1.0", help="MES latency exponent α_lat (default 1.0)")
    parser.add_argument("--max-params", help=f"size budget ({SIZE_FORMS})")
    parser.add_argument("--strategy", default="greedy", help="greedy (default), random or evolution")
    parser.add_argument("--budget", type=integer_in(EVALUATION_BUDGET), help="evaluations for random/evolution (default 200)")
    parser.add_argument("--state", help="resumable state file (continued when it exists)")
    parser.add_argument("--actions", help="greedy action set: v1 (MetaPath importance; default with a Gumbel-trained "
                                          "--supernet), v2 (default otherwise) or v2-types (v2 plus block-type swaps)")
    parser.add_argument("--start", help="greedy: start from this architecture YAML instead of the largest")
    parser.add_argument("--supernet", help="trained supernet checkpoint (accuracy evaluator)")
    parser.add_argument("--data", help="data spec for --supernet; searches select on its val split (e.g. digits)")
    parser.add_argument("--evaluator", help="supernet (default with --supernet) or proxy (default without)")
    parser.add_argument("--recalibrate", type=integer_in(RECALIBRATION_BATCHES), default=0,
                        help="re-estimate BN statistics on N training batches before each supernet evaluation")
    parser.add_argument("--eval-batches", type=integer_in(EVALUATION_BATCHES), help="supernet evaluator: at most N validation batches")
    parser.add_argument("--untrained-norms",
                        help="supernet evaluator without --recalibrate: BN widths no training step updated get "
                             "statistics estimated once per supernet, kept in a file beside the checkpoint that "
                             "later searches read (estimate, the default), or each candidate that runs one is "
                             "recalibrated (recalibrate)")
    parser.add_argument("--screen-batches", type=integer_in(EVALUATION_BATCHES), default=0,
                        help="supernet evaluator, greedy: rank each step's candidates on the first N validation "
                             "batches, then score the --shortlist best on all of them")
    parser.add_argument("--shortlist", type=integer_in(SHORTLIST), default=0,
                        help="greedy with --screen-batches: candidates per step scored on all validation batches")
    parser.add_argument("--shortlist-extra", type=integer_in(SHORTLIST_EXTRA), default=0,
                        help="greedy with --shortlist: up to N more candidates a step scores on all batches while "
                             "one's screening, corrected by the step's screening error, promises a better ratio "
                             "than the shortlist's best")
    parser.add_argument("--drop-floor", help="greedy: count every accuracy drop below this many points as this "
                                             "much, so noise-sized accuracy gains do not decide steps (e.g. 0.5)")
    parser.add_argument("--min-step", help="greedy: compound every action that saves less predicted latency than "
                                           f"this with more of its kind on its stage ({LATENCY_FORMS}; e.g. 0.05ms)")
    parser.add_argument("--steps-past-target", type=integer_in(STEPS_PAST_TARGET), default=0,
                        help="greedy: walk N steps on past the target (each to the most accurate candidate) and "
                             "return the most accurate network on the path that meets it")
    parser.add_argument("--seed", type=integer_in(SEED), default=0,
                        help="seed of the proxy's weights and the random strategies")
    parser.add_argument("--out", help="output YAML (default stdout)")
    parser.add_argument("--trace", help="write every step as JSON lines")
    parser.add_argument("--front", help="write the latency/score front (every architecture on the path) as YAML")
    parser.add_argument("--verify", action="store_true",
                        help="measure the found network end to end on the (measured) device; if it misses the target, "
                             "or lands more than --verify-undershoot below it, correct the table and search again")
    parser.add_argument("--verify-rounds", type=integer_in(VERIFY_ROUNDS),
                        help=f"--verify: at most N searches (default {DEFAULT_ROUNDS})")
    parser.add_argument("--verify-undershoot",
                        help=f"--verify: re-search when measured < (1 - this) x target (default {DEFAULT_UNDERSHOOT * 100:g}%%)")
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


def _table(args, space_name: str):
    from lut import get_device, load_table

    try:
        if args.lut:
            check_input_file(args.lut, "--lut", MAX_TABLE_BYTES)
            table = load_table(args.lut)
            if args.device and table.metadata.device != get_device(args.device).name:
                raise UsageError(f"--lut: {args.lut} was built for device {table.metadata.device!r}, not --device "
                                 f"{args.device!r}; give one of them")
            return table, Path(args.lut).name
        if not args.device:
            raise UsageError("give --device or --lut")
        device = get_device(args.device)
        return device.default_table(space_name), device.table_name(space_name)
    except (UsageError, FileError):
        raise
    except Exception as error:  # unknown device, missing/corrupt table
        prefix = "--lut" if args.lut else "--device"
        message = _first_line(error)
        raise UsageError(message if message.startswith("--") else f"{prefix}: {message}") from None


def _start(args) -> Architecture | None:
    if not args.start:
        return None
    check_input_file(args.start, "--start", MAX_ARCHITECTURE_BYTES)
    try:
        return Architecture.from_yaml(Path(args.start))
    except ArchitectureError as error:
        message = _first_line(error)
        raise UsageError(f"--start: {message if message.startswith(str(args.start)) else f'{args.start}: {message}'}") from None


def _evaluator(args):
    name = args.evaluator or ("supernet" if args.supernet else "proxy")
    if name not in EVALUATOR_NAMES:
        raise UsageError(f"--evaluator: unknown evaluator {name!r}; choose from {', '.join(EVALUATOR_NAMES)}")
    if name == "supernet" and not args.supernet:
        raise UsageError("--evaluator supernet needs --supernet CKPT and --data SPEC")
    if args.supernet and name == "supernet" and not args.data:
        raise UsageError("--supernet needs --data SPEC (the held-out images it is evaluated on)")
    if (args.recalibrate or args.eval_batches or args.screen_batches or args.untrained_norms) and name != "supernet":
        raise UsageError("--recalibrate, --eval-batches, --untrained-norms and --screen-batches apply to the supernet "
                         "evaluator only")
    if args.untrained_norms is not None and args.untrained_norms not in UNTRAINED_NORMS:
        raise UsageError(f"--untrained-norms: {args.untrained_norms!r} is not one of {', '.join(UNTRAINED_NORMS)}")
    if args.untrained_norms and args.recalibrate:
        raise UsageError("--untrained-norms: with --recalibrate every candidate is recalibrated; give one of the two")
    if args.data and name != "supernet":
        raise UsageError("--data applies to the supernet evaluator only (give --supernet CKPT)")
    if name == "proxy":
        return ProxyEvaluation(Path(args.supernet) if args.supernet else None)
    return SupernetEvaluation(Path(args.supernet), args.data, recalibrate=args.recalibrate,
                              eval_batches=args.eval_batches, screen_batches=args.screen_batches,
                              untrained_norms=args.untrained_norms or UNTRAINED_NORMS[0])


def _warn_about_runtime(table) -> None:
    """One stderr line when the table was measured under another runtime version than the one
    `--verify` measures with here: its prices then describe another runtime."""
    from nas.verify import measuring_device

    differences = measuring_device(table).runtime_differences(table.metadata.runtime)
    if differences:
        print(f"{PROG}: warning: --verify measures under another runtime than the table's ({'; '.join(differences)}); "
              "rebuild the table here for prices of this runtime", file=sys.stderr)


def request_from_args(args) -> SearchRequest:
    """The `SearchRequest` the options describe (options checked here, the whole request by `run_search`)."""
    target = parse_latency(args.target_latency)
    mes = MobileEfficiencyScore(parse_size(args.mes_params_unit, "--mes-params-unit"),
                                parse_latency(args.mes_latency_unit, "--mes-latency-unit"),
                                parse_exponent(args.mes_alpha_params, "--mes-alpha-params"),
                                parse_exponent(args.mes_alpha_latency, "--mes-alpha-latency"))
    max_params = parse_size(args.max_params) if args.max_params else None
    if (args.verify_rounds is not None or args.verify_undershoot is not None) and not args.verify:
        raise UsageError("--verify-rounds and --verify-undershoot apply with --verify only")
    verify = VerifySettings(args.verify_rounds or DEFAULT_ROUNDS,
                            parse_fraction(args.verify_undershoot, "--verify-undershoot")
                            if args.verify_undershoot is not None else DEFAULT_UNDERSHOOT) if args.verify else None
    table, table_name = _table(args, space_named(args.space).name)
    return SearchRequest(
        space=args.space, predictor=table, target_latency=target, evaluator=_evaluator(args), objective=args.objective,
        mes=mes, max_params=max_params, strategy=args.strategy, budget=args.budget, seed=args.seed,
        state_path=Path(args.state) if args.state else None, actions=args.actions, shortlist=args.shortlist,
        shortlist_extra=args.shortlist_extra,
        drop_floor=_drop_floor(args.drop_floor),
        min_step_ms=parse_latency(args.min_step, "--min-step") if args.min_step is not None else None,
        steps_past_target=args.steps_past_target, start=_start(args),
        start_name=Path(args.start).name if args.start else None, verify=verify, table_name=table_name,
    )


def _strict_json(value: Any) -> Any:
    """JSON has no infinity: a step that gains nothing has ratio null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def step_record(step: Step) -> dict[str, Any]:
    return {key: _strict_json(value) for key, value in step.to_dict().items()}


def front_document(outcome: SearchOutcome) -> str:
    points = [
        {"latency_ms": round(step.latency, 6), "params": step.params, "mes": round(step.mes, 4),
         "score": round(step.score, 6), "action": step.action, "architecture": arch.to_dict()}
        for step, arch in outcome.front
    ]
    return yaml.safe_dump({"schema": FRONT_SCHEMA, **outcome.meta, "points": points}, sort_keys=False)


def run_request(request: SearchRequest, trace_path: str | Path | None) -> SearchOutcome:
    """`run_search` with its trace: a `LineFile` published atomically at the end (also after Ctrl-C),
    so a killed search leaves the old trace as it was. With a state file the trace follows the state
    instead: republished after every step and continued when the state is resumed (a search killed
    between writing the two may repeat or miss that one step in the trace)."""
    resuming = request.state_path is not None and Path(request.state_path).exists()
    trace = LineFile(trace_path, append=resuming, min_interval_s=0.0 if request.state_path is not None else math.inf) \
        if trace_path else None
    try:
        on_step = (lambda step: trace.write_line(json.dumps(step_record(step), sort_keys=True))) if trace else None
        return run_search(request, on_step=on_step, progress=sys.stderr.isatty())
    finally:
        if trace:
            trace.publish(force=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(attach_dash_values(sys.argv[1:] if argv is None else list(argv)))
    try:
        outputs = check_outputs({"--out": args.out, "--front": args.front, "--trace": args.trace, "--state": args.state})
        request = request_from_args(args)
        validate_request(request)  # before the trace file is opened
        if request.verify is not None:
            _warn_about_runtime(request.predictor)
        outcome = run_request(request, outputs.get("--trace"))
    except RequestError as error:
        raise UsageError(f"{OPTION_OF_FIELD.get(error.field, '--' + error.field)}: {error}") from None
    if not outcome.reachable:
        device = getattr(request.predictor.metadata, "device", "this device")
        print(f"{PROG}: target {request.target_latency:g} ms cannot be met on {device}; the smallest latency "
              f"{request.space} reaches is {outcome.smallest_latency:.4f} ms", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.front:
        write_text_atomic(outputs["--front"], front_document(outcome))
    text = outcome.arch.to_yaml()
    if args.out:
        write_text_atomic(outputs["--out"], text)
    else:
        sys.stdout.write(text)
    result, verification = outcome.result, outcome.verification
    if verification is not None and not verification.in_window:
        print(f"{PROG}: --verify: measured {verification.kept.measured_ms:.4f} ms is outside "
              f"[{1 - verification.undershoot:.2f}, 1.00] x {request.target_latency:g} ms after "
              f"{len(verification.rounds)} searches", file=sys.stderr)
    if verification is not None:
        for row in verification.rounds:
            print(f"{PROG}: --verify round {row.round}: predicted {row.predicted_ms:.4f} ms, measured "
                  f"{row.measured_ms:.4f} ms", file=sys.stderr)
    print(f"{PROG}: {result.latency:.4f} ms, {result.params} params, MES {result.mes:.2f}, score "
          f"{result.score:.3f} ({outcome.evaluator_name}), {result.evaluations} evaluations"
          + (f", {result.screenings} screenings" if result.screenings else ""), file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_command(main, prog=PROG))
