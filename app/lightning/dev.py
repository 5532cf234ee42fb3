"""The development wallet: real, signed, decodable BOLT11 invoices (regtest) settled only by its pay endpoint."""
import hashlib
import secrets
import time
from datetime import datetime, timezone

import bolt11
from bolt11.models.tags import TagChar, Tags
from sqlalchemy import update

from ..models import db, utcnow
from . import NewInvoice, WalletError


class DevInvoice(db.Model):
    """The development wallet's own book: it knows which of its invoices were paid."""
    payment_hash = db.Column(db.String(64), primary_key=True)
    amount_msat = db.Column(db.BigInteger, nullable=False)
    expires_at = db.Column(db.DateTime, nullable=False)
    paid_at = db.Column(db.DateTime)


class DevWallet:
    name = "development wallet"

    def __init__(self, secret_key):
        # A stable node key derived from the app's secret, so invoices keep one payee across restarts.
        self._node_key = hashlib.sha256(b"workshop-dev-wallet:" + secret_key.encode()).hexdigest()

    def create_invoice(self, amount_msat, memo, expiry_seconds):
        """Issue a signed regtest BOLT11 invoice for amount_msat."""
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
        payment_request = bolt11.encode(invoice, self._node_key)
        expires_at = datetime.fromtimestamp(now + expiry_seconds, timezone.utc).replace(tzinfo=None)
        db.session.add(DevInvoice(payment_hash=payment_hash, amount_msat=amount_msat, expires_at=expires_at))
        return NewInvoice(payment_hash, payment_request, amount_msat, expires_at)

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
