"""Refunds: what is owed back is recorded; one claim, checked and paid once, settles it."""
import logging
import time
from decimal import Decimal

import bolt11
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from .lightning import FAILED, PAID, PENDING, PaymentFailed, get_wallet
from .models import Invoice, Refund, db, utcnow

log = logging.getLogger(__name__)

NETWORKS = {"bc": "Bitcoin (mainnet)", "tb": "testnet", "tbs": "signet", "bcrt": "regtest"}
MAX_INVOICE_CHARS = 2000
MIN_INVOICE_LIFE_SECONDS = 60  # a payment needs time to route; an invoice about to expire would fail


class RefundError(Exception):
    """A claim the Workshop refuses; the message is fit to show a visitor."""

    def __init__(self, message, status=400, refund=None):
        super().__init__(message)
        self.status, self.refund = status, refund


def owe(job, amount_msat, reason):
    """Record that amount_msat (whole sats) is owed back to the job's visitor; the caller commits."""
    if amount_msat <= 0:
        return
    refund = db.session.get(Refund, job.id)
    if refund is None:
        db.session.add(Refund(job_id=job.id, amount_msat=amount_msat, reason=reason))
    elif refund.state == "owed":
        refund.amount_msat += amount_msat
    else:
        log.error("job %s: %s msat more owed after its refund was claimed; pay it by hand", job.id, amount_msat)


def _sats(amount):
    return f"{amount:,} {'sat' if amount == 1 else 'sats'}"


def network_of(job):
    """Return the BOLT11 currency prefix of the wallet's network: that of the job's own invoices."""
    return bolt11.decode(job.invoices[0].payment_request).currency


def check_invoice(job, refund, text):
    """Return the decoded invoice if it is one the refund may pay, else raise RefundError saying why."""
    if not isinstance(text, str) or not text.strip():
        raise RefundError(f"Paste a Lightning invoice (BOLT11) for exactly {_sats(refund.amount_sats)}.")
    text = text.strip()
    if text.lower().startswith("lightning:"):
        text = text[len("lightning:"):]
    if len(text) > MAX_INVOICE_CHARS:
        raise RefundError("That is far too long to be a Lightning invoice.")
    try:
        invoice = bolt11.decode(text.lower())
    except Exception:
        raise RefundError("That isn't a Lightning invoice the Workshop can read (it should start "
                          "with ln…). Copy the whole invoice from your wallet.") from None
    # Paying ourselves would move nothing back to the visitor (and could mark another job paid).
    if db.session.get(Invoice, invoice.payment_hash) is not None:
        raise RefundError("That is one of the Workshop's own invoices; paste one from your wallet.")
    ours = network_of(job)
    if invoice.currency != ours:
        raise RefundError(f"That invoice is for {NETWORKS.get(invoice.currency, invoice.currency)}; "
                          f"the Workshop pays on {NETWORKS.get(ours, ours)}.")
    if invoice.amount_msat is None:
        raise RefundError(f"That invoice has no amount: make one for exactly {_sats(refund.amount_sats)}.")
    if int(invoice.amount_msat) != refund.amount_msat:
        given = int(invoice.amount_msat)
        given_sats = f"{given // 1000:,}" if given % 1000 == 0 else str(Decimal(given) / 1000)
        raise RefundError(f"That invoice is for {given_sats} sats; "
                          f"make one for exactly {_sats(refund.amount_sats)}.")
    if invoice.date + invoice.expiry - time.time() < MIN_INVOICE_LIFE_SECONDS:
        raise RefundError("That invoice has expired or is about to; make a new one.")
    return text.lower(), invoice


def claim(job, text):
    """Pay the refund owed on job to the visitor's invoice, once; return the refund."""
    refund = job.refund
    if refund is None:
        raise RefundError("Nothing is owed back for this job.", 409)
    if refund.state != "owed":
        raise RefundError("This refund has already been claimed.", 409, refund)
    payment_request, invoice = check_invoice(job, refund, text)
    # One claim wins: the conditional update. Every other sees the winner's payment hash.
    try:
        won = db.session.execute(
            update(Refund).where(Refund.job_id == job.id, Refund.state == "owed").values(
                state="pending", payment_request=payment_request, payment_hash=invoice.payment_hash,
                claimed_at=utcnow(), error_message=None)).rowcount == 1
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise RefundError("That invoice has already been used for a refund; make a new one.", 409) from None
    db.session.refresh(refund)
    if not won:
        raise RefundError("This refund has already been claimed.", 409, refund)
    try:
        outcome = get_wallet().pay_invoice(payment_request)
    except PaymentFailed as error:
        _reopen(refund, str(error))
        raise RefundError(f"{error} Nothing was sent; you can try again.", 502, refund) from None
    except Exception:
        # The outcome is unknown: never pay again; the watcher asks the wallet what happened.
        log.exception("refund for job %s: payment outcome unknown", job.id)
        outcome = PENDING
    if outcome == PAID:
        _mark_paid(refund)
    return refund


def _mark_paid(refund):
    db.session.execute(update(Refund).where(Refund.job_id == refund.job_id, Refund.state == "pending")
                       .values(state="paid", paid_at=utcnow()))
    db.session.commit()
    db.session.refresh(refund)


def _reopen(refund, message):
    db.session.execute(update(Refund).where(Refund.job_id == refund.job_id, Refund.state == "pending")
                       .values(state="owed", payment_request=None, payment_hash=None, error_message=message))
    db.session.commit()
    db.session.refresh(refund)


def check_pending(refund):
    """Ask the wallet about a refund whose payment had no final answer; settle or reopen it."""
    status = get_wallet().outgoing_status(refund.payment_hash)
    if status == PAID:
        _mark_paid(refund)
    elif status == FAILED:
        _reopen(refund, "The refund payment failed; nothing was sent. Paste a new invoice.")
    return status


def refund_json(job):
    """Return the refund fields of the job's API answer."""
    refund = job.refund
    return {"refundState": refund.state if refund else "none",
            "refundAmountSats": refund.amount_sats if refund else 0,
            "refundPaymentHash": refund.payment_hash if refund else None}

