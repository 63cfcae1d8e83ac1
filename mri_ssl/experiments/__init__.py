"""Experiment grids: pretraining modes x label fractions x seeds x datasets, each run a bundle invocation."""

from mri_ssl.experiments.grid import Grid, Run, expand_runs, load_grid
from mri_ssl.experiments.runner import RunResult, run_grid
from mri_ssl.experiments.tables import collect, write_tables

__all__ = ["Grid", "Run", "RunResult", "collect", "expand_runs", "load_grid", "run_grid", "write_tables"]
