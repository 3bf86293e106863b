"""Playlists: named, ordered lists of gallery clips."""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Column, ForeignKey, Integer, String
from sqlmodel import Field, SQLModel

from orchestrator.models.clip import BULK_MAX, ClipPublic
from orchestrator.models.common import new_id, utcnow


class Playlist(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    name: str = Field(max_length=200, index=True)
    description: str = Field(default="", max_length=2000)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class PlaylistEntry(SQLModel, table=True):
    """One clip at one position; a clip deleted from the gallery leaves every playlist with it."""

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    playlist_id: str = Field(sa_column=Column(String(32), ForeignKey("playlist.id", ondelete="CASCADE"),
                                              nullable=False, index=True))
    clip_id: str = Field(sa_column=Column(String(32), ForeignKey("clip.id", ondelete="CASCADE"), nullable=False,
                                          index=True))
    position: int


class PlaylistCreate(BaseModel):
    name: str = Field(max_length=200)
    description: str = Field("", max_length=2000)
    clip_ids: list[str] = Field(default_factory=list, max_length=BULK_MAX, description="its clips, in order")


class PlaylistUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=200)
    description: str | None = Field(None, max_length=2000)


class PlaylistClipsAdd(BaseModel):
    clip_ids: list[str] = Field(min_length=1, max_length=BULK_MAX)
    position: int | None = Field(None, ge=0, description="insert before this position (0: first); default: at the end")


class PlaylistOrder(BaseModel):
    clip_ids: list[str] = Field(description="the playlist's clips in their new order, each as often as it is there")


class PlaylistPublic(BaseModel):
    id: str
    name: str
    description: str
    created_at: datetime
    updated_at: datetime
    clip_count: int
    duration_s: float  # all its clips together

    @classmethod
    def of(cls, playlist: Playlist, clip_count: int, duration_s: float) -> "PlaylistPublic":
        return cls(**playlist.model_dump(), clip_count=clip_count, duration_s=duration_s)


class PlaylistDetail(PlaylistPublic):
    clips: list[ClipPublic]  # in order: a clip's position is its index here


class PlaylistList(BaseModel):
    items: list[PlaylistPublic]
    total: int
