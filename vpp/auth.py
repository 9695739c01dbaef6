"""Who may do what: roles, their permissions, and bearer tokens stored hashed.

Roles (docs/api.md):

* ``viewer``: reads everything an operator sees (assets, PCC, forecasts, schedules,
  history, alarms);
* ``grid``: the grid company: reads forecasts and schedules, sends caps and grid
  instructions;
* ``operator``: a viewer who also sends caps and instructions, changes the operating
  mode and acknowledges alarms, and reads the audit log;
* ``admin``: everything, tokens included.

A token is 32 random bytes (URL-safe base64) shown once; only its SHA-256 is stored. A
digest of a high-entropy secret needs no salt or slow hash: there is nothing to guess.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vpp.storage import Storage


class Role(StrEnum):
    VIEWER = "viewer"
    GRID = "grid"
    OPERATOR = "operator"
    ADMIN = "admin"


class Permission(StrEnum):
    READ_PLANT = "read:plant"  # assets, PCC, history, trend, alarms
    READ_FORECASTS = "read:forecasts"  # forecasts and schedules
    SEND_CAP = "send:cap"  # caps and grid instructions
    SET_MODE = "set:mode"
    ACK_ALARM = "ack:alarm"
    READ_AUDIT = "read:audit"
    MANAGE_TOKENS = "manage:tokens"


GRANTS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.READ_PLANT, Permission.READ_FORECASTS}),
    Role.GRID: frozenset({Permission.READ_FORECASTS, Permission.SEND_CAP}),
    Role.OPERATOR: frozenset({Permission.READ_PLANT, Permission.READ_FORECASTS,
                              Permission.SEND_CAP, Permission.SET_MODE, Permission.ACK_ALARM,
                              Permission.READ_AUDIT}),
    Role.ADMIN: frozenset(Permission),
}


def roles_with(permission: Permission) -> list[str]:
    return [r.value for r in Role if permission in GRANTS[r]]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who sent a request or a command."""

    name: str
    role: Role

    def may(self, permission: Permission) -> bool:
        return permission in GRANTS[self.role]


class DeniedError(Exception):
    """Authentication failed (``status`` 401) or the role may not (403)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def new_token() -> str:
    return "vpp_" + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise ValueError(f"role {value!r} is not one of {[r.value for r in Role]}") from None


class TokenCache:
    """Digest → principal, remembered for ``ttl_s`` wall seconds so that a request costs no
    database read; a revoked token stops working within ``ttl_s``."""

    def __init__(self, ttl_s: float = 5.0) -> None:
        self.ttl_s = ttl_s
        self._seen: dict[str, tuple[float, Principal | None]] = {}

    def get(self, digest: str) -> tuple[bool, Principal | None]:
        hit = self._seen.get(digest)
        if hit is None or time.monotonic() - hit[0] > self.ttl_s:
            return False, None
        return True, hit[1]

    def put(self, digest: str, principal: Principal | None) -> None:
        if len(self._seen) > 10_000:  # a flood of made-up tokens does not grow memory
            self._seen.clear()
        self._seen[digest] = (time.monotonic(), principal)

    def clear(self) -> None:
        self._seen.clear()


def authorize(principal: Principal | None, permission: Permission) -> Principal:
    """The principal, if it may; else :class:`DeniedError` with the reason."""
    if principal is None:
        raise DeniedError(401, "a valid bearer token is needed (Authorization: Bearer <token>)")
    if not principal.may(permission):
        raise DeniedError(403, f"role {principal.role.value} may not {permission.value}; roles "
                          f"that may: {roles_with(permission)}")
    return principal


class Tokens:
    """Tokens in the controller's database: created (shown once), looked up, revoked."""

    def __init__(self, storage: Storage, *, ttl_s: float = 5.0) -> None:
        self.storage = storage
        self.cache = TokenCache(ttl_s)

    def create(self, name: str, role: str, now: datetime) -> str:
        """A new token for ``name`` with ``role``: returned once, stored as its digest."""
        r = parse_role(role)
        if not name or len(name) > 64 or not name.isprintable():
            raise ValueError(f"token name {name!r}: give 1 to 64 printable characters")
        token = new_token()
        self.storage.create_token(name, r.value, token_digest(token), now)
        return token

    def revoke(self, name: str, now: datetime) -> bool:
        done = self.storage.revoke_token(name, now)
        self.cache.clear()
        return done

    async def principal(self, token: str | None) -> Principal | None:
        """Who holds ``token`` (None: nobody, or revoked)."""
        if not token:
            return None
        digest = token_digest(token)
        hit, who = self.cache.get(digest)
        if hit:
            return who
        row = await asyncio.to_thread(self.storage.token_by_digest, digest)
        who = None if row is None else Principal(name=row[0], role=Role(row[1]))
        self.cache.put(digest, who)
        return who
