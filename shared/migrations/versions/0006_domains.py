"""domains: tenants' domains (api), registrar orders and the sandbox registrar's books (dns)

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _now(name: str) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(
        name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "domains",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=253), nullable=False),
        sa.Column("skeleton", sa.String(length=253), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("bring_your_own", sa.Boolean(), nullable=False),
        sa.Column("registrar", sa.String(length=32), nullable=True),
        sa.Column("years", sa.Integer(), nullable=True),
        sa.Column("auto_renew", sa.Boolean(), nullable=False),
        sa.Column("txt_value", sa.String(length=128), nullable=False),
        sa.Column("delegated", sa.Boolean(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failure", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        _now("created_at"),
        _now("updated_at"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "name"),
    )
    op.create_index(op.f("ix_domains_tenant_id"), "domains", ["tenant_id"], unique=False)
    op.create_index(op.f("ix_domains_name"), "domains", ["name"], unique=False)
    op.create_index(
        "domains_claimed_name",
        "domains",
        ["name"],
        unique=True,
        postgresql_where=sa.text("status IN ('registering', 'active')"),
    )
    op.create_index(op.f("ix_domains_skeleton"), "domains", ["skeleton"], unique=False)
    op.create_table(
        "registrar_orders",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=253), nullable=False),
        sa.Column("registrar", sa.String(length=32), nullable=False),
        sa.Column("years", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("registrar_order_id", sa.String(length=128), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("warned_days", sa.Integer(), nullable=True),
        sa.Column("error", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        _now("created_at"),
        _now("updated_at"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_registrar_orders_tenant_id"), "registrar_orders", ["tenant_id"], unique=False
    )
    op.create_index(op.f("ix_registrar_orders_name"), "registrar_orders", ["name"], unique=False)
    op.create_table(
        "sandbox_registrations",
        sa.Column("name", sa.String(length=253), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("years", sa.Integer(), nullable=False),
        sa.Column("price", sa.String(length=16), nullable=False),
        sa.Column("nameservers", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("contact", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("renewals", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        _now("created_at"),
        sa.PrimaryKeyConstraint("name"),
        sa.UniqueConstraint("order_id"),
    )


def downgrade() -> None:
    op.drop_table("sandbox_registrations")
    op.drop_index(op.f("ix_registrar_orders_name"), table_name="registrar_orders")
    op.drop_index(op.f("ix_registrar_orders_tenant_id"), table_name="registrar_orders")
    op.drop_table("registrar_orders")
    op.drop_index("domains_claimed_name", table_name="domains")
    op.drop_index(op.f("ix_domains_name"), table_name="domains")
    op.drop_index(op.f("ix_domains_skeleton"), table_name="domains")
    op.drop_index(op.f("ix_domains_tenant_id"), table_name="domains")
    op.drop_table("domains")
