"""reporting round: respondents as persons with several addresses, rounds, invitations

Revision ID: 0003
Revises: 0002

Additive only: replicas of the previous version keep working while it is applied.
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    with op.batch_alter_table('respondents', schema=None) as batch_op:
        batch_op.add_column(sa.Column('email', sa.String(length=320), nullable=True))
        batch_op.add_column(sa.Column('name', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('organization', sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column('country', sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column('org_type', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('last_channel', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('opted_out_at', sa.DateTime(timezone=True),
                                      nullable=True))
    with op.batch_alter_table('answers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('channel', sa.String(length=16), nullable=True))

    op.create_table(
        'addresses',
        sa.Column('id', BigId, autoincrement=True, nullable=False),
        sa.Column('respondent_id', BigId, nullable=False),
        sa.Column('channel', sa.String(length=16), nullable=False),
        sa.Column('channel_user_id', sa.String(length=320), nullable=False),
        sa.Column('unreachable', sa.Boolean(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['respondent_id'], ['respondents.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('channel', 'channel_user_id', name='uq_addresses_channel_user'),
    )
    op.create_index('ix_addresses_respondent', 'addresses', ['respondent_id'])
    op.execute(
        "INSERT INTO addresses (respondent_id, channel, channel_user_id, unreachable, "
        "created_at) SELECT id, channel, channel_user_id, unreachable, created_at "
        "FROM respondents")
    op.execute("UPDATE respondents SET last_channel = channel")
    op.execute("UPDATE answers SET channel = (SELECT submissions.channel FROM submissions "
               "WHERE submissions.id = answers.submission_id)")

    op.create_table(
        'rounds',
        sa.Column('id', BigId, autoincrement=True, nullable=False),
        sa.Column('questionnaire_id', sa.String(length=64), nullable=False),
        sa.Column('deadline', sa.Date(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('questionnaire_id', 'deadline',
                            name='uq_rounds_questionnaire_deadline'),
    )
    op.create_table(
        'invitations',
        sa.Column('id', BigId, autoincrement=True, nullable=False),
        sa.Column('round_id', BigId, nullable=False),
        sa.Column('respondent_id', BigId, nullable=False),
        sa.Column('email', sa.String(length=320), nullable=False),
        sa.Column('language', sa.String(length=8), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('outbox_id', BigId, nullable=True),
        sa.Column('message_id', sa.String(length=255), nullable=True),
        sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('times_sent', sa.Integer(), nullable=False),
        sa.Column('undeliverable_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('undeliverable_reason', sa.Text(), nullable=True),
        sa.Column('reminders_sent', sa.Integer(), nullable=False),
        sa.Column('last_reminder_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['round_id'], ['rounds.id']),
        sa.ForeignKeyConstraint(['respondent_id'], ['respondents.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('round_id', 'email', name='uq_invitations_round_email'),
    )
    op.create_index('ix_invitations_respondent', 'invitations', ['respondent_id'])
    op.create_index('ix_invitations_message_id', 'invitations', ['message_id'])


def downgrade() -> None:
    op.drop_index('ix_invitations_message_id', table_name='invitations')
    op.drop_index('ix_invitations_respondent', table_name='invitations')
    op.drop_table('invitations')
    op.drop_table('rounds')
    op.drop_index('ix_addresses_respondent', table_name='addresses')
    op.drop_table('addresses')
    with op.batch_alter_table('answers', schema=None) as batch_op:
        batch_op.drop_column('channel')
    with op.batch_alter_table('respondents', schema=None) as batch_op:
        for column in ('opted_out_at', 'last_channel', 'org_type', 'country',
                       'organization', 'name', 'email'):
            batch_op.drop_column(column)
