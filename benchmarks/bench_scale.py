"""Run the scale benchmark: same as `eqflow bench scale`."""

import sys

from eqflow.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", "scale", *sys.argv[1:]]))
