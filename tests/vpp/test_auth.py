"""Roles, tokens stored hashed, the audit log and alarm state: on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from vpp.alarms import AlarmBook, Severity, UnknownAlarmError
from vpp.auth import (
    GRANTS,
    DeniedError,
    Permission,
    Principal,
    Role,
    Tokens,
    authorize,
    token_digest,
)
from vpp.storage import Storage, tokens

T0 = datetime(2026, 4, 15, 4, tzinfo=UTC)


def test_the_roles_grant_what_the_interfaces_issue_sets() -> None:
    g = GRANTS
    assert Permission.READ_PLANT not in g[Role.GRID]  # the grid company reads forecasts only
    assert {Permission.READ_FORECASTS, Permission.SEND_CAP} <= g[Role.GRID]
    assert Permission.SEND_CAP not in g[Role.VIEWER]
    assert {Permission.SET_MODE, Permission.ACK_ALARM} <= g[Role.OPERATOR]
    assert Permission.MANAGE_TOKENS not in g[Role.OPERATOR]
    assert g[Role.ADMIN] == frozenset(Permission)
    with pytest.raises(DeniedError) as e401:
        authorize(None, Permission.READ_PLANT)
    assert e401.value.status == 401
    with pytest.raises(DeniedError) as e403:
        authorize(Principal("g", Role.GRID), Permission.SET_MODE)
    assert e403.value.status == 403
    assert "operator" in e403.value.reason and "grid" in e403.value.reason


async def test_a_token_is_stored_as_its_digest_and_stops_when_revoked(storage: Storage) -> None:
    name = f"grid-{uuid.uuid4().hex[:8]}"
    t = Tokens(storage, ttl_s=0.0)
    token = t.create(name, "grid", T0)
    with storage.engine.connect() as c:
        rows = c.execute(sa.select(tokens.c.digest).where(tokens.c.name == name)).all()
        every = " ".join(str(v) for r in c.execute(sa.select(tokens)).all() for v in r)
    assert rows == [(token_digest(token),)]
    assert token not in every  # the secret itself is nowhere in the table
    who = await t.principal(token)
    assert who == Principal(name, Role.GRID)
    assert await t.principal(token + "x") is None
    assert await t.principal("") is None
    with pytest.raises(ValueError, match="exists"):
        t.create(name, "admin", T0)
    with pytest.raises(ValueError, match="role 'root'"):
        t.create(f"x-{name}", "root", T0)
    assert t.revoke(name, T0)
    assert await t.principal(token) is None
    assert not t.revoke(name, T0)
    again = t.create(name, "viewer", T0)  # a revoked name can be issued anew (rotation)
    assert (await t.principal(again)) == Principal(name, Role.VIEWER)
    assert await t.principal(token) is None


async def test_a_cached_token_is_refused_once_revoked_and_the_cache_expires(
        storage: Storage) -> None:
    name = f"op-{uuid.uuid4().hex[:8]}"
    t = Tokens(storage, ttl_s=3600.0)
    token = t.create(name, "operator", T0)
    assert await t.principal(token) is not None
    assert t.revoke(name, T0)  # revoking through this store drops its cache at once
    assert await t.principal(token) is None


def test_the_audit_log_keeps_every_command_in_order(storage: Storage) -> None:
    actor = f"op-{uuid.uuid4().hex[:8]}"
    ids = [storage.write_audit(ts=T0 + timedelta(seconds=i), actor=actor, role="operator",
                               channel="mqtt", action="cap",
                               params={"export_cap_w": 1e6 * i, "when": T0}, ok=i % 2 == 0,
                               detail=f"#{i}") for i in range(3)]
    assert ids == sorted(ids)
    rows = [r for r in storage.read_audit(limit=1000) if r["actor"] == actor]
    assert [r["detail"] for r in rows] == ["#2", "#1", "#0"]  # newest first
    assert rows[0]["params"] == {"export_cap_w": 2e6, "when": T0.isoformat()}
    assert [r["ok"] for r in rows] == [True, False, True]
    assert rows[0]["ts"] == T0 + timedelta(seconds=2)


def test_alarm_state_survives_in_storage(storage: Storage) -> None:
    book = AlarmBook()
    key = f"device_offline:{uuid.uuid4().hex[:6]}"
    a = book.set(key, True, T0, message="gone", severity=Severity.CRITICAL)
    assert a is not None
    storage.write_alarm(a.as_dict())
    b = book.set(key, False, T0 + timedelta(minutes=1))
    assert b is not None
    storage.write_alarm(b.as_dict())
    again = AlarmBook()
    again.load([r for r in storage.read_alarms() if r["key"] == key])
    [kept] = again.listed()
    assert (kept.key, kept.active, kept.severity) == (key, False, Severity.CRITICAL)
    assert kept.cleared_at == T0 + timedelta(minutes=1)


def test_an_alarm_stays_listed_until_seen_and_a_new_raise_needs_a_new_ack() -> None:
    book = AlarmBook()
    assert book.set("pcc_meter_stale", True, T0, message="meter") is not None
    assert book.set("pcc_meter_stale", True, T0 + timedelta(seconds=1)) is None  # no change
    assert book.set("pcc_meter_stale", False, T0 + timedelta(seconds=2)) is not None
    assert [a.key for a in book.listed()] == ["pcc_meter_stale"]  # cleared, not yet seen
    acked = book.acknowledge("pcc_meter_stale", "op", T0 + timedelta(seconds=3))
    assert acked.acked_by == "op"
    assert book.listed() == []  # seen and gone
    book.set("pcc_meter_stale", True, T0 + timedelta(seconds=4))
    [again] = book.listed()
    assert again.active and again.acked_by is None
    book.acknowledge("pcc_meter_stale", "op", T0 + timedelta(seconds=5))
    [still] = book.listed()  # acknowledged but still active: listed until it clears
    assert still.active and still.acked_by == "op"
    assert book.set("pcc_meter_stale", False, T0 + timedelta(seconds=6)) is not None
    assert book.listed() == []
    with pytest.raises(UnknownAlarmError, match="no alarm 'nope'"):
        book.acknowledge("nope", "op", T0)
