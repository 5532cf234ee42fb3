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


def init_app(app):
    """Build the configured wallet once per app."""
    kind = app.config["WALLET"]
    if kind == "dev":
        from .dev import DevWallet
        app.extensions["wallet"] = DevWallet(app.config["SECRET_KEY"])
    else:
        raise RuntimeError(f"Unknown WALLET {kind!r}; the Workshop knows: dev")


def get_wallet():
    """Return the app's wallet."""
    return current_app.extensions["wallet"]


def is_dev_wallet(app=None):
    """Tell whether the built-in development wallet is in use (its pay endpoint exists only then)."""
    return (app or current_app).config["WALLET"] == "dev"
