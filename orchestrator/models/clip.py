"""Clips: every generated recording, the audio gallery's rows."""
from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, ConfigDict
from sqlalchemy import BigInteger, Column, Index, Text, text
from sqlmodel import Field, SQLModel

from orchestrator.models.common import decode_tags, new_id, utcnow

BULK_MAX = 1000  # clip ids in one bulk request or playlist change


def decode_voice_names(stored: str) -> list[str]:
    return [name for name in stored.split(", ") if name]


def search_text(title: str, script: str, voice_names: list[str]) -> str:
    """What gallery search matches: the title, the script and the voice names, lower-cased."""
    return " ".join([title, script, *voice_names]).lower()


class Clip(SQLModel, table=True):
    # One index per gallery sort key, with the id that breaks ties: a page is then read in index order and the
    # rows skipped by an offset are walked in the index alone (see services.gallery.page). They serve the range
    # filters on the same columns too.
    # On PostgreSQL a trigram index (pg_trgm) also answers search's LIKE '%word%' without reading every clip.
    __table_args__ = (*(Index(f"ix_clip_{name}", column, "id") for name, column in (
        ("created_at", "created_at"), ("duration_s", "duration_s"), ("generation_s", "generation_s"),
        ("file_size", "file_size"), ("quality_score", "quality_score"), ("title", text("lower(title)")))),
        Index("ix_clip_search_text", "search_text", postgresql_using="gin",
              postgresql_ops={"search_text": "gin_trgm_ops"}).ddl_if(dialect="postgresql"))

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    created_at: datetime = Field(default_factory=utcnow)
    title: str = Field(default="", max_length=200)
    script: str = Field(sa_column=Column(Text, nullable=False))
    # Lower-cased script, title and voice names: what gallery search matches (LIKE, portable across databases).
    search_text: str = Field(sa_column=Column(Text, nullable=False))
    voice_ids: str = Field(default="", max_length=200)  # '|id|id|', as tags
    voice_names: str = Field(default="", max_length=500)  # display, in speaker order, ', '-joined
    speakers: int
    duration_s: float
    generation_s: float
    rtf: float
    format: str = Field(max_length=8)
    file_sha256: str = Field(max_length=64, index=True)
    file_size: int
    seed: int = Field(sa_column=Column(BigInteger, nullable=False))
    cfg_scale: float
    diffusion_steps: int
    model_id: str = Field(max_length=64)
    finish_reason: str = Field(default="", max_length=32)
    tags: str = Field(default="", max_length=2000)
    folder: str = Field(default="", max_length=200, index=True)
    quality_score: float | None = None
    source: str = Field(default="api", max_length=16)  # api, stream, websocket, openai, batch, preview


class ClipPublic(BaseModel):
    id: str
    created_at: datetime
    title: str
    script: str
    voice_ids: list[str]
    voice_names: list[str]
    speakers: int
    duration_s: float
    generation_s: float
    rtf: float
    format: str
    file_size: int
    seed: int
    cfg_scale: float
    diffusion_steps: int
    model_id: str
    finish_reason: str
    tags: list[str]
    folder: str
    quality_score: float | None
    source: str
    download_url: str

    @classmethod
    def of(cls, clip: Clip) -> "ClipPublic":
        fields = clip.model_dump(exclude={"search_text", "file_sha256", "voice_ids", "voice_names", "tags"})
        return cls(**fields, voice_ids=decode_tags(clip.voice_ids), voice_names=decode_voice_names(clip.voice_names),
                   tags=decode_tags(clip.tags),
                   download_url=f"/api/v2/gallery/{clip.id}/download")


class ClipQuery(BaseModel):
    """The gallery's search, filters, sort and page, as query parameters; an unknown parameter is refused by name
    rather than silently ignored (a misspelt filter would otherwise return everything)."""

    model_config = ConfigDict(extra="forbid")

    q: str | None = Field(None, description="words that must all occur in the title, script or voice names")
    created_from: date | datetime | None = Field(None, description="from this day or instant (UTC unless given)")
    created_to: date | datetime | None = Field(None, description="up to this instant, or to the end of this day")
    voice: str | None = Field(None, description="a voice's id or name (clips keep the ids of deleted voices)")
    min_duration_s: float | None = None
    max_duration_s: float | None = None
    min_generation_s: float | None = None
    max_generation_s: float | None = None
    min_file_size: int | None = None
    max_file_size: int | None = None
    min_quality_score: float | None = None
    max_quality_score: float | None = None
    tag: list[str] = Field(default_factory=list, description="clips with every one of these tags")
    folder: str | None = Field(None, description="exactly this folder; empty for clips in no folder")
    source: str | None = Field(None, description="api, stream, websocket, openai, batch")
    format: str | None = Field(None, description="the stored format: wav, flac, ogg, opus, mp3, pcm")
    sort: str = Field("-created_at", description="created_at, duration_s, generation_s, file_size, title or "
                                                 "quality_score; '-' first for descending")
    limit: int = Field(50, ge=1, description="at most the server's page_size_max")
    offset: int = Field(0, ge=0)


class ClipPage(BaseModel):
    items: list[ClipPublic]
    total: int  # clips matching, over all pages
    limit: int
    offset: int


class ClipList(BaseModel):
    items: list[ClipPublic]


class ClipUpdate(BaseModel):
    """The fields a client edits; others are refused by name (quality_score is computed by the server)."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(None, max_length=200)
    tags: list[str] | None = None
    folder: str | None = Field(None, max_length=200)


class ClipIds(BaseModel):
    ids: list[str] = Field(min_length=1, max_length=BULK_MAX)


class BulkTag(ClipIds):
    add: list[str] = Field(default_factory=list)
    remove: list[str] = Field(default_factory=list)


class BulkMove(ClipIds):
    folder: str = Field(max_length=200, description="empty: out of every folder")


class BulkExport(ClipIds):
    format: str | None = Field(None, description="convert every file to this format; default: as stored")


class BulkDeleted(BaseModel):
    deleted: list[str]


class Facet(BaseModel):
    value: str
    count: int  # clips with this value


class FacetList(BaseModel):
    items: list[Facet]
