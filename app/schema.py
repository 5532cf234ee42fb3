"""The database schema, kept by Alembic migrations (through Flask-Migrate) in app/migrations/."""
import fcntl
import logging
import os
from contextlib import contextmanager

from alembic import command
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask_migrate import Migrate
from sqlalchemy import inspect, text

from .lightning import dev  # noqa: F401 -- the development wallet's table is part of the schema
from .models import db

log = logging.getLogger(__name__)
DIRECTORY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")
INITIAL_REVISION = "0001"  # the schema db.create_all() made before there were migrations
# Any constant shared by every process of the app: they queue on it while one migrates.
ADVISORY_LOCK_KEY = 0x7431_6D6D_79  # "t1mmy"

migrate = Migrate(directory=DIRECTORY, compare_type=True, render_as_batch=True)


@contextmanager
def migration_lock(connection):
    """Hold a lock that makes processes migrating the same database take turns."""
    if connection.dialect.name == "postgresql":
        # A session lock: it outlives the migration's transaction, and dies with a killed process.
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
        connection.commit()
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})
            connection.commit()
        return
    database = connection.engine.url.database
    if connection.dialect.name != "sqlite" or not database or database == ":memory:":
        yield  # an in-memory database belongs to one process
        return
    with open(database + ".migrate-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # SQLite is one machine's: a file lock is enough
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def adopt_unversioned(context, connection):
    """Stamp a database made by db.create_all() (tables, no version) with the initial revision."""
    tables = set(inspect(connection).get_table_names())
    if "job" in tables and "alembic_version" not in tables:
        context.get_context().stamp(context.script, INITIAL_REVISION)


def upgrade(app):
    """Bring the app's database to the newest revision (a no-op when it is there already)."""
    with app.app_context():
        command.upgrade(migrate.get_config(), "head")


def init_app(app):
    """Register the migrations (and `flask db`); migrate at start-up unless told not to."""
    migrate.init_app(app, db)
    if app.config["DATABASE_AUTO_MIGRATE"]:
        upgrade(app)
    else:
        # Said loudly, not raised: `flask db upgrade` itself starts the app to run.
        current, head = revisions(app)
        if current != head:
            log.error("The database schema is at revision %s, the newest is %s: run "
                      "`flask --app app db upgrade` (or set DATABASE_AUTO_MIGRATE=1).", current, head)


def revisions(app):
    """Return the database's revision and the newest one."""
    with app.app_context():
        with db.engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
        return current, ScriptDirectory.from_config(migrate.get_config()).get_current_head()
