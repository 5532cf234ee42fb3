"""A real Chromium watching a job through a Redis outage and through a kill -9 of its server."""
import os
import signal

import pytest
from conftest import LiveServer, assert_settled, free_port, start_redis_server
from test_browser import browser, expect, pay_both, submit_job, visitor  # noqa: F401 (fixture)

pytestmark = pytest.mark.browser

REQUEST = ("Write a careful guide to setting up a small electronics bench at home: tools, power, "
           "safety, lighting, storage, and a first project.")
FAST = {"JOB_LEASE_SECONDS": "2", "JOB_CHECKPOINT_SECONDS": "0.3", "SSE_HEARTBEAT_SECONDS": "1",
        "DEMO_TOKENS_PER_SECOND": "25"}


def test_the_page_says_it_is_reconnecting_while_redis_is_down_then_converges(
        browser, tmp_path, app):  # noqa: F811
    port = free_port()
    redis_server = start_redis_server(port, tmp_path)
    server = LiveServer(tmp_path, f"redis://127.0.0.1:{port}/0", **FAST).start()
    try:
        with visitor(browser, server) as page:
            job_id = submit_job(page, REQUEST)
            pay_both(page)
            page.evaluate("window.__sameDocument = true")
            status = page.locator(f"#live-{job_id}")
            expect(status).to_be_hidden()
            expect(page.locator(".answer")).not_to_be_empty()
            redis_server.terminate()
            redis_server.wait(10)
            expect(status).to_be_visible()
            expect(status).to_have_text("Live view reconnecting… the figures shown are the last ones received.")
            redis_server = start_redis_server(port, tmp_path)
            expect(status).to_be_hidden()
            final = page.locator(".final:not([hidden])")
            expect(final).to_be_visible(timeout=90_000)
            job = page.request.get(f"/api/jobs/{job_id}").json()
            assert job["state"] == "complete"
            assert page.locator(".answer").text_content() == job["result"]
            assert int(final.get_attribute("data-actual-msat")) == job["costLedger"]["actualMsat"]
            assert page.evaluate("window.__sameDocument") is True  # no reload
            assert_settled(app, job)
    finally:
        server.stop()
        redis_server.terminate()
        redis_server.wait(10)


def test_the_page_says_it_is_reconnecting_while_its_server_is_down_then_shows_the_recovery(
        browser, tmp_path, redis_url, app):  # noqa: F811
    server = LiveServer(tmp_path, redis_url, **FAST).start()
    try:
        with visitor(browser, server) as page:
            job_id = submit_job(page, REQUEST)
            pay_both(page)
            page.evaluate("window.__sameDocument = true")
            status = page.locator(f"#live-{job_id}")
            expect(page.locator(".answer")).not_to_be_empty()
            page.wait_for_timeout(1000)  # at least one checkpoint of the answer
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()
            expect(status).to_be_visible()  # the browser's stream broke (static/live.js)
            again = LiveServer(tmp_path, redis_url, **FAST)
            again.port, again.url, again.env["PORT"] = server.port, server.url, str(server.port)
            again.env["DATABASE_URL"] = server.env["DATABASE_URL"]
            server = again.start()
            final = page.locator(".final:not([hidden])")
            expect(final).to_be_visible(timeout=90_000)  # the job recovered from its checkpoint
            expect(status).to_be_hidden()
            expect(page.locator(".job-card")).to_have_attribute("data-state", "failed")
            expect(page.locator(".job-card .error")).to_contain_text("restarted")
            job = page.request.get(f"/api/jobs/{job_id}").json()
            assert job["costLedger"]["usageSource"] == "checkpoint"
            assert page.locator(".answer").text_content() == job["result"]
            assert page.evaluate("window.__sameDocument") is True
            assert_settled(app, job)
    finally:
        server.stop()
