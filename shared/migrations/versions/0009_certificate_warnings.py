"""certificates: when the last expiry warning went out

Revision ID: 0009
Revises: 0011 (0011, web hosts' HTTPS port, reached main first; 0009 follows it so a
database already at 0011 still gets this one)
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("certificates", sa.Column("warned_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("certificates_status", "certificates", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("certificates_status", table_name="certificates")
    op.drop_column("certificates", "warned_at")
