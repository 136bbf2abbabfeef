"""Run the peers benchmark: same as `eqflow bench peers`."""

import sys

from eqflow.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", "peers", *sys.argv[1:]]))
