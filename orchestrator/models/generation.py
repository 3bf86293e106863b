"""API schemas of generation requests and their events (not tables: a finished generation is a Clip)."""
from __future__ import annotations

from pydantic import BaseModel, Field

from engine.config import DEFAULT_CFG_SCALE, DEFAULT_DIFFUSION_STEPS
from engine.request import MAX_DIFFUSION_STEPS


class GenerateRequest(BaseModel):
    script: str = Field(description="'Speaker N: text' lines (1 to 4 speakers); plain text is one speaker, 0")
    voices: dict[int, str] = Field(description="script speaker id -> voice id or name")
    cfg_scale: float = Field(DEFAULT_CFG_SCALE, gt=0, le=20)
    diffusion_steps: int = Field(DEFAULT_DIFFUSION_STEPS, ge=1, le=MAX_DIFFUSION_STEPS)
    seed: int | None = Field(None, ge=0, lt=2**63, description="drawn at random when absent; the clip records it")
    format: str = Field("wav", description="wav, flac, ogg, opus, mp3 or pcm (16-bit little-endian, 24 kHz mono)")
    max_frames: int | None = Field(None, ge=1, description="cap on generated frames per chunk (7.5 per second)")
    title: str = Field("", max_length=200)
    tags: list[str] = Field(default_factory=list)
    folder: str = Field("", max_length=200)
    stream: bool = Field(False, description="stream the audio as it is made (chunked HTTP) instead of JSON")
