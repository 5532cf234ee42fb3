"""The one pricing module: every sats figure the Workshop shows or bills comes from here.

Money is Decimal (USD) or integer millisatoshis. Charges round up to the next msat, refunds
round down to whole sats, and displays round the way the charge does (up).
"""
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from statistics import median

from flask import current_app

MSAT_PER_BTC = 100_000_000_000
MSAT_PER_SAT = 1000
TOKENS_PER_MILLION = Decimal(1_000_000)


class UnknownModel(LookupError):
    """The model has no price, so nothing can be quoted for it."""


class PriceUnavailable(Exception):
    """No BTC/USD source has a fresh price: the Workshop quotes nothing rather than guess one."""


@dataclass(frozen=True)
class Tariff:
    prices_usd_per_mtok: dict  # model -> {"input": Decimal, "output": Decimal}
    margin_pct: Decimal
    infra_usd_per_request: Decimal

    def rates(self, model):
        try:
            return self.prices_usd_per_mtok[model]
        except KeyError:
            raise UnknownModel(model) from None


def tariff():
    """Return the tariff configured for this app."""
    c = current_app.config
    return Tariff(c["MODEL_PRICES"], c["MARGIN_PCT"], c["INFRA_USD_PER_REQUEST"])


def btc_usd_quote():
    """Return (BTC/USD price, source label): the median of the fresh quotes, or the fixed price.

    The label is "fixed" or "median:" and the hosts whose quotes made the median, comma-separated.
    """
    oracle = current_app.extensions["btc_oracle"]
    if not oracle.sources:
        return Decimal(current_app.config["BTC_USD"]), "fixed"
    quotes = oracle.fresh_quotes()
    if not quotes:
        raise PriceUnavailable(f"Timmy can't quote right now: none of the Workshop's BTC price "
                               f"sources has given a price in the last {_period(oracle.max_age)}.")
    # To the cent, as the price is stored on the job; the median of two is their mean.
    price = median(q.price_usd for q in quotes).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)
    return price, "median:" + ",".join(sorted(q.source for q in quotes))


def _period(seconds):
    """Say a span of seconds in the unit that fits: '45 seconds', '10 minutes'."""
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} second{'' if seconds == 1 else 's'}"
    return f"{round(seconds / 60)} minutes"


def fee_usd(t, model, input_tokens, output_tokens, cache_read_tokens=0, cache_write_tokens=0):
    """Return the fee in USD: (token cost + infra share) x (1 + margin).

    input_tokens are those billed at the full input rate; cached prompt tokens are priced at the
    cache rates (the input rate where a model has none) and never also at the full rate.
    """
    rates = t.rates(model)
    token_cost = (input_tokens * rates["input"] + output_tokens * rates["output"]
                  + cache_read_tokens * rates.get("cache_read", rates["input"])
                  + cache_write_tokens * rates.get("cache_write", rates["input"])) / TOKENS_PER_MILLION
    return (token_cost + t.infra_usd_per_request) * (1 + t.margin_pct / 100)


def usd_to_msat(usd, btc_usd):
    """Convert USD to msats at the given price, rounding up (this is a charge)."""
    return int((Decimal(usd) * MSAT_PER_BTC / Decimal(btc_usd)).to_integral_value(ROUND_CEILING))


def charge_msat(t, model, input_tokens, output_tokens, btc_usd, cache_read_tokens=0, cache_write_tokens=0):
    """Return what the given usage costs the visitor, in msats (rounded up)."""
    return usd_to_msat(fee_usd(t, model, input_tokens, output_tokens, cache_read_tokens,
                               cache_write_tokens), btc_usd)


def invoice_sats(msat):
    """Return the whole-sat invoice amount that covers msat (rounded up)."""
    return -(-int(msat) // MSAT_PER_SAT)


def refund_owed_msat(paid_msat, actual_msat):
    """Return what is owed back: paid minus actual, rounded down to whole sats, never negative."""
    return max(0, (int(paid_msat) - int(actual_msat)) // MSAT_PER_SAT * MSAT_PER_SAT)


def display_sats(msat, places=0):
    """Return msat as a Decimal number of sats to `places` decimals, rounded up like the charge."""
    step = Decimal(1).scaleb(-places)
    return (Decimal(int(msat)) / MSAT_PER_SAT).quantize(step, rounding=ROUND_CEILING)


def display_refund_sats(msat):
    """Return a refund in whole sats, rounded down like the refund itself."""
    return (Decimal(int(msat)) / MSAT_PER_SAT).quantize(Decimal(1), rounding=ROUND_FLOOR)


def quote(t, model, input_tokens, estimated_output_tokens, btc_usd, btc_usd_source=None):
    """Return the work quote: invoice amount and the breakdown shown to the visitor."""
    usd = fee_usd(t, model, input_tokens, estimated_output_tokens)
    amount_sats = invoice_sats(usd_to_msat(usd, btc_usd))
    return {
        "model": model,
        "inputTokens": input_tokens,
        "estimatedOutputTokens": estimated_output_tokens,
        "estimatedTokens": input_tokens + estimated_output_tokens,
        "feeUsd": str(usd.quantize(Decimal("0.000001"), rounding=ROUND_CEILING)),
        "btcUsd": str(btc_usd),
        "btcUsdSource": btc_usd_source or "fixed",  # jobs quoted before the oracle had a fixed price
        "marginPct": str(t.margin_pct),
        "infraUsdPerRequest": str(t.infra_usd_per_request),
        "amountSats": amount_sats,
    }
