"""Benchmarks (not tests): each measures dmlm against a baseline in the same run."""
