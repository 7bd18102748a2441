"""The farm database's tables as SQLAlchemy 2.0 typed models (times: UTC epoch float seconds).

Every time column holds UTC seconds since the epoch as a float (``time.time()``): portable across
SQLite and PostgreSQL, comparable without time-zone handling, and what the lease clock uses. JSON
columns are SQLAlchemy's generic ``JSON`` (TEXT on SQLite, ``json`` on PostgreSQL). The schema
itself is created by the Alembic migrations in ``migrations/versions``; these models must match them.

Tables: ``runs`` (one farm run), ``devices`` (the fleet and its health), ``artifacts`` (lowered
models by cache key), ``jobs`` (the journal: one row per measurement to make, keyed by the job's
stable key), ``results`` (at most one per job: the full BenchResult JSON and its headline numbers),
``device_leases`` (who holds a device now) and ``lease_history`` (append-only: every lease held).
"""

from __future__ import annotations

from typing import Any, Optional

from sqlalchemy import JSON, BigInteger, Double, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

RUN_STATES = ("running", "done", "incomplete", "interrupted", "failed")
JOB_STATES = ("pending", "leased", "done", "failed")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, float: Double, str: String}


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    farm_file: Mapped[str] = mapped_column(Text)
    created_utc: Mapped[float]
    state: Mapped[str] = mapped_column(String(16), default="running")  # RUN_STATES
    summary: Mapped[Optional[dict[str, Any]]]


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    labels: Mapped[Optional[dict[str, Any]]]
    environment: Mapped[Optional[dict[str, Any]]]  # the device description / probe
    # quarantine: until then the device takes no work; after it, the device is on probation
    # (quarantined_until in the past) until it passes a health check, which clears it to NULL
    quarantined_until: Mapped[Optional[float]]
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)  # infrastructure faults in a row
    suspect: Mapped[bool] = mapped_column(default=False)  # lost a connection since its last success
    quarantine_reason: Mapped[Optional[str]] = mapped_column(Text)  # migration 0002
    last_seen_utc: Mapped[Optional[float]]  # last measured there (migration 0002)


class Artifact(Base):
    __tablename__ = "artifacts"

    cache_key: Mapped[str] = mapped_column(Text, primary_key=True)
    model: Mapped[str] = mapped_column(Text)
    recipe: Mapped[str] = mapped_column(Text)
    backend: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(Text)
    artifact_sha256: Mapped[Optional[str]] = mapped_column(Text)
    manifest: Mapped[Optional[dict[str, Any]]]


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_run_device_state", "run_id", "device_id", "state"),
                      Index("ix_jobs_run_state", "run_id", "state"))

    key: Mapped[str] = mapped_column(Text, primary_key=True)  # the job's stable key (sha256 hex)
    run_id: Mapped[str] = mapped_column(Text, ForeignKey("runs.id"))
    model: Mapped[str] = mapped_column(Text)
    recipe: Mapped[str] = mapped_column(Text)
    backend: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(Text)
    device_id: Mapped[str] = mapped_column(Text)
    launch: Mapped[int] = mapped_column(Integer, default=0)
    settings: Mapped[Optional[dict[str, Any]]]
    artifact_key: Mapped[Optional[str]] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # JOB_STATES
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    fault_class: Mapped[Optional[str]] = mapped_column(Text)
    error: Mapped[Optional[str]] = mapped_column(Text)
    lease_holder: Mapped[Optional[str]] = mapped_column(Text)
    lease_expires_utc: Mapped[Optional[float]]
    created_utc: Mapped[float]
    started_utc: Mapped[Optional[float]]
    finished_utc: Mapped[Optional[float]]


class Result(Base):
    __tablename__ = "results"

    job_key: Mapped[str] = mapped_column(Text, ForeignKey("jobs.key"), primary_key=True)  # at most one per job
    status: Mapped[str] = mapped_column(String(16), default="ok")  # the record's run.status: ok | error
    record_json: Mapped[str] = mapped_column(Text)  # the full versioned BenchResult JSON, raw samples included
    p50_ms: Mapped[Optional[float]]
    p90_ms: Mapped[Optional[float]]
    mean_ms: Mapped[Optional[float]]
    peak_rss_delta_bytes: Mapped[Optional[int]] = mapped_column(BigInteger)
    artifact_sha256: Mapped[Optional[str]] = mapped_column(Text)
    runner_version: Mapped[Optional[str]] = mapped_column(Text)
    device_id: Mapped[str] = mapped_column(Text)
    created_utc: Mapped[float]


class DeviceLease(Base):
    __tablename__ = "device_leases"

    device_id: Mapped[str] = mapped_column(Text, primary_key=True)
    holder: Mapped[str] = mapped_column(Text)
    expires_utc: Mapped[float]
    acquired_utc: Mapped[float]


class LeaseHistory(Base):
    """Append-only: one row per lease won. ``released_utc`` is set on release, or to the lease's
    expiry when another holder takes an expired lease over; while held it is NULL."""

    __tablename__ = "lease_history"
    __table_args__ = (Index("ix_lease_history_device", "device_id", "acquired_utc"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(Text)
    holder: Mapped[str] = mapped_column(Text)
    acquired_utc: Mapped[float]
    expires_utc: Mapped[float]  # the latest expiry a heartbeat gave it
    released_utc: Mapped[Optional[float]]
