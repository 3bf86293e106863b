"""Voice prompts from uploaded samples (multi-sample cloning) and their latents, computed once per model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from engine.audio import prepare_voice, read_audio
from engine.config import SAMPLE_RATE
from engine.errors import InvalidRequest
from orchestrator.core.config import Settings
from orchestrator.models.voice import Voice, VoiceLatents
from orchestrator.services import codecs
from orchestrator.services.storage import AudioStore, file_in_use
from orchestrator.services.triton import TritonClient

TRIM_DBFS = -45.0      # leading and trailing audio quieter than this (relative to the peak) is cut
TRIM_WINDOW = 480      # 20 ms analysis windows
SAMPLE_GAP_S = 0.25    # silence between combined samples
LEVEL_DBFS = -25.0     # every sample is brought to this RMS before they are combined
STARTER_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


def clean_sample(data: bytes, name: str, settings: Settings) -> np.ndarray:
    """One uploaded recording -> 24 kHz mono, trimmed of leading and trailing silence, at LEVEL_DBFS RMS."""
    try:
        samples, rate = read_audio(data)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{name}: {exc}") from None
    mono = prepare_voice(samples, rate, name=name)
    mono = mono - mono.mean()
    mono = _trim(mono)
    seconds = mono.size / SAMPLE_RATE
    if seconds < settings.min_sample_seconds:
        raise InvalidRequest(f"{name} holds {seconds:.2f} s of sound after trimming silence; give at least "
                             f"{settings.min_sample_seconds:g} s of the speaker")
    rms = float(np.sqrt(np.mean(mono**2)))
    mono = mono * (10 ** (LEVEL_DBFS / 20) / max(rms, 1e-6))
    return np.clip(mono, -1.0, 1.0).astype(np.float32)


def _trim(mono: np.ndarray) -> np.ndarray:
    windows = mono[: mono.size // TRIM_WINDOW * TRIM_WINDOW].reshape(-1, TRIM_WINDOW)
    if windows.size == 0:
        return mono
    level = np.sqrt(np.mean(windows**2, axis=1))
    loud = np.flatnonzero(level > np.abs(mono).max() * 10 ** (TRIM_DBFS / 20))
    if loud.size == 0:
        return mono
    return mono[loud[0] * TRIM_WINDOW:(loud[-1] + 1) * TRIM_WINDOW]


def combine_samples(samples: list[np.ndarray], max_seconds: float) -> np.ndarray:
    """Cleaned samples joined with short gaps, in order, cut (with a 50 ms fade-out) at `max_seconds`."""
    gap = np.zeros(int(SAMPLE_GAP_S * SAMPLE_RATE), dtype=np.float32)
    joined = np.concatenate([part for sample in samples for part in (gap, sample)][1:])
    limit = int(max_seconds * SAMPLE_RATE)
    if joined.size > limit:
        joined = joined[:limit].copy()
        fade = min(int(0.05 * SAMPLE_RATE), limit)
        joined[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return joined


def store_voice(session: Session, store: AudioStore, voice: Voice, prompt_wav: bytes,
                latents: list[VoiceLatents] = ()) -> Voice:
    """The voice's prompt file and its rows, created together. A taken name raises IntegrityError and leaves
    nothing behind."""
    with store.written(prompt_wav, lambda sha: file_in_use(session, sha)) as sha256:
        voice.audio_sha256 = sha256
        session.add(voice)
        session.flush()
        for row in latents:
            row.voice_id = voice.id
            session.add(row)
        session.commit()
    session.refresh(voice)
    return voice


def clone_voice(session: Session, store: AudioStore, samples: list[tuple[bytes, str]], settings: Settings,
                **fields) -> Voice:
    """A new voice from (recording, label) samples: each cleaned, then combined into one prompt; `fields` are the
    Voice's name, description and tags."""
    cleaned = [clean_sample(data, label, settings) for data, label in samples]
    audio = combine_samples(cleaned, settings.max_prompt_seconds)
    voice = Voice(**fields, audio_sha256="", duration_s=audio.size / SAMPLE_RATE, source_count=len(cleaned))
    return store_voice(session, store, voice, codecs.encode(audio, codecs.FORMATS["wav"]))


def add_starter_voices(session: Session, store: AudioStore, folder: Path, settings: Settings) -> list[str]:
    """A voice per audio file of `folder` (named after the file) unless one has that name already; the names
    added. Used by demos to start with voices to try."""
    added = []
    for file in sorted(p for p in folder.iterdir() if p.suffix.lower() in STARTER_SUFFIXES):
        name = file.stem.capitalize()
        if session.exec(select(Voice.id).where(Voice.name == name)).first() is None:
            clone_voice(session, store, [(file.read_bytes(), file.name)], settings, name=name,
                        description=f"starter voice from {file.name}")
            added.append(name)
    return added


def prompt_audio(voice: Voice, store: AudioStore) -> np.ndarray:
    return codecs.decode(store.read(voice.audio_sha256), codecs.FORMATS["wav"])


async def voice_latents(session: Session, voice: Voice, store: AudioStore, triton: TritonClient) -> np.ndarray:
    """The voice's latents for the model Triton serves: from the cache, or encoded once and cached."""
    model_id = await triton.model_id()
    cached = session.get(VoiceLatents, (voice.id, model_id))
    if cached is not None:
        return np.frombuffer(cached.data, dtype="<f4").reshape(cached.frames, cached.latent_dim)
    latents = (await triton.encode_voices([prompt_audio(voice, store)]))[0].astype("<f4")
    session.add(VoiceLatents(voice_id=voice.id, model_id=model_id, frames=latents.shape[0],
                             latent_dim=latents.shape[1], data=latents.tobytes()))
    try:
        session.commit()
    except IntegrityError:  # a concurrent request cached the same latents first
        session.rollback()
    return latents
