"""BTC/USD from public tickers: each source fetched with a deadline, cached, and dropped once stale.

A source is `format=url`. The formats are the public JSON tickers of three exchanges:
coinbase (GET /v2/prices/BTC-USD/spot), kraken (GET /0/public/Ticker?pair=XBTUSD) and bitstamp
(GET /api/v2/ticker/btcusd/). With no sources configured the Workshop uses the fixed BTC_USD.
"""
import json
import logging
import re
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from urllib.parse import urlsplit

import gevent
import httpx2
from gevent.lock import BoundedSemaphore

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024  # a ticker is a few hundred bytes; anything far larger is not one
MAX_PRICE_USD = Decimal(10) ** 15


def coinbase(body):
    """Read Coinbase's spot price: {"data": {"amount": "…", "base": "BTC", "currency": "USD"}}."""
    data = body["data"]
    if data.get("base") != "BTC" or data.get("currency") != "USD":
        raise ValueError("not a BTC-USD price")
    return data["amount"]


def kraken(body):
    """Read Kraken's ticker: {"error": [], "result": {"XXBTZUSD": {"c": ["<last>", "<lot>"]}}}."""
    if body.get("error"):
        raise ValueError(f"Kraken reports {body['error']}")
    (ticker,) = body["result"].values()  # exactly one pair was asked for
    return ticker["c"][0]


def bitstamp(body):
    """Read Bitstamp's ticker: {"last": "…", "bid": "…", "ask": "…", …}."""
    return body["last"]


FORMATS = {"coinbase": coinbase, "kraken": kraken, "bitstamp": bitstamp}


@dataclass(frozen=True)
class Source:
    name: str  # the host, which is what the visitor is shown
    format: str
    url: str


@dataclass(frozen=True)
class Quote:
    source: str
    price_usd: Decimal
    fetched_at: float  # the oracle's clock


def parse_sources(text):
    """Return the Sources in BTC_USD_SOURCES (`format=url`, separated by commas or spaces)."""
    sources = []
    for entry in re.split(r"[\s,]+", text.strip()) if text and text.strip() else []:
        fmt, sep, url = entry.partition("=")
        parts = urlsplit(url)
        if not sep or fmt not in FORMATS or parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"BTC_USD_SOURCES entry {entry!r} is not format=url with a format of "
                             f"{', '.join(FORMATS)} and an http(s) URL")
        if any(s.name == parts.netloc for s in sources):
            raise ValueError(f"BTC_USD_SOURCES names {parts.netloc} twice")
        sources.append(Source(parts.netloc, fmt, url))
    return sources


def parse_price(fmt, raw):
    """Return the positive, finite price in a source's response body, or raise ValueError."""
    try:
        value = FORMATS[fmt](json.loads(raw))
        # Prices come as strings (or numbers); a bool or a nested object is not a price.
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"price is {type(value).__name__}")
        price = Decimal(str(value))
    except (KeyError, IndexError, TypeError, AttributeError, InvalidOperation, RecursionError) as error:
        raise ValueError(f"unreadable {fmt} ticker ({type(error).__name__})") from None
    # Beyond 10^15 it would not fit the jobs' price column, and is no price anyway.
    if not price.is_finite() or not 0 < price < MAX_PRICE_USD:
        raise ValueError(f"{fmt} ticker gave price {value!r}")
    return price


class Oracle:
    """Per-process quotes: a source is fetched at most once per refresh interval, success or not."""

    def __init__(self, sources, refresh_seconds, max_age_seconds, timeout_seconds):
        self.sources, self.refresh, self.max_age = sources, refresh_seconds, max_age_seconds
        self.timeout = timeout_seconds
        self.quotes, self.attempted = {}, {}  # source name -> Quote, -> clock time
        self.clock = time.monotonic  # ages are measured on it; a test may wind it on
        # One refresh at a time: a crowd of visitors costs each source one request, not one each.
        self.lock = BoundedSemaphore()

    def fresh_quotes(self):
        """Return the quotes no older than the maximum age, refreshing the sources that are due."""
        if self._due():
            # A visitor waits for a refresh only when nothing fresh is at hand meanwhile.
            if self.lock.acquire(blocking=not self._fresh()):
                try:
                    due = self._due()  # another greenlet may have refreshed them while we waited
                    for s in due:
                        self.attempted[s.name] = self.clock()
                    greenlets = [gevent.spawn(self._fetch, s) for s in due]
                    gevent.joinall(greenlets)
                    for quote in (g.value for g in greenlets):
                        if quote is not None:
                            self.quotes[quote.source] = quote
                finally:
                    self.lock.release()
        return self._fresh()

    def _due(self):
        now = self.clock()
        return [s for s in self.sources if now - self.attempted.get(s.name, -float("inf")) >= self.refresh]

    def _fresh(self):
        now = self.clock()
        return [q for q in self.quotes.values() if now - q.fetched_at <= self.max_age]

    def _fetch(self, source):
        """Return a Quote from the source, or None (logged) if it is down, slow or talks nonsense."""
        try:
            # The client's timeouts bound each read; gevent's bounds the whole exchange.
            with gevent.Timeout(self.timeout), httpx2.Client(timeout=self.timeout) as client, \
                    client.stream("GET", source.url, headers={"Accept": "application/json"}) as reply:
                reply.raise_for_status()
                body = b""
                for chunk in reply.iter_bytes():
                    body += chunk
                    if len(body) > MAX_BODY_BYTES:
                        raise ValueError("response too large for a ticker")
            return Quote(source.name, parse_price(source.format, body), self.clock())
        except (gevent.Timeout, httpx2.HTTPError, ValueError) as error:
            log.warning("BTC/USD source %s failed: %s", source.name, error or type(error).__name__)
            return None


def init_app(app):
    """Build the app's price oracle from BTC_USD_SOURCES (no sources: the fixed BTC_USD)."""
    c = app.config
    app.extensions["btc_oracle"] = Oracle(
        parse_sources(c["BTC_USD_SOURCES"]), float(c["BTC_USD_REFRESH_SECONDS"]),
        float(c["BTC_USD_MAX_AGE_SECONDS"]), float(c["BTC_USD_TIMEOUT_SECONDS"]))
