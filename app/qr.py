"""Invoices as QR codes, drawn on the server as SVG by segno: the page needs no script for them."""
from functools import lru_cache

import gevent
import segno
from markupsafe import Markup


def lightning_uri(payment_request):
    """Return the URI a QR code carries for an invoice, in upper case.

    BOLT11 and URI schemes ignore case, and upper case fits QR's alphanumeric mode: a code of
    about three quarters the width of a mixed-case one, easier for a phone to read.
    """
    return "LIGHTNING:" + payment_request.upper()


def _encode(text):
    try:
        code = segno.make(text, error="m", micro=False)
    except segno.DataOverflowError:
        return ""  # longer than any QR code holds: the invoice text and link remain
    # Only path data and these fixed attributes: nothing of the invoice reaches the markup as text.
    return code.svg_inline(svgclass="qr", lineclass=None, omitsize=True, border=4)


@lru_cache(maxsize=512)
def _svg(text):
    # Encoding takes some 20 ms of pure Python: off the event loop, so other greenlets keep
    # running; cached, as every state frame of a job re-renders its invoice.
    return gevent.get_hub().threadpool.apply(_encode, (text,))


def lightning_qr(payment_request):
    """Return an invoice's lightning: URI as an inline SVG QR code."""
    return Markup(_svg(lightning_uri(payment_request)))
