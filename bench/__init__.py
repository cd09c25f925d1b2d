"""Benchmarks of the API, the admission SQL, the workers and the storage drivers.

Each module runs with one command from the repository root, for example
`.venv/bin/python -m bench.create_throughput`, and prints a table. None of
them is a test: they assert nothing about speed, and the test suite does not
collect them. docs/benchmarks.md explains each one and records a run.
"""
