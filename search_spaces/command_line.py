"""What every latnas command shares: the exit-code contract and one-line errors.

Exit codes (DESIGN.md): 0 success, 2 bad input (one clear line on stderr, no traceback), 3 a search
target that cannot be met. Commands raise `UsageError` (or an `ArchitectureError`) for bad input
and `run_command` turns it into that one line.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Sequence

from search_spaces.architecture import ArchitectureError
from search_spaces.files import FileError
from search_spaces.limits import FloatRange, IntRange

if TYPE_CHECKING:
    from search_spaces.space import SearchSpace

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_UNREACHABLE = 3


class UsageError(Exception):
    """Bad input to a command; the message is the one line the user sees."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line (`prog: error: ...`) and exit 2, without the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def run_command(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None, prog: str = "") -> int:
    """Run `main(argv)`; bad input becomes one line on stderr and exit 2, Ctrl-C exit 130."""
    try:
        return main(argv)
    except (UsageError, ArchitectureError, FileError) as error:
        print(f"{prog}: error: {error}" if prog else f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head` closed the pipe: not an error of ours
        return EXIT_OK


# Argument types: argparse reports a ValueError as "invalid <__name__> value: 'x'", one line.
def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:  # also refuses nan
        raise ValueError(text)
    return value


def integer_in(allowed: IntRange) -> Callable[[str], int]:
    """An argparse type accepting the integers of `allowed` (its message names the range)."""
    return _parse_in(allowed, int)


def number_in(allowed: FloatRange) -> Callable[[str], float]:
    """An argparse type accepting the finite numbers of `allowed`."""
    return _parse_in(allowed, float)


def _parse_in(allowed: IntRange | FloatRange, convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {allowed.describe()}, got {text[:40]!r}") from None
        if value not in allowed:
            raise argparse.ArgumentTypeError(f"must be {allowed.describe()}, got {text[:40]}")
        return value

    return parse


positive_int.__name__ = "positive integer"
non_negative_int.__name__ = "non-negative integer"
positive_float.__name__ = "positive number"


def parse_widths_subset(space: "SearchSpace", values: Sequence[str]) -> list[tuple[int, ...]]:
    """One comma-separated width list per stage, each width a choice of that stage."""
    if len(values) != len(space.stages):
        raise UsageError(f"--widths-subset: {space.name} has {len(space.stages)} stages, got {len(values)} width list(s)")
    subset = []
    for index, (text, choices) in enumerate(zip(values, space.stages)):
        try:
            widths = sorted({int(part) for part in text.split(",") if part.strip()})
        except ValueError:
            raise UsageError(f"--widths-subset: stage {index + 1}: expected comma-separated integers, got {text!r}") from None
        wrong = [w for w in widths if w not in choices.widths]
        if not widths or wrong:
            raise UsageError(
                f"--widths-subset: stage {index + 1}: {wrong or text!r} not among the stage's widths "
                f"{choices.widths[0]}..{choices.widths[-1]}"
            )
        subset.append(tuple(widths))
    return subset


def space_from_args(name: str, resolution: int | None) -> "tuple[SearchSpace, int]":
    """The space `name` and the resolution (the space's default when None); UsageError otherwise."""
    from search_spaces.registry import get_space, list_spaces

    try:
        space = get_space(name)
    except KeyError:
        raise UsageError(f"--space: unknown space {name!r}; known spaces: {', '.join(list_spaces())}") from None
    resolution = resolution or space.default_resolution
    if resolution % space.resolution_multiple:
        raise UsageError(f"--resolution: must be a positive multiple of {space.resolution_multiple}, got {resolution}")
    return space, resolution
