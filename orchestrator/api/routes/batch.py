"""/api/v2/batch: batch jobs of many generations, run in the background (services.jobs) into the gallery; list,
follow, cancel and delete them."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from sqlalchemy import func
from sqlmodel import Session, select
from starlette.concurrency import run_in_threadpool

from engine.errors import InvalidRequest
from orchestrator.api.deps import PrincipalDep, ServicesDep, SessionDep
from orchestrator.core.config import Settings
from orchestrator.core.errors import found
from orchestrator.models.job import (FINISHED_STATES, JOB_STATES, BatchCreate, BatchItem, BatchItemRequest, BatchJob,
                                     BatchJobDetail, BatchJobList, BatchJobPublic)
from orchestrator.services import generation, job_queue

router = APIRouter(prefix="/api/v2/batch", tags=["batch"])


def _checked(session: Session, index: int, item: BatchItemRequest, settings: Settings) -> BatchItemRequest:
    """The item with its voices named by id (a voice renamed after submission still counts), or InvalidRequest
    naming the item."""
    try:
        script, _, _ = generation.check_request(item, settings)
        voices = generation.resolve_voices(session, item, script)
    except InvalidRequest as exc:
        raise InvalidRequest(f"item {index}: {exc}") from None
    return item.model_copy(update={"voices": {speaker: voice.id for speaker, voice in voices.items()}})


def _job(session: Session, job_id: str) -> BatchJob:
    return found(session.get(BatchJob, job_id), "batch job", job_id, "/api/v2/batch")


def _detail(session: Session, job: BatchJob) -> BatchJobDetail:
    items = session.exec(select(BatchItem).where(BatchItem.job_id == job.id).order_by(BatchItem.position)).all()
    return BatchJobDetail.of(job, list(items))


@router.post("", status_code=202, response_model=BatchJobDetail)
def submit_job(body: BatchCreate, services: ServicesDep, session: SessionDep, principal: PrincipalDep):
    """Every item is checked first (script, voices, format): one bad item refuses the whole job, naming it."""
    limit = services.settings.max_batch_items
    if len(body.items) > limit:
        raise InvalidRequest(f"{len(body.items)} items sent; a batch job takes at most {limit} (split it into "
                             "several jobs)")
    items = [_checked(session, index, item, services.settings) for index, item in enumerate(body.items)]
    job = job_queue.submit(session, body.name, items)
    services.jobs.wake()
    return _detail(session, job)


@router.get("", response_model=BatchJobList)
def list_jobs(session: SessionDep, principal: PrincipalDep,
              status: Annotated[str | None, Query(description=", ".join(JOB_STATES))] = None,
              limit: Annotated[int, Query(ge=1, le=200)] = 50, offset: Annotated[int, Query(ge=0)] = 0):
    """Newest first."""
    query = select(BatchJob)
    if status is not None:
        if status not in JOB_STATES:
            raise InvalidRequest(f"status {status!r} is not a job state; use one of {', '.join(JOB_STATES)}")
        query = query.where(BatchJob.status == status)
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    jobs = session.exec(query.order_by(BatchJob.created_at.desc(), BatchJob.id).offset(offset).limit(limit)).all()
    return BatchJobList(items=[BatchJobPublic.of(job) for job in jobs], total=total)


@router.get("/{job_id}", response_model=BatchJobDetail)
def read_job(job_id: str, session: SessionDep, principal: PrincipalDep):
    return _detail(session, _job(session, job_id))


@router.post("/{job_id}/cancel", response_model=BatchJobDetail)
async def cancel_job(job_id: str, services: ServicesDep, session: SessionDep, principal: PrincipalDep):
    """Queued items are cancelled at once and running ones stopped, none of them stored; finished items keep their
    clips. Cancelling a cancelled job changes nothing."""
    job = await run_in_threadpool(_job, session, job_id)
    if job.status in ("done", "failed"):
        raise HTTPException(409, f"batch job {job_id} is {job.status} already; nothing is left to cancel")
    await run_in_threadpool(job_queue.cancel, services.engine, job_id)
    await services.jobs.stop_job(job_id)  # other processes stop theirs at their next poll
    await run_in_threadpool(session.refresh, job)
    return await run_in_threadpool(_detail, session, job)


@router.delete("/{job_id}", status_code=204)
def delete_job(job_id: str, session: SessionDep, principal: PrincipalDep):
    """The job's record and its items; their clips stay in the gallery."""
    job = _job(session, job_id)
    if job.status not in FINISHED_STATES:
        raise HTTPException(409, f"batch job {job_id} is {job.status}; cancel it (POST /api/v2/batch/{job_id}/cancel) "
                                 "or wait until it finishes before deleting it")
    session.delete(job)  # its items go with it (ON DELETE CASCADE)
    session.commit()
