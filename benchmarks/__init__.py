"""Measurements of the project (`python benchmarks/run.py`, `vae.py`, ...), installed with it as
a package so that each script, run from a checkout, imports its siblings (`benchmarks.common`,
...) without editing sys.path."""
