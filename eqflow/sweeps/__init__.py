"""Parameter sweeps on eqflow: grid and binary search (Runner's API) and ASHA trials (slurm_sweeps' API)."""
