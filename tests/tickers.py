"""Loopback servers that answer like Coinbase's, Kraken's and Bitstamp's public BTC/USD tickers."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def coinbase_body(price):
    return {"data": {"amount": price, "base": "BTC", "currency": "USD"}}


def kraken_body(price):
    return {"error": [], "result": {"XXBTZUSD": {"a": [price, "1", "1.000"], "b": [price, "2", "2.000"],
                                                  "c": [price, "0.01"], "v": ["10", "20"]}}}


def bitstamp_body(price):
    return {"timestamp": "1764820000", "open": price, "high": price, "low": price, "last": price,
            "volume": "1000", "vwap": price, "bid": price, "ask": price}


BODIES = {"coinbase": coinbase_body, "kraken": kraken_body, "bitstamp": bitstamp_body}
PATHS = {"coinbase": "/v2/prices/BTC-USD/spot", "kraken": "/0/public/Ticker?pair=XBTUSD",
         "bitstamp": "/api/v2/ticker/btcusd/"}


class TickerServer(ThreadingHTTPServer):
    """One exchange's ticker on a free loopback port; counts the requests it receives."""

    daemon_threads = True

    def __init__(self, fmt, price):
        super().__init__(("127.0.0.1", 0), Handler)
        self.format = fmt
        self.url = f"http://127.0.0.1:{self.server_address[1]}{PATHS[fmt]}"
        self.host = f"127.0.0.1:{self.server_address[1]}"
        self.requests = 0
        self.arrived = threading.Event()  # set when a request comes in
        self.hold = None  # an Event: requests wait for it before they are answered
        self.set_price(price)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def set_price(self, price):
        self.reply(200, json.dumps(BODIES[self.format](price)).encode())

    def reply(self, status, body, delay=0.0, content_type="application/json"):
        """Answer every request from now on with this status and body (after delay seconds)."""
        self.status, self.body, self.delay, self.content_type = status, body, delay, content_type

    @property
    def source(self):
        return f"{self.format}={self.url}"

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        if self.hold is not None:
            self.hold.set()
        self.shutdown()
        self.server_close()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests += 1
        self.server.arrived.set()
        if self.server.hold is not None:
            self.server.hold.wait(60)
        if self.server.delay:
            time.sleep(self.server.delay)
        try:
            self.send_response(self.server.status)
            self.send_header("Content-Type", self.server.content_type)
            self.send_header("Content-Length", str(len(self.server.body)))
            self.end_headers()
            self.wfile.write(self.server.body)
        except OSError:
            pass  # the client gave up waiting: that is what a slow source is for

    def log_message(self, *args):
        pass
