"""Alembic's environment: the orchestrator's tables; run by orchestrator.core.db.migrate or the alembic CLI
(`alembic -c orchestrator/alembic.ini upgrade head`, with DJZ_DATABASE_URL set)."""
from alembic import context
from sqlalchemy import create_engine
from sqlmodel import SQLModel

import orchestrator.models  # noqa: F401  (registers the tables)

target_metadata = SQLModel.metadata
config = context.config


def created_on(dialect: str):
    """Autogenerate's filter: leave out what the tables create on other databases only (`Index.ddl_if`, e.g. the
    clip search's PostgreSQL trigram index), which would otherwise show as a difference on this one."""
    def include(object_, name, type_, reflected, compare_to) -> bool:
        only_on = getattr(object_, "_ddl_if", None)
        return only_on is None or only_on.dialect in (None, dialect)
    return include


def run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying
                      include_object=created_on(connection.dialect.name))
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    from orchestrator.core.config import Settings

    url = config.get_main_option("sqlalchemy.url") or Settings().resolved_database_url
    with create_engine(url).begin() as opened:
        run(opened)
