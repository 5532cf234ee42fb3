"""Every fragment renders with strict undefined in every state; the wording lives in templates."""
import re
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from app import filters, fragments
from app.models import FINAL_STATES, CostLedger, Invoice, Job, db

STATES = ["awaiting_eval_payment", "evaluating", "awaiting_work_payment", "executing", *FINAL_STATES]


def make_job(state):
    job = Job(id=f"job-{state}"[:32], visitor_id="v", channel=f"ch-{state}"[:32], state=state,
              request="Fix my <b>bike</b> & more", model="timmy-demo", input_tokens=47,
              estimated_output_tokens=1200, btc_usd=Decimal("100000"), reason="a reason",
              result="An answer with <script>x</script>", error_message="It broke.")
    later = datetime(2030, 1, 1)
    job.invoices.append(Invoice(payment_hash="e" * 64 + state, kind="eval", amount_msat=10000,
                                payment_request="lnbcrt100n1eval", expires_at=later, created_at=later))
    if state not in ("awaiting_eval_payment", "evaluating", "rejected"):
        job.invoices.append(Invoice(payment_hash="w" * 64 + state, kind="work", amount_msat=4000,
                                    payment_request="lnbcrt40n1work", expires_at=later,
                                    created_at=later + timedelta(seconds=1)))
    if state in ("complete", "failed"):
        job.ledger = CostLedger(model="timmy-demo", eval_fee_msat=10000, estimated_msat=4000, paid_msat=4000,
                                actual_msat=3800, refund_owed_msat=0, input_tokens=47, output_tokens=1200,
                                estimated_output_tokens=1200, usage_source="provider", btc_usd=Decimal("100000"))
    db.session.add(job)
    db.session.commit()
    return job


@pytest.mark.parametrize("state", STATES)
def test_the_card_and_final_panel_render_in_every_state(app, state):
    with app.test_request_context():
        job = make_job(state)
        card = fragments.card(job)
        assert f'data-state="{state}"' in card and 'sse-swap="job_state"' in card
        assert "&lt;b&gt;bike&lt;/b&gt; &amp; more" in card and "<b>bike" not in card
        final = fragments.final_panel(job)
        assert f'id="final-{job.id}"' in final
        assert ("Estimated: 4 sats · Actual: 3.8 sats" in final) == (state in ("complete", "failed"))
        assert ('class="ticker"' in card) == (state == "executing")
        if state == "awaiting_work_payment":
            assert "Pay with development wallet" in card and "~1,247" in card


def test_the_ticker_shows_estimates_with_separators_and_absolute_figures(app):
    with app.test_request_context():
        job = make_job("executing")
        html = fragments.ticker(job, tokens=1247, output_tokens=1200, msat=3801)
        assert ">~1,247 tokens · ~4 sats</span>" in html
        assert 'data-tokens="1247"' in html and 'data-output-tokens="1200"' in html
        assert 'data-msat="3801"' in html


def test_the_final_panel_carries_its_figures_and_any_refund(app):
    with app.test_request_context():
        job = make_job("complete")
        job.ledger.refund_owed_msat = 2000
        html = fragments.final_panel(job)
        assert 'data-estimated-sat="4"' in html and 'data-actual-msat="3800"' in html
        assert 'data-output-tokens="1200"' in html and "Refund owed: 2 sats" in html


def test_filters_format_numbers_the_way_the_charge_rounds():
    assert filters.thousands(1247) == "1,247"
    assert filters.sats(3801) == "4" and filters.sats(1_234_567_000) == "1,234,567"
    assert filters.sats_tenths(3800) == "3.8" and filters.sats_tenths(3801) == "3.9"
    assert filters.refund_sats(1999) == "1"


def test_pages_render(client, app):
    assert "Free chat" in client.get("/").get_data(as_text=True)
    assert client.get("/jobs/nope").status_code == 404
    assert "There is no such job" in client.get("/jobs/nope").get_data(as_text=True)


def test_the_page_names_an_icon_that_is_served(client):
    page = client.get("/").get_data(as_text=True)
    href = re.search(r'<link rel="icon" href="([^"]+)"', page).group(1)
    icon = client.get(href)
    assert icon.status_code == 200 and icon.mimetype == "image/svg+xml"


def test_the_invoice_carries_its_qr_code_copy_button_link_and_seconds_left(app):
    from app import qr
    with app.test_request_context():
        job = make_job("awaiting_eval_payment")
        job.invoices[0].expires_at = filters.utcnow() + timedelta(seconds=600)
        db.session.commit()
        before = filters.seconds_left(job.invoices[0].expires_at)
        card = fragments.card(job)
        after = filters.seconds_left(job.invoices[0].expires_at)
        assert str(qr.lightning_qr("lnbcrt100n1eval")) in card
        assert 'href="lightning:lnbcrt100n1eval"' in card and ">lnbcrt100n1eval</textarea>" in card
        assert re.search(r'<button type="button" class="button secondary copy-button" hidden data-copy="bolt11-e+', card)
        seconds = int(re.search(r'class="countdown" role="timer" data-seconds="(\d+)"', card).group(1))
        assert after <= seconds <= before <= 600
        assert "10 sats</strong>" in card


def test_seconds_left_is_never_negative():
    assert filters.seconds_left(filters.utcnow() - timedelta(seconds=5)) == 0
