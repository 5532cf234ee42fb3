"""The BTC/USD oracle against loopback tickers: medians, dead and lying sources, caching, staleness."""
import json
import threading
import time
from decimal import Decimal

import pytest
import requests

from app import oracle, pricing
from app.models import Invoice, Job, db

from conftest import LiveServer, wait_for_jobs
from tickers import TickerServer

REQUEST = "Plan a beginner's soldering workshop"


class Clock:
    """The oracle's clock, wound on by hand: ages without waiting for them."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def tickers():
    servers = [TickerServer("coinbase", "100000.00").start(), TickerServer("kraken", "101000.0").start(),
               TickerServer("bitstamp", "99000.50").start()]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def oracle_app(make_app, tickers):
    """An app priced by the three tickers: refresh every 60 s, nothing older than 600 s."""
    apps = []

    def make(**config):
        app = make_app(**{"BTC_USD_SOURCES": " , ".join(s.source for s in tickers),
                          "BTC_USD_REFRESH_SECONDS": 60, "BTC_USD_MAX_AGE_SECONDS": 600,
                          "BTC_USD_TIMEOUT_SECONDS": 2, **config})
        app.clock = app.extensions["btc_oracle"].clock = Clock()
        apps.append(app)
        return app
    yield make
    for app in apps:
        with app.app_context():
            db.engine.dispose()


def quote(app):
    with app.app_context():
        return pricing.btc_usd_quote()


def label(*servers):
    return "median:" + ",".join(sorted(s.host for s in servers))


def test_the_price_is_the_median_of_three_fresh_quotes(oracle_app, tickers):
    app = oracle_app()
    assert quote(app) == (Decimal("100000.00"), label(*tickers))
    assert [s.requests for s in tickers] == [1, 1, 1]


def test_a_source_that_is_down_is_left_out(oracle_app, tickers):
    tickers[0].stop()  # coinbase: connection refused
    app = oracle_app()
    # The median of the other two is their mean: (101,000.0 + 99,000.50) / 2.
    assert quote(app) == (Decimal("100000.25"), label(*tickers[1:]))


@pytest.mark.parametrize("status, body", [
    (200, b"<html>Service Unavailable</html>"),
    (200, b'{"data": {"amount": "lots", "base": "BTC", "currency": "USD"}}'),
    (200, b'{"data": {"amount": "-5", "base": "BTC", "currency": "USD"}}'),
    (200, b'{"data": {"amount": "NaN", "base": "BTC", "currency": "USD"}}'),
    (200, b'{"data": {"amount": "1e400", "base": "BTC", "currency": "USD"}}'),
    (200, b'{"data": {"amount": true, "base": "BTC", "currency": "USD"}}'),
    (200, b'{"data": {"amount": "100000", "base": "ETH", "currency": "USD"}}'),
    (200, b'{"errors": [{"id": "not_found"}]}'),
    (200, b"[" * 5_000),  # nested past the parser's recursion limit
    (200, b"[" * 100_000),  # past the size a ticker could be
    (200, b'{"data": {"amount": "1' + b"0" * 70_000 + b'"}}'),
    (503, b'{"data": {"amount": "100000", "base": "BTC", "currency": "USD"}}'),
])
def test_a_source_returning_garbage_is_left_out(oracle_app, tickers, status, body):
    tickers[0].reply(status, body)
    app = oracle_app()
    assert quote(app) == (Decimal("100000.25"), label(*tickers[1:]))
    assert tickers[0].requests == 1


def test_a_source_slower_than_the_deadline_is_left_out(oracle_app, tickers):
    tickers[2].reply(200, json.dumps({"last": "1"}).encode(), delay=3)
    app = oracle_app(BTC_USD_TIMEOUT_SECONDS=0.5)
    assert quote(app) == (Decimal("100500.00"), label(*tickers[:2]))


def test_quotes_are_cached_and_each_source_asked_once_per_refresh(oracle_app, tickers):
    app = oracle_app()
    tickers[2].stop()  # a dead source is retried once per refresh too, not on every quote
    for _ in range(5):
        assert quote(app)[0] == Decimal("100500.00")
    assert [s.requests for s in tickers[:2]] == [1, 1]
    tickers[0].set_price("102000")
    app.clock.now += 59
    assert quote(app)[0] == Decimal("100500.00")  # still the cached quotes
    app.clock.now += 1
    assert quote(app)[0] == Decimal("101500.00")  # refreshed
    assert [s.requests for s in tickers[:2]] == [2, 2]


def test_a_failed_refresh_keeps_a_quote_until_its_maximum_age(oracle_app, tickers):
    app = oracle_app()
    quote(app)
    tickers[0].reply(500, b"")
    app.clock.now += 300
    assert quote(app) == (Decimal("100000.00"), label(*tickers))  # coinbase's 300 s old quote counts
    app.clock.now += 301
    assert quote(app) == (Decimal("100000.25"), label(*tickers[1:]))  # 601 s old: no longer
    assert tickers[0].requests == 3


def test_when_every_quote_is_stale_the_workshop_refuses_to_quote(oracle_app, tickers):
    app = oracle_app()
    quote(app)
    for server in tickers:
        server.reply(502, b"Bad Gateway")
    app.clock.now += 601
    with app.app_context(), pytest.raises(pricing.PriceUnavailable, match="in the last 10 minutes"):
        pricing.btc_usd_quote()
    assert [s.requests for s in tickers] == [2, 2, 2]


def test_no_fresh_price_refuses_the_job_before_any_invoice(oracle_app, tickers):
    for server in tickers:
        server.stop()
    app = oracle_app()
    client = app.test_client()
    response = client.post("/api/jobs", json={"request": REQUEST})
    assert response.status_code == 503
    assert response.json["error"].startswith("Timmy can't quote right now")
    assert "Nothing was charged" in response.json["error"]
    form = client.post("/jobs", data={"request": REQUEST}, headers={"HX-Request": "true"})
    assert form.status_code == 503 and "Timmy can&#39;t quote right now" in form.get_data(as_text=True)
    with app.app_context():
        assert db.session.query(Job).count() == 0 and db.session.query(Invoice).count() == 0


def test_a_job_locks_the_median_and_shows_where_it_came_from(oracle_app, tickers):
    app = oracle_app()
    client = app.test_client()
    job = client.post("/api/jobs", json={"request": REQUEST}).json
    client.post(f"/api/dev/pay/{job['evalInvoice']['paymentHash']}")
    wait_for_jobs()
    for server in tickers:
        server.set_price("50000")  # later prices don't move a quoted job
    app.clock.now += 3600
    job = client.get(f"/api/jobs/{job['jobId']}").json
    assert job["state"] == "awaiting_work_payment"
    breakdown = job["pricingBreakdown"]
    assert breakdown["btcUsd"] == "100000.00" and breakdown["btcUsdSource"] == label(*tickers)
    page = client.get(f"/jobs/{job['jobId']}").get_data(as_text=True)
    hosts = ", ".join(sorted(s.host for s in tickers))
    assert f"$100,000.00 (median of {hosts}, locked for this job)" in page


def test_a_price_gone_stale_before_evaluation_fails_it_with_a_clear_message(oracle_app, tickers):
    app = oracle_app()
    client = app.test_client()
    job = client.post("/api/jobs", json={"request": REQUEST}).json
    for server in tickers:
        server.stop()
    app.clock.now += 601
    client.post(f"/api/dev/pay/{job['evalInvoice']['paymentHash']}")
    wait_for_jobs()
    job = client.get(f"/api/jobs/{job['jobId']}").json
    assert job["state"] == "failed" and job["workInvoice"] is None
    assert job["errorMessage"].startswith("Timmy can't quote right now: none of the Workshop's BTC price")


def test_without_sources_the_fixed_price_is_used_and_labelled_fixed(client, app):
    with app.app_context():
        assert pricing.btc_usd_quote() == (Decimal("100000"), "fixed")
    job = client.post("/api/jobs", json={"request": REQUEST}).json
    client.post(f"/api/dev/pay/{job['evalInvoice']['paymentHash']}")
    wait_for_jobs()
    assert client.get(f"/api/jobs/{job['jobId']}").json["pricingBreakdown"]["btcUsdSource"] == "fixed"
    assert "$100,000.00 (a fixed price set by the Workshop)" in client.get(f"/jobs/{job['jobId']}").get_data(as_text=True)


@pytest.mark.parametrize("text", ["https://api.coinbase.com/v2/prices/BTC-USD/spot", "binance=https://x.test/",
                                  "kraken=ftp://x.test/", "kraken=", "coinbase=https://a.test/ bitstamp=https://a.test/b"])
def test_a_misconfigured_source_is_refused_at_start(text):
    with pytest.raises(ValueError, match="BTC_USD_SOURCES"):
        oracle.parse_sources(text)


def test_sources_parse_in_every_format():
    sources = oracle.parse_sources("coinbase=https://api.coinbase.com/v2/prices/BTC-USD/spot,"
                                   "kraken=https://api.kraken.com/0/public/Ticker?pair=XBTUSD\n"
                                   "bitstamp=https://www.bitstamp.net/api/v2/ticker/btcusd/")
    assert [(s.name, s.format) for s in sources] == [("api.coinbase.com", "coinbase"),
                                                      ("api.kraken.com", "kraken"), ("www.bitstamp.net", "bitstamp")]
    assert sources[1].url.endswith("?pair=XBTUSD") and oracle.parse_sources("") == []


@pytest.mark.integration
def test_gunicorn_serves_others_while_a_source_is_slow_then_prices_the_job(tmp_path, redis_url, tickers):
    """Under the gevent worker a fetch waits without blocking the worker; the quote is the median."""
    tickers[2].hold = threading.Event()
    server = LiveServer(tmp_path, redis_url, BTC_USD_SOURCES=" ".join(s.source for s in tickers),
                        BTC_USD_TIMEOUT_SECONDS="30").start()
    session, created = requests.Session(), {}
    try:
        creating = threading.Thread(target=lambda: created.update(
            response=session.post(server.url + "/api/jobs", json={"request": REQUEST}, timeout=60)))
        creating.start()
        assert tickers[2].arrived.wait(30)
        # Bitstamp holds its answer, so the job's request is still waiting on the oracle; the
        # one worker answers another visitor all the same.
        assert requests.get(server.url + "/", timeout=20).status_code == 200
        assert "response" not in created
        tickers[2].hold.set()
        creating.join(60)
        job = created["response"].json()
        assert created["response"].status_code == 201, job
        assert session.post(server.url + f"/api/dev/pay/{job['evalInvoice']['paymentHash']}", timeout=20).ok
        for _ in range(300):
            job = session.get(server.url + f"/api/jobs/{job['jobId']}", timeout=20).json()
            if job["state"] != "evaluating" and job["state"] != "awaiting_eval_payment":
                break
            time.sleep(0.1)
        assert job["state"] == "awaiting_work_payment", job
        assert job["pricingBreakdown"]["btcUsd"] == "100000.00"
        assert job["pricingBreakdown"]["btcUsdSource"] == label(*tickers)
        assert [s.requests for s in tickers] == [1, 1, 1]  # job creation fetched; the quote reused it
    finally:
        server.stop()


def test_a_short_freshness_window_is_said_in_seconds():
    assert pricing._period(15) == "15 seconds" and pricing._period(1) == "1 second"
    assert pricing._period(600) == "10 minutes" and pricing._period(119) == "119 seconds"
