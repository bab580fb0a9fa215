"""Per-agent identity: enrol, rotate, revoke; one credential per agent bound to its id.

``cloud-gateway fleet enrol AGENT --site SITE`` creates a random token, prints it once
and keeps only two one-way digests of it: sha256 (the REST API looks the bearer token up
by it) and mosquitto's own PBKDF2-SHA512 hash made by ``mosquitto_passwd -U`` (the broker
password file is generated from these, so the token is never stored or needed again).
Enrolling again rotates the token; ``fleet revoke`` deletes it. The agent uses the token
as its gateway bearer token and as its MQTT password (username = agent id).

Looking a token up by its sha256 is not a timing side channel worth defending: the token
has 256 bits of entropy, so an attacker can neither choose nor approach a digest.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus.topics import check_segment
from cloud_gateway.auth import token_digest
from cloud_gateway.db import Database, chunks, dumps
from models.errors import ConfigError, NotFound

#: MQTT user names that are not agents (cloud_gateway.brokerconf).
GATEWAY_MQTT_USER = "cloud-gateway"
RESERVED = frozenset({GATEWAY_MQTT_USER, "sensor", "viewer", "anonymous"})


@dataclass(frozen=True, slots=True)
class Identity:
    agent_id: str
    site: str


def mosquitto_hashes(passwords: dict[str, str]) -> dict[str, str]:
    """user -> mosquitto password-file hash, made by ``mosquitto_passwd -U`` (the
    passwords go through a 0600 temp file, never the command line)."""
    exe = shutil.which("mosquitto_passwd")
    if exe is None:
        raise ConfigError(
            "mosquitto_passwd not found: install mosquitto (Debian package 'mosquitto'); "
            "it hashes the agents' MQTT passwords"
        )
    with tempfile.TemporaryDirectory(prefix="passwd-") as tmp:
        path = Path(tmp) / "passwd"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.writelines(f"{user}:{pw}\n" for user, pw in passwords.items())
        proc = subprocess.run([exe, "-U", str(path)], capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise ConfigError(f"mosquitto_passwd -U failed: {proc.stderr.strip()[:200]}")
        out = {}
        for line in path.read_text().splitlines():
            user, sep, digest = line.partition(":")
            if sep:
                out[user] = digest
    missing = set(passwords) - set(out)
    if missing:
        raise ConfigError(f"mosquitto_passwd produced no hash for {sorted(missing)}")
    return out


class Enrolments:
    """The ``enrolments`` table; safe to use from the CLI while the server runs (SQLite)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def enrol(self, agent_id: str, site: str) -> str:
        """(Re-)enrol ``agent_id``: returns its new token; an older one stops working."""
        check_segment(agent_id, "agent id")
        check_segment(site, "site")
        if agent_id in RESERVED:
            raise ConfigError(f"{agent_id!r} is reserved for a broker user that is not an agent")
        token = secrets.token_urlsafe(32)
        mqtt_hash = mosquitto_hashes({agent_id: token})[agent_id]
        self.db.table("enrolments").upsert(
            {
                "agent_id": agent_id,
                "site": site,
                "token_sha256": token_digest(token),
                "mqtt_hash": mqtt_hash,
                "enrolled_at": time.time(),
            }
        )
        return token

    def revoke(self, agent_id: str) -> None:
        if self.find(agent_id) is None:
            raise NotFound(f"agent {agent_id!r} is not enrolled")
        self.db.table("enrolments").delete(agent_id)

    def find(self, agent_id: str) -> Identity | None:
        row = self.db.execute(
            "select agent_id, site from enrolments where agent_id = ?", [agent_id]
        ).fetchone()
        return Identity(row[0], row[1]) if row else None

    def find_many(self, agent_ids: list[str]) -> dict[str, Identity]:
        """The enrolled identities among ``agent_ids`` (one query per 5,000)."""
        out: dict[str, Identity] = {}
        for part in chunks(agent_ids):
            for agent_id, site in self.db.execute(
                "select agent_id, site from enrolments "
                "where agent_id in (select value from json_each(?))",
                [dumps(part)],
            ).fetchall():
                out[agent_id] = Identity(agent_id, site)
        return out

    def by_token_digest(self, digest: str) -> Identity | None:
        row = self.db.execute(
            "select agent_id, site from enrolments where token_sha256 = ?", [digest]
        ).fetchone()
        return Identity(row[0], row[1]) if row else None

    def count(self) -> int:
        return int(self.db.execute("select count(*) from enrolments").fetchone()[0])

    def all(self) -> list[dict[str, Any]]:
        return list(self.db.table("enrolments").rows_where(order_by="agent_id"))
