"""`python -m lut.import --manifest M --measurements CSV --out FILE`: see `lut.importer`.

`import` is a Python keyword, so this module can only be run (`python -m lut.import`), never
imported by name; everything lives in `lut/importer.py`.
"""

import sys

from search_spaces.command_line import run_command

from lut.importer import PROG, main

if __name__ == "__main__":
    sys.exit(run_command(main, prog=PROG))
