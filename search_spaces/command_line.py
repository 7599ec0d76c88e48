"""What every latnas command shares: the exit-code contract and one-line errors.

Exit codes (DESIGN.md): 0 success, 2 bad input (one clear line on stderr, no traceback), 3 a search
target that cannot be met. Commands raise `UsageError` (or an `ArchitectureError`) for bad input
and `run_command` turns it into that one line.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn, Sequence

from search_spaces.architecture import ArchitectureError

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
    except (UsageError, ArchitectureError) as error:
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


positive_int.__name__ = "positive integer"
non_negative_int.__name__ = "non-negative integer"
positive_float.__name__ = "positive number"
