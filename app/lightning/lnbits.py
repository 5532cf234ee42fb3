"""An LNbits wallet over its REST API: invoices with the invoice key, payments with the admin key."""
import logging
from datetime import datetime, timezone

import bolt11
import httpx2

from . import FAILED, PAID, PENDING, NewInvoice, PaymentFailed, WalletError

log = logging.getLogger(__name__)


class LNbitsWallet:
    name = "LNbits"

    def __init__(self, url, invoice_key, admin_key, timeout_seconds):
        if not (url and invoice_key):
            raise RuntimeError("WALLET=lnbits needs LNBITS_URL and LNBITS_INVOICE_KEY "
                               "(and LNBITS_ADMIN_KEY to pay refunds).")
        self._url = url.rstrip("/")
        self._invoice_key, self._admin_key = invoice_key, admin_key
        self._timeout = float(timeout_seconds)

    def _request(self, method, path, key, **kwargs):
        # A client per call: the process is gevent-patched and a call is rare next to a job.
        with httpx2.Client(base_url=self._url, timeout=self._timeout,
                           headers={"X-Api-Key": key}) as client:
            return client.request(method, path, **kwargs)

    def create_invoice(self, amount_msat, memo, expiry_seconds, webhook_url=None):
        """Ask LNbits for an invoice of amount_msat (whole sats: LNbits invoices in sats)."""
        if amount_msat % 1000:
            raise ValueError("LNbits invoices are in whole sats")
        body = {"out": False, "amount": amount_msat // 1000, "unit": "sat", "memo": memo,
                "expiry": int(expiry_seconds)}
        if webhook_url:
            body["webhook"] = webhook_url
        try:
            response = self._request("POST", "/api/v1/payments", self._invoice_key, json=body)
        except httpx2.HTTPError as error:
            log.warning("LNbits unreachable creating an invoice: %s", error)
            raise WalletError("The Lightning wallet is unreachable; try again in a moment.", 503) from None
        if response.status_code != 201:
            log.warning("LNbits refused an invoice: %s %s", response.status_code, response.text[:300])
            raise WalletError("The Lightning wallet could not make an invoice; try again in a moment.", 503)
        data = response.json()
        decoded = bolt11.decode(data["bolt11"])
        if decoded.payment_hash != data["payment_hash"] or decoded.amount_msat != amount_msat:
            raise WalletError("The Lightning wallet returned an invoice that doesn't match.", 502)
        expires_at = datetime.fromtimestamp(decoded.date + decoded.expiry, timezone.utc).replace(tzinfo=None)
        return NewInvoice(data["payment_hash"], data["bolt11"], amount_msat, expires_at)

    def _payment(self, payment_hash, key):
        response = self._request("GET", f"/api/v1/payments/{payment_hash}", key)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    def is_paid(self, payment_hash):
        """Tell whether our incoming invoice is settled (an outgoing payment of ours never counts)."""
        data = self._payment(payment_hash, self._invoice_key)
        return bool(data and data.get("paid") and data.get("details", {}).get("amount", 0) > 0)

    def pay_invoice(self, payment_request):
        """Pay a BOLT11 invoice; PAID, or PENDING when LNbits can't say yet. PaymentFailed: nothing sent."""
        if not self._admin_key:
            raise PaymentFailed("This Workshop's wallet can't send payments (no admin key is set).", 503)
        try:
            response = self._request("POST", "/api/v1/payments", self._admin_key,
                                     json={"out": True, "bolt11": payment_request})
        except httpx2.ConnectError:
            raise PaymentFailed("The Lightning wallet is unreachable; nothing was sent. Try again.", 503) from None
        except httpx2.HTTPError as error:
            # The request may have reached LNbits: the payment's fate is asked for later, never retried.
            log.warning("LNbits payment outcome unknown: %s", error)
            return PENDING
        try:
            data = response.json()
        except ValueError:
            data = {}
        if response.status_code in (200, 201):
            return PAID if data.get("status") == "success" else PENDING
        if data.get("status") == "failed" or response.status_code in (400, 401, 403, 404, 422):
            log.warning("LNbits refused a payment: %s %s", response.status_code, response.text[:300])
            raise PaymentFailed(f"The wallet could not pay that invoice: {data.get('detail') or 'refused'}.")
        return PENDING

    def outgoing_status(self, payment_hash):
        """Return PAID, PENDING or FAILED for a payment this wallet sent."""
        data = self._payment(payment_hash, self._invoice_key)
        if data is None:
            return FAILED
        if data.get("details", {}).get("amount", 0) > 0:
            return FAILED  # not ours to send: only an incoming invoice has that hash here
        if data.get("paid"):
            return PAID
        return FAILED if data.get("status") == "failed" else PENDING
