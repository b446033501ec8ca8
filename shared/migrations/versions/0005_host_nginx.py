"""web hosts' nginx command and listen address (per-site nginx rules)

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("web_hosts", sa.Column("nginx_command", postgresql.JSONB(), nullable=True))
    op.add_column("web_hosts", sa.Column("nginx_listen", sa.String(length=255), nullable=True))


def downgrade() -> None:
    op.drop_column("web_hosts", "nginx_listen")
    op.drop_column("web_hosts", "nginx_command")
