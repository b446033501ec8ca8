"""web hosts' HTTPS port (the catch-all's TLS listener, issue 8)

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("web_hosts", sa.Column("https_port", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("web_hosts", "https_port")
