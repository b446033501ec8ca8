"""web hosts and the hosts of each site

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 19:00:00.000000
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "web_hosts",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("ssh_user", sa.String(length=64), nullable=True),
        sa.Column("ssh_address", sa.String(length=255), nullable=True),
        sa.Column("ssh_port", sa.Integer(), nullable=True),
        sa.Column("ssh_key_path", sa.String(length=1024), nullable=True),
        sa.Column("host_key", sa.Text(), nullable=True),
        sa.Column("sites_root", sa.String(length=1024), nullable=False),
        sa.Column("objects_root", sa.String(length=1024), nullable=True),
        sa.Column("http_host", sa.String(length=255), nullable=False),
        sa.Column("http_port", sa.Integer(), nullable=False),
        sa.Column("public_addresses", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "site_hosts",
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("host_id", sa.String(length=64), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(["host_id"], ["web_hosts.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("site_id", "host_id"),
    )
    op.create_index(op.f("ix_site_hosts_host_id"), "site_hosts", ["host_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_site_hosts_host_id"), table_name="site_hosts")
    op.drop_table("site_hosts")
    op.drop_table("web_hosts")
