"""Which gateway replica runs the rollout engine: leader election.

Every replica serves the API and ingests heartbeats; only the leader advances rollouts,
sweeps agents offline and re-asserts desired state. On SQLite there is one replica and
it always leads. On PostgreSQL the leader is whoever holds a session advisory lock on
its database connection: a replica that dies (or loses its connection) loses the lock
with its session, and the next replica to poll takes it — no lease to renew, no clock
to trust. Waves are issued in one transaction with the rollout's ``current_wave``
(cloud_gateway.rollouts), so a new leader picks up exactly where the rows say the old
one stopped and never issues a wave twice.
"""

from __future__ import annotations

import contextlib
import logging
import time

from cloud_gateway.db import Database, DatabaseError

log = logging.getLogger(__name__)

# Any fixed 64-bit number (the migration lock in cloud_gateway.schema is another one).
LEADER_LOCK = 0x6564_6765_636C_6C64  # "edgecl" "ld"


class Leadership:
    """Polled by the engine loop; :meth:`check` says whether this replica leads now."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._leading = db.dialect == "sqlite"
        self._session = db.session
        self._since: float | None = time.time() if self._leading else None
        self.changes = 0  # times this replica became leader

    @property
    def leading(self) -> bool:
        return self._leading

    @property
    def since(self) -> float | None:
        return self._since

    def check(self) -> bool:
        """Try to become (or confirm still being) the leader; returns whether it leads.
        A database error means "not leading": a replica that cannot reach the database
        must not act on what it last read."""
        if self.db.dialect == "sqlite":
            return True
        was = self._leading
        try:
            if self._leading and self.db.session != self._session:
                self._leading = False  # the connection was replaced: its lock went with it
            if self._leading:
                self.db.execute("select 1")  # the session (and its lock) is alive
            else:
                row = self.db.execute("select pg_try_advisory_lock(?)", [LEADER_LOCK]).fetchone()
                self._leading = bool(row[0])
                self._session = self.db.session
        except DatabaseError as exc:
            if was:
                log.warning("leadership lost: %s", exc.message)
            self._leading = False
        if self._leading and not was:
            self._since = time.time()
            self.changes += 1
            log.info("this gateway replica now leads the rollout engine")
        elif was and not self._leading:
            self._since = None
        return self._leading

    def release(self) -> None:
        """Step down on shutdown, so another replica takes over at its next poll rather
        than when this connection closes."""
        if self.db.dialect == "postgresql" and self._leading:
            # If this fails, closing the connection releases the lock anyway.
            with contextlib.suppress(DatabaseError):
                self.db.execute("select pg_advisory_unlock(?)", [LEADER_LOCK])
        self._leading = False
        self._since = None
