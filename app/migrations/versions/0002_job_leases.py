"""Job leases and checkpoints, for restart recovery.

A job being evaluated or executed is leased by the process working on it; a lapsed lease means
that process died. A running job checkpoints its answer so far, so that it can be settled.

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lease_owner', sa.String(length=96), nullable=True))
        batch_op.add_column(sa.Column('lease_expires_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('checkpoint_output_tokens', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_job_state'), ['state'], unique=False)


def downgrade():
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_job_state'))
        batch_op.drop_column('checkpoint_output_tokens')
        batch_op.drop_column('lease_expires_at')
        batch_op.drop_column('lease_owner')
