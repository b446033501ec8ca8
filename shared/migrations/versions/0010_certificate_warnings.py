"""certificates: when the last expiry warning went out

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("certificates", sa.Column("warned_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("certificates_status", "certificates", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("certificates_status", table_name="certificates")
    op.drop_column("certificates", "warned_at")
