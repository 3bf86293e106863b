"""Batch jobs: many generation items, run with bounded concurrency, each with its own status."""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel
from pydantic import Field as PydanticField
from pydantic.json_schema import SkipJsonSchema
from sqlalchemy import Column, ForeignKey, Integer, String, Text
from sqlmodel import Field, SQLModel

from orchestrator.models.common import new_id, utcnow
from orchestrator.models.generation import GenerateRequest

JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
ITEM_STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED_STATES = ("done", "failed", "cancelled")


class BatchJob(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    name: str = Field(default="", max_length=200)
    # queued -> running -> done (every item finished, at least one with a clip; `failed` counts the others),
    # failed (every item failed) or cancelled
    status: str = Field(default="queued", max_length=16, index=True)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    total: int
    completed: int = 0
    failed: int = 0


class BatchItem(SQLModel, table=True):
    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    job_id: str = Field(sa_column=Column(String(32), ForeignKey("batchjob.id", ondelete="CASCADE"), nullable=False,
                                         index=True))
    position: int
    request: str = Field(sa_column=Column(Text, nullable=False))  # the item's GenerateRequest as JSON
    status: str = Field(default="queued", max_length=16, index=True)
    clip_id: str | None = Field(default=None, sa_column=Column(String(32), ForeignKey("clip.id", ondelete="SET NULL"),
                                                               nullable=True))
    error: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    attempts: int = 0
    updated_at: datetime = Field(default_factory=utcnow)


class BatchItemRequest(GenerateRequest):
    """One generation of a batch job: a GenerateRequest whose clip always lands in the gallery (no streaming)."""

    stream: SkipJsonSchema[Literal[False]] = Field(False, exclude=True)


class BatchCreate(BaseModel):
    name: str = PydanticField("", max_length=200)
    items: list[BatchItemRequest] = PydanticField(min_length=1, description="generated oldest job first, in order")


class BatchItemPublic(BaseModel):
    position: int
    status: str
    attempts: int
    error: str  # why it failed, or (while queued again) why its last attempt could not run
    clip_id: str | None
    download_url: str | None
    updated_at: datetime

    @classmethod
    def of(cls, item: BatchItem) -> "BatchItemPublic":
        return cls(**item.model_dump(include=set(cls.model_fields) - {"download_url"}),
                   download_url=f"/api/v2/gallery/{item.clip_id}/download" if item.clip_id else None)


class BatchJobPublic(BaseModel):
    id: str
    name: str
    status: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    total: int
    completed: int
    failed: int
    progress: float  # finished items (done or failed) / total

    @classmethod
    def of(cls, job: BatchJob) -> "BatchJobPublic":
        return cls(**job.model_dump(), progress=(job.completed + job.failed) / job.total)


class BatchJobDetail(BatchJobPublic):
    items: list[BatchItemPublic]

    @classmethod
    def of(cls, job: BatchJob, items: list[BatchItem]) -> "BatchJobDetail":
        return cls(**BatchJobPublic.of(job).model_dump(), items=[BatchItemPublic.of(i) for i in items])


class BatchJobList(BaseModel):
    items: list[BatchJobPublic]
    total: int
