"""models know their replicas and their pool's routing settings

``replicas``: the Ollama replicas that hold the alias's model and may take traffic now
(``[{"name": ..., "url": ...}]``), written by the operator from the pool's ready Pods (or
listed by hand through the admin API); NULL means "use ``backend_url`` as it is".
``routing``: the pool's ``spec.routing`` (``{"pool", "policy", "prefix_chars"}``).

Revision ID: 0022_model_replicas
Revises: 0020_audit
Create Date: 2026-12-01 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0022_model_replicas"
down_revision: str | None = "0021_model_pending"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("models", sa.Column("replicas", JSONB(), nullable=True))
    op.add_column("models", sa.Column("routing", JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("models", "routing")
    op.drop_column("models", "replicas")
