"""stored responses of the Responses API

Revision ID: 0015_stored_responses
Revises: 0011_usage_stream_id
Create Date: 2026-12-01 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0015_stored_responses"
down_revision: str | None = "0011_usage_stream_id"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "stored_responses",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.UUID(), nullable=False),
        sa.Column("alias", sa.String(length=200), nullable=False),
        sa.Column("previous_response_id", sa.String(length=64), nullable=True),
        sa.Column("input", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("response", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stored_responses")),
    )
    # Lookups are by id and key; the retention sweep deletes by age (BRIN: rows arrive in
    # time order, the index stays a few pages however large the table grows).
    op.create_index(
        "ix_stored_responses_key_id_created_at",
        "stored_responses",
        ["key_id", "created_at"],
        unique=False,
    )
    op.create_index(
        "ix_stored_responses_created_at_brin",
        "stored_responses",
        ["created_at"],
        unique=False,
        postgresql_using="brin",
    )


def downgrade() -> None:
    op.drop_index("ix_stored_responses_created_at_brin", table_name="stored_responses")
    op.drop_index("ix_stored_responses_key_id_created_at", table_name="stored_responses")
    op.drop_table("stored_responses")
