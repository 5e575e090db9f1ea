"""Helpers of the SLURM and failure-handling tests: a local cluster, workflow runs, output comparison."""
