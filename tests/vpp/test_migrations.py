"""The schema's migrations (Alembic) on SQLite and PostgreSQL: a new database, one made
before migrations existed, and down and up again."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib.resources import files

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

from vpp.storage import Storage, metadata, schedules

T0 = datetime(2026, 4, 15, 4, tzinfo=UTC)
BASELINE_TABLES = ["telemetry", "interval_means", "forecast_vintages", "schedules",
                   "api_tokens", "audit_log", "alarms"]


def _revision(engine: sa.Engine) -> str | None:
    with engine.connect() as c:
        return MigrationContext.configure(c).get_current_revision()


def _head() -> str:
    from alembic.script import ScriptDirectory
    cfg = Config()
    cfg.set_main_option("script_location", str(files("vpp") / "migrations"))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def test_a_new_database_gets_the_schema_the_code_declares(empty_database_url: str) -> None:
    st = Storage(empty_database_url)
    try:
        assert _revision(st.engine) == _head()
        with st.engine.connect() as c:
            diff = compare_metadata(MigrationContext.configure(c), metadata)
        assert diff == []
        Storage(empty_database_url).close()  # opening it again changes nothing
        assert _revision(st.engine) == _head()
    finally:
        st.close()


def test_a_database_from_before_migrations_is_stamped_and_upgraded_keeping_its_rows(
        empty_database_url: str) -> None:
    engine = sa.create_engine(empty_database_url)
    metadata.create_all(engine, tables=[metadata.tables[t] for t in BASELINE_TABLES])
    with engine.begin() as c:
        c.execute(schedules.insert(), [{"created_at": T0, "start": T0, "status": "optimal",
                                        "solver": "HIGHS", "solve_time_s": 0.1,
                                        "objective": 1.0, "plan": json.dumps({"step_s": 900})}])
    engine.dispose()
    st = Storage(empty_database_url)
    try:
        assert _revision(st.engine) == _head()
        assert st.count("schedules") == 1
        assert st.count("grid_instructions") == 0
    finally:
        st.close()


def test_down_to_nothing_and_up_again(empty_database_url: str) -> None:
    st = Storage(empty_database_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(files("vpp") / "migrations"))
    try:
        with st.engine.begin() as c:
            cfg.attributes["connection"] = c
            command.downgrade(cfg, "base")
        with st.engine.connect() as c:
            left = set(sa.inspect(c).get_table_names()) - {"alembic_version"}
        assert left == set()
        with st.engine.begin() as c:
            cfg.attributes["connection"] = c
            command.upgrade(cfg, "head")
        assert _revision(st.engine) == _head()
    finally:
        st.close()
