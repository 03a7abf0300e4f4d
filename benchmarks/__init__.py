"""Benchmarks of the serving loop (run them with ``python -m benchmarks.NAME``)."""
