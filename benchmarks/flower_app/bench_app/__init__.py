"""Flower App for benchmarks/flower_compare.py: a pooled histogram and mean, no DP."""
