"""/api/v2/voices: create voices from samples (multi-sample cloning), list and search, edit, delete, preview,
export and import."""
from __future__ import annotations

import io
import json
import zipfile
from typing import Annotated

import numpy as np
import soundfile
from fastapi import APIRouter, File, Form, HTTPException, Query, UploadFile
from fastapi.responses import Response
from sqlalchemy import func, or_
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from engine.config import SAMPLE_RATE
from engine.errors import InvalidRequest
from orchestrator.api.deps import PrincipalDep, ServicesDep, SessionDep
from orchestrator.models.common import clean_name, clean_tags, decode_tags, encode_tags, tag_pattern, utcnow
from orchestrator.models.generation import GenerateRequest
from orchestrator.models.voice import Voice, VoiceLatents, VoiceList, VoicePublic, VoiceUpdate
from orchestrator.services import archives, codecs, generation
from orchestrator.services.storage import file_in_use
from orchestrator.services.voices import clone_voice, store_voice

router = APIRouter(prefix="/api/v2/voices", tags=["voices"])

SORTS = {"name": Voice.name, "created_at": Voice.created_at, "updated_at": Voice.updated_at,
         "generations": Voice.generations, "audio_seconds": Voice.audio_seconds, "last_used_at": Voice.last_used_at,
         "duration_s": Voice.duration_s}
EXPORT_FORMAT = 1  # the voice zip's layout version
NAME_LIMIT = 100  # Voice.name's column width


def get_voice(session: Session, voice_id: str) -> Voice:
    voice = generation.find_voice(session, voice_id)
    if voice is None:
        raise HTTPException(404, f"no voice has the id or name {voice_id!r}")
    return voice


def _split_tags(tags: str | None) -> list[str]:
    return clean_tags([t for t in (tags or "").split(",") if t.strip()])


async def _read_upload(upload: UploadFile, limit: int) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"{upload.filename or 'the upload'} is larger than {limit // (1024 * 1024)} MiB, the "
                                 "upload limit")
    return data


def _name_taken(name: str) -> HTTPException:
    return HTTPException(409, f"a voice named {name!r} exists already; choose another name")


@router.post("", status_code=201, response_model=VoicePublic)
async def create_voice(services: ServicesDep, session: SessionDep, principal: PrincipalDep,
                       name: Annotated[str, Form()], samples: Annotated[list[UploadFile], File()],
                       description: Annotated[str, Form()] = "", tags: Annotated[str, Form()] = ""):
    """One or several recordings of a speaker: each is cleaned (mono, 24 kHz, silence trimmed, level matched) and
    they are combined into one prompt of at most `max_prompt_seconds`."""
    settings = services.settings
    if len(samples) > settings.max_voice_samples:
        raise InvalidRequest(f"{len(samples)} samples sent; a voice takes at most {settings.max_voice_samples}")
    uploads = [(await _read_upload(s, settings.max_upload_bytes), f"sample {i} ({s.filename})")
               for i, s in enumerate(samples)]
    name = clean_name(name, "a voice's name", NAME_LIMIT)
    try:
        voice = clone_voice(session, services.store, uploads, settings, name=name, description=description.strip(),
                            tags=encode_tags(_split_tags(tags)))
    except IntegrityError:
        raise _name_taken(name) from None
    return VoicePublic.of(voice)


@router.get("", response_model=VoiceList)
def list_voices(session: SessionDep, principal: PrincipalDep,
                q: Annotated[str | None, Query(description="words in the name or description")] = None,
                tag: Annotated[list[str] | None, Query(description="voices with every one of these tags")] = None,
                sort: Annotated[str, Query(description=f"{', '.join(SORTS)}; '-' first for descending")] = "name",
                limit: Annotated[int, Query(ge=1, le=500)] = 100, offset: Annotated[int, Query(ge=0)] = 0):
    query = select(Voice)
    for word in (q or "").split():
        like = f"%{word.lower()}%"
        query = query.where(or_(func.lower(Voice.name).like(like), func.lower(Voice.description).like(like)))
    for t in clean_tags(tag or []):
        query = query.where(Voice.tags.like(tag_pattern(t)))
    column = SORTS.get(sort.lstrip("-"))
    if column is None:
        raise InvalidRequest(f"sort {sort!r} is not known; sort by one of {', '.join(SORTS)} (prefix '-' to reverse)")
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    order = column.desc() if sort.startswith("-") else column.asc()
    voices = session.exec(query.order_by(order, Voice.id).offset(offset).limit(limit)).all()
    return VoiceList(items=[VoicePublic.of(v) for v in voices], total=total)


@router.get("/{voice_id}", response_model=VoicePublic)
def read_voice(voice_id: str, session: SessionDep, principal: PrincipalDep):
    return VoicePublic.of(get_voice(session, voice_id))


@router.patch("/{voice_id}", response_model=VoicePublic)
def update_voice(voice_id: str, update: VoiceUpdate, session: SessionDep, principal: PrincipalDep):
    voice = get_voice(session, voice_id)
    if update.name is not None:
        voice.name = clean_name(update.name, "a voice's name", NAME_LIMIT)
    if update.description is not None:
        voice.description = update.description.strip()
    if update.tags is not None:
        voice.tags = encode_tags(clean_tags(update.tags))
    voice.updated_at = utcnow()
    session.add(voice)
    name = voice.name
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise _name_taken(name) from None
    return VoicePublic.of(voice)


@router.delete("/{voice_id}", status_code=204)
def delete_voice(voice_id: str, services: ServicesDep, session: SessionDep, principal: PrincipalDep):
    """The voice, its cached latents and its prompt file; clips made with it stay in the gallery."""
    voice = get_voice(session, voice_id)
    sha256 = voice.audio_sha256
    session.delete(voice)
    session.commit()
    services.store.discard(sha256, lambda sha: file_in_use(session, sha))
    return Response(status_code=204)


@router.get("/{voice_id}/audio")
def voice_audio(voice_id: str, services: ServicesDep, session: SessionDep, principal: PrincipalDep):
    """The voice's prompt as it is sent to the model (24 kHz mono WAV)."""
    voice = get_voice(session, voice_id)
    return Response(services.store.read(voice.audio_sha256), media_type="audio/wav",
                    headers=archives.attachment(f"{archives.file_stem(voice.name, voice.id)}.wav", "inline"))


@router.get("/{voice_id}/preview")
async def preview_voice(voice_id: str, services: ServicesDep, session: SessionDep, principal: PrincipalDep,
                        text: Annotated[str | None, Query(max_length=300)] = None,
                        format: Annotated[str, Query()] = "wav", seed: Annotated[int, Query(ge=0)] = 0):
    """A short clip in this voice (not kept in the gallery)."""
    voice = get_voice(session, voice_id)
    request = GenerateRequest(script=f"Speaker 0: {text or services.settings.preview_text}", voices={0: voice.id},
                              format=format, seed=seed)
    plan = await generation.plan(session, request, services.settings, services.triton, services.store, "preview")
    parts = [samples async for samples, _, _ in generation.stream_audio(plan, services.settings, services.triton)]
    return Response(codecs.encode(generation.joined(parts), plan.fmt), media_type=plan.fmt.media_type)


@router.get("/{voice_id}/export")
def export_voice(voice_id: str, services: ServicesDep, session: SessionDep, principal: PrincipalDep):
    """A zip: voice.json (metadata), prompt.wav, and latents/<model_id>.npy for every model it was encoded for."""
    voice = get_voice(session, voice_id)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("voice.json", json.dumps({
            "format": EXPORT_FORMAT, "name": voice.name, "description": voice.description,
            "tags": decode_tags(voice.tags), "duration_s": voice.duration_s, "source_count": voice.source_count,
            "created_at": voice.created_at.isoformat()}, indent=2))
        archive.writestr("prompt.wav", services.store.read(voice.audio_sha256))
        for row in session.exec(select(VoiceLatents).where(VoiceLatents.voice_id == voice.id)).all():
            latents = np.frombuffer(row.data, dtype="<f4").reshape(row.frames, row.latent_dim)
            npy = io.BytesIO()
            np.save(npy, latents)
            archive.writestr(f"latents/{row.model_id}.npy", npy.getvalue())
    return Response(buffer.getvalue(), media_type="application/zip",
                    headers=archives.attachment(f"{archives.file_stem(voice.name, voice.id)}.voice.zip"))


@router.post("/import", status_code=201, response_model=VoicePublic)
async def import_voice(services: ServicesDep, session: SessionDep, principal: PrincipalDep,
                       archive: Annotated[UploadFile, File()], name: Annotated[str | None, Form()] = None):
    """A zip written by /export; `name` renames the voice on the way in (a taken name is a 409)."""
    data = await _read_upload(archive, services.settings.max_upload_bytes)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as opened:
            meta = json.loads(opened.read("voice.json"))
            prompt = opened.read("prompt.wav")
            latents = {n[len("latents/"):-len(".npy")]: np.load(io.BytesIO(opened.read(n)), allow_pickle=False)
                       for n in opened.namelist() if n.startswith("latents/") and n.endswith(".npy")}
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise InvalidRequest(f"{archive.filename}: not a voice export ({exc}); export one with "
                             "GET /api/v2/voices/{id}/export") from None
    if meta.get("format") != EXPORT_FORMAT:
        raise InvalidRequest(f"{archive.filename}: voice export format {meta.get('format')!r}; this server reads "
                             f"format {EXPORT_FORMAT}")
    try:
        info = soundfile.info(io.BytesIO(prompt))
    except soundfile.SoundFileError as exc:
        raise InvalidRequest(f"{archive.filename}: prompt.wav cannot be read ({exc})") from None
    if (info.samplerate, info.channels) != (SAMPLE_RATE, 1):
        raise InvalidRequest(f"{archive.filename}: prompt.wav is {info.samplerate} Hz with {info.channels} channel(s); "
                             f"an exported prompt is {SAMPLE_RATE} Hz mono")
    rows = []
    for model_id, values in latents.items():
        if values.ndim != 2 or not np.isfinite(values).all():
            raise InvalidRequest(f"{archive.filename}: latents/{model_id}.npy is not a finite [frames, dim] array")
        values = values.astype("<f4")
        rows.append(VoiceLatents(voice_id="", model_id=model_id, frames=values.shape[0], latent_dim=values.shape[1],
                                 data=values.tobytes()))
    name = clean_name(name or str(meta.get("name", "")), "a voice's name", NAME_LIMIT)
    voice = Voice(name=name, description=str(meta.get("description", "")),
                  tags=encode_tags(clean_tags(meta.get("tags", []))), audio_sha256="",
                  duration_s=info.frames / SAMPLE_RATE, source_count=int(meta.get("source_count", 1)))
    try:
        return VoicePublic.of(store_voice(session, services.store, voice, prompt, rows))
    except IntegrityError:
        raise _name_taken(name) from None
