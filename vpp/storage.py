"""Storage: SQLite (WAL) by default, PostgreSQL in production, one schema (SQLAlchemy Core).

Blocking calls: the controller runs them in its storage executor, never on the event loop.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from drivers.telemetry import Sample
from forecasting.models import Forecast
from vpp.dispatch import Schedule, schedule_payload
from vpp.jsonutil import jsonable

metadata = sa.MetaData()

telemetry = sa.Table(
    "telemetry", metadata,
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
    sa.Column("asset_id", sa.String(64), nullable=False),
    sa.Column("point", sa.String(64), nullable=False),
    sa.Column("value", sa.Float, nullable=True),
    sa.Column("unit", sa.String(16), nullable=False),
    sa.Column("quality", sa.String(8), nullable=False),
    sa.Index("ix_telemetry_asset_ts", "asset_id", "point", "ts"),
)

interval_means = sa.Table(
    "interval_means", metadata,
    sa.Column("ts", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("series", sa.String(64), primary_key=True),
    sa.Column("value_w", sa.Float, nullable=False),
)

# every issued forecast (a vintage): series, horizon, issue time, model and quantiles.
# (Named anew when the horizon was added: a database of an older version keeps its
# ``forecasts`` table untouched.)
forecasts = sa.Table(
    "forecast_vintages", metadata,
    sa.Column("issued_at", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("series", sa.String(64), primary_key=True),
    sa.Column("horizon", sa.String(16), primary_key=True),
    sa.Column("target_ts", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("quantile", sa.Float, primary_key=True),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("value_w", sa.Float, nullable=False),
)

schedules = sa.Table(
    "schedules", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("start", sa.DateTime(timezone=True), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("solver", sa.String(32), nullable=False),
    sa.Column("solve_time_s", sa.Float, nullable=False),
    sa.Column("objective", sa.Float, nullable=True),
    sa.Column("plan", sa.Text, nullable=False),
)


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


class Storage:
    """The controller's database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = sa.create_engine(url, future=True, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            @sa.event.listens_for(self.engine, "connect")
            def _wal(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()
        metadata.create_all(self.engine)

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    def write_telemetry(self, samples: Sequence[Sample]) -> int:
        rows = [{"ts": s.ts, "asset_id": s.asset_id, "point": s.point, "value": s.value,
                 "unit": s.unit, "quality": s.quality.value} for s in samples]
        if rows:
            with self.engine.begin() as c:
                c.execute(telemetry.insert(), rows)
        return len(rows)

    def write_interval_means(self, rows: Sequence[tuple[str, datetime, float]]) -> None:
        if not rows:
            return
        with self.engine.begin() as c:
            for series, ts, _ in rows:
                c.execute(interval_means.delete().where(
                    (interval_means.c.series == series) & (interval_means.c.ts == ts)))
            c.execute(interval_means.insert(),
                      [{"series": s, "ts": t, "value_w": v} for s, t, v in rows])

    def read_interval_means(self, series: str, since: datetime) -> pd.Series:
        q = (sa.select(interval_means.c.ts, interval_means.c.value_w)
             .where((interval_means.c.series == series) & (interval_means.c.ts >= since))
             .order_by(interval_means.c.ts))
        with self.engine.connect() as c:
            rows = c.execute(q).all()
        idx = pd.DatetimeIndex([_utc(r[0]) for r in rows])
        return pd.Series([r[1] for r in rows], index=idx, dtype=float)

    def write_forecast(self, fc: Forecast) -> None:
        rows = [{"issued_at": fc.issued_at, "series": fc.series, "horizon": fc.horizon,
                 "target_ts": ts.to_pydatetime(),
                 "quantile": q, "model": fc.model, "value_w": float(v)}
                for q, arr in fc.quantiles.items() for ts, v in zip(fc.index, arr, strict=True)]
        with self.engine.begin() as c:
            c.execute(forecasts.insert(), rows)

    def read_forecast(self, series: str, issued_at_or_before: datetime,
                      horizon: str = "ultra-short") -> pd.DataFrame:
        """The vintage in force at a time ("as issued at T"): the last forecast of
        ``horizon`` issued at or before it; columns are the quantile levels [W]."""
        which = (forecasts.c.series == series) & (forecasts.c.horizon == horizon)
        with self.engine.connect() as c:
            issued = c.execute(
                sa.select(sa.func.max(forecasts.c.issued_at)).where(
                    which & (forecasts.c.issued_at <= issued_at_or_before))).scalar()
            if issued is None:
                return pd.DataFrame()
            rows = c.execute(
                sa.select(forecasts.c.target_ts, forecasts.c.quantile, forecasts.c.value_w,
                          forecasts.c.model)
                .where(which & (forecasts.c.issued_at == issued))
            ).all()
        df = pd.DataFrame(rows, columns=["target_ts", "quantile", "value_w", "model"])
        df["target_ts"] = pd.to_datetime(df["target_ts"], utc=True)
        out = df.pivot(index="target_ts", columns="quantile", values="value_w").sort_index()
        out.attrs["issued_at"] = _utc(issued)
        out.attrs["model"] = df["model"].iloc[0]
        return out

    def write_schedule(self, sch: Schedule) -> None:
        """A plan, or a failed solve, with what it was made from (the explanation)."""
        plan = {k: v for k, v in schedule_payload(sch).items()
                if k not in ("created_at", "start", "status", "solver", "solve_time_s",
                             "objective")}
        obj = sch.objective if sch.objective == sch.objective else None  # NaN -> NULL
        with self.engine.begin() as c:
            c.execute(schedules.insert(), [{
                "created_at": sch.created_at, "start": sch.start, "status": sch.status.value,
                "solver": sch.solver, "solve_time_s": sch.solve_time_s, "objective": obj,
                "plan": json.dumps(jsonable(plan))}])

    def count(self, table: str) -> int:
        with self.engine.connect() as c:
            return int(c.execute(sa.select(sa.func.count()).select_from(
                metadata.tables[table])).scalar_one())
