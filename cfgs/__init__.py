"""Example workflow configs, shipped as package data: `eqflow examples`, `eqflow run <exp_id> --example local`."""
