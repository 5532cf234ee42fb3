"""Jinja filters: Python hands templates numbers, and templates format them with these."""
from . import pricing
from .models import utcnow
from .qr import lightning_qr

STATE_LABELS = {
    "awaiting_eval_payment": "Awaiting evaluation fee",
    "evaluating": "Timmy is evaluating",
    "awaiting_work_payment": "Awaiting payment for the work",
    "executing": "Timmy is working",
    "complete": "Complete",
    "rejected": "Rejected",
    "failed": "Failed",
    "expired": "Expired",
}


def thousands(number):
    """Format an integer with thousands separators: 1247 -> 1,247."""
    return f"{int(number):,}"


def sats(msat):
    """Format msats as whole sats, rounded up like the charge: 3801 -> 4."""
    return f"{pricing.display_sats(msat):,}"


def sats_tenths(msat):
    """Format msats as sats to 0.1, rounded up like the charge: 3801 -> 3.9."""
    return f"{pricing.display_sats(msat, 1):,}"


def refund_sats(msat):
    """Format a refund in whole sats, rounded down like the refund: 1999 -> 1."""
    return f"{pricing.display_refund_sats(msat):,}"


def usd(amount):
    """Format a USD amount with thousands separators: 100000.00 -> 100,000.00."""
    return f"{amount:,}"


def seconds_left(moment):
    """Return the whole seconds from now until moment (naive UTC), never negative."""
    return max(0, int((moment - utcnow()).total_seconds()))


def state_label(state):
    """Name a job state the way a visitor would."""
    return STATE_LABELS.get(state, state)


def init_app(app):
    """Register the filters."""
    for f in (thousands, sats, sats_tenths, refund_sats, usd, seconds_left, state_label, lightning_qr):
        app.add_template_filter(f)
