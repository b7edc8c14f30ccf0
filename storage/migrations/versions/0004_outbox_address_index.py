"""outbox index by address and day: the daily reply cap is counted in the database

Revision ID: 0004
Revises: 0003

Additive only: replicas of the previous version keep working while it is applied.
"""

from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_outbox_address_created', 'outbox', ['channel', 'address', 'created_at'])


def downgrade() -> None:
    op.drop_index('ix_outbox_address_created', table_name='outbox')
