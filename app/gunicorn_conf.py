"""gunicorn settings for the Workshop (used by the Procfile and the README's run command)."""
import os

# Heroku gives the port in PORT and routes to 0.0.0.0; on a laptop stay on loopback, port 5000.
bind = f"0.0.0.0:{os.environ['PORT']}" if "PORT" in os.environ else "127.0.0.1:5000"

# gevent: every job runs in a greenlet and every viewer holds an open SSE stream; one gevent
# worker serves thousands of those. More workers need REDIS_URL and DATABASE_URL shared by all
# (the embedded Redis and SQLite belong to one process).
worker_class = "gevent"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "1000"))

# Never preload with gevent: the app must be created after the worker has patched the stdlib.
preload_app = False

# SSE streams stay open for minutes; gevent workers aren't killed for that, but keep the worker
# timeout for a truly stuck worker.
timeout = 60

# Open streams make shutdown wait this long; Heroku sends SIGKILL 30 s after SIGTERM.
graceful_timeout = 20

# Short keep-alive: an idle keep-alive connection holds a graceful stop until it times out.
keepalive = 5

# Logs go to stdout/stderr, where Heroku (and a terminal) collect them.
accesslog = "-"
errorlog = "-"

# gunicorn >= 25.1 opens a control socket under $HOME by default; a dyno doesn't need one, and
# several instances on one machine would fight over it.
control_socket_disable = True


# Python's cyclic garbage collector: the app's own objects, loaded once, are frozen out of its
# scans, and a young collection waits for 7,000 new objects instead of 700. Streaming makes
# short-lived objects by the thousand a second; at the default the collector ran thousands of
# times a second (2% of the worker's CPU at 200 jobs), at ten times that it still runs often.
GC_THRESHOLDS = (7000, 10, 10)


def post_worker_init(worker):
    import gc

    import gevent
    # gevent keeps, for every greenlet, a copy of the stack that spawned it and a tree of who
    # spawned whom, for debugging; an idle viewer's greenlet would hold that for its lifetime.
    gevent.config.track_greenlet_tree = False
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    # At start-up, and every half lease, end jobs whose process died (app/recovery.py); on
    # SIGTERM, settle this worker's running jobs and close its streams at once (app/lifecycle.py).
    from app import lifecycle
    worker.workshop_shutdown = lifecycle.start(worker.wsgi, lambda: worker.alive)


def worker_exit(server, worker):
    # gunicorn waits only for open requests; jobs being settled must finish their writes too.
    from app import lifecycle
    lifecycle.finish(getattr(worker, "workshop_shutdown", None))
