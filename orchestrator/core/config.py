"""The orchestrator's settings: one object, read from the environment (prefix DJZ_) and an optional .env file."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DJZ_", env_file=".env", extra="ignore")

    data_dir: Path = Path("data")
    database_url: str | None = None  # default: SQLite in data_dir; PostgreSQL by URL (postgresql+psycopg://...)
    triton_grpc_url: str = "127.0.0.1:8001"
    triton_timeout_s: float = 600.0  # one generation stream, start to end
    retry_after_s: int = 5  # told to clients while Triton is unreachable

    # Uploads (voice samples)
    max_upload_bytes: int = 20 * 1024 * 1024
    max_voice_samples: int = 8
    min_sample_seconds: float = 0.5
    max_prompt_seconds: float = 30.0  # the combined prompt of a multi-sample voice

    # Generation
    max_script_chars: int = 50_000
    chunk_chars: int = 600  # a long script is generated in chunks of at most this many characters
    crossfade_ms: float = 40.0
    preview_text: str = "Hello! This is a short preview of my voice."
    # Random-weight test checkpoints never end a turn on their own; this forces every chunk to a length that
    # follows its text (frames per character). Off (None) for real checkpoints.
    exact_frames_per_char: float | None = None

    # Voices created at start from the audio files of this folder (file stem = name) where no voice has that name.
    starter_voices_dir: Path | None = None

    # Batch jobs
    batch_concurrency: int = 2
    max_batch_items: int = 1000

    # Gallery
    page_size_max: int = 200

    cors_origins: list[str] = Field(default_factory=list)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'djz.db').resolve()}"

    @property
    def audio_dir(self) -> Path:
        return self.data_dir / "audio"
