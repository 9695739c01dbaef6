"""The schema as it was before migrations: telemetry, interval means, forecast vintages,
schedules, tokens, the audit log and alarms.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "telemetry",
        sa.Column("ts", TZ, nullable=False),
        sa.Column("asset_id", sa.String(64), nullable=False),
        sa.Column("point", sa.String(64), nullable=False),
        sa.Column("value", sa.Float, nullable=True),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("quality", sa.String(8), nullable=False))
    op.create_index("ix_telemetry_asset_ts", "telemetry", ["asset_id", "point", "ts"])
    op.create_table(
        "interval_means",
        sa.Column("ts", TZ, primary_key=True),
        sa.Column("series", sa.String(64), primary_key=True),
        sa.Column("value_w", sa.Float, nullable=False))
    op.create_table(
        "forecast_vintages",
        sa.Column("issued_at", TZ, primary_key=True),
        sa.Column("series", sa.String(64), primary_key=True),
        sa.Column("horizon", sa.String(16), primary_key=True),
        sa.Column("target_ts", TZ, primary_key=True),
        sa.Column("quantile", sa.Float, primary_key=True),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("value_w", sa.Float, nullable=False))
    op.create_table(
        "schedules",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("start", TZ, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("solver", sa.String(32), nullable=False),
        sa.Column("solve_time_s", sa.Float, nullable=False),
        sa.Column("objective", sa.Float, nullable=True),
        sa.Column("plan", sa.Text, nullable=False))
    op.create_index("ix_schedules_created_at", "schedules", ["created_at"])
    op.create_table(
        "api_tokens",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("revoked_at", TZ, nullable=True))
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ts", TZ, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("channel", sa.String(8), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("detail", sa.Text, nullable=False))
    op.create_index("ix_audit_log_ts", "audit_log", ["ts"])
    op.create_table(
        "alarms",
        sa.Column("key", sa.String(96), primary_key=True),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("raised_at", TZ, nullable=False),
        sa.Column("cleared_at", TZ, nullable=True),
        sa.Column("acked_by", sa.String(64), nullable=True),
        sa.Column("acked_at", TZ, nullable=True))


def downgrade() -> None:
    for t in ("alarms", "audit_log", "api_tokens", "schedules", "forecast_vintages",
              "interval_means", "telemetry"):
        op.drop_table(t)
