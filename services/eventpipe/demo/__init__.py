"""Synthetic commerce clickstream for the demo and the benchmarks (``eventpipe demo generate``)."""
