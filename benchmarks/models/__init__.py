"""Model-layer benchmarks: ``python -m benchmarks.models``."""
