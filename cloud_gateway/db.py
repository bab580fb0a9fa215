"""The gateway's database: one small facade over SQLite (embedded, the default) and
PostgreSQL (several gateway replicas), so the rest of the gateway writes its SQL once.

Everything the gateway must remember across a restart lives here; in-memory state is a
cache that can be rebuilt from these tables (that is what makes rollouts resumable, and
what lets another replica take a rollout over).

The SQL the gateway writes is the common subset of both dialects with SQLite's ``?``
placeholders; :class:`PostgresDatabase` translates the two spellings that differ
(``?`` -> ``%s`` and ``json_each(?)`` -> ``json_array_elements_text(...)``). Upserts use
``insert ... on conflict`` (both dialects), scalar ``max(a, b)`` is spelled with ``case``.
The tables and their migrations are in :mod:`cloud_gateway.schema`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from models.errors import ConfigError, EdgecloudError, MissingDependency, Status


class DatabaseError(EdgecloudError):
    """The database failed or is unreachable (mapped from sqlite3/psycopg errors)."""

    status = Status.UNAVAILABLE


class IntegrityConflict(DatabaseError):
    """A write broke a key or uniqueness constraint (another writer got there first)."""

    status = Status.ALREADY_EXISTS


class Cursor(Protocol):
    """The part of a DB-API cursor the gateway uses (sqlite3 and psycopg both fit)."""

    @property
    def description(self) -> Any: ...

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Database:
    """What every gateway module uses; one instance per process, used from its event loop
    thread (the CLI subcommands use their own)."""

    dialect: str = ""

    def __init__(self, url: str) -> None:
        self.url = url
        # Bumped when the connection is replaced after a failure: a PostgreSQL session
        # lock (leadership) does not survive that, and its holder must notice.
        self.session = 0

    # -- the connection ---------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        raise NotImplementedError

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction around many writes (a 10,000-agent wave is one commit, not
        tens of thousands). Nested use joins the outer transaction."""
        raise NotImplementedError
        yield

    def close(self) -> None:
        raise NotImplementedError

    # -- helpers over execute ----------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[dict[str, Any]]:
        cur = self.execute(sql, params)
        names = [d[0] for d in cur.description]
        for values in cur.fetchall():
            yield dict(zip(names, values, strict=True))

    def table(self, name: str) -> Table:
        from cloud_gateway.schema import TABLES

        if name not in TABLES:
            raise ConfigError(f"no table {name!r}")
        return Table(self, name, TABLES[name].pk)

    def next_counter(self, name: str, floor: int = 0, count: int = 1) -> int:
        """Increase the persisted counter ``name`` by ``count`` (a block of values for
        ``count`` documents), its first new value at least ``floor``; returns the last
        value of the block. One statement: two processes (the CLI and a server, or two
        gateway replicas) incrementing at once still get disjoint blocks."""
        self.execute(
            "insert into counters (name, value) values (?, 0) on conflict (name) do nothing",
            [name],
        )
        top = floor + count - 1
        row = self.execute(
            "update counters set value = case when value + ? > ? then value + ? else ? end "
            "where name = ? returning value",
            [count, top, count, top, name],
        ).fetchone()
        return int(row[0])


class Table:
    """sqlite-utils' table calls the gateway used, as plain SQL for both dialects."""

    def __init__(self, db: Database, name: str, pk: tuple[str, ...]) -> None:
        self.db = db
        self.name = name
        self.pk = pk

    def insert(self, row: dict[str, Any]) -> None:
        columns = list(row)
        self.db.execute(
            f"insert into {self.name} ({_names(columns)}) values ({_marks(columns)})",
            [_value(row[c]) for c in columns],
        )

    def insert_all(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        if not rows:
            return
        columns = list(rows[0])
        self.db.executemany(
            f"insert into {self.name} ({_names(columns)}) values ({_marks(columns)})",
            [[_value(r[c]) for c in columns] for r in rows],
        )

    def upsert(self, row: dict[str, Any]) -> None:
        """Insert, or update the named columns of the row with the same primary key."""
        columns = list(row)
        rest = [c for c in columns if c not in self.pk]
        update = ", ".join(f"{_quote(c)} = excluded.{_quote(c)}" for c in rest)
        action = f"do update set {update}" if rest else "do nothing"
        self.db.execute(
            f"insert into {self.name} ({_names(columns)}) values ({_marks(columns)}) "
            f"on conflict ({_names(self.pk)}) {action}",
            [_value(row[c]) for c in columns],
        )

    def update(self, key: Any, values: dict[str, Any]) -> None:
        keys = key if isinstance(key, tuple) else (key,)
        sets = ", ".join(f"{_quote(c)} = ?" for c in values)
        self.db.execute(
            f"update {self.name} set {sets} where {self._key_where()}",
            [*(_value(v) for v in values.values()), *keys],
        )

    def delete(self, key: Any) -> None:
        keys = key if isinstance(key, tuple) else (key,)
        self.db.execute(f"delete from {self.name} where {self._key_where()}", list(keys))

    def rows_where(
        self,
        where: str | None = None,
        params: Sequence[Any] = (),
        *,
        order_by: str | None = None,
        limit: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        sql = f"select * from {self.name}"
        if where:
            sql += f" where {where}"
        if order_by:
            sql += f" order by {order_by}"
        if limit is not None:
            sql += f" limit {int(limit)}"
        return self.db.query(sql, params)

    def _key_where(self) -> str:
        return " and ".join(f"{_quote(c)} = ?" for c in self.pk)


def _quote(column: str) -> str:
    # "values" is a keyword in SQL; quoting every generated name keeps both dialects happy.
    return f'"{column}"'


def _names(columns: Iterable[str]) -> str:
    return ", ".join(_quote(c) for c in columns)


def _marks(columns: Sequence[str]) -> str:
    return ", ".join("?" * len(columns))


def _value(value: Any) -> Any:
    # As sqlite-utils did: containers are stored as JSON text.
    if isinstance(value, dict | list | tuple):
        return dumps(value)
    return value


# -- SQLite --------------------------------------------------------------------------


class SqliteDatabase(Database):
    """The embedded database (one gateway replica; WAL, so the CLI can read alongside)."""

    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        super().__init__(f"sqlite:///{path}")
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: explicit transactions only, no implicit long-lived ones.
        # check_same_thread=False: the CLI opens and uses it from a worker thread.
        self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA busy_timeout=5000")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        try:
            return self.conn.execute(sql, _plain(params))
        except sqlite3.IntegrityError as exc:
            raise IntegrityConflict(str(exc)) from exc
        except sqlite3.Error as exc:
            raise DatabaseError(f"sqlite: {exc}") from exc

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        try:
            self.conn.executemany(sql, (_plain(r) for r in rows))
        except sqlite3.IntegrityError as exc:
            raise IntegrityConflict(str(exc)) from exc
        except sqlite3.Error as exc:
            raise DatabaseError(f"sqlite: {exc}") from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        conn = self.conn
        if conn.in_transaction:
            yield
            return
        conn.execute("begin")
        try:
            yield
        except BaseException:
            if conn.in_transaction:
                conn.execute("rollback")
            raise
        if conn.in_transaction:
            conn.execute("commit")

    def close(self) -> None:
        self.conn.close()


# -- PostgreSQL ----------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def postgres_sql(sql: str) -> str:
    """SQLite-spelled gateway SQL in PostgreSQL's spelling (cached: the gateway's
    statements are a small fixed set)."""
    sql = sql.replace("json_each(?)", "json_array_elements_text(cast(? as json))")
    if "%" in sql:  # psycopg reads % as a placeholder; the gateway's SQL has no literal %
        sql = sql.replace("%", "%%")
    return re.sub(r"\?", "%s", sql)


class PostgresDatabase(Database):
    """A PostgreSQL server shared by every gateway replica (psycopg 3, autocommit).

    One connection per process: the rollout engine's leadership is a session advisory
    lock on this very connection (cloud_gateway.leader), so a replica that lost its
    connection has lost its leadership too and can write nothing as leader after that.
    TCP keepalives make the server notice a replica that vanished without closing its
    socket (a node lost, not a process killed) within ~30 s and release its lock."""

    dialect = "postgresql"

    def __init__(self, url: str, *, connect_timeout_s: float = 5.0) -> None:
        super().__init__(url)
        try:
            import psycopg
        except ImportError as exc:
            raise MissingDependency("psycopg", "postgres") from exc
        self._psycopg = psycopg
        self._connect_timeout_s = connect_timeout_s
        self._lock = threading.RLock()  # the CLI may call from a worker thread
        self._depth = 0
        self.conn = self._connect()

    def _connect(self) -> Any:
        psycopg = self._psycopg
        try:
            return psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=max(1, int(self._connect_timeout_s)),
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
                application_name="cloud-gateway",
            )
        except psycopg.Error as exc:
            raise DatabaseError(f"postgresql: cannot connect: {_one_line(exc)}") from exc

    def _ensure(self) -> Any:
        if self.conn.closed:
            if self._depth:
                raise DatabaseError("postgresql: the connection broke inside a transaction")
            self.conn = self._connect()
            self.session += 1
        return self.conn

    def _call(self, fn: Any) -> Any:
        psycopg = self._psycopg
        with self._lock:
            try:
                return fn(self._ensure())
            except psycopg.errors.IntegrityError as exc:
                raise IntegrityConflict(_one_line(exc)) from exc
            except psycopg.Error as exc:
                raise DatabaseError(f"postgresql: {_one_line(exc)}") from exc

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self._call(lambda conn: conn.execute(postgres_sql(sql), _plain(params)))  # type: ignore[no-any-return]

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        def run(conn: Any) -> None:
            with conn.cursor() as cur:
                cur.executemany(postgres_sql(sql), [_plain(r) for r in rows])

        self._call(run)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self._depth:
            yield
            return
        with self._lock:
            conn = self._call(lambda c: c)
            self._depth += 1
            try:
                with conn.transaction():
                    yield
            except self._psycopg.errors.IntegrityError as exc:
                raise IntegrityConflict(_one_line(exc)) from exc
            except self._psycopg.Error as exc:
                raise DatabaseError(f"postgresql: {_one_line(exc)}") from exc
            finally:
                self._depth -= 1

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


def _plain(params: Sequence[Any]) -> list[Any]:
    # PostgreSQL compares bigint columns with booleans strictly; SQLite stored them as 0/1.
    return [int(p) if isinstance(p, bool) else p for p in params]


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]


# -- opening -------------------------------------------------------------------------


def open_database(url: str) -> Database:
    """Open (and create or migrate) the database at ``url``: ``sqlite:///PATH`` or
    ``postgresql://USER@HOST:PORT/DB`` (``postgres://`` too)."""
    from cloud_gateway.schema import migrate

    scheme = urlsplit(url).scheme
    db: Database
    if scheme == "sqlite":
        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
        if not path:
            raise ConfigError(f"bad database URL {url!r}: use sqlite:///PATH")
        db = SqliteDatabase(Path(path))
    elif scheme in ("postgresql", "postgres"):
        db = PostgresDatabase(url)
    else:
        raise ConfigError(
            f"bad database URL scheme {scheme!r}: use sqlite:///PATH or postgresql://..."
        )
    try:
        migrate(db)
    except BaseException:
        db.close()
        raise
    return db


def open_db(path: Path) -> Database:
    """The embedded SQLite database at ``path`` (created or migrated)."""
    return open_database(f"sqlite:///{path}")


def redact(url: str) -> str:
    """``url`` without its password, for logs and /readyz."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


def next_counter(db: Database, name: str, floor: int = 0, count: int = 1) -> int:
    return db.next_counter(name, floor, count)


def chunks(items: list[str], size: int = 5000) -> Iterator[list[str]]:
    """``items`` in slices for ``... in (select value from json_each(?))`` queries."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


@contextlib.contextmanager
def transaction(db: Database) -> Iterator[None]:
    with db.transaction():
        yield


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def loads(text: str | None, default: Any = None) -> Any:
    if text is None or text == "":
        return default
    return json.loads(text)
