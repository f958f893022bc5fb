"""usage events remember the Redis stream entry they came from

Writers drain usage from a Redis stream and acknowledge entries after the commit; an entry
whose writer died between commit and acknowledgement is delivered again, and the unique
entry id makes that second insert a no-op.

Revision ID: 0011_usage_stream_id
Revises: 0001
Create Date: 2026-12-01 10:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_usage_stream_id"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("usage_events", sa.Column("stream_id", sa.String(length=40), nullable=True))
    op.create_index(
        "uq_usage_events_stream_id",
        "usage_events",
        ["stream_id"],
        unique=True,
        postgresql_where=sa.text("stream_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_usage_events_stream_id", table_name="usage_events")
    op.drop_column("usage_events", "stream_id")
