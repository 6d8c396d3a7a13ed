"""Benchmarks behind `wzp bench`: they run the product on simulated links and write JSON."""
