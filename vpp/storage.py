"""Storage: SQLite (WAL) by default, PostgreSQL in production, one schema (SQLAlchemy Core).

Blocking calls: the controller runs them in its storage executor, never on the event loop.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from drivers.telemetry import Sample
from forecasting.models import Forecast
from vpp.dispatch import Schedule, SolveStatus, schedule_payload
from vpp.jsonutil import jsonable

log = logging.getLogger(__name__)

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


# bearer tokens: only the SHA-256 of each is kept (vpp.auth)
tokens = sa.Table(
    "api_tokens", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
)

# every command, from any channel, with its result: who, when, what, how it ended
audit_log = sa.Table(
    "audit_log", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("channel", sa.String(8), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("ok", sa.Boolean, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
)

# each alarm's latest state (key: what it is about)
alarms = sa.Table(
    "alarms", metadata,
    sa.Column("key", sa.String(96), primary_key=True),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("cleared_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("acked_by", sa.String(64), nullable=True),
    sa.Column("acked_at", sa.DateTime(timezone=True), nullable=True),
)


# what a restart resumes from: every grid instruction still of use, and settings (the mode)
grid_instructions = sa.Table(
    "grid_instructions", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("ends_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("body", sa.Text, nullable=False),
)

controller_settings = sa.Table(
    "controller_settings", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

def _aggregate_table(name: str) -> sa.Table:
    return sa.Table(
        name, metadata,
        sa.Column("asset_id", sa.String(64), primary_key=True),
        sa.Column("point", sa.String(64), primary_key=True),
        sa.Column("ts", sa.DateTime(timezone=True), primary_key=True),  # the bucket's start
        sa.Column("mean", sa.Float, nullable=True),  # of the good samples; NULL: none
        sa.Column("min", sa.Float, nullable=True),
        sa.Column("max", sa.Float, nullable=True),
        sa.Column("n", sa.Integer, nullable=False),  # the values in the mean
    )


# telemetry downsampled: raw samples → 1-minute buckets → 15-minute buckets
AGGREGATES = {"1min": _aggregate_table("telemetry_1m"), "15min": _aggregate_table("telemetry_15m")}
# how long each resolution is kept by default [days] (raw, 1-minute, 15-minute); a site's
# [storage] keep_*_days change it
KEEP_DAYS = {"raw": 14.0, "1min": 180.0, "15min": 3650.0}
REDO = pd.Timedelta(hours=1)  # buckets made again at each pass (late samples count)

USABLE = [s.value for s in SolveStatus if s.usable]
BASELINE = "0001"  # the schema before migrations: a database without a version holds it


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (vpp/migrations): a new database gets every
    table; one made before migrations existed is stamped at the baseline first."""
    from alembic import command
    from alembic.config import Config
    cfg = Config()
    cfg.set_main_option("script_location", str(files("vpp") / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        names = set(sa.inspect(conn).get_table_names())
        if "alembic_version" not in names and "telemetry" in names:
            command.stamp(cfg, BASELINE)
        command.upgrade(cfg, "head")


RETRY_FOR_S = 3600.0  # how long a write waits for the database to come back [wall s]
RETRY_MAX_WAIT_S = 5.0


def _transient(exc: sa.exc.DBAPIError) -> bool:
    """The database is away (down, restarting, the network cut): worth trying again."""
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError) or bool(
        exc.connection_invalidated)


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


class Storage:
    """The controller's database."""

    def __init__(self, url: str, *, keep_days: dict[str, float] | None = None) -> None:
        self.url = url
        self.keep_days = {**KEEP_DAYS, **(keep_days or {})}
        self.engine: Engine = sa.create_engine(url, future=True, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            @sa.event.listens_for(self.engine, "connect")
            def _wal(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()
        migrate(self.engine)
        self._stop = threading.Event()
        self.retries = 0  # writes tried again while the database was away

    def retrying(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, tried again with backoff while the database is away (for up to
        :data:`RETRY_FOR_S`, or until :meth:`stop_retrying`): writes wait, in order, and
        none is lost to an outage. Errors of the write itself are raised at once."""
        delay, t0, warned = 0.2, time.monotonic(), False
        while True:
            try:
                out = fn(*args)
            except sa.exc.DBAPIError as exc:
                if not _transient(exc) or self._stop.is_set() or (
                        time.monotonic() - t0 > RETRY_FOR_S):
                    raise
                if not warned:
                    log.warning("database unreachable (%s); writes wait and are retried",
                                type(exc.orig).__name__ if exc.orig else type(exc).__name__)
                    warned = True
                self.retries += 1
                self._stop.wait(delay)
                delay = min(2 * delay, RETRY_MAX_WAIT_S)
                continue
            if warned:
                log.warning("database reachable again after %.1f s", time.monotonic() - t0)
            return out

    def stop_retrying(self) -> None:
        """Shutting down: a write that fails now fails (and is logged), not retried."""
        self._stop.set()

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
        idx = pd.DatetimeIndex([_utc(r[0]) for r in rows], tz="UTC")
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

    def read_schedules(self, since: datetime, until: datetime, *, limit: int = 100
                       ) -> list[dict[str, Any]]:
        """Plans and failed solves created in [since, until), newest first, with inputs."""
        q = (sa.select(schedules).where((schedules.c.created_at >= since)
                                        & (schedules.c.created_at < until))
             .order_by(schedules.c.created_at.desc(), schedules.c.id.desc()).limit(limit))
        with self.engine.connect() as c:
            rows = c.execute(q).mappings().all()
        return [{"id": r["id"], "created_at": _utc(r["created_at"]), "start": _utc(r["start"]),
                 "status": r["status"], "solver": r["solver"],
                 "solve_time_s": r["solve_time_s"], "objective": r["objective"],
                 **json.loads(r["plan"])} for r in rows]

    def read_telemetry(self, asset_id: str, point: str, since: datetime,
                       until: datetime, resolution: str = "raw") -> pd.Series:
        """A point in [since, until): its stored samples (``raw``; NaN where no value), or
        the means of its ``1min`` or ``15min`` buckets, with the samples not yet
        aggregated after the last bucket (so the latest minutes are there too)."""
        raw_since = since
        with self.engine.connect() as c:
            parts = []
            if resolution != "raw":
                t = AGGREGATES[resolution]
                rows = c.execute(sa.select(t.c.ts, t.c.mean).where(
                    (t.c.asset_id == asset_id) & (t.c.point == point) & (t.c.ts >= since)
                    & (t.c.ts < until)).order_by(t.c.ts)).all()
                parts.append(rows)
                if rows:
                    raw_since = max(since, _utc(rows[-1][0]) + pd.Timedelta(resolution))
            parts.append(c.execute(sa.select(telemetry.c.ts, telemetry.c.value).where(
                (telemetry.c.asset_id == asset_id) & (telemetry.c.point == point)
                & (telemetry.c.ts >= raw_since) & (telemetry.c.ts < until))
                .order_by(telemetry.c.ts)).all())
        rows = [r for p in parts for r in p]
        idx = pd.DatetimeIndex([_utc(r[0]) for r in rows], tz="UTC")
        return pd.Series([np.nan if r[1] is None else r[1] for r in rows], index=idx,
                         dtype=float)

    def downsample(self, until: datetime) -> dict[str, int]:
        """Aggregate what is complete before ``until`` (raw → 1-minute → 15-minute buckets
        not yet made), then drop what is older than ``keep_days`` keeps. Idempotent;
        returns the rows made and dropped per table."""
        out: dict[str, int] = {}
        with self.engine.begin() as c:
            kept = {res: until - pd.Timedelta(days=d) for res, d in self.keep_days.items()}
            out["telemetry_1m"] = self._roll(c, telemetry.c.ts, telemetry.c.value,
                                             telemetry, AGGREGATES["1min"], "1min", until,
                                             kept["raw"])
            one = AGGREGATES["1min"]
            out["telemetry_15m"] = self._roll(c, one.c.ts, one.c.mean, one,
                                              AGGREGATES["15min"], "15min", until, kept["1min"])
            for res, table in (("raw", telemetry), ("1min", one),
                               ("15min", AGGREGATES["15min"])):
                n = c.execute(table.delete().where(table.c.ts < kept[res])).rowcount
                out[f"dropped_{table.name}"] = int(n or 0)
        return out

    @staticmethod
    def _roll(c: sa.Connection, ts_col: Any, value_col: Any, source: sa.Table,
              target: sa.Table, freq: str, until: datetime, source_kept: datetime) -> int:
        """Buckets of ``freq`` from ``source`` ending by ``until``, from :data:`REDO` before
        the last one made (made again: samples written late, after an outage, count); a
        source of aggregates weighs each of its buckets by its count. Nothing before
        ``source_kept`` is made again: the source's retention may have dropped it (after a
        pause longer than that, the buckets made then would be wiped)."""
        last = c.execute(sa.select(sa.func.max(target.c.ts))).scalar()
        end = pd.Timestamp(until).floor(freq)
        lo = None if last is None else max(pd.Timestamp(_utc(last)) - REDO,
                                           pd.Timestamp(_utc(source_kept)).ceil(freq))
        cond = ts_col < end.to_pydatetime()
        if lo is not None:
            cond = cond & (ts_col >= lo.to_pydatetime())
            c.execute(target.delete().where((target.c.ts >= lo.to_pydatetime())
                                            & (target.c.ts < end.to_pydatetime())))
        cols = [source.c.asset_id, source.c.point, ts_col, value_col]
        if source is not telemetry:
            cols += [source.c.min, source.c.max, source.c.n]
        rows = c.execute(sa.select(*cols).where(cond)).all()
        if not rows:
            return 0
        df = pd.DataFrame(rows, columns=["asset_id", "point", "ts", "v", *(
            ["lo", "hi", "n"] if source is not telemetry else [])])
        df["ts"] = pd.to_datetime(df["ts"], utc=True).dt.floor(freq)
        if source is telemetry:
            df["lo"] = df["hi"] = df["v"]
            df["n"] = 1
        df["w"] = df["v"].notna() * df["n"]
        df["vw"] = df["v"].fillna(0.0) * df["w"]
        g = df.groupby(["asset_id", "point", "ts"])
        agg = pd.DataFrame({"sw": g["w"].sum(), "svw": g["vw"].sum(), "min": g["lo"].min(),
                            "max": g["hi"].max()}).reset_index()
        agg["n"] = agg["sw"]
        agg["mean"] = np.where(agg["sw"] > 0, agg["svw"] / agg["sw"].where(agg["sw"] > 0, 1),
                               np.nan)
        recs = [{"asset_id": r.asset_id, "point": r.point, "ts": r.ts.to_pydatetime(),
                 "mean": None if np.isnan(r.mean) else float(r.mean),
                 "min": None if pd.isna(r.min) else float(r.min),
                 "max": None if pd.isna(r.max) else float(r.max), "n": int(r.n)}
                for r in agg.itertuples()]
        c.execute(target.insert(), recs)
        return len(recs)

    # -- tokens -----------------------------------------------------------------------------

    def create_token(self, name: str, role: str, digest: str, now: datetime) -> None:
        """A new token (``name`` unique among tokens not revoked; a revoked name is reused)."""
        with self.engine.begin() as c:
            old = c.execute(sa.select(tokens.c.revoked_at).where(tokens.c.name == name)).first()
            if old is not None and old[0] is None:
                raise ValueError(f"a token named {name!r} exists; revoke it first "
                                 "(vpp token revoke) or choose another name")
            if old is not None:
                c.execute(tokens.delete().where(tokens.c.name == name))
            c.execute(tokens.insert(), [{"name": name, "role": role, "digest": digest,
                                         "created_at": now, "revoked_at": None}])

    def revoke_token(self, name: str, now: datetime) -> bool:
        with self.engine.begin() as c:
            n = c.execute(tokens.update().where((tokens.c.name == name)
                                                & tokens.c.revoked_at.is_(None))
                          .values(revoked_at=now)).rowcount
        return bool(n)

    def token_by_digest(self, digest: str) -> tuple[str, str] | None:
        """(name, role) of the live token with this digest."""
        with self.engine.connect() as c:
            r = c.execute(sa.select(tokens.c.name, tokens.c.role).where(
                (tokens.c.digest == digest) & tokens.c.revoked_at.is_(None))).first()
        return None if r is None else (r[0], r[1])

    def list_tokens(self) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(tokens.c.name, tokens.c.role, tokens.c.created_at,
                                       tokens.c.revoked_at).order_by(tokens.c.name)).all()
        return [{"name": r[0], "role": r[1], "created_at": _utc(r[2]),
                 "revoked_at": None if r[3] is None else _utc(r[3])} for r in rows]

    # -- audit log and alarms ---------------------------------------------------------------

    def write_audit(self, *, ts: datetime, actor: str, role: str, channel: str, action: str,
                    params: dict[str, Any], ok: bool, detail: str) -> int:
        with self.engine.begin() as c:
            r = c.execute(audit_log.insert().returning(audit_log.c.id), [{
                "ts": ts, "actor": actor, "role": role, "channel": channel, "action": action,
                "params": json.dumps(jsonable(params)), "ok": ok, "detail": detail}])
            return int(r.scalar_one())

    def read_audit(self, *, limit: int = 100, since: datetime | None = None
                   ) -> list[dict[str, Any]]:
        q = sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        if since is not None:
            q = q.where(audit_log.c.ts >= since)
        with self.engine.connect() as c:
            rows = c.execute(q).mappings().all()
        return [{**dict(r), "ts": _utc(r["ts"]), "params": json.loads(r["params"])}
                for r in rows]

    def write_alarm(self, row: dict[str, Any]) -> None:
        with self.engine.begin() as c:
            c.execute(alarms.delete().where(alarms.c.key == row["key"]))
            c.execute(alarms.insert(), [row])

    def read_alarms(self) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(alarms)).mappings().all()
        return [{k: _utc(v) if isinstance(v, datetime) else v for k, v in r.items()}
                for r in rows]

    # -- what a restart resumes from ----------------------------------------------------------

    def write_instruction(self, created_at: datetime, kind: str, ends_at: datetime | None,
                          body: dict[str, Any]) -> None:
        with self.engine.begin() as c:
            c.execute(grid_instructions.insert(), [{
                "created_at": created_at, "kind": kind, "ends_at": ends_at,
                "body": json.dumps(body)}])

    def read_instructions(self, still_of_use_at: datetime) -> list[tuple[str, dict[str, Any]]]:
        """(kind, body) of every instruction in the order given: caps all (the last one in
        force matters), windows and profiles not ended by ``still_of_use_at``."""
        q = (sa.select(grid_instructions.c.kind, grid_instructions.c.body)
             .where(grid_instructions.c.ends_at.is_(None)
                    | (grid_instructions.c.ends_at > still_of_use_at))
             .order_by(grid_instructions.c.id))
        with self.engine.connect() as c:
            return [(r[0], json.loads(r[1])) for r in c.execute(q).all()]

    def write_setting(self, key: str, value: Any, now: datetime) -> None:
        with self.engine.begin() as c:
            c.execute(controller_settings.delete().where(controller_settings.c.key == key))
            c.execute(controller_settings.insert(), [{"key": key, "value": json.dumps(value),
                                                      "updated_at": now}])

    def read_settings(self) -> dict[str, Any]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(controller_settings.c.key,
                                       controller_settings.c.value)).all()
        return {r[0]: json.loads(r[1]) for r in rows}

    def latest_plan(self) -> dict[str, Any] | None:
        """The newest stored plan that was put in force (a solve's or the rules'), as
        :func:`vpp.dispatch.schedule_from_row` takes it."""
        q = (sa.select(schedules).where(schedules.c.status.in_(USABLE))
             .order_by(schedules.c.created_at.desc(), schedules.c.id.desc()).limit(1))
        with self.engine.connect() as c:
            r = c.execute(q).mappings().first()
        if r is None:
            return None
        return {**{k: r[k] for k in ("status", "solver", "solve_time_s", "objective")},
                "created_at": _utc(r["created_at"]), "start": _utc(r["start"]),
                "plan": json.loads(r["plan"])}

    def count(self, table: str) -> int:
        with self.engine.connect() as c:
            return int(c.execute(sa.select(sa.func.count()).select_from(
                metadata.tables[table])).scalar_one())
