"""models.pending: an alias its resource wants served, not ready yet (model still pulling)

Revision ID: 0021_model_pending
Revises: 0020_audit
Create Date: 2026-12-01 13:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021_model_pending"
down_revision: str | None = "0020_audit"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "models",
        sa.Column("pending", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )


def downgrade() -> None:
    op.drop_column("models", "pending")
