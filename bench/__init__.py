"""Benchmarks: `make bench` (python -m bench) runs them all; JSON + PNG in bench/results/."""
