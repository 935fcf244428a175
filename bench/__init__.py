"""Throughput benchmark suites (pytest-benchmark) and the reference formulation they compare with."""
