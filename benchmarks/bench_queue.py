"""Run the core queue benchmark: same as `eqflow bench queue`."""

import sys

from eqflow.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", "queue", *sys.argv[1:]]))
