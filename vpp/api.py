"""HTTP API (FastAPI) under ``/api/v1``, with Prometheus ``/metrics`` on the same server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator
from datetime import datetime
from typing import Annotated, Any, Literal

import pandas as pd
import uvicorn
from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from vpp import __version__
from vpp.controller import Controller
from vpp.dispatch import schedule_payload
from vpp.efile import forecast_efile
from vpp.jsonutil import jsonable


def create_app(ctrl: Controller) -> FastAPI:
    """The API of one controller."""
    app = FastAPI(title="County VPP controller", version=__version__,
                  openapi_url="/api/v1/openapi.json", docs_url="/api/v1/docs", redoc_url=None)
    cfg = ctrl.config

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
            "time": ctrl.clock.now(), "devices": devices,
            "control": {"mode": st.command.mode.value if st.command else None,
                        "steps": st.control_steps, "last_step_at": st.last_step_at,
                        "interval_s": ctrl.control_interval_s,
                        "fallback_steps": st.fallback_steps},
            "pcc": {"export_w": st.export_w, "export_cap_w": cfg.pcc.export_cap_w},
            "dispatch": None if solve is None else {
                "status": solve.status.value, "solver": solve.solver,
                "solve_time_s": solve.solve_time_s, "created_at": solve.created_at,
                "plan_source": st.plan_source, "fallback_reason": st.plan_fallback_reason},
            "mqtt": None if ctrl.mqtt is None else {
                "connected": ctrl.mqtt.connected, "buffered": ctrl.mqtt.buffered,
                "dropped": ctrl.mqtt.dropped},
        }))

    @app.get("/api/v1/assets", summary="Every asset with its ratings and live values")
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
             "or the vintage in force at a time ('as issued at T'), in JSON or CSV")
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

    @app.get("/api/v1/schedule", summary="The plan in force, with its solve status")
    async def schedule() -> Any:
        sch = ctrl.state.schedule
        if sch is None:
            last = ctrl.state.last_solve
            detail = "no plan yet" if last is None else f"no usable plan: {last.status.value}"
            raise HTTPException(503, detail)
        body = schedule_payload(sch)
        body["index"] = [t.isoformat() for t in sch.index]
        return JSONResponse(jsonable(body))

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
