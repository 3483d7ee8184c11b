"""Declarative sweeps (experiments/sweeps/*.py), their runner (python -m experiments.run) and
result tables (python -m experiments.table); cluster launch scripts in experiments/launch/."""
