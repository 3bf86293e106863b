"""Batch jobs in the database: submitting, claiming, recording and cancelling items. Every change of an item's state
is one conditional UPDATE (... WHERE status = <the state it must be in>) checked by its row count, so that several
orchestrator processes on one database (SQLite or PostgreSQL) never take, record or cancel the same item twice.
How a job's status follows from its items: models.job.BatchJob."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine, case, func, update
from sqlmodel import Session, select

from orchestrator.models.common import utcnow
from orchestrator.models.job import BatchItem, BatchItemRequest, BatchJob

# A runner refreshes its running items' updated_at every pass; an item not refreshed for this long was left
# 'running' by a process that died, and is queued again.
STALE_AFTER_S = 30.0
UNFINISHED = ("queued", "running")


class ItemNotRunning(Exception):
    """The item stopped being this runner's while it ran (its job was cancelled): its outcome is not recorded."""


def _set_items(session: Session, item_ids: list[int], from_status: str, **values) -> int:
    changed = session.exec(update(BatchItem).where(BatchItem.id.in_(item_ids), BatchItem.status == from_status)
                           .values(updated_at=utcnow(), **values).execution_options(synchronize_session=False))
    return changed.rowcount


def submit(session: Session, name: str, requests: list[BatchItemRequest]) -> BatchJob:
    job = BatchJob(name=name.strip(), total=len(requests))
    session.add(job)
    session.flush()
    for position, request in enumerate(requests):
        session.add(BatchItem(job_id=job.id, position=position, request=request.model_dump_json()))
    session.commit()
    return job


def claim_next(engine: Engine, limit: int) -> list[BatchItem]:
    """Up to `limit` queued items, oldest job first, taken for this runner ('running'). An item another runner
    takes between the look-up and the claim is skipped (the claim's row count is 0)."""
    with Session(engine, expire_on_commit=False) as session:
        candidates = session.exec(select(BatchItem.id).join(BatchJob, BatchJob.id == BatchItem.job_id)
                                  .where(BatchItem.status == "queued")
                                  .order_by(BatchJob.created_at, BatchJob.id, BatchItem.position).limit(limit)).all()
    return [item for item in (claim(engine, item_id) for item_id in candidates) if item is not None]


def claim(engine: Engine, item_id: int) -> BatchItem | None:
    with Session(engine, expire_on_commit=False) as session:
        if _set_items(session, [item_id], "queued", status="running", attempts=BatchItem.attempts + 1) != 1:
            return None
        item = session.get(BatchItem, item_id)
        session.exec(update(BatchJob).where(BatchJob.id == item.job_id, BatchJob.status == "queued")
                     .values(status="running", started_at=utcnow()))
        session.commit()
        return item


def record_outcome(session: Session, item: BatchItem, clip_id: str | None = None, error: str = "") -> None:
    """The item done (with its clip) or failed (with its error), and its job's counters and status, in the session's
    transaction (not committed here). ItemNotRunning if the item is no longer running."""
    status = "done" if clip_id else "failed"
    if _set_items(session, [item.id], "running", status=status, clip_id=clip_id, error=error) != 1:
        raise ItemNotRunning(f"batch item {item.id} is no longer running")
    counter = BatchJob.completed if clip_id else BatchJob.failed
    session.exec(update(BatchJob).where(BatchJob.id == item.job_id).values({counter: counter + 1}))
    session.exec(update(BatchJob)
                 .where(BatchJob.id == item.job_id, BatchJob.status == "running",
                        BatchJob.completed + BatchJob.failed >= BatchJob.total)
                 .values(status=case((BatchJob.completed == 0, "failed"), else_="done"), finished_at=utcnow()))


def record_failure(engine: Engine, item: BatchItem, error: str) -> None:
    with Session(engine) as session:
        try:
            record_outcome(session, item, error=error)
        except ItemNotRunning:
            return
        session.commit()


def requeue(engine: Engine, item_ids: list[int], reason: str = "") -> None:
    """Running items back to 'queued' (their runner stopped, or Triton was away), with the reason to show."""
    with Session(engine) as session:
        _set_items(session, item_ids, "running", status="queued", error=reason)
        session.commit()


def keep_alive(engine: Engine, item_ids: list[int]) -> set[int]:
    """Refresh the running items of this runner; returns those that are no longer running (cancelled meanwhile,
    maybe by another process) for the runner to stop."""
    with Session(engine) as session:
        _set_items(session, item_ids, "running")
        running = set(session.exec(select(BatchItem.id).where(BatchItem.id.in_(item_ids),
                                                               BatchItem.status == "running")).all())
        session.commit()
    return set(item_ids) - running


def requeue_stale(engine: Engine) -> None:
    """Queue again the items that a process which died left 'running'."""
    with Session(engine) as session:
        session.exec(update(BatchItem).where(BatchItem.status == "running",
                                             BatchItem.updated_at < utcnow() - timedelta(seconds=STALE_AFTER_S))
                     .values(status="queued", error="its runner stopped; queued again"))
        session.commit()


def cancel(engine: Engine, job_id: str) -> None:
    """The job and its unfinished items cancelled, together; running items are stopped by their runners."""
    with Session(engine) as session:
        session.exec(update(BatchItem).where(BatchItem.job_id == job_id, BatchItem.status.in_(UNFINISHED))
                     .values(status="cancelled", updated_at=utcnow()))
        session.exec(update(BatchJob).where(BatchJob.id == job_id, BatchJob.status.in_(UNFINISHED))
                     .values(status="cancelled", finished_at=utcnow()))
        session.commit()


def queued_count(engine: Engine) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).where(BatchItem.status == "queued")).one()
