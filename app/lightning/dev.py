"""The development wallet: real, signed, decodable BOLT11 invoices (regtest) settled only by its pay endpoint."""
import hashlib
import secrets
import time
from datetime import datetime, timezone

import bolt11
from bolt11.models.tags import TagChar, Tags
from sqlalchemy import update

from ..models import db, utcnow
from . import FAILED, PAID, NewInvoice, PaymentFailed, WalletError


class DevInvoice(db.Model):
    """The development wallet's own book: it knows which of its invoices were paid."""
    payment_hash = db.Column(db.String(64), primary_key=True)
    amount_msat = db.Column(db.BigInteger, nullable=False)
    expires_at = db.Column(db.DateTime, nullable=False)
    paid_at = db.Column(db.DateTime)


class DevPayment(db.Model):
    """A payment the development wallet sent to an outside invoice (a refund): recorded, not routed."""
    payment_hash = db.Column(db.String(64), primary_key=True)
    payment_request = db.Column(db.Text, nullable=False)
    amount_msat = db.Column(db.BigInteger, nullable=False)
    paid_at = db.Column(db.DateTime, nullable=False, default=utcnow)


class DevWallet:
    name = "development wallet"

    def __init__(self, secret_key):
        # A stable node key derived from the app's secret, so invoices keep one payee across restarts.
        self._node_key = hashlib.sha256(b"workshop-dev-wallet:" + secret_key.encode()).hexdigest()
        self._visitor_key = hashlib.sha256(b"workshop-dev-visitor:" + secret_key.encode()).hexdigest()

    def create_invoice(self, amount_msat, memo, expiry_seconds, webhook_url=None):
        """Issue a signed regtest BOLT11 invoice for amount_msat."""
        payment_hash, payment_request, expires_at = self._encode(self._node_key, amount_msat, memo,
                                                                 expiry_seconds)
        db.session.add(DevInvoice(payment_hash=payment_hash, amount_msat=amount_msat, expires_at=expires_at))
        return NewInvoice(payment_hash, payment_request, amount_msat, expires_at)

    def visitor_invoice(self, amount_msat):
        """Return an invoice from a stand-in visitor's wallet (another key), to claim a refund with."""
        return self._encode(self._visitor_key, amount_msat, "Refund from Timmy's Workshop", 3600)[1]

    @staticmethod
    def _encode(node_key, amount_msat, memo, expiry_seconds):
        preimage = secrets.token_bytes(32)
        payment_hash = hashlib.sha256(preimage).hexdigest()
        now = int(time.time())
        tags = Tags()
        tags.add(TagChar.payment_hash, payment_hash)
        tags.add(TagChar.payment_secret, secrets.token_hex(32))
        tags.add(TagChar.description, memo)
        tags.add(TagChar.expire_time, expiry_seconds)
        tags.add(TagChar.min_final_cltv_expiry, 18)
        invoice = bolt11.Bolt11(currency="bcrt", date=now, tags=tags,
                                amount_msat=bolt11.MilliSatoshi(amount_msat))
        payment_request = bolt11.encode(invoice, node_key)
        expires_at = datetime.fromtimestamp(now + expiry_seconds, timezone.utc).replace(tzinfo=None)
        return payment_hash, payment_request, expires_at

    def is_paid(self, payment_hash):
        """Tell whether the invoice was paid."""
        invoice = db.session.get(DevInvoice, payment_hash)
        return bool(invoice and invoice.paid_at)

    def settle(self, payment_hash):
        """Pay one of this wallet's invoices, as a visitor's wallet would. Paying twice is harmless."""
        invoice = db.session.get(DevInvoice, payment_hash)
        if invoice is None:
            raise WalletError("No development-wallet invoice has that payment hash.", 404)
        if invoice.paid_at is None and invoice.expires_at <= utcnow():
            raise WalletError("That invoice has expired; it can no longer be paid.", 410)
        db.session.execute(update(DevInvoice).where(DevInvoice.payment_hash == payment_hash,
                                                    DevInvoice.paid_at.is_(None)).values(paid_at=utcnow()))
        db.session.commit()

    def pay_invoice(self, payment_request):
        """Pay an outside invoice: record it as paid (there is no network to route it over)."""
        try:
            invoice = bolt11.decode(payment_request)
        except Exception:
            raise PaymentFailed("That is not an invoice the development wallet can read.", 400) from None
        if db.session.get(DevInvoice, invoice.payment_hash) is not None:
            raise PaymentFailed("The development wallet doesn't pay its own invoices.", 400)
        if db.session.get(DevPayment, invoice.payment_hash) is None:
            db.session.add(DevPayment(payment_hash=invoice.payment_hash, payment_request=payment_request,
                                      amount_msat=int(invoice.amount_msat or 0)))
            db.session.commit()
        return PAID

    def outgoing_status(self, payment_hash):
        """Return PAID for a payment this wallet recorded, FAILED otherwise."""
        return PAID if db.session.get(DevPayment, payment_hash) else FAILED
