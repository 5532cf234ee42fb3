"""Schema migrations: an empty database and one made before there were migrations both reach the
newest revision, on SQLite and (with TEST_DATABASE_URL) on a real Postgres server."""
import os
import subprocess
import sys
from datetime import timedelta

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from app import pricing, recovery, schema
from app.models import Job, db, utcnow
from conftest import ROOT, reset_postgres

URL = os.environ.get("TEST_DATABASE_URL")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.skipif(
    not URL, reason="TEST_DATABASE_URL unset: no PostgreSQL server to migrate"))])
def database(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrated.sqlite3'}"
        return
    reset_postgres(URL)
    yield URL
    reset_postgres(URL)


def head():
    return ScriptDirectory(schema.DIRECTORY).get_current_head()


def current(app):
    with app.app_context(), db.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def differences(app):
    """Return what the migrated schema lacks or has beyond the models (nothing, if in step)."""
    with app.app_context(), db.engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}),
                                db.metadata)


def test_an_empty_database_is_migrated_to_the_newest_revision_matching_the_models(make_app, database):
    app = make_app(DATABASE_URL=database)
    assert current(app) == head() == "0003"
    assert differences(app) == []  # a model changed without a revision would show here
    make_app(DATABASE_URL=database)  # starting again changes nothing
    assert current(app) == head()


def test_without_auto_migration_an_unmigrated_database_is_said_at_start(make_app, database, caplog):
    app = make_app(DATABASE_URL=database, DATABASE_AUTO_MIGRATE=False)
    assert current(app) is None
    assert "flask --app app db upgrade" in caplog.text and f"the newest is {head()}" in caplog.text
    caplog.clear()
    schema.upgrade(app)
    make_app(DATABASE_URL=database, DATABASE_AUTO_MIGRATE=False)
    assert "db upgrade" not in caplog.text  # in step: nothing to say


def test_every_revision_goes_down_to_an_empty_database_and_up_again(make_app, database):
    app = make_app(DATABASE_URL=database)
    with app.app_context():
        command.downgrade(schema.migrate.get_config(), "base")
        assert set(inspect(db.engine).get_table_names()) == {"alembic_version"}
        command.upgrade(schema.migrate.get_config(), "head")
    assert current(app) == head() and differences(app) == []


def test_a_database_made_before_migrations_is_adopted_with_its_jobs_and_upgraded(make_app, database):
    # The database as db.create_all() left it: revision 0001's tables, no version table, and a
    # job that was executing when its process died (there were no leases then).
    old = make_app(DATABASE_URL=database, DATABASE_AUTO_MIGRATE=False)
    created, expires = utcnow(), utcnow() + timedelta(minutes=15)
    with old.app_context():
        command.upgrade(schema.migrate.get_config(), schema.INITIAL_REVISION)
        with db.engine.begin() as connection:
            connection.execute(text("DROP TABLE alembic_version"))
            connection.execute(text(
                "INSERT INTO job (id, visitor_id, channel, request, state, model, input_tokens, "
                "estimated_output_tokens, btc_usd, created_at, updated_at) VALUES ('old-job', 'v', "
                "'old-channel', 'An old request', 'executing', 'timmy-demo', 120, 400, 100000, :t, :t)"),
                {"t": created})
            for payment_hash, kind, msat in (("e" * 64, "eval", 10_000), ("w" * 64, "work", 3_000_000)):
                connection.execute(text(
                    "INSERT INTO invoice (payment_hash, job_id, kind, amount_msat, payment_request, "
                    "state, created_at, expires_at, paid_at) VALUES (:h, 'old-job', :k, :m, 'lnbcrt1', "
                    "'paid', :t, :x, :t)"), {"h": payment_hash, "k": kind, "m": msat, "t": created, "x": expires})
    with old.app_context():
        assert "alembic_version" not in inspect(db.engine).get_table_names()

    app = make_app(DATABASE_URL=database)  # the new code starts on the old database
    assert current(app) == head() and differences(app) == []
    with app.test_request_context():
        job = db.session.get(Job, "old-job")
        assert job.state == "executing" and job.lease_owner is None and len(job.invoices) == 2
        assert recovery.sweep() == ["old-job"]  # no lease at all: its process is long gone
        job = db.session.get(Job, "old-job", populate_existing=True)
        assert job.state == "failed" and job.ledger.usage_source == "checkpoint"
        # Nothing of the answer was saved: no tokens are charged (the per-request share is), and
        # the rest is owed back.
        ledger = job.ledger
        assert (ledger.input_tokens, ledger.output_tokens, ledger.paid_msat) == (0, 0, 3_000_000)
        assert ledger.actual_msat == pricing.charge_msat(pricing.tariff(), "timmy-demo", 0, 0, job.btc_usd)
        assert ledger.refund_owed_msat == (3_000_000 - ledger.actual_msat) // 1000 * 1000 > 0


def test_processes_migrating_one_empty_database_at_once_take_turns(database, redis_url):
    env = {**os.environ, "DATABASE_URL": database, "REDIS_URL": redis_url, "SECRET_KEY": "s"}
    starts = [subprocess.Popen([sys.executable, "-c", "from app import create_app; create_app()"],
                               env=env, cwd=ROOT, stderr=subprocess.PIPE) for _ in range(3)]
    release = subprocess.Popen([sys.executable, "-m", "flask", "--app", "app", "db", "upgrade"],
                               env={**env, "DATABASE_AUTO_MIGRATE": "0"}, cwd=ROOT, stderr=subprocess.PIPE)
    for process in starts + [release]:
        _, errors = process.communicate(timeout=120)
        assert process.returncode == 0, errors.decode()
    import sqlalchemy
    engine = sqlalchemy.create_engine(database.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head()]
    engine.dispose()
