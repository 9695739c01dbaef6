"""The HTTP API's roles, per endpoint, and its commands: applied, refused, audited.

A real controller (not running: no devices are polled) behind the real app, with real
storage; requests go in process through httpx's ASGI transport.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from sim import SimClock
from vpp.api import create_app
from vpp.auth import GRANTS, Permission, Role, Tokens
from vpp.config import SiteConfig
from vpp.controller import Controller
from vpp.storage import Storage

T0 = datetime(2026, 4, 15, 4, tzinfo=UTC)
LATER = (T0 + timedelta(hours=1)).isoformat()

# (method, path, body, the permission it needs)
ENDPOINTS: list[tuple[str, str, Any, Permission]] = [
    ("GET", "/api/v1/assets", None, Permission.READ_PLANT),
    ("GET", "/api/v1/pcc", None, Permission.READ_PLANT),
    ("GET", "/api/v1/trend", None, Permission.READ_PLANT),
    ("GET", "/api/v1/history?series=export", None, Permission.READ_PLANT),
    ("GET", "/api/v1/alarms", None, Permission.READ_PLANT),
    ("GET", "/api/v1/forecasts", None, Permission.READ_FORECASTS),
    ("GET", "/api/v1/schedule", None, Permission.READ_FORECASTS),
    ("GET", "/api/v1/schedules", None, Permission.READ_FORECASTS),
    ("POST", "/api/v1/commands/cap", {"export_cap_w": 40e6, "effective": LATER},
     Permission.SEND_CAP),
    ("POST", "/api/v1/commands/grid-instruction", {"instruction": {
        "kind": "demand_response", "start": LATER,
        "end": (T0 + timedelta(hours=2)).isoformat(), "export_reduction_w": 1e6}},
     Permission.SEND_CAP),
    ("POST", "/api/v1/commands/mode", {"mode": "auto"}, Permission.SET_MODE),
    ("POST", "/api/v1/alarms/pcc_meter_stale/ack", None, Permission.ACK_ALARM),
    ("GET", "/api/v1/audit", None, Permission.READ_AUDIT),
    ("GET", "/api/v1/tokens", None, Permission.MANAGE_TOKENS),
    ("POST", "/api/v1/tokens", {"name": "new-one", "role": "viewer"}, Permission.MANAGE_TOKENS),
    ("DELETE", "/api/v1/tokens/nobody", None, Permission.MANAGE_TOKENS),
]


@dataclass
class Api:
    ctrl: Controller
    http: httpx.AsyncClient
    tokens: dict[str, str]
    storage: Storage

    async def call(self, method: str, path: str, body: Any = None,
                   role: str | None = None) -> httpx.Response:
        headers = {} if role is None else {"Authorization": f"Bearer {self.tokens[role]}"}
        return await self.http.request(method, path, json=body, headers=headers)


@pytest.fixture
async def api(demo_config: SiteConfig, tmp_path: Path) -> AsyncIterator[Api]:
    storage = Storage(f"sqlite:///{tmp_path / 'vpp.sqlite'}")
    ctrl = Controller(demo_config, clock=SimClock(start=T0, speed=1.0), storage=storage)
    tokens = Tokens(storage)
    issued = {r.value: tokens.create(f"{r.value}-test", r.value, T0) for r in Role}
    app = create_app(ctrl, tokens)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://vpp") as http:
        yield Api(ctrl, http, issued, storage)
    await ctrl.close()
    storage.close()


@pytest.mark.parametrize(("method", "path", "body", "permission"), ENDPOINTS,
                         ids=[f"{m} {p.split('?')[0]}" for m, p, _, _ in ENDPOINTS])
async def test_each_role_gets_exactly_what_it_may(api: Api, method: str, path: str,
                                                  body: Any, permission: Permission) -> None:
    anonymous = await api.call(method, path, body)
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.headers["www-authenticate"] == "Bearer"
    bad = await api.http.request(method, path, json=body,
                                 headers={"Authorization": "Bearer vpp_not-a-token"})
    assert bad.status_code == 401
    for role in Role:
        r = await api.call(method, path, body, role.value)
        if permission in GRANTS[role]:
            assert r.status_code not in (401, 403), (role, r.text)
            assert r.status_code < 500, (role, r.text)
        else:
            assert r.status_code == 403, (role, r.status_code, r.text)
            assert permission.value in r.json()["detail"]


async def test_health_is_open_and_says_the_site_time_zone(api: Api) -> None:
    r = await api.call("GET", "/api/v1/health")
    assert r.status_code == 200
    body = r.json()
    assert body["timezone"] == api.ctrl.config.site.timezone
    assert body["control"]["operating_mode"] == "auto"


async def test_a_cap_is_applied_and_audited_and_a_bad_one_changes_nothing(api: Api) -> None:
    ok = await api.call("POST", "/api/v1/commands/cap",
                        {"export_cap_w": 30e6, "effective": LATER}, "grid")
    assert ok.status_code == 200, ok.text
    assert api.ctrl.export_cap_at(T0 + timedelta(hours=2)) == 30e6
    before = list(api.ctrl.instructions.caps)
    cases = [
        ({"export_cap_w": -5}, "export_cap_w: Input should be greater than 0 (got -5)"),
        ({"export_cap_w": "lots"}, "export_cap_w"),
        ({"export_cap_w": 1e12}, "above the connection's cap"),
        ({"export_cap_w": 30e6, "effective": "2026-04-15T05:00:00"}, "effective"),
        ({"export_cap_w": 30e6, "surprise": 1}, "surprise: Extra inputs are not permitted"),
        ({}, "export_cap_w: Field required"),
        ([1, 2], "the body must be a JSON object"),
    ]
    for body, reason in cases:
        r = await api.call("POST", "/api/v1/commands/cap", body, "grid")
        assert r.status_code == 422, (body, r.text)
        assert reason in r.json()["detail"], (body, r.json())
    r = await api.http.post("/api/v1/commands/cap", content=b"{not json",
                            headers={"Authorization": f"Bearer {api.tokens['grid']}"})
    assert r.status_code == 422
    assert api.ctrl.instructions.caps == before  # nothing refused changed anything
    viewer = await api.call("POST", "/api/v1/commands/cap", {"export_cap_w": 10e6}, "viewer")
    assert viewer.status_code == 403
    assert api.ctrl.instructions.caps == before
    audit = (await api.call("GET", "/api/v1/audit?limit=50", role="operator")).json()["entries"]
    assert len(audit) == len(cases) + 3  # the good one, the refusals, the viewer's try
    newest, first = audit[0], audit[-1]
    assert (newest["actor"], newest["role"], newest["ok"]) == ("viewer-test", "viewer", False)
    assert "may not send:cap" in newest["detail"]
    assert (first["actor"], first["channel"], first["action"], first["ok"]) == (
        "grid-test", "http", "cap", True)
    assert first["params"] == {"export_cap_w": 30e6, "effective": LATER}


async def test_mode_and_grid_instructions_reach_the_controller(api: Api) -> None:
    r = await api.call("POST", "/api/v1/commands/mode", {"mode": "reactive"}, "operator")
    assert r.status_code == 200, r.text
    assert api.ctrl.state.operating_mode == "reactive"
    assert r.json()["result"] == {"mode": "reactive", "previous": "auto"}
    r = await api.call("POST", "/api/v1/commands/mode", {"mode": "manual"}, "operator")
    assert r.status_code == 422
    assert "mode: Input should be 'auto' or 'reactive'" in r.json()["detail"]
    assert api.ctrl.state.operating_mode == "reactive"
    start = T0 + timedelta(hours=3)
    r = await api.call("POST", "/api/v1/commands/grid-instruction", {"instruction": {
        "kind": "demand_response", "start": start.isoformat(),
        "end": (start + timedelta(hours=1)).isoformat(), "export_reduction_w": 5e6}}, "grid")
    assert r.status_code == 200, r.text
    base = api.ctrl.config.pcc.export_cap_w
    assert api.ctrl.export_cap_at(start + timedelta(minutes=30)) == base - 5e6
    r = await api.call("POST", "/api/v1/commands/grid-instruction", {"instruction": {
        "kind": "demand_response", "start": start.isoformat(),
        "end": start.isoformat(), "export_reduction_w": 5e6}}, "grid")
    assert r.status_code == 422
    assert "must come after" in r.json()["detail"]
    r = await api.call("POST", "/api/v1/commands/grid-instruction", {"instruction": {
        "kind": "export_profile", "start": start.isoformat(), "step_s": 900,
        "export_w": [1e6, 2e6]}}, "grid")
    assert r.status_code == 200, r.text
    assert len(api.ctrl.instructions.profiles) == 1


async def test_an_alarm_is_acknowledged_by_an_operator_only(api: Api) -> None:
    api.ctrl.set_alarm("pcc_meter_stale", True, "the meter is quiet")
    listed = (await api.call("GET", "/api/v1/alarms", role="viewer")).json()["alarms"]
    assert [(a["key"], a["active"], a["acked_by"]) for a in listed] == [
        ("pcc_meter_stale", True, None)]
    assert (await api.call("POST", "/api/v1/alarms/pcc_meter_stale/ack",
                           role="viewer")).status_code == 403
    r = await api.call("POST", "/api/v1/alarms/pcc_meter_stale/ack", role="operator")
    assert r.status_code == 200, r.text
    [a] = (await api.call("GET", "/api/v1/alarms", role="viewer")).json()["alarms"]
    assert a["acked_by"] == "operator-test"
    r = await api.call("POST", "/api/v1/alarms/nothing_here/ack", role="operator")
    assert r.status_code == 404
    assert "no alarm 'nothing_here'" in r.json()["detail"]


async def test_admin_creates_a_token_shown_once_and_revokes_it(api: Api) -> None:
    r = await api.call("POST", "/api/v1/tokens", {"name": "dispatch-centre", "role": "grid"},
                       "admin")
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    listed = (await api.call("GET", "/api/v1/tokens", role="admin")).json()["tokens"]
    assert {"name": "dispatch-centre", "role": "grid"}.items() <= next(
        t for t in listed if t["name"] == "dispatch-centre").items()
    assert token not in str(listed)
    hdr = {"Authorization": f"Bearer {token}"}
    assert (await api.http.get("/api/v1/forecasts", headers=hdr)).status_code == 200
    assert (await api.call("POST", "/api/v1/tokens", {"name": "dispatch-centre",
                                                      "role": "grid"}, "admin")).status_code == 409
    assert (await api.call("DELETE", "/api/v1/tokens/dispatch-centre",
                           role="admin")).status_code == 200
    assert (await api.http.get("/api/v1/forecasts", headers=hdr)).status_code == 401
