"""Run the churn benchmark: same as `eqflow bench churn`."""

import sys

from eqflow.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", "churn", *sys.argv[1:]]))
