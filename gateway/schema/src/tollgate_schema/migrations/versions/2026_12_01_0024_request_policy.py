"""models carry a request policy: what one request to the alias may cost

``request_policy``: the ModelAlias's ``spec.requestPolicy`` (or the admin API's
``request_policy``) in snake_case, nulls left out: ``{"max_output_tokens",
"default_output_tokens", "max_num_ctx" | "num_ctx", "keep_alive", "allowed_options",
"mode"}``. NULL: no policy, requests pass as the client sent them.

Revision ID: 0024_request_policy
Revises: 0022_model_replicas
Create Date: 2026-12-01 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0024_request_policy"
down_revision: str | None = "0022_model_replicas"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("models", sa.Column("request_policy", JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("models", "request_policy")
