"""Benchmarks: `make bench` runs every scenario in bench/scenarios against the local stack."""
