"""Benchmarks (run as scripts); a package so that tests can import their simulation cores."""
