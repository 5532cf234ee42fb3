"""Refunds owed and paid, the development wallet's outgoing payments, and each job's BTC price source.

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('dev_payment',
    sa.Column('payment_hash', sa.String(length=64), nullable=False),
    sa.Column('payment_request', sa.Text(), nullable=False),
    sa.Column('amount_msat', sa.BigInteger(), nullable=False),
    sa.Column('paid_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('payment_hash')
    )
    op.create_table('refund',
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('amount_msat', sa.BigInteger(), nullable=False),
    sa.Column('reason', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('payment_request', sa.Text(), nullable=True),
    sa.Column('payment_hash', sa.String(length=64), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('claimed_at', sa.DateTime(), nullable=True),
    sa.Column('paid_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['job.id'], ),
    sa.PrimaryKeyConstraint('job_id'),
    sa.UniqueConstraint('payment_hash')
    )
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('btc_usd_source', sa.Text(), nullable=True))



def downgrade():
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_column('btc_usd_source')

    op.drop_table('refund')
    op.drop_table('dev_payment')
