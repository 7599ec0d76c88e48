"""`python -m search_spaces`: inspect spaces, print references, sample architectures, check files.

    python -m search_spaces list
    python -m search_spaces show efficientformer_v2 [--ref s0]
    python -m search_spaces sample edgevit --n 5 --seed 0 [--out-dir archs/]
    python -m search_spaces validate found.yaml other.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from search_spaces.architecture import Architecture, ArchitectureError
from search_spaces.command_line import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    ArgumentParser,
    UsageError,
    integer_in,
    run_command,
)
from search_spaces.counting import cost
from search_spaces.files import check_outputs, write_text_atomic
from search_spaces.limits import NUM_CLASSES, RESOLUTION, SAMPLES, SEED
from search_spaces.registry import get_space, list_spaces
from search_spaces.space import SearchSpace

PROG = "python -m search_spaces"


def _space(name: str) -> SearchSpace:
    try:
        return get_space(name)
    except KeyError:
        raise UsageError(f"space: unknown space {name!r}; known spaces: {', '.join(list_spaces())}") from None




def _summary_row(name: str, arch: Architecture) -> str:
    network = cost(arch)
    return f"  {name:<6} params {network.params / 1e6:7.2f} M   MACs {network.macs / 1e9:6.3f} G @{arch.resolution}"


def command_list(args) -> int:
    for name in list_spaces():
        space = get_space(name)
        print(f"{name}  ({len(space.stages)} stages, default resolution {space.default_resolution})  {space.summary}")
        references = {ref: space.reference(ref) for ref in space.references()}
        for ref in sorted(references, key=lambda r: cost(references[r]).params):
            print(_summary_row(ref, references[ref]))
    return EXIT_OK


def command_show(args) -> int:
    space = _space(args.space)
    if args.ref is not None:
        if args.ref not in space.references():
            raise UsageError(f"--ref: {space.name} has no reference {args.ref!r}; references: {', '.join(space.references())}")
        sys.stdout.write(space.reference(args.ref).to_yaml())
        return EXIT_OK
    print(f"{space.name}: {space.summary}")
    print(f"default resolution {space.default_resolution} (multiple of {space.resolution_multiple}), block types:")
    for block_type in space.block_types.values():
        knobs = block_type.knobs()
        print(f"  {block_type.name:<13} {block_type.summary}" + (f"  [knobs: {', '.join(knobs)}]" if knobs else ""))
    for index, stage in enumerate(space.stages):
        widths = stage.widths
        print(
            f"  stage {index + 1}: widths {widths[0]}..{widths[-1]} ({len(widths)} choices), "
            f"depth {stage.min_depth}..{stage.max_depth}, types {', '.join(stage.block_types)}, identity"
            + (f", expansions {list(stage.expansions)}" if stage.expansions else "")
            + (f", heads {list(stage.heads)}" if stage.heads else "")
            + (f", kernels {list(stage.kernels)}" if stage.kernels else "")
            + (f", sample ratios {list(stage.sample_ratios)}" if stage.sample_ratios else "")
        )
    print(f"  largest : {_summary_row('', space.largest()).strip()}")
    print(f"  smallest: {_summary_row('', space.smallest()).strip()}")
    if space.references():
        print(f"  references: {', '.join(space.references())}  (show {space.name} --ref NAME)")
    else:
        print("  references: none")
    return EXIT_OK


def command_sample(args) -> int:
    space = _space(args.space)
    out_dir = check_outputs({}, {"--out-dir": args.out_dir}).get("--out-dir")
    rng = np.random.default_rng(args.seed)
    archs = [
        space.sample(rng, resolution=args.resolution, num_classes=args.num_classes).with_meta(
            sampled_by=f"search_spaces sample --seed {args.seed}", index=i
        )
        for i in range(args.n)
    ]
    if args.resolution is not None:  # a bad resolution is bad input, caught before anything is written
        space.validate(archs[0])
    if args.out_dir is None:
        sys.stdout.write("---\n".join(arch.to_yaml() for arch in archs))
        return EXIT_OK
    for i, arch in enumerate(archs):
        write_text_atomic(out_dir / f"{space.name}_seed{args.seed}_{i:03d}.yaml", arch.to_yaml())
    print(f"wrote {len(archs)} architectures to {args.out_dir}", file=sys.stderr)
    return EXIT_OK


def command_validate(args) -> int:
    failures = 0
    for path in args.files:
        try:
            arch = Architecture.from_yaml(Path(path))
            try:
                space = get_space(arch.space)
            except KeyError:
                raise ArchitectureError("space", f"unknown space {arch.space!r}; known: {', '.join(list_spaces())}") from None
            space.validate(arch)
        except ArchitectureError as error:
            failures += 1
            print(f"{path}: {error}", file=sys.stderr)
            continue
        network = cost(arch)
        print(f"{path}: ok ({arch.space}, depths {list(arch.depths)}, {network.params / 1e6:.2f} M params, {network.macs / 1e9:.3f} GMACs)")
    return EXIT_BAD_INPUT if failures else EXIT_OK


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Inspect latnas search spaces and architecture files.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    commands.add_parser("list", help="spaces and their reference variants with params and MACs")
    show = commands.add_parser("show", help="describe a space, or print a reference's YAML with --ref")
    show.add_argument("space")
    show.add_argument("--ref", help="reference variant name (e.g. s0)")
    sample = commands.add_parser("sample", help="sample random architectures of a space")
    sample.add_argument("space")
    sample.add_argument("--n", type=integer_in(SAMPLES), default=1, help="how many (default 1)")
    sample.add_argument("--seed", type=integer_in(SEED), default=0, help="random seed (default 0)")
    sample.add_argument("--resolution", type=integer_in(RESOLUTION), help="input resolution (default: the space's)")
    sample.add_argument("--num-classes", type=integer_in(NUM_CLASSES), help="classes (default 1000)")
    sample.add_argument("--out-dir", help="write one YAML file per architecture here instead of stdout")
    validate = commands.add_parser("validate", help="check architecture YAML files (exit 0 valid, 2 with the reason)")
    validate.add_argument("files", nargs="+")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"list": command_list, "show": command_show, "sample": command_sample, "validate": command_validate}
    return handler[args.command](args)


if __name__ == "__main__":
    sys.exit(run_command(main, prog=PROG))
