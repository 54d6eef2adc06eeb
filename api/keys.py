"""API keys: random bearer tokens, stored as SHA-256 hashes (the token itself is shown once)."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.tables import ApiKey

TOKEN_PREFIX = "ta_"


def hash_token(token: str) -> str:
    # Tokens are 256-bit random strings, so a fast hash is enough (no dictionary to attack).
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class NewKey:
    id: str
    name: str
    owner: str
    token: str


def create_key(sessions: sessionmaker[Session], name: str, owner: str | None = None) -> NewKey:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(id="key_" + secrets.token_hex(8), name=name, owner=owner or name, token_hash=hash_token(token),
                 prefix=token[:10])
    with sessions.begin() as s:
        s.add(key)
    return NewKey(key.id, key.name, key.owner, token)


def owner_of(sessions: sessionmaker[Session], token: str) -> str | None:
    """The owner a valid, unrevoked token belongs to, else None."""
    with sessions() as s:
        key = s.scalars(select(ApiKey).where(ApiKey.token_hash == hash_token(token),
                                             ApiKey.revoked_at.is_(None))).first()
        return key.owner if key else None


class KeyCache:
    """Checked tokens (by hash) and their owners for ``ttl`` seconds; unknown tokens are not cached."""

    def __init__(self, sessions: sessionmaker[Session], ttl: float) -> None:
        self.sessions, self.ttl = sessions, ttl
        self._hits: dict[str, tuple[str, float]] = {}

    def owner(self, token: str) -> str | None:
        digest = hash_token(token)
        now = time.monotonic()
        hit = self._hits.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        owner = owner_of(self.sessions, token)
        if owner is not None and self.ttl > 0:
            if len(self._hits) > 10_000:
                self._hits.clear()
            self._hits[digest] = (owner, now + self.ttl)
        return owner

    def forget_all(self) -> None:
        self._hits.clear()


def count_keys(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        return len(s.scalars(select(ApiKey.id)).all())


def list_keys(sessions: sessionmaker[Session]) -> list[ApiKey]:
    with sessions() as s:
        return list(s.scalars(select(ApiKey).order_by(ApiKey.created_at)).all())


def revoke_key(sessions: sessionmaker[Session], key_id: str) -> bool:
    from api.tables import utcnow

    with sessions.begin() as s:
        key = s.get(ApiKey, key_id)
        if key is None or key.revoked_at is not None:
            return False
        key.revoked_at = utcnow()
        return True
