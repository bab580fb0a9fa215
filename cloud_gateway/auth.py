"""Bearer tokens and roles: admin > agent > viewer.

Tokens are kept only as sha256 digests and compared with ``hmac.compare_digest`` so
neither the token file nor a timing side channel gives a token away.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from aiohttp import web

from models.errors import ConfigError, PermissionDenied, Unauthenticated


class Role(IntEnum):
    """Roles are ordered: a higher role may do everything a lower one may."""

    VIEWER = 1
    AGENT = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ConfigError(f"unknown role {text!r}: use admin, agent or viewer") from None


_HEX = re.compile(r"^[0-9a-f]{64}$")


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    role: Role
    digest_prefix: str  # enough to tell tokens apart in logs, useless to an attacker
    #: Set for an enrolled agent's own token (cloud_gateway.enrolment): the only
    #: identity that may report for this agent id.
    agent_id: str | None = None
    site: str | None = None


class TokenStore:
    """Maps token digests to roles."""

    def __init__(self) -> None:
        self._digests: list[tuple[bytes, Role]] = []

    def add(self, role: Role, token: str | None = None, *, digest: str | None = None) -> None:
        if digest is None:
            if not token:
                raise ConfigError("empty token")
            digest = token_digest(token)
        if not _HEX.fullmatch(digest):
            raise ConfigError("token digest must be 64 lowercase hex characters")
        self._digests.append((bytes.fromhex(digest), role))

    def load_file(self, path: Path) -> None:
        """Lines ``ROLE TOKEN`` or ``ROLE sha256:HEX``; blank lines and ``#`` comments skipped."""
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read tokens file {path}: {exc}") from exc
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ConfigError(f"{path}:{lineno}: expected 'ROLE TOKEN'")
            role = Role.parse(parts[0])
            if parts[1].startswith("sha256:"):
                self.add(role, digest=parts[1][7:].lower())
            else:
                self.add(role, parts[1])

    def __len__(self) -> int:
        return len(self._digests)

    def authenticate(
        self, header: str | None, enrolled: Callable[[str], Any] | None = None
    ) -> Principal:
        """``Authorization`` header value -> principal, or Unauthenticated.

        ``enrolled(digest_hex)`` looks up per-agent tokens (an object with ``agent_id``
        and ``site``, or None) after the static ones.
        """
        if not header:
            raise Unauthenticated("missing bearer token (Authorization: Bearer <token>)")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("Authorization header must be 'Bearer <token>'")
        digest = bytes.fromhex(token_digest(token.strip()))
        found: Role | None = None
        # Compare against every entry so the time taken does not reveal which one matched.
        for known, role in self._digests:
            if hmac.compare_digest(known, digest) and (found is None or role > found):
                found = role
        if found is None and enrolled is not None:
            identity = enrolled(digest.hex())
            if identity is not None:
                return Principal(Role.AGENT, digest.hex()[:8], identity.agent_id, identity.site)
        if found is None:
            raise Unauthenticated("unknown bearer token")
        return Principal(found, digest.hex()[:8])


#: Where the app stores the authenticated caller for the handlers.
PRINCIPAL = web.RequestKey("principal", Principal)


def require(principal: Principal, role: Role) -> None:
    if principal.role < role:
        raise PermissionDenied(f"this operation needs the {role.label} role")
