"""Benchmark the CPU that lease renewals cost one worker: python tests/bench/bench_leases.py

Holds --jobs executing jobs at once in one gevent process (monkey-patched, as the gunicorn worker
is), each checkpointing an answer of --checkpoint-bytes at every renewal, for --seconds of
renewals at --interval; then prints, for each database, the renewals done, the transactions and
statements they took, and the process's CPU seconds, scaled to 10 s of renewals at that interval.
The database is a temporary SQLite file, and each --database URL too (migrated to the newest
revision; the benchmark's jobs are deleted afterwards). Nothing touches Redis.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
from sqlalchemy import delete, event  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from app import create_app, recovery  # noqa: E402
from app.models import Job, db, new_id  # noqa: E402


def measure(url, jobs, checkpoint_bytes, seconds, interval):
    """Hold jobs through seconds of renewals; return the counts (renewals, transactions, statements) and CPU s."""
    app = create_app({"TESTING": True, "SECRET_KEY": "bench", "DATABASE_URL": url,
                      "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                      "JOB_CHECKPOINT_SECONDS": interval})
    answer = ("Solder the joint, then let it cool. " * (checkpoint_bytes // 36 + 1))[:checkpoint_bytes]
    with app.app_context():
        ids = [new_id() for _ in range(jobs)]
        db.session.add_all(Job(id=i, visitor_id="bench", request="bench", model="bench",
                               state="executing", **recovery.lease()) for i in ids)
        db.session.commit()
        engine = db.engine
    counts = {"renewals": 0, "transactions": 0, "statements": 0}

    def count(name):
        return lambda *args, **kwargs: counts.__setitem__(name, counts[name] + 1)

    event.listen(engine, "commit", count("transactions"))
    event.listen(engine, "before_cursor_execute", count("statements"))
    stop = gevent.event.Event()

    def work(job_id):
        def checkpoint():
            counts["renewals"] += 1
            return {"result": answer, "checkpoint_output_tokens": len(answer) // 4}
        with app.app_context(), recovery.holding(job_id, "executing", checkpoint=checkpoint):
            stop.wait()

    workers = [gevent.spawn(work, job_id) for job_id in ids]
    gevent.sleep(0)  # every job is held from here on
    cpu = time.process_time()
    gevent.sleep(seconds + interval / 2)  # whole rounds of renewals, none cut at the edge
    cpu = time.process_time() - cpu
    figures = dict(counts)
    stop.set()
    gevent.joinall(workers)
    with app.app_context():
        db.session.execute(delete(Job).where(Job.id.in_(ids)))
        db.session.commit()
        db.engine.dispose()
    return figures, cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--checkpoint-bytes", type=int, default=2048)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--interval", type=float, default=2, help="JOB_CHECKPOINT_SECONDS")
    parser.add_argument("--database", action="append", default=[], help="a database URL to measure too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        urls = [f"sqlite:///{folder}/bench.sqlite3", *args.database]
        print(f"{args.jobs} jobs held, {args.checkpoint_bytes} B checkpoints, renewed every "
              f"{args.interval:g} s, for {args.seconds:g} s; load average {os.getloadavg()[0]:.2f}")
        print(f"{'database':<12}{'renewals':>10}{'txns':>8}{'stmts':>8}{'CPU s':>8}{'CPU s / 10 s':>14}")
        for url in urls:
            figures, cpu = measure(url, args.jobs, args.checkpoint_bytes, args.seconds, args.interval)
            per_10s = cpu / figures["renewals"] * args.jobs * 10 / args.interval if figures["renewals"] else 0
            print(f"{url.split(':')[0]:<12}{figures['renewals']:>10}{figures['transactions']:>8}"
                  f"{figures['statements']:>8}{cpu:>8.3f}{per_10s:>14.3f}")


if __name__ == "__main__":
    main()
