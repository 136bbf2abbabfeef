"""A trial as a SLURM job step: ``python -m eqflow.sweeps.step PAYLOAD_JSON``.

Its own module, so that ``eqflow.sweeps.trial`` (whose ``log()`` the train function calls) is
imported once under its own name, not a second time as ``__main__``.
"""

from __future__ import annotations

import sys

from eqflow.sweeps.trial import run_trial


def main(argv: list[str] | None = None) -> int:
    """Prints the trial's end (JSON) on stdout; the train function's output goes to its log."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m eqflow.sweeps.step PAYLOAD_JSON", file=sys.stderr)
        return 2
    print(run_trial(args[0]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
