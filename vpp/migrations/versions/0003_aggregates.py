"""Telemetry downsampled: 1-minute and 15-minute aggregates (mean, min, max, and the
number of values in the mean).

Revision ID: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLES = ("telemetry_1m", "telemetry_15m")


def upgrade() -> None:
    for name in TABLES:
        op.create_table(
            name,
            sa.Column("asset_id", sa.String(64), primary_key=True),
            sa.Column("point", sa.String(64), primary_key=True),
            sa.Column("ts", sa.DateTime(timezone=True), primary_key=True),
            sa.Column("mean", sa.Float, nullable=True),
            sa.Column("min", sa.Float, nullable=True),
            sa.Column("max", sa.Float, nullable=True),
            sa.Column("n", sa.Integer, nullable=False))


def downgrade() -> None:
    for name in reversed(TABLES):
        op.drop_table(name)
