"""Payment notices from the wallet: an unguessable address per job, which only prompts a re-check."""
import hashlib
import hmac

from flask import current_app, url_for


def token(job_id):
    """Return the secret part of a job's notice address (derived from SECRET_KEY, never stored)."""
    key = current_app.config["SECRET_KEY"].encode()
    return hmac.new(key, b"payment-notice:" + job_id.encode(), hashlib.sha256).hexdigest()


def verify(job_id, given):
    """Tell whether given is the job's notice token (in constant time)."""
    return isinstance(given, str) and hmac.compare_digest(token(job_id), given)


def notify_url(job_id):
    """Return where the wallet should notify payments for job_id, or None when notices are off."""
    base = current_app.config.get("LNBITS_WEBHOOK_BASE_URL")
    if not base or current_app.config["WALLET"] != "lnbits":
        return None
    path = url_for("webhook.lnbits_notice", job_id=job_id, token=token(job_id))
    return base.rstrip("/") + path
