"""Run the service benchmark: same as `eqflow bench service`."""

import sys

from eqflow.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", "service", *sys.argv[1:]]))
