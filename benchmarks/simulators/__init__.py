"""Benchmarks of the simulators' load path (``python -m benchmarks.simulators``)."""
