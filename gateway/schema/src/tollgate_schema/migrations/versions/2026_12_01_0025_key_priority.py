"""keys carry their priority in a full pool's queue

``priority``: ``interactive``, ``standard``, ``batch`` or an explicit weight (a positive
number, as text); NULL is ``standard``. Written by the operator from ``ApiKey.spec.priority``
or through the admin API.

Revision ID: 0025_key_priority
Revises: 0024_request_policy
Create Date: 2026-12-01 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0025_key_priority"
down_revision: str | None = "0024_request_policy"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("priority", sa.String(32), nullable=True))


def downgrade() -> None:
    op.drop_column("api_keys", "priority")
