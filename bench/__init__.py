"""Benchmark harness: a real `bamboo serve` process on loopback, measured by a concurrent load generator.

Run it from the repository root with ``.venv/bin/python -m bench`` (see bench/README.md).
"""
