"""Wallets: one interface (create an invoice, check it, pay) with backends behind it."""
from dataclasses import dataclass
from datetime import datetime

from flask import current_app


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


def _dev_wallet(app):
    from .dev import DevWallet
    return DevWallet(app.config["SECRET_KEY"])


# WALLET name -> factory(app). Real backends (LNbits, LND, NWC) register here.
BACKENDS = {"dev": _dev_wallet}


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
