"""Payments, job starts and settlements take turns, so that the answers streaming keep their pace.

A state change is database work and a render that never yields to the event loop (SQLite's
calls block it; the ORM and Jinja are plain CPU): a few milliseconds each. With 200 jobs paid
within a few seconds, a dozen payments at once each ran such a stretch between two ticker
batches, and every streaming job's frames waited for all of them (30-140 ms a token). Taking
turns, at most one such stretch runs between two batches; the others wait, parked.

A turn covers only the process's own work: never a wallet's or a provider's reply, which can
take seconds. Whoever waits for a turn holds no database connection (the holder may need one).
"""
import os

import gevent.lock
from gevent import get_hub

_locks = {}


def take():
    """Return this process's turn for state changes: a re-entrant lock (`with turns.take():`)."""
    key = (os.getpid(), id(get_hub()))
    found = _locks.get(key)
    if found is None:
        found = _locks[key] = gevent.lock.RLock()
    return found
