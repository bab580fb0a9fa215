"""The tests' PostgreSQL server (simulators/postgres.py). Without Debian's ``postgresql``
package the tests that need it are skipped locally with the reason, and fail under CI
(``CI`` set), where a missing server means a broken ``.ci/run``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from simulators import postgres


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yield the URL of a fresh PostgreSQL server (database ``postgres``)."""
    try:
        postgres.require_postgres()
    except postgres.PostgresMissing as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc}: .ci/run must install 'postgresql'")
        pytest.skip(str(exc))
    with postgres.postgres_server() as url:
        yield url
