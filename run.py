"""eqflow's Ackley/GPR model exploration (the same as `eqflow run`).

    python run.py <exp_id> cfgs/local.yaml [--fifo-baseline] [--dynamic-scaling]

`python run.py --help` lists every option; the engine is eqflow.workflows.main.
"""

from eqflow.workflows.main import main

if __name__ == "__main__":
    raise SystemExit(main(prog="run.py"))
