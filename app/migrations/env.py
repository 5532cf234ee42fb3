"""Alembic's environment: migrate the app's database, one process at a time."""
from alembic import context
from flask import current_app

from app.schema import adopt_unversioned, migration_lock


def skip_empty(context_, revision, directives):
    # `flask db migrate` with no model changed writes no empty revision.
    if getattr(context_.config.cmd_opts, "autogenerate", False) and directives[0].upgrade_ops.is_empty():
        directives[:] = []
        context_.config.print_stdout("No changes in schema detected: no revision written.")


def run_migrations_offline():
    """Write the SQL to stdout (flask db upgrade --sql) instead of running it."""
    context.configure(url=current_app.config["SQLALCHEMY_DATABASE_URI"],
                      target_metadata=current_app.extensions["migrate"].db.metadata,
                      literal_binds=True, **current_app.extensions["migrate"].configure_args)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    """Run the migrations on a connection of the app's engine, under the migration lock."""
    migrate = current_app.extensions["migrate"]
    options = {"process_revision_directives": skip_empty, **migrate.configure_args}
    with migrate.db.engine.connect() as connection, migration_lock(connection):
        context.configure(connection=connection, target_metadata=migrate.db.metadata, **options)
        with context.begin_transaction():
            adopt_unversioned(context, connection)
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
