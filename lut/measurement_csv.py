"""Reading the measurement CSVs of `lut.import` (one row per layer) and `lut.validate --measurements`
(one row per network).

A CSV is opened only as a regular file of at most `MAX_CSV_BYTES` of UTF-8 text (a spreadsheet's
byte-order mark dropped); a field longer than `MAX_CSV_FIELD` characters, a NUL byte or broken
quoting is refused with the line it is on. Blank lines and lines whose first cell starts with `#`
are skipped. Errors are one `UsageError` line naming the option, the file and the line, and never
quote the file's content: a path given as a CSV may be any file at all.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from search_spaces.command_line import UsageError
from search_spaces.files import FileError, read_input_text
from search_spaces.limits import MAX_CSV_BYTES, MAX_CSV_FIELD


def read_csv_rows(path: str | Path, option: str) -> list[tuple[int, list[str]]]:
    """(line number, cells) of every row that is not blank or a `#` comment, header included."""
    path = Path(path)
    try:
        text = read_input_text(path, option, MAX_CSV_BYTES)
    except FileError as error:
        raise UsageError(str(error)) from None
    if "\x00" in text:  # the csv module reads NUL as a character since Python 3.11: refused here
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise UsageError(f"{option}: {path} line {line}: not a valid CSV row (a NUL byte)")
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    rows: list[tuple[int, list[str]]] = []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return rows
        except csv.Error as error:  # the message names the problem (field limit, NUL, quoting), not the content
            raise UsageError(f"{option}: {path} line {reader.line_num}: not a valid CSV row ({error})") from None
        longest = max((len(cell) for cell in row), default=0)
        if longest > MAX_CSV_FIELD:
            raise UsageError(f"{option}: {path} line {reader.line_num}: a field of {longest} characters, more than "
                             f"the {MAX_CSV_FIELD} a field may have")
        if row and any(cell.strip() for cell in row) and not row[0].lstrip().startswith("#"):
            rows.append((reader.line_num, row))
