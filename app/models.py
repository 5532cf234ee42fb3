"""Jobs, their invoices and their cost ledger, in SQL."""
import os
import secrets
from datetime import datetime, timezone

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase

FINAL_STATES = ("rejected", "complete", "failed", "expired")


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


def utcnow():
    return datetime.now(timezone.utc).replace(tzinfo=None)


def new_id():
    # Job ids and channel names are capabilities as much as names: 128 random bits.
    return secrets.token_urlsafe(16)


class Job(db.Model):
    id = db.Column(db.String(32), primary_key=True, default=new_id)
    visitor_id = db.Column(db.String(64), nullable=False, index=True)
    channel = db.Column(db.String(32), nullable=False, unique=True, default=new_id)
    request = db.Column(db.Text, nullable=False)
    state = db.Column(db.String(32), nullable=False, default="awaiting_eval_payment", index=True)
    reason = db.Column(db.Text)
    result = db.Column(db.Text)
    error_message = db.Column(db.Text)
    model = db.Column(db.String(128), nullable=False)
    input_tokens = db.Column(db.Integer)
    estimated_output_tokens = db.Column(db.Integer)
    # The BTC/USD price is locked on the job when its work invoice is made; the actual
    # charge is computed at the same price.
    btc_usd = db.Column(db.Numeric(18, 2))
    btc_usd_source = db.Column(db.Text)  # "fixed", or "median:" and the sources' hosts
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    updated_at = db.Column(db.DateTime, nullable=False, default=utcnow, onupdate=utcnow)
    # While evaluating or executing, the process working on the job holds a lease on it and
    # renews it; a lease left to expire means that process died (app/recovery.py).
    lease_owner = db.Column(db.String(96))
    lease_expires_at = db.Column(db.DateTime)
    # While executing, `result` holds the answer as last checkpointed and this its output tokens.
    checkpoint_output_tokens = db.Column(db.Integer)

    invoices = db.relationship("Invoice", back_populates="job", order_by="Invoice.created_at")
    ledger = db.relationship("CostLedger", back_populates="job", uselist=False)
    refund = db.relationship("Refund", back_populates="job", uselist=False)

    @property
    def is_final(self):
        return self.state in FINAL_STATES

    def invoice(self, kind):
        return next((i for i in self.invoices if i.kind == kind), None)


class Invoice(db.Model):
    payment_hash = db.Column(db.String(64), primary_key=True)
    job_id = db.Column(db.String(32), db.ForeignKey("job.id"), nullable=False, index=True)
    kind = db.Column(db.String(16), nullable=False)  # "eval" or "work"
    amount_msat = db.Column(db.BigInteger, nullable=False)
    payment_request = db.Column(db.Text, nullable=False)
    state = db.Column(db.String(16), nullable=False, default="pending")  # pending | paid
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    expires_at = db.Column(db.DateTime, nullable=False)
    paid_at = db.Column(db.DateTime)

    job = db.relationship("Job", back_populates="invoices")

    @property
    def amount_sats(self):
        return self.amount_msat // 1000


class CostLedger(db.Model):
    job_id = db.Column(db.String(32), db.ForeignKey("job.id"), primary_key=True)
    model = db.Column(db.String(128), nullable=False)
    eval_fee_msat = db.Column(db.BigInteger, nullable=False)
    estimated_msat = db.Column(db.BigInteger, nullable=False)  # the work invoice
    paid_msat = db.Column(db.BigInteger, nullable=False)
    actual_msat = db.Column(db.BigInteger, nullable=False)
    refund_owed_msat = db.Column(db.BigInteger, nullable=False)
    input_tokens = db.Column(db.Integer, nullable=False)
    output_tokens = db.Column(db.Integer, nullable=False)
    cache_read_tokens = db.Column(db.Integer, nullable=False, default=0)
    cache_write_tokens = db.Column(db.Integer, nullable=False, default=0)
    reasoning_tokens = db.Column(db.Integer, nullable=False, default=0)
    estimated_output_tokens = db.Column(db.Integer, nullable=False)
    # "provider" (as reported), "estimate" (our exact count) or "checkpoint" (a job whose process
    # died: the answer and count as last checkpointed)
    usage_source = db.Column(db.String(16), nullable=False)
    btc_usd = db.Column(db.Numeric(18, 2), nullable=False)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)

    job = db.relationship("Job", back_populates="ledger")


class Refund(db.Model):
    """Money owed back to a job's visitor, and its payment once claimed: one per job."""
    job_id = db.Column(db.String(32), db.ForeignKey("job.id"), primary_key=True)
    amount_msat = db.Column(db.BigInteger, nullable=False)  # whole sats, rounded down
    reason = db.Column(db.String(16), nullable=False)  # "overpaid" | "late" | "eval_failed"
    state = db.Column(db.String(16), nullable=False, default="owed")  # owed | pending | paid
    # The visitor's invoice and its payment hash, set by the one claim that wins.
    payment_request = db.Column(db.Text)
    payment_hash = db.Column(db.String(64), unique=True)
    error_message = db.Column(db.Text)  # why the last attempt failed, shown with the form
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    claimed_at = db.Column(db.DateTime)
    paid_at = db.Column(db.DateTime)

    job = db.relationship("Job", back_populates="refund")

    @property
    def amount_sats(self):
        return self.amount_msat // 1000


def database_url(app):
    """Return the SQLAlchemy URL: DATABASE_URL (Heroku's postgres:// accepted) or a SQLite file."""
    url = app.config.get("DATABASE_URL")
    if not url:
        os.makedirs(app.instance_path, exist_ok=True)
        return "sqlite:///" + os.path.join(app.instance_path, "workshop.sqlite3")
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, _record):
    # WAL lets viewers read while a job writes; busy_timeout makes writers queue, not fail.
    # synchronous=NORMAL: in WAL mode a commit then waits for no fsync (the log is synced at
    # checkpoints), and SQLite's calls block the whole gevent worker while they wait; the
    # database stays consistent, a power cut can lose the last commits.
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.close()


def init_app(app):
    """Bind the database to the app."""
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url(app)
    # Pre-ping: a dyno's database connections go stale across Postgres restarts.
    app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {"pool_pre_ping": True})
    db.init_app(app)
