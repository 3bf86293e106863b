"""One generation from request to gallery: resolve voices and their latents, split the script, stream each piece
from Triton through the crossfader, then store the clip and its file together. Every route that makes audio
(generate, streaming, WebSocket, OpenAI, batch items, previews) comes through here."""
from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import Engine
from sqlmodel import Session, select
from starlette.concurrency import run_in_threadpool

from engine.config import HOP_SAMPLES, SAMPLE_RATE
from engine.errors import InvalidRequest
from engine.script import Script, parse_script, render_script
from orchestrator.core import metrics
from orchestrator.core.config import Settings
from orchestrator.models.clip import Clip, search_text
from orchestrator.models.common import clean_tags, encode_tags, new_id, utcnow
from orchestrator.models.generation import GenerateRequest
from orchestrator.models.voice import Voice
from orchestrator.services import codecs
from orchestrator.services.chunking import Crossfader, split_script
from orchestrator.services.storage import AudioStore, file_in_use
from orchestrator.services.triton import GenerationOptions, TritonClient
from orchestrator.services.voices import voice_latents


@dataclass
class Progress:
    frames: int
    audio_seconds: float
    elapsed_s: float

    @property
    def rtf(self) -> float:
        return self.elapsed_s / self.audio_seconds if self.audio_seconds else 0.0


@dataclass(frozen=True)
class SpeakerVoice:
    """The voice a speaker was given, as the clip records it (plain values: a plan outlives its session)."""

    id: str
    name: str


@dataclass
class Plan:
    """A validated generation, ready to run: what Triton is sent, piece by piece, and what the clip records."""

    request: GenerateRequest
    script: Script
    voices: dict[int, SpeakerVoice]  # script speaker id -> voice
    latents: dict[int, np.ndarray]
    pieces: list[Script]
    fmt: codecs.AudioFormat
    seed: int
    model_id: str
    tags: list[str]
    source: str
    clip_id: str = field(default_factory=new_id)


def find_voice(session: Session, key: str) -> Voice | None:
    """A voice by id, else by exact name, else by case-insensitive name."""
    voice = session.get(Voice, key)
    if voice is None:
        voice = session.exec(select(Voice).where(Voice.name == key)).first()
    if voice is None:
        lowered = [v for v in session.exec(select(Voice).where(Voice.name.ilike(key))).all()]
        voice = lowered[0] if len(lowered) == 1 else None
    return voice


def check_request(request: GenerateRequest, settings: Settings) -> tuple[Script, codecs.AudioFormat, list[str]]:
    """The parsed script, output format and cleaned tags, or InvalidRequest naming what is wrong."""
    if len(request.script) > settings.max_script_chars:
        raise InvalidRequest(f"the script has {len(request.script)} characters; at most {settings.max_script_chars} "
                             "are taken in one request (send a batch job for more)")
    script = parse_script(request.script)
    missing = [s for s in script.speakers if s not in request.voices]
    if missing:
        raise InvalidRequest(f"speaker {missing[0]} speaks in the script but has no voice; give one in 'voices' "
                             f"for each of the speakers {list(script.speakers)}")
    unused = sorted(set(request.voices) - set(script.speakers))
    if unused:
        raise InvalidRequest(f"'voices' names speaker {unused[0]}, who has no line in the script (its speakers: "
                             f"{list(script.speakers)})")
    return script, codecs.audio_format(request.format), clean_tags(request.tags)


def resolve_voices(session: Session, request: GenerateRequest, script: Script) -> dict[int, Voice]:
    """Script speaker id -> voice, or InvalidRequest naming the speaker whose voice does not exist."""
    voices = {}
    for speaker in script.speakers:
        voice = find_voice(session, request.voices[speaker])
        if voice is None:
            raise InvalidRequest(f"speaker {speaker}: no voice has the id or name {request.voices[speaker]!r}; "
                                 "GET /api/v2/voices lists them")
        voices[speaker] = voice
    return voices


async def plan(session: Session, request: GenerateRequest, settings: Settings, triton: TritonClient,
               store: AudioStore, source: str) -> Plan:
    script, fmt, tags = check_request(request, settings)
    voices = resolve_voices(session, request, script)
    latents = {speaker: await voice_latents(session, voice, store, triton) for speaker, voice in voices.items()}
    seed = request.seed if request.seed is not None else secrets.randbelow(2**63)
    return Plan(request, script, {speaker: SpeakerVoice(v.id, v.name) for speaker, v in voices.items()}, latents,
                split_script(script, settings.chunk_chars), fmt, seed, await triton.model_id(), tags, source)


async def stream_audio(plan: Plan, settings: Settings, triton: TritonClient
                       ) -> AsyncIterator[tuple[np.ndarray, Progress, str]]:
    """(final samples, progress, finish reason of the last piece so far) as the audio is made. Each piece uses
    the plan's seed plus its index, so a clip is reproducible from its recorded seed."""
    crossfader = Crossfader(int(settings.crossfade_ms / 1000 * SAMPLE_RATE))
    started, samples, reason = time.perf_counter(), 0, ""
    for index, piece in enumerate(plan.pieces):
        crossfader.start_piece()
        options = GenerationOptions(plan.request.cfg_scale, plan.request.diffusion_steps, (plan.seed + index) % 2**63,
                                    plan.request.max_frames, _forced_frames(piece, settings))
        latents = [plan.latents[speaker] for speaker in piece.speakers]
        async for streamed in triton.generate(render_script(piece), latents, options):
            samples += streamed.audio.size
            reason = streamed.finish_reason or reason
            out = crossfader.push(streamed.audio)
            yield out, Progress(samples // HOP_SAMPLES, samples / SAMPLE_RATE, time.perf_counter() - started), reason
    yield crossfader.finish(), Progress(samples // HOP_SAMPLES, samples / SAMPLE_RATE,
                                        time.perf_counter() - started), reason


def _forced_frames(piece: Script, settings: Settings) -> int | None:
    if settings.exact_frames_per_char is None:
        return None
    return max(1, round(sum(len(turn.text) for turn in piece.turns) * settings.exact_frames_per_char))


def save_clip(engine: Engine, store: AudioStore, plan: Plan, audio: np.ndarray, generation_s: float,
              finish_reason: str, record_with: Callable[[Session], None] | None = None) -> Clip:
    """The clip's file and row, committed together with the voices' usage statistics and whatever `record_with`
    writes (a batch item's outcome); if `record_with` raises, nothing is stored. It runs in a worker thread with a
    session of its own: a caller cancelled meanwhile (a client gone, a runner stopping) cannot close it under it."""
    data = codecs.encode(audio, plan.fmt)
    duration = audio.size / SAMPLE_RATE
    names = [plan.voices[s].name for s in plan.script.speakers]
    script_text = render_script(plan.script)
    title = plan.request.title or _title(plan.script)
    with (Session(engine, expire_on_commit=False) as session,
          store.written(data, lambda sha: file_in_use(session, sha)) as sha256):
        clip = Clip(id=plan.clip_id, title=title, script=script_text,
                    search_text=search_text(title, script_text, names),
                    voice_ids=encode_tags([plan.voices[s].id for s in plan.script.speakers]),
                    voice_names=", ".join(names), speakers=len(plan.script.speakers), duration_s=duration,
                    generation_s=generation_s, rtf=generation_s / duration if duration else 0.0,
                    format=plan.fmt.name, file_sha256=sha256, file_size=len(data), seed=plan.seed,
                    cfg_scale=plan.request.cfg_scale, diffusion_steps=plan.request.diffusion_steps,
                    model_id=plan.model_id, finish_reason=finish_reason, tags=encode_tags(plan.tags),
                    folder=plan.request.folder.strip(), source=plan.source)
        session.add(clip)
        now = utcnow()
        for voice_id in {v.id for v in plan.voices.values()}:
            voice = session.get(Voice, voice_id)
            if voice is not None:
                voice.generations += 1
                voice.audio_seconds += duration
                voice.last_used_at = now
                session.add(voice)
        if record_with is not None:
            session.flush()  # the clip's row first: what record_with writes may refer to it
            record_with(session)
        session.commit()
    metrics.AUDIO_SECONDS.labels(plan.source).inc(duration)
    return clip


def _title(script: Script, words: int = 8) -> str:
    text = " ".join(turn.text for turn in script.turns).split()
    return " ".join(text[:words]) + (" ..." if len(text) > words else "")


async def generate_clip(engine: Engine, plan: Plan, settings: Settings, triton: TritonClient,
                        store: AudioStore, record_with: Callable[[Session], None] | None = None) -> Clip:
    """Run a plan to the end and store its clip (nothing is stored if the generation fails); `record_with` as in
    save_clip."""
    parts, started, reason = [], time.perf_counter(), ""
    async for samples, _, reason in stream_audio(plan, settings, triton):
        parts.append(samples)
    return await run_in_threadpool(save_clip, engine, store, plan, joined(parts), time.perf_counter() - started,
                                   reason, record_with)


def joined(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)
