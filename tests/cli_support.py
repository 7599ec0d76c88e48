"""Running a latnas command in-process the way `python -m ...` runs it, for tests."""

from __future__ import annotations

from typing import Callable, Sequence

from search_spaces.command_line import run_command


def invoke(main: Callable, prog: str, argv: Sequence[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `main(argv)` under the shared error handling."""
    try:
        code = run_command(main, argv, prog=prog)
    except SystemExit as exit:  # argparse's own refusals end the process the same way
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused_in_one_line(main: Callable, prog: str, argv: Sequence[str], option: str, out, capsys) -> None:
    """`main(argv + --out out)` exits 2 with one stderr line naming `option`, and leaves the file
    already at `out` as it was."""
    out.write_text("kept\n")
    code, _, err = invoke(main, prog, [*argv, "--out", str(out)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and option in err, err
    assert out.read_text() == "kept\n"
