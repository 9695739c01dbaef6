"""HTTP API (FastAPI) under ``/api/v1``, with Prometheus ``/metrics`` and the operator
console (``/console/``) on the same server.

Every endpoint but ``/api/v1/health`` needs a bearer token whose role grants it
(:mod:`vpp.auth`; docs/api.md has the table). Commands go through :class:`vpp.commands.Commands`
(validated, authorised, applied, audited) exactly as they do over MQTT.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Generator
from datetime import datetime, timedelta
from importlib.resources import files
from typing import Annotated, Any, Literal

import pandas as pd
import uvicorn
from fastapi import Body, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from vpp import __version__
from vpp.auth import DeniedError, Permission, Principal, Role, Tokens, authorize, roles_with
from vpp.commands import SPECS, Commands, Outcome
from vpp.controller import Controller
from vpp.dispatch import schedule_payload
from vpp.efile import forecast_efile
from vpp.jsonutil import jsonable

RESAMPLE = {"raw": None, "1min": "1min", "5min": "5min", "15min": "15min", "1h": "1h"}
MAX_HISTORY = timedelta(days=31)
# the stored resolution each resampling reads (raw samples are kept 14 days, 1-minute
# buckets 180, 15-minute ones 10 years: vpp.storage.KEEP_DAYS)
STORED_RESOLUTION = {"raw": "raw", "1min": "1min", "5min": "1min", "15min": "15min",
                     "1h": "15min"}


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema with its ``$defs`` put in place (for a request body in OpenAPI)."""
    defs = schema.pop("$defs", {})

    def walk(x: Any) -> Any:
        if isinstance(x, dict):
            if "$ref" in x:
                return walk(defs[x["$ref"].rsplit("/", 1)[-1]])
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    return walk(schema)  # type: ignore[no-any-return]


BEARER = HTTPBearer(auto_error=False, description="a token from `vpp token create`")


async def _principal(request: Request, cred: Annotated[
        HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> Principal | None:
    tokens: Tokens | None = request.app.state.tokens
    return None if tokens is None or cred is None else await tokens.principal(cred.credentials)


Who = Annotated[Principal | None, Depends(_principal)]


class TokenRequest(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    role: Role


def create_app(ctrl: Controller, tokens: Tokens | None = None) -> FastAPI:
    """The API of one controller; ``tokens`` None (no storage): only health answers."""
    app = FastAPI(title="County VPP controller", version=__version__,
                  openapi_url="/api/v1/openapi.json", docs_url="/api/v1/docs", redoc_url=None)
    cfg = ctrl.config
    commands = Commands(ctrl)
    app.state.tokens = tokens
    def need(permission: Permission) -> Callable[..., Awaitable[Principal]]:
        async def check(p: Who) -> Principal:
            try:
                return authorize(p, permission)
            except DeniedError as exc:
                raise HTTPException(exc.status, exc.reason, headers={
                    "WWW-Authenticate": "Bearer"} if exc.status == 401 else None) from None
        return check

    plant = [Depends(need(Permission.READ_PLANT))]
    forecast_reader = [Depends(need(Permission.READ_FORECASTS))]

    def answer(out: Outcome) -> JSONResponse:
        if not out.ok:
            return JSONResponse({"detail": out.detail, "audit_id": out.audit_id},
                                status_code=out.status, headers={
                                    "WWW-Authenticate": "Bearer"} if out.status == 401 else None)
        return JSONResponse(jsonable({"ok": True, "detail": out.detail, "result": out.result,
                                      "audit_id": out.audit_id}))

    if ctrl.metrics is not None:
        metrics = ctrl.metrics

        @app.get("/metrics", include_in_schema=False)
        async def prometheus() -> Response:
            return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

        @app.middleware("http")
        async def count(request: Request, call_next: Any) -> Response:
            response: Response = await call_next(request)
            if request.url.path.startswith("/api/"):
                metrics.api_requests.labels(cfg.site.id, str(response.status_code)).inc()
            return response

    @app.get("/api/v1/health", summary="Is the controller running, and how well")
    async def health() -> JSONResponse:
        st = ctrl.state
        devices = {a: d.health.value for a, d in ctrl.devices.items()}
        solve = st.last_solve
        if st.control_steps == 0:
            status = "starting"
        elif st.export_w is None or any(h != "online" for h in devices.values()) or (
                solve is not None and not solve.status.usable) or st.plan_source in (
                "last-good", "rule-based"):
            status = "degraded"
        else:
            status = "ok"
        return JSONResponse(jsonable({
            "status": status, "site": cfg.site.id, "version": __version__,
            "time": ctrl.clock.now(), "timezone": cfg.site.timezone, "devices": devices,
            "control": {"mode": st.command.mode.value if st.command else None,
                        "operating_mode": st.operating_mode,
                        "steps": st.control_steps, "last_step_at": st.last_step_at,
                        "interval_s": ctrl.control_interval_s,
                        "fallback_steps": st.fallback_steps},
            "pcc": {"export_w": st.export_w, "export_cap_w": st.export_cap_w,
                    "connection_cap_w": cfg.pcc.export_cap_w},
            "dispatch": None if solve is None else {
                "status": solve.status.value, "solver": solve.solver,
                "solve_time_s": solve.solve_time_s, "created_at": solve.created_at,
                "plan_source": st.plan_source, "fallback_reason": st.plan_fallback_reason},
            "mqtt": None if ctrl.mqtt is None else {
                "connected": ctrl.mqtt.connected, "buffered": ctrl.mqtt.buffered,
                "dropped": ctrl.mqtt.dropped},
        }))

    @app.get("/api/v1/assets", summary="Every asset with its ratings and live values",
             dependencies=plant)
    async def assets() -> JSONResponse:
        out = []
        for a in cfg.assets:
            dev = ctrl.devices[a.id]
            ratings = a.model_dump(exclude={"id", "kind", "profile", "host", "port", "unit_id"})
            out.append({
                "id": a.id, "kind": a.kind, "profile": a.profile,
                "endpoint": {"host": a.host, "port": a.port, "unit_id": a.unit_id},
                "ratings": ratings, "health": dev.health.value,
                "capabilities": sorted(c.value for c in dev.profile.capabilities),
                "points": {n: {"value": s.value, "unit": s.unit, "quality": s.quality.value,
                               "ts": s.ts} for n, s in dev.latest.items()},
            })
        return JSONResponse(jsonable(out))

    @app.get("/api/v1/forecasts", summary="The latest forecast of each series, or of one; "
             "or the vintage in force at a time ('as issued at T'), in JSON or CSV",
             dependencies=forecast_reader)
    async def forecasts(
        series: Annotated[str | None, Query(description="pv/wind asset id or 'load'")] = None,
        issued_at: Annotated[datetime | None, Query(
            description="ISO 8601 with its UTC offset: the last forecast of `horizon` "
                        "issued at or before it, as stored")] = None,
        horizon: Annotated[Literal["ultra-short", "short"], Query(
            description="the product, for `issued_at`")] = "ultra-short",
        format: Annotated[Literal["json", "csv", "efile"], Query(
            description="csv, or efile: the E-language file of Q/GDW 215 (docs/api.md)")
                          ] = "json",
    ) -> Any:
        if series is not None and series not in ctrl.forecasters:
            raise HTTPException(404, f"unknown series {series!r}; series are "
                                     f"{sorted(ctrl.forecasters)}")
        if issued_at is not None:
            return await _vintage(series, issued_at, horizon, format)
        fcs = ctrl.state.forecasts
        chosen = {k: v for k, v in fcs.items() if series is None or k == series}
        if format != "json":
            if series is None:
                raise HTTPException(422, f"format={format} needs a series")
            if series not in chosen:
                raise HTTPException(404, f"no forecast of {series} issued yet")
            f = chosen[series]
            return _export(f.to_frame(), series, f.issued_at, f.model, f.horizon, format)
        return JSONResponse(jsonable({k: {
            "series": k, "kind": f.kind, "issued_at": f.issued_at, "model": f.model,
            "horizon": f.horizon, "step_s": cfg.forecasting.step_s,
            "index": [t.isoformat() for t in f.index],
            "quantiles_w": {f"p{round(q * 100):02d}": v for q, v in f.quantiles.items()},
        } for k, f in chosen.items()}))

    async def _vintage(series: str | None, issued_at: datetime, horizon: str,
                       fmt: str) -> Response:
        if issued_at.tzinfo is None:
            raise HTTPException(422, f"issued_at {issued_at.isoformat()} has no UTC offset; "
                                     "give one, e.g. 2026-04-15T08:00:00+08:00")
        if series is None:
            raise HTTPException(422, "issued_at needs a series")
        if ctrl.storage is None:
            raise HTTPException(503, "no storage: forecast vintages are not kept")
        df = await asyncio.to_thread(ctrl.storage.read_forecast, series, issued_at, horizon)
        if df.empty:
            raise HTTPException(404, f"no {horizon} forecast of {series} issued at or before "
                                     f"{issued_at.isoformat()}")
        frame = df.rename(columns={q: f"p{round(q * 100):02d}_w" for q in df.columns})
        if fmt != "json":
            return _export(frame, series, df.attrs["issued_at"], df.attrs["model"], horizon,
                           fmt)
        return JSONResponse(jsonable({
            "series": series, "horizon": horizon, "issued_at": df.attrs["issued_at"],
            "model": df.attrs["model"], "step_s": cfg.forecasting.step_s,
            "index": [t.isoformat() for t in frame.index],
            "quantiles_w": {c.removesuffix("_w"): frame[c].to_numpy() for c in frame.columns},
        }))

    def _export(frame: pd.DataFrame, series: str, issued_at: datetime, model: str,
                horizon: str, fmt: str) -> Response:
        name = f"{series}-{horizon}-{issued_at.strftime('%Y%m%dT%H%M%SZ')}"
        if fmt == "efile":
            text = forecast_efile(site=cfg.site.id, series=series, horizon=horizon,
                                  issued_at=issued_at, frame=frame,
                                  timezone=cfg.site.timezone, step_s=cfg.forecasting.step_s,
                                  capacity_w=ctrl.site_forecasts.capacity_w.get(series, 0.0))
            return Response(text, media_type="text/plain; charset=utf-8", headers={
                "Content-Disposition": f'attachment; filename="{name}.txt"'})
        out = frame.copy()
        out.index = [t.isoformat() for t in out.index]
        out.index.name = "valid_time"
        head = (f"# series={series} horizon={horizon} issued_at={issued_at.isoformat()} "
                f"model={model} unit=W step_s={cfg.forecasting.step_s}\n")
        return Response(head + out.to_csv(float_format="%.1f"), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})

    @app.get("/api/v1/schedule", summary="The plan in force, with its solve status",
             dependencies=forecast_reader)
    async def schedule() -> Any:
        sch = ctrl.state.schedule
        if sch is None:
            last = ctrl.state.last_solve
            detail = "no plan yet" if last is None else f"no usable plan: {last.status.value}"
            raise HTTPException(404, detail)
        body = schedule_payload(sch)
        body["index"] = [t.isoformat() for t in sch.index]
        return JSONResponse(jsonable(body))

    def _window(since: datetime | None, until: datetime | None,
                default: timedelta) -> tuple[datetime, datetime]:
        for name, t in (("since", since), ("until", until)):
            if t is not None and t.tzinfo is None:
                raise HTTPException(422, f"{name} {t.isoformat()} has no UTC offset; give "
                                         "one, e.g. 2026-04-15T08:00:00+08:00")
        hi = until or ctrl.clock.now()
        lo = since or hi - default
        if not lo < hi:
            raise HTTPException(422, f"since {lo.isoformat()} must come before until "
                                     f"{hi.isoformat()}")
        if hi - lo > MAX_HISTORY:
            raise HTTPException(422, f"the window {hi - lo} is longer than {MAX_HISTORY}")
        return lo, hi

    def _storage() -> Any:
        if ctrl.storage is None:
            raise HTTPException(503, "no storage: history is not kept")
        return ctrl.storage

    @app.get("/api/v1/schedules", summary="Plans and failed solves made in a window, newest "
             "first, each with its inputs and status", dependencies=forecast_reader)
    async def schedules(
        since: Annotated[datetime | None, Query(description="ISO 8601 with offset; "
                                                "default: a day before `until`")] = None,
        until: Annotated[datetime | None, Query(description="default: now")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> JSONResponse:
        lo, hi = _window(since, until, timedelta(days=1))
        rows = await asyncio.to_thread(_storage().read_schedules, lo, hi, limit=limit)
        return JSONResponse(jsonable({"since": lo, "until": hi, "schedules": rows}))

    @app.get("/api/v1/pcc", summary="The point of common coupling: export, cap, enforcement",
             dependencies=plant)
    async def pcc() -> JSONResponse:
        st, now = ctrl.state, ctrl.clock.now()
        cmd = st.command
        return JSONResponse(jsonable({
            "ts": st.last_step_at, "export_w": st.export_w, "export_cap_w": st.export_cap_w,
            "connection_cap_w": cfg.pcc.export_cap_w, "import_limit_w": cfg.pcc.import_limit_w,
            "lowest_cap_ahead_w": ctrl.lowest_cap_w(),
            "cap_changes": [{"at": t, "export_cap_w": c}
                            for t, c in ctrl.instructions.changes_after(now)],
            "enforcement": None if cmd is None else {
                "mode": cmd.mode.value, "worst_export_w": cmd.worst_export_w,
                "target_w": cmd.target_w, "notes": cmd.notes},
            "operating_mode": st.operating_mode,
        }))

    @app.get("/api/v1/history", summary="A measured series over a window, resampled (means)",
             dependencies=plant)
    async def history(
        series: Annotated[str, Query(
            description="`<asset>.<point>` (stored telemetry, e.g. pv1.active_power_w), or "
                        "an interval-mean series: a pv/wind asset id, `load` or `export`")],
        since: Annotated[datetime | None, Query(description="default: 6 h before until")] = None,
        until: Annotated[datetime | None, Query(description="default: now")] = None,
        resample: Annotated[Literal["raw", "1min", "5min", "15min", "1h"], Query(
            description="the mean over each interval; raw: as stored")] = "15min",
    ) -> JSONResponse:
        lo, hi = _window(since, until, timedelta(hours=6))
        st = _storage()
        if "." in series:
            asset, point = series.split(".", 1)
            known = {a.id for a in cfg.assets}
            if asset not in known:
                raise HTTPException(404, f"unknown asset {asset!r}; assets are {sorted(known)}")
            s = await asyncio.to_thread(st.read_telemetry, asset, point, lo, hi,
                                        STORED_RESOLUTION[resample])
        else:
            names = sorted({*ctrl.forecasters, "export"})
            if series not in names:
                raise HTTPException(404, f"unknown series {series!r}; give <asset>.<point> or "
                                         f"one of {names}")
            s = await asyncio.to_thread(st.read_interval_means, series, lo)
            s = s[s.index < hi]
        rule = RESAMPLE[resample]
        if rule is not None and len(s):
            s = s.resample(rule).mean()
        return JSONResponse(jsonable({
            "series": series, "since": lo, "until": hi, "resample": resample,
            "ts": [t.isoformat() for t in s.index], "values": s.to_numpy()}))

    @app.get("/api/v1/trend", summary="The last hours at a coarse step: PCC export, cap, "
             "plan, uncontrolled export, curtailment, SOC (the console's charts)",
             dependencies=plant)
    async def trend(hours: Annotated[float, Query(gt=0, le=24)] = 6.0) -> JSONResponse:
        now = ctrl.clock.now()
        body = ctrl.trend.last_hours(now, hours)
        since = now - timedelta(hours=max(hours, 24.0))
        actual = {}
        for name in [*ctrl.forecasters, "export"]:
            s = ctrl.history.series(name)
            s = s[s.index >= since] if len(s) else s
            actual[name] = {"ts": [t.isoformat() for t in s.index], "value_w": s.to_numpy()}
        return JSONResponse(jsonable({"timezone": cfg.site.timezone, **body,
                                      "actual_w": actual}))

    @app.get("/api/v1/alarms", summary="Active alarms, and cleared ones not yet acknowledged",
             dependencies=plant)
    async def alarms() -> JSONResponse:
        return JSONResponse(jsonable({"alarms": [a.as_dict() for a in ctrl.alarms.listed()]}))

    @app.post("/api/v1/alarms/{key}/ack", summary="Acknowledge an alarm (operator)")
    async def ack(key: Annotated[str, Path(max_length=96)],
                  p: Who) -> JSONResponse:
        return answer(await commands.execute(p, "http", "alarm-ack", {"alarm": key}))

    def command_route(action: str) -> None:
        spec = SPECS[action]

        async def run(request: Request, p: Who
                      ) -> JSONResponse:
            try:
                body = await request.json()
            except ValueError:
                body = None
            return answer(await commands.execute(p, "http", action, body))

        roles = roles_with(spec.permission)
        app.post(f"/api/v1/commands/{action}", summary=f"Command: {action} (roles {roles})",
                 openapi_extra={"requestBody": {"required": True, "content": {
                     "application/json": {"schema": _inline(spec.body.model_json_schema())}}}},
                 responses={401: {"description": "no valid token"},
                            403: {"description": "the role may not"},
                            422: {"description": "the body is not valid: the reason names "
                                                 "the field"}})(run)

    for action in SPECS:
        if action != "alarm-ack":
            command_route(action)

    @app.get("/api/v1/audit", summary="The audit log: every command with who, when, what and "
             "the result, newest first", dependencies=[Depends(need(Permission.READ_AUDIT))])
    async def audit(limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                    since: Annotated[datetime | None, Query()] = None) -> JSONResponse:
        if since is not None and since.tzinfo is None:
            raise HTTPException(422, f"since {since.isoformat()} has no UTC offset")
        rows = await asyncio.to_thread(_storage().read_audit, limit=limit, since=since)
        return JSONResponse(jsonable({"entries": rows}))

    admin = [Depends(need(Permission.MANAGE_TOKENS))]

    @app.get("/api/v1/tokens", summary="Tokens by name and role (never the secrets)",
             dependencies=admin)
    async def list_tokens() -> JSONResponse:
        return JSONResponse(jsonable({"tokens": await asyncio.to_thread(
            _storage().list_tokens)}))

    @app.post("/api/v1/tokens", summary="A new token, shown once in the answer",
              dependencies=admin, status_code=201)
    async def create_token(req: Annotated[TokenRequest, Body()]) -> JSONResponse:
        assert tokens is not None
        try:
            token = await asyncio.to_thread(tokens.create, req.name, req.role.value,
                                            ctrl.clock.now())
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        return JSONResponse({"name": req.name, "role": req.role.value, "token": token},
                            status_code=201)

    @app.delete("/api/v1/tokens/{name}", summary="Revoke a token", dependencies=admin)
    async def revoke_token(name: Annotated[str, Path(max_length=64)]) -> JSONResponse:
        assert tokens is not None
        if not await asyncio.to_thread(tokens.revoke, name, ctrl.clock.now()):
            raise HTTPException(404, f"no live token named {name!r}")
        return JSONResponse({"name": name, "revoked": True})

    console = files("vpp") / "console"
    if console.is_dir():
        app.mount("/console", StaticFiles(directory=str(console), html=True), name="console")

        @app.get("/", include_in_schema=False)
        async def root() -> RedirectResponse:
            return RedirectResponse("/console/")

    return app


class _QuietServer(uvicorn.Server):
    """Uvicorn inside our own loop: the process, not the API server, owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class ApiServer:
    """Serves the app on host:port (0: any free port) inside the running event loop."""

    def __init__(self, app: FastAPI, *, host: str, port: int) -> None:
        self.host = host
        self._server = _QuietServer(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                   lifespan="off", access_log=False))
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(), name="vpp.api")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises the bind error
                raise RuntimeError("API server stopped during start-up")
            await asyncio.sleep(0.01)

    @property
    def port(self) -> int:
        return int(self._server.servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
