"""``python -m eqflow.funsearch run <exp_id> --cfg FILE``: the same as ``eqflow funsearch run``."""

from eqflow.funsearch.cli import main

raise SystemExit(main(prog="python -m eqflow.funsearch"))
