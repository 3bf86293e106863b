"""Gallery clips written straight into the app's database and audio store, with chosen metadata: for the gallery
and playlist tests that need many clips and no generation (a few tests generate for real)."""
from __future__ import annotations

import itertools
from datetime import datetime

import numpy as np
from fastapi.testclient import TestClient
from sqlmodel import Session

from orchestrator.models.clip import Clip, ClipPublic, search_text
from orchestrator.models.common import encode_tags
from orchestrator.services import codecs

_seeds = itertools.count(1)


def insert_clip(client: TestClient, title: str = "A clip", script: str = "Speaker 0: Hello there.",
                voices: dict[str, str] | None = None, tags: tuple[str, ...] = (), created_at: datetime | None = None,
                fmt: str = "wav", seed: int | None = None, **fields) -> dict:
    """A clip row and its file (a few samples of noise; the same `seed` gives the same file), as the API shows it.
    `voices` maps voice ids to names; `fields` sets any other column (duration_s, file_size, folder, ...)."""
    services = client.app.state.services
    seed = next(_seeds) if seed is None else seed
    audio = np.random.default_rng(seed).uniform(-0.5, 0.5, 240).astype(np.float32)
    data = codecs.encode(audio, codecs.FORMATS[fmt])
    voices = voices or {"voice-0": "Narrator"}
    columns = dict(speakers=len(voices), duration_s=audio.size / 24000, generation_s=0.01, rtf=1.0,
                   file_size=len(data), cfg_scale=1.3, diffusion_steps=10, model_id="test", source="api")
    columns.update(fields)
    clip = Clip(title=title, script=script, search_text=search_text(title, script, list(voices.values())),
                voice_ids=encode_tags(list(voices)), voice_names=", ".join(voices.values()), format=fmt,
                file_sha256=services.store.write(data), seed=seed, tags=encode_tags(list(tags)), **columns)
    if created_at is not None:
        clip.created_at = created_at
    with Session(services.engine) as session:
        session.add(clip)
        session.commit()
        session.refresh(clip)
        return ClipPublic.of(clip).model_dump(mode="json")


def stored_file(client: TestClient, clip_id: str):
    """The path of a clip's file in the audio store."""
    services = client.app.state.services
    with Session(services.engine) as session:
        return services.store.path(session.get(Clip, clip_id).file_sha256)
