"""Wallets: one interface (create an invoice, check it, pay one) with backends behind it.

A backend is a class with:
  name: str                                    what the visitor is told pays them
  create_invoice(amount_msat, memo, expiry_seconds, webhook_url=None) -> NewInvoice
  is_paid(payment_hash) -> bool                an incoming invoice of ours, settled
  pay_invoice(payment_request) -> str          PAID or PENDING; raises PaymentFailed if no money left
  outgoing_status(payment_hash) -> str         PAID, PENDING or FAILED, for a payment we sent
Register a factory in BACKENDS under the WALLET name (LND REST or Nostr Wallet Connect go there too).
"""
from dataclasses import dataclass
from datetime import datetime

from flask import current_app

PAID, PENDING, FAILED = "paid", "pending", "failed"


@dataclass(frozen=True)
class NewInvoice:
    payment_hash: str
    payment_request: str
    amount_msat: int
    expires_at: datetime


class WalletError(Exception):
    """The wallet refused or failed; the message is fit to show a visitor."""

    def __init__(self, message, status=409):
        super().__init__(message)
        self.status = status


class PaymentFailed(WalletError):
    """An outgoing payment failed for certain: no money left the wallet, so it may be tried again."""


def _dev_wallet(app):
    from .dev import DevWallet
    return DevWallet(app.config["SECRET_KEY"])


def _lnbits_wallet(app):
    from .lnbits import LNbitsWallet
    return LNbitsWallet(app.config["LNBITS_URL"], app.config["LNBITS_INVOICE_KEY"],
                        app.config["LNBITS_ADMIN_KEY"], app.config["LNBITS_TIMEOUT_SECONDS"])


# WALLET name -> factory(app).
BACKENDS = {"dev": _dev_wallet, "lnbits": _lnbits_wallet}


def init_app(app):
    """Build the configured wallet once per app."""
    kind = app.config["WALLET"]
    if kind not in BACKENDS:
        raise RuntimeError(f"Unknown WALLET {kind!r}; the Workshop knows: {', '.join(BACKENDS)}")
    app.extensions["wallet"] = BACKENDS[kind](app)


def get_wallet():
    """Return the app's wallet."""
    return current_app.extensions["wallet"]


def is_dev_wallet(app=None):
    """Tell whether the built-in development wallet is in use (its pay endpoint exists only then)."""
    return (app or current_app).config["WALLET"] == "dev"
