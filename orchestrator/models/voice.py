"""Voices: a cleaned prompt recording per voice, its cached latents per model, and usage statistics."""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import Column, ForeignKey, LargeBinary, String
from sqlmodel import Field, SQLModel

from orchestrator.models.common import decode_tags, new_id, utcnow


class Voice(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    name: str = Field(index=True, unique=True, max_length=100)
    description: str = Field(default="", max_length=2000)
    tags: str = Field(default="", max_length=2000)
    audio_sha256: str = Field(max_length=64)  # the prompt: 24 kHz mono WAV in the audio store
    duration_s: float
    source_count: int = 1  # recordings combined into the prompt
    created_at: datetime = Field(default_factory=utcnow, index=True)
    updated_at: datetime = Field(default_factory=utcnow)
    generations: int = 0
    audio_seconds: float = 0.0
    last_used_at: datetime | None = None


class VoiceLatents(SQLModel, table=True):
    """The acoustic encoder's latents of a voice's prompt, computed once per model (see Triton's model_id)."""

    voice_id: str = Field(sa_column=Column(String(32), ForeignKey("voice.id", ondelete="CASCADE"), primary_key=True))
    model_id: str = Field(primary_key=True, max_length=64)
    frames: int
    latent_dim: int
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # float32 [frames, latent_dim], little-endian
    created_at: datetime = Field(default_factory=utcnow)


class VoicePublic(BaseModel):
    id: str
    name: str
    description: str
    tags: list[str]
    duration_s: float
    source_count: int
    created_at: datetime
    updated_at: datetime
    generations: int
    audio_seconds: float
    last_used_at: datetime | None
    audio_url: str
    preview_url: str

    @classmethod
    def of(cls, voice: Voice) -> "VoicePublic":
        return cls(**voice.model_dump(exclude={"tags", "audio_sha256"}), tags=decode_tags(voice.tags),
                   audio_url=f"/api/v2/voices/{voice.id}/audio", preview_url=f"/api/v2/voices/{voice.id}/preview")


class VoiceUpdate(BaseModel):
    name: str | None = None
    description: str | None = None
    tags: list[str] | None = None


class VoiceList(BaseModel):
    items: list[VoicePublic]
    total: int
