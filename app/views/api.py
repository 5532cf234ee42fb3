"""The JSON API, mirroring the original Workshop, for scripts and agents (same cookie session)."""
from flask import Blueprint, abort, jsonify, request, url_for

from .. import jobs, pricing, refunds, visitors
from ..models import utcnow
from ..security import limit, same_origin_only

bp = Blueprint("api", __name__, url_prefix="/api")
bp.before_request(same_origin_only)


def invoice_json(invoice):
    if invoice is None:
        return None
    # Past its expiry an unpaid invoice is "expired" (a late payment is still watched for).
    state = "expired" if invoice.state == "pending" and invoice.expires_at <= utcnow() else invoice.state
    return {"paymentRequest": invoice.payment_request, "paymentHash": invoice.payment_hash,
            "amountSats": invoice.amount_sats, "state": state,
            "expiresAt": invoice.expires_at.isoformat() + "Z"}


def ledger_json(ledger):
    if ledger is None:
        return None
    return {
        "model": ledger.model, "usageSource": ledger.usage_source, "btcUsd": str(ledger.btc_usd),
        "inputTokens": ledger.input_tokens, "outputTokens": ledger.output_tokens,
        "cacheReadTokens": ledger.cache_read_tokens, "cacheWriteTokens": ledger.cache_write_tokens,
        "reasoningTokens": ledger.reasoning_tokens,
        "estimatedOutputTokens": ledger.estimated_output_tokens,
        "evalFeeSats": ledger.eval_fee_msat // pricing.MSAT_PER_SAT,
        "estimatedSats": ledger.estimated_msat // pricing.MSAT_PER_SAT,
        "paidMsat": ledger.paid_msat, "actualMsat": ledger.actual_msat,
        "actualSats": str(pricing.display_sats(ledger.actual_msat, 1)),
        "refundOwedMsat": ledger.refund_owed_msat,
        "refundOwedSats": ledger.refund_owed_msat // pricing.MSAT_PER_SAT,
    }


def job_json(job):
    """Return the job as the API shows it."""
    body = {"jobId": job.id, "state": job.state, "request": job.request,
            "evalInvoice": invoice_json(job.invoice("eval")),
            "workInvoice": invoice_json(job.invoice("work")), "reason": job.reason,
            "result": job.result, "errorMessage": job.error_message,
            "streamUrl": url_for("workshop.job_events", job_id=job.id),
            "jobUrl": url_for("workshop.job_page", job_id=job.id), **refunds.refund_json(job)}
    if job.state == "awaiting_work_payment":
        body["pricingBreakdown"] = pricing.quote(pricing.tariff(), job.model, job.input_tokens,
                                                 job.estimated_output_tokens, job.btc_usd, job.btc_usd_source)
    if job.ledger is not None:
        body["costLedger"] = ledger_json(job.ledger)
    return body


def json_body():
    """Return the parsed JSON body, or None if it isn't JSON one can read."""
    try:
        return request.get_json(silent=True)
    except RecursionError:  # "[[[[…" nested deeper than the parser goes
        return None


@bp.post("/jobs")
@limit("JOB_RATE_LIMIT")
def create_job():
    """Create a job: 201 with its eval invoice and where to stream it."""
    if not request.is_json:
        abort(415, 'Send JSON with Content-Type: application/json, e.g. {"request": "..."}.')
    try:
        request.get_data().decode("utf-8")
    except UnicodeDecodeError:
        abort(400, "The request body is not valid UTF-8.")
    payload = json_body()
    if not isinstance(payload, dict) or "request" not in payload:
        abort(400, 'Send a JSON object with a "request" string, e.g. {"request": "..."}.')
    try:
        job = jobs.create_job(visitors.current(), payload["request"])
    except jobs.JobError as error:
        abort(error.status, str(error))
    return jsonify(job_json(job)), 201


@bp.post("/jobs/<job_id>/stop")
@limit("PAY_RATE_LIMIT")
def stop_job(job_id):
    """Stop a job mid-answer: 202, and the job completes with what was written so far."""
    job = visitors.owned_job_or_404(job_id)
    try:
        jobs.request_stop(job)
    except jobs.JobError as error:
        abort(error.status, str(error))
    return jsonify({"jobId": job.id, "state": job.state, "stopping": True}), 202


@bp.get("/jobs/<job_id>")
@limit("READ_RATE_LIMIT")
def get_job(job_id):
    """Return the job's current state."""
    return jsonify(job_json(jobs.expire_if_due(visitors.owned_job_or_404(job_id))))


@bp.post("/jobs/<job_id>/refund")
@limit("PAY_RATE_LIMIT")
def claim_refund(job_id):
    """Pay what the job owes back to the visitor's invoice: 200 once; a second claim is 409."""
    job = visitors.owned_job_or_404(job_id)
    payload = json_body() if request.is_json else None
    if not isinstance(payload, dict) or not isinstance(payload.get("invoice"), str):
        abort(400, 'Send a JSON object with an "invoice" string: a BOLT11 invoice for the refund.')
    try:
        refunds.claim(job, payload["invoice"])
    except refunds.RefundError as error:
        body = {"error": str(error), "jobId": job.id}
        if error.refund is not None:
            body.update(refunds.refund_json(job))
        return jsonify(body), error.status
    return jsonify({"jobId": job.id, **refunds.refund_json(job)})
