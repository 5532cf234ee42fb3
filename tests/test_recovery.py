"""Nothing lost: real gunicorn processes killed, restarted and stopped mid-job, two instances
sharing Redis and the database (Postgres where TEST_DATABASE_URL is set), and Redis itself
stopped and started while a viewer watches."""
import html
import os
import re
import signal
import threading
import time

import pytest
import requests

from conftest import (LiveServer, assert_settled, free_port, parse_sse, start_redis_server,
                      stored_jobs, worker_pids)

pytestmark = pytest.mark.integration

REQUEST = ("Write a careful plan for a neighbourhood tool library: what to stock, how lending works, "
           "who repairs things, how volunteers are found and kept, and what it costs each month.")
FAST_RECOVERY = {"JOB_LEASE_SECONDS": "2", "JOB_CHECKPOINT_SECONDS": "0.3", "SSE_HEARTBEAT_SECONDS": "1",
                 "DEMO_TOKENS_PER_SECOND": "50"}


class Viewer(threading.Thread):
    """An SSE client in a thread, recording every event of one stream until it ends."""

    def __init__(self, session, url):
        super().__init__(daemon=True)
        self.session, self.url, self.events = session, url, []
        self.connected, self.lock = threading.Event(), threading.Lock()

    def run(self):
        with self.session.get(self.url, stream=True, timeout=90) as response:
            self.status = response.status_code
            self.connected.set()
            lines = []
            for line in response.iter_lines(decode_unicode=True):
                lines.append(line)
                if line == "":
                    with self.lock:
                        self.events = list(parse_sse(lines))

    def seen(self, kind):
        with self.lock:
            return [data for event, data in self.events if event == kind]


def wait_until(predicate, timeout=60, every=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


def answer_watched(events):
    """The answer as a browser shows it: the last executing snapshot, plus the frames after it."""
    answer = ""
    for kind, data in events:
        if kind == "job_state" and 'data-state="executing"' in data:
            answer = html.unescape(re.search(r'class="answer"[^>]*>(.*?)</div>', data, re.S).group(1))
        elif kind == "job_answer":
            answer += html.unescape(data)
    return answer


def paid_job(server, session):
    """Create a job on server and pay both invoices; return the job as the API shows it."""
    job = session.post(f"{server.url}/api/jobs", json={"request": REQUEST}).json()
    session.post(f"{server.url}/api/dev/pay/{job['evalInvoice']['paymentHash']}").raise_for_status()
    assert wait_until(lambda: session.get(f"{server.url}/api/jobs/{job['jobId']}").json()["state"]
                      == "awaiting_work_payment", timeout=30)
    job = session.get(f"{server.url}/api/jobs/{job['jobId']}").json()
    session.post(f"{server.url}/api/dev/pay/{job['workInvoice']['paymentHash']}").raise_for_status()
    return job


def stored(url, job_id):
    return next(row for row in stored_jobs(url) if row.id == job_id)


def final_job(server, session, job_id):
    assert wait_until(lambda: session.get(f"{server.url}/api/jobs/{job_id}").json()["state"]
                      in ("complete", "failed"), timeout=60)
    return session.get(f"{server.url}/api/jobs/{job_id}").json()


def watched_into_an_outage(server, session, redis_server):
    """Pay a job, watch it stream, stop Redis; return the job and its viewer once told of the outage."""
    job = paid_job(server, session)
    viewer = Viewer(session, server.url + job["streamUrl"])
    viewer.start()
    assert wait_until(lambda: len(viewer.seen("job_answer")) > 5)
    redis_server.terminate()
    redis_server.wait(10)
    assert wait_until(lambda: any('data-live="0"' in s for s in viewer.seen("job_live")), timeout=20)
    return job, viewer


def test_a_job_run_on_a_is_watched_from_b_and_recovered_after_kill_9_of_as_worker(
        tmp_path, redis_url, shared_database, app):
    env = {"DATABASE_URL": shared_database, **FAST_RECOVERY}
    a = LiveServer(tmp_path, redis_url, **env).start()
    b = LiveServer(tmp_path, redis_url, **env).start()
    session = requests.Session()
    try:
        job = paid_job(a, session)
        [worker] = worker_pids(a)
        viewer = Viewer(session, b.url + job["streamUrl"])  # watched from the other instance
        viewer.start()
        # A's worker is executing it, and has checkpointed some of the answer.
        assert wait_until(lambda: (stored(shared_database, job["jobId"]).checkpoint_output_tokens or 0) > 20)
        assert stored(shared_database, job["jobId"]).lease_owner.split(":")[1] == str(worker)
        assert wait_until(lambda: len(viewer.seen("job_answer")) > 5)  # B relays A's frames live
        os.kill(worker, signal.SIGKILL)
        viewer.join(60)
        final = final_job(b, session, job["jobId"])
        assert final["state"] == "failed" and "restarted" in final["errorMessage"]
        assert final["costLedger"]["usageSource"] == "checkpoint"
        assert final["result"] and answer_watched(viewer.events).startswith(final["result"])
        assert final["costLedger"]["refundOwedMsat"] > 0  # the unwritten rest is owed back
        kind, panel = viewer.events[-1]
        assert kind == "job_complete"  # the viewer on B got the final panel without reloading
        assert f'data-actual-msat="{final["costLedger"]["actualMsat"]}"' in panel
        assert "as last saved" in panel
        assert_settled(app, final, shared_database)
        assert worker not in worker_pids(a)  # A's master started a new worker meanwhile
    finally:
        session.close()
        a.stop()
        b.stop()


def test_a_job_whose_whole_server_was_killed_is_ended_when_it_starts_again(
        tmp_path, redis_url, shared_database, app):
    env = {"DATABASE_URL": shared_database, **FAST_RECOVERY}
    server = LiveServer(tmp_path, redis_url, **env).start()
    session = requests.Session()
    try:
        job = paid_job(server, session)
        assert wait_until(lambda: (stored(shared_database, job["jobId"]).checkpoint_output_tokens or 0) > 20)
        os.killpg(server.process.pid, signal.SIGKILL)  # master and worker, with no warning
        server.process.wait()
        assert stored(shared_database, job["jobId"]).state == "executing"
        again = LiveServer(tmp_path, redis_url, **env)
        again.port, again.url, again.env["PORT"] = server.port, server.url, str(server.port)
        server = again.start()
        final = final_job(server, session, job["jobId"])
        assert final["state"] == "failed" and final["costLedger"]["usageSource"] == "checkpoint"
        assert final["costLedger"]["outputTokens"] > 20
        assert_settled(app, final, shared_database)
    finally:
        session.close()
        server.stop()


def test_sigterm_settles_the_running_job_and_closes_streams_without_the_grace_timeout(
        tmp_path, redis_url, shared_database, app):
    server = LiveServer(tmp_path, redis_url, DATABASE_URL=shared_database, **FAST_RECOVERY).start()
    idle = LiveServer(tmp_path, redis_url, DATABASE_URL=shared_database, **FAST_RECOVERY).start()
    session = requests.Session()
    try:
        job = paid_job(server, session)
        viewer = Viewer(session, server.url + job["streamUrl"])
        other = session.post(f"{server.url}/api/jobs", json={"request": "Hello"}).json()
        waiting = Viewer(session, server.url + other["streamUrl"])  # a stream with nothing to say
        viewer.start()
        waiting.start()
        assert wait_until(lambda: len(viewer.seen("job_answer")) > 5 and waiting.seen("job_state"))
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(30)
        viewer.join(10)
        waiting.join(10)
        assert not viewer.is_alive() and not waiting.is_alive()  # both streams were closed
        log = server.log.read_text()
        assert "Worker graceful timeout" not in log  # nothing held the worker to the deadline
        final = final_job(idle, session, job["jobId"])
        assert final["state"] == "failed" and "restarted" in final["errorMessage"]
        assert final["costLedger"]["usageSource"] == "estimate"  # its own exact count, not a checkpoint
        assert answer_watched(viewer.events) == final["result"]  # the last frame was sent
        assert viewer.events[-1][0] == "job_complete"
        assert_settled(app, final)
        assert session.get(f"{idle.url}/api/jobs/{other['jobId']}").json()["state"] == "awaiting_eval_payment"
    finally:
        session.close()
        server.stop()
        idle.stop()


def test_redis_stopped_and_started_mid_job_the_job_goes_on_and_viewers_converge(
        tmp_path, shared_database, app):
    port = free_port()
    redis_server = start_redis_server(port, tmp_path)
    redis_url = f"redis://127.0.0.1:{port}/0"
    # A slower Timmy: the outage and the viewer arriving during it fit well inside the job.
    server = LiveServer(tmp_path, redis_url, DATABASE_URL=shared_database,
                        **{**FAST_RECOVERY, "DEMO_TOKENS_PER_SECOND": "25"}).start()
    session = requests.Session()
    try:
        # The viewer is told the live view is reconnecting; the job goes on and checkpoints.
        job, viewer = watched_into_an_outage(server, session, redis_server)
        before = stored(shared_database, job["jobId"]).checkpoint_output_tokens
        assert wait_until(lambda: stored(shared_database, job["jobId"]).checkpoint_output_tokens > before)
        page = session.get(f"{server.url}/jobs/{job['jobId']}")
        assert page.status_code == 200 and "Timmy is working" in page.text  # the page still renders
        late = Viewer(session, server.url + job["streamUrl"])  # a viewer arriving mid-outage
        late.start()
        assert wait_until(lambda: late.seen("job_live"), timeout=20)
        assert 'data-live="0"' in late.seen("job_live")[-1] and late.status == 200
        redis_server = start_redis_server(port, tmp_path)
        viewer.join(60)
        late.join(60)
        final = final_job(server, session, job["jobId"])
        assert final["state"] == "complete"
        for watcher in (viewer, late):
            assert watcher.events[-1][0] == "job_complete"  # converged, final panel included
            assert any('data-live="1"' in s for s in watcher.seen("job_live"))
            finals = [d for d in watcher.seen("job_state") if 'data-state="complete"' in d]
            assert finals and html.unescape(final["result"]) in html.unescape(finals[-1])
        assert answer_watched(viewer.events) == final["result"]  # nothing doubled, nothing lost
        assert_settled(app, final, shared_database)
    finally:
        session.close()
        server.stop()
        redis_server.terminate()
        redis_server.wait(10)


def test_a_job_that_ends_while_redis_is_down_converges_and_sigterm_still_closes_streams(
        tmp_path, shared_database, app):
    port = free_port()
    redis_server = start_redis_server(port, tmp_path)
    redis_url = f"redis://127.0.0.1:{port}/0"
    server = LiveServer(tmp_path, redis_url, DATABASE_URL=shared_database, **FAST_RECOVERY).start()
    session = requests.Session()
    try:
        job, viewer = watched_into_an_outage(server, session, redis_server)
        # Reads go on while Redis is away (limits count in memory meanwhile).
        assert session.get(f"{server.url}/api/jobs/{job['jobId']}").status_code == 200
        # The job ends during the outage: the viewer gets the final panel, and the notice goes.
        viewer.join(60)
        assert viewer.events[-1][0] == "job_complete"
        assert 'data-live="1"' in viewer.seen("job_live")[-1]
        final = final_job(server, session, job["jobId"])
        assert final["state"] == "complete"
        assert_settled(app, final, shared_database)
        other = session.post(f"{server.url}/api/jobs", json={"request": "Hello"})  # still no Redis
        assert other.status_code == 201
        # A stream still waiting for Redis ends at once on SIGTERM: no grace timeout reached.
        waiting = Viewer(session, server.url + other.json()["streamUrl"])
        waiting.start()
        assert wait_until(lambda: waiting.seen("job_live"), timeout=20)
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(30)
        waiting.join(10)
        assert not waiting.is_alive()
        assert "Worker graceful timeout" not in server.log.read_text()
    finally:
        session.close()
        server.stop()
        redis_server.terminate()
        redis_server.wait(10)
