"""Browser assets both dashboards serve (the edge agent's page and the gateway's fleet
page): the DOM helpers in ``dom.js`` live here once, in a package both may import, and
each app serves them under its own ``/dashboard/`` prefix."""

from __future__ import annotations

from importlib import resources

#: Shared asset -> content type.
SHARED: dict[str, str] = {"dom.js": "text/javascript"}


def shared_asset(name: str) -> bytes:
    """The bytes of one shared asset (read when an app starts, not at import time)."""
    return resources.files(__package__).joinpath(name).read_bytes()
