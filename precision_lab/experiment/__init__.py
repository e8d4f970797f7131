"""Experiments: configs, input generators, the runner, the result tables and the results store."""
