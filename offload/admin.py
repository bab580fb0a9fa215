"""Who may change what the cloud tier serves: repository load/unload need an admin.

Two credentials, either suffices (design in docs/deploy.md §6):

* a bearer token: ``--admin-token-file`` holds one token per line; callers send
  ``authorization: Bearer <token>`` (gRPC metadata or HTTP header). Only SHA-256 digests
  are kept in memory and compared in constant time.
* a client certificate: with mutual TLS on (``--tls-ca``), a peer whose verified
  certificate's subject common name is listed in ``--admin-subjects`` is an admin. Edge
  agents present certificates from the same CA, so only names listed there are admins.

With neither configured, repository control is off: every load/unload is refused.
Inference and read-only calls are not affected.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from models.errors import ConfigError, PermissionDenied, Unauthenticated

HOW = (
    "send 'authorization: Bearer <token>' (--admin-token-file) or connect with an admin "
    "client certificate (--admin-subjects)"
)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class AdminPolicy:
    """Decides whether a caller may load or unload models."""

    def __init__(self, token_digests: frozenset[bytes], subjects: frozenset[str]) -> None:
        self._digests = tuple(token_digests)
        self._subjects = subjects

    @classmethod
    def from_settings(cls, token_file: Path | None, subjects: str, mutual_tls: bool) -> AdminPolicy:
        digests: set[bytes] = set()
        if token_file is not None:
            try:
                text = Path(token_file).read_text()
            except OSError as exc:
                raise ConfigError(f"cannot read --admin-token-file {token_file}: {exc}") from exc
            for line in text.splitlines():
                token = line.strip()
                if token and not token.startswith("#"):
                    if len(token) < 16:
                        raise ConfigError(
                            f"--admin-token-file {token_file}: tokens must be at least 16 chars"
                        )
                    digests.add(_digest(token))
            if not digests:
                raise ConfigError(f"--admin-token-file {token_file} holds no token")
        names = frozenset(s.strip() for s in subjects.split(",") if s.strip())
        if names and not mutual_tls:
            raise ConfigError("--admin-subjects needs mutual TLS (--tls-cert, --tls-key, --tls-ca)")
        return cls(frozenset(digests), names)

    @property
    def enabled(self) -> bool:
        return bool(self._digests or self._subjects)

    def authorize(self, authorization: str | None, subject: str | None) -> str:
        """Who the admin is ('token' or 'cert:<CN>'); raises Unauthenticated/PermissionDenied."""
        if not self.enabled:
            raise PermissionDenied(
                "repository control is disabled on this server: start it with "
                "--admin-token-file or --admin-subjects to allow model load/unload"
            )
        if authorization:
            scheme, _, token = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated(f"authorization must be 'Bearer <token>'; {HOW}")
            presented = _digest(token.strip())
            # Compare against every digest: the time taken does not reveal which matched.
            ok = False
            for digest in self._digests:
                ok |= hmac.compare_digest(presented, digest)
            if not ok:
                raise Unauthenticated("admin token not accepted")
            return "token"
        if subject and subject in self._subjects:
            return f"cert:{subject}"
        if subject:
            raise PermissionDenied(
                f"client certificate {subject!r} may not load or unload models; {HOW}"
            )
        raise Unauthenticated(f"model load/unload needs an admin credential: {HOW}")
