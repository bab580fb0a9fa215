"""Fixtures for the fault tests: the built-in models (shared with the edge-agent tests)."""

from tests.edge_agent.conftest import built_models, repo  # noqa: F401  (fixtures)
