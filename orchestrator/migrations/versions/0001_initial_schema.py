"""Initial schema: voices and their latents, clips, playlists, batch jobs.

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 01:47:28.999975
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('batchjob',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('started_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('finished_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('total', sa.Integer(), nullable=False),
    sa.Column('completed', sa.Integer(), nullable=False),
    sa.Column('failed', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('batchjob', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_batchjob_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_batchjob_status'), ['status'], unique=False)

    op.create_table('clip',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('title', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('script', sa.Text(), nullable=False),
    sa.Column('search_text', sa.Text(), nullable=False),
    sa.Column('voice_ids', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('voice_names', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
    sa.Column('speakers', sa.Integer(), nullable=False),
    sa.Column('duration_s', sa.Float(), nullable=False),
    sa.Column('generation_s', sa.Float(), nullable=False),
    sa.Column('rtf', sa.Float(), nullable=False),
    sa.Column('format', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('file_sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('file_size', sa.Integer(), nullable=False),
    sa.Column('seed', sa.BigInteger(), nullable=False),
    sa.Column('cfg_scale', sa.Float(), nullable=False),
    sa.Column('diffusion_steps', sa.Integer(), nullable=False),
    sa.Column('model_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('finish_reason', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('tags', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
    sa.Column('folder', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('quality_score', sa.Float(), nullable=True),
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('clip', schema=None) as batch_op:
        batch_op.create_index('ix_clip_created_at', ['created_at', 'id'], unique=False)
        batch_op.create_index('ix_clip_duration_s', ['duration_s', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_clip_file_sha256'), ['file_sha256'], unique=False)
        batch_op.create_index('ix_clip_file_size', ['file_size', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_clip_folder'), ['folder'], unique=False)
        batch_op.create_index('ix_clip_generation_s', ['generation_s', 'id'], unique=False)
        batch_op.create_index('ix_clip_quality_score', ['quality_score', 'id'], unique=False)
        batch_op.create_index('ix_clip_title', [sa.text('lower(title)'), 'id'], unique=False)
    if op.get_bind().dialect.name == 'postgresql':
        # Gallery search is LIKE '%word%' on search_text; trigrams answer it without reading every clip.
        op.execute('CREATE EXTENSION IF NOT EXISTS pg_trgm')
        op.create_index('ix_clip_search_text', 'clip', ['search_text'], unique=False, postgresql_using='gin',
                        postgresql_ops={'search_text': 'gin_trgm_ops'})

    op.create_table('playlist',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('playlist', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_playlist_name'), ['name'], unique=False)

    op.create_table('voice',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
    sa.Column('tags', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
    sa.Column('audio_sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('duration_s', sa.Float(), nullable=False),
    sa.Column('source_count', sa.Integer(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('generations', sa.Integer(), nullable=False),
    sa.Column('audio_seconds', sa.Float(), nullable=False),
    sa.Column('last_used_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('voice', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_voice_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_voice_name'), ['name'], unique=True)

    op.create_table('batchitem',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('request', sa.Text(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('clip_id', sa.String(length=32), nullable=True),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['clip_id'], ['clip.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['job_id'], ['batchjob.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('batchitem', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_batchitem_job_id'), ['job_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_batchitem_status'), ['status'], unique=False)

    op.create_table('playlistentry',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('playlist_id', sa.String(length=32), nullable=False),
    sa.Column('clip_id', sa.String(length=32), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['clip_id'], ['clip.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['playlist_id'], ['playlist.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('playlistentry', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_playlistentry_clip_id'), ['clip_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_playlistentry_playlist_id'), ['playlist_id'], unique=False)

    op.create_table('voicelatents',
    sa.Column('voice_id', sa.String(length=32), nullable=False),
    sa.Column('model_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('frames', sa.Integer(), nullable=False),
    sa.Column('latent_dim', sa.Integer(), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['voice_id'], ['voice.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('voice_id', 'model_id')
    )


def downgrade() -> None:
    op.drop_table('voicelatents')
    with op.batch_alter_table('playlistentry', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_playlistentry_playlist_id'))
        batch_op.drop_index(batch_op.f('ix_playlistentry_clip_id'))

    op.drop_table('playlistentry')
    with op.batch_alter_table('batchitem', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_batchitem_status'))
        batch_op.drop_index(batch_op.f('ix_batchitem_job_id'))

    op.drop_table('batchitem')
    with op.batch_alter_table('voice', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_voice_name'))
        batch_op.drop_index(batch_op.f('ix_voice_created_at'))

    op.drop_table('voice')
    with op.batch_alter_table('playlist', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_playlist_name'))

    op.drop_table('playlist')
    if op.get_bind().dialect.name == 'postgresql':
        op.drop_index('ix_clip_search_text', table_name='clip')
    with op.batch_alter_table('clip', schema=None) as batch_op:
        batch_op.drop_index('ix_clip_title')
        batch_op.drop_index('ix_clip_quality_score')
        batch_op.drop_index('ix_clip_generation_s')
        batch_op.drop_index(batch_op.f('ix_clip_folder'))
        batch_op.drop_index('ix_clip_file_size')
        batch_op.drop_index(batch_op.f('ix_clip_file_sha256'))
        batch_op.drop_index('ix_clip_duration_s')
        batch_op.drop_index('ix_clip_created_at')

    op.drop_table('clip')
    with op.batch_alter_table('batchjob', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_batchjob_status'))
        batch_op.drop_index(batch_op.f('ix_batchjob_created_at'))

    op.drop_table('batchjob')
