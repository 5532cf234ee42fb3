from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app import pricing

TARIFF = pricing.Tariff({"m": {"input": Decimal("1.00"), "output": Decimal("3.00")}},
                        margin_pct=Decimal("20"), infra_usd_per_request=Decimal("0.0005"))
BTC = Decimal("100000")


def test_fee_is_token_cost_plus_infra_times_margin_exactly():
    # (200 x $1 + 1,047 x $3) / 1e6 = $0.003341; + $0.0005 = $0.003841; x 1.2 = $0.0046092
    assert pricing.fee_usd(TARIFF, "m", 200, 1047) == Decimal("0.0046092")


def test_charge_converts_at_the_locked_price_and_rounds_up():
    # $0.0046092 at $100,000/BTC = 4,609.2 msat -> 4,610 (a charge rounds up)
    assert pricing.charge_msat(TARIFF, "m", 200, 1047, BTC) == 4610
    assert pricing.charge_msat(TARIFF, "m", 200, 1047, Decimal("50000")) == 9219  # 9,218.4 up


def test_a_whole_msat_is_not_rounded_further():
    t = pricing.Tariff({"m": {"input": Decimal("0"), "output": Decimal("0")}}, Decimal("0"), Decimal("0.001"))
    assert pricing.charge_msat(t, "m", 0, 0, BTC) == 1000


def test_invoice_sats_round_up_and_refunds_round_down():
    assert pricing.invoice_sats(4610) == 5
    assert pricing.invoice_sats(5000) == 5
    assert pricing.invoice_sats(5001) == 6
    assert pricing.refund_owed_msat(5000, 4610) == 0       # 390 msat owed rounds down to 0 sats
    assert pricing.refund_owed_msat(10000, 4610) == 5000   # 5,390 msat -> 5 sats
    assert pricing.refund_owed_msat(4000, 4610) == 0       # never negative


def test_display_rounds_like_the_charge():
    assert pricing.display_sats(4610) == Decimal("5")
    assert pricing.display_sats(4610, 1) == Decimal("4.7")
    assert pricing.display_sats(3800, 1) == Decimal("3.8")
    assert pricing.display_sats(3801, 1) == Decimal("3.9")
    assert pricing.display_refund_sats(5999) == Decimal("5")


def test_quote_invoices_the_estimate_in_whole_sats():
    q = pricing.quote(TARIFF, "m", 200, 1047, BTC)
    assert q["amountSats"] == 5
    assert q["estimatedTokens"] == 1247
    assert q["feeUsd"] == "0.004610"  # shown to the micro-dollar, rounded up
    assert q["btcUsd"] == "100000" and q["marginPct"] == "20"


def test_money_is_never_a_float():
    assert isinstance(pricing.fee_usd(TARIFF, "m", 1, 1), Decimal)
    assert type(pricing.charge_msat(TARIFF, "m", 1, 1, BTC)) is int


def test_unknown_model_cannot_be_quoted():
    with pytest.raises(pricing.UnknownModel):
        pricing.charge_msat(TARIFF, "nope", 1, 1, BTC)


tokens = st.integers(min_value=0, max_value=2_000_000)


@given(tokens, tokens, tokens, tokens)
def test_charge_is_monotonic_in_tokens_and_never_negative(i1, o1, i2, o2):
    lo = pricing.charge_msat(TARIFF, "m", min(i1, i2), min(o1, o2), BTC)
    hi = pricing.charge_msat(TARIFF, "m", max(i1, i2), max(o1, o2), BTC)
    assert 0 <= lo <= hi


@given(st.integers(0, 10**9), st.integers(0, 10**9))
def test_refund_is_whole_sats_never_more_than_overpaid(paid, actual):
    refund = pricing.refund_owed_msat(paid, actual)
    assert refund % 1000 == 0 and 0 <= refund <= max(0, paid - actual) < refund + 1000


def test_cached_prompt_tokens_are_priced_at_cache_rates_and_not_twice():
    t = pricing.Tariff({"c": {"input": Decimal("3"), "output": Decimal("15"), "cache_read": Decimal("0.30"),
                              "cache_write": Decimal("3.75")}}, Decimal("0"), Decimal("0"))
    # 1M uncached at $3 + 1M cache reads at $0.30 + 1M cache writes at $3.75 = $7.05
    assert pricing.fee_usd(t, "c", 1_000_000, 0, 1_000_000, 1_000_000) == Decimal("7.05")
    # a model without cache rates prices cached tokens at its input rate
    assert pricing.fee_usd(TARIFF, "m", 0, 0, 1_000_000) == (Decimal("1") + Decimal("0.0005")) * Decimal("1.2")
