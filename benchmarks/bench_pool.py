"""Run the pool benchmark: same as `eqflow bench pool`."""

import sys

from eqflow.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", "pool", *sys.argv[1:]]))
